"""Cold import time of the serving entry point and of ``nba --help``, and which heavy modules they load.

Each figure is the median of ``--repeat`` fresh interpreter starts (``python -X importtime`` is not used:
the wall time of a whole start is what a user waits for). ``--src DIR`` measures another checkout of the
project (for a before/after comparison: ``git worktree add /tmp/before <commit>``); the old entry point
``nba.cli`` is used when ``apps/cli.py`` does not exist there.

    python benchmarks/bench_imports.py [--src DIR] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HEAVY = ("torch", "torch_geometric", "mlflow", "ray", "duckdb", "sklearn", "faiss")


def _time(code: str, src: Path, repeat: int) -> tuple[float, list[str]]:
    # The snippet's own output (``--help``) is swallowed; the last line printed names the heavy modules.
    probe = (f"import sys, io, contextlib\nwith contextlib.redirect_stdout(io.StringIO()):\n    exec({code!r})\n"
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(src)}
    times, loaded = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", probe], cwd=src, env=env, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t)
        loaded = r.stdout.split()
    return statistics.median(times), loaded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    src = args.src.resolve()
    cli = "apps.cli" if (src / "apps" / "cli.py").exists() else "nba.cli"
    cases = {
        "serving entry (import serving.daily, serving.retrieval)": "import serving.daily, serving.retrieval",
        f"nba --help ({cli})": f"import sys; sys.argv = ['nba', '--help']\ntry:\n    __import__('{cli}', fromlist=['main']).main()\nexcept SystemExit: pass",
        "python startup only": "pass",
    }
    for name, code in cases.items():
        sec, loaded = _time(code, src, args.repeat)
        print(json.dumps({"what": name, "median_s": round(sec, 2), "loads": loaded, "src": str(src),
                          "repeat": args.repeat, "machine": f"{os.cpu_count()} cores", "date": str(date.today())}),
              flush=True)


if __name__ == "__main__":
    main()
