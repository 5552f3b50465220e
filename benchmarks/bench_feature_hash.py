"""Do features computed on the fly give the same feature hashes as the materialized ones?

For a home with materialized features at ``--date``, computes the features of that date
point-in-time, the way a daily run on an unmaterialized date gets them, and compares them with the
materialized ones: columns that differ and the share of clients whose ``feature_hash`` differs.
``--src DIR`` runs the same check against another checkout (for a before/after comparison).

    python benchmarks/bench_feature_hash.py --home .nba --date 2026-11-30 [--src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHECK = r"""
import json, sys
from datetime import date
import feature_store.materialize as fm
from feature_store.offline import compute_features
from feature_store.store import TableStore
from nba.decision import feature_hashes
from nba.home import Home
home, day = Home.resolve(sys.argv[1]), date.fromisoformat(sys.argv[2])
version = TableStore(home.store).require_current()
stored = fm.read_features(home, day)
computed = (compute_features(version, day, fm.state_config(), fm.time_zone()) if hasattr(fm, "time_zone")
            else compute_features(version, day))
computed = fm._as_stored(computed) if hasattr(fm, "_as_stored") else computed  # what features_at returns
cols = [c for c in stored.columns if not stored[c].equals(computed[c])]
share = float((feature_hashes(stored) != feature_hashes(computed)).mean())
print(json.dumps({"clients": len(stored), "columns": len(stored.columns), "columns_differing": len(cols),
                  "feature_hash_differs_share": round(share, 4), "examples": cols[:5]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args()
    src = args.src.resolve()
    r = subprocess.run([sys.executable, "-c", CHECK, str(args.home.resolve()), args.date], cwd=src,
                       env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    print(json.dumps({**json.loads(r.stdout), "src": str(src), "date": args.date}))


if __name__ == "__main__":
    main()
