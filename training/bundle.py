"""The model bundle: everything serving needs from one training run, in one folder.

    bundle.json      schema version, model arguments, resolved config, as_of, data hashes, code version
    weights.pt       HybridGNN state dict (best epoch)
    ids.json         customer and product IDs in row order (the id maps)
    encoder.json     fitted feature-encoder statistics (serving encodes as training did)
    embeddings.npz   users [n, d], items [m, d], item_bias [m], churn [n] (probability), held pairs

The folder is logged to MLflow as a pyfunc model (:class:`NBAPyfunc`), so ``mlflow.pyfunc.load_model``
gives a model that scores customers, and :func:`load_bundle` gives the parts. A reader refuses a bundle
whose schema version it does not know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nba.errors import NBAError

from .graph import FeatureEncoder
from .model import HybridGNN
from .protocols import top_k

BUNDLE_SCHEMA_VERSION = 1


class BundleError(NBAError):
    """A bundle is missing, incomplete, or of a schema version this code does not read."""


@dataclass
class Bundle:
    meta: dict
    customer_ids: list[str]
    product_ids: list[str]
    encoder: FeatureEncoder | None
    user_emb: np.ndarray
    item_emb: np.ndarray
    item_bias: np.ndarray
    churn: np.ndarray | None
    held: np.ndarray  # [2, n] (customer row, product row) held at as_of
    path: Path
    _model: HybridGNN | None = None

    @property
    def schema_version(self) -> int:
        return self.meta["schema_version"]

    def model(self) -> HybridGNN:
        if self._model is None:
            m = HybridGNN(**self.meta["model_args"])
            m.load_state_dict(torch.load(self.path / "weights.pt", map_location="cpu", weights_only=True))
            self._model = m.eval()
        return self._model

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """[len(user_rows), m] model scores: embedding inner products plus the item bias."""
        return self.user_emb[user_rows] @ self.item_emb.T + self.item_bias[None, :]

    def propensity(self, user_rows: np.ndarray) -> np.ndarray:
        """[len(user_rows), m] calibrated P(opens the product within the horizon), from the model score.

        Raises when the bundle has no calibration (trained before it existed, or too few openings).
        """
        cal = self.meta.get("propensity")
        if not cal:
            raise BundleError(f"model {self.meta.get('registered_version', self.path)} has no propensity "
                              f"calibration (too few openings to fit, or an older bundle): retrain it")
        off = np.array([cal["offsets"].get(p, 0.0) for p in self.product_ids], np.float32)
        z = cal["a"] * self.scores(user_rows) + cal["b"] + off[None, :]
        return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)

    def recommend(self, customer_ids: list[str], k: int = 5) -> pd.DataFrame:
        """Top-``k`` products per known customer (held products excluded): customer_id, rank, product_id, score."""
        index = pd.Index(self.customer_ids)
        rows = index.get_indexer(customer_ids)
        unknown = [c for c, r in zip(customer_ids, rows) if r < 0]
        if unknown:
            raise BundleError(f"{len(unknown)} customer(s) not in model {self.meta.get('as_of')}: "
                              f"{', '.join(unknown[:5])}")
        top, scores = top_k(self.scores, rows,
                            len(self.product_ids), k, self.held[0], self.held[1], return_scores=True)
        k, n = top.shape[1], len(rows)
        out = pd.DataFrame({
            "customer_id": np.repeat(np.asarray(customer_ids, dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1), n),
            "product_id": np.asarray(self.product_ids, dtype=object)[top.ravel()],
            "score": scores.ravel().astype(float),
        })
        return out[np.isfinite(out["score"])].reset_index(drop=True)


def save_bundle(path: Path, *, model: HybridGNN, model_args: dict, meta: dict, customer_ids: list[str],
                product_ids: list[str], encoder: FeatureEncoder | None, user_emb: np.ndarray,
                item_emb: np.ndarray, churn: np.ndarray | None, held: np.ndarray) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path / "weights.pt")
    bias = (model.item_bias.detach().cpu().numpy() if model.item_bias is not None
            else np.zeros(len(product_ids), np.float32))
    np.savez(path / "embeddings.npz", users=user_emb.astype(np.float32), items=item_emb.astype(np.float32),
             item_bias=bias.astype(np.float32), held=held.astype(np.int64),
             **({"churn": churn.astype(np.float32)} if churn is not None else {}))
    (path / "ids.json").write_text(json.dumps({"customers": customer_ids, "products": product_ids}))
    if encoder is not None:
        enc = asdict(encoder)
        enc["mean"], enc["std"] = encoder.mean.tolist(), encoder.std.tolist()
        (path / "encoder.json").write_text(json.dumps(enc))
    full = {"schema_version": BUNDLE_SCHEMA_VERSION, "model_args": model_args, **meta}
    (path / "bundle.json").write_text(json.dumps(full, indent=2, default=str))
    return path


def load_bundle(path: Path) -> Bundle:
    path = Path(path)
    try:
        meta = json.loads((path / "bundle.json").read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: not a model bundle (no bundle.json)") from None
    version = meta.get("schema_version")
    if version != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{path}: bundle schema version {version!r}, this code reads version "
                          f"{BUNDLE_SCHEMA_VERSION}; retrain, or serve it with the code that wrote it")
    ids = json.loads((path / "ids.json").read_text())
    emb = np.load(path / "embeddings.npz")
    encoder = None
    if (path / "encoder.json").exists():
        e = json.loads((path / "encoder.json").read_text())
        encoder = FeatureEncoder(e["numeric"], e["categorical"], np.array(e["mean"]), np.array(e["std"]), e["flags"])
    return Bundle(meta, ids["customers"], ids["products"], encoder, emb["users"], emb["items"], emb["item_bias"],
                  emb["churn"] if "churn" in emb.files else None, emb["held"], path)


try:
    import mlflow.pyfunc

    class NBAPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow face of a bundle: input a frame with ``customer_id`` (and optionally ``k``);
        output the top products per customer with scores and the churn probability."""

        def load_context(self, context):
            self.bundle = load_bundle(Path(context.artifacts["bundle"]))

        def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
            if "customer_id" not in model_input:
                raise BundleError("input needs a 'customer_id' column")
            k = int((params or {}).get("k", 5))
            out = self.bundle.recommend(model_input["customer_id"].astype(str).tolist(), k)
            if self.bundle.churn is not None:
                idx = pd.Index(self.bundle.customer_ids).get_indexer(out["customer_id"])
                out["churn_probability"] = self.bundle.churn[idx].astype(float)
            return out
except ImportError:  # pragma: no cover - MLflow is a dependency; this keeps the bundle readable without it
    NBAPyfunc = None
