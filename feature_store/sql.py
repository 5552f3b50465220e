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
            with _CHECKPOINTED_LOCK:
                if _CHECKPOINTED.get(str(path)):  # a WalCheckpointer runs for this file
                    cur.execute("PRAGMA wal_autocheckpoint=0")
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

    @contextlib.contextmanager
    def driver(self, *, lazy_commit: bool = False):
        """The thread's DB-API connection (from ``engine.raw_connection()``, so the engine's connect
        events ran), in a transaction committed at the end (rolled back and dropped on an error), for
        :class:`Prepared` statements. ``lazy_commit`` on PostgreSQL: ``SET LOCAL synchronous_commit TO
        OFF`` first (SQLite engines choose ``synchronous`` per engine, :func:`engine`)."""
        c = getattr(self._local, "raw", None)
        if c is None:
            c = self._local.raw = self.engine.raw_connection()
            with self._lock:
                self._open.append(c)
        try:
            if lazy_commit and self.engine.dialect.name == "postgresql":
                c.cursor().execute("SET LOCAL synchronous_commit TO OFF")
            yield c
            c.commit()
        except BaseException:
            self._local.raw = None
            with contextlib.suppress(Exception):
                c.rollback()
            with contextlib.suppress(Exception):
                c.close()
            raise

    def close(self) -> None:
        """Close every thread's connection (call when no thread uses them any more)."""
        with self._lock:
            conns, self._open = self._open, []
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()


_CHECKPOINTED: dict[str, int] = {}  # SQLite file -> running WalCheckpointers
_CHECKPOINTED_LOCK = threading.Lock()


class WalCheckpointer:
    """Checkpoints a SQLite database's write-ahead log from a background thread, every ``interval``
    seconds (``PRAGMA wal_checkpoint(PASSIVE)``: never waits for readers or writers), and while it runs,
    connections that :func:`engine` opens to that file in this process leave checkpoints to it
    (``wal_autocheckpoint=0``).

    SQLite otherwise checkpoints inside the commit that takes the log past 1,000 pages, and that commit
    waits for the copy and its fsync: at a few hundred API requests a second (each commits an audit row)
    that was a stall of tens of ms every second or so, seen as the API's p99 (benchmarks/bench_api.py,
    next-best-action at 4 connections: p99 30 ms with, 13 ms without). Here each checkpoint is small and
    runs beside the event loop (sqlite3 releases the GIL while it works). Other processes (the daily run,
    the CLI) keep SQLite's own checkpoints. ``url``: the database's SQLAlchemy URL; a no-op unless it is
    ``sqlite:///``. Start it before opening the engines it should relieve; use as a context manager or
    :meth:`start` / :meth:`stop`.
    """

    def __init__(self, url: str, interval: float = 0.25):
        self.url, self.interval = url, interval
        self.path = str(Path(url[len("sqlite:///"):])) if url.startswith("sqlite:///") else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.copied = 0  # log frames copied into the database by this thread so far

    def start(self) -> WalCheckpointer:
        if self.path is not None and self._thread is None:
            with _CHECKPOINTED_LOCK:
                _CHECKPOINTED[self.path] = _CHECKPOINTED.get(self.path, 0) + 1
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        con = None
        while not self._stop.wait(self.interval):
            try:
                if con is None:
                    con = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
                busy, frames, copied = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.copied += max(copied, 0)
            except sqlite3.Error:  # a busy or vanished file: try again next time
                with contextlib.suppress(Exception):
                    con.close()
                con = None
        if con is not None:
            with contextlib.suppress(Exception):
                con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # what the last requests wrote
                con.close()

    def stop(self) -> None:
        """Stop the thread (after a last checkpoint); connections opened from now on checkpoint as usual."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self._thread = None
        with _CHECKPOINTED_LOCK:
            n = _CHECKPOINTED.get(self.path, 0) - 1
            if n > 0:
                _CHECKPOINTED[self.path] = n
            else:
                _CHECKPOINTED.pop(self.path, None)

    def __enter__(self) -> WalCheckpointer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Prepared:
    """A SQLAlchemy Core statement compiled once for an engine's dialect and run on a DB-API connection
    (:meth:`ThreadConnections.driver`), with the column types' own bind and result processors (dates and
    booleans on SQLite) applied by hand.

    For the few statements the scoring API runs on every request: through ``Connection.execute`` an
    insert and its commit cost about 180 µs here, on the driver about 57 µs (benchmarks/bench_api.py,
    STATUS.md). The statement stays defined once in Core, for both SQLite and PostgreSQL. Inserts are
    compiled for ``executemany`` (no implicit RETURNING); ``column_keys``: the insert's columns.
    """

    def __init__(self, statement, engine: Engine, column_keys: list[str] | None = None):
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect, column_keys=column_keys,
                                     for_executemany=column_keys is not None)
        self.sql = compiled.string
        self.order = list(compiled.positiontup) if compiled.positional else None
        self.binds = [(name, bp.type.dialect_impl(dialect).bind_processor(dialect))
                      for name, bp in compiled.binds.items()]
        cols = getattr(statement, "selected_columns", None) if not column_keys else None
        self.results = ([c.type.dialect_impl(dialect).result_processor(dialect, None) for c in cols]
                        if cols is not None else [])
        self._convert_rows = any(p is not None for p in self.results)

    def _params(self, values: dict):
        v = dict(values)
        for name, proc in self.binds:
            if proc is not None and name in v:
                v[name] = proc(v[name])
        return [v[n] for n in self.order] if self.order is not None else v

    def execute_many(self, conn, rows: list[dict]) -> int:
        """Run the statement once per row (one ``executemany``); returns the driver's row count."""
        cur = conn.cursor()
        try:
            cur.executemany(self.sql, [self._params(r) for r in rows])
            return cur.rowcount
        finally:
            cur.close()

    def fetch(self, conn, values: dict) -> list[tuple]:
        """The rows of a select, each value converted as ``Connection.execute`` converts it."""
        cur = conn.cursor()
        try:
            cur.execute(self.sql, self._params(values))
            rows = cur.fetchall()
        finally:
            cur.close()
        if not self._convert_rows:
            return [tuple(r) for r in rows]
        procs = self.results
        return [tuple(v if p is None or v is None else p(v) for p, v in zip(procs, r)) for r in rows]
