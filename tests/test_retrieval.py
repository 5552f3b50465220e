"""Retrieval over a registered model (issue 6): indexes logged to the MLflow model version, candidates
equal to the model's own ranking, lookalikes, swaps that never touch a snapshot in use, the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bundle import BundleError, registry
from nba.home import Home
from serving.index import IndexConfig, IndexSpec, RetrievalError
from serving.retrieval import INDEX_TAG, Retriever, build_for_version, load_for_version
from tests.conftest import trained_home

APPROX = IndexConfig(customers=IndexSpec(exact_below=1000, kind="hnsw", hnsw_m=16))


@pytest.fixture(scope="module")
def home(bank, tmp_path_factory) -> Home:
    return trained_home(bank, tmp_path_factory, "retrievalhome", epochs=3)


@pytest.fixture(scope="module")
def built(home):
    return build_for_version(home, "champion", APPROX)


def test_indexes_are_logged_to_the_model_version(home, built):
    import os
    # Pointing MLflow at a home must not leak into the environment (children and later homes would
    # silently use this store, and put artifacts under ./mlruns).
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    mv = registry.model_version(home, "champion")
    assert mv.tags[INDEX_TAG] == built.build_id
    assert built.products["kind"] == "flat" and built.customers["kind"] == "hnsw"
    assert built.customers["recall_at_100"] >= 0.95
    # A fresh NBA_HOME cache (another serving host) downloads model and index together from MLflow.
    import shutil
    shutil.rmtree(home.root / "models", ignore_errors=True)
    snap = load_for_version(home, "champion", device="cpu")
    assert snap.version == int(mv.version) and snap.build_id == built.build_id
    assert (registry.cache_dir(home, mv) / "index" / built.build_id / "build.json").exists()
    assert len(snap.customers) == len(snap.bundle.customer_ids) and snap.customers.kind == "hnsw"


def test_candidates_equal_the_models_ranking(home, built):
    r = Retriever(home, "champion", device="cpu")
    ids = r.snapshot.bundle.customer_ids[:200]
    got = r.candidates(ids, k=5)
    want = r.snapshot.bundle.recommend(ids, k=5)
    assert got[["customer_id", "product_id"]].equals(want[["customer_id", "product_id"]])
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-4, atol=1e-4)
    held = {(r.snapshot.bundle.customer_ids[u], r.snapshot.bundle.product_ids[i]) for u, i in r.snapshot.bundle.held.T}
    assert not any((c, p) in held for c, p in zip(got.customer_id, got.product_id))
    # Products excluded for everyone never come back; asking for the whole catalogue reports the shortfall.
    top = got.groupby("customer_id").product_id.first().value_counts().index[0]
    again = r.candidates(ids, k=5, exclude_products=[top])
    assert top not in set(again.product_id)
    n_products = len(r.snapshot.bundle.product_ids)
    full = r.candidates(ids[:3], k=n_products)
    held_count = {c: sum(1 for (cc, _) in held if cc == c) for c in ids[:3]}
    for c, g in full.groupby("customer_id"):
        assert len(g) == g["found"].iloc[0] == n_products - held_count[c]


def test_lookalikes_leave_out_seeds_and_suppressed(home, built):
    r = Retriever(home, "champion", device="cpu")
    ids = r.snapshot.bundle.customer_ids
    seeds, suppressed = ids[:20], ids[20:220]
    for method in ("nearest", "centroid"):
        res = r.lookalike(seeds + ["NOBODY"], 300, method, suppressed)
        aud = res.audience
        assert len(aud) == 300 and aud.customer_id.is_unique and res.unknown_seeds == ["NOBODY"]
        assert not set(aud.customer_id) & set(seeds + suppressed)
        assert aud.similarity.is_monotonic_decreasing and aud["rank"].tolist() == list(range(1, 301))
    # The nearest method ranks by the best cosine to any seed: check against an exact computation.
    v = r.snapshot.customers.vectors
    rows = r.snapshot.customers.row_of(seeds)
    best = (v @ v[rows].T).max(axis=1)
    best[rows] = -np.inf
    best[r.snapshot.customers.row_of(suppressed)] = -np.inf
    exact = set(np.argsort(-best)[:300])
    got = set(r.snapshot.customers.row_of(r.lookalike(seeds, 300, "nearest", suppressed).audience.customer_id.tolist()))
    assert len(got & exact) / 300 >= 0.95
    with pytest.raises(RetrievalError, match="none of the 1 seed customers"):
        r.lookalike(["NOBODY"], 10)


def test_rebuild_swaps_the_reference_never_the_snapshot(home, built):
    r = Retriever(home, "champion", device="cpu")
    old = r.snapshot
    ids = old.bundle.customer_ids[:10]
    before = r.candidates(ids, 3)
    assert r.refresh() is False  # nothing changed
    rebuilt = build_for_version(home, "champion", APPROX)
    assert rebuilt.build_id != old.build_id
    assert r.refresh() is True
    assert r.snapshot is not old and r.snapshot.build_id == rebuilt.build_id
    # The old snapshot, still held by an in-flight request, answers as before.
    assert r.candidates(ids, 3, snapshot=old).equals(before)
    assert r.candidates(ids, 3)[["customer_id", "product_id"]].equals(before[["customer_id", "product_id"]])


def test_unknown_ids_and_missing_index_are_named(home, built, tmp_path):
    r = Retriever(home, "champion", device="cpu")
    with pytest.raises(RetrievalError, match="unknown customer_id 'C-19' .*model version"):
        r.candidates(["C-19"], 3)
    with pytest.raises(RetrievalError, match="unknown product_id 'NOPE'"):
        r.candidates(r.snapshot.bundle.customer_ids[:1], 3, exclude_products=["NOPE"])
    with pytest.raises(BundleError, match="no version or alias 'staging'"):
        Retriever(home, "staging")


def run_cli(home, *args):
    return subprocess.run([sys.executable, "-m", "apps.cli", "--home", str(home.root), *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_query_and_lookalike(home, built, tmp_path):
    ids = load_for_version(home, "champion", device="cpu").bundle.customer_ids
    r = run_cli(home, "index", "query", "--customer", ids[0], "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 3 and ids[0] in lines[0]
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("customer_id,segment\n" + "\n".join(f"{c},mass" for c in ids[:5]) + "\n")
    out = tmp_path / "aud.csv"
    r = run_cli(home, "index", "lookalike", "--seeds-file", str(seeds), "-n", "50", "--out", str(out))
    assert r.returncode == 0, r.stderr
    import pandas as pd
    aud = pd.read_csv(out)
    assert len(aud) == 50 and not set(aud.customer_id) & set(ids[:5])
    r = run_cli(home, "index", "query", "--customer", "C-19")
    assert r.returncode == 2 and "unknown customer_id 'C-19'" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("id,segment\nC1,mass\n")
    r = run_cli(home, "index", "lookalike", "--seeds-file", str(bad))
    assert r.returncode == 2 and "no 'customer_id' column" in r.stderr and "bad.csv" in r.stderr


def test_download_cache_is_keyed_by_the_model_behind_the_version(tmp_path):
    """A recreated tracking store (or another MLFLOW_TRACKING_URI) also has a version 1: its files must
    not be served from the first one's cache."""
    from types import SimpleNamespace

    h = Home.resolve(tmp_path)
    a = SimpleNamespace(name="nba", version="1", model_id="m-0123456789abcdef", run_id="r1", source="")
    b = SimpleNamespace(name="nba", version="1", model_id="m-fedcba9876543210", run_id="r2", source="")
    assert registry.cache_dir(h, a) != registry.cache_dir(h, b)
    assert registry.cache_dir(h, a).parent == h.root / "models"
    with pytest.raises(BundleError, match="not allowed"):
        registry.model_name("x'y")
