"""The model bundle: everything serving needs from one training run, in one folder.

    bundle.json      schema version, model arguments, resolved config, as_of, data hashes, code version,
                     propensity calibration, evaluation
    weights.npz      the network's state dict as arrays (best epoch); read only where the network is
                     rebuilt (``training.model.from_bundle``); schema 1 bundles have ``weights.pt``
    ids.json         customer and product IDs in row order (the id maps)
    encoder.json     fitted feature-encoder statistics (whoever encodes later encodes as training did)
    embeddings.npz   users [n, d], items [m, d], item_bias [m], churn [n] (probability), held [2, h]

:func:`write_bundle` is the writer (training), :func:`read_bundle` the reader (serving and everyone
else). The reader needs NumPy, pandas and the bundle's files only: no torch, no trainer. It refuses a
bundle whose schema version it does not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nba.errors import NBAError
from nba.ranking import top_k

from .encoder import FeatureEncoder

SCHEMA_VERSION = 2
READS = (1, 2)  # version 1 kept the weights as weights.pt (torch.save); nothing else differs for readers
WEIGHTS_FILE = "weights.npz"


class BundleError(NBAError):
    """A bundle is missing, incomplete, or of a schema version this code does not read; or a model
    version, alias or customer it was asked for does not exist."""


@dataclass
class Bundle:
    """A read bundle. Arrays are row-aligned with the id maps."""

    meta: dict
    customer_ids: list[str]
    product_ids: list[str]
    encoder: FeatureEncoder | None
    user_emb: np.ndarray  # [n_customers, dim]
    item_emb: np.ndarray  # [n_products, dim]
    item_bias: np.ndarray  # [n_products]
    churn: np.ndarray | None  # [n_customers] P(churn within the horizon) at as_of
    held: np.ndarray  # [2, n_pairs] (customer row, product row) held at as_of
    path: Path

    @property
    def schema_version(self) -> int:
        return self.meta["schema_version"]

    @property
    def weights_path(self) -> Path:
        """The network's state dict: ``weights.npz`` (one array per parameter), or ``weights.pt`` in a
        schema 1 bundle."""
        return self.path / (WEIGHTS_FILE if self.schema_version >= 2 else "weights.pt")

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """``[len(user_rows), n_products]`` model scores: embedding inner products plus the item bias."""
        return self.user_emb[user_rows] @ self.item_emb.T + self.item_bias[None, :]

    def propensity(self, user_rows: np.ndarray) -> np.ndarray:
        """``[len(user_rows), n_products]`` calibrated P(opens the product within the horizon, 90 days by
        default), from the model score: ``sigmoid(a * score + b + offset[product])`` (Platt scaling with
        per-product offsets, fitted in training).

        Raises ``BundleError`` when the bundle has no calibration (too few openings to fit).
        """
        cal = self.meta.get("propensity")
        if not cal:
            raise BundleError(f"model {self.meta.get('registered_version', self.path)} has no propensity "
                              f"calibration (too few openings to fit, or an older bundle): retrain it")
        off = np.array([cal["offsets"].get(p, 0.0) for p in self.product_ids], np.float32)
        z = cal["a"] * self.scores(user_rows) + cal["b"] + off[None, :]
        return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)

    def propensity_for(self, user_rows: np.ndarray, tenure_days: np.ndarray | None = None,
                       segments: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``([len(user_rows), n_products] P(opens within the horizon), [len(user_rows)] bool from_prior)``.

        The calibrated model (:meth:`propensity`) for established clients; the bundle's prior of shrunk
        base rates by segment and product (``meta["propensity_prior"]``, fitted in training) for new
        clients (``tenure_days`` under the prior's ``new_client_max_tenure_days``: the calibration was
        fitted on established clients only) and for everyone when the calibration could not be fitted.
        ``tenure_days``/``segments`` ``[len(user_rows)]`` are the clients' features on the decision day
        (None: every client counts as established, in no known segment).

        Raises ``BundleError`` when the bundle has neither a calibration nor a prior.
        """
        user_rows = np.asarray(user_rows)
        n, cal, prior = len(user_rows), self.meta.get("propensity"), self.meta.get("propensity_prior")
        if not prior:
            return self.propensity(user_rows), np.zeros(n, bool)
        tenure = np.full(n, np.inf) if tenure_days is None else np.nan_to_num(
            np.asarray(tenure_days, dtype="float64"), nan=np.inf)
        new = tenure < prior["new_client_max_tenure_days"]
        from_prior = np.ones(n, bool) if not cal else new
        out = np.empty((n, len(self.product_ids)), np.float32)
        if (~from_prior).any():
            out[~from_prior] = self.propensity(user_rows[~from_prior])
        segs = np.full(n, None, dtype=object) if segments is None else np.asarray(segments, dtype=object)
        rows = np.flatnonzero(from_prior)
        if len(rows):
            # One rate vector per (new or established, segment), then every client of it at once: a bank
            # without a calibration puts all its clients here.
            keys = pd.Series([("new" if nw else "established", str(sg)) for nw, sg in zip(new[rows], segs[rows])])
            for (group, seg), idx in keys.groupby(keys, sort=False).groups.items():
                g = prior["groups"][group]
                rates = g["by_segment"].get(seg, g["by_product"])
                out[rows[np.asarray(idx)]] = np.array(
                    [rates.get(p, g["by_product"].get(p, g["rate"])) for p in self.product_ids], np.float32)
        return out, from_prior

    def rows_of(self, customer_ids: list[str]) -> np.ndarray:
        """Row of each customer in the id map, -1 for customers the model does not know."""
        return pd.Index(self.customer_ids).get_indexer(customer_ids)

    def recommend(self, customer_ids: list[str], k: int = 5) -> pd.DataFrame:
        """Top-``k`` products per known customer (held products excluded): customer_id, rank, product_id,
        score. Raises ``BundleError`` naming unknown customers, or for ``k`` < 1."""
        if int(k) < 1:
            raise BundleError(f"k must be at least 1, not {k}")
        rows = self.rows_of(customer_ids)
        unknown = [c for c, r in zip(customer_ids, rows) if r < 0]
        if unknown:
            raise BundleError(f"{len(unknown)} customer(s) not in the id map of the model as of "
                              f"{self.meta.get('as_of')}: {', '.join(unknown[:5])}")
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


def write_bundle(path: Path, *, weights: Mapping, model_args: dict, meta: dict, customer_ids: list[str],
                 product_ids: list[str], encoder: FeatureEncoder | None, user_emb: np.ndarray,
                 item_emb: np.ndarray, item_bias: np.ndarray, churn: np.ndarray | None,
                 held: np.ndarray) -> Path:
    """Write a bundle folder at ``path``. ``weights`` is the network's state dict as NumPy arrays
    (``{name: tensor.cpu().numpy()}``), so that nothing but the network's rebuild needs torch.

    Shapes: ``user_emb`` [n, d], ``item_emb`` [m, d], ``item_bias`` [m], ``churn`` [n] or None,
    ``held`` [2, h]. Raises ``BundleError`` when they disagree with the id maps.
    """
    n, m = len(customer_ids), len(product_ids)
    if user_emb.shape[0] != n or item_emb.shape[0] != m or item_bias.shape != (m,) or \
            (churn is not None and churn.shape != (n,)) or held.ndim != 2 or held.shape[0] != 2:
        raise BundleError(f"bundle arrays do not match the id maps ({n} customers, {m} products): users "
                          f"{user_emb.shape}, items {item_emb.shape}, bias {item_bias.shape}, held {held.shape}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / WEIGHTS_FILE, **{k: np.asarray(v) for k, v in weights.items()})
    np.savez(path / "embeddings.npz", users=user_emb.astype(np.float32), items=item_emb.astype(np.float32),
             item_bias=item_bias.astype(np.float32), held=held.astype(np.int64),
             **({"churn": churn.astype(np.float32)} if churn is not None else {}))
    (path / "ids.json").write_text(json.dumps({"customers": customer_ids, "products": product_ids}))
    if encoder is not None:
        (path / "encoder.json").write_text(json.dumps(encoder.to_dict()))
    full = {"schema_version": SCHEMA_VERSION, "model_args": model_args, **meta}
    (path / "bundle.json").write_text(json.dumps(full, indent=2, default=str))
    return path


def read_bundle(path: Path) -> Bundle:
    """Read the bundle folder at ``path``. Raises ``BundleError`` when it is not a bundle, is missing a
    file, or has a schema version this code does not read (:data:`READS`)."""
    path = Path(path)
    try:
        meta = json.loads((path / "bundle.json").read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: not a model bundle (no bundle.json)") from None
    version = meta.get("schema_version")
    if version not in READS:
        raise BundleError(f"{path}: bundle schema version {version!r}, this code reads versions "
                          f"{', '.join(map(str, READS))}; retrain, or serve it with the code that wrote it")
    try:
        ids = json.loads((path / "ids.json").read_text())
        emb = np.load(path / "embeddings.npz")
    except FileNotFoundError as e:
        raise BundleError(f"{path}: incomplete model bundle (no {Path(e.filename).name})") from None
    encoder = None
    if (path / "encoder.json").exists():
        encoder = FeatureEncoder.from_dict(json.loads((path / "encoder.json").read_text()))
    return Bundle(meta, ids["customers"], ids["products"], encoder, emb["users"], emb["items"], emb["item_bias"],
                  emb["churn"] if "churn" in emb.files else None, emb["held"], path)
