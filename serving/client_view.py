"""The read model behind an RM's client page: one client's holdings, contacts, complaints, balance trend,
state history and care moments, as known when the decision day ``day`` began.

Every method reads one client with parameterised DuckDB queries (``WHERE customer_id = ?``) over the store
version's Parquet files (:func:`feature_store.offline.connect`); nothing reads a whole table into pandas.
Point in time, as the features (:mod:`nba.features`): events at or after the start of ``day`` in the bank's
time zone are not seen (a complaint resolved on or after ``day`` is open at ``day``, a holding closed on or
after ``day`` is held at ``day``).

Units and conventions:

- Money is in the bank's currency (the contract's ``holdings.balance`` / ``transactions.amount``), as a
  float rounded to cents.
- Assets and liabilities (:meth:`ClientView.balance_trend`), by default by each holding's sign: assets sum
  the positive balances, liabilities the negative ones as a positive amount owed (a mortgage at -250,000
  counts 250,000 of liabilities; an overdrawn current account is a liability, a card in credit an asset),
  so assets - liabilities is the sum of the balances. ``basis="category"`` gives the features' definition
  instead (``total_assets``: the balances of :data:`nba.features.ASSET_CATEGORIES`; ``total_liabilities``:
  minus those of :data:`nba.features.LIABILITY_CATEGORIES`; insurance in neither; either can turn negative
  on an overdraft or a card in credit). Balances themselves keep the contract's sign (negative for credit).
- Dates are the bank's calendar dates (:class:`datetime.date`); instants are tz-aware datetimes in the
  bank's time zone.
- A window of ``days`` days ends where ``day`` begins and starts ``days`` days earlier (local midnight).

An unknown client (not in the store, or onboarded on or after ``day``) gets empty results: ``[]`` or
``{}``; a known client without data gets empty lists and a balance trend of zeros. Bad arguments (a
negative window or limit) raise :class:`ClientViewError`.
"""

from __future__ import annotations

import bisect
import numbers
import threading
from collections import defaultdict
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb

from feature_store.materialize import _dir as _features_dir
from feature_store.materialize import available_as_of, default_as_of
from feature_store.materialize import time_zone as bank_time_zone
from feature_store.offline import connect, local_date
from feature_store.store import StoreVersion, TableStore
from nba import features as F
from nba import schema
from nba.bank import day_start
from nba.errors import NBAError
from nba.home import Home
from serving.daily import STATES_FILE

CARE_WITHIN_DAYS = 60
# kind -> (days column, care-window flag) of the feature row; the order breaks ties in care_moments.
CARE_MOMENTS = {
    "birthday": ("days_to_birthday", "birthday_in_14d"),
    "td_maturity": ("days_to_td_maturity", "td_maturity_in_14d"),
    "anniversary": ("days_to_onboarding_anniversary", "anniversary_in_14d"),
}
_CATEGORY_ORDER = {c: i for i, c in enumerate(schema.PRODUCT_CATEGORIES)}


class ClientViewError(NBAError, ValueError):
    """A client-page request with an argument out of range (a negative window, limit or month count)."""


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ClientViewError(f"{name} must be a whole number >= 0, not {value!r}")
    return int(value)


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN, NaT and pd.NA (whose comparison is not a plain bool)
    except TypeError:
        return True


def _num(v: Any) -> float | None:
    return None if _missing(v) else float(v)


def _money(v: float) -> float:
    return round(float(v), 2) + 0.0  # + 0.0: no -0.0


def care_moments(features: Mapping[str, Any], within_days: int = CARE_WITHIN_DAYS) -> list[dict]:
    """Upcoming care moments of one client from its feature row (a mapping or a pandas row of
    :data:`nba.features.COLUMNS`, e.g. from :func:`feature_store.materialize.read_features`).

    Returns ``[{"kind": "birthday" | "td_maturity" | "anniversary", "in_days": int, "in_care_window": bool}]``
    sorted by ``in_days`` (then in that kind order): the moments with ``0 <= in_days < within_days`` days
    from the features' ``as_of`` (``days_to_birthday``, ``days_to_td_maturity``,
    ``days_to_onboarding_anniversary``; "within N days" counts as the care flags do: ``birthday_in_14d`` is
    ``days_to_birthday < 14``). ``in_care_window`` is the row's ``*_in_14d`` flag, the window in which the
    engine proposes care contacts (:data:`nba.features.CARE_WINDOW_DAYS`); where the flag is missing it is
    worked out from ``in_days``. Missing, None or NaN day counts are skipped (no term deposit, a bank
    without birth dates).
    """
    _count(within_days, "within_days")
    out = []
    for rank, (kind, (days_col, flag_col)) in enumerate(CARE_MOMENTS.items()):
        days = features.get(days_col)
        if _missing(days):
            continue
        n = int(days)
        if not 0 <= n < within_days:
            continue
        flag = features.get(flag_col)
        soon = n < F.CARE_WINDOW_DAYS if _missing(flag) else bool(flag)
        out.append((n, rank, {"kind": kind, "in_days": n, "in_care_window": soon}))
    return [m for *_, m in sorted(out, key=lambda t: t[:2])]


def month_end_points(day: date, months: int) -> list[date]:
    """The dates of :meth:`ClientView.balance_trend`: the last day of each of the ``months`` calendar months
    before ``day``'s month, then ``day``. A month end on ``day - 1`` (``day`` is the 1st) is left out: its
    balance is the last point's."""
    _count(months, "months")
    ends, e = [], day.replace(day=1) - timedelta(days=1)
    for _ in range(months):
        ends.append(e)
        e = e.replace(day=1) - timedelta(days=1)
    return [d for d in reversed(ends) if d != day - timedelta(days=1)] + [day]


class ClientView:
    """Read model of one bank's clients for an RM's client page, on one StoreVersion at decision day `day`.

    ``home`` holds the materialized features and the daily runs' files (for :meth:`state_history`);
    ``version`` is the store version read (``TableStore(home.store).require_current()``); ``time_zone`` is
    the bank's IANA zone (:func:`feature_store.materialize.time_zone`), in which days begin and instants are
    returned; :meth:`open` fills them in from the home. Creating one opens an in-memory DuckDB connection
    with a view per table over the version's files (well under a second; nothing is loaded); one view can
    serve many clients and threads (each call runs on its own cursor). :meth:`close` frees the connection
    (also a context manager).
    """

    def __init__(self, home: Home, version: StoreVersion, day: date, time_zone: str = "UTC"):
        try:
            self._zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ClientViewError(f"time zone {time_zone!r} is not an IANA time zone name "
                                  f"(e.g. Europe/Zurich)") from None
        self.home, self.version, self.day, self.time_zone = home, version, day, time_zone
        # Tables the bank's export left out: what they would show is unknown, not nothing.
        self.absent = frozenset(version.absent_tables)
        self._start = day_start(day, time_zone)  # naive UTC, the store's form
        self._con = connect(version)
        try:
            # A point lookup reads a few rows: DuckDB's late materialization (a second scan joined on row
            # numbers, for ORDER BY ... LIMIT) costs more than it saves here.
            self._con.execute("SET GLOBAL late_materialization_max_rows = 0")
        except duckdb.Error:  # a DuckDB without the setting
            pass
        self._lock = threading.Lock()

    @classmethod
    def open(cls, home: Home, day: date | None = None, *, version: StoreVersion | None = None) -> ClientView:
        """A view of the home's live store version (or ``version``) at ``day`` (default: the day after the
        store's last data, :func:`feature_store.materialize.default_as_of`), in the bank's time zone
        (``configs/bank.yaml``). Raises ``StoreError`` when the store is empty."""
        version = version or TableStore(home.store).require_current()
        return cls(home, version, day or default_as_of(version), bank_time_zone())

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> ClientView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------------------

    def _rows(self, sql: str, params: list) -> list[tuple]:
        with self._lock:
            cur = self._con.cursor()  # a cursor per call: DuckDB connections are not shared between threads
        try:
            return cur.execute(sql, params).fetchall()
        finally:
            cur.close()

    def _since(self, days: int, name: str = "days") -> datetime:
        return day_start(self.day - timedelta(days=_count(days, name)), self.time_zone)

    def _local(self, ts: datetime | None) -> datetime | None:
        return None if ts is None else ts.replace(tzinfo=timezone.utc).astimezone(self._zone)

    def exists(self, customer_id: str) -> bool:
        """Whether ``customer_id`` was a client when ``day`` began (in the customers table, onboarded
        before ``day``)."""
        return bool(self._rows("SELECT count(*) FROM customers WHERE customer_id = ? AND onboarded_at < ?",
                               [customer_id, self.day])[0][0])

    def _book(self, customer_id: str, moves_from: datetime) -> tuple[list[dict], dict[int, list[tuple]]]:
        """The client's holdings (every one, open or closed) and their movements at or after
        ``moves_from``: holding index -> [(ts, amount)]. A movement (keyed by client and product only)
        belongs to the holding of its product opened last on or before the movement's local date; one
        before every such holding is dropped."""
        held = [dict(zip(("product_id", "name", "category", "opened_at", "closed_at", "balance", "maturity_date"), r))
                for r in self._rows(
                    "SELECT h.product_id, p.name, p.category, h.opened_at, h.closed_at, h.balance, h.maturity_date "
                    "FROM holdings h LEFT JOIN products p USING (product_id) WHERE h.customer_id = ? "
                    "ORDER BY h.product_id, h.opened_at", [customer_id])]
        moves: dict[int, list[tuple]] = defaultdict(list)
        if not held:
            return held, moves
        by_product: dict[str, list[int]] = defaultdict(list)
        for i, h in enumerate(held):
            by_product[h["product_id"]].append(i)  # in opened_at order
        opened = {p: [held[i]["opened_at"] for i in idx] for p, idx in by_product.items()}
        rows = self._rows(f"SELECT product_id, ts, {local_date('ts', self.time_zone)} AS d, amount FROM transactions "
                          "WHERE customer_id = ? AND ts >= ?", [customer_id, moves_from])
        for product_id, ts, d, amount in rows:
            if product_id not in by_product:
                continue
            k = bisect.bisect_right(opened[product_id], d) - 1
            if k >= 0:
                moves[by_product[product_id][k]].append((ts, amount))
        return held, moves

    @staticmethod
    def _value(h: dict, movements: list[tuple], as_of: date, cut: datetime) -> float:
        """A holding's balance when day ``as_of`` began (``cut``: its UTC start): 0 unless opened before
        ``as_of`` and not closed before it; else the extraction balance minus its movements from ``cut`` on."""
        if not (h["opened_at"] < as_of and (h["closed_at"] is None or h["closed_at"] >= as_of)):
            return 0.0
        return float(h["balance"]) - sum(a for ts, a in movements if ts >= cut)

    # -- the page's parts -----------------------------------------------------------------------------

    def holdings(self, customer_id: str) -> list[dict]:
        """Holdings open when ``day`` began (opened before ``day``, not closed before it), ordered by category
        (in :data:`nba.schema.PRODUCT_CATEGORIES` order) then ``opened_at`` then product id.

        Each: ``{"product_id": str, "name": str, "category": str, "opened_at": date, "balance": float,
        "maturity_date": date | None}``. ``balance`` is in the bank's currency at the start of ``day``
        (the extraction balance minus the movements from ``day`` on; negative for credit, as in the
        contract): the positive ones sum to the last point's assets of :meth:`balance_trend`, the negative
        ones to minus its liabilities.
        """
        held, moves = self._book(customer_id, self._start)
        out = []
        for i, h in enumerate(held):
            if h["opened_at"] < self.day and (h["closed_at"] is None or h["closed_at"] >= self.day):
                balance = _money(self._value(h, moves[i], self.day, self._start))
                out.append({"product_id": h["product_id"], "name": h["name"], "category": h["category"],
                            "opened_at": h["opened_at"], "balance": balance,
                            "maturity_date": h["maturity_date"]})
        out.sort(key=lambda r: (_CATEGORY_ORDER.get(r["category"], len(_CATEGORY_ORDER)), str(r["category"]),
                                r["opened_at"], r["product_id"]))
        return out

    def interactions(self, customer_id: str, days: int = 365, limit: int = 20) -> list[dict]:
        """The client's last ``limit`` interactions of the ``days`` days before ``day``, most recent first.

        Each: ``{"interaction_id": str, "at": datetime (tz-aware, bank zone), "channel": str, "direction":
        "inbound" | "outbound", "kind": str, "outcome": str, "sentiment": float in [-1, 1] | None,
        "product_id": str | None}``.
        """
        rows = self._rows("SELECT interaction_id, ts, channel, direction, kind, outcome, sentiment, product_id "
                          "FROM interactions WHERE customer_id = ? AND ts >= ? AND ts < ? "
                          "ORDER BY ts DESC, interaction_id DESC LIMIT ?",
                          [customer_id, self._since(days), self._start, _count(limit, "limit")])
        return [{"interaction_id": i, "at": self._local(ts), "channel": ch, "direction": di, "kind": k, "outcome": o,
                 "sentiment": _num(s), "product_id": p} for i, ts, ch, di, k, o, s, p in rows]

    def past_actions(self, customer_id: str, days: int = 180) -> list[dict]:
        """The client's actions decided in the ``days`` days before ``day`` with the outcomes the store's
        ``action_outcomes`` holds (the bank's own history, and outcomes exported from the contact ledger),
        most recent decision first; outcomes known on or after ``day`` are left out.

        Each: ``{"decision_id", "action_id", "action_family", "product_id" (None), "channel", "decided_at"
        (tz-aware, bank zone), "day" (its local date), "outcomes": [{"outcome", "outcome_at"}] oldest
        first}``. ``[]`` when the store has no ``action_outcomes`` table.
        """
        try:
            rows = self._rows(
                "SELECT decision_id, action_id, action_family, product_id, channel, decided_at, outcome, outcome_at "
                "FROM action_outcomes WHERE customer_id = ? AND decided_at >= ? AND decided_at < ? "
                "AND outcome_at < ? ORDER BY decided_at DESC, decision_id, outcome_at",
                [customer_id, self._since(days), self._start, self._start])
        except duckdb.CatalogException:  # a bank without the table
            return []
        out: dict[str, dict] = {}
        for did, aid, fam, pid, ch, dec_at, outcome, out_at in rows:
            d = out.get(did)
            if d is None:
                local = self._local(dec_at)
                d = out[did] = {"decision_id": did, "action_id": aid, "action_family": fam, "product_id": pid,
                                "channel": ch, "decided_at": local, "day": local.date(), "outcomes": []}
            d["outcomes"].append({"outcome": outcome, "outcome_at": self._local(out_at)})
        return list(out.values())

    def complaints(self, customer_id: str, days: int = 730, limit: int = 10) -> list[dict]:
        """The client's last ``limit`` complaints opened in the ``days`` days before ``day``, plus any older
        one still open at ``day``; most recent (``opened_at``) first.

        Each: ``{"complaint_id": str, "opened_at": datetime, "resolved_at": datetime | None, "severity":
        "low" | "medium" | "high", "category": str, "product_id": str | None, "open": bool}`` (tz-aware
        datetimes in the bank zone). ``open`` is as of ``day``: a resolution on or after ``day`` is not known
        yet, so its ``resolved_at`` is None and the complaint is open.
        """
        since = self._since(days)
        rows = self._rows("SELECT complaint_id, opened_at, CASE WHEN resolved_at < $start THEN resolved_at END, "
                          "severity, category, product_id FROM complaints "
                          "WHERE customer_id = $cid AND opened_at < $start "
                          "AND (opened_at >= $since OR resolved_at IS NULL OR resolved_at >= $start) "
                          "ORDER BY opened_at DESC, complaint_id DESC LIMIT $limit",
                          {"cid": customer_id, "start": self._start, "since": since,
                           "limit": _count(limit, "limit")})
        return [{"complaint_id": c, "opened_at": self._local(o), "resolved_at": self._local(r), "severity": s,
                 "category": cat, "product_id": p, "open": r is None} for c, o, r, s, cat, p in rows]

    def balance_trend(self, customer_id: str, months: int = 12, *, basis: str = "sign") -> list[dict]:
        """The client's assets and liabilities at each month end of the last ``months`` months, then at
        ``day`` (:func:`month_end_points`): ``[{"date": date, "assets": float, "liabilities": float}]`` in
        date order, in the bank's currency. ``basis="sign"`` (default; both >= 0): each holding's balance
        at the point counts to assets when positive and to liabilities, as a positive amount owed, when
        negative; so ``assets - liabilities`` is the sum of the client's balances, and the last point is the
        sum over :meth:`holdings`. ``basis="category"``: the features' ``total_assets`` (asset categories)
        and ``total_liabilities`` (minus the liability categories' balances), which can turn negative (an
        overdraft, a card in credit); see the module docstring.

        A month-end point is the balance at the end of that day (local midnight after it); the point dated
        ``day`` is the balance when ``day`` began, what the decisions of ``day`` knew (the features'
        ``total_assets`` / ``total_liabilities`` at ``day`` with ``basis="category"``).

        Reconstruction: the store holds each holding's balance at extraction and the movements
        (``transactions.amount``, signed), so a holding's balance at an instant t is its extraction balance
        minus its movements at or after t, counted only while the holding is open: 0 before the day it was
        opened and from the day it was closed. Movements carry a client and a product, not a holding; each
        belongs to the holding of its product opened last on or before it (a product held twice at once
        gets the movements of both on the later one, which leaves their sum right).

        Without a transactions table (absent from the bank's export, :attr:`absent`) past balances are
        unknown: only the point dated ``day`` is returned.

        Limits: a point is exact only where every movement after it is in the store. Balances that move
        without transactions (fund values, interest, loan repayments; in the synthetic bank only deposits
        and cards have transactions) keep their extraction value back to the holding's opening; a closed
        holding whose closing movements were not extracted keeps its closing balance (usually 0) over its
        whole life; points before the start of the bank's transaction history miss the movements in
        between. These are reconstructed balances, not booked ones.

        An unknown client gives ``[]``; a client with no holdings gives points of zeros.
        """
        points = month_end_points(self.day, months)
        if basis not in ("sign", "category"):
            raise ClientViewError(f"basis must be 'sign' or 'category', not {basis!r}")
        if not self.exists(customer_id):
            return []
        if "transactions" in self.absent:
            points = points[-1:]
        # Point p is the balance when day as_of(p) = min(p + 1, day) begins.
        as_ofs = [min(p + timedelta(days=1), self.day) for p in points]
        cuts = [day_start(a, self.time_zone) for a in as_ofs]
        held, moves = self._book(customer_id, cuts[0])
        out = []
        for p, a, cut in zip(points, as_ofs, cuts):
            assets = liabilities = 0.0
            for i, h in enumerate(held):
                v = self._value(h, moves[i], a, cut)
                if basis == "sign":
                    assets, liabilities = (assets + v, liabilities) if v > 0 else (assets, liabilities - v)
                elif h["category"] in F.ASSET_CATEGORIES:
                    assets += v
                elif h["category"] in F.LIABILITY_CATEGORIES:
                    liabilities -= v
            out.append({"date": p, "assets": _money(assets), "liabilities": _money(liabilities)})
        return out

    def contacts_per_channel(self, customer_id: str, days: int = 365) -> dict[str, dict[str, int]]:
        """Interactions of the ``days`` days before ``day`` (the store's interactions table: contacts either
        way, campaigns included) per channel and direction: ``{channel: {"inbound": n, "outbound": n}}``
        with every channel of :data:`nba.schema.CHANNELS` (0 where none). ``{}`` for an unknown client, and
        for every client when the bank's export has no interactions table (:attr:`absent`)."""
        since = self._since(days)
        if not self.exists(customer_id) or "interactions" in self.absent:
            return {}
        out = {ch: {d: 0 for d in schema.DIRECTIONS} for ch in schema.CHANNELS}
        for ch, direction, n in self._rows(
                "SELECT channel, direction, count(*) FROM interactions "
                "WHERE customer_id = ? AND ts >= ? AND ts < ? GROUP BY ALL", [customer_id, since, self._start]):
            out.setdefault(ch, {d: 0 for d in schema.DIRECTIONS})[direction] = int(n)
        return out

    def state_history(self, customer_id: str, days: int = 365) -> list[dict]:
        """The client's customer state over the ``days`` days up to ``day`` (both ends included), by date:
        ``[{"date": date, "health_score": float (0-100) | None, "lifecycle_stage": str | None,
        "churn_risk": float (0-1) | None, "source": "features" | "daily"}]``.

        From every materialized feature snapshot (``churn_risk`` None: the features hold no model output)
        and every daily run's ``states.parquet`` (the states and the churn risk the day's decisions used);
        where both have a date, the daily run's row wins. A state dated D describes the client as known
        when D began. Dates where the client had no row are absent.
        """
        lo = self.day - timedelta(days=_count(days, "days"))
        found: dict[date, dict] = {}
        snaps = {d: _features_dir(self.home, d) / "features.parquet" for d in available_as_of(self.home)
                 if lo <= d <= self.day}
        for d, h, stage in self._dated(customer_id, snaps, "health_score, lifecycle_stage", by_name=True):
            found[d] = {"date": d, "health_score": _num(h), "lifecycle_stage": stage, "churn_risk": None,
                        "source": "features"}
        runs = {d: self.home.daily / d.isoformat() / STATES_FILE
                for d in (lo + timedelta(days=k) for k in range((self.day - lo).days + 1))}
        for d, h, stage, churn in self._dated(customer_id, {d: f for d, f in runs.items() if f.exists()},
                                              "health_score, lifecycle_stage, churn_risk"):
            found[d] = {"date": d, "health_score": _num(h), "lifecycle_stage": stage, "churn_risk": _num(churn),
                        "source": "daily"}
        return [found[d] for d in sorted(found)]

    def _dated(self, customer_id: str, files: dict[date, Path], columns: str, *, by_name: bool = False,
               retry: bool = True) -> list[tuple]:
        """``(date, *columns)`` of the client's rows in Parquet files dated by ``files``, in one scan.
        ``by_name``: the files may differ in their columns (features of older schema versions); it costs a
        read of every file's schema before the scan, so the daily states (one schema, ours) go without."""
        if not files:
            return []
        dates = {str(p): d for d, p in files.items()}
        paths = ", ".join("'" + p.replace("'", "''") + "'" for p in dates)  # our own paths, quoted anyway
        try:
            rows = self._rows(f"SELECT filename, {columns} FROM read_parquet([{paths}], filename = true, "
                              f"union_by_name = {str(by_name).lower()}) WHERE customer_id = ?", [customer_id])
        except duckdb.IOException:
            if not retry:
                raise
            # A folder switched while we read (a re-run of a day, a re-materialization): once more, on the
            # files there now.
            return self._dated(customer_id, {d: p for d, p in files.items() if p.exists()}, columns, by_name=by_name,
                               retry=False)
        return [(dates[r[0]], *r[1:]) for r in rows]
