"""The contact ledger: every decision (daily list or scoring API) and every outcome that comes back, in one
database that the daily run, the scoring API and the outcome export all read and write.

Tables (SQLAlchemy Core; the same statements on SQLite and PostgreSQL, see :mod:`feature_store.sql`):

- ``decisions``: one row per decision (one action for one client on one bank day), keyed on
  ``decision_id``, with its ``source`` (``daily`` or ``api``), ``control_group`` and ``contact``.
- ``outcomes``: one row per outcome event (shown, reached, accepted, declined with a reason,
  not_reachable), unique on (``key_id``, ``idempotency_key``): a retried request is answered from the
  stored row, a different request under a used key is refused.

**What counts as a contact.** A decision counts (it appears in :meth:`Ledger.history`, where the engine
turns it into contact caps, one-per-day and cooldowns) when

- it is on a daily list and not in the control group (``contact`` is true from the moment it is listed:
  the list puts it in front of an RM or a campaign, whatever comes back), or
- it is a control-group decision (kept so that the history says the client was held out; the engine
  does not count it as a contact), or
- an outcome says it was delivered: ``shown``, ``reached``, ``accepted`` or ``declined``.

An API decision that nobody acted on does not count, and neither does one whose only outcomes are
``not_reachable``: the client was not contacted. An API decision that the day's daily list also holds (the
same ``decision_id``) is listed, so it counts from the list on (:meth:`Ledger.replace_daily`). Each decision's
outcome is its latest one, except that a decline wins over later events (declines drive the cooldowns), as
in :func:`feature_store.outcomes.decision_outcomes`.

**Point in time.** Delivery is read from the outcomes' own times, never from a flag that outcomes update,
so the history as it was known at an instant can be rebuilt: ``history(D, known_before=D)`` sees only the
decisions decided before day D began (``decided_at < day_start(D)`` in the bank's zone) and only the
outcomes that happened before it. A daily list's decisions are decided at the start of their day
(``decided_at = day_start(day)``), so the re-run of day D never sees its own rows, nor the API's
decisions of day D, and decides as the first run did. (Not bitemporal: a daily run of an earlier day
that was run, or re-run, later is seen as if it had been there; so are late-recorded outcomes whose
``outcome_at`` lies before the instant.)

**Durability.** Every write returns after its commit, on an engine from :func:`feature_store.sql.engine`:
SQLite in WAL mode with ``synchronous=FULL`` (each commit fsynced), PostgreSQL with
``synchronous_commit=on``. An acknowledged outcome survives a killed process and a power cut. The
scoring API's decisions are committed without waiting for the disk (``record_decisions(durable=False)``):
they survive a killed process, and a power cut cannot lose one that a durable outcome refers to. A recorded
outcome reaches the training data through :meth:`Ledger.export_outcomes`, one store version per export.

Timestamps are stored as naive UTC instants (the store's form); tz-aware inputs are converted, naive ones
are taken as UTC. Days are the bank's calendar days (``configs/bank.yaml``; ``time_zone`` overrides).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from nba.atomic import lock
from nba.bank import day_start, load_bank_config
from nba.decision import HISTORY_COLUMNS
from nba.errors import NBAError, StoreError
from nba.home import Home
from nba.schema import ACTION_FAMILIES, ACTION_OUTCOME_VALUES, CHANNELS

from .outcomes import TABLE as OUTCOMES_TABLE
from .outcomes import record_outcomes
from .sql import Prepared, ThreadConnections, default_url, redact
from .sql import engine as make_engine
from .store import StoreVersion, TableStore

DAILY = "daily"
API = "api"
DELIVERED = ("shown", "reached", "accepted", "declined")  # an outcome that says the client was contacted
CLOCK_SKEW = timedelta(minutes=5)  # how far a caller's clock may run ahead of ours
CHUNK = 1_000  # ids per IN (...) list
INSERT_CHUNK = 5_000  # rows per executemany batch
EXPORT_LOCK = ".ledger-export.lock"  # in the store's folder: one export at a time
CONTRACT_COLUMNS = ("decision_id", "customer_id", "action_family", "action_id", "product_id", "channel",
                    "decided_at", "outcome", "outcome_at")
DECISION_FIELDS = ("decision_id", "day", "customer_id", "action_id", "action_family", "product_id", "channel",
                   "control_group", "model_version")

_FAMILIES = frozenset(ACTION_FAMILIES)
_CHANNELS = frozenset(CHANNELS)
_DELIVERED = frozenset(DELIVERED)

metadata = sa.MetaData()

decisions = sa.Table(
    "decisions", metadata,
    sa.Column("decision_id", sa.String, primary_key=True),
    sa.Column("day", sa.Date, nullable=False, comment="the bank's calendar day the decision is for"),
    sa.Column("customer_id", sa.String, nullable=False),
    sa.Column("action_id", sa.String, nullable=False),
    sa.Column("action_family", sa.String, nullable=False),
    sa.Column("product_id", sa.String, nullable=True),
    sa.Column("channel", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False, comment="daily | api"),
    sa.Column("control_group", sa.Boolean, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("decided_at", sa.DateTime, nullable=False, comment="naive UTC"),
    sa.Column("contact", sa.Boolean, nullable=False, comment="listed: counts as a contact from the start"),
    sa.Index("ix_decisions_customer_day", "customer_id", "day"),
    sa.Index("ix_decisions_day_source", "day", "source"),
)

outcomes = sa.Table(
    "outcomes", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("key_id", sa.String, nullable=False, comment="who sent it; empty: internal"),
    sa.Column("idempotency_key", sa.String, nullable=False),
    sa.Column("request_hash", sa.String, nullable=False),
    sa.Column("decision_id", sa.String, nullable=False),
    sa.Column("customer_id", sa.String, nullable=False),
    sa.Column("action_id", sa.String, nullable=False),
    sa.Column("action_family", sa.String, nullable=False),
    sa.Column("product_id", sa.String, nullable=True),
    sa.Column("channel", sa.String, nullable=False),
    sa.Column("decided_at", sa.DateTime, nullable=False),
    sa.Column("outcome", sa.String, nullable=False),
    sa.Column("reason", sa.String, nullable=True, comment="why the client declined"),
    sa.Column("outcome_at", sa.DateTime, nullable=False),
    sa.Column("recorded_at", sa.DateTime, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("exported_version", sa.String, nullable=True, comment="the store version it went to"),
    sa.UniqueConstraint("key_id", "idempotency_key", name="uq_outcomes_key"),
    sa.Index("ix_outcomes_decision", "decision_id"),
    sa.Index("ix_outcomes_customer", "customer_id"),
    sa.Index("ix_outcomes_exported", "exported_version"),
)

# A short free-text note an RM adds to an outcome (what the client said). Its own table, so that a ledger
# made before notes existed gains it by ``create_all`` and nothing else changes; one note per outcome row.
outcome_notes = sa.Table(
    "outcome_notes", metadata,
    sa.Column("outcome_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              comment="outcomes.id"),
    sa.Column("note", sa.String(500), nullable=False),
)
NOTE_MAX = 500


class LedgerError(NBAError):
    """A decision or outcome the ledger refuses; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class UnknownDecision(NBAError):
    """An outcome for a ``decision_id`` that the ledger does not hold."""

    def __init__(self, decision_id: str):
        self.decision_id = decision_id
        super().__init__(f"unknown decision_id {decision_id!r} (not in the contact ledger: decisions come from "
                         f"the daily run and the scoring API)")


class IdempotencyConflict(NBAError):
    """An idempotency key already used by the same caller for a different request; ``stored`` is the
    outcome row recorded under it."""

    def __init__(self, key_id: str, idempotency_key: str, stored: dict):
        self.stored = stored
        super().__init__(f"idempotency key {idempotency_key!r} was already used for a different request "
                         f"(outcome {stored['outcome']!r} of decision {stored['decision_id']!r}, recorded "
                         f"{_iso(stored['recorded_at'])}); use a new key for a new outcome")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _naive_utc(v: Any, field: str) -> datetime:
    """A datetime as a naive UTC instant: tz-aware ones converted, naive ones taken as UTC."""
    if _missing(v):
        raise LedgerError(field, "missing timestamp")
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    if not isinstance(v, datetime):
        raise LedgerError(field, f"{v!r} is not a timestamp")
    return v.astimezone(timezone.utc).replace(tzinfo=None) if v.tzinfo else v


def _iso(t: datetime) -> str:
    """A naive UTC instant for messages."""
    return f"{t:%Y-%m-%dT%H:%M:%S}Z"


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)


def _as_date(v: Any, where: str) -> date:
    if _missing(v):
        raise LedgerError("day", f"missing{where}")
    if isinstance(v, (datetime, pd.Timestamp)):
        return v.date()
    if isinstance(v, date):
        return v
    if isinstance(v, str):
        try:
            return date.fromisoformat(v)
        except ValueError:
            pass
    raise LedgerError("day", f"{v!r} is not a date (YYYY-MM-DD){where}")


def _chunks(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Ledger:
    """The contact ledger at ``url`` (``sqlite:///PATH`` or ``postgresql://...``). Its tables are created
    on open (idempotent; two processes may open at once); other tables in the same database (API keys,
    audit) are left alone. ``time_zone``: the bank's IANA zone (default ``configs/bank.yaml``).

    Raises ``ConfigError`` for an unsupported URL and ``StoreError`` when the database cannot be reached.
    """

    def __init__(self, url: str, *, time_zone: str | None = None):
        self.url = url
        self.time_zone = time_zone or load_bank_config().time_zone
        self.engine = make_engine(url)
        self._lazy: ThreadConnections | None = None
        self._reader = ThreadConnections(self.engine)  # the API's per-request history reads
        self._lock = threading.Lock()
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        self._one_history = Prepared(_ONE_CLIENT_HISTORY, self.engine)
        self._lazy_inserts: dict[tuple, Prepared] = {}
        try:
            self._create()
        except sa.exc.OperationalError as e:
            self.engine.dispose()
            raise StoreError(f"cannot open the contact ledger at {redact(url)}: {e.orig}") from None
        except BaseException:
            self.engine.dispose()
            raise

    @classmethod
    def open(cls, home: Home, url: str | None = None, *, time_zone: str | None = None) -> Ledger:
        """The ledger of ``home``: ``url``, else ``$NBA_LEDGER_URL``, else ``$NBA_HOME/ledger.sqlite``."""
        return cls(default_url(home, url), time_zone=time_zone)

    def _lazy_writer(self) -> ThreadConnections:
        """Per-thread connections for writes that need not wait for the disk: on SQLite from a second
        engine whose connections run ``synchronous=NORMAL`` (per connection in WAL mode); on PostgreSQL
        from the engine (the transaction turns ``synchronous_commit`` off)."""
        if self._lazy is None:
            with self._lock:
                if self._lazy is None:
                    eng = make_engine(self.url, durable=False) if self.engine.dialect.name == "sqlite" else self.engine
                    self._lazy = ThreadConnections(eng)
        return self._lazy

    def close(self) -> None:
        """Close the engine's pooled connections."""
        self._reader.close()
        if self._lazy is not None:
            self._lazy.close()
            if self._lazy.engine is not self.engine:
                self._lazy.engine.dispose()
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({redact(self.url)!r})"

    def _create(self) -> None:
        # PostgreSQL: an advisory lock serialises concurrent creators inside one transaction. SQLite runs
        # DDL outside a transaction: a creator that loses the race sees "already exists" and re-checks.
        # SQLite also answers "database is locked" at once, without waiting, to a connection that switches a
        # new file to WAL while another one does (feature_store.sql's connect hook): that open is retried.
        for attempt in range(10):
            try:
                with self.engine.begin() as c:
                    if self.engine.dialect.name == "postgresql":
                        c.execute(sa.text("SELECT pg_advisory_xact_lock(7150015)"))
                    metadata.create_all(c, checkfirst=True)
                return
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as e:
                text = str(e.orig).lower()
                if attempt == 9 or not ("already exists" in text or "database is locked" in text):
                    raise
                time.sleep(0.02 * (attempt + 1))

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it takes the write lock at its start (``BEGIN IMMEDIATE``, waiting
        up to the busy timeout): its reads and writes are one transaction, as on PostgreSQL (the driver
        would otherwise run the reads before its first write outside any transaction)."""
        with self.engine.begin() as c:
            if self.engine.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")
            yield c

    # -- decisions ---------------------------------------------------------------------------------

    def _records(self, rows: pd.DataFrame | Iterable[Mapping] | Mapping, source: str,
                 decided_at: datetime | None) -> list[dict]:
        """Decision rows as the table's records; ``LedgerError`` naming the field and the row."""
        if not source:
            raise LedgerError("source", "empty (expected 'daily' or 'api')")
        if isinstance(rows, pd.DataFrame):
            cols = [c for c in (*DECISION_FIELDS, "date") if c in rows.columns]
            # Column-wise to Python objects (much faster than DataFrame.to_dict on Arrow-backed strings).
            items = [dict(zip(cols, vals)) for vals in zip(*(rows[c].tolist() for c in cols))]
        elif isinstance(rows, Mapping):
            items = [rows]
        else:
            items = list(rows)
        at = _naive_utc(decided_at, "decided_at") if decided_at is not None else None
        now = _utcnow()
        days: dict[Any, date] = {}
        starts: dict[date, datetime] = {}
        out = []
        for i, r in enumerate(items):
            missing = [k for k in DECISION_FIELDS if k != "day" and k not in r]
            if "day" not in r and "date" not in r:
                missing.insert(0, "day")
            if missing:
                raise LedgerError(missing[0], f"missing (decision row {i + 1}); a decision needs "
                                              f"{', '.join(DECISION_FIELDS)} (day may be given as date)")
            raw = r["day"] if "day" in r else r["date"]
            try:
                day = days[raw]
            except (KeyError, TypeError):
                day = _as_date(raw, f" (decision row {i + 1})")
                if isinstance(raw, (str, date)):
                    days[raw] = day
            rec = {"day": day, "source": source}
            for k in ("decision_id", "customer_id", "action_id", "model_version"):
                v = r[k]
                if _missing(v) or (k != "model_version" and not str(v)):
                    raise LedgerError(k, f"missing (decision row {i + 1})")
                rec[k] = str(v)
            fam, channel = r["action_family"], r["channel"]
            if fam not in _FAMILIES:
                raise LedgerError("action_family", f"{fam!r} (decision row {i + 1}) is not one of "
                                                   f"{', '.join(ACTION_FAMILIES)}")
            if channel not in _CHANNELS:
                raise LedgerError("channel", f"{channel!r} (decision row {i + 1}) is not one of {', '.join(CHANNELS)}")
            cg = r["control_group"]
            if isinstance(cg, str) or _missing(cg):
                raise LedgerError("control_group", f"{cg!r} (decision row {i + 1}) is not a boolean")
            control = bool(cg)
            pid = r["product_id"]
            if at is not None:
                when = at
            elif source == DAILY:
                when = starts.get(day) or starts.setdefault(day, day_start(day, self.time_zone))
            else:
                when = now
            rec.update(action_family=str(fam), channel=str(channel), product_id=None if _missing(pid) else str(pid),
                       control_group=control, decided_at=when, contact=source == DAILY and not control)
            out.append(rec)
        return out

    def record_decisions(self, rows: pd.DataFrame | Iterable[Mapping] | Mapping, *, source: str,
                         decided_at: datetime | None = None, durable: bool = True) -> int:
        """Record decisions; a ``decision_id`` already in the ledger is left as it is (the first record
        wins). Returns how many rows were new.

        ``rows``: a DataFrame, a list of dicts or one dict with decision_id, day (or date: a date or
        ``YYYY-MM-DD``), customer_id, action_id, action_family, product_id (None allowed), channel,
        control_group and model_version; other keys are ignored. ``source``: ``api`` (the decision counts
        as a contact only once an outcome says it was delivered) or ``daily`` (a non-control row counts
        from the start; prefer :meth:`replace_daily`). ``decided_at``: when it was decided (default: now;
        for ``daily``, the start of each row's day). One statement in one transaction.
        ``durable=False`` (the API's decisions): the commit does not wait for the disk (SQLite
        ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``). The rows survive a killed process;
        a power cut can lose the last ones, but never one that an acknowledged outcome refers to: the
        outcome's durable commit flushes the log up to itself, earlier commits included.
        Raises ``LedgerError`` naming the bad field and row; nothing is recorded then.
        """
        recs = self._records(rows, source, decided_at)
        if not recs:
            return 0
        if not durable and len(recs) <= INSERT_CHUNK:
            # The API's path (a few rows per request): the statement on the driver, compiled once per set
            # of columns; the row count of an insert that skips conflicts is the number of new rows.
            writer = self._lazy_writer()
            keys = tuple(recs[0])
            prepared = self._lazy_inserts.get(keys)
            if prepared is None:
                stmt = self._insert(decisions).on_conflict_do_nothing(index_elements=["decision_id"])
                prepared = self._lazy_inserts[keys] = Prepared(stmt, writer.engine, list(keys))
            with writer.driver(lazy_commit=True) as raw:
                return max(prepared.execute_many(raw, recs), 0)
        stmt = (self._insert(decisions).on_conflict_do_nothing(index_elements=["decision_id"])
                .returning(decisions.c.decision_id))
        n = 0
        with (self.engine.begin() if durable else self._lazy_writer().begin()) as c:
            if not durable and self.engine.dialect.name == "postgresql":
                c.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            for chunk in _chunks(recs, INSERT_CHUNK):
                n += len(c.execute(stmt, list(chunk)).all())
        return n

    def replace_daily(self, day: date, decisions: pd.DataFrame) -> None:
        """Make the ledger's daily rows of ``day`` those of ``decisions`` (the day's
        :data:`nba.decision.DECISION_COLUMNS` frame, control group included), in one transaction.

        - The day's earlier daily rows are deleted, except those an outcome refers to (a contact that
          happened stays in the history, and later outcomes of it are still accepted); a row of the new
          list with the same ``decision_id`` updates them.
        - The new rows are recorded with ``decided_at`` = the start of ``day`` in the bank's zone and
          ``contact`` = not control group.
        - A ``decision_id`` that another source (the API) already recorded for the day is kept as that
          source's row; it is marked ``contact`` while this list holds it as a non-control row (the list
          puts it in front of an RM), and unmarked when a re-run's list no longer does.

        Raises ``LedgerError`` when a row is for another day or a field is invalid (nothing changes).
        """
        recs = self._records(decisions, DAILY, day_start(day, self.time_zone))
        other = next((r for r in recs if r["day"] != day), None)
        if other is not None:
            raise LedgerError("day", f"decision {other['decision_id']!r} is for {other['day']}, not {day}")
        d = metadata.tables["decisions"]  # the argument shadows the table's name
        listed = {r["decision_id"] for r in recs if r["contact"]}
        ins = self._insert(d)
        upsert = ins.on_conflict_do_update(
            index_elements=["decision_id"],
            set_={c.name: ins.excluded[c.name] for c in d.columns if c.name != "decision_id"},
            where=d.c.source == DAILY)
        with self._write() as c:
            c.execute(sa.delete(d).where(d.c.day == day, d.c.source == DAILY,
                                         ~sa.exists().where(outcomes.c.decision_id == d.c.decision_id)))
            c.execute(sa.update(d).where(d.c.day == day, d.c.source != DAILY, d.c.contact.is_(True))
                      .values(contact=False))
            for chunk in _chunks(recs, INSERT_CHUNK):
                c.execute(upsert, list(chunk))
            others = c.execute(sa.select(d.c.decision_id).where(d.c.day == day, d.c.source != DAILY)).scalars()
            hit = sorted(set(others) & listed)
            for chunk in _chunks(hit, CHUNK):
                c.execute(sa.update(d).where(d.c.decision_id.in_(chunk)).values(contact=True))

    def decision(self, decision_id: str) -> dict | None:
        """The decision's row (all ``decisions`` columns), or None."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(decisions).where(decisions.c.decision_id == decision_id)).mappings().first()
        return dict(row) if row is not None else None

    # -- outcomes ----------------------------------------------------------------------------------

    def record_outcome(self, decision_id: str, outcome: str, *, idempotency_key: str, key_id: str = "",
                       outcome_at: datetime | None = None, reason: str | None = None, source: str = "api",
                       request_hash: str = "", now: datetime | None = None,
                       channel: str | None = None, note: str | None = None) -> tuple[dict, bool]:
        """Record one outcome of a decision; returns (the stored outcome row, replayed) after its commit.

        Idempotent per caller: a second request with the same (``key_id``, ``idempotency_key``) and the
        same ``request_hash`` gets the stored row back with ``replayed`` True (also when both arrive at
        once: exactly one row is stored); with another hash it raises ``IdempotencyConflict``.
        ``request_hash``: the caller's hash of its request; empty: a hash of (decision_id, outcome,
        reason, outcome_at as given).

        ``outcome``: one of :data:`nba.schema.ACTION_OUTCOME_VALUES`; ``reason``: only for ``declined``.
        ``outcome_at``: when it happened (default ``now``, which defaults to the clock); tz-aware values
        are converted, naive ones are UTC. It may not lie more than 5 minutes after ``now``, nor before
        the decision's day began in the bank's zone, nor more than 5 minutes before the decision was made.
        ``channel``: the channel it was delivered on, when not the one the decision proposed (the same
        decision can be served on several channels in a day). A control-group decision takes no outcome
        (no action was taken). ``note``: a short free text (at most 500 characters, no control characters),
        stored with the outcome in the same transaction (``outcome_notes``), returned as the row's ``note``;
        it is part of the default request hash. Raises ``LedgerError`` naming the field,
        ``UnknownDecision`` for an unknown ``decision_id``.
        """
        now = _naive_utc(now, "now") if now is not None else _utcnow()
        if outcome not in ACTION_OUTCOME_VALUES:
            raise LedgerError("outcome", f"{outcome!r} is not one of {', '.join(ACTION_OUTCOME_VALUES)}")
        if reason is not None and outcome != "declined":
            raise LedgerError("reason", f"only a decline has a reason (outcome {outcome!r}, reason {reason!r})")
        if not idempotency_key:
            raise LedgerError("idempotency_key", "empty")
        if channel is not None and channel not in CHANNELS:
            raise LedgerError("channel", f"{channel!r} is not one of {', '.join(CHANNELS)}")
        if note is not None:
            note = note.strip() or None
        if note is not None and (len(note) > NOTE_MAX or any(ord(ch) < 32 and ch not in "\n\t" or ord(ch) == 127
                                                             for ch in note)):
            raise LedgerError("note", f"at most {NOTE_MAX} characters of text without control characters "
                                      f"(got {len(note)} characters)")
        at = _naive_utc(outcome_at, "outcome_at") if outcome_at is not None else now
        if at > now + CLOCK_SKEW:
            raise LedgerError("outcome_at", f"{_iso(at)} lies in the future (now {_iso(now)}; "
                                            f"{CLOCK_SKEW.seconds // 60} minutes of clock skew allowed)")
        if not request_hash:
            given = "" if outcome_at is None else at.isoformat()
            text = f"{decision_id}|{outcome}|{reason}|{given}" + (f"|{note}" if note else "")
            request_hash = hashlib.sha256(text.encode()).hexdigest()
        try:
            with self._write() as c:
                stored = self._by_key(c, key_id, idempotency_key)
                if stored is not None:
                    return self._replay(stored, key_id, idempotency_key, request_hash), True
                dec = c.execute(sa.select(decisions).where(decisions.c.decision_id == decision_id)).mappings()
                dec = dec.first()
                if dec is None:
                    raise UnknownDecision(decision_id)
                if dec["control_group"]:
                    raise LedgerError("decision_id", f"{decision_id} is a control-group decision: the client was "
                                                     f"held out and no action was taken")
                start = day_start(dec["day"], self.time_zone)
                if at < start:
                    raise LedgerError("outcome_at", f"{_iso(at)} is before the decision's day {dec['day']} began "
                                                    f"({_iso(start)}, bank time zone {self.time_zone})")
                if at < dec["decided_at"] - CLOCK_SKEW:
                    raise LedgerError("outcome_at", f"{_iso(at)} is before the decision was made "
                                                    f"({_iso(dec['decided_at'])})")
                values = {"key_id": key_id, "idempotency_key": idempotency_key, "request_hash": request_hash,
                          **{k: dec[k] for k in ("decision_id", "customer_id", "action_id", "action_family",
                                                 "product_id", "channel", "decided_at")},
                          **({"channel": channel} if channel is not None else {}),
                          "outcome": outcome, "reason": reason, "outcome_at": at, "recorded_at": now,
                          "source": source, "exported_version": None}
                new_id = c.execute(sa.insert(outcomes).values(**values).returning(outcomes.c.id)).scalar_one()
                if note is not None:
                    c.execute(sa.insert(outcome_notes).values(outcome_id=new_id, note=note))
            return {"id": new_id, **values, "note": note}, False
        except sa.exc.IntegrityError:
            # The same key committed by a concurrent request: answer as its retry would be answered.
            with self.engine.connect() as c:
                stored = self._by_key(c, key_id, idempotency_key)
            if stored is None:
                raise
            return self._replay(stored, key_id, idempotency_key, request_hash), True

    @staticmethod
    def _by_key(c: Connection, key_id: str, idempotency_key: str) -> dict | None:
        q = (sa.select(outcomes, outcome_notes.c.note)
             .select_from(outcomes.outerjoin(outcome_notes, outcome_notes.c.outcome_id == outcomes.c.id))
             .where(outcomes.c.key_id == key_id, outcomes.c.idempotency_key == idempotency_key))
        row = c.execute(q).mappings().first()
        return dict(row) if row is not None else None

    def outcomes_of(self, decision_ids: Sequence[str]) -> dict[str, list[dict]]:
        """The outcomes recorded for each of ``decision_ids`` (oldest first; ids without any are absent):
        outcome, reason, note, channel, outcome_at and recorded_at (naive UTC), source, key_id."""
        out: dict[str, list[dict]] = {}
        cols = (outcomes.c.decision_id, outcomes.c.outcome, outcomes.c.reason, outcome_notes.c.note,
                outcomes.c.channel, outcomes.c.outcome_at, outcomes.c.recorded_at, outcomes.c.source,
                outcomes.c.key_id)
        ids = list(dict.fromkeys(decision_ids))
        with self.engine.connect() as c:
            for chunk in _chunks(ids, CHUNK):
                q = (sa.select(*cols)
                     .select_from(outcomes.outerjoin(outcome_notes, outcome_notes.c.outcome_id == outcomes.c.id))
                     .where(outcomes.c.decision_id.in_(list(chunk)))
                     .order_by(outcomes.c.outcome_at, outcomes.c.id))
                for r in c.execute(q).mappings():
                    out.setdefault(r["decision_id"], []).append(dict(r))
        return out

    def client_decisions(self, customer_id: str, since: date, until: date | None = None) -> list[dict]:
        """The decisions of one client for days ``[since, until]`` (every source, control group included),
        newest first, each with its ``outcomes`` (:meth:`outcomes_of`)."""
        q = sa.select(decisions).where(decisions.c.customer_id == customer_id, decisions.c.day >= since)
        if until is not None:
            q = q.where(decisions.c.day <= until)
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(q.order_by(decisions.c.day.desc(), decisions.c.decided_at.desc(),
                                                       decisions.c.decision_id))
                    .mappings()]
        got = self.outcomes_of([r["decision_id"] for r in rows])
        for r in rows:
            r["outcomes"] = got.get(r["decision_id"], [])
        return rows

    @staticmethod
    def _replay(stored: dict, key_id: str, idempotency_key: str, request_hash: str) -> dict:
        if stored["request_hash"] != request_hash:
            raise IdempotencyConflict(key_id, idempotency_key, stored)
        return stored

    # -- reading -----------------------------------------------------------------------------------

    def history(self, day: date, customer_ids: Sequence[str] | None = None, *, known_before: date | None = None,
                days: int = 120, time_zone: str | None = None, exclude_source_on_day: str | None = None,
                decision_ids: bool = False, as_rows: bool = False) -> pd.DataFrame | list[tuple]:
        """The decisions that count (see the module's docstring) for days ``[day - days, day]``, as
        :data:`nba.decision.HISTORY_COLUMNS`: customer_id, action_id, action_family, decided (the
        decision's day, a date), outcome (latest, a decline wins; None when none is known),
        outcome_date (the bank-local date of that outcome, or None), control_group.

        ``customer_ids``: only these clients (one indexed query per 1,000 ids); None: everyone.
        ``known_before``: as known when that day began in the bank's zone: only decisions decided and
        outcomes that happened before that instant. ``exclude_source_on_day``: leave out that source's
        rows of ``day`` itself (a daily run re-run must not see its own list). ``decision_ids``: add a
        ``decision_id`` column (last). ``time_zone`` overrides the ledger's for the day boundaries.
        ``as_rows``: a list of tuples in those columns' order instead of a DataFrame (the API's path).
        """
        zone = time_zone or self.time_zone
        d, o = decisions, outcomes
        if known_before is None and exclude_source_on_day is None and customer_ids is not None \
                and len(customer_ids) <= CHUNK:
            # The API's path (a few clients, everything known up to now): one statement built once, its
            # values bound (building the expression costs more than running it; one client's statement
            # needs no expanding IN list).
            ids = list(dict.fromkeys(str(x) for x in customer_ids))
            bounds = {"start": day - timedelta(days=days), "end": day}
            if len(ids) == 1:  # one client (the API's next best action): on the driver
                with self._reader.driver() as raw:
                    rows = self._one_history.fetch(raw, {"id": ids[0], **bounds})
            else:
                with self._reader.read() as c:
                    rows = [tuple(r) for r in c.execute(_CLIENT_HISTORY, {"ids": ids, **bounds})]
            return _history_frame(rows, zone, decision_ids, as_rows)
        cutoff = day_start(known_before, zone) if known_before is not None else None
        on = o.c.decision_id == d.c.decision_id
        if cutoff is not None:
            on = sa.and_(on, o.c.outcome_at < cutoff)
        q = (sa.select(d.c.decision_id, d.c.customer_id, d.c.action_id, d.c.action_family, d.c.day,
                       d.c.control_group, d.c.contact, o.c.id, o.c.outcome, o.c.outcome_at)
             .select_from(d.outerjoin(o, on))
             .where(d.c.day >= day - timedelta(days=days), d.c.day <= day))
        if cutoff is not None:
            q = q.where(d.c.decided_at < cutoff)
        if exclude_source_on_day:
            q = q.where(sa.not_(sa.and_(d.c.source == exclude_source_on_day, d.c.day == day)))
        if customer_ids is None:
            queries = [q]
        else:
            ids = list(dict.fromkeys(str(c) for c in customer_ids))
            queries = [q.where(d.c.customer_id.in_(chunk)) for chunk in _chunks(ids, CHUNK)]
        rows = []
        with self.engine.connect() as c:
            for query in queries:
                rows.extend(tuple(r) for r in c.execute(query))
        return _history_frame(rows, zone, decision_ids, as_rows)

    # -- export to the store -----------------------------------------------------------------------

    def export_outcomes(self, store: TableStore, *, source: str = "ledger", now: datetime | None = None,
                        wait: float = 60) -> StoreVersion | None:
        """Append every outcome not yet exported to the store's ``action_outcomes`` with one
        :func:`feature_store.outcomes.record_outcomes` call (one store version), then mark those outcomes
        with the version's name. This is how API outcomes become training labels.

        The contract keys on (decision_id, outcome): of several events with the same pair only the first
        is exported, and pairs already in the live version are left out (all of them are still marked, with
        the version that holds their pair). Outcomes with ``outcome_at`` after ``now`` (the clock skew the
        ledger allows) wait for a later export; ``decided_at`` is exported as at most ``outcome_at``. The
        decline reason is not part of the contract and stays in the ledger.

        Returns the new version; the live version when every pending pair was already there; None when
        nothing was pending. On a validation problem (e.g. a client the store does not know) raises
        ``DataValidationError`` and marks nothing. One export at a time per store (a lock file in the
        store's folder, waited on up to ``wait`` seconds, then ``Busy``); ``StoreError`` for an empty store.
        """
        now = _naive_utc(now, "now") if now is not None else _utcnow()
        live = store.require_current()
        with lock(store.root / EXPORT_LOCK, wait, what=f"the ledger's outcome export to {store.root}"):
            o = outcomes
            with self.engine.connect() as c:
                rows = c.execute(sa.select(o.c.id, *(o.c[k] for k in CONTRACT_COLUMNS))
                                 .where(o.c.exported_version.is_(None), o.c.outcome_at <= now)
                                 .order_by(o.c.id)).all()
            if not rows:
                return None
            frame = pd.DataFrame.from_records([tuple(r) for r in rows], columns=["id", *CONTRACT_COLUMNS])
            for col in ("decided_at", "outcome_at"):
                # The ledger keeps naive UTC; the store reads a time without a zone as the bank's local
                # time, so the instants go out with theirs.
                frame[col] = pd.to_datetime(frame[col]).astype("datetime64[us]").dt.tz_localize("UTC")
            frame["decided_at"] = frame["decided_at"].where(frame["decided_at"] <= frame["outcome_at"],
                                                            frame["outcome_at"])
            frame["product_id"] = frame["product_id"].astype(object).where(frame["product_id"].notna(), None)
            batch = frame.drop_duplicates(["decision_id", "outcome"], keep="first")
            live = store.require_current()
            if OUTCOMES_TABLE in live.tables:
                have = live.read(OUTCOMES_TABLE, columns=["decision_id", "outcome"])
                have = have.filter(pc.is_in(have["decision_id"], pa.array(batch["decision_id"].unique(), pa.string())))
                pairs = set(zip(have["decision_id"].to_pylist(), have["outcome"].to_pylist()))
                batch = batch[[p not in pairs for p in zip(batch["decision_id"], batch["outcome"])]]
            version = (record_outcomes(store, batch[list(CONTRACT_COLUMNS)].reset_index(drop=True), source=source,
                                       now=now.replace(tzinfo=timezone.utc), time_zone=self.time_zone)
                       if len(batch) else live)
            ids = frame["id"].astype(int).tolist()
            with self.engine.begin() as c:
                for chunk in _chunks(ids, CHUNK):
                    c.execute(sa.update(o).where(o.c.id.in_(chunk)).values(exported_version=version.name))
            return version


_CLIENT_HISTORY = (
    sa.select(decisions.c.decision_id, decisions.c.customer_id, decisions.c.action_id, decisions.c.action_family,
              decisions.c.day, decisions.c.control_group, decisions.c.contact, outcomes.c.id, outcomes.c.outcome,
              outcomes.c.outcome_at)
    .select_from(decisions.outerjoin(outcomes, outcomes.c.decision_id == decisions.c.decision_id))
    .where(decisions.c.customer_id.in_(sa.bindparam("ids", expanding=True)),
           decisions.c.day >= sa.bindparam("start"), decisions.c.day <= sa.bindparam("end")))


_ONE_CLIENT_HISTORY = (
    sa.select(*_CLIENT_HISTORY.selected_columns)
    .select_from(decisions.outerjoin(outcomes, outcomes.c.decision_id == decisions.c.decision_id))
    .where(decisions.c.customer_id == sa.bindparam("id"),
           decisions.c.day >= sa.bindparam("start"), decisions.c.day <= sa.bindparam("end")))


def _history_frame(rows: list[tuple], zone: str, decision_ids: bool, as_rows: bool = False) -> pd.DataFrame | list:
    """One HISTORY_COLUMNS row per counted decision, from the rows of the decisions x outcomes join:
    (decision_id, customer_id, action_id, action_family, day, control_group, contact, outcome_id, outcome,
    outcome_at). Plain Python: the API reads one client per request, where pandas' fixed costs dominate."""
    per: dict[str, list] = {}
    for r in rows:
        e = per.get(r[0])
        if e is None:
            e = per[r[0]] = [r, bool(r[5]) or bool(r[6]), None]
        if r[8] is not None:
            e[1] = e[1] or r[8] in _DELIVERED
            key = (r[8] == "declined", r[9], r[7])  # a decline wins, then the latest, then the last recorded
            if e[2] is None or key > e[2][0]:
                e[2] = (key, r[8], r[9])
    tz = ZoneInfo(zone)
    kept = sorted(((e[0], e[2]) for e in per.values() if e[1]), key=lambda x: (x[0][4], x[0][1], x[0][0]))
    cols = {c: [] for c in (*HISTORY_COLUMNS, "decision_id")}
    for r, best in kept:
        cols["customer_id"].append(r[1])
        cols["action_id"].append(r[2])
        cols["action_family"].append(r[3])
        cols["decided"].append(r[4])
        cols["control_group"].append(bool(r[5]))
        cols["decision_id"].append(r[0])
        if best is None:
            cols["outcome"].append(None)
            cols["outcome_date"].append(None)
        else:
            _, outcome, at = best
            cols["outcome"].append(outcome)
            cols["outcome_date"].append(at.replace(tzinfo=timezone.utc).astimezone(tz).date())
    names = list(HISTORY_COLUMNS) + (["decision_id"] if decision_ids else [])
    if as_rows:
        return list(zip(*(cols[c] for c in names)))
    # Arrays, not lists (a fraction of the constructor's cost for one client); the ids get pandas' string
    # dtype, the columns that hold None stay objects (None, not NaN, where no outcome is known).
    keep = ("decided", "outcome", "outcome_date")
    return pd.DataFrame({c: pd.Series(np.array(cols[c], dtype=object), dtype=object, copy=False) if c in keep
                         else np.array(cols[c], dtype=bool if c == "control_group" else object) for c in names},
                        copy=False)


__all__ = ["Ledger", "LedgerError", "UnknownDecision", "IdempotencyConflict", "DAILY", "API", "DELIVERED",
           "decisions", "outcomes", "metadata"]
