"""Workbench sign-in sessions: an RM's API key exchanged for a session cookie.

The browser holds a random session token (``secrets.token_urlsafe(32)``, 256 bits) in an HttpOnly,
SameSite=Lax cookie (Secure when the request came over HTTPS); the serving database keeps only its
SHA-256 (table ``workbench_sessions``, beside ``api_keys``), the key it was made from, the RM, a CSRF token
and an absolute expiry (a working day by default). Every request re-checks the key: revoking it
(``nba keys revoke``) ends its sessions at once. Signing out deletes the row.

CSRF: every form carries the session's token (synchronizer-token pattern, OWASP CSRF Prevention Cheat
Sheet); a POST whose token does not match is refused. The sign-in form, which has no session yet, uses a
double-submit token (a short-lived cookie and the same value in the form).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from apps.api.security import RM, Principal, api_keys
from apps.api.security import metadata as security_metadata
from feature_store import sql
from nba.home import Home

SESSION_COOKIE = "nba_session"
LOGIN_CSRF_COOKIE = "nba_login_csrf"
DEFAULT_TTL = timedelta(hours=12)

metadata = sa.MetaData()

sessions = sa.Table(
    "workbench_sessions", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # hex SHA-256 of the cookie's token
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("rm_id", sa.String(64), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("workbench_sessions_key", "key_id"),
)


@dataclass(frozen=True)
class Session:
    """A signed-in RM: the principal of the key the session was made from, and the session's CSRF token."""

    principal: Principal
    csrf: str
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc(v: datetime) -> datetime:
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class SessionStore:
    """Sessions in the serving database (SQLite or PostgreSQL, :mod:`feature_store.sql`)."""

    def __init__(self, engine: Engine, ttl: timedelta = DEFAULT_TTL, clock=None):
        self.engine, self.ttl = engine, ttl
        self.clock = clock or (lambda: datetime.now(UTC))
        with engine.begin() as c:
            for table in (*security_metadata.sorted_tables, *metadata.sorted_tables):
                c.execute(sa.schema.CreateTable(table, if_not_exists=True))
                for index in table.indexes:
                    c.execute(sa.schema.CreateIndex(index, if_not_exists=True))

    @classmethod
    def open(cls, home: Home, url: str | None = None, **kwargs) -> SessionStore:
        return cls(sql.engine(sql.default_url(home, url), durable=False), **kwargs)

    def create(self, principal: Principal) -> tuple[str, Session]:
        """A new session for an ``rm`` key's principal: (the cookie's token, the session). ``ValueError``
        for another scope (the workbench is for RMs)."""
        if principal.scope != RM or not principal.rm_id:
            raise ValueError(f"{principal}: the workbench takes an rm key")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self.clock()
        with self.engine.begin() as c:
            c.execute(sessions.delete().where(sessions.c.expires_at < now))  # housekeeping
            c.execute(sessions.insert().values(token_hash=_digest(token), key_id=principal.key_id,
                                               rm_id=principal.rm_id, csrf=csrf, created_at=now,
                                               expires_at=now + self.ttl))
        return token, Session(principal, csrf, now + self.ttl)

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token``: None when unknown, expired, or its key was revoked since."""
        if not token or len(token) > 100:
            return None
        q = (sa.select(sessions, api_keys.c.scope, api_keys.c.label, api_keys.c.revoked_at)
             .select_from(sessions.join(api_keys, api_keys.c.key_id == sessions.c.key_id))
             .where(sessions.c.token_hash == _digest(token)))
        with self.engine.connect() as c:
            row = c.execute(q).mappings().first()
        if row is None or row["revoked_at"] is not None or _utc(row["expires_at"]) <= self.clock():
            return None
        return Session(Principal(row["key_id"], row["scope"], row["rm_id"], row["label"]), row["csrf"],
                       _utc(row["expires_at"]))

    def delete(self, token: str | None) -> None:
        if token:
            with self.engine.begin() as c:
                c.execute(sessions.delete().where(sessions.c.token_hash == _digest(token)))


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of a form's CSRF token with the expected one (both non-empty)."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
