"""Recording outcomes through feature_store.outcomes.record_outcomes: seconds per batch.

Works on a hard-linked copy of a home's store (the home is not changed). Outcome rows are "shown"
events of the latest daily run's listed decisions, in batches.

    python benchmarks/bench_outcomes.py --home .nba [--batches 5] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_store.outcomes import record_outcomes  # noqa: E402
from feature_store.store import TableStore  # noqa: E402
from nba.home import Home  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args()
    home = Home.resolve(args.home)
    days = sorted(p for p in home.daily.iterdir() if not p.name.startswith(".")) if home.daily.is_dir() else []
    if not days:
        raise SystemExit(f"no daily run under {home.daily}: run `nba demo` or `nba daily` first")
    d = pd.read_parquet(days[-1] / "decisions.parquet")
    d = d[~d.control_group].reset_index(drop=True)
    day = date.fromisoformat(days[-1].name)
    with tempfile.TemporaryDirectory(prefix="nba-bench-outcomes-") as tmp:
        store = TableStore(Path(tmp) / "store")
        shutil.copytree(home.store, store.root, copy_function=os.link)
        customers = store.require_current().rows("customers")
        for b in range(args.batches):
            part = d.iloc[b * args.batch_size:(b + 1) * args.batch_size]
            if part.empty:
                break
            at = pd.Timestamp(f"{day}T09:00:00")
            rows = pd.DataFrame({"decision_id": part.decision_id, "customer_id": part.customer_id,
                                 "action_family": part.action_family, "action_id": part.action_id,
                                 "product_id": part.product_id, "channel": part.channel, "decided_at": at,
                                 "outcome": "shown", "outcome_at": at + pd.Timedelta(minutes=5)})
            t = time.perf_counter()
            v = record_outcomes(store, rows, source="bench", now=datetime(day.year, day.month, day.day, 12))
            print(json.dumps({"batch": b + 1, "rows": len(rows), "seconds": round(time.perf_counter() - t, 3),
                              "store_customers": customers, "version": v.name,
                              "machine": f"{os.cpu_count()} cores", "date": str(date.today())}), flush=True)


if __name__ == "__main__":
    main()
