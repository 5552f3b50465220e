"""The scoring API's security pieces (apps/api/security.py) and `nba keys` (apps/api/keys_cli.py).

The database tests run on SQLite and on the test session's private PostgreSQL (``postgres_url``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import typer
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from apps.api import security as sec
from apps.api.keys_cli import keys_app
from apps.api.security import (
    ADMIN,
    CAMPAIGN,
    RM,
    APIKeyError,
    AuditLog,
    BodySizeLimit,
    Caller,
    KeyStore,
    Principal,
    RateLimiter,
    RedactFilter,
    authenticate,
    check_client_access,
    install_log_redaction,
    require,
)
from feature_store import sql
from nba.errors import ConfigError
from nba.home import Home


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    url = request.getfixturevalue("postgres_url")  # the session's private PostgreSQL (conftest)
    eng = sql.engine(url)
    sec.metadata.drop_all(eng)
    eng.dispose()
    return url


@pytest.fixture()
def store(tmp_path) -> KeyStore:
    return KeyStore(sql.engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}"), cache_ttl=0)


def _count_statements(engine) -> list[str]:
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


# -------------------------------------------------------------------------------------------------
# Keys


def test_a_key_is_stored_only_as_a_hash(tmp_path):
    ks = KeyStore(sql.engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}"))
    principal, plaintext = ks.create(CAMPAIGN, label="crm")
    prefix, key_id, secret = plaintext.split("_", 2)
    assert (prefix, key_id) == ("nba", principal.key_id) and len(secret) == 43  # 32 bytes, base64url
    ks.engine.dispose()  # checkpoint-free: the WAL file may hold the row, so read every file of the db
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("ledger.sqlite"))
    assert secret.encode() not in blobs and plaintext.encode() not in blobs
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in blobs
    assert "secret" not in json.dumps(ks.list(), default=str)


def test_verify_good_bad_revoked_and_malformed(db_url):
    ks = KeyStore(sql.engine(db_url), cache_ttl=0)
    p, key = ks.create(RM, rm_id="R007", label="Ana")
    _, other = ks.create(CAMPAIGN)
    assert ks.verify(key) == Principal(p.key_id, RM, "R007", "Ana")
    assert ks.verify(other).scope == CAMPAIGN
    key_id, secret = key.split("_", 2)[1:]
    other_secret = other.split("_", 2)[2]
    for bad in [None, "", "nba", "nba_", f"nba_{key_id}", f"nba_{key_id}_", f"xyz_{key_id}_{secret}",
                f"nba_{key_id}_{other_secret}",  # another key's secret
                f"nba_{key_id}_{secret}x", f"nba_{key_id.upper()}_{secret}", f"nba_0123456789ab_{secret}",
                f"nba_{key_id}_{secret}" + "a" * 300, key + " ", "nba_'; DROP TABLE api_keys; --_x"]:
        assert ks.verify(bad) is None, bad
    assert ks.revoke(p.key_id) is True
    assert ks.verify(key) is None and ks.verify(other) is not None
    assert ks.revoke(p.key_id) is False  # already revoked: says so, changes nothing
    with pytest.raises(APIKeyError, match="unknown key id 'feedfeedfeed'"):
        ks.revoke("feedfeedfeed")
    row = {k["key_id"]: k for k in ks.list()}[p.key_id]
    assert set(row) == {"key_id", "scope", "rm_id", "label", "created_at", "revoked_at"}
    assert row["revoked_at"].tzinfo is not None and row["revoked_at"] >= row["created_at"]
    ks.engine.dispose()


def test_the_cache_serves_verified_keys_and_a_revoke_elsewhere_holds_within_the_ttl(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    clock = FakeClock()
    cli = KeyStore(sql.engine(url), cache_ttl=0)  # `nba keys revoke`, another process
    worker = KeyStore(sql.engine(url), cache_ttl=5, clock=clock)
    p, key = cli.create(CAMPAIGN)
    statements = _count_statements(worker.engine)
    assert worker.verify(key) == p and worker.verify(key) == p and worker.verify("nba_0123456789ab_x") is None
    assert worker.verify("nba_0123456789ab_x") is None
    assert len(statements) == 2  # one lookup for the good key, one for the bad: the repeats came from the cache
    cli.revoke(p.key_id)
    clock.t += 4.9
    assert worker.verify(key) == p  # still inside the TTL
    clock.t += 0.2
    assert worker.verify(key) is None  # the TTL passed: the revoke holds here too
    # A revoke in the same process holds at once.
    p2, key2 = worker.create(ADMIN)
    assert worker.verify(key2) == p2
    worker.revoke(p2.key_id)
    assert worker.verify(key2) is None


def test_a_flood_of_distinct_bad_keys_does_not_grow_the_cache_without_bound(store):
    ks = KeyStore(store.engine, cache_ttl=60, cache_size=50)
    for i in range(500):
        assert ks.verify(f"nba_0123456789ab_{i}") is None
    assert len(ks._cache) <= 50


@pytest.mark.parametrize(("scope", "rm_id", "message"), [
    ("superuser", None, "unknown scope 'superuser' \\(expected campaign, rm or admin\\)"),
    ("", None, "unknown scope ''"),
    (RM, None, "scope 'rm' needs the RM's id"),
    (RM, "  ", "scope 'rm' needs the RM's id"),
    (CAMPAIGN, "R1", "--rm 'R1' is only for scope 'rm'"),
    (ADMIN, "R1", "--rm 'R1' is only for scope 'rm'"),
    (RM, "R 1", "RM id 'R 1': expected 1 to 64 characters without spaces"),
])
def test_key_scopes_are_validated(store, scope, rm_id, message):
    with pytest.raises(APIKeyError, match=message):
        store.create(scope, rm_id=rm_id)
    assert store.list() == []


def test_a_label_is_bounded(store):
    with pytest.raises(APIKeyError, match="label of 201 characters"):
        store.create(ADMIN, label="x" * 201)
    assert store.create(ADMIN, label="  ")[0].label is None


def test_principal_scopes_and_client_access():
    camp, rm, admin = Principal("a" * 12, CAMPAIGN), Principal("b" * 12, RM, "R1"), Principal("c" * 12, ADMIN)
    assert camp.can(CAMPAIGN, RM) and rm.can(CAMPAIGN, RM) and not admin.can(CAMPAIGN, RM)
    assert camp.may_read_client("R9") and camp.may_read_client(None)
    assert rm.may_read_client("R1") and not rm.may_read_client("R2") and not rm.may_read_client(None)
    assert not admin.may_read_client("R1") and not admin.reads_client_data
    assert str(rm) == "key bbbbbbbbbbbb (scope rm, rm R1)"
    with pytest.raises(APIKeyError, match="unknown scope 'campain'"):
        require("campain")


# -------------------------------------------------------------------------------------------------
# Audit log


def test_audit_records_a_batch(db_url):
    log = AuditLog(sql.engine(db_url, durable=False))
    n = log.record_reads(Principal("k" * 12, CAMPAIGN), [f"C{i:06d}" for i in range(1000)], "/v1/score",
                         model_version="7", request_id="req-1")
    assert n == 1000
    assert log.record([{"key_id": "x" * 12, "customer_id": "C000005", "endpoint": "/v1/clients/{id}/nba"}]) == 1
    assert log.record([]) == 0
    rows = log.rows(customer_id="C000005")
    assert [r["endpoint"] for r in rows] == ["/v1/clients/{id}/nba", "/v1/score"]
    assert rows[1]["model_version"] == "7" and rows[1]["request_id"] == "req-1" and rows[1]["key_id"] == "k" * 12
    assert rows[0]["at"].tzinfo is not None and rows[0]["model_version"] is None
    assert len(log.rows(key_id="k" * 12, limit=5000)) == 1000
    log.engine.dispose()


def test_audit_refuses_incomplete_rows(store):
    log = AuditLog(store.engine)
    with pytest.raises(ValueError, match="audit row 1: missing customer_id"):
        log.record([{"key_id": "k", "customer_id": "C1", "endpoint": "/x"}, {"key_id": "k", "endpoint": "/x"}])
    with pytest.raises(ValueError, match="unknown field\\(s\\) client"):
        log.record([{"key_id": "k", "customer_id": "C1", "endpoint": "/x", "client": "C1"}])
    assert log.rows() == []  # nothing of a refused batch was written


def test_audit_and_keys_open_the_serving_database_of_a_home(tmp_path):
    home = Home.resolve(tmp_path / "home")
    audit, keys = AuditLog.open(home), KeyStore.open(home)
    with audit.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: the audit log's engine
    with keys.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: keys are durable
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert (tmp_path / "home" / "ledger.sqlite").exists()


# -------------------------------------------------------------------------------------------------
# Rate limit


def test_rate_limiter_allows_n_then_gives_a_retry_time():
    rl = RateLimiter("3/minute")
    assert [rl.hit("k1") for _ in range(3)] == [None, None, None]
    retry = rl.hit("k1")
    assert retry is not None and 59 < retry <= 60
    assert rl.hit("k2") is None  # per key


def test_rate_limiter_window_moves():
    rl = RateLimiter("2/second")
    assert rl.hit("k") is None and rl.hit("k") is None
    retry = rl.hit("k")
    assert 0 < retry <= 1
    time.sleep(retry + 0.01)
    assert rl.hit("k") is None


def test_memory_window_counts_as_the_limits_library_does(monkeypatch):
    """memory:// is counted in-process (no expiry thread); the same requests at the same times get the
    same answers and retry times as from ``limits``' own moving window on its memory storage."""
    import random

    import limits
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    ours, theirs = sec._MemoryWindow(), MovingWindowRateLimiter(MemoryStorage())
    rng = random.Random(7)
    for rate in ("3/second", "5/minute"):
        item = limits.parse(rate)
        for step in range(400):
            now[0] += rng.choice([0.0, 0.05, 0.3, 0.7, 2.0, 15.0])
            key = rng.choice(["a", "b"])
            if rng.random() < 0.2:
                assert ours.test(item, "ns", key) == theirs.test(item, "ns", key), (rate, step)
                continue
            assert ours.hit(item, "ns", key) == theirs.hit(item, "ns", key), (rate, step)
            a, b = ours.get_window_stats(item, "ns", key), theirs.get_window_stats(item, "ns", key)
            assert a.remaining == b.remaining and a.reset_time == pytest.approx(b.reset_time), (rate, step)


def test_memory_window_forgets_keys_that_left_their_window(monkeypatch):
    import limits
    now = [0.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    monkeypatch.setattr(sec._MemoryWindow, "SWEEP_EVERY", 10)
    w, item = sec._MemoryWindow(), limits.parse("2/second")
    for i in range(9):
        assert w.hit(item, "ns", f"address-{i}")
    now[0] += 5
    assert w.hit(item, "ns", "late")  # the 10th hit sweeps the nine stale keys
    assert list(w._events) == [item.key_for("ns", "late")]


@pytest.mark.parametrize(("rate", "storage", "message"), [
    ("lots", "memory://", "rate limit 'lots': expected N/PERIOD"),
    ("5/minute", "mongo://:pw@host/db", "rate limit storage 'mongo://:\\*\\*\\*@host/db'"),
])
def test_rate_limiter_config_errors(rate, storage, message):
    with pytest.raises(ConfigError, match=message):
        RateLimiter(rate, storage)


def test_rate_limit_is_shared_through_redis(redis_url):
    a, b = RateLimiter("3/minute", redis_url), RateLimiter("3/minute", redis_url)  # two workers
    key = f"k{time.time_ns()}"
    assert [a.hit(key), b.hit(key), a.hit(key)] == [None, None, None]
    assert b.hit(key) > 0


def test_rate_limiter_fails_open_when_redis_is_down():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    url = f"redis://127.0.0.1:{port}/0"
    assert RateLimiter("1/minute", url).hit("k") is None
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises
        RateLimiter("1/minute", url, fail_open=False).hit("k")


# -------------------------------------------------------------------------------------------------
# Body size limit


def _echo_app(max_bytes: int) -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    seen: list[int] = []

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        body = await request.body()
        seen.append(len(body))
        return {"n": len(body), "sha": hashlib.sha256(body).hexdigest()}

    app.add_middleware(BodySizeLimit, max_bytes=max_bytes)
    return app, seen


def test_body_size_limit_with_content_length():
    app, seen = _echo_app(100)
    with TestClient(app) as client:
        assert client.post("/echo", content=b"x" * 100).json()["n"] == 100
        r = client.post("/echo", content=b"x" * 101)
        assert r.status_code == 413
        assert r.json() == {"detail": "request body of 101 bytes is over the limit of 100 bytes"}
    assert seen == [100]  # the app never saw the big one


def test_body_size_limit_with_chunked_streaming():
    app, seen = _echo_app(1000)
    pulled: list[int] = []

    async def chunks(n: int):
        for i in range(n):
            pulled.append(i)
            yield bytes([65 + i % 26]) * 300

    async def go():
        transport = httpx.ASGITransport(app=app)  # streams the chunks, one http.request message each
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ok = await client.post("/echo", content=chunks(3))
            pulled.clear()
            big = await client.post("/echo", content=chunks(100))
            return ok, big

    ok, big = asyncio.run(go())
    assert ok.status_code == 200 and ok.json()["n"] == 900
    assert ok.json()["sha"] == hashlib.sha256(b"A" * 300 + b"B" * 300 + b"C" * 300).hexdigest()
    assert big.status_code == 413 and big.json() == {"detail": "request body over the limit of 1000 bytes"}
    assert len(pulled) <= 5  # stopped at the 4th chunk of 100, not read to the end
    assert seen == [900]


def test_body_size_limit_refuses_a_bad_content_length_and_passes_other_scopes():
    sent: list[dict] = []
    calls: list[str] = []

    async def app(scope, receive, send):
        calls.append(scope["type"])

    async def send(message):
        sent.append(message)

    async def receive():
        raise AssertionError("the body must not be read")

    mw = BodySizeLimit(app, 10)
    asyncio.run(mw({"type": "http", "headers": [(b"content-length", b"ten")]}, receive, send))
    assert sent[0]["status"] == 400 and calls == []
    asyncio.run(mw({"type": "lifespan"}, receive, send))
    assert calls == ["lifespan"]
    with pytest.raises(ConfigError):
        BodySizeLimit(app, -1)


# -------------------------------------------------------------------------------------------------
# The auth dependencies


def _api(store: KeyStore, limiter: RateLimiter | None = None) -> FastAPI:
    app = FastAPI()
    auth = authenticate(store, limiter)
    app.state.authenticator = auth

    @app.post("/v1/score")
    def score(caller: Principal = Depends(require(CAMPAIGN, auth=auth))) -> dict:
        return {"key_id": caller.key_id}

    @app.get("/v1/clients/{customer_id}/recommendations")
    def recs(customer_id: str, caller: Principal = Depends(auth.require(CAMPAIGN, RM))) -> dict:
        check_client_access(caller, {"C1": "R1", "C2": "R2"}[customer_id])
        return {"customer_id": customer_id}

    @app.post("/admin/reload")
    def reload(caller: Principal = Depends(require(ADMIN))) -> dict:  # through app.state.authenticator
        return {"ok": True}

    @app.get("/me")
    def me(caller: Caller, request: Request) -> dict:
        assert request.state.principal == caller
        return {"scope": caller.scope}

    return app


def test_auth_401_403_and_client_access(store):
    camp_p, camp = store.create(CAMPAIGN)
    _, rm = store.create(RM, rm_id="R1")
    _, admin = store.create(ADMIN)
    revoked_p, revoked = store.create(CAMPAIGN)
    store.revoke(revoked_p.key_id)
    client = TestClient(_api(store))
    r = client.post("/v1/score")
    assert r.status_code == 401 and r.json() == {"detail": "missing API key: send it in the X-API-Key header"}
    assert r.headers["www-authenticate"]
    for bad in [camp + "x", revoked, "hello"]:
        r = client.post("/v1/score", headers={"X-API-Key": bad})
        assert r.status_code == 401 and r.json() == {"detail": "invalid or revoked API key"}
        assert bad not in r.text
    assert client.post("/v1/score", headers={"X-API-Key": camp}).json() == {"key_id": camp_p.key_id}
    r = client.post("/v1/score", headers={"X-API-Key": rm})
    assert r.status_code == 403 and "needs scope campaign" in r.json()["detail"] and rm not in r.text
    assert client.post("/admin/reload", headers={"X-API-Key": camp}).status_code == 403
    assert client.post("/admin/reload", headers={"X-API-Key": admin}).json() == {"ok": True}
    assert client.get("/me", headers={"X-API-Key": admin}).json() == {"scope": ADMIN}
    # rm: its own clients only; campaign: any; admin: none
    assert client.get("/v1/clients/C1/recommendations", headers={"X-API-Key": rm}).status_code == 200
    r = client.get("/v1/clients/C2/recommendations", headers={"X-API-Key": rm})
    assert r.status_code == 403 and "only its own RM's clients" in r.json()["detail"] and "C2" not in r.text
    assert client.get("/v1/clients/C2/recommendations", headers={"X-API-Key": camp}).status_code == 200
    assert client.get("/v1/clients/C1/recommendations", headers={"X-API-Key": admin}).status_code == 403


def test_auth_429_with_retry_after(store):
    _, a = store.create(CAMPAIGN)
    _, b = store.create(CAMPAIGN)
    client = TestClient(_api(store, RateLimiter("2/minute")))
    assert [client.post("/v1/score", headers={"X-API-Key": a}).status_code for _ in range(2)] == [200, 200]
    r = client.post("/v1/score", headers={"X-API-Key": a})
    assert r.status_code == 429 and 59 <= int(r.headers["retry-after"]) <= 60
    assert "rate limit of 2/minute exceeded" in r.json()["detail"] and a not in r.text
    assert client.post("/v1/score", headers={"X-API-Key": b}).status_code == 200  # another key's own budget
    assert client.post("/v1/score", headers={"X-API-Key": "nope"}).status_code == 401


def test_openapi_declares_the_api_key_header(store):
    spec = TestClient(_api(store)).get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "An API key from `nba keys create`: nba_<key_id>_<secret>."}


# -------------------------------------------------------------------------------------------------
# Log redaction

KEY = "nba_0123456789ab_" + "s3cr3t-_" * 5


@pytest.fixture()
def redaction():
    f = install_log_redaction()
    yield f
    for name in (*sec.REDACTED_LOGGERS, ""):
        logger = logging.getLogger(name)
        for target in [logger, *logger.handlers]:
            target.removeFilter(f)


def test_redaction_of_uvicorn_access_records(redaction, caplog):
    from uvicorn.logging import AccessFormatter

    caplog.set_level(logging.INFO)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "10.0.0.7:51234", "GET",
        f"/v1/clients/C000123/recommendations?k=5&api_key={KEY}", "1.1", 200)
    (rec,) = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert rec.getMessage() == '10.0.0.7:51234 - "GET /v1/clients/<id>/recommendations HTTP/1.1" 200'
    assert len(rec.args) == 5  # uvicorn's formatter unpacks them
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(rec)
    assert line == '10.0.0.7:51234 - "GET /v1/clients/<id>/recommendations HTTP/1.1" 200 OK'
    assert "C000123" not in caplog.text and "s3cr3t" not in caplog.text and "k=5" not in caplog.text


def test_redaction_of_our_own_loggers_children_included(redaction, caplog):
    caplog.set_level(logging.INFO)
    logging.getLogger("nba.api.app").info("scoring %s for /v1/customers/%s/nba with key %s", "batch", "C42", KEY)
    try:
        raise RuntimeError(f"bad key {KEY}")
    except RuntimeError:
        logging.getLogger("nba").exception("failed at GET /v1/clients/C77/recommendations?x=1")
    assert "C42" not in caplog.text and "C77" not in caplog.text and "s3cr3t" not in caplog.text
    assert "scoring batch for /v1/customers/<id>/nba with key nba_0123456789ab_<redacted>" in caplog.text
    assert "RuntimeError: bad key nba_0123456789ab_<redacted>" in caplog.text


@pytest.mark.parametrize(("text", "expected"), [
    ("/v1/clients/C000123/recommendations", "/v1/clients/<id>/recommendations"),
    ("/v1/clients/C000123", "/v1/clients/<id>"),
    ("POST /v1/score?customer_id=C1 200", "POST /v1/score 200"),
    ("http://h:8000/v1/clients/ab%20c?x=1#f", "http://h:8000/v1/clients/<id>#f"),
    (f"X-API-Key: {KEY}.", "X-API-Key: nba_0123456789ab_<redacted>."),
    ("/v1/rms/R1/list", "/v1/rms/R1/list"),
    ("model v7 reloaded?", "model v7 reloaded?"),
])
def test_redact(text, expected):
    assert RedactFilter().redact(text) == expected


def test_uvicorns_coloured_messages_still_format(redaction, caplog):
    from uvicorn.logging import DefaultFormatter

    caplog.set_level(logging.INFO)
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", "http", "h", 80,
                                            extra={"color_message": "Uvicorn running on \033[1m%s://%s:%d\033[0m"})
    (rec,) = [r for r in caplog.records if r.name == "uvicorn.error"]
    coloured, plain = (DefaultFormatter("%(message)s", use_colors=c).format(rec) for c in (True, False))
    assert coloured == "Uvicorn running on \033[1mhttp://h:80\033[0m"
    assert plain == "Uvicorn running on http://h:80 (Press CTRL+C to quit)"


def test_install_log_redaction_is_idempotent(redaction):
    install_log_redaction()
    assert sum(isinstance(f, RedactFilter) for f in logging.getLogger("uvicorn.access").filters) == 1


def test_a_real_uvicorn_server_limits_bodies_and_logs_no_client_ids(store, redaction, caplog):
    """Through a real server: chunked framing (h11) and uvicorn's own access records."""
    import uvicorn

    _, key = store.create(CAMPAIGN)
    app = _api(store)
    app.add_middleware(BodySizeLimit, max_bytes=1000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
                                           http="h11"))
    thread = threading.Thread(target=server.run, daemon=True)
    caplog.set_level(logging.INFO)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"X-API-Key": key}) as client:
            r = client.get("/v1/clients/C1/recommendations", params={"customer": "C1"})
            assert r.status_code == 200
            r = client.post("/v1/score", content=(b"x" * 400 for _ in range(10)))  # chunked
            assert r.status_code == 413 and r.json()["detail"] == "request body over the limit of 1000 bytes"
    finally:
        server.should_exit = True
        thread.join(10)
    access = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any('"GET /v1/clients/<id>/recommendations HTTP/1.1" 200' in m for m in access), access
    assert any('"POST /v1/score HTTP/1.1" 413' in m for m in access), access
    assert "C1" not in caplog.text and key not in caplog.text


# -------------------------------------------------------------------------------------------------
# nba keys


def test_keys_cli_create_list_revoke(tmp_path, monkeypatch):
    monkeypatch.setenv("NBA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NBA_LEDGER_URL", raising=False)
    runner = CliRunner()
    r = runner.invoke(keys_app, ["create", "--scope", "rm", "--rm", "R007", "--label", "Ana [branch 3]"])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip()
    assert key.startswith("nba_") and "\n" not in key  # the key alone on stdout
    assert "cannot be shown again" in r.stderr
    p = KeyStore.open(Home.resolve(tmp_path / "home")).verify(key)
    assert p is not None and (p.scope, p.rm_id, p.label) == (RM, "R007", "Ana [branch 3]")

    r = runner.invoke(keys_app, ["list"])
    assert r.exit_code == 0 and p.key_id in r.stdout and "R007" in r.stdout and "Ana [branch 3]" in r.stdout
    assert key.split("_", 2)[2] not in r.output
    r = runner.invoke(keys_app, ["list", "--json"])
    (row,) = json.loads(r.stdout)
    assert row["key_id"] == p.key_id and row["revoked_at"] is None and set(row) == {
        "key_id", "scope", "rm_id", "label", "created_at", "revoked_at"}

    r = runner.invoke(keys_app, ["revoke", p.key_id])
    assert r.exit_code == 0 and f"revoked key {p.key_id}" in r.stderr
    assert runner.invoke(keys_app, ["revoke", p.key_id]).stderr.strip() == f"key {p.key_id} was already revoked"
    assert json.loads(runner.invoke(keys_app, ["list", "--json"]).stdout)[0]["revoked_at"]
    assert KeyStore.open(Home.resolve(tmp_path / "home")).verify(key) is None


@pytest.mark.parametrize(("args", "message"), [
    (["create", "--scope", "root"], "unknown scope 'root' (expected campaign, rm or admin)"),
    (["create", "--scope", "rm"], "scope 'rm' needs the RM's id (--rm RM_ID)"),
    (["create", "--scope", "admin", "--rm", "R1"], "--rm 'R1' is only for scope 'rm'"),
    (["revoke", "0123456789ab"], "unknown key id '0123456789ab'"),
    (["list", "--ledger-url", "mysql://u:pw@h/db"], "unsupported serving database 'mysql://u:***@h/db'"),
])
def test_keys_cli_errors_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("NBA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NBA_LEDGER_URL", raising=False)
    r = CliRunner().invoke(keys_app, args)
    assert r.exit_code == 2 and message in r.stderr and r.stdout == "", (r.exit_code, r.output)


def test_keys_cli_mounted_under_a_root_with_home(tmp_path, monkeypatch):
    """As the lead mounts it in apps/cli.py: the root's --home wins over $NBA_HOME."""
    root = typer.Typer()

    @root.callback()
    def _main(home: Path | None = typer.Option(None, "--home")) -> None:  # noqa: B008 - typer's idiom
        pass

    root.add_typer(keys_app, name="keys")
    monkeypatch.setenv("NBA_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("NBA_LEDGER_URL", raising=False)
    r = CliRunner().invoke(root, ["--home", str(tmp_path / "h"), "keys", "create", "--scope", "admin"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "h" / "ledger.sqlite").exists() and not (tmp_path / "elsewhere").exists()
