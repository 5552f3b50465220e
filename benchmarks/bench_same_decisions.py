"""Behaviour unchanged across a refactor: the daily decisions of this checkout against another one's.

Copies ``--home`` twice (hard links; the home is not changed), runs ``nba daily --date D`` with this
checkout's code on one copy and with ``--src``'s code on the other, both on the home's champion model,
and compares the two ``decisions.parquet`` column by column. The old checkout's CLI module is
``nba.cli`` or ``apps.cli``, whichever it has.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_same_decisions.py --home /tmp/demo_home --date 2026-11-30 --src /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent.parent


def _daily(src: Path, home: Path, day: str) -> pd.DataFrame:
    cli = "apps.cli" if (src / "apps" / "cli.py").exists() else "nba.cli"
    subprocess.run([sys.executable, "-m", cli, "--home", str(home), "daily", "--date", day], cwd=src, check=True,
                   env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
    return pd.read_parquet(home / "daily" / day / "decisions.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="a home with a registered champion (e.g. after demo)")
    ap.add_argument("--date", required=True)
    ap.add_argument("--src", type=Path, required=True, help="the other checkout")
    ap.add_argument("--this", type=Path, default=HERE, help="the checkout to compare (default: this one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nba-same-") as tmp:
        homes = {}
        for name in ("before", "after"):
            homes[name] = Path(tmp) / name
            shutil.copytree(args.home, homes[name], symlinks=True, copy_function=os.link,
                            # No ledger: a hard-linked SQLite file would be written through by both runs.
                            ignore=shutil.ignore_patterns("daily", "ray_results", "ledger.sqlite*"))
        before = _daily(args.src.resolve(), homes["before"], args.date)
        after = _daily(args.this.resolve(), homes["after"], args.date)
    cols = [c for c in before.columns if c in after.columns]
    b, a = before.reset_index(drop=True), after.reset_index(drop=True)
    differ = ({c: int((b[c].astype(str) != a[c].astype(str)).sum()) for c in cols if not b[c].equals(a[c])}
              if len(b) == len(a) else {})
    print(json.dumps({"rows_before": len(before), "rows_after": len(after), "columns_compared": len(cols),
                      "columns_only_before": sorted(set(before.columns) - set(after.columns)),
                      "columns_only_after": sorted(set(after.columns) - set(before.columns)),
                      "rows_differing_by_column": differ, "identical": len(before) == len(after) and not differ,
                      "date": args.date, "machine": f"{os.cpu_count()} cores", "today": str(date.today())}))


if __name__ == "__main__":
    main()
