"""Benchmark: generate a synthetic bank of N customers; print wall time, peak RAM and rows.

    python benchmarks/bench_generate.py --customers 1000000 [--workers 2] [--ingest]

Peak RAM is the maximum resident set of this process plus its worker processes (ru_maxrss of self and
of reaped children; workers are separate processes, so the sum bounds what the machine held at once).
With --ingest it also times `ingest` of the result into a fresh store (full validation and key checks).
Target (issue 2): 1,000,000 customers in under 10 minutes and under 8 GiB peak RAM on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import pyarrow.dataset as ds

from nba import schema
from nba.synthetic import generate


def _peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, kids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None, help="keep the bank here (default: a temp folder)")
    ap.add_argument("--ingest", action="store_true", help="also ingest it into a fresh store")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="nba-bench-"))
    out = args.out or tmp / "bank"
    try:
        t0 = time.perf_counter()
        generate(args.customers, args.seed, date(2026, 11, 1), out, workers=args.workers, overwrite=True)
        gen_s = time.perf_counter() - t0
        own, kids = _peak_mb()
        rows = {t: ds.dataset(out / t).count_rows() for t in schema.TABLES}
        size = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 2**20
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(f"generate: {args.customers:,} customers, {args.workers} workers: {gen_s:.1f} s; "
              f"peak RSS parent {own:.0f} MB, largest worker {kids:.0f} MB, "
              f"bound {own + kids * args.workers:.0f} MB; {size:.0f} MiB of Parquet")
        print("rows: " + ", ".join(f"{t} {n:,}" for t, n in rows.items()) + f"; total {sum(rows.values()):,}")
        if args.ingest:
            from feature_store.ingest import ingest
            from feature_store.store import TableStore

            t0 = time.perf_counter()
            v = ingest(out, TableStore(tmp / "store"))
            ing_s = time.perf_counter() - t0
            own2, _ = _peak_mb()
            print(f"ingest: {ing_s:.1f} s ({sum(rows.values()) / ing_s:,.0f} rows/s), version {v.name}, "
                  f"peak RSS {own2:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
