"""Cost of the bank's time zone in feature computation: compute_features in UTC (no conversion) and in a
zone (every timestamp shown as local wall-clock time through DuckDB's ICU), best of ``--repeat``.

    python benchmarks/bench_time_zone.py --home .nba [--date 2026-11-30] [--zone Asia/Shanghai]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_store.materialize import default_as_of  # noqa: E402
from feature_store.offline import compute_features  # noqa: E402
from feature_store.store import TableStore  # noqa: E402
from nba.home import Home  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--date", type=date.fromisoformat)
    ap.add_argument("--zone", default="Asia/Shanghai")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    version = TableStore(Home.resolve(args.home).store).require_current()
    day = args.date or default_as_of(version)
    for zone in ("UTC", args.zone):
        best, rows = float("inf"), 0
        for _ in range(args.repeat):
            t = time.perf_counter()
            rows = len(compute_features(version, day, time_zone=zone))
            best = min(best, time.perf_counter() - t)
        print(json.dumps({"time_zone": zone, "best_s": round(best, 2), "clients": rows, "date": str(day),
                          "machine": f"{os.cpu_count()} cores", "today": str(date.today())}), flush=True)


if __name__ == "__main__":
    main()
