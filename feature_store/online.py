"""Online feature store: one customer's features and state in well under a millisecond.

Two real backends behind one interface, chosen by ``NBA_ONLINE_STORE`` (or an explicit URL):

- SQLite (the embedded default): ``$NBA_HOME/online.sqlite``, WAL mode. Each published snapshot is its
  own table; a one-row ``live`` table names the live one. A read is one statement that resolves the
  live table name and the row inside a single read transaction.
- Redis (``redis://host:port/db``): each snapshot is one hash ``<prefix>:snap:<id>`` (customer id ->
  JSON array); ``<prefix>:live_snap`` names the live snapshot and ``<prefix>:live`` holds its metadata.
  A read is one server-side script: resolve the live snapshot and read from it, atomically.

Publishing writes the whole new snapshot beside the live one and then switches the pointer in one
atomic step, so readers see the old or the new version, never a mix. The previous snapshot is kept
(a reader that resolved it a moment ago can still finish) and older ones are dropped.
Values are JSON objects; ``version`` records which as_of (and store version) is live.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import orjson

from nba.errors import ConfigError, StoreError

ENV_VAR = "NBA_ONLINE_STORE"
Row = tuple[str, bytes]  # (customer_id, JSON document)


class OnlineStore(ABC):
    """Snapshot-at-a-time store of customer feature documents.

    A document is a JSON array of values in the snapshot's column order (the column names are kept
    once, in the snapshot's metadata, not in each of a million documents).
    """

    @abstractmethod
    def publish(self, version: str, columns: Sequence[str], rows: Iterable[Sequence[Row]]) -> int:
        """Write a complete snapshot (an iterable of batches of rows), then make it live. Returns rows."""

    @abstractmethod
    def live(self) -> dict | None:
        """``{"version", "published_at", "rows", "columns", ...}`` of the live snapshot, or None."""

    @abstractmethod
    def _fetch(self, customer_ids: Sequence[str]) -> tuple[str, list[str], list[bytes | None]]:
        """Version, columns and raw documents of ``customer_ids``, all from the same (live) snapshot."""

    def get_docs(self, customer_ids: Sequence[str]) -> tuple[str | None, list[str], list[bytes | None]]:
        """The live snapshot's version and column names, and each customer's raw document (a JSON array
        of values in the columns' order, as :func:`nba.decision.documents` wrote it; None: unknown),
        all from one snapshot. The document's bytes are what :func:`nba.decision.feature_hashes` hashes."""
        if not customer_ids:
            return None, [], []
        return self._fetch(customer_ids)

    def get(self, customer_id: str) -> dict | None:
        return self.get_many([customer_id])[0]

    def get_many(self, customer_ids: Sequence[str]) -> list[dict | None]:
        if not customer_ids:
            return []
        _, columns, raws = self._fetch(customer_ids)
        return [None if r is None else dict(zip(columns, orjson.loads(r))) for r in raws]

    def get_rows(self, customer_ids: Sequence[str]) -> tuple[list[str], list[list | None]]:
        """The live snapshot's column names and each customer's values in that order (None: unknown);
        cheaper than :meth:`get_many` for callers that build columns (no dict per customer)."""
        if not customer_ids:
            return [], []
        _, columns, raws = self._fetch(customer_ids)
        return columns, [None if r is None else orjson.loads(r) for r in raws]

    def close(self) -> None:  # noqa: B027 - optional for backends
        pass

    @property
    @abstractmethod
    def url(self) -> str: ...

    def _empty(self) -> StoreError:
        return StoreError(f"the online store {self.url} is empty: run 'nba features materialize'")


def _meta(version: str, columns: Sequence[str], rows: int, **extra) -> str:
    return json.dumps({"version": version, "rows": rows, "columns": list(columns),
                       "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra})


# -------------------------------------------------------------------------------------------------
# SQLite


class SQLiteOnlineStore(OnlineStore):
    _TABLE_RE = re.compile(r"^snap_[0-9a-f]{12}$")

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._columns: dict[str, tuple[str, list[str]]] = {}  # snapshot table -> (version, columns)
        con = self._con()
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS live (id INTEGER PRIMARY KEY CHECK (id = 1), "
                    "tbl TEXT NOT NULL, meta TEXT NOT NULL)")

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            # autocommit mode: transactions are explicit (BEGIN/COMMIT) below
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def publish(self, version: str, columns: Sequence[str], rows: Iterable[Sequence[Row]]) -> int:
        con = self._con()
        tbl = f"snap_{uuid.uuid4().hex[:12]}"
        n = 0
        try:
            con.execute("BEGIN")
            con.execute(f"CREATE TABLE {tbl} (customer_id TEXT PRIMARY KEY, doc BLOB NOT NULL) WITHOUT ROWID")
            for batch in rows:
                con.executemany(f"INSERT INTO {tbl} VALUES (?, ?)", batch)
                n += len(batch)
            con.execute("COMMIT")
            meta = _meta(version, columns, n)
            con.execute("BEGIN IMMEDIATE")  # the switch: one transaction
            old = self._live_table(con)
            con.execute("INSERT INTO live (id, tbl, meta) VALUES (1, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET tbl = excluded.tbl, meta = excluded.meta", (tbl, meta))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            con.execute(f"DROP TABLE IF EXISTS {tbl}")
            raise
        # Keep the live and the previous snapshot (a reader may have just resolved it); drop older ones.
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            if self._TABLE_RE.match(name) and name not in (tbl, old):
                con.execute(f"DROP TABLE {name}")
        return n

    def live(self) -> dict | None:
        row = self._con().execute("SELECT meta FROM live").fetchone()
        return None if row is None else json.loads(row[0])

    def _live_table(self, con: sqlite3.Connection) -> str | None:
        row = con.execute("SELECT tbl FROM live").fetchone()
        return None if row is None else row[0]

    def _fetch(self, customer_ids: Sequence[str]) -> tuple[str, list[str], list[bytes | None]]:
        con = self._con()
        con.execute("BEGIN")  # one read transaction: pointer, columns and rows from the same snapshot
        try:
            live = con.execute("SELECT tbl, meta FROM live").fetchone()
            if live is None:
                raise self._empty()
            tbl, meta = live
            known = self._columns.get(tbl)
            if known is None:
                m = json.loads(meta)
                known = self._columns[tbl] = (str(m["version"]), m["columns"])
            version, columns = known
            if len(customer_ids) == 1:
                row = con.execute(f"SELECT doc FROM {tbl} WHERE customer_id = ?", (customer_ids[0],)).fetchone()
                return version, columns, [None if row is None else row[0]]
            found: dict[str, bytes] = {}
            ids = list(dict.fromkeys(customer_ids))
            for i in range(0, len(ids), 900):  # SQLite's bound-parameter limit
                chunk = ids[i:i + 900]
                marks = ",".join("?" * len(chunk))
                found.update(con.execute(f"SELECT customer_id, doc FROM {tbl} WHERE customer_id IN ({marks})",
                                         chunk).fetchall())
            return version, columns, [found.get(c) for c in customer_ids]
        finally:
            con.execute("COMMIT")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


# -------------------------------------------------------------------------------------------------
# Redis


class RedisOnlineStore(OnlineStore):
    def __init__(self, url: str, prefix: str | None = None):
        import redis  # imported here: only needed when Redis is configured

        self._url = url
        self.prefix = prefix or os.environ.get("NBA_ONLINE_PREFIX", "nba:features")
        self.r = redis.Redis.from_url(url, socket_timeout=10)
        self._cached_snap: bytes | None = None
        self._cached_columns: list[str] = []
        self._cached_version = ""
        self._read = self.r.register_script(self._READ)
        try:
            self.r.ping()
        except redis.exceptions.ConnectionError as e:
            raise StoreError(f"cannot reach the online store at {url}: {e}") from None

    @property
    def url(self) -> str:
        return self._url

    def _live_key(self) -> str:
        return f"{self.prefix}:live"

    def publish(self, version: str, columns: Sequence[str], rows: Iterable[Sequence[Row]]) -> int:
        snap = uuid.uuid4().hex[:12]
        key = f"{self.prefix}:snap:{snap}"
        n = 0
        try:
            for batch in rows:
                pipe = self.r.pipeline(transaction=False)
                for i in range(0, len(batch), 5_000):
                    pipe.hset(key, mapping=dict(batch[i:i + 5_000]))
                pipe.execute()
                n += len(batch)
        except BaseException:
            self.r.unlink(key)
            raise
        meta = _meta(version, columns, n, snapshot=snap)
        old = self.r.get(self._live_key())
        pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: the switch is one atomic step
        pipe.set(self._live_key(), meta)
        pipe.set(f"{self.prefix}:live_snap", snap)
        pipe.execute()
        keep = {key, f"{self.prefix}:snap:{json.loads(old)['snapshot']}" if old else None}
        stale = [k for k in self.r.scan_iter(match=f"{self.prefix}:snap:*", count=1000)
                 if k.decode() not in keep]
        if stale:
            self.r.unlink(*stale)
        return n

    def live(self) -> dict | None:
        raw = self.r.get(self._live_key())
        return None if raw is None else json.loads(raw)

    # One round trip, atomic on the server: resolve the live snapshot and read from it.
    _READ = """
    local snap = redis.call('GET', KEYS[1])
    if not snap then return false end
    return {snap, redis.call('HMGET', ARGV[1] .. snap, unpack(ARGV, 2))}
    """

    def _fetch(self, customer_ids: Sequence[str]) -> tuple[str, list[str], list[bytes | None]]:
        snap, docs = None, []
        for i in range(0, len(customer_ids), 1000):  # bounded script arguments
            res = self._read(keys=[f"{self.prefix}:live_snap"],
                             args=[f"{self.prefix}:snap:", *customer_ids[i:i + 1000]])
            if not res:
                raise self._empty()
            if snap is not None and res[0] != snap:  # a publish switched mid-batch: read again
                return self._fetch(customer_ids)
            snap = res[0]
            docs.extend(res[1])
        if snap != self._cached_snap:
            meta = self.live()
            if meta is None or meta["snapshot"].encode() != snap:  # switched just now: read again
                return self._fetch(customer_ids)
            self._cached_snap, self._cached_columns, self._cached_version = snap, meta["columns"], str(meta["version"])
        return self._cached_version, self._cached_columns, docs

    def close(self) -> None:
        self.r.close()


def open_online_store(default_sqlite: Path, url: str | None = None) -> OnlineStore:
    """The store named by ``url`` or ``$NBA_ONLINE_STORE``; SQLite at ``default_sqlite`` otherwise."""
    url = url or os.environ.get(ENV_VAR) or ""
    if not url or url == "sqlite":
        return SQLiteOnlineStore(default_sqlite)
    if url.startswith("sqlite:///"):
        return SQLiteOnlineStore(Path(url[len("sqlite:///"):]))
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisOnlineStore(url)
    raise ConfigError(f"unsupported online store {url!r} (expected sqlite:///PATH or redis://HOST:PORT/DB)")


def batches(items: Iterator[Row] | Sequence[Row], size: int = 50_000) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
