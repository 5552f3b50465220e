"""The scoring API as a real server (``python -m apps.cli serve``, uvicorn, in a subprocess): acknowledged
outcomes survive ``kill -9`` (a SQLite ledger behind ``--workers 2``, a PostgreSQL one behind one worker),
and the server's logs hold no client id and no API key.

The server reads the session's trained home (model, indexes, online store) and writes only to its own serving
database (``--ledger-url``: keys, ledger, audit), so the shared home is left as it was. Its clock is
``NBA_SERVE_CLOCK``, noon of the synthetic bank's day."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from datetime import time as dtime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from apps.api.security import KeyStore
from feature_store.ledger import Ledger
from feature_store.ledger import outcomes as outcomes_table
from feature_store.materialize import features_at
from tests.conftest import AS_OF, _free_port

ROOT = Path(__file__).resolve().parents[1]
NOON = datetime.combine(AS_OF, dtime(12), tzinfo=timezone.utc)  # the server's NBA_SERVE_CLOCK
N_ACKED = 40     # kill -9 right after this many acknowledged outcomes
N_SENT = 60      # outcomes sent in all (4 at a time), so that some are in flight at the kill
START_TIMEOUT = 120


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server's process group (uvicorn and its workers), then reap it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def start_server(home, ledger_url: str, workdir: Path, *args: str) -> Server:
    """``python -m apps.cli --home HOME serve --port P --ledger-url URL ARGS`` in its own process group,
    stdout and stderr to ``workdir/server.log``; returns once ``/readyz`` answers 200 and every worker
    (``--workers N``) has logged its startup (a worker loads the model and the day's scores on start)."""
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    port = _free_port()
    log = workdir / "server.log"
    env = {**os.environ, "NBA_SERVE_CLOCK": NOON.isoformat(), "PYTHONUNBUFFERED": "1"}
    env.pop("NBA_LEDGER_URL", None)
    env.pop("NBA_SERVE_CLOCK_ANCHOR", None)  # pinned by `nba serve` itself, for all its workers
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "--home", str(home.root), "serve",
                                 "--port", str(port), "--ledger-url", ledger_url, *args],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{server.text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200 \
                    and server.text().count("Application startup complete") >= workers:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    pytest.fail(f"the server was not ready within {START_TIMEOUT} s:\n{server.text()[-3000:]}")


@pytest.fixture(scope="module")
def client_ids(api_home) -> list[str]:
    return features_at(api_home, AS_OF)["customer_id"].astype(str).tolist()


def _decisions(http: httpx.Client, ids: list[str], want: int) -> tuple[list[str], list[str]]:
    """Decision ids of the first ``want`` clients (in ``ids``) who get one, and the clients asked."""
    got, asked = [], []
    for cid in ids:
        r = http.post("/v1/next-best-action", json={"customer_id": cid})
        assert r.status_code == 200, r.text
        asked.append(cid)
        if r.json()["decision_id"]:
            got.append(r.json()["decision_id"])
            if len(got) == want:
                return got, asked
    pytest.fail(f"only {len(got)} of {len(asked)} clients got a decision")


@dataclass
class Kill9Run:
    url: str
    key_id: str
    sent: dict        # idempotency key -> (decision_id, outcome)
    acked: set        # idempotency keys answered 200 before the kill
    asked: list       # client ids the requests named
    key: str          # the API key (plaintext)
    log: str          # the server's stdout and stderr


def kill_9_run(home, url: str, workdir: Path, client_ids: list[str], *args: str) -> Kill9Run:
    """Decisions for a few clients, then ``N_SENT`` outcomes (distinct Idempotency-Keys, 4 in flight at a
    time); ``kill -9`` the server (all its processes) the moment the ``N_ACKED``-th acknowledgement arrives."""
    principal, key = KeyStore.open(home, url).create("campaign", label="kill -9 test")
    server = start_server(home, url, workdir, *args)
    try:
        http = httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=30)
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model_version"].endswith("/1")
        decisions, asked = _decisions(http, client_ids, 15)
        # What the log test looks for too: a client id in a path and a key in a query string, an unknown
        # client, a wrong key.
        for cid in asked[:3]:
            assert http.get(f"/v1/clients/{cid}/recommendations", params={"k": 3}).status_code == 200
        assert http.get("/v1/clients/NO-SUCH-CLIENT/recommendations").status_code == 404
        assert http.get("/v1/model", params={"api_key": key}).status_code == 200
        bad = key[:-4] + "AAAA"
        assert httpx.get(f"{server.url}/v1/model", headers={"X-API-Key": bad}).status_code == 401
        asked.append("NO-SUCH-CLIENT")

        kinds = ("shown", "reached", "accepted", "declined")
        sent = {f"kill9-{i:03d}": (decisions[i % len(decisions)], kinds[i % len(kinds)]) for i in range(N_SENT)}
        acked: set[str] = set()
        lock = threading.Lock()

        def post(idem: str) -> None:
            decision_id, outcome = sent[idem]
            body = {"decision_id": decision_id, "outcome": outcome}
            if outcome == "declined":
                body["reason"] = "not interested"
            try:
                r = http.post("/v1/outcomes", json=body, headers={"Idempotency-Key": idem})
            except httpx.TransportError:
                return  # killed while in flight, or sent after the kill: not acknowledged
            assert r.status_code == 200 and r.json()["replayed"] is False, r.text
            with lock:
                acked.add(idem)
                if len(acked) == N_ACKED:
                    os.killpg(server.proc.pid, signal.SIGKILL)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(post, sent))
        http.close()
    finally:
        server.kill()
    assert server.proc.returncode == -signal.SIGKILL
    return Kill9Run(url, principal.key_id, sent, acked, asked, key, server.text())


def assert_acknowledged_are_stored(run: Kill9Run) -> None:
    assert len(run.acked) >= N_ACKED
    ledger = Ledger(run.url)
    try:
        with ledger.engine.connect() as c:
            rows = c.execute(sa.select(outcomes_table.c.idempotency_key, outcomes_table.c.decision_id,
                                       outcomes_table.c.outcome, outcomes_table.c.decided_at,
                                       outcomes_table.c.recorded_at)
                             .where(outcomes_table.c.key_id == run.key_id)).all()
    finally:
        ledger.close()
    stored = {k: (d, o) for k, d, o, _, _ in rows}
    lost = sorted(run.acked - set(stored))
    assert not lost, f"{len(lost)} acknowledged outcomes lost after kill -9: {lost[:5]}"
    assert set(stored) <= set(run.sent)
    assert all(stored[k] == run.sent[k] for k in run.acked)
    # Decided and recorded on the server's clock (NBA_SERVE_CLOCK): noon of the bank's day, running on.
    noon = NOON.replace(tzinfo=None)
    for *_, decided, recorded in rows:
        assert noon <= decided <= recorded < noon + timedelta(minutes=10)


@pytest.fixture(scope="module")
def sqlite_run(api_home, client_ids, tmp_path_factory) -> Kill9Run:
    d = tmp_path_factory.mktemp("server-sqlite")
    return kill_9_run(api_home, f"sqlite:///{d / 'serving.sqlite'}", d, client_ids, "--workers", "2", "--access-log")


def test_acknowledged_outcomes_survive_kill_9_sqlite_two_workers(sqlite_run):
    assert_acknowledged_are_stored(sqlite_run)


def test_two_workers_served(sqlite_run):
    """``nba serve --workers 2``: both workers started (uvicorn's factory, ``app_from_env``); the server
    answered /readyz, decisions and outcomes (:func:`kill_9_run`)."""
    assert sqlite_run.log.count("Application startup complete") == 2, sqlite_run.log[-3000:]
    pids = set(re.findall(r"Started server process \[(\d+)\]", sqlite_run.log))
    assert len(pids) == 2


def test_acknowledged_outcomes_survive_kill_9_postgresql(api_home, client_ids, postgres_url, tmp_path):
    run = kill_9_run(api_home, postgres_url, tmp_path, client_ids)
    assert_acknowledged_are_stored(run)
    assert "HTTP/1.1\" 200" not in run.log  # no access log unless --access-log


def assert_clean_log(log: str, client_ids: list[str], key: str) -> None:
    assert "/v1/clients/<id>/recommendations" in log  # the access log (--access-log) is there, redacted
    leaked = [c for c in client_ids if c in log]
    assert not leaked, f"client ids in the server's log: {leaked[:5]}"
    secret = key.split("_", 2)[2]
    assert key not in log and secret not in log and secret[:16] not in log


def test_server_logs_hold_no_client_ids_or_keys(sqlite_run):
    assert '"POST /v1/outcomes HTTP/1.1" 200' in sqlite_run.log
    assert_clean_log(sqlite_run.log, sqlite_run.asked, sqlite_run.key)

