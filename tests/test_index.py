"""FAISS indexes (issue 6): recall against exact search, kind by size, filtered search, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from nba.errors import ConfigError
from serving.index import (
    IndexSpec,
    RetrievalError,
    VectorIndex,
    recall_at_k,
    self_check,
)


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(100, d))
    x = centers[rng.integers(0, 100, n)] + 0.6 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(40_000, 32)
    return x[:39_500], x[39_500:], [f"C{i:05d}" for i in range(39_500)]


def exact_top(base, queries, k):
    return np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind, params, floor", [
    ("hnsw", {"hnsw_m": 16, "ef_search": 128}, 0.95),
    ("ivf_flat", {"nlist": 128, "nprobe": 16}, 0.95),
    ("ivf_pq", {"nlist": 128, "nprobe": 16, "pq_m": 8}, 0.90),
])
def test_approximate_recall_against_exact(data, kind, params, floor):
    base, queries, ids = data
    index = VectorIndex.build(base, ids, IndexSpec(exact_below=1000, kind=kind, **params))
    assert index.kind == kind and len(index) == len(base)
    res = index.search(queries, 100)
    recall = recall_at_k(res.rows, exact_top(base, queries, 100))
    assert recall >= floor, (kind, recall)
    assert (res.found == 100).all()
    # Scores are the inner products of the rows returned, best first.
    s = np.einsum("qd,qkd->qk", queries, base[res.rows])
    np.testing.assert_allclose(res.scores, s, atol=2e-3 if kind == "ivf_pq" else 1e-4)
    assert (np.diff(res.scores, axis=1) <= 1e-5).all()


def test_starved_parameters_measurably_lose_recall(data):
    base, queries, ids = data
    good = VectorIndex.build(base, ids, IndexSpec(exact_below=0, kind="hnsw", hnsw_m=16, ef_search=128))
    poor = VectorIndex.build(base, ids, IndexSpec(exact_below=0, kind="hnsw", hnsw_m=4, ef_construction=8,
                                                  ef_search=8))
    assert self_check(poor, queries, 100) < self_check(good, queries, 100) - 0.05


def test_index_kind_follows_size_threshold(data):
    base, _, ids = data
    assert VectorIndex.build(base[:500], ids[:500], IndexSpec(exact_below=1000, kind="hnsw")).kind == "flat"
    assert VectorIndex.build(base[:2000], ids[:2000], IndexSpec(exact_below=1000, kind="hnsw")).kind == "hnsw"
    exact = VectorIndex.build(base[:500], ids[:500], IndexSpec(exact_below=1000))
    assert self_check(exact, base[:50], 100) == 1.0


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat"])
def test_filters_drop_excluded_and_refetch_when_short(data, kind):
    base, queries, ids = data
    spec = IndexSpec(exact_below=10**9 if kind == "flat" else 0, kind="hnsw" if kind == "flat" else kind,
                     nlist=128, nprobe=8, overfetch=1)
    index = VectorIndex.build(base, ids, spec)
    q = queries[:20]
    k = 10
    # Exclude each query's own true top 50: the first fetch (k + 50) cannot fill k, a re-fetch must.
    truth = exact_top(base, q, 200)
    exclude = [t[:50] for t in truth]
    allowed = np.ones(len(base), bool)
    allowed[truth[:, 50:55].ravel()] = False  # globally suppressed rows as well
    res = index.search(q, k, exclude=exclude, allowed=allowed)
    assert (res.found == k).all()
    for i in range(len(q)):
        assert not np.isin(res.rows[i], exclude[i]).any()
        assert allowed[res.rows[i]].all()
    # The admissible best are found: compare with an exact scan over what remains.
    expected = []
    for i in range(len(q)):
        m = allowed.copy()
        m[exclude[i]] = False
        cand = np.flatnonzero(m)
        expected.append(cand[np.argsort(-(base[cand] @ q[i]))[:k]])
    assert recall_at_k(res.rows, np.array(expected)) >= 0.9


def test_short_results_are_reported(data):
    base, _, ids = data
    small = base[:30]
    index = VectorIndex.build(small, ids[:30], IndexSpec())
    allowed = np.zeros(30, bool)
    allowed[:7] = True
    res = index.search(small[:2], 10, exclude=[np.array([0, 1]), np.array([], np.int64)], allowed=allowed)
    assert res.found.tolist() == [5, 7]
    assert res.short.tolist() == [0, 1]
    assert (res.rows[0, 5:] == -1).all() and np.isneginf(res.scores[0, 5:]).all()
    assert set(res.rows[0, :5]) == {2, 3, 4, 5, 6}
    # An approximate index whose graph cannot reach the admissible rows falls back to an exact scan.
    hnsw = VectorIndex.build(base, ids, IndexSpec(exact_below=0, kind="hnsw", hnsw_m=8, ef_search=16))
    allowed = np.zeros(len(base), bool)
    allowed[np.argsort(base[:, 0])[:3]] = True  # three rows, far from most queries
    res = hnsw.search(base[-5:], 10, allowed=allowed)
    assert (res.found == 3).all() and set(res.rows[0, :3]) == set(np.flatnonzero(allowed))


def test_save_and_load_keep_results_and_parameters(data, tmp_path):
    base, queries, ids = data
    for kind in ("hnsw", "ivf_pq"):
        spec = IndexSpec(exact_below=0, kind=kind, nlist=64, nprobe=12, pq_m=8, ef_search=77)
        index = VectorIndex.build(base, ids, spec)
        index.save(tmp_path / kind)
        back = VectorIndex.load(tmp_path / kind, device="cpu")
        assert back.kind == kind and back.ids == ids and back.spec == spec
        if kind == "hnsw":
            assert back.index.hnsw.efSearch == 77
        else:
            assert back.index.nprobe == 12
        np.testing.assert_array_equal(back.search(queries[:50], 20).rows, index.search(queries[:50], 20).rows)


def test_bad_input_is_named(data, tmp_path):
    base, queries, ids = data
    with pytest.raises(RetrievalError, match="3 ids for 5 vectors"):
        VectorIndex.build(base[:5], ids[:3])
    bad = base[:5].copy()
    bad[2, 0] = np.nan
    with pytest.raises(RetrievalError, match="row 2 .*C00002"):
        VectorIndex.build(bad, ids[:5])
    with pytest.raises(ConfigError, match="pq_m 7 must divide the vector dimension 32"):
        VectorIndex.build(base, ids, IndexSpec(exact_below=0, kind="ivf_pq", pq_m=7))
    index = VectorIndex.build(base[:100], ids[:100])
    with pytest.raises(RetrievalError, match="dimension 16, the index has 32"):
        index.search(np.zeros((1, 16), np.float32), 5)
    with pytest.raises(RetrievalError, match="not a saved index"):
        VectorIndex.load(tmp_path)
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        IndexSpec(kind="lsh")
