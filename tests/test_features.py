"""Point-in-time features: worked values on a hand-built bank, no leakage, state rules, frames."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_store.ingest import ingest
from feature_store.materialize import get_training_frame, materialize, read_features
from feature_store.offline import compute_features, data_end
from feature_store.store import TableStore
from nba import features as F
from nba import schema
from nba.atomic import builds_dir
from nba.errors import StoreError
from nba.home import Home
from nba.state import StateConfig, identify
from nba.synthetic import _static_tables

D = date(2026, 6, 1)
NOW = datetime(2026, 11, 1)


def _write(folder: Path, tables: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, tbl in schema.TABLES.items():
        rows = tables.get(name, [])
        df = pd.DataFrame(rows, columns=[c.name for c in tbl.columns if c.required or any(c.name in r for r in rows)])
        df.to_csv(folder / f"{name}.csv", index=False)


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory) -> Home:
    """Four customers whose features at 2026-06-01 are worked out by hand below."""
    statics, _ = _static_tables(10, seed=1)
    products = statics["products"].to_pylist()
    cust = lambda cid, born, onboarded, **kw: {
        "customer_id": cid, "birth_date": born, "segment": "mass", "income_band": "middle",
        "risk_tolerance": 3, "risk_assessed_at": "2025-09-01", "onboarded_at": onboarded, "rm_id": "RM1",
        "vulnerable": False, **kw}
    hold = lambda c, p, o, bal, closed="", mat="": {"customer_id": c, "product_id": p, "opened_at": o,
                                                   "closed_at": closed, "balance": bal, "maturity_date": mat}
    txn = lambda i, c, p, ts, amt: {"transaction_id": i, "customer_id": c, "product_id": p, "ts": ts,
                                    "amount": amt, "kind": "payment"}
    inter = lambda i, c, ts, ch, d, s, outcome="completed": {
        "interaction_id": i, "customer_id": c, "ts": ts, "channel": ch, "direction": d, "kind": "service",
        "outcome": outcome, "sentiment": s, "product_id": ""}
    tables = {
        "relationship_managers": [{"rm_id": "RM1", "branch": "B1", "daily_capacity": 10}],
        "products": products,
        "customers": [
            cust("C1", "1980-06-05", "2020-01-10"),
            cust("C2", "1990-02-28", "2026-05-01"),
            cust("C3", "1985-01-01", "2026-06-10"),  # onboarded after as_of: not in the features
            cust("C4", "1950-03-03", "2015-03-03", vulnerable=True),
        ],
        "holdings": [
            hold("C1", "CUR-ACCT", "2020-01-10", 1000.0),
            hold("C1", "TD-12M", "2025-06-10", 5000.0, mat="2026-06-10"),
            hold("C1", "CARD-CLASSIC", "2026-03-01", -200.0),
            hold("C1", "FUND-BOND", "2026-06-20", 700.0),  # opened after as_of: a label, not a feature
            hold("C2", "CUR-ACCT", "2026-05-01", 50.0, closed="2026-07-01"),
            hold("C3", "CUR-ACCT", "2026-06-10", 10.0),
            hold("C4", "CUR-ACCT", "2015-03-03", 0.0, closed="2026-01-01"),
        ],
        "transactions": [
            txn("T1", "C1", "CUR-ACCT", "2026-04-01T10:00:00", 300.0),
            txn("T2", "C1", "CUR-ACCT", "2026-05-20T10:00:00", -500.0),
            txn("T3", "C1", "CUR-ACCT", "2026-06-03T10:00:00", 100.0),  # after as_of
        ],
        "interactions": [
            inter("I1", "C1", "2026-05-10T09:00:00", "app", "inbound", -0.5),
            inter("I2", "C1", "2026-05-25T09:00:00", "phone", "outbound", 0.5, "reached"),
            inter("I3", "C1", "2026-06-02T09:00:00", "branch", "inbound", -1.0),  # after as_of
            inter("I4", "C1", "2026-09-30T09:00:00", "email", "inbound", 0.0),  # data run to Oct 2026
        ],
        "complaints": [{"complaint_id": "K1", "customer_id": "C1", "opened_at": "2026-05-01T08:00:00",
                        "resolved_at": "2026-06-05T08:00:00", "severity": "high", "category": "fees",
                        "product_id": ""}],
        "consents": [
            {"customer_id": "C1", "channel": "email", "allowed": True, "updated_at": "2020-01-10T00:00:00"},
            {"customer_id": "C1", "channel": "email", "allowed": False, "updated_at": "2026-06-03T00:00:00"},
            {"customer_id": "C1", "channel": "marketing", "allowed": True, "updated_at": "2020-01-10T00:00:00"},
            # 2026-06-01 04:30 UTC is 2026-05-31 23:30 in Chicago: before D there, not in UTC.
            {"customer_id": "C1", "channel": "app", "allowed": True, "updated_at": "2026-06-01T04:30:00"},
            # New York's clocks go back on 2025-11-02: 01:50 EDT (05:50Z) comes before 01:10 EST (06:10Z).
            {"customer_id": "C1", "channel": "phone", "allowed": True, "updated_at": "2025-11-02T05:50:00"},
            {"customer_id": "C1", "channel": "phone", "allowed": False, "updated_at": "2025-11-02T06:10:00"},
        ],
        "action_outcomes": [
            {"decision_id": "D1", "customer_id": "C1", "action_family": "product_offer",
             "action_id": "offer:FUND-BOND", "product_id": "FUND-BOND", "channel": "phone",
             "decided_at": "2026-04-01T09:00:00", "outcome": "reached", "outcome_at": "2026-04-01T09:05:00"},
            {"decision_id": "D1", "customer_id": "C1", "action_family": "product_offer",
             "action_id": "offer:FUND-BOND", "product_id": "FUND-BOND", "channel": "phone",
             "decided_at": "2026-04-01T09:00:00", "outcome": "declined", "outcome_at": "2026-04-05T09:00:00"},
        ],
    }
    root = tmp_path_factory.mktemp("tiny")
    _write(root / "in", tables)
    home = Home.resolve(root / "home")
    ingest(root / "in", TableStore(home.store), now=NOW)
    return home


@pytest.fixture(scope="module")
def tiny(tiny_home) -> pd.DataFrame:
    df = compute_features(TableStore(tiny_home.store).current(), D)
    return df.set_index("customer_id")


def test_columns_follow_the_registry(tiny):
    assert list(tiny.reset_index().columns) == list(F.COLUMNS)
    assert sorted(tiny.index) == ["C1", "C2", "C4"], "C3 was onboarded after as_of"


def test_balances_are_reconstructed_at_past_dates(tiny):
    c1 = tiny.loc["C1"]
    # CUR-ACCT: 1000 now; +100 after as_of, -500 in the last 30 days, +300 in the 30-90 day band.
    # Stored features are rounded: money to the cent, trends to 4 decimals.
    assert c1.balance_deposit == pytest.approx(900)
    assert c1.balance_deposit_trend_30d == round((900 - 1400) / 1400, 4)
    assert c1.balance_deposit_trend_90d == round((900 - 1100) / 1100, 4)
    assert c1.total_assets == pytest.approx(5900)  # 900 + TD 5000; FUND-BOND opened after as_of
    assert c1.total_assets_trend_30d == round((5900 - 6400) / 6400, 4)
    assert c1.total_liabilities == pytest.approx(200)
    assert c1.n_products == 3 and c1.held_products == "CARD-CLASSIC|CUR-ACCT|TD-12M"
    assert c1.n_products_card == 1 and c1.n_products_fund == 0
    assert c1.txn_30d == 1 and c1.txn_90d == 2 and c1.days_since_last_txn == 12
    assert c1.inflow_90d == pytest.approx(300) and c1.outflow_90d == pytest.approx(500)


def test_contacts_sentiment_complaints_consents_and_care_moments(tiny):
    c1 = tiny.loc["C1"]
    assert c1.days_since_last_outbound == 7 and c1.days_since_last_contact == 7
    assert c1.days_since_app == 22 and pd.isna(c1.days_since_branch)
    assert c1.interactions_90d_phone == 1 and c1.inbound_90d == 1 and c1.outbound_30d == 1
    assert c1.sentiment_last5 == pytest.approx(0.0) and c1.rated_contacts == 2
    assert c1.sentiment_min_last5 == pytest.approx(-0.5)
    assert c1.open_complaints == 1 and c1.open_complaint_max_severity == 3, "resolved only after as_of"
    assert c1.consent_email and c1.consent_marketing and not c1.consent_sms, "no record = not allowed"
    assert c1.days_to_birthday == 4 and c1.birthday_in_14d
    assert c1.days_to_td_maturity == 9 and c1.td_maturity_in_14d
    assert c1.days_to_onboarding_anniversary == (date(2027, 1, 10) - D).days and not c1.anniversary_in_14d
    assert c1.declines_90d_product_offer == 1 and c1.declined_actions_90d == "offer:FUND-BOND=57"
    assert c1.days_since_last_action == 61 and c1.actions_30d == 0
    assert c1.risk_assessment_age_days == (D - date(2025, 9, 1)).days
    assert c1.age == 45, "born 1980-06-05: 45 on 2026-06-01, 46 from 2026-06-05"


def test_states_of_the_hand_built_customers(tiny):
    c1, c2, c4 = tiny.loc["C1"], tiny.loc["C2"], tiny.loc["C4"]
    assert c1.complaint_state == "open" and c1.lifecycle_stage == "growing"  # card opened in 180 days
    assert c2.lifecycle_stage == "new" and c2.tenure_days == 31
    assert c2.emotional_state == "neutral" and pd.isna(c2.days_since_last_contact)
    # C4's only holding closed on 2026-01-01, before as_of: a former client (C2's closes after it: held)
    assert c4.lifecycle_stage == "former" and c4.n_products == 0 and c4.former_client
    assert c4.days_since_left == (D - date(2026, 1, 1)).days == 151
    assert not c1.former_client and not c2.former_client and pd.isna(c2.days_since_left)
    ev = json.loads(c1.state_evidence)
    assert ev["complaint_state"] == {"rule": "open", "open_complaints": 1, "open_complaint_max_severity": 3}
    assert ev["health_score"]["complaint"] == -20
    assert ev["emotional_state"]["rule"] == "neutral"
    assert json.loads(c2.state_evidence)["emotional_state"] == {"rule": "no_rated_contacts"}
    assert json.loads(c4.state_evidence)["lifecycle_stage"] == {"rule": "former", "days_since_left": 151}
    assert 0 <= tiny.health_score.min() and tiny.health_score.max() <= 100


def test_training_frame_labels_the_window_after_as_of(tiny_home):
    frame = get_training_frame(D, 60, tiny_home).set_index("customer_id")
    assert frame.loc["C1", F.LABEL_OPENED] == "FUND-BOND" and frame.loc["C1", F.LABEL_N_OPENED] == 1
    assert bool(frame.loc["C2", F.LABEL_CHURN]) and not bool(frame.loc["C1", F.LABEL_CHURN])
    assert not bool(frame.loc["C4", F.LABEL_CHURN]), "already gone before as_of"
    assert frame.loc["C1", "open_complaints"] == 1, "features are those at as_of"
    with pytest.raises(StoreError, match="reaches past the store's data"):
        get_training_frame(data_end(TableStore(tiny_home.store).current()), 30, tiny_home)


# -------------------------------------------------------------------------------------------------
# No leakage: plant future events, features at as_of do not move.


def test_planted_future_events_leave_features_unchanged(bank, tmp_path):
    store = TableStore(tmp_path / "store")
    v1 = ingest(bank, store, now=NOW)
    as_of = date(2026, 4, 1)
    before = compute_features(v1, as_of)

    victims = before.customer_id.iloc[:50].tolist()
    tables = {t: v1.read(t).to_pandas() for t in v1.tables}
    ts = pd.Timestamp("2026-04-01 00:00:00")  # the first instant that is already "after"
    n = len(victims)
    tables["complaints"] = pd.concat([tables["complaints"], pd.DataFrame({
        "complaint_id": [f"KF{i}" for i in range(n)], "customer_id": victims, "opened_at": ts,
        "resolved_at": pd.NaT, "severity": "high", "category": "fees", "product_id": None})], ignore_index=True)
    tables["interactions"] = pd.concat([tables["interactions"], pd.DataFrame({
        "interaction_id": [f"IF{i}" for i in range(n)], "customer_id": victims,
        "ts": ts + pd.Timedelta(hours=3), "channel": "phone", "direction": "outbound", "kind": "sales",
        "outcome": "reached", "sentiment": -1.0, "product_id": "MORTGAGE"})], ignore_index=True)
    held = set(zip(tables["holdings"].customer_id, tables["holdings"].product_id))
    new_hold = [(c, p) for c in victims for p in ("WEALTH-ADVISORY", "INS-HEALTH") if (c, p) not in held][:n]
    tables["holdings"] = pd.concat([tables["holdings"], pd.DataFrame({
        "customer_id": [c for c, _ in new_hold], "product_id": [p for _, p in new_hold],
        "opened_at": date(2026, 4, 1), "closed_at": None, "balance": 100.0, "maturity_date": None})],
        ignore_index=True)
    # A movement after as_of also moves today's balance: the world stays consistent.
    h = tables["holdings"]
    cur = h.index[(h.product_id == "CUR-ACCT") & h.customer_id.isin(victims)]
    tables["transactions"] = pd.concat([tables["transactions"], pd.DataFrame({
        "transaction_id": [f"TF{i}" for i in range(len(cur))], "customer_id": h.loc[cur, "customer_id"].values,
        "product_id": "CUR-ACCT", "ts": ts + pd.Timedelta(minutes=1), "amount": -777.0, "kind": "withdrawal"})],
        ignore_index=True)
    h.loc[cur, "balance"] = h.loc[cur, "balance"] - 777.0
    tables["consents"] = pd.concat([tables["consents"], pd.DataFrame({
        "customer_id": victims, "channel": "marketing", "allowed": False, "updated_at": ts})], ignore_index=True)
    tables["action_outcomes"] = pd.concat([tables["action_outcomes"], pd.DataFrame({
        "decision_id": [f"DF{i}" for i in range(n)], "customer_id": victims, "action_family": "product_offer",
        "action_id": "offer:FUND-EM", "product_id": "FUND-EM", "channel": "email", "decided_at": ts,
        "outcome": "declined", "outcome_at": ts + pd.Timedelta(days=1)})], ignore_index=True)
    # A decision made before as_of whose outcome arrives after it: not known at as_of either.
    tables["action_outcomes"] = pd.concat([tables["action_outcomes"], pd.DataFrame({
        "decision_id": [f"DL{i}" for i in range(n)], "customer_id": victims, "action_family": "care_contact",
        "action_id": "care:check_in", "product_id": None, "channel": "phone",
        "decided_at": ts - pd.Timedelta(hours=2), "outcome": "reached", "outcome_at": ts + pd.Timedelta(hours=2)})],
        ignore_index=True)

    src = tmp_path / "planted"
    src.mkdir()
    for name, df in tables.items():
        pq.write_table(pa_table(df, name), src / f"{name}.parquet")
    v2 = ingest(src, store, now=NOW)
    assert v2.rows("complaints") == v1.rows("complaints") + n

    after = compute_features(v2, as_of)
    pd.testing.assert_frame_equal(before, after)
    # The planted events are real: a day later they show.
    later = compute_features(v2, date(2026, 4, 3)).set_index("customer_id").loc[victims]
    assert (later.open_complaints >= 1).all() and (~later.consent_marketing).all()


def pa_table(df: pd.DataFrame, name: str):
    import pyarrow as pa

    return pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False).cast(
        schema.table(name).arrow_schema)


# -------------------------------------------------------------------------------------------------
# State rules on a hand-made frame.


def _frame(**cols) -> pd.DataFrame:
    base = {"tenure_days": 1000, "n_products": 3, "total_assets_trend_90d": 0.0,
            "days_since_last_contact": 10, "days_since_last_outbound": 10, "txn_90d": 5, "inbound_90d": 1,
            "products_opened_180d": 0, "products_closed_90d": 0, "open_complaints": 0,
            "open_complaint_max_severity": 0, "days_since_resolved_complaint": np.nan,
            "sentiment_last5": 0.1, "sentiment_trend": 0.0, "escalations_30d": 0}
    base.update(cols)
    return pd.DataFrame({k: [v] for k, v in base.items()})


@pytest.mark.parametrize("cols,stage", [
    ({}, "mature"),
    ({"tenure_days": 30}, "new"),
    ({"n_products": 0, "tenure_days": 30}, "dormant"),
    ({"tenure_days": 30, "txn_90d": 0, "inbound_90d": 0, "days_since_last_contact": np.nan}, "new"),
    ({"txn_90d": 0, "inbound_90d": 0, "days_since_last_contact": 400}, "dormant"),
    ({"total_assets_trend_90d": -0.4, "products_opened_180d": 1}, "declining"),
    ({"products_closed_90d": 2, "products_opened_180d": 1}, "declining"),
    ({"products_opened_180d": 1}, "growing"),
    ({"total_assets_trend_90d": 0.2}, "growing"),
    ({"n_products": 0, "former_client": True, "days_since_left": 30}, "former"),
    ({"n_products": 0, "tenure_days": 30, "former_client": True, "days_since_left": 3}, "former"),
    ({"n_products": 0, "former_client": False}, "dormant"),
])
def test_lifecycle_rules(cols, stage):
    assert identify(_frame(**cols), StateConfig()).lifecycle_stage[0] == stage


@pytest.mark.parametrize("cols,complaint,emotion", [
    ({}, "none", "neutral"),
    ({"open_complaints": 1}, "open", "neutral"),
    ({"days_since_resolved_complaint": 10}, "recently_resolved", "neutral"),
    ({"days_since_resolved_complaint": 100}, "none", "neutral"),
    ({"sentiment_last5": 0.5}, "none", "positive"),
    ({"sentiment_last5": -0.3}, "none", "negative"),
    ({"sentiment_last5": -0.1, "sentiment_trend": -0.5}, "none", "escalating"),
    ({"sentiment_last5": 0.4, "escalations_30d": 1}, "none", "escalating"),
    ({"sentiment_last5": np.nan}, "none", "neutral"),
])
def test_complaint_and_emotion_rules(cols, complaint, emotion):
    out = identify(_frame(**cols), StateConfig())
    assert (out.complaint_state[0], out.emotional_state[0]) == (complaint, emotion)


def test_health_score_worked_value_and_bounds():
    out = identify(_frame(open_complaints=1, sentiment_last5=-0.5, days_since_last_outbound=200), StateConfig())
    # 60 base + 15 breadth + 10 recent contact - 10 silence - 20 complaint - 7.5 sentiment
    assert out.health_score[0] == pytest.approx(47.5)
    ev = json.loads(out.state_evidence[0])["health_score"]
    assert ev == {"rule": "sum_of_components", "base": 60, "breadth": 15, "recent_contact": 10,
                  "silence": -10, "complaint": -20, "sentiment": -7.5}
    worst = identify(_frame(n_products=0, open_complaints=2, sentiment_last5=-1, days_since_last_outbound=np.nan,
                            days_since_last_contact=np.nan, total_assets_trend_90d=-0.9), StateConfig())
    assert worst.health_score[0] == 0


def test_thresholds_come_from_config():
    assert identify(_frame(tenure_days=200), StateConfig(new_tenure_days=365)).lifecycle_stage[0] == "new"


# -------------------------------------------------------------------------------------------------
# Materialization: offline Parquet by as_of, online store, same values.


def test_materialize_offline_and_online_agree(tiny_home, online_url):
    result = materialize(tiny_home, D, online_url=online_url)
    assert result.rows == 3 and result.online_version == f"{D}@v000001"
    offline = read_features(tiny_home, D).set_index("customer_id")
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["store_version"] == "v000001" and manifest["rows"] == 3
    from feature_store.materialize import online_store

    store = online_store(tiny_home, online_url)
    doc = store.get("C1")
    assert store.live()["version"] == result.online_version
    assert doc["as_of"] == "2026-06-01" and doc["lifecycle_stage"] == offline.loc["C1", "lifecycle_stage"]
    assert doc["balance_deposit"] == pytest.approx(offline.loc["C1", "balance_deposit"])
    assert doc["days_since_branch"] is None and doc["held_products"] == "CARD-CLASSIC|CUR-ACCT|TD-12M"
    assert set(doc) == set(F.COLUMNS)
    store.close()
    # Re-materializing the same as_of switches the link to the new build; the old build is removed.
    before = result.path.resolve()
    again = materialize(tiny_home, D, online_url=online_url)
    assert again.path == result.path and again.path.resolve() != before and not before.exists()
    assert [p.name for p in tiny_home.features.iterdir() if not p.name.startswith(".")] == [f"as_of={D}"]
    assert list(builds_dir(again.path).iterdir()) == [again.path.resolve()]


def test_reading_an_unmaterialized_date_names_what_exists(tiny_home):
    materialize(tiny_home, D)
    with pytest.raises(StoreError, match=r"no features materialized for as_of 2020-01-01 \(available: 2026-06-01"):
        read_features(tiny_home, date(2020, 1, 1))


def test_features_at_reads_or_computes_the_same_frame(tiny_home):
    """One "features at a date": computed on the fly and materialized are the same values and dtypes,
    so a decision's feature hash can be reproduced from the features of its date."""
    from feature_store.materialize import features_at
    from nba.decision import feature_hashes

    computed = features_at(tiny_home, D)
    materialize(tiny_home, D)
    stored = features_at(tiny_home, D)
    pd.testing.assert_frame_equal(computed, stored)
    assert (feature_hashes(computed) == feature_hashes(stored)).all()
    # A materialization made with other state thresholds is not "the features" under this config:
    # they are computed with the thresholds asked for instead of read.
    import feature_store.materialize as fm
    from nba.state import StateConfig

    other = StateConfig(silence_days=1)
    real_read, fm.read_features = fm.read_features, None  # reading now would fail
    try:
        fresh = features_at(tiny_home, D, state=other)
    finally:
        fm.read_features = real_read
    pd.testing.assert_frame_equal(fresh, fm._as_stored(fm.compute_features(
        fm.TableStore(tiny_home.store).require_current(), D, other)))


def test_the_banks_time_zone_decides_what_before_day_d_means(tiny_home):
    """Timestamps keep their instant; day D begins at midnight in the bank's zone."""
    version = TableStore(tiny_home.store).current()
    utc = compute_features(version, D).set_index("customer_id")
    chicago = compute_features(version, D, time_zone="America/Chicago").set_index("customer_id")
    shanghai = compute_features(version, D, time_zone="Asia/Shanghai").set_index("customer_id")
    assert not utc.loc["C1", "consent_app"] and chicago.loc["C1", "consent_app"]
    assert not shanghai.loc["C1", "consent_app"]
    # The days of a timestamp are the bank's: a contact at 2026-05-25 09:00 UTC is 7 days before D in
    # every zone here, and the same features otherwise.
    assert utc.loc["C1", "days_since_phone"] == chicago.loc["C1", "days_since_phone"] == 7
    # The latest record is the latest instant, also in the hour that repeats when clocks go back.
    ny = compute_features(version, date(2025, 11, 3), time_zone="America/New_York").set_index("customer_id")
    assert not ny.loc["C1", "consent_phone"], "the opt-out at 06:10Z is later than the opt-in at 05:50Z"
    from feature_store.offline import local_date
    with pytest.raises(ValueError, match="not an IANA name"):
        local_date("ts", time_zone="UTC'; DROP TABLE x; --")


def test_a_backfill_does_not_send_the_online_store_back_in_time(tiny_home):
    from feature_store.materialize import online_store

    newer = materialize(tiny_home, D)
    older = materialize(tiny_home, D - timedelta(days=30))  # a backfill: offline only
    assert not older.published and older.online_version == newer.online_version
    assert older.path.exists()
    store = online_store(tiny_home)
    try:
        assert store.live()["version"] == f"{D}@v000001" and store.get("C1")["as_of"] == str(D)
    finally:
        store.close()
    forced = materialize(tiny_home, D - timedelta(days=30), publish=True)
    assert forced.published and forced.online_version.startswith(str(D - timedelta(days=30)))
    assert not materialize(tiny_home, D, publish=False).published
    # A date asked for by mistake (past the data) must not freeze the nightly refresh: the current day
    # (no date given) always publishes.
    materialize(tiny_home, date(2026, 12, 15))
    current = materialize(tiny_home)
    assert current.published and not current.online_version.startswith("2026-12-15")


def test_no_contact_history_exported_is_not_silence():
    """A bank without an interactions table: outbound contacts are unknown (null), not silence."""
    known = identify(_frame(outbound_30d=0, days_since_last_outbound=np.nan), StateConfig())
    unknown = identify(_frame(outbound_30d=np.nan, days_since_last_outbound=np.nan), StateConfig())
    assert json.loads(known.state_evidence[0])["health_score"]["silence"] == -10
    assert "silence" not in json.loads(unknown.state_evidence[0])["health_score"]
    assert unknown.health_score[0] == known.health_score[0] + 10
