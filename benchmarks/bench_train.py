"""Benchmark: training epoch time and edges/s on the bank graph, plain loop (what each Ray worker runs).

    python benchmarks/bench_train.py --customers 100000 [--home DIR] [--kinds nba,lightgcn] [--epochs 2]

Without --home it generates, ingests and materializes a synthetic bank of --customers in a temporary
NBA_HOME (or reuses DIR when given and already filled). Then it prepares the graph as ``nba train``
does (features, graph, validation hold-out, churn examples) and trains ``--epochs`` epochs per kind
with configs/train.yaml, printing per epoch: seconds, target pairs/s (BPR pairs trained on) and graph
edges/s (positive edges of the graph per second of epoch: every step propagates all of them), plus
peak RSS. The device is resolve_device(): a GPU when present.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_store.ingest import ingest
from feature_store.materialize import available_as_of, materialize
from feature_store.store import TableStore
from nba.home import Home
from nba.synthetic import generate
from training.config import load_run_config
from training.device import resolve_device
from training.loop import train_loop
from training.pipeline import prepare


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--kinds", default="nba,lightgcn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    args = ap.parse_args()

    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="nba-bench-train-")).ensure()
    if not available_as_of(home):
        t = time.perf_counter()
        generate(args.customers, seed=42, as_of=date(2026, 11, 1), out=home.synthetic)
        ingest(home.synthetic, TableStore(home.store))
        materialize(home)
        print(f"bank of {args.customers:,} customers ready in {time.perf_counter() - t:.0f} s ({home.root})")
    device = resolve_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    cfg, _ = load_run_config(None, ["ray.enabled=false", *args.set])
    t = time.perf_counter()
    prep = prepare(home, cfg)
    d = prep.data
    print(f"device: {name}; graph at {prep.as_of}: {d.num_users:,} customers, {d.num_items} products, "
          f"{len(d.train_users):,} positive edges + {len(d.extra_users):,} enquiry edges, "
          f"{prep.churn_rows:,} churn examples; prepared in {time.perf_counter() - t:.1f} s")
    for kind in args.kinds.split(","):
        mcfg = cfg.model.model_copy(update={"kind": kind, "epochs": args.epochs, "eval_every": 10_000})
        r = train_loop(mcfg, d)
        for h in r.history:
            print(f"{kind:8s} epoch {h['epoch']}: {h['epoch_seconds']:.1f} s, {h['edges_per_second']:,.0f} target "
                  f"pairs/s, {len(d.train_users) / h['epoch_seconds']:,.0f} graph edges/s, loss {h['loss']:.4f}")
        print(f"{kind:8s} peak RSS so far {rss_mb():,.0f} MB")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
