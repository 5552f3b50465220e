"""Daily decisioning benchmark (issue 7): every client from features to written RM lists.

    python benchmarks/bench_daily.py --home /tmp/bench1m [--date 2026-11-01] [--repeat 2]

The home must hold a store, the features of the date (materialized, else they are computed and that
time counts), and a registered model. Setting one up for 1,000,000 clients:

    export NBA_HOME=/tmp/bench1m
    nba data generate -n 1000000 --as-of 2026-11-01 --seed 42 && nba data ingest $NBA_HOME/synthetic
    nba features materialize && nba train --no-ray --set model.epochs=2 --promote

Prints the time of each stage (load: store, features, model, history; decide; write), peak RSS, and the
decision mix, as JSON. ``--repeat`` re-runs the same date (idempotent; the second run finds the model
bundle cached in NBA_HOME) and checks the decisions are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_store.materialize import default_as_of  # noqa: E402
from feature_store.store import TableStore  # noqa: E402
from nba.home import Home  # noqa: E402
from serving.daily import run_daily  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--date", type=date.fromisoformat)
    ap.add_argument("--model", default="champion")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--ray-address", default=None, help="score with Ray Data ('local' for a local Ray)")
    args = ap.parse_args()
    home = Home.resolve(args.home)
    day = args.date or default_as_of(TableStore(home.store).require_current())
    first = None
    for i in range(args.repeat):
        t = time.perf_counter()
        res = run_daily(home, day, model=args.model, ray_address=args.ray_address, log=print)
        total = time.perf_counter() - t
        s = res.summary()
        s.update({"run": i + 1, "total_s": round(total, 1), "clients": int(json.loads(
            (res.path / "manifest.json").read_text())["clients"]),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "machine": f"{os.cpu_count()} cores", "today": str(date.today())})
        if first is None:
            first = res.decisions
        else:
            s["identical_to_first_run"] = bool(first.equals(res.decisions))
        print(json.dumps(s, default=str), flush=True)


if __name__ == "__main__":
    main()
