"""Retrieval over a registered model version: product candidates and customer lookalike audiences.

Two indexes per model version, built from its bundle's embeddings:

- **products**: vectors ``[item_emb, item_bias]`` and queries ``[user_emb, 1]``, so the inner product is
  exactly the model's score and the candidates equal ``Bundle.recommend``;
- **customers**: L2-normalised ``user_emb`` (inner product = cosine), for lookalike audiences.

:func:`build_for_version` builds both beside each other into ``index/<build_id>/`` and logs that folder
to the MLflow logged model of the version (model and indexes travel together), then points the model
version's tag ``index_build`` at it. An earlier build is never changed: a rebuild is a new build id, and
readers switch to it by reference (:meth:`Retriever.refresh`).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from bundle import Bundle, registry
from nba.config import load_yaml
from nba.home import Home

from .index import IndexConfig, IndexSpec, RetrievalError, VectorIndex, self_check

INDEX_TAG = "index_build"
NEAREST_BUDGET = 2_000_000  # candidate rows a "nearest" lookalike may fetch (seeds x per-seed depth)


def load_index_config(path: Path | None = None) -> IndexConfig:
    """``path``, else ``configs/index.yaml`` when present, else the built-in defaults."""
    return load_yaml(IndexConfig, path, default_name="index.yaml")


def product_vectors(bundle: Bundle) -> np.ndarray:
    """[m, d+1]: item embedding and item bias, so that <query, vector> is the model's score."""
    return np.hstack([bundle.item_emb, bundle.item_bias[:, None]]).astype(np.float32)


def product_queries(bundle: Bundle, rows: np.ndarray) -> np.ndarray:
    u = bundle.user_emb[rows]
    return np.hstack([u, np.ones((len(u), 1), u.dtype)]).astype(np.float32)


def customer_vectors(bundle: Bundle) -> np.ndarray:
    """[n, d] unit-length customer embeddings (inner product = cosine similarity)."""
    u = bundle.user_emb.astype(np.float32)
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    return u / np.where(norm > 0, norm, 1.0)


def held_by_row(bundle: Bundle) -> list[np.ndarray]:
    """Per customer row, the product rows it held at the model's as_of."""
    users, items = bundle.held
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(len(bundle.customer_ids) + 1))
    return [items[bounds[r]:bounds[r + 1]] for r in range(len(bundle.customer_ids))]


@dataclass
class BuildInfo:
    build_id: str
    model_version: int
    products: dict
    customers: dict
    seconds: float


def build_indexes(bundle: Bundle, cfg: IndexConfig, folder: Path, check_queries: int = 1000) -> dict:
    """Build both indexes from ``bundle`` into ``folder``; returns what was built (kinds, sizes, recall)."""
    out = {}
    for name, vectors, ids, spec in (
            ("products", product_vectors(bundle), bundle.product_ids, cfg.products),
            ("customers", customer_vectors(bundle), bundle.customer_ids, cfg.customers)):
        index = VectorIndex.build(vectors, ids, spec)
        info = {"kind": index.kind, "count": len(index), "dim": index.dim,
                "build_seconds": round(index.build_seconds, 3)}
        if index.kind != "flat":  # the build checks itself against exact search on a sample
            rng = np.random.default_rng(spec.seed)
            q = vectors[rng.choice(len(vectors), min(check_queries, len(vectors)), replace=False)]
            info["recall_at_100"] = round(self_check(index, q, 100), 4)
        index.save(folder / name)
        out[name] = info
    return out


def build_for_version(home: Home, alias_or_version: str | int = registry.CHAMPION, cfg: IndexConfig | None = None,
                      name: str | None = None, log=lambda m: None) -> BuildInfo:
    """Build the indexes of a model version and log them to its MLflow logged model."""
    cfg = cfg or load_index_config()
    mv = registry.model_version(home, alias_or_version, name)
    bundle = registry.bundle_of(home, mv)
    build_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nba-index-", dir=home.ensure().root) as tmp:
        folder = Path(tmp) / build_id
        built = build_indexes(bundle, cfg, folder)
        seconds = time.perf_counter() - t
        (folder / "build.json").write_text(json.dumps({
            "build_id": build_id, "model_name": mv.name, "model_version": int(mv.version),
            "config": cfg.model_dump(), "built": built, "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
        if not registry.logged_model_id(mv):
            raise RetrievalError(f"model {mv.name} version {mv.version} has no logged model to attach indexes to")
        registry.log_artifacts(mv, folder, f"index/{build_id}")
        # Only now, with every file logged, do readers see the new build.
        registry.set_version_tag(mv, INDEX_TAG, build_id)
        for part, info in built.items():
            if "recall_at_100" in info:
                registry.set_version_tag(mv, f"index_{part}_recall_at_100", str(info["recall_at_100"]))
    log(f"indexes {build_id} for {mv.name} version {mv.version}: " + "; ".join(
        f"{p} {i['kind']} over {i['count']:,} vectors in {i['build_seconds']:.1f} s"
        + (f" (recall@100 {i['recall_at_100']:.4f})" if "recall_at_100" in i else "") for p, i in built.items()))
    return BuildInfo(build_id, int(mv.version), built["products"], built["customers"], seconds)


@dataclass
class Snapshot:
    """One model version with its indexes: immutable once loaded; readers hold it while they use it."""

    version: int
    build_id: str
    bundle: Bundle
    products: VectorIndex
    customers: VectorIndex
    held: list[np.ndarray] = field(default_factory=list)

    def customer_rows(self, customer_ids: Sequence[str]) -> np.ndarray:
        return self.customers.row_of(customer_ids)


def load_for_version(home: Home, alias_or_version: str | int = registry.CHAMPION, name: str | None = None,
                     device: str | None = None) -> Snapshot:
    """The bundle and the current index build of a model version (downloaded once into NBA_HOME)."""
    mv = registry.model_version(home, alias_or_version, name)
    build_id = mv.tags.get(INDEX_TAG)
    if not build_id:
        raise RetrievalError(f"model {mv.name} version {mv.version} has no indexes yet: run "
                             f"`nba index build --model-version {mv.version}`")
    bundle = registry.bundle_of(home, mv)
    local = registry.download(home, mv, f"index/{build_id}", f"index/{build_id}")
    products = VectorIndex.load(local / "products", device=device)
    customers = VectorIndex.load(local / "customers", device=device)
    if products.ids != bundle.product_ids or len(customers) != len(bundle.customer_ids):
        raise RetrievalError(f"index build {build_id} does not match the bundle of version {mv.version}")
    return Snapshot(int(mv.version), build_id, bundle, products, customers, held_by_row(bundle))


class Retriever:
    """Serves candidates and lookalikes from the snapshot of a model alias or version.

    :meth:`refresh` resolves the alias again and, when the version or its index build changed, loads the
    new snapshot beside the current one and then switches the reference. A request that already holds
    the old snapshot finishes on it; nothing in a snapshot is ever changed in place.
    """

    def __init__(self, home: Home, alias_or_version: str | int = registry.CHAMPION, name: str | None = None,
                 device: str | None = None):
        self.home, self.target, self.name, self.device = home, alias_or_version, name, device
        self._lock = threading.Lock()
        self._snapshot = load_for_version(home, alias_or_version, name, device)

    @classmethod
    def of(cls, snapshot: Snapshot) -> Retriever:
        """A retriever over an already loaded snapshot (no registry lookup; :meth:`refresh` unavailable)."""
        r = cls.__new__(cls)
        r.home = r.target = r.name = r.device = None
        r._lock = threading.Lock()
        r._snapshot = snapshot
        return r

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def refresh(self) -> bool:
        """Load the alias's current version/build if it changed; True when the snapshot was switched."""
        with self._lock:
            mv = registry.model_version(self.home, self.target, self.name)
            current = self._snapshot
            if int(mv.version) == current.version and mv.tags.get(INDEX_TAG) == current.build_id:
                return False
            fresh = load_for_version(self.home, mv.version, self.name, self.device)
            self._snapshot = fresh  # one reference assignment: readers see the old or the new, never a mix
            return True

    def swap(self, snapshot: Snapshot) -> Snapshot:
        """Switch to an already loaded snapshot; returns the previous one."""
        with self._lock:
            old, self._snapshot = self._snapshot, snapshot
            return old

    # ---------------------------------------------------------------------------------------------

    def candidates(self, customer_ids: Sequence[str], k: int = 10, exclude_held: bool = True,
                   exclude_products: Sequence[str] = (), snapshot: Snapshot | None = None) -> pd.DataFrame:
        """Top-``k`` products per customer by model score: customer_id, rank, product_id, score, found.

        Excluded: products the customer held at the model's as_of (``exclude_held``) and
        ``exclude_products`` for everyone (unsuitable, withdrawn). ``found`` < k says the customer had
        fewer admissible products than asked for.
        """
        snap = snapshot or self._snapshot
        rows = snap.customer_rows(customer_ids)
        unknown = [c for c, r in zip(customer_ids, rows) if r < 0]
        if unknown:
            raise RetrievalError(f"unknown customer_id {unknown[0]!r} (not in the id map of model version "
                                 f"{snap.version})" + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""))
        allowed = None
        if exclude_products:
            prow = snap.products.row_of(list(exclude_products))
            bad = [p for p, r in zip(exclude_products, prow) if r < 0]
            if bad:
                raise RetrievalError(f"unknown product_id {bad[0]!r} in exclude_products "
                                     f"(known: {', '.join(snap.products.ids)})")
            allowed = np.ones(len(snap.products), bool)
            allowed[prow] = False
        exclude = [snap.held[r] for r in rows] if exclude_held else None
        res = snap.products.search(product_queries(snap.bundle, rows), k, exclude=exclude, allowed=allowed)
        n, kk = res.rows.shape
        ok = res.rows >= 0
        return pd.DataFrame({
            "customer_id": np.repeat(np.asarray(customer_ids, dtype=object), kk)[ok.ravel()],
            "rank": np.tile(np.arange(1, kk + 1), n)[ok.ravel()],
            "product_id": np.asarray(snap.products.ids, dtype=object)[res.rows[ok]],
            "score": res.scores[ok].astype(float),
            "found": np.repeat(res.found, kk)[ok.ravel()],
        })

    def lookalike(self, seeds: Sequence[str], n: int = 1000, method: Literal["centroid", "nearest"] = "nearest",
                  exclude: Sequence[str] = (), snapshot: Snapshot | None = None) -> LookalikeResult:
        """The ``n`` customers most similar to the seeds, seeds and ``exclude`` (suppressed) left out.

        ``centroid``: cosine to the seeds' mean direction (one coherent audience). ``nearest``: each
        customer's best cosine to any single seed, which keeps the sub-groups of a mixed seed list.
        Unknown seeds are reported, not fatal, unless no seed is known.
        """
        snap = snapshot or self._snapshot
        if method not in ("centroid", "nearest"):
            raise RetrievalError(f"lookalike method {method!r}: expected centroid or nearest")
        if n < 1:
            raise RetrievalError(f"audience size must be at least 1, got {n}")
        seeds = list(dict.fromkeys(seeds))
        rows = snap.customer_rows(seeds)
        unknown = [s for s, r in zip(seeds, rows) if r < 0]
        rows = rows[rows >= 0]
        if not len(rows):
            raise RetrievalError(f"none of the {len(seeds)} seed customers is known to model version "
                                 f"{snap.version} (first: {seeds[0] if seeds else 'none'!r})")
        idx = snap.customers
        allowed = np.ones(len(idx), bool)
        allowed[rows] = False
        suppressed = idx.row_of(list(exclude)) if exclude else np.empty(0, np.int64)
        allowed[suppressed[suppressed >= 0]] = False
        vectors = np.asarray(idx.vectors)
        if method == "centroid":
            c = vectors[rows].mean(axis=0)
            c = c / max(float(np.linalg.norm(c)), 1e-12)
            res = idx.search(c[None, :], n, allowed=allowed)
            found_rows, scores = res.rows[0], res.scores[0]
        else:
            # The union of every seed's own top n holds the exact answer; past a budget of candidate rows
            # (very many seeds x a large n) each seed fetches its share with 4x margin instead.
            per_seed = min(n, max(-(-n * 4 // len(rows)), NEAREST_BUDGET // len(rows)))
            res = idx.search(vectors[rows], per_seed, allowed=allowed)
            r, s = res.rows.ravel(), res.scores.ravel()
            keep = r >= 0
            frame = pd.DataFrame({"row": r[keep], "score": s[keep]}).groupby("row")["score"].max()
            frame = frame.sort_values(ascending=False, kind="stable").iloc[:n]
            found_rows, scores = frame.index.to_numpy(), frame.to_numpy()
            if len(found_rows) < min(n, int(allowed.sum())):  # rare: too much overlap; top up from the centroid
                c = vectors[rows].mean(axis=0)
                top = idx.search(c[None, :], n, allowed=allowed & ~np.isin(np.arange(len(idx)), found_rows))
                more = top.rows[0][top.rows[0] >= 0][:n - len(found_rows)]
                found_rows = np.concatenate([found_rows, more])
                scores = np.concatenate([scores, (vectors[more] @ vectors[rows].T).max(axis=1)])
        ok = found_rows >= 0
        audience = pd.DataFrame({"customer_id": np.asarray(idx.ids, dtype=object)[found_rows[ok]],
                                 "similarity": scores[ok].astype(float)})
        audience.insert(0, "rank", np.arange(1, len(audience) + 1))
        return LookalikeResult(audience, unknown, len(rows), method, snap.version)


@dataclass
class LookalikeResult:
    audience: pd.DataFrame  # rank, customer_id, similarity
    unknown_seeds: list[str]
    seeds_used: int
    method: str
    model_version: int


def read_id_file(path: Path) -> list[str]:
    """Customer ids, one a line (or a CSV with a ``customer_id`` column); blank lines ignored."""
    from nba.errors import DataValidationError, Problem
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RetrievalError(f"{path}: cannot read ({e.strerror})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    if lines and "," in lines[0]:
        header = [h.strip() for h in lines[0].split(",")]
        if "customer_id" not in header:
            raise DataValidationError([Problem(str(path), f"no 'customer_id' column (columns: {', '.join(header)})",
                                               row=None, column="customer_id", line=1)])
        col = header.index("customer_id")
        ids = []
        for i, ln in enumerate(lines[1:], start=2):
            if not ln:
                continue
            parts = ln.split(",")
            if len(parts) <= col or not parts[col].strip():
                raise DataValidationError([Problem(str(path), "missing customer_id", row=i - 1,
                                                   column="customer_id", line=i)])
            ids.append(parts[col].strip())
        return ids
    if lines and lines[0] == "customer_id":
        lines = lines[1:]
    return [ln for ln in lines if ln]


__all__ = ["IndexSpec", "IndexConfig", "Retriever", "Snapshot", "build_for_version", "load_for_version",
           "LookalikeResult", "RetrievalError"]
