"""The client page's read model (serving.client_view): worked values on a hand-built bank (balances
reconstructed through month ends, a reopened product, a closed one, time zones, open complaints, the state
history's merge), then the synthetic bank against independent pandas counts and the features, and the daily
run's states file picked up by the state history."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from feature_store.ingest import ingest
from feature_store.materialize import default_as_of, features_at, materialize, time_zone
from feature_store.store import TableStore
from nba import schema
from nba.decision import DECISION_COLUMNS
from nba.home import Home
from serving.client_view import (
    ClientView,
    ClientViewError,
    care_moments,
    month_end_points,
)
from serving.daily import STATE_COLUMNS, read_day, read_states, run_daily, write
from tests.conftest import AS_OF, trained_home

DAY = date(2026, 6, 1)
NOW = datetime(2026, 6, 10)


# -------------------------------------------------------------------------------------------------
# A hand-built bank whose answers are worked out below.


def _write(folder: Path, tables: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, tbl in schema.TABLES.items():
        rows = tables.get(name, [])
        pd.DataFrame(rows, columns=[c.name for c in tbl.columns]).to_csv(folder / f"{name}.csv", index=False)


def _product(pid: str, category: str) -> dict:
    return {"product_id": pid, "name": f"{pid} name", "category": category, "risk_level": 1, "annual_margin": 10.0,
            "min_age": 18, "eligible_segments": "mass|affluent|private", "term_months": ""}


def _cust(cid: str, onboarded: str = "2020-01-01") -> dict:
    return {"customer_id": cid, "birth_date": "1980-06-20", "segment": "mass", "income_band": "middle",
            "risk_tolerance": 3, "risk_assessed_at": "", "onboarded_at": onboarded, "rm_id": "RM1", "vulnerable": False}


def _hold(c, p, opened, balance, closed="", maturity="") -> dict:
    return {"customer_id": c, "product_id": p, "opened_at": opened, "closed_at": closed, "balance": balance,
            "maturity_date": maturity}


def _txn(i, c, p, ts, amount) -> dict:
    return {"transaction_id": i, "customer_id": c, "product_id": p, "ts": ts, "amount": amount,
            "kind": "transfer_in" if amount > 0 else "withdrawal"}


def _inter(i, c, ts, channel, direction, sentiment="", product="") -> dict:
    return {"interaction_id": i, "customer_id": c, "ts": ts, "channel": channel, "direction": direction,
            "kind": "service", "outcome": "completed", "sentiment": sentiment, "product_id": product}


def _complaint(i, c, opened, resolved="", severity="low", product="") -> dict:
    return {"complaint_id": i, "customer_id": c, "opened_at": opened, "resolved_at": resolved, "severity": severity,
            "category": "fees", "product_id": product}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Home, object]:
    """C1 has a bit of everything; C2 is a former client (all holdings closed); C3 has no data at all; C4 is
    onboarded after DAY; C5 has an overdrawn deposit and a card in credit; C6 a movement at the very instant
    May began and a closed term deposit whose last balance the bank kept."""
    root = tmp_path_factory.mktemp("cvtiny")
    products = [_product("DEP", "deposit"), _product("SAV", "deposit"), _product("CARD", "card"),
                _product("LOAN", "loan"), _product("FUND", "fund"), _product("TD", "term_deposit"),
                _product("INS", "insurance")]
    tables = {
        "relationship_managers": [{"rm_id": "RM1", "branch": "B1", "daily_capacity": 10}],
        "products": products,
        "customers": [_cust("C1"), _cust("C2"), _cust("C3"), _cust("C4", "2026-06-05"), _cust("C5"), _cust("C6")],
        "holdings": [
            _hold("C1", "DEP", "2024-01-10", 1000.0),
            _hold("C1", "CARD", "2025-02-01", -300.0),
            _hold("C1", "LOAN", "2026-03-15", -5000.0, maturity="2031-03-15"),
            _hold("C1", "FUND", "2020-05-05", 0.0, closed="2026-02-10"),
            _hold("C1", "TD", "2025-06-01", 2000.0, maturity="2026-06-20"),
            _hold("C1", "INS", "2023-01-01", 0.0),
            _hold("C1", "SAV", "2024-01-01", 0.0, closed="2026-01-20"),  # closed, then the product reopened
            _hold("C1", "SAV", "2026-04-05", 700.0),
            _hold("C2", "DEP", "2020-01-01", 0.0, closed="2026-03-01"),
            _hold("C5", "DEP", "2021-01-01", -80.0),
            _hold("C5", "CARD", "2021-01-01", 20.0),
            _hold("C6", "DEP", "2025-01-01", 100.0),
            _hold("C6", "TD", "2025-01-01", 3000.0, closed="2026-05-15"),
        ],
        "transactions": [
            _txn("T1", "C1", "DEP", "2026-03-15T10:00:00Z", 300.0),
            _txn("T2", "C1", "DEP", "2026-03-31T20:00:00Z", -200.0),  # 1 April 04:00 in Shanghai
            _txn("T3", "C1", "DEP", "2026-05-20T09:00:00Z", -100.0),
            _txn("T4", "C1", "DEP", "2026-06-01T08:00:00Z", 50.0),  # on DAY: not known at DAY
            _txn("T5", "C1", "CARD", "2026-04-10T12:00:00Z", -400.0),
            _txn("T6", "C1", "CARD", "2026-05-05T12:00:00Z", 100.0),
            _txn("T7", "C1", "FUND", "2026-02-10T12:00:00Z", -500.0),  # the closing withdrawal
            _txn("T8", "C1", "SAV", "2025-12-01T12:00:00Z", 250.0),  # the first SAV's
            _txn("T9", "C1", "SAV", "2026-01-20T10:00:00Z", -250.0),  # closes the first SAV
            _txn("T10", "C1", "SAV", "2026-04-05T09:00:00Z", 700.0),  # the second SAV's
            _txn("T11", "C2", "DEP", "2026-03-01T10:00:00Z", -400.0),
            _txn("T12", "C6", "DEP", "2026-05-01T00:00:00Z", 100.0),  # May's first instant: after April's end
        ],
        "interactions": [
            _inter("I1", "C1", "2026-05-31T23:30:00Z", "phone", "outbound", 0.5, "DEP"),
            _inter("I2", "C1", "2026-05-31T23:30:00Z", "email", "outbound"),  # same instant: id breaks the tie
            _inter("I3", "C1", "2026-04-01T10:00:00Z", "branch", "inbound", -0.25),
            _inter("I4", "C1", "2025-06-01T00:00:00Z", "app", "inbound", 0.1),  # exactly 365 days before DAY
            _inter("I5", "C1", "2025-05-31T23:59:00Z", "app", "inbound", 0.1),  # just outside 365 days
            _inter("I6", "C1", "2026-06-01T05:00:00Z", "phone", "inbound", 0.9),  # on DAY: not known
            _inter("I7", "C1", "2026-02-01T10:00:00Z", "phone", "inbound"),
        ],
        "complaints": [
            _complaint("K1", "C1", "2026-05-01T09:00:00Z", "2026-05-10T09:00:00Z", product="CARD"),
            _complaint("K2", "C1", "2026-05-15T09:00:00Z", "2026-06-03T09:00:00Z", "high"),  # resolved after DAY
            _complaint("K3", "C1", "2023-01-01T09:00:00Z", "", "medium"),  # old, still open
            _complaint("K4", "C1", "2023-06-01T09:00:00Z", "2023-07-01T09:00:00Z"),  # old, resolved
            _complaint("K5", "C1", "2026-06-02T09:00:00Z"),  # after DAY
        ],
    }
    _write(root / "in", tables)
    home = Home.resolve(root / "home").ensure()
    version = ingest(root / "in", TableStore(home.store), now=NOW, time_zone="UTC")
    return home, version


@pytest.fixture()
def view(tiny):
    home, version = tiny
    with ClientView(home, version, DAY) as v:
        yield v


def test_month_end_points():
    assert month_end_points(DAY, 3) == [date(2026, 3, 31), date(2026, 4, 30), DAY]  # 31 May is DAY's point
    assert month_end_points(date(2026, 6, 15), 2) == [date(2026, 4, 30), date(2026, 5, 31), date(2026, 6, 15)]
    assert month_end_points(date(2026, 3, 31), 1) == [date(2026, 2, 28), date(2026, 3, 31)]
    assert month_end_points(date(2024, 3, 10), 1) == [date(2024, 2, 29), date(2024, 3, 10)]
    assert month_end_points(date(2026, 1, 15), 1) == [date(2025, 12, 31), date(2026, 1, 15)]
    assert month_end_points(DAY, 0) == [DAY]


def test_holdings_open_at_day_with_balances_at_day(view):
    got = view.holdings("C1")
    assert [(h["product_id"], h["opened_at"]) for h in got] == [
        ("DEP", date(2024, 1, 10)), ("SAV", date(2026, 4, 5)), ("TD", date(2025, 6, 1)), ("CARD", date(2025, 2, 1)),
        ("LOAN", date(2026, 3, 15)), ("INS", date(2023, 1, 1))]  # category order, then opened_at
    by = {h["product_id"]: h for h in got}
    assert by["DEP"]["balance"] == 950.0, "the 50 moved on DAY is not known at DAY"
    assert by["CARD"]["balance"] == -300.0 and by["SAV"]["balance"] == 700.0
    assert by["LOAN"]["maturity_date"] == date(2031, 3, 15) and by["DEP"]["maturity_date"] is None
    assert by["TD"]["category"] == "term_deposit" and by["TD"]["name"] == "TD name"
    assert all(isinstance(h["balance"], float) for h in got)
    assert view.holdings("C2") == [], "a former client: every holding closed"
    assert view.holdings("C3") == [] and view.holdings("NOPE") == []


# C1 by hand, at the end of each month end and when DAY began (UTC):
#          DEP    CARD   LOAN   FUND  TD    SAV(old) SAV(new) | assets liabilities
# 12-31    950    0      -      500   2000  250      -        | 3700   0
# 01-31    950    0      -      500   2000  -        -        | 3450   0
# 02-28    950    0      -      -     2000  -        -        | 2950   0
# 03-31    1050   0      -5000  -     2000  -        -        | 3050   5000
# 04-30    1050   -400   -5000  -     2000  -        700      | 3750   5400
# 06-01    950    -300   -5000  -     2000  -        700      | 3650   5300
C1_TREND = [(date(2025, 12, 31), 3700, 0), (date(2026, 1, 31), 3450, 0), (date(2026, 2, 28), 2950, 0),
            (date(2026, 3, 31), 3050, 5000), (date(2026, 4, 30), 3750, 5400), (DAY, 3650, 5300)]


def test_balance_trend_worked_values(view):
    got = view.balance_trend("C1", months=6)
    assert [(p["date"], p["assets"], p["liabilities"]) for p in got] == C1_TREND
    last = got[-1]
    held = view.holdings("C1")
    assert last["assets"] == sum(h["balance"] for h in held if h["balance"] > 0)
    assert last["liabilities"] == -sum(h["balance"] for h in held if h["balance"] < 0)
    # A former client: the deposit held 400 until its closing withdrawal on 1 March, nothing after.
    assert [(p["assets"], p["liabilities"]) for p in view.balance_trend("C2", months=6)] == [
        (400, 0), (400, 0), (400, 0), (0, 0), (0, 0), (0, 0)]
    assert [(p["date"], p["assets"], p["liabilities"]) for p in view.balance_trend("C3", months=2)] == [
        (date(2026, 4, 30), 0, 0), (DAY, 0, 0)], "no holdings: zeros"
    # A closed holding counts until it was closed, whatever balance the bank left on it.
    assert [(p["date"], p["assets"]) for p in view.balance_trend("C6", months=2)] == [
        (date(2026, 4, 30), 0 + 3000), (DAY, 100)]
    assert [h["product_id"] for h in view.holdings("C6")] == ["DEP"]


def test_balance_trend_bases(view):
    """An overdrawn deposit and a card in credit: by sign the deposit is owed and the card held; by category
    (the features' totals) both turn negative."""
    assert view.balance_trend("C5", 0) == [{"date": DAY, "assets": 20.0, "liabilities": 80.0}]
    assert view.balance_trend("C5", 0, basis="category") == [{"date": DAY, "assets": -80.0, "liabilities": -20.0}]
    assert [(p["assets"], p["liabilities"]) for p in view.balance_trend("C1", 6, basis="category")] == [
        (a, li) for _, a, li in C1_TREND]
    with pytest.raises(ClientViewError, match="basis"):
        view.balance_trend("C1", basis="net")


def test_balance_trend_follows_the_bank_time_zone(tiny):
    """200 withdrawn at 20:00 UTC on 31 March is 1 April in Shanghai: after the March month end there."""
    home, version = tiny
    with ClientView(home, version, DAY, "Asia/Shanghai") as v:
        march = {p["date"]: p for p in v.balance_trend("C1", 6)}[date(2026, 3, 31)]
    assert march["assets"] == 3050 + 200
    # In UTC the same withdrawal is on 31 March: inside March.
    with ClientView(home, version, DAY) as v:
        assert {p["date"]: p for p in v.balance_trend("C1", 6)}[date(2026, 3, 31)]["assets"] == 3050


def test_interactions(view, tiny):
    got = view.interactions("C1")
    assert [i["interaction_id"] for i in got] == ["I2", "I1", "I3", "I7", "I4"]
    first = got[1]
    assert first["at"] == datetime(2026, 5, 31, 23, 30, tzinfo=timezone.utc) and first["at"].tzinfo is not None
    assert (first["channel"], first["direction"], first["kind"], first["outcome"], first["sentiment"],
            first["product_id"]) == ("phone", "outbound", "service", "completed", 0.5, "DEP")
    assert got[0]["sentiment"] is None and got[0]["product_id"] is None, "nullable columns come back as None"
    assert [i["interaction_id"] for i in view.interactions("C1", days=60, limit=2)] == ["I2", "I1"]
    assert view.interactions("C1", limit=0) == []
    home, version = tiny
    with ClientView(home, version, DAY, "Asia/Shanghai") as v:
        at = v.interactions("C1", limit=1)[0]["at"]
        # 23:30 UTC on 31 May is 07:30 on 1 June in Shanghai: on DAY there, so not known at DAY.
        assert at.utcoffset() == timedelta(hours=8) and at.tzinfo == ZoneInfo("Asia/Shanghai")
        assert [i["interaction_id"] for i in v.interactions("C1")][:2] == ["I3", "I7"]
    assert view.interactions("C3") == [] and view.interactions("NOPE") == []


def test_complaints(view):
    got = view.complaints("C1")
    assert [c["complaint_id"] for c in got] == ["K2", "K1", "K3"], "old resolved ones and later ones left out"
    k2, k1, k3 = got
    assert k2["open"] and k2["resolved_at"] is None, "resolved after DAY: open at DAY"
    assert not k1["open"] and k1["resolved_at"] == datetime(2026, 5, 10, 9, tzinfo=timezone.utc)
    assert k1["product_id"] == "CARD" and k2["product_id"] is None and k2["severity"] == "high"
    assert k3["open"] and k3["opened_at"] == datetime(2023, 1, 1, 9, tzinfo=timezone.utc)
    assert [c["complaint_id"] for c in view.complaints("C1", limit=1)] == ["K2"]
    assert view.complaints("C3") == [] and view.complaints("NOPE") == []


def test_contacts_per_channel(view):
    got = view.contacts_per_channel("C1")
    assert set(got) == set(schema.CHANNELS)
    assert got["phone"] == {"inbound": 1, "outbound": 1} and got["email"] == {"inbound": 0, "outbound": 1}
    assert got["branch"] == {"inbound": 1, "outbound": 0} and got["app"] == {"inbound": 1, "outbound": 0}
    assert got["sms"] == got["wechat"] == {"inbound": 0, "outbound": 0}
    assert view.contacts_per_channel("C1", days=30)["phone"] == {"inbound": 0, "outbound": 1}
    assert view.contacts_per_channel("C3") == {ch: {"inbound": 0, "outbound": 0} for ch in schema.CHANNELS}


def test_unknown_client_gets_empty_results(view):
    for cid in ("NOPE", "C4"):  # C4 is onboarded after DAY
        assert view.balance_trend(cid) == [] and view.contacts_per_channel(cid) == {}
        assert view.state_history(cid) == [] and view.holdings(cid) == []
    assert not view.exists("C4") and view.exists("C3")


def test_bad_arguments_are_named_errors(view, tiny):
    with pytest.raises(ClientViewError, match="days must be a whole number >= 0, not -1"):
        view.interactions("C1", days=-1)
    with pytest.raises(ClientViewError, match="limit"):
        view.complaints("C1", limit=-5)
    with pytest.raises(ClientViewError, match="months"):
        view.balance_trend("C1", months=-1)
    with pytest.raises(ClientViewError, match="days"):
        view.state_history("C1", days=1.5)
    with pytest.raises(ClientViewError, match="Mars/Olympus"):
        ClientView(*tiny, DAY, "Mars/Olympus")
    assert len(view.interactions("C1", days=np.int64(60), limit=np.int64(1))) == 1, "NumPy integers are fine"


def test_open_fills_in_the_version_day_and_zone(tiny):
    home, version = tiny
    with ClientView.open(home) as v:
        assert v.version.name == version.name and v.day == default_as_of(version) and v.time_zone == time_zone()
    with ClientView.open(home, DAY) as v:
        assert v.day == DAY and [p["assets"] for p in v.balance_trend("C1", 6)] == [a for _, a, _ in C1_TREND]


def _empty_decisions() -> pd.DataFrame:
    types = {"control_group": bool, "in_person": bool, "rm_review": bool}
    return pd.DataFrame({c: pd.Series(dtype=types.get(c, object)) for c in DECISION_COLUMNS})


def _states(churn: float, health: float) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": ["C1"], "rm_id": ["RM1"], "health_score": [health],
                         "lifecycle_stage": ["mature"], "complaint_state": ["open"], "emotional_state": ["neutral"],
                         "churn_risk": [churn]})


def test_state_history_merges_snapshots_and_daily_states(tiny):
    home, version = tiny
    for d in (date(2026, 5, 1), DAY, date(2026, 6, 5)):
        materialize(home, d)
    write(home, date(2026, 5, 20), _empty_decisions(), {"model": "test"}, states=_states(0.25, 55.0))
    write(home, DAY, _empty_decisions(), {"model": "test"}, states=_states(0.5, 60.0))
    write(home, date(2026, 6, 3), _empty_decisions(), {"model": "test"}, states=_states(0.9, 10.0))  # after DAY
    write(home, date(2026, 5, 25), _empty_decisions(), {"model": "test"})  # a run without states
    none = read_states(home, date(2026, 5, 25))
    assert none.empty and list(none.columns) == list(STATE_COLUMNS)
    assert read_states(home, date(2020, 1, 1)).empty
    with ClientView(home, version, DAY) as v:
        got = v.state_history("C1")
        snap = features_at(home, date(2026, 5, 1), version).set_index("customer_id").loc["C1"]
        assert [(s["date"], s["source"], s["churn_risk"]) for s in got] == [
            (date(2026, 5, 1), "features", None), (date(2026, 5, 20), "daily", 0.25), (DAY, "daily", 0.5)]
        assert got[0]["health_score"] == pytest.approx(float(snap["health_score"]))
        assert got[0]["lifecycle_stage"] == snap["lifecycle_stage"]
        assert got[2]["health_score"] == 60.0 and got[2]["lifecycle_stage"] == "mature"
        assert [s["date"] for s in v.state_history("C1", days=12)] == [date(2026, 5, 20), DAY]
        assert [(s["date"], s["source"]) for s in v.state_history("C2")] == [
            (date(2026, 5, 1), "features"), (DAY, "features")], "no daily row for C2: the snapshot"
        assert v.state_history("C3", days=0)[0]["date"] == DAY


def test_care_moments():
    row = {"days_to_birthday": 45, "birthday_in_14d": False, "days_to_td_maturity": 3, "td_maturity_in_14d": True,
           "days_to_onboarding_anniversary": 200, "anniversary_in_14d": False}
    assert care_moments(row) == [{"kind": "td_maturity", "in_days": 3, "in_care_window": True},
                                 {"kind": "birthday", "in_days": 45, "in_care_window": False}]
    assert care_moments(row, within_days=10) == [{"kind": "td_maturity", "in_days": 3, "in_care_window": True}]
    assert care_moments(row, within_days=0) == []
    # Missing values are skipped: None, NaN, pd.NA, absent columns; missing flags are worked out.
    assert care_moments({"days_to_birthday": None, "days_to_td_maturity": np.nan,
                         "days_to_onboarding_anniversary": pd.NA}) == []
    assert care_moments({"days_to_onboarding_anniversary": np.int64(5), "days_to_birthday": 5.0}) == [
        {"kind": "birthday", "in_days": 5, "in_care_window": True},
        {"kind": "anniversary", "in_days": 5, "in_care_window": True}]
    assert care_moments({"days_to_birthday": 60}) == [], "within 60 days: 0..59, as birthday_in_14d is < 14"
    assert care_moments(pd.Series(row)) == care_moments(row), "a pandas row works too"
    with pytest.raises(ClientViewError):
        care_moments(row, within_days=-1)


# -------------------------------------------------------------------------------------------------
# The synthetic bank (5,000 clients) with a trained model and a daily run.


@pytest.fixture(scope="module")
def bank_home(bank, tmp_path_factory) -> Home:
    h = trained_home(bank, tmp_path_factory, "cvhome", epochs=1)
    materialize(h, AS_OF - timedelta(days=30))
    run_daily(h, AS_OF)
    return h


@pytest.fixture(scope="module")
def bank_view(bank_home):
    version = TableStore(bank_home.store).require_current()
    with ClientView(bank_home, version, AS_OF) as v:
        yield v


@pytest.fixture(scope="module")
def tables(bank_home) -> dict[str, pd.DataFrame]:
    v = TableStore(bank_home.store).require_current()
    return {t: v.read(t).to_pandas() for t in ("holdings", "transactions", "interactions", "complaints", "products")}


def _expected_trend(tables: dict, cid: str, points: list[date], day: date) -> list[tuple]:
    """The trend by hand in pandas (UTC bank), for a client holding each product once."""
    h = tables["holdings"][tables["holdings"].customer_id == cid]
    t = tables["transactions"][tables["transactions"].customer_id == cid]
    out = []
    for p in points:
        a = min(p + timedelta(days=1), day)
        values = []
        for r in h.itertuples():
            live = r.opened_at < a and (pd.isna(r.closed_at) or r.closed_at >= a)
            later = t[(t.product_id == r.product_id) & (t.ts >= pd.Timestamp(a))].amount.sum()
            values.append(r.balance - later if live else 0.0)
        out.append((p, round(sum(v for v in values if v > 0), 2), round(-sum(v for v in values if v < 0), 2)))
    return out


def test_balance_trend_against_pandas_and_the_features(bank_view, bank_home, tables):
    h, t = tables["holdings"], tables["transactions"]
    once = h.groupby("customer_id").product_id.agg(lambda s: s.is_unique)
    busy = t[t.ts >= pd.Timestamp(AS_OF - timedelta(days=365))].customer_id.value_counts()
    clients = [c for c in busy.index if once.get(c, False)][:15]
    assert len(clients) == 15
    feats = features_at(bank_home, AS_OF).set_index("customer_id")
    moved = 0
    for cid in clients:
        got = bank_view.balance_trend(cid)
        points = [p["date"] for p in got]
        assert points == month_end_points(AS_OF, 12)
        expected = _expected_trend(tables, cid, points, AS_OF)
        for g, (d, assets, liabilities) in zip(got, expected):
            assert g["date"] == d and g["assets"] == pytest.approx(assets, abs=0.011), (cid, d)
            assert g["liabilities"] == pytest.approx(liabilities, abs=0.011), (cid, d)
        moved += len({(p["assets"], p["liabilities"]) for p in got}) > 1
        # The last point is the sum of the open holdings' balances at AS_OF, and with basis="category"
        # the features' totals at AS_OF (an independent implementation, in SQL).
        held = bank_view.holdings(cid)
        assert got[-1]["assets"] == pytest.approx(sum(x["balance"] for x in held if x["balance"] > 0), abs=0.02)
        assert got[-1]["liabilities"] == pytest.approx(-sum(x["balance"] for x in held if x["balance"] < 0), abs=0.02)
        cat = bank_view.balance_trend(cid, 0, basis="category")[-1]
        assert cat["assets"] == pytest.approx(feats.loc[cid, "total_assets"], abs=0.02)
        assert cat["liabilities"] == pytest.approx(feats.loc[cid, "total_liabilities"], abs=0.02)
    assert moved >= 10, "transactions move the earlier points"


def test_holdings_interactions_complaints_contacts_against_pandas(bank_view, tables):
    start = pd.Timestamp(AS_OF)
    inter, comp = tables["interactions"], tables["complaints"]
    clients = list(inter.customer_id.drop_duplicates().sample(12, random_state=1)) + \
        list(comp[comp.resolved_at.isna()].customer_id.head(3))
    for cid in clients:
        h = tables["holdings"]
        closed = pd.to_datetime(h.closed_at)
        mine = h[(h.customer_id == cid) & (pd.to_datetime(h.opened_at) < start) & (closed.isna() | (closed >= start))]
        assert sorted((x["product_id"], x["opened_at"]) for x in bank_view.holdings(cid)) == \
            sorted(zip(mine.product_id, mine.opened_at))

        i = inter[(inter.customer_id == cid) & (inter.ts < start) & (inter.ts >= start - pd.Timedelta(days=365))]
        want = i.sort_values(["ts", "interaction_id"], ascending=False).head(20)
        got = bank_view.interactions(cid)
        assert [x["interaction_id"] for x in got] == list(want.interaction_id)
        assert [x["at"].replace(tzinfo=None) for x in got] == [ts.to_pydatetime() for ts in want.ts]
        counts = i.groupby(["channel", "direction"]).size()
        contacts = bank_view.contacts_per_channel(cid)
        assert set(contacts) == set(schema.CHANNELS)
        for ch in schema.CHANNELS:
            for d in schema.DIRECTIONS:
                assert contacts[ch][d] == counts.get((ch, d), 0), (cid, ch, d)

        c = comp[(comp.customer_id == cid) & (comp.opened_at < start)]
        is_open = c.resolved_at.isna() | (c.resolved_at >= start)
        c = c[(c.opened_at >= start - pd.Timedelta(days=730)) | is_open]
        want = c.sort_values(["opened_at", "complaint_id"], ascending=False).head(10)
        got = bank_view.complaints(cid)
        assert [x["complaint_id"] for x in got] == list(want.complaint_id)
        assert [x["open"] for x in got] == list(is_open[want.index])


def test_daily_run_writes_states_and_the_history_picks_them_up(bank_home, bank_view):
    states = read_states(bank_home, AS_OF)
    feats = features_at(bank_home, AS_OF)
    decisions = read_day(bank_home, AS_OF)
    assert list(states.columns) == list(STATE_COLUMNS) and list(decisions.columns) == list(DECISION_COLUMNS)
    assert len(states) == len(feats) and states.customer_id.is_unique, "every client of the day, not only those listed"
    assert set(decisions.customer_id) <= set(states.customer_id)
    f = feats.set_index("customer_id").loc[states.customer_id]
    assert np.allclose(states.health_score.to_numpy(), f.health_score.to_numpy(dtype=float))
    assert (states.lifecycle_stage.to_numpy() == f.lifecycle_stage.to_numpy()).all()
    assert (states.rm_id.to_numpy() == f.rm_id.to_numpy()).all()
    churn = states.churn_risk.dropna()
    assert len(churn) > 0.9 * len(states) and churn.between(0, 1).all()

    row = states.dropna(subset=["churn_risk"]).iloc[0]
    got = bank_view.state_history(row.customer_id)
    assert [(s["date"], s["source"]) for s in got] == [(AS_OF - timedelta(days=30), "features"), (AS_OF, "daily")]
    assert got[0]["churn_risk"] is None
    assert got[1]["churn_risk"] == pytest.approx(row.churn_risk) and got[1]["health_score"] == row.health_score
    assert read_states(bank_home, AS_OF + timedelta(days=400)).empty
