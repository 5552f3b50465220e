"""Benchmark: epoch time of the project's plain LightGCN (classic BPR, no masking) on a LightGCN-format
dataset's train.txt, at several batch sizes.

    python benchmarks/bench_lightgcn_epoch.py --data ../shared/datasets/ml-1m --batch-sizes 2048,8192
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys_bench.datasets import load_lightgcn  # noqa: E402
from training.loop import InteractionData, TrainConfig, train_loop  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--batch-sizes", default="2048,8192")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    ds = load_lightgcn(args.data)
    d = InteractionData(ds.num_users, ds.num_items, ds.train.users, ds.train.items)
    print(f"{ds.name}: {len(ds.train):,} train interactions, {ds.num_users:,} users, {ds.num_items:,} items")
    for bs in map(int, args.batch_sizes.split(",")):
        cfg = TrainConfig(kind="lightgcn", epochs=args.epochs, batch_size=bs, target_share=0,
                          min_steps_per_epoch=1, eval_every=10_000)
        r = train_loop(cfg, d)
        print(f"batch {bs:>6,}: epochs " + ", ".join(f"{h['epoch_seconds']:.1f} s" for h in r.history))


if __name__ == "__main__":
    main()
