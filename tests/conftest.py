"""Shared fixtures: one small synthetic bank per test session, in Parquet and in CSV form."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pytest

from feature_store.store import TableStore
from nba import schema
from nba.synthetic import generate

AS_OF = date(2026, 6, 1)


@pytest.fixture(scope="session")
def bank(tmp_path_factory) -> Path:
    """A 5,000-customer synthetic bank (Parquet, the generator's own layout)."""
    out = tmp_path_factory.mktemp("bank") / "bank"
    generate(5_000, seed=11, as_of=AS_OF, out=out, workers=1)
    return out


@pytest.fixture(scope="session")
def small_csv_bank(tmp_path_factory) -> Path:
    """A 300-customer bank written as one CSV per table, the way a bank would hand it over."""
    pq_dir = tmp_path_factory.mktemp("small") / "parquet"
    generate(300, seed=5, as_of=AS_OF, out=pq_dir, workers=1)
    csv_dir = tmp_path_factory.mktemp("small") / "csv"
    csv_dir.mkdir()
    for name in schema.TABLES:
        pacsv.write_csv(ds.dataset(pq_dir / name).to_table(), csv_dir / f"{name}.csv")
    return csv_dir


@pytest.fixture()
def csv_bank(small_csv_bank, tmp_path) -> Path:
    """A private, editable copy of the CSV bank."""
    dst = tmp_path / "in"
    shutil.copytree(small_csv_bank, dst)
    return dst


@pytest.fixture()
def store(tmp_path) -> TableStore:
    return TableStore(tmp_path / "home" / "store")


# -------------------------------------------------------------------------------------------------
# Redis: a private redis-server for the test session (CI installs Debian's redis-server).

import os
import shutil as _shutil
import socket
import subprocess
import time
import uuid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """URL of a redis-server started for this session; skipped only where Redis is not required."""
    binary = _shutil.which("redis-server")
    if binary is None:
        if os.environ.get("NBA_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is required (NBA_REQUIRE_REDIS=1) but not installed")
        pytest.skip("redis-server not installed (make test installs it)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def online_url(request, tmp_path, monkeypatch):
    """Each online-store test runs against both backends (Redis under a fresh key prefix)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.sqlite'}"
    url = request.getfixturevalue("redis_url")
    monkeypatch.setenv("NBA_ONLINE_PREFIX", f"test:{uuid.uuid4().hex[:8]}")
    return url


# -------------------------------------------------------------------------------------------------
# Ray: one local Ray for the whole test session (its start costs ~30 s), with few CPUs.


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# -------------------------------------------------------------------------------------------------
# A home with the bank ingested and a tiny model registered (retrieval and daily tests).


def trained_home(bank: Path, tmp_path_factory, name: str, epochs: int):
    from datetime import timedelta

    from feature_store.ingest import ingest
    from nba.config import CONFIG_DIR
    from nba.home import Home
    from training.config import load_run_config
    from training.pipeline import run_training

    h = Home.resolve(tmp_path_factory.mktemp(name)).ensure()
    ingest(bank, TableStore(h.store))
    cfg = load_run_config(CONFIG_DIR / "train-tiny.yaml", ["ray.enabled=false", f"model.epochs={epochs}"])[0]
    run_training(h, cfg, AS_OF - timedelta(days=1), log=lambda m: None)
    return h


# -------------------------------------------------------------------------------------------------
# PostgreSQL: a private cluster for the test session (Debian's postgresql package; make test installs it).

import glob
import re
import tempfile


def _pg_bindir() -> Path | None:
    """The folder of initdb: on PATH, else Debian's /usr/lib/postgresql/<major>/bin (the newest)."""
    found = _shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    major = lambda d: int(re.sub(r"\D", "", d.parent.name) or 0)  # noqa: E731
    return max(dirs, key=major) if dirs else None


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a PostgreSQL server started for this session (trust auth on 127.0.0.1, a free port, its own
    data folder), with an empty database ``nba``; skipped only where PostgreSQL is not required."""
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("NBA_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required (NBA_REQUIRE_POSTGRES=1) but initdb is not installed")
        pytest.skip("PostgreSQL not installed (make test installs Debian's postgresql)")
    # PostgreSQL refuses to run as root: as root the server runs as the `postgres` user, in a folder it
    # owns under /tmp (pytest's own temporary folders are private to their owner).
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="nba-pg-"))
    if as_root:
        _shutil.chown(root, "postgres", "postgres")
    data, log, port = root / "data", root / "server.log", _free_port()

    def pg(tool: str, *args: str) -> None:
        r = subprocess.run([*run_as, str(bindir / tool), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, timeout=120)
        if r.returncode:
            server = log.read_text() if log.exists() else ""
            pytest.fail(f"{tool} failed ({r.returncode}): {r.stderr}\n{server}")

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
           f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE nba")
        yield f"postgresql://postgres@127.0.0.1:{port}/nba"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast", "-w"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        _shutil.rmtree(root, ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# The scoring API's home (issue 15), shared by its test files.


@pytest.fixture(scope="session")
def api_home(bank, tmp_path_factory):
    """A trained home: features materialized and online at AS_OF, the champion (v1) with indexes, and a
    second version (v2, not promoted) for reload tests."""
    from datetime import timedelta

    from bundle import registry
    from feature_store.ingest import ingest
    from feature_store.materialize import materialize
    from nba.config import CONFIG_DIR
    from nba.home import Home
    from serving.retrieval import build_for_version
    from training.config import load_run_config
    from training.pipeline import run_training

    h = Home.resolve(tmp_path_factory.mktemp("apihome")).ensure()
    ingest(bank, TableStore(h.store))
    materialize(h)
    cfg = load_run_config(CONFIG_DIR / "train-tiny.yaml", ["ray.enabled=false", "model.epochs=2"])[0]
    run_training(h, cfg, AS_OF - timedelta(days=1), log=lambda m: None, promote=True)
    build_for_version(h, 1)
    run_training(h, cfg, AS_OF - timedelta(days=1), log=lambda m: None, promote=False)
    build_for_version(h, 2)
    registry.promote(h, 1)
    return h


# -------------------------------------------------------------------------------------------------
# Chromium: Debian's headless Chromium driven by Playwright (make test installs the `chromium` package;
# Playwright's own browser builds are never downloaded).


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system Chromium executable; skipped only where Chromium is not required."""
    found = _shutil.which("chromium") or _shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("NBA_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required (NBA_REQUIRE_CHROMIUM=1) but not installed (make chromium)")
        pytest.skip("chromium not installed (make chromium installs Debian's chromium)")
    return found


@pytest.fixture(scope="module")
def browser(chromium_path):
    """A headless Chromium (Playwright's sync API), one per test module; --no-sandbox as the tests run as root.

    Per module, not per session: while Playwright's sync API is started, its event loop counts as the
    running loop of this thread (between calls too), so ``asyncio.run()`` in any later test would fail with
    "cannot be called from a running event loop". Stopping it at the end of each module that uses it leaves
    the rest of the suite as it was. A module that uses it must not itself call ``asyncio.run()`` in the
    main thread (a server under test runs in its own thread, with its own loop)."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


# -------------------------------------------------------------------------------------------------
# The RM workbench's home (issue 16): a trained, served home with the daily list of AS_OF.


@pytest.fixture(scope="session")
def workbench_home(bank, tmp_path_factory):
    """Features online at AS_OF, the champion (v1) with its indexes, and the daily list of AS_OF (its
    decisions in the ledger). Its own home: the workbench tests record outcomes and run later days."""
    from bundle import registry
    from feature_store.materialize import materialize
    from serving.daily import run_daily
    from serving.retrieval import build_for_version

    h = trained_home(bank, tmp_path_factory, "wbhome", epochs=1)
    materialize(h, AS_OF)
    registry.promote(h, 1)
    build_for_version(h, 1)
    run_daily(h, AS_OF)
    return h
