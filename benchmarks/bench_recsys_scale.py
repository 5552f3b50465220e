"""Benchmark: the 15-minute budget of the default settings on a dataset the size of Gowalla.

Writes a synthetic dataset in the LightGCN format (default: 30,000 users, 40,000 items, about 1M
interactions; a Zipf-like item popularity and latent taste clusters, so there is signal to learn),
split per user 70/10/20 into train/valid/test, then runs ``nba bench recsys`` on it with the default
settings (``configs/recsys/default.yaml``: the directory name matches no config of its own) and prints
the time of each model, training and evaluation included.

    python benchmarks/bench_recsys_scale.py                       # nba only
    python benchmarks/bench_recsys_scale.py --models nba,als,pop --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys_bench.harness import run  # noqa: E402, RUF100


def write_dataset(directory: Path, users: int, items: int, interactions: int, seed: int = 0) -> int:
    """Write train/valid/test.txt; returns the number of interactions written."""
    rng = np.random.default_rng(seed)
    clusters = 50
    item_cluster = rng.integers(0, clusters, items)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    rng.shuffle(popularity)
    # per-cluster item distributions: popularity times a boost for the cluster's own items
    per_user = np.maximum(5, rng.lognormal(np.log(interactions / users) - 0.5, 1.0, users).astype(int))
    per_user = np.minimum(per_user, items // 4)
    user_tastes = rng.integers(0, clusters, (users, 2))
    dist = {}
    total = 0
    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(open(directory / f"{name}.txt", "w"))
                 for name in ("train", "valid", "test")}
        for u in range(users):
            key = tuple(sorted(user_tastes[u]))
            if key not in dist:
                w = popularity * np.where(np.isin(item_cluster, key), 30.0, 1.0)
                dist[key] = w / w.sum()
            chosen = rng.choice(items, per_user[u], replace=False, p=dist[key])
            n = len(chosen)
            cut1, cut2 = round(0.7 * n), round(0.8 * n)
            for name, part in (("train", chosen[:cut1]), ("valid", chosen[cut1:cut2]), ("test", chosen[cut2:])):
                if len(part):
                    files[name].write(f"{u} " + " ".join(map(str, part)) + "\n")
            total += n
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=30_000)
    ap.add_argument("--items", type=int, default=40_000)
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--models", default="nba")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "synthetic-scale"
        d.mkdir()
        t0 = time.perf_counter()
        n = write_dataset(d, args.users, args.items, args.interactions)
        print(f"wrote {n:,} interactions ({args.users:,} users, {args.items:,} items) in "
              f"{time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        res = run(d, models=args.models.split(","), out=args.out)
        print(f"total {time.perf_counter() - t0:.0f} s for {args.models} (load, train, evaluate)")
        for name, r in res["models"].items():
            print(f"{name}: {r['train_seconds']:.0f} s training, peak RSS {r['peak_rss_mb']:,.0f} MB, "
                  + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()))


if __name__ == "__main__":
    main()
