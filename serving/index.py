"""FAISS vector indexes: exact below a size threshold, approximate above it, filtered search.

:class:`VectorIndex` holds one FAISS index over row-ordered vectors (inner-product metric) and the ids of
its rows. Which index it builds comes from :class:`IndexSpec` (``configs/index.yaml``):

- fewer than ``exact_below`` vectors: ``IndexFlatIP``, exact;
- otherwise ``kind``: ``hnsw`` (``IndexHNSWFlat``: ``hnsw_m``, ``ef_construction``, ``ef_search``),
  ``ivf_flat`` (``nlist``, ``nprobe``) or ``ivf_pq`` (``nlist``, ``nprobe``, ``pq_m`` sub-quantizers of 8
  bits; with ``rerank`` the candidates are re-scored exactly from the kept vectors).

Indexes are always saved in CPU form. :meth:`VectorIndex.load` moves flat and IVF indexes to the GPU when
the installed faiss has GPU support and a CUDA device is present (HNSW has no GPU form in faiss and stays
on the CPU); ``device="cpu"`` keeps them on the CPU. Everything else is the same code on both.

Filtered search (:meth:`VectorIndex.search`): candidates the caller excludes (per query: held products,
the seeds themselves; for all queries: unsuitable or suppressed rows, as a boolean ``allowed`` mask) are
dropped after an over-fetch of ``k * overfetch`` plus the query's own exclusions. Queries left short are
searched again deeper (4x, up to the whole index), and as a last resort the admissible rows are scanned
exactly, so an approximate index never loses an admissible candidate that exists. ``found`` says how many
of the ``k`` each query got: fewer only when fewer admissible rows exist.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nba.errors import ConfigError, NBAError

INDEX_FORMAT_VERSION = 1


class RetrievalError(NBAError):
    """An index is missing, of an unknown format, or was asked something it cannot answer."""


class IndexSpec(BaseModel):
    """How to index one set of vectors. Validated: unknown keys and out-of-range values are errors."""

    model_config = ConfigDict(extra="forbid")

    exact_below: int = Field(200_000, ge=0, description="below this many vectors: exact IndexFlatIP")
    kind: Literal["hnsw", "ivf_flat", "ivf_pq"] = "hnsw"
    hnsw_m: int = Field(32, ge=4, le=128)
    ef_construction: int = Field(80, ge=8)
    ef_search: int = Field(128, ge=8)
    nlist: int | None = Field(None, ge=1, description="IVF lists (default: 4 * sqrt(n))")
    nprobe: int = Field(64, ge=1)
    pq_m: int = Field(16, ge=1, description="IVF-PQ sub-quantizers (must divide the dimension)")
    rerank: bool = Field(True, description="IVF-PQ: re-score the candidates exactly")
    train_size: int = Field(200_000, ge=1000, description="vectors sampled to train IVF/PQ quantizers")
    overfetch: int = Field(4, ge=1, description="filtered search fetches k * overfetch + exclusions")
    seed: int = 0

    def kind_for(self, n: int) -> str:
        return "flat" if n < self.exact_below else self.kind


class IndexConfig(BaseModel):
    """``configs/index.yaml``: one spec for the product index, one for the customer index."""

    model_config = ConfigDict(extra="forbid")

    products: IndexSpec = IndexSpec()
    customers: IndexSpec = IndexSpec()


def _faiss():
    import faiss
    return faiss


def gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees a CUDA device."""
    faiss = _faiss()
    if os.environ.get("NBA_DEVICE", "").startswith("cpu"):
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class SearchResult:
    rows: np.ndarray    # [q, k] int64 row numbers, -1 where nothing was found
    scores: np.ndarray  # [q, k] float32 inner products, -inf where nothing was found
    found: np.ndarray   # [q] how many of the k each query got

    @property
    def short(self) -> np.ndarray:
        """Indices of the queries that got fewer than k results."""
        return np.flatnonzero(self.found < self.rows.shape[1])


class VectorIndex:
    """A FAISS index over ``vectors`` [n, d] (float32) whose rows are named by ``ids``.

    The vectors are kept beside the index (they are the model's embeddings, already in memory): they
    re-rank IVF-PQ candidates and answer the exact fallback of filtered search.
    """

    def __init__(self, index, vectors: np.ndarray, ids: Sequence[str], spec: IndexSpec, kind: str,
                 build_seconds: float = 0.0, device: str = "cpu"):
        self.index = index
        self.vectors = vectors
        self.ids = list(ids)
        self.spec = spec
        self.kind = kind
        self.build_seconds = build_seconds
        self.device = device
        self._row_of: dict[str, int] | None = None

    # ---------------------------------------------------------------------------------------------
    # building, saving, loading

    @classmethod
    def build(cls, vectors: np.ndarray, ids: Sequence[str], spec: IndexSpec | None = None) -> VectorIndex:
        spec = spec or IndexSpec()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise RetrievalError(f"vectors must be a non-empty [n, d] array, got shape {vectors.shape}")
        if len(ids) != len(vectors):
            raise RetrievalError(f"{len(ids)} ids for {len(vectors)} vectors")
        if not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise RetrievalError(f"vector of row {bad} (id {ids[bad]!r}) is not finite")
        faiss = _faiss()
        n, d = vectors.shape
        kind = spec.kind_for(n)
        t = time.perf_counter()
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = spec.ef_construction
        else:
            nlist = min(spec.nlist or int(4 * np.sqrt(n)), max(1, n // 39))
            quantizer = faiss.IndexFlatIP(d)
            if kind == "ivf_flat":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                if d % spec.pq_m:
                    raise ConfigError(f"index pq_m {spec.pq_m} must divide the vector dimension {d}")
                index = faiss.IndexIVFPQ(quantizer, d, nlist, spec.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(spec.seed)
            sample = vectors[np.sort(rng.choice(n, min(n, spec.train_size), replace=False))]
            index.train(sample)
            index.own_fields = True
            quantizer.this.disown()
        index.add(vectors)
        out = cls(index, vectors, ids, spec, kind, time.perf_counter() - t)
        out._apply_search_params()
        return out

    def _apply_search_params(self) -> None:
        faiss = _faiss()
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = self.spec.ef_search
        elif self.kind in ("ivf_flat", "ivf_pq"):
            try:
                self.index.nprobe = self.spec.nprobe
            except AttributeError:  # a GPU index
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", self.spec.nprobe)

    def save(self, folder: Path) -> Path:
        """``index.faiss`` (CPU form), ``vectors.npy``, ``ids.json``, ``meta.json`` into ``folder``."""
        faiss = _faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if self.device != "cpu" else self.index
        faiss.write_index(cpu, str(folder / "index.faiss"))
        np.save(folder / "vectors.npy", self.vectors)
        (folder / "ids.json").write_text(json.dumps(self.ids))
        (folder / "meta.json").write_text(json.dumps({
            "format_version": INDEX_FORMAT_VERSION, "kind": self.kind, "spec": self.spec.model_dump(),
            "count": len(self.ids), "dim": int(self.vectors.shape[1]), "build_seconds": self.build_seconds,
            "faiss_version": faiss.__version__}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path, device: str | None = None, mmap: bool = True) -> VectorIndex:
        """Load a saved index; onto the GPU when possible unless ``device="cpu"``."""
        faiss = _faiss()
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            raise RetrievalError(f"{folder}: not a saved index (no meta.json)") from None
        if meta.get("format_version") != INDEX_FORMAT_VERSION:
            raise RetrievalError(f"{folder}: index format {meta.get('format_version')!r}, this code reads "
                             f"{INDEX_FORMAT_VERSION}; rebuild it with `nba index build`")
        index = faiss.read_index(str(folder / "index.faiss"))
        vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None)
        ids = json.loads((folder / "ids.json").read_text())
        want_gpu = device != "cpu" and gpu_available() and meta["kind"] != "hnsw"
        placed = "cpu"
        if want_gpu:
            res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(res, 0, index)
            index._nba_resources = res  # keep the resources alive as long as the index
            placed = "cuda"
        out = cls(index, vectors, ids, IndexSpec(**meta["spec"]), meta["kind"], meta.get("build_seconds", 0.0), placed)
        out._apply_search_params()
        return out

    # ---------------------------------------------------------------------------------------------
    # searching

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def row_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids`` (-1 for ids not in the index)."""
        if self._row_of is None:
            self._row_of = {c: r for r, c in enumerate(self.ids)}
        return np.fromiter((self._row_of.get(c, -1) for c in ids), dtype=np.int64, count=len(ids))

    def _raw(self, q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        depth = max(1, min(depth, len(self)))
        if self.kind == "hnsw" and self.index.hnsw.efSearch < depth:
            self.index.hnsw.efSearch = depth
            try:
                scores, rows = self.index.search(q, depth)
            finally:
                self.index.hnsw.efSearch = self.spec.ef_search
        elif self.kind == "ivf_pq" and self.spec.rerank:
            # PQ scores are approximate: fetch more, re-score exactly from the kept vectors.
            _, rows = self.index.search(q, min(len(self), depth * 2))
            safe = np.where(rows >= 0, rows, 0)
            exact = np.einsum("qkd,qd->qk", np.asarray(self.vectors)[safe], q)
            exact[rows < 0] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :depth]
            rows = np.take_along_axis(rows, order, 1)
            scores = np.take_along_axis(exact, order, 1)
        else:
            scores, rows = self.index.search(q, depth)
        return rows.astype(np.int64), scores.astype(np.float32)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None,
               allowed: np.ndarray | None = None) -> SearchResult:
        """Top ``k`` rows per query by inner product, without the excluded rows.

        ``exclude``: per query, row numbers it must not get (held products, the seeds themselves).
        ``allowed``: [n] bool, rows any query may get (False: unsuitable, suppressed).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.shape[1] != self.dim:
            raise RetrievalError(f"queries have dimension {q.shape[1]}, the index has {self.dim}")
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        nq, n = len(q), len(self)
        if exclude is not None and len(exclude) != nq:
            raise RetrievalError(f"exclude has {len(exclude)} entries for {nq} queries")
        if allowed is not None and len(allowed) != n:
            raise RetrievalError(f"allowed mask has {len(allowed)} entries for an index of {n}")
        if exclude is None and allowed is None:
            rows, scores = self._raw(q, k)
            if rows.shape[1] < k:  # the index holds fewer than k rows
                pad = k - rows.shape[1]
                rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            found = (rows >= 0).sum(axis=1)
            result = SearchResult(rows, scores, found)
            if self.kind != "flat":
                for qi in np.flatnonzero(found < min(k, n)):
                    self._exact_fill(q[qi], qi, k, None, None, rows, scores, found)
            return result
        rows_out = np.full((nq, k), -1, np.int64)
        scores_out = np.full((nq, k), -np.inf, np.float32)
        found = np.zeros(nq, np.int64)
        n_excl = np.array([len(e) for e in exclude], np.int64) if exclude is not None else np.zeros(nq, np.int64)
        n_blocked = 0 if allowed is None else int(n - allowed.sum())
        want = np.minimum(k, np.maximum(0, n - n_blocked - n_excl))  # a floor: exclusions may overlap

        todo = np.arange(nq)
        depth = k * self.spec.overfetch + int(n_excl.max(initial=0)) + min(n_blocked, k * 4)
        exhaustive = self.kind == "flat"
        while len(todo):
            rows, scores = self._raw(q[todo], depth)
            for j, qi in enumerate(todo):
                r, s = rows[j], scores[j]
                keep = r >= 0
                if allowed is not None:
                    keep &= allowed[np.where(keep, r, 0)]
                if exclude is not None and len(exclude[qi]):
                    keep &= ~np.isin(r, exclude[qi])
                r, s = r[keep][:k], s[keep][:k]
                rows_out[qi, :len(r)], scores_out[qi, :len(r)], found[qi] = r, s, len(r)
            searched_all = depth >= n
            short = todo[found[todo] < k]
            if not len(short) or searched_all:
                todo = short[:0]
                break
            # An approximate index returns fewer than ``depth`` results when its graph or probed lists run
            # dry; a query still short after a deeper look is answered exactly below.
            todo, depth = short, min(n, depth * 4)
            if depth >= n and not exhaustive:
                break
        if not exhaustive:
            for qi in np.flatnonzero((found < want) & (found < k)):
                self._exact_fill(q[qi], qi, k, exclude, allowed, rows_out, scores_out, found)
        return SearchResult(rows_out, scores_out, found)

    def _exact_fill(self, qv, qi, k, exclude, allowed, rows_out, scores_out, found) -> None:
        mask = np.ones(len(self), bool) if allowed is None else allowed.copy()
        if exclude is not None and len(exclude[qi]):
            mask[np.asarray(exclude[qi], np.int64)] = False
        cand = np.flatnonzero(mask)
        if not len(cand):
            return
        s = np.asarray(self.vectors)[cand] @ qv
        top = np.argsort(-s, kind="stable")[:k]
        rows_out[qi, :len(top)], scores_out[qi, :len(top)], found[qi] = cand[top], s[top], len(top)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean share of the exact top-k found by the approximate search (rows -1 count as misses)."""
    hits = 0
    for a, e in zip(approx_rows, exact_rows):
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e, assume_unique=False))
    total = int((exact_rows >= 0).sum())
    return hits / total if total else 1.0


def self_check(index: VectorIndex, queries: np.ndarray, k: int = 100) -> float:
    """recall@k of ``index`` against an exact scan of its own vectors, on ``queries``."""
    vectors = np.asarray(index.vectors)
    k = min(k, len(index))
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    approx = index.search(queries, k).rows
    return recall_at_k(approx, exact)
