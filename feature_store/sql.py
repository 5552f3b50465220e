"""The serving database: one SQLAlchemy engine for the contact ledger, the API's keys and its audit log.

Embedded default: SQLite at ``$NBA_HOME/ledger.sqlite`` in WAL mode (readers never block the writer,
several uvicorn workers share the file). Scale-out: PostgreSQL by URL (``postgresql://user@host/db``,
driver psycopg 3), chosen by ``NBA_LEDGER_URL`` or an explicit URL. The same SQLAlchemy Core statements
run on both.

Durability: SQLite runs with ``synchronous=FULL`` (each commit is fsynced before it returns), PostgreSQL
with its default ``synchronous_commit=on``: a write acknowledged after ``commit()`` survives a killed
process and a power cut. :func:`engine` with ``durable=False`` gives a SQLite engine on
``synchronous=NORMAL`` for high-rate records (the audit log) that survive a killed process (the WAL is in
the OS's cache) but may lose the last commits in a power cut.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from nba.errors import ConfigError
from nba.home import Home

ENV_VAR = "NBA_LEDGER_URL"
FILE_NAME = "ledger.sqlite"


def default_url(home: Home, url: str | None = None) -> str:
    """``url``, else ``$NBA_LEDGER_URL``, else SQLite at ``$NBA_HOME/ledger.sqlite``."""
    return url or os.environ.get(ENV_VAR) or f"sqlite:///{home.root / FILE_NAME}"


def engine(url: str, *, durable: bool = True) -> Engine:
    """An engine for ``sqlite:///PATH`` or ``postgresql://...`` (``postgresql+psycopg://`` is implied).

    Raises ``ConfigError`` for another scheme. SQLite connections get WAL, a 30 s busy timeout and
    ``synchronous=FULL`` (``NORMAL`` when not ``durable``); foreign keys are not used.
    """
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        eng = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})
        sync = "FULL" if durable else "NORMAL"

        @sa.event.listens_for(eng, "connect")
        def _pragmas(dbapi_con, _record) -> None:  # noqa: ANN001 - DB-API connection
            cur = dbapi_con.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            # Several processes opening a new file at once: the switch to WAL fails at once with "database
            # is locked" (busy_timeout does not cover it), so it is retried for up to 30 s.
            for attempt in range(300):
                try:
                    cur.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or attempt == 299:
                        raise
                    time.sleep(0.1)
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.close()

        return eng
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        rest = url.split("://", 1)[1]
        return sa.create_engine(f"postgresql+psycopg://{rest}", pool_pre_ping=True, pool_size=8, max_overflow=8)
    raise ConfigError(f"unsupported serving database {redact(url)!r} (expected sqlite:///PATH or "
                      f"postgresql://USER@HOST:PORT/DB, in --ledger-url or ${ENV_VAR})")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: show only its scheme
        return url.split("://", 1)[0] + "://..."


class ThreadConnections:
    """One connection per thread, kept open, for statements run many times a second (the scoring API's
    per-request reads and writes): checking a connection out of the pool and back costs about as much as
    the statement itself. Each use ends its transaction (a read rolls back, so the next one sees every
    commit since). A statement that fails drops the thread's connection (a dropped PostgreSQL
    connection is replaced next time)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._local = threading.local()
        self._open: list = []
        self._lock = threading.Lock()

    def _conn(self):
        c = getattr(self._local, "c", None)
        if c is None or c.closed:
            c = self._local.c = self.engine.connect()
            with self._lock:
                self._open.append(c)
        return c

    def _drop(self, c) -> None:
        self._local.c = None
        with contextlib.suppress(Exception):
            c.close()

    @contextlib.contextmanager
    def read(self):
        """A connection for reads; its transaction is rolled back after."""
        c = self._conn()
        try:
            yield c
            c.rollback()
        except BaseException:
            self._drop(c)
            raise

    @contextlib.contextmanager
    def begin(self):
        """A connection in a transaction, committed at the end (rolled back on an error)."""
        c = self._conn()
        try:
            with c.begin():
                yield c
        except BaseException:
            self._drop(c)
            raise

    def close(self) -> None:
        """Close every thread's connection (call when no thread uses them any more)."""
        with self._lock:
            conns, self._open = self._open, []
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
