"""Security of the scoring API: API keys with scopes, the audit log, per-key rate limits, a body size limit
and log redaction. The API app (``apps/api/app.py``) wires them together; ``nba keys`` manages the keys.

Scopes (one per key):

- ``campaign``: campaign systems. Score, lookalike, outcomes, next best action, recommendations; any client.
- ``rm``: one relationship manager (the key names the RM). The client endpoints, for that RM's own clients only.
- ``admin``: operations. Reload, model info; no client data.

A key is sent as ``X-API-Key: nba_<key_id>_<secret>``. A missing or bad key answers 401, a wrong scope 403,
too many requests 429 with ``Retry-After``, a body over the limit 413. Error bodies are ``{"detail": ...}``
and never echo the key.

The keys and the audit log live in the serving database (:mod:`feature_store.sql`: SQLite WAL at
``$NBA_HOME/ledger.sqlite`` or PostgreSQL by URL), in tables of their own (``api_keys``, ``audit``); the
statements are SQLAlchemy Core and run on both.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import limits
import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feature_store import sql
from nba.errors import ConfigError, NBAError
from nba.home import Home

log = logging.getLogger("nba.api.security")

# -------------------------------------------------------------------------------------------------
# Scopes and the caller

CAMPAIGN = "campaign"
RM = "rm"
ADMIN = "admin"
SCOPES = (CAMPAIGN, RM, ADMIN)
#: The scopes that may read client data (an ``rm`` key only its own RM's clients).
CLIENT_SCOPES = (CAMPAIGN, RM)

KEY_PREFIX = "nba"
HEADER = "X-API-Key"
_KEY_ID_RE = re.compile(r"[0-9a-f]{12}")
_RM_ID_RE = re.compile(r"[^\s\x00-\x1f]{1,64}")
_MAX_KEY_CHARS = 200  # ours are 61; anything longer is refused before hashing


class APIKeyError(NBAError):
    """An API key could not be created or revoked: bad scope, RM or label, or an unknown key id."""


@dataclass(frozen=True)
class Principal:
    """The caller behind a verified API key. ``rm_id`` is set for, and only for, scope ``rm``."""

    key_id: str
    scope: str
    rm_id: str | None = None
    label: str | None = None

    def can(self, *scopes: str) -> bool:
        """Whether this key's scope is one of ``scopes`` (an endpoint's allowed scopes)."""
        return self.scope in scopes

    @property
    def reads_client_data(self) -> bool:
        return self.scope in CLIENT_SCOPES

    def may_read_client(self, client_rm_id: str | None) -> bool:
        """Whether this key may read a client whose RM is ``client_rm_id``: any client for ``campaign``, the
        RM's own clients for ``rm``, none for ``admin``."""
        if self.scope == CAMPAIGN:
            return True
        if self.scope == RM:
            return client_rm_id is not None and client_rm_id == self.rm_id
        return False

    def __str__(self) -> str:
        return f"key {self.key_id} (scope {self.scope}" + (f", rm {self.rm_id})" if self.rm_id else ")")


def _check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    scopes = tuple(scopes)
    expected = f"expected {', '.join(SCOPES[:-1])} or {SCOPES[-1]}"
    if not scopes:
        raise APIKeyError(f"no scope given ({expected})")
    for s in scopes:
        if s not in SCOPES:
            raise APIKeyError(f"unknown scope {s!r} ({expected})")
    return scopes


# -------------------------------------------------------------------------------------------------
# Tables: our own MetaData, in the serving database beside the ledger's tables.

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),  # hex SHA-256 of the secret
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("rm_id", sa.String(64), nullable=True),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("scope IN ('campaign', 'rm', 'admin')", name="api_keys_scope"),
    sa.CheckConstraint("(scope = 'rm') = (rm_id IS NOT NULL)", name="api_keys_rm_id"),
)

audit = sa.Table(
    "audit", metadata,
    # BIGSERIAL on PostgreSQL; SQLite's INTEGER PRIMARY KEY is its rowid (64-bit already).
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("endpoint", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True),
    # "Who read this client's data, when": the question an audit log exists to answer.
    sa.Index("audit_customer_at", "customer_id", "at"),
)


def create_tables(engine: Engine) -> None:
    """Create ``api_keys`` and ``audit`` where missing. ``IF NOT EXISTS`` rather than check-then-create,
    so that several workers starting at once on one database do not race."""
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
            for index in table.indexes:
                conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; every time we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -------------------------------------------------------------------------------------------------
# API keys


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """API keys, stored hashed, in table ``api_keys`` of the serving database.

    A key is ``nba_<key_id>_<secret>``: ``key_id`` is 12 hex digits (not secret: it names the key in
    ``nba keys list``, the audit log and the logs), ``secret`` is ``secrets.token_urlsafe(32)``, 256 random
    bits. Only the SHA-256 of the secret is stored: a plain fast hash is the standard choice for random
    API tokens. A slow password hash (bcrypt, scrypt, argon2) exists to make guessing a *low-entropy*
    password expensive; a 256-bit random secret cannot be guessed whatever the hash, and a slow hash would
    cost each verification tens of milliseconds. The stored hash is compared with
    ``hmac.compare_digest`` (constant time).

    :meth:`verify` runs on every request, so verified keys (and rejected ones) are cached in this process
    for ``cache_ttl`` seconds (default 5): a key revoked by another process (``nba keys revoke``, another
    worker) stops working everywhere within the TTL, and at once in the process that revoked it.
    ``cache_ttl=0`` turns the cache off. ``clock`` is for tests.
    """

    def __init__(self, engine: Engine, *, cache_ttl: float = 5.0, cache_size: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if cache_ttl < 0:
            raise ConfigError(f"key cache TTL {cache_ttl!r} s: expected 0 (no cache) or more")
        self.engine = engine
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self._clock = clock
        # SHA-256 of the whole presented key -> (expires at, Principal or None for a rejected key).
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()
        create_tables(engine)

    @classmethod
    def open(cls, home: Home, url: str | None = None, **kwargs: Any) -> KeyStore:
        """The key store of ``home`` (or of ``url`` / ``$NBA_LEDGER_URL``), on a durable engine."""
        return cls(sql.engine(sql.default_url(home, url), durable=True), **kwargs)

    # -- managing keys (nba keys ...) --

    def create(self, scope: str, rm_id: str | None = None, label: str | None = None) -> tuple[Principal, str]:
        """A new key: its :class:`Principal` and its plaintext, which is shown once and never stored."""
        (scope,) = _check_scopes([scope])
        rm_id = rm_id.strip() if rm_id is not None else None
        if scope == RM and not rm_id:
            raise APIKeyError("scope 'rm' needs the RM's id (--rm RM_ID): an rm key reads only that RM's clients")
        if scope != RM and rm_id:
            raise APIKeyError(f"--rm {rm_id!r} is only for scope 'rm' (a {scope} key is not tied to one RM)")
        if rm_id is not None and not _RM_ID_RE.fullmatch(rm_id):
            raise APIKeyError(f"RM id {rm_id!r}: expected 1 to 64 characters without spaces")
        label = (label.strip() or None) if label is not None else None
        if label is not None and len(label) > 200:
            raise APIKeyError(f"label of {len(label)} characters: at most 200 allowed")
        secret = secrets.token_urlsafe(32)
        for _ in range(3):  # a 48-bit id collides about never; the primary key would catch it
            key_id = secrets.token_hex(6)
            try:
                with self.engine.begin() as conn:
                    conn.execute(api_keys.insert().values(
                        key_id=key_id, secret_hash=_hash(secret), scope=scope, rm_id=rm_id, label=label,
                        created_at=_now(), revoked_at=None))
                break
            except sa.exc.IntegrityError:
                continue
        else:  # pragma: no cover
            raise APIKeyError("could not draw an unused key id in 3 tries")
        return Principal(key_id, scope, rm_id, label), f"{KEY_PREFIX}_{key_id}_{secret}"

    def list(self) -> list[dict]:
        """Every key, oldest first: key_id, scope, rm_id, label, created_at, revoked_at (UTC). No secrets."""
        cols = [c for c in api_keys.c if c.name != "secret_hash"]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*cols).order_by(api_keys.c.created_at, api_keys.c.key_id)).mappings().all()
        return [{**r, "created_at": _utc(r["created_at"]), "revoked_at": _utc(r["revoked_at"])} for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key: True if it was active, False if it was already revoked. Raises for an unknown id."""
        with self.engine.begin() as conn:
            done = conn.execute(api_keys.update()
                                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=_now())).rowcount
            known = done or conn.execute(sa.select(api_keys.c.key_id).where(api_keys.c.key_id == key_id)).first()
            if not known:
                raise APIKeyError(f"unknown key id {key_id!r} (`nba keys list` shows the ids)")
        with self._lock:
            for digest in [d for d, (_, p) in self._cache.items() if p is not None and p.key_id == key_id]:
                del self._cache[digest]
        return bool(done)

    # -- the hot path --

    def verify(self, plaintext: str | None) -> Principal | None:
        """The caller behind ``plaintext``, or None when it is malformed, unknown, wrong or revoked."""
        if not plaintext or len(plaintext) > _MAX_KEY_CHARS:
            return None
        parts = plaintext.split("_", 2)  # the secret itself may hold "_"
        if len(parts) != 3 or parts[0] != KEY_PREFIX or not _KEY_ID_RE.fullmatch(parts[1]) or not parts[2]:
            return None
        _, key_id, secret = parts
        digest = hashlib.sha256(plaintext.encode()).digest()
        now = self._clock()
        if self.cache_ttl:
            with self._lock:
                hit = self._cache.get(digest)
            if hit is not None and hit[0] > now:
                return hit[1]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).mappings().first()
        ok = row is not None and row["revoked_at"] is None and hmac.compare_digest(row["secret_hash"], _hash(secret))
        principal = Principal(key_id, row["scope"], row["rm_id"], row["label"]) if ok else None
        if self.cache_ttl:
            with self._lock:
                if len(self._cache) >= self.cache_size:
                    for d in [d for d, (exp, _) in self._cache.items() if exp <= now]:
                        del self._cache[d]
                    if len(self._cache) >= self.cache_size:  # flooded with distinct keys: start over
                        self._cache.clear()
                self._cache[digest] = (now + self.cache_ttl, principal)
        return principal


# -------------------------------------------------------------------------------------------------
# Audit log

_AUDIT_FIELDS = ("key_id", "customer_id", "endpoint", "model_version", "request_id")


class AuditLog:
    """One row per read of a client's data: when, which key, which client, which endpoint, which model
    version (and the request id), in table ``audit`` of the serving database.

    It is written on every request (a score batch of 1,000 clients is 1,000 rows, one insert), so it wants
    an engine with ``durable=False`` (:meth:`open` makes one): on SQLite that is WAL with
    ``synchronous=NORMAL``, where a commit is in the WAL in the OS's cache when it returns. A killed
    process (kill -9, an OOM kill, a crash) loses nothing committed; a power cut or an OS crash may lose
    the last commits, never the database. PostgreSQL commits durably either way.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        create_tables(engine)
        self._writer = sql.ThreadConnections(engine)  # a row or a few per request: no pool round trip
        self._insert = sql.Prepared(audit.insert(), engine, [*_AUDIT_FIELDS, "at"])

    @classmethod
    def open(cls, home: Home, url: str | None = None) -> AuditLog:
        """The audit log of ``home`` (or of ``url`` / ``$NBA_LEDGER_URL``), on a non-durable engine."""
        return cls(sql.engine(sql.default_url(home, url), durable=False))

    def record(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert ``rows`` (dicts of key_id, customer_id, endpoint and optionally model_version, request_id,
        at) in one ``executemany`` and one transaction; ``at`` defaults to now (UTC). Returns the row count."""
        if not rows:
            return 0
        at = _now()
        values = []
        for i, row in enumerate(rows):
            missing = [f for f in ("key_id", "customer_id", "endpoint") if not row.get(f)]
            unknown = set(row) - {*_AUDIT_FIELDS, "at"}
            if missing or unknown:
                # A bug in the caller, not bad input from a client: ValueError, so the API answers 500.
                raise ValueError(f"audit row {i}: " + (f"missing {', '.join(missing)}" if missing else "")
                                 + ("; " if missing and unknown else "")
                                 + (f"unknown field(s) {', '.join(sorted(unknown))}" if unknown else ""))
            values.append({f: row.get(f) for f in _AUDIT_FIELDS} | {"at": row.get("at") or at})
        # On the driver (a row per request; see feature_store.sql.Prepared), compiled once.
        with self._writer.driver() as raw:
            self._insert.execute_many(raw, values)
        return len(values)

    def close(self) -> None:
        """Close the connections and the engine's pool."""
        self._writer.close()
        self.engine.dispose()

    def record_reads(self, principal: Principal, customer_ids: Iterable[str], endpoint: str, *,
                     model_version: str | None = None, request_id: str | None = None) -> int:
        """One row per client that ``principal`` read through ``endpoint``."""
        return self.record([{"key_id": principal.key_id, "customer_id": c, "endpoint": endpoint,
                             "model_version": model_version, "request_id": request_id} for c in customer_ids])

    def rows(self, *, customer_id: str | None = None, key_id: str | None = None,
             limit: int = 1000) -> list[dict]:
        """The latest ``limit`` records, newest first, optionally for one client or one key."""
        q = sa.select(audit).order_by(audit.c.at.desc(), audit.c.id.desc()).limit(limit)
        if customer_id is not None:
            q = q.where(audit.c.customer_id == customer_id)
        if key_id is not None:
            q = q.where(audit.c.key_id == key_id)
        with self.engine.connect() as conn:
            return [{**r, "at": _utc(r["at"])} for r in conn.execute(q).mappings()]


# -------------------------------------------------------------------------------------------------
# Rate limit


class _MemoryWindow:
    """The moving-window strategy of ``limits`` (``hit``, ``test``, ``get_window_stats`` with the same
    arguments and meaning) in this process's memory: per key the times of the requests inside the
    window, oldest first. Thread-safe; a key's entries are dropped as they leave the window."""

    SWEEP_EVERY = 4096  # hits between sweeps of the keys whose requests all left their window

    def __init__(self):
        self._events: dict[str, collections.deque] = {}
        self._lock = threading.Lock()
        self._hits = 0

    def _window(self, item, key: str, now: float) -> collections.deque:
        q = self._events.get(key)
        if q is None:
            q = self._events[key] = collections.deque()
        start = now - item.get_expiry()
        while q and q[0] <= start:
            q.popleft()
        return q

    def hit(self, item, *identifiers: str, cost: int = 1) -> bool:
        key = item.key_for(*identifiers)
        now = time.time()
        with self._lock:
            self._hits += 1
            if self._hits % self.SWEEP_EVERY == 0:  # keys not seen for a whole window (sign-in addresses)
                start = now - item.get_expiry()
                for k in [k for k, q in self._events.items() if not q or q[-1] <= start]:
                    del self._events[k]
            q = self._window(item, key, now)
            if len(q) + cost > item.amount:
                return False
            q.extend([now] * cost)
            return True

    def test(self, item, *identifiers: str, cost: int = 1) -> bool:
        key = item.key_for(*identifiers)
        with self._lock:
            q = self._window(item, key, time.time())
            ok = len(q) + cost <= item.amount
            if not q:
                self._events.pop(key, None)
            return ok

    def get_window_stats(self, item, *identifiers: str) -> limits.WindowStats:
        key = item.key_for(*identifiers)
        now = time.time()
        with self._lock:
            q = self._window(item, key, now)
            reset = (q[0] if q else now) + item.get_expiry()
            return limits.WindowStats(reset, max(item.amount - len(q), 0))


class RateLimiter:
    """A per-key rate limit (``"100/minute"``, ``"20 per second"``: the ``limits`` library's notation).

    Moving window: a key may make ``N`` requests in *any* window of the period. A fixed window (reset on
    the minute) lets a caller send ``2N`` requests across a window boundary, which is the burst a limit is
    there to stop; the moving window costs one timestamp per allowed request (``N`` per key), small at API
    rates. Its retry time is exact: when the oldest request in the window leaves it.

    ``storage_url``: ``memory://`` (one process) or ``redis://host:6379/0`` (shared by every worker and
    replica, so the limit is per key, not per process). If the storage fails (Redis down), requests are
    let through with a warning when ``fail_open`` (the default: the limit protects the service, it should
    not take it down), else the error propagates (500).

    ``memory://`` is counted by :class:`_MemoryWindow`, the same moving window in this process: the
    ``limits`` library's memory storage starts a thread every 10 ms to expire entries, which cost about
    5% of a next-best-action request's time at a few hundred requests/s. Shared storages use ``limits``.
    """

    NAMESPACE = "nba-api-key"

    def __init__(self, rate: str, storage_url: str = "memory://", *, fail_open: bool = True):
        try:
            self.item = limits.parse(rate)
        except ValueError:
            raise ConfigError(f"rate limit {rate!r}: expected N/PERIOD, e.g. 100/minute or 20/second") from None
        if storage_url.strip() == "memory://":
            self.storage = None
            self.strategy = _MemoryWindow()
        else:
            try:
                self.storage = storage_from_string(storage_url)
            except ConfigurationError as e:
                raise ConfigError(f"rate limit storage {sql.redact(storage_url)!r}: {e} "
                                  f"(expected memory:// or redis://HOST:PORT/DB)") from None
            self.strategy = MovingWindowRateLimiter(self.storage)
        self.rate = rate
        self.fail_open = fail_open
        self._warned_at = float("-inf")

    def hit(self, key_id: str) -> float | None:
        """Count one request of ``key_id``: None if allowed, else the seconds until it may retry (> 0)."""
        try:
            if self.strategy.hit(self.item, self.NAMESPACE, key_id):
                return None
            stats = self.strategy.get_window_stats(self.item, self.NAMESPACE, key_id)
        except Exception as e:  # noqa: BLE001 - any storage failure (redis errors have no common base here)
            if not self.fail_open:
                raise
            if time.monotonic() - self._warned_at > 60:  # one warning a minute, not one per request
                self._warned_at = time.monotonic()
                log.warning("rate limit storage failed, requests are not limited: %s", type(e).__name__)
            return None
        return max(stats.reset_time - time.time(), 0.001)

    def blocked(self, key_id: str) -> float | None:
        """Without counting a request: None if ``key_id`` may make one now, else the seconds until it may
        (for limits that count failures only, such as sign-in attempts: :meth:`hit` on each failure)."""
        try:
            if self.strategy.test(self.item, self.NAMESPACE, key_id):
                return None
            stats = self.strategy.get_window_stats(self.item, self.NAMESPACE, key_id)
        except Exception:  # noqa: BLE001 - as in hit(): a storage failure lets the request through
            if not self.fail_open:
                raise
            return None
        return max(stats.reset_time - time.time(), 0.001)


# -------------------------------------------------------------------------------------------------
# Body size limit


class BodySizeLimit:
    """Pure ASGI middleware: 413 ``{"detail": ...}`` for a request body over ``max_bytes``, before the app
    sees any of it.

    With a ``Content-Length`` over the limit it answers at once and reads nothing (the server enforces
    the length it declared). Without one (``Transfer-Encoding: chunked``) it reads the chunks as they
    come, answers 413 as soon as they add up past the limit (the rest is never read, at most
    ``max_bytes`` are held) and otherwise hands the app the body it read. Add it last (outermost).
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        if max_bytes < 0:
            raise ConfigError(f"body size limit {max_bytes!r} bytes: expected 0 or more")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _reply(send, 400, "invalid Content-Length header")
                return
            if length > self.max_bytes:
                await _reply(send, 413, f"request body of {length} bytes is over the limit of {self.max_bytes} bytes")
                return
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: let the app see it
                pending: list[Message] = [message]
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _reply(send, 413, f"request body over the limit of {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        await self.app(scope, replay, send)


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # the unread rest of the body ends the connection
    await send({"type": "http.response.body", "body": body})


# -------------------------------------------------------------------------------------------------
# Log hygiene

#: Path segments after which a client's id follows (``/v1/clients/<id>/...``).
ID_SEGMENTS = ("clients", "customers")
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "nba")
_KEY_RE = re.compile(r"(?<![A-Za-z0-9])nba_([A-Za-z0-9]+)_[A-Za-z0-9_\-]+")
_QUERY_RE = re.compile(r"(/[^\s?#\"']*)\?[^\s#\"']*")


class RedactFilter(logging.Filter):
    """Masks what must not reach the logs: a client's id in a path (``/v1/clients/C000123/x`` ->
    ``/v1/clients/<id>/x``), query strings (dropped: they may carry ids or a key), and anything shaped like
    one of our API keys (``nba_<key_id>_<redacted>``; the key id is not secret). It rewrites the record and
    lets it through.

    ``uvicorn.access`` records keep their five arguments (uvicorn's access formatter unpacks them); any
    other record is rendered first, so that an id split between the format and its arguments is caught,
    and its traceback text is redacted too. Free text that names a client outside a path is not
    recognisable; our own code does not log client ids.
    """

    def __init__(self, id_segments: Sequence[str] = ID_SEGMENTS):
        super().__init__()
        alts = "|".join(re.escape(s) for s in id_segments)
        self._id_re = re.compile(rf"(/(?:{alts})/+)[^/?#\s\"']+")

    def redact(self, text: str) -> str:
        text = _KEY_RE.sub(r"nba_\1_<redacted>", text)
        text = _QUERY_RE.sub(r"\1", text)
        return self._id_re.sub(r"\1<id>", text)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
            record.msg = self.redact(str(record.msg))
        else:
            try:
                rendered = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken format: keep its parts, redacted
                rendered = f"{record.msg} {record.args}"
            color = record.__dict__.get("color_message")  # uvicorn's coloured twin of msg, formatted with args
            if isinstance(color, str):
                try:
                    record.color_message = self.redact(color % record.args if record.args else color)
                except Exception:  # noqa: BLE001
                    del record.color_message
            record.msg, record.args = self.redact(rendered), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install_log_redaction(loggers: Sequence[str] = REDACTED_LOGGERS,
                          id_segments: Sequence[str] = ID_SEGMENTS) -> RedactFilter:
    """Attach one :class:`RedactFilter` to ``loggers``, to their handlers and to the root logger's handlers.

    A logger's filter sees only records logged on that very logger, not those of its children
    (``nba.api``) that propagate up; a handler's filter sees everything it writes, so the handlers get it
    too. Call it once uvicorn has configured logging (at the app's startup); calling it again adds nothing
    where a ``RedactFilter`` already is. Handlers added later need ``addFilter`` of the returned filter.
    """
    f = RedactFilter(id_segments)
    targets: list[logging.Filterer] = []
    for name in loggers:
        logger = logging.getLogger(name)
        targets += [logger, *logger.handlers]
    targets += logging.getLogger().handlers
    for target in targets:
        if not any(isinstance(x, RedactFilter) for x in target.filters):
            target.addFilter(f)
    return f


# -------------------------------------------------------------------------------------------------
# FastAPI dependencies

API_KEY_HEADER = APIKeyHeader(name=HEADER, scheme_name="APIKey", auto_error=False,
                              description="An API key from `nba keys create`: nba_<key_id>_<secret>.")


class Authenticator:
    """The FastAPI dependency that turns ``X-API-Key`` into a :class:`Principal` (401 when missing or bad,
    429 with ``Retry-After`` when over the key's rate), and keeps it on ``request.state.principal``."""

    def __init__(self, keystore: KeyStore, limiter: RateLimiter | None = None):
        self.keystore = keystore
        self.limiter = limiter

    def __call__(self, request: Request, api_key: str | None = Security(API_KEY_HEADER)) -> Principal:
        if not api_key:
            raise HTTPException(401, f"missing API key: send it in the {HEADER} header",
                                headers={"WWW-Authenticate": f'APIKey header="{HEADER}"'})
        principal = self.keystore.verify(api_key)
        if principal is None:
            raise HTTPException(401, "invalid or revoked API key",
                                headers={"WWW-Authenticate": f'APIKey header="{HEADER}"'})
        if self.limiter is not None:
            retry = self.limiter.hit(principal.key_id)
            if retry is not None:
                seconds = max(1, int(-(-retry // 1)))  # Retry-After takes whole seconds: round up
                raise HTTPException(429, f"rate limit of {self.limiter.rate} exceeded for key {principal.key_id}; "
                                         f"retry after {seconds} s", headers={"Retry-After": str(seconds)})
        request.state.principal = principal
        return principal

    def require(self, *scopes: str) -> Callable[..., Principal]:
        """A dependency giving the caller, 403 unless its scope is one of ``scopes``."""
        return require(*scopes, auth=self)


def authenticate(keystore: KeyStore, limiter: RateLimiter | None = None) -> Authenticator:
    """The authentication dependency: ``Depends(authenticate(keys, limiter))``, or put it on
    ``app.state.authenticator`` at startup for :data:`Caller` and :func:`require` without ``auth``."""
    return Authenticator(keystore, limiter)


async def current_principal(request: Request, api_key: str | None = Security(API_KEY_HEADER)) -> Principal:
    """The caller, through the :class:`Authenticator` the app keeps on ``app.state.authenticator``; so
    routers can declare auth at import time while the key store is opened at startup."""
    return _app_authenticator(request)(request, api_key)


def _app_authenticator(request: Request) -> Callable[..., Principal]:
    auth = getattr(request.app.state, "authenticator", None)
    if auth is None:
        raise RuntimeError("app.state.authenticator is not set: set it to authenticate(keystore, limiter) at startup")
    return auth


#: ``caller: Caller`` in a route: any valid key (scope checked by the route or by :func:`require`).
Caller = Annotated[Principal, Depends(current_principal)]


def require(*scopes: str, auth: Callable[..., Principal] | None = None) -> Callable[..., Principal]:
    """A dependency giving the caller, 403 unless its key's scope is one of ``scopes``.

    ``Annotated[Principal, Depends(require(CAMPAIGN, RM))]``. The caller comes from ``auth`` when given,
    else from ``app.state.authenticator`` (:func:`current_principal`).
    """
    scopes = _check_scopes(scopes)
    allowed = " or ".join(scopes)

    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per dependency per request;
    # the work here is a cached key lookup and a counter. One dependency, not one per step: FastAPI
    # solves each level of a dependency tree at a cost comparable to the key check itself.
    async def check(request: Request, api_key: str | None = Security(API_KEY_HEADER)) -> Principal:
        principal = (auth or _app_authenticator(request))(request, api_key)
        if not principal.can(*scopes):
            raise HTTPException(403, f"{principal} may not call this endpoint (it needs scope {allowed})")
        return principal

    return check


def check_client_access(principal: Principal, client_rm_id: str | None) -> None:
    """403 unless ``principal`` may read a client whose RM is ``client_rm_id`` (see
    :meth:`Principal.may_read_client`). The client's id is not echoed."""
    if not principal.may_read_client(client_rm_id):
        what = "only its own RM's clients" if principal.scope == RM else "no client data"
        raise HTTPException(403, f"{principal} may read {what}")
