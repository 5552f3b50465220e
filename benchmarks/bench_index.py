"""FAISS index benchmark (issue 6): build time, memory, queries/s at batch 1 and 1,024, recall@100.

    python benchmarks/bench_index.py                       # 1,000,000 generated vectors, dim 64
    python benchmarks/bench_index.py --embeddings U.npy    # real customer embeddings ([n, d] float32)
    python benchmarks/bench_index.py -n 100000 --configs hnsw32:128 ivf_flat:64

The generated vectors imitate customer embeddings: a mixture of 2,000 clusters of very different sizes
(Zipf) and spreads around a low-rank core, L2-normalised as the customer index stores them. Queries
are 2,000 vectors drawn from the same distribution but not in the index; ground truth is an exact
inner-product scan. Every index goes through ``serving.index.VectorIndex``, the code serving uses.
The product index is timed for single queries with the held-products filter (k=10).
Prints one JSON line per configuration, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving.index import IndexSpec, VectorIndex, gpu_available, recall_at_k  # noqa: E402


def make_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clusters = 2000
    basis = rng.normal(size=(16, d)).astype(np.float32)
    centers = (rng.normal(size=(clusters, 16)).astype(np.float32) @ basis
               + 0.5 * rng.normal(size=(clusters, d)).astype(np.float32))
    sizes = 1.0 / np.arange(1, clusters + 1) ** 0.8
    which = rng.choice(clusters, n, p=sizes / sizes.sum())
    spread = rng.uniform(0.3, 1.2, clusters).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 200_000):
        w = which[s:s + 200_000]
        out[s:s + len(w)] = centers[w] + spread[w, None] * rng.normal(size=(len(w), d)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def parse(cfg: str) -> tuple[str, IndexSpec]:
    """hnsw32:128 (M:efSearch), ivf_flat:64 (nprobe), ivf_pq16:64 (pq_m:nprobe), flat."""
    name, _, val = cfg.partition(":")
    if name == "flat":
        return cfg, IndexSpec(exact_below=10**12)
    if name.startswith("hnsw"):
        return cfg, IndexSpec(exact_below=0, kind="hnsw", hnsw_m=int(name[4:] or 32), ef_search=int(val or 128))
    if name == "ivf_flat":
        return cfg, IndexSpec(exact_below=0, kind="ivf_flat", nlist=4096, nprobe=int(val or 64))
    if name.startswith("ivf_pq"):
        return cfg, IndexSpec(exact_below=0, kind="ivf_pq", nlist=4096, pq_m=int(name[6:] or 16), nprobe=int(val or 64))
    raise SystemExit(f"unknown config {cfg!r}")


def timed_queries(index: VectorIndex, q: np.ndarray, k: int, batch: int, limit_s: float = 30.0):
    """Queries/s in batches of ``batch`` (and per-query latencies for batch 1), within ``limit_s``."""
    lat, done, t0 = [], 0, time.perf_counter()
    rows = []
    for s in range(0, len(q), batch):
        t = time.perf_counter()
        r = index.search(q[s:s + batch], k)
        lat.append(time.perf_counter() - t)
        rows.append(r.rows)
        done += len(r.rows)
        if time.perf_counter() - t0 > limit_s:
            break
    total = time.perf_counter() - t0
    return done / total, np.array(lat), np.vstack(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("-d", type=int, default=64)
    ap.add_argument("--embeddings", type=Path, help="[n, d] float32 .npy of real customer embeddings")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--configs", nargs="*", default=["hnsw32:128", "hnsw32:64", "hnsw32:256", "ivf_flat:64",
                                                      "ivf_flat:128", "ivf_pq16:128"])
    ap.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all cores)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    import faiss
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    t = time.perf_counter()
    if args.embeddings:
        allv = np.load(args.embeddings).astype(np.float32)
        allv /= np.linalg.norm(allv, axis=1, keepdims=True)
        rng = np.random.default_rng(1)
        qi = rng.choice(len(allv), args.queries, replace=False)
        mask = np.ones(len(allv), bool)
        mask[qi] = False
        base, queries = allv[mask], allv[qi]
        source = str(args.embeddings)
    else:
        allv = make_vectors(args.n + args.queries, args.d)
        base, queries = allv[:args.n], allv[args.n:]
        source = "generated mixture (2,000 Zipf-sized clusters, low-rank core)"
    ids = [f"C{i:08d}" for i in range(len(base))]
    print(f"# {len(base):,} vectors of dim {base.shape[1]} ({source}) in {time.perf_counter() - t:.1f} s; "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, GPU: {gpu_available()}", flush=True)

    t = time.perf_counter()
    exact_index = VectorIndex.build(base, ids, IndexSpec(exact_below=10**12))
    k = 100
    exact_rows = exact_index.search(queries, k).rows
    exact_s = time.perf_counter() - t
    del exact_index
    print(f"# exact ground truth for {len(queries):,} queries in {exact_s:.1f} s", flush=True)

    results = []
    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    for cfg in args.configs:
        name, spec = parse(cfg)
        before = current_rss_mb()
        index = VectorIndex.build(base, ids, spec)
        mem = current_rss_mb() - before
        size = len(faiss.serialize_index(index.index)) / 2**20
        qps_batch, _, rows = timed_queries(index, queries, k, 1024)
        recall = recall_at_k(rows, exact_rows[:len(rows)])
        qps_one, lat, _ = timed_queries(index, queries[:1000], k, 1, limit_s=20)
        r = {"config": name, "kind": index.kind, "n": len(base), "dim": base.shape[1],
             "build_s": round(index.build_seconds, 1), "index_mb": round(size, 1), "rss_growth_mb": round(mem, 1),
             "recall_at_100": round(recall, 4), "qps_batch_1024": round(qps_batch, 0),
             "qps_batch_1": round(qps_one, 0), "latency_ms_mean": round(lat.mean() * 1e3, 3),
             "latency_ms_p99": round(float(np.quantile(lat, 0.99)) * 1e3, 3),
             "machine": machine, "date": str(date.today()), "gpu": gpu_available()}
        print(json.dumps(r), flush=True)
        results.append(r)
        del index

    # Product index: the catalogue is small (exact); a single customer's query with held products excluded.
    rng = np.random.default_rng(3)
    for m in (22, 10_000):
        items = rng.normal(size=(m, args.d + 1)).astype(np.float32)
        pindex = VectorIndex.build(items, [f"P{i}" for i in range(m)], IndexSpec())
        users = rng.normal(size=(2000, args.d + 1)).astype(np.float32)
        held = [rng.choice(m, min(m - 10, 4), replace=False) for _ in range(len(users))]
        lat = []
        for u, h in zip(users, held):
            t = time.perf_counter()
            pindex.search(u[None, :], 10, exclude=[h])
            lat.append(time.perf_counter() - t)
        lat = np.array(lat[100:])  # after warm-up
        r = {"config": f"products-{m}", "kind": pindex.kind, "n": m, "k": 10, "filter": "held products",
             "latency_ms_mean": round(lat.mean() * 1e3, 3), "latency_ms_p99": round(float(np.quantile(lat, 0.99)) * 1e3, 3),
             "machine": machine, "date": str(date.today())}
        print(json.dumps(r), flush=True)
        results.append(r)

    print(f"\n{'config':14s} {'kind':9s} {'build s':>8s} {'MB':>7s} {'recall@100':>10s} {'qps@1024':>9s} "
          f"{'qps@1':>7s} {'ms mean':>8s} {'ms p99':>7s}")
    for r in results:
        print(f"{r['config']:14s} {r['kind']:9s} {r.get('build_s', ''):>8} {r.get('index_mb', ''):>7} "
              f"{r.get('recall_at_100', ''):>10} {r.get('qps_batch_1024', ''):>9} {r.get('qps_batch_1', ''):>7} "
              f"{r['latency_ms_mean']:>8} {r['latency_ms_p99']:>7}")
    print(f"peak RSS {rss_mb():,.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
