"""Benchmark: training epoch time and edges/s of the plain loop on the bank graph.

    python benchmarks/bench_train.py --home DIR [--as-of 2026-11-01] [--batch-sizes 8192,65536] [--kinds nba,lightgcn]

DIR is an NBA_HOME whose store holds a bank (e.g. the one bench_features.py builds). Times graph
building, then one epoch of BPR per (kind, batch size): every step propagates the full graph.
The device is the same resolve_device() the loop uses: a GPU when present.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from datetime import date
from pathlib import Path

import torch

from feature_store.materialize import available_as_of, read_features
from feature_store.offline import compute_features
from feature_store.store import TableStore
from nba.device import resolve_device
from nba.home import Home
from training.graph import build_graph
from training.loop import TrainConfig, train_loop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--as-of", type=date.fromisoformat, default=None)
    ap.add_argument("--batch-sizes", default="8192,65536")
    ap.add_argument("--kinds", default="nba,lightgcn")
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()

    home = Home.resolve(args.home)
    version = TableStore(home.store).require_current()
    as_of = args.as_of or available_as_of(home)[-1]
    device = resolve_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; as_of {as_of}")
    t0 = time.perf_counter()
    feats = read_features(home, as_of) if as_of in available_as_of(home) else compute_features(version, as_of)
    graph = build_graph(version, feats, as_of)
    data = graph.interactions()
    print(f"graph: {data.num_users:,} customers, {data.num_items} products, {len(data.train_users):,} positive "
          f"edges, {len(data.extra_users):,} enquiry edges, built in {time.perf_counter() - t0:.1f} s")
    for kind in args.kinds.split(","):
        for bs in map(int, args.batch_sizes.split(",")):
            cfg = TrainConfig(kind=kind, epochs=1, batch_size=bs, dim=args.dim)
            r = train_loop(cfg, data)
            h = r.history[0]
            print(f"{kind:8s} batch {bs:>6,}: epoch {h['epoch_seconds']:.1f} s, "
                  f"{h['edges_per_second']:,.0f} positive edges/s, loss {h['loss']:.4f}, "
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
