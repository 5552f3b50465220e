"""Benchmark: materialize features for N customers; online reads on SQLite and Redis.

    python benchmarks/bench_features.py --customers 1000000 [--home DIR] [--reads 20000]

Builds (or reuses, with --home) a synthetic bank in the store, then times `materialize` (DuckDB
features + state, offline Parquet, online publish to SQLite) and reads from the online store: single
customers (median and p99 over --reads random ids) and batches of 1,000 ids. Redis is measured against
a redis-server started here on a free port (needs `redis-server` on PATH), published the same way.
Peak RSS is ru_maxrss of this process (DuckDB runs in-process).
Targets (issue 3): materialize 1M in < 5 min; single SQLite read median < 0.5 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

from feature_store.ingest import ingest
from feature_store.materialize import (
    documents,
    materialize,
    online_store,
    read_features,
)
from feature_store.online import RedisOnlineStore
from feature_store.store import TableStore
from nba.home import Home
from nba.synthetic import generate


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_reads(store, ids: list[str], reads: int, batch: int = 1000) -> str:
    rnd = random.Random(0)
    sample = [rnd.choice(ids) for _ in range(reads)]
    for c in sample[:200]:  # warm-up
        store.get(c)
    lat = []
    for c in sample:
        t = time.perf_counter()
        doc = store.get(c)
        lat.append(time.perf_counter() - t)
        assert doc is not None
    lat.sort()
    blat = []
    for k in range(50):
        chunk = [rnd.choice(ids) for _ in range(batch)]
        t = time.perf_counter()
        docs = store.get_many(chunk)
        blat.append(time.perf_counter() - t)
        assert len(docs) == batch
    blat.sort()
    return (f"single read (decoded): median {statistics.median(lat) * 1e3:.3f} ms, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.3f} ms over {reads:,}; "
            f"batch of {batch:,}: median {statistics.median(blat) * 1e3:.1f} ms, "
            f"p99 {blat[int(len(blat) * 0.99)] * 1e3:.1f} ms over 50")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--home", type=Path, default=None, help="reuse this NBA_HOME (store already ingested)")
    ap.add_argument("--reads", type=int, default=20_000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="nba-bench-features-"))
    home = Home.resolve(args.home or tmp / "home")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    try:
        if TableStore(home.store).current() is None:
            t0 = time.perf_counter()
            generate(args.customers, 42, date(2026, 11, 1), home.synthetic, overwrite=True)
            ingest(home.synthetic, TableStore(home.store))
            print(f"setup (generate + ingest {args.customers:,}): {time.perf_counter() - t0:.1f} s")
        (home.root / "online.sqlite").unlink(missing_ok=True)  # measure one snapshot, not two
        t0 = time.perf_counter()
        result = materialize(home, date(2026, 11, 1))
        total = time.perf_counter() - t0
        print(f"materialize {result.rows:,} customers: {total:.1f} s "
              f"({', '.join(f'{k} {v}' for k, v in result.seconds.items())}); peak RSS {peak_mb():.0f} MB")
        sqlite_size = (home.root / "online.sqlite").stat().st_size / 2**20
        ids = read_features(home, result.as_of)["customer_id"].tolist()
        store = online_store(home)
        print(f"SQLite ({sqlite_size:.0f} MiB): " + time_reads(store, ids, args.reads))
        store.close()

        binary = shutil.which("redis-server")
        if binary is None:
            print("Redis: skipped (redis-server not on PATH)")
            return
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no",
                                 "--dir", str(tmp)], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            redis_store = RedisOnlineStore(f"redis://127.0.0.1:{port}/0")
            df = read_features(home, result.as_of)
            t0 = time.perf_counter()
            redis_store.publish(result.online_version, list(df.columns), documents(df))
            used = redis_store.r.info("memory")["used_memory"] / 2**20
            print(f"Redis publish {len(df):,}: {time.perf_counter() - t0:.1f} s, {used:.0f} MiB in Redis")
            print("Redis: " + time_reads(redis_store, ids, args.reads))
            redis_store.close()
        finally:
            proc.terminate()
            proc.wait()
    finally:
        if args.home is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
