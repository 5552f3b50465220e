"""Decisions (issue 7): property tests over generated clients, products and histories prove that no
output breaks suitability, consent, the contact cap, complaint-first, held products, cooldowns or RM
capacity; the assignment is optimal; golden reason codes and talking points; the control group."""

from __future__ import annotations

import itertools
import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nba.catalog import load_catalog, load_catalog_config, resolve
from nba.decision import DECISION_COLUMNS, Inputs, assign, decide, empty_history
from nba.errors import ConfigError
from nba.schema import CHANNELS

DAY = date(2026, 6, 1)
CATEGORIES = ("deposit", "term_deposit", "card", "loan", "mortgage", "fund", "insurance", "wealth")


def products_table(rows: list[dict] | None = None) -> pd.DataFrame:
    rows = rows or [
        {"product_id": "SAV", "name": "Savings account", "category": "deposit", "risk_level": 1, "annual_margin": 90.0,
         "min_age": 16, "eligible_segments": "mass|affluent|private"},
        {"product_id": "CARD", "name": "Gold card", "category": "card", "risk_level": 1, "annual_margin": 180.0,
         "min_age": 21, "eligible_segments": "affluent|private"},
        {"product_id": "FUND", "name": "Equity fund", "category": "fund", "risk_level": 4, "annual_margin": 400.0,
         "min_age": 18, "eligible_segments": "mass|affluent|private"},
        {"product_id": "BOND", "name": "Bond fund", "category": "fund", "risk_level": 2, "annual_margin": 240.0,
         "min_age": 18, "eligible_segments": "mass|affluent|private"},
        {"product_id": "MORT", "name": "Mortgage", "category": "mortgage", "risk_level": 2, "annual_margin": 1800.0,
         "min_age": 21, "eligible_segments": "mass|affluent|private"},
    ]
    df = pd.DataFrame(rows)
    df["term_months"] = np.nan
    return df


def catalog_for(products: pd.DataFrame, **policy):
    cfg = load_catalog_config()
    raw = cfg.model_dump()
    raw["product_offers"]["products"] = {}
    raw["product_offers"]["variants"] = []
    raw["policy"].update(policy)
    from nba.catalog import CatalogConfig
    return resolve(CatalogConfig.model_validate(raw), products)


BASE = {
    "rm_id": "RM1", "age": 40.0, "segment": "affluent", "risk_tolerance": 3, "risk_assessment_age_days": 100,
    "vulnerable": False, "held_products": "", "health_score": 60.0, "total_assets": 50_000.0,
    "total_assets_trend_90d": 0.0, "open_complaints": 0, "open_complaint_max_severity": 0,
    "days_since_resolved_complaint": None, "birthday_in_14d": False, "days_to_birthday": 100,
    "days_since_last_outbound": 30, "days_since_last_contact": 30, "tenure_days": 1000,
    "td_maturity_in_14d": False, "days_to_td_maturity": None, "anniversary_in_14d": False,
    "days_to_onboarding_anniversary": 200, "outbound_30d": 0, "lifecycle_stage": "mature",
    "complaint_state": "none", "emotional_state": "neutral",
    **{f"consent_{c}": True for c in CHANNELS}, "consent_marketing": True,
}


def feats_frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame([{**BASE, "customer_id": f"C{i:04d}", **r} for i, r in enumerate(rows)])
    return out


# -------------------------------------------------------------------------------------------------
# Property tests

client = st.fixed_dictionaries({
    "rm_id": st.sampled_from(["RM1", "RM2", "RM3"]),
    "age": st.integers(17, 95),  # completed calendar years, as the features give it
    "segment": st.sampled_from(["mass", "affluent", "private"]),
    "risk_tolerance": st.integers(1, 5),
    "risk_assessment_age_days": st.one_of(st.none(), st.integers(0, 800)),
    "vulnerable": st.booleans(),
    "held": st.sets(st.integers(0, 5), max_size=3),
    "health_score": st.floats(0, 100),
    "total_assets": st.floats(0, 300_000),
    "open_complaints": st.integers(0, 1),
    "days_since_resolved_complaint": st.one_of(st.none(), st.integers(0, 60)),
    "birthday_in_14d": st.booleans(),
    "days_since_last_outbound": st.one_of(st.none(), st.integers(0, 400)),
    "td_maturity_in_14d": st.booleans(),
    "anniversary_in_14d": st.booleans(),
    "outbound_30d": st.integers(0, 3),
    "consents": st.lists(st.booleans(), min_size=7, max_size=7),
    "churn": st.one_of(st.just(float("nan")), st.floats(0, 0.9)),
    "propensity": st.lists(st.floats(0, 0.6), min_size=6, max_size=6),
    "history": st.lists(st.tuples(st.integers(0, 12), st.integers(0, 40), st.sampled_from(
        [None, "declined", "accepted", "reached"]), st.booleans()), max_size=3),
})

product_row = st.fixed_dictionaries({
    "category": st.sampled_from(CATEGORIES),
    "risk_level": st.integers(1, 5),
    "annual_margin": st.floats(10, 3000),
    "min_age": st.sampled_from([16, 18, 21, 25]),
    "eligible_segments": st.sampled_from(["mass|affluent|private", "affluent|private", "private"]),
})


def build_case(clients, prods, caps, max_contacts):
    products = products_table([{"product_id": f"P{j}", "name": f"Product {j}", **p} for j, p in enumerate(prods)])
    catalog = catalog_for(products, max_contacts_per_30d=max_contacts)
    m = len(products)
    rows, hist = [], []
    for i, c in enumerate(clients):
        held = "|".join(f"P{j}" for j in sorted(c["held"]) if j < m)
        r = {k: v for k, v in c.items() if k not in ("held", "consents", "churn", "propensity", "history")}
        r["held_products"] = held
        r["complaint_state"] = "open" if c["open_complaints"] else "none"
        r["days_to_birthday"] = 5
        r["days_to_td_maturity"] = 7
        for ch, ok in zip(list(CHANNELS) + ["marketing"], c["consents"]):
            r[f"consent_{ch}"] = ok
        rows.append(r)
        for a_idx, ago, outcome, ctrl in c["history"]:
            a = catalog.actions[a_idx % len(catalog.actions)]
            hist.append({"customer_id": f"C{i:04d}", "action_id": a.action_id, "action_family": a.family,
                         "decided": DAY - timedelta(days=ago), "outcome": outcome,
                         "outcome_date": DAY - timedelta(days=ago) if outcome else None, "control_group": ctrl})
    feats = feats_frame(rows)
    pp = np.array([c["propensity"][:m] for c in clients], dtype=np.float32).reshape(len(clients), m)
    churn = np.array([c["churn"] for c in clients], dtype=np.float32)
    history = pd.DataFrame(hist) if hist else empty_history()
    return feats, catalog, Inputs(pp, churn, "test"), dict(zip(["RM1", "RM2", "RM3"], caps)), history


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(clients=st.lists(client, min_size=1, max_size=25), prods=st.lists(product_row, min_size=1, max_size=6),
       caps=st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)), max_contacts=st.integers(1, 3))
def test_no_decision_ever_breaks_a_policy(clients, prods, caps, max_contacts):
    feats, catalog, inputs, capacity, history = build_case(clients, prods, caps, max_contacts)
    out = decide(feats, catalog, inputs, capacity, DAY, history)
    assert list(out.columns) == list(DECISION_COLUMNS)
    assert out.customer_id.is_unique, "at most one action per client per day"
    pol = catalog.policy
    by_id = feats.set_index("customer_id")
    products = catalog.products
    for r in out.itertuples():  # control rows name an action they would have had: it must be admissible too
        f = by_id.loc[r.customer_id]
        c = clients[int(r.customer_id[1:])]
        a = catalog.actions[catalog.index(r.action_id)]
        assert r.channel in a.channels
        # consent: the channel, and marketing for offers
        assert f[f"consent_{r.channel}"], (r.action_id, r.channel)
        if r.action_family != "care_contact":
            assert f["consent_marketing"]
        # complaint first
        if f["open_complaints"] > 0:
            assert r.action_family == "care_contact"
        # contact cap and one per day (earlier NBA actions count, control rows of the past do not)
        past = [h for h in c["history"] if not h[3]]
        recent = sum(1 for h in past if 0 < h[1] < 30)
        assert f["outbound_30d"] + recent < pol.max_contacts_per_30d
        assert not any(h[1] == 0 for h in past)
        # cooldowns: same action, declined action, declined family
        for a_idx, ago, outcome, ctrl in c["history"]:
            h_action = catalog.actions[a_idx % len(catalog.actions)]
            if not ctrl and h_action.action_id == r.action_id:
                assert ago >= a.cooldown_days
            if outcome == "declined":
                if h_action.action_id == r.action_id:
                    assert ago >= pol.decline_cooldown_days
                if h_action.family == r.action_family:
                    assert ago >= pol.family_decline_cooldown_days
        if r.action_family == "product_offer":
            p = products.loc[r.product_id]
            held = set(filter(None, f["held_products"].split("|")))
            assert r.product_id not in held
            assert f["age"] >= p["min_age"] and f["segment"] in p["eligible_segments"].split("|")
            protected = f["age"] >= 65 or f["vulnerable"]
            if p["category"] in pol.suitability.investment_categories:
                assert p["risk_level"] <= f["risk_tolerance"]
                assert f["risk_assessment_age_days"] is not None and f["risk_assessment_age_days"] < 365
            if protected:
                assert p["risk_level"] <= 2 and r.rm_review and r.in_person, "protected: RM review, in person"
        if r.action_family == "retention_offer":
            assert not np.isnan(c["churn"]) and c["churn"] >= a.retention.min_churn
        trace = json.loads(r.policy_trace)
        assert r.action_id in trace["passed"] and trace["chosen"]["action_id"] == r.action_id
    listed = out[~out.control_group]
    per_rm = listed[listed.in_person].groupby("rm_id").size()
    for rm_id, k in per_rm.items():
        assert k <= capacity[rm_id], "RM capacity"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["A", "B"]), st.one_of(st.just(-np.inf), st.floats(-5, 20)),
                          st.one_of(st.just(-np.inf), st.floats(-5, 20))), min_size=1, max_size=7),
       st.integers(0, 3), st.integers(0, 3))
def test_assignment_is_optimal_against_exhaustive_search(clients, cap_a, cap_b):
    rm = np.array([c[0] for c in clients])
    ip = np.array([c[1] for c in clients], float)
    dg = np.array([c[2] for c in clients], float)
    cap = {"A": cap_a, "B": cap_b}
    chosen = assign(rm, ip, dg, cap)

    def total(mask):
        v = 0.0
        for i in range(len(clients)):
            if mask[i]:
                v += ip[i]
            elif np.isfinite(dg[i]):
                v += max(dg[i], 0)
        return v

    for r in ("A", "B"):
        assert chosen[rm == r].sum() <= cap[r]
    assert np.isfinite(ip[chosen]).all()
    best = -np.inf
    for mask in itertools.product([False, True], repeat=len(clients)):
        mask = np.array(mask)
        if any(mask[rm == r].sum() > cap[r] for r in cap) or not np.isfinite(ip[mask]).all():
            continue
        best = max(best, total(mask))
    assert total(chosen) >= best - 1e-9


# -------------------------------------------------------------------------------------------------
# Golden reason codes and talking points


def one(row: dict, propensity=None, churn=float("nan"), products=None, history=None, capacity=5, **policy):
    products = products if products is not None else products_table()
    catalog = catalog_for(products, **{"control_share": {"product_offer": 0, "care_contact": 0,
                                                         "retention_offer": 0}, **policy})
    feats = feats_frame([row])
    pp = np.array([[(propensity or {}).get(pid, 0.0) for pid in catalog.products.index]], np.float32)
    out = decide(feats, catalog, Inputs(pp, np.array([churn], np.float32), "v9"), {"RM1": capacity}, DAY,
                 history)
    return out, catalog


def test_golden_retention_offer():
    out, _ = one({"held_products": "SAV|MORT", "total_assets_trend_90d": -0.38, "days_since_last_contact": 94,
                  "days_since_last_outbound": 94, "emotional_state": "negative", "total_assets": 150_000.0,
                  "lifecycle_stage": "declining", "health_score": 41.0}, churn=0.6)
    r = out.iloc[0]
    assert r.action_family == "retention_offer" and r.model_version == "v9"
    assert r.reasons == "churn_risk|assets_declining|long_silence|negative_sentiment|lifecycle_declining"
    assert r.talking_points.split(" || ") == [
        "Churn risk 60%; assets down 38% in 90 days; last contact 94 days ago; recent contacts negative",
        f"Offer {r.action_id.split(':')[1].replace('_', ' ')}: keeps about "
        f"{ {'fee_waiver': 20, 'rate_bonus': 30, 'rm_visit': 40}[r.action_id.split(':')[1]] }% of clients at risk; "
        "relationship worth 150,000 in assets",
        "Relationship health 41/100, declining client"]


def test_golden_product_offer_with_peers_and_suitability():
    rows = [{"held_products": "SAV|BOND"}] * 3 + [{"held_products": "SAV"}]
    products = products_table()
    catalog = catalog_for(products, control_share={"product_offer": 0, "care_contact": 0, "retention_offer": 0})
    feats = feats_frame(rows)
    pp = np.tile(np.array([[0.30 if pid == "BOND" else 0.0 for pid in catalog.products.index]], np.float32), (4, 1))
    out = decide(feats, catalog, Inputs(pp, np.full(4, np.nan, np.float32), "v9"), {"RM1": 5}, DAY)
    r = out.set_index("customer_id").loc["C0003"]
    assert r.action_id == "offer:BOND" and r.product_id == "BOND"
    assert r.reasons == "model_propensity|peer_adoption|suitable_risk"
    assert r.talking_points.split(" || ") == [
        "Bond fund: 30% likely to open it within 90 days",
        "Clients like this one hold Bond fund: 75% of affluent clients aged 30-44 do",
        "Risk level 2 within the client's tolerance 3 (assessed 100 days ago)"]
    trace = json.loads(r.policy_trace)
    assert trace["already_held"] == ["offer:SAV"]
    assert "offer:FUND" in trace["suitability"]  # risk 4 above tolerance 3


def test_golden_protected_client_needs_rm_review_in_person():
    out, _ = one({"age": 78.0, "segment": "mass"}, propensity={"FUND": 0.5, "BOND": 0.5, "MORT": 0.4})
    r = out.iloc[0]
    assert r.action_id == "offer:MORT"  # the risk-4 fund is removed for a protected client
    assert r.rm_review and r.in_person and r.channel in ("branch", "phone")
    assert "rm_review_required" in r.reasons
    assert "Protected client (aged 78, 65 or over): RM to review suitability in person before offering" \
        in r.talking_points
    assert "offer:FUND" in json.loads(r.policy_trace)["suitability"]


@pytest.mark.parametrize("row, point", [
    ({"age": 40.0, "vulnerable": True, "vulnerable_known": True},
     "Protected client (vulnerable): RM to review suitability in person before offering"),
    ({"age": 40.0, "vulnerable": True, "vulnerable_known": False},
     "Protected client (vulnerability not on record, so treated as vulnerable): RM to check it and review "
     "suitability in person before offering"),
])
def test_the_review_says_why_the_client_is_protected(row, point):
    out, _ = one({**row, "segment": "mass"}, propensity={"FUND": 0.5, "BOND": 0.5, "MORT": 0.4})
    r = out.iloc[0]
    assert r.rm_review and "rm_review_required" in r.reasons and point in r.talking_points


@pytest.mark.parametrize("row, action, codes, point", [
    ({"birthday_in_14d": True, "days_to_birthday": 3, "age": 49}, "care:birthday", "birthday",
     "Birthday in 3 days (turns 50)"),
    ({"birthday_in_14d": True, "days_to_birthday": 0, "age": 50}, "care:birthday", "birthday",
     "Birthday today (turns 50)"),
    ({"days_since_last_outbound": 150}, "care:check_in", "silence", "No contact from the bank for 150 days"),
    ({"open_complaints": 1, "open_complaint_max_severity": 3, "complaint_state": "open"},
     "care:complaint_follow_up", "complaint_open",
     "Open complaint (high severity): follow up on its resolution; no offers until it is resolved"),
    ({"days_since_resolved_complaint": 6}, "care:complaint_follow_up", "complaint_resolved",
     "Complaint resolved 6 days ago: check the client is satisfied"),
    ({"td_maturity_in_14d": True, "days_to_td_maturity": 9}, "care:td_maturity", "td_maturity",
     "Term deposit matures in 9 days: discuss reinvestment"),
])
def test_golden_care_contacts(row, action, codes, point):
    out, _ = one(row, propensity={"SAV": 0.3, "CARD": 0.3, "FUND": 0.3, "BOND": 0.3} if "open_complaints" in row else None)
    r = out.iloc[0]
    assert r.action_id == action and r.action_family == "care_contact"
    assert r.reasons.split("|")[0] == codes
    assert r.talking_points.split(" || ")[0] == point
    if "open_complaints" in row:
        assert set(json.loads(r.policy_trace)["complaint_first"]) >= {"offer:SAV", "offer:BOND"}


@pytest.mark.parametrize("age, protected", [(64, False), (65, True)])
def test_protection_starts_on_the_65th_birthday(age, protected):
    """Age is in completed calendar years (a client born 1961-06-30 is 65 on 2026-06-30): risk-4 funds
    and digital channels stop on that day, not a day later."""
    out, _ = one({"age": age, "risk_tolerance": 5}, propensity={"FUND": 0.5, "BOND": 0.5})
    r = out.iloc[0]
    assert ("offer:FUND" in json.loads(r.policy_trace)["suitability"]) == protected
    assert r.action_id == ("offer:BOND" if protected else "offer:FUND") and r.rm_review == protected


def test_anniversary_years_are_calendar_years():
    # Onboarded 2021-06-05 (tenure 1822 days on 2026-06-01): 5 years with the bank on 2026-06-05.
    day = DAY
    tenure = (day - date(2021, 6, 5)).days
    out, _ = one({"anniversary_in_14d": True, "days_to_onboarding_anniversary": (date(2026, 6, 5) - day).days,
                  "tenure_days": tenure})
    r = out.iloc[0]
    assert r.action_id == "care:anniversary"
    assert r.talking_points.split(" || ")[0].startswith("5 years with the bank in ")


def test_blocked_clients_get_nothing():
    assert one({"outbound_30d": 2, "birthday_in_14d": True})[0].empty  # contact cap
    assert one({**{f"consent_{c}": False for c in CHANNELS}, "birthday_in_14d": True})[0].empty
    # Marketing consent withdrawn: care still possible, offers not.
    out, _ = one({"consent_marketing": False, "birthday_in_14d": True}, propensity=dict.fromkeys(["SAV", "CARD", "FUND", "BOND", "MORT"], 0.5))
    assert out.iloc[0].action_family == "care_contact"
    hist = pd.DataFrame([{"customer_id": "C0000", "action_id": "care:birthday", "action_family": "care_contact",
                          "decided": DAY, "outcome": None, "outcome_date": None, "control_group": False}])
    assert one({"birthday_in_14d": True}, history=hist)[0].empty  # one action per day


def test_capacity_sends_the_rest_digital():
    rows = [{"days_since_last_outbound": 200 + i, "birthday_in_14d": True} for i in range(6)]
    catalog = catalog_for(products_table(), control_share={"product_offer": 0, "care_contact": 0, "retention_offer": 0})
    feats = feats_frame(rows)
    out = decide(feats, catalog, Inputs(np.zeros((6, 5), np.float32), np.full(6, np.nan, np.float32)),
                 {"RM1": 2}, DAY)
    assert out.in_person.sum() == 2 and len(out) == 6
    assert set(out[~out.in_person].channel) <= {"email", "sms", "app"}
    assert (out[~out.in_person].action_id == "care:birthday").all()


def test_control_group_share_and_determinism():
    n = 4000
    rows = [{"birthday_in_14d": True, "rm_id": f"RM{i % 40}"} for i in range(n)]
    catalog = catalog_for(products_table())
    feats = feats_frame(rows)
    inputs = Inputs(np.zeros((n, 5), np.float32), np.full(n, np.nan, np.float32))
    caps = {f"RM{i}": 10 for i in range(40)}
    a = decide(feats, catalog, inputs, caps, DAY)
    b = decide(feats, catalog, inputs, caps, DAY)
    assert a.equals(b)
    share = a.control_group.mean()
    assert 0.04 <= share <= 0.06, share
    ctrl = a[a.control_group]
    assert ctrl.action_id.notna().all() and (ctrl.action_family == "care_contact").all()
    # Capacity is still fully used after the control draw, and control rows are on no list.
    assert (a[~a.control_group & a.in_person].groupby("rm_id").size() == 10).all()
    other_day = decide(feats, catalog, inputs, caps, DAY + timedelta(days=1))
    assert set(other_day[other_day.control_group].customer_id) != set(ctrl.customer_id)


def test_catalog_errors_name_the_field(tmp_path):
    bad = tmp_path / "actions.yaml"
    bad.write_text("channels: {branch: {response: 1, cost: 1, in_person: true}}\npolicy: {max_contacts_per_30d: 0}\n")
    with pytest.raises(ConfigError, match="max_contacts_per_30d") as e:
        load_catalog(products_table(), bad)
    assert str(bad) in str(e.value)
    raw = load_catalog_config().model_dump()
    raw["product_offers"]["products"] = {"NOPE": {"lever": 2.0}}
    raw["product_offers"]["unknown_products"] = "error"  # the default skips it with a warning (test_bank_exports)
    from nba.catalog import CatalogConfig
    with pytest.raises(ConfigError, match="'NOPE', which is not in the products table") as e:
        resolve(CatalogConfig.model_validate(raw), products_table())
    first = str(products_table()["product_id"].iloc[0])
    assert first in str(e.value), "nothing close: the products it holds are listed"
    bad.write_text(bad.read_text().replace("max_contacts_per_30d: 0", "max_contacts_per_30d: 2, surprise: 1"))
    with pytest.raises(ConfigError, match="surprise"):
        load_catalog(products_table(), bad)


@pytest.mark.parametrize("dates, ok", [(["12-25"], True), (["02-29"], True), (["1-5"], False), (["12/20"], False),
                                       (["12"], False), (["02-30"], False), (["13-01"], False)])
def test_holiday_dates_are_exactly_mm_dd(dates, ok):
    from pydantic import ValidationError

    from nba.catalog import CareContact

    spec = {"trigger": "holiday", "dates": dates, "base_rate": 0.1, "value": 1.0, "channels": ["email"]}
    if ok:
        assert CareContact(**spec).dates == dates
    else:
        with pytest.raises(ValidationError, match="is not MM-DD"):
            CareContact(**spec)


# -------------------------------------------------------------------------------------------------
# The history's two paths (pandas for the daily run, plain Python for the API's few clients) agree


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(
    st.sampled_from(["C0", "C1", "C2", "C9"]),
    st.sampled_from(["offer:SAV", "offer:CARD", "care:birthday", "retention:fee_waiver", "offer:GONE"]),
    st.sampled_from(["product_offer", "care_contact", "retention_offer"]),
    st.integers(-3, 130),
    st.sampled_from([None, "shown", "reached", "accepted", "declined", "not_reachable"]),
    st.one_of(st.none(), st.integers(-3, 130)),
    st.sampled_from([True, False, None])), max_size=40))
def test_history_paths_agree(rows):
    from nba import decision as D
    catalog = catalog_for(products_table())
    hist = [(c, a, f, DAY - timedelta(days=ago), o, None if od is None else DAY - timedelta(days=od), ctl)
            for c, a, f, ago, o, od, ctl in rows]
    frame = pd.DataFrame(hist, columns=list(D.HISTORY_COLUMNS)) if hist else D.empty_history()
    ids = pd.Index(["C0", "C1", "C2"])
    old, D.SMALL_HISTORY = D.SMALL_HISTORY, -1
    try:
        big = D._History(frame, ids, catalog, DAY)
    finally:
        D.SMALL_HISTORY = old
    small = D._History(hist, list(ids), catalog, DAY)
    for name in ("contacts_30d", "today", "since_action", "since_decline"):
        np.testing.assert_array_equal(getattr(big, name), getattr(small, name), err_msg=name)
    for fam in big.since_family_decline:
        np.testing.assert_array_equal(big.since_family_decline[fam], small.since_family_decline[fam], err_msg=fam)


# -------------------------------------------------------------------------------------------------
# The day's precomputed part (the scoring API computes it once per model load)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(clients=st.lists(client, min_size=1, max_size=12), prods=st.lists(product_row, min_size=1, max_size=5),
       max_contacts=st.integers(1, 3))
def test_best_channel_from_the_day_equals_the_best_over_each_channel(clients, prods, max_contacts):
    """Without a channel, each action's priority and channel come from the day's precomputed best
    in-person and digital values; with a channel, from that channel's expected value. The first must be
    the maximum of the second over the channels, at the first channel reaching it."""
    from nba import decision as D
    feats, catalog, inputs, _, history = build_case(clients, prods, (1, 1, 1), max_contacts)
    ids = pd.Index(feats["customer_id"].astype(str))
    hist = D._History(history, ids, catalog, DAY)
    day = D.day_scores(feats, catalog, inputs, DAY)
    free = D.finish(day, catalog, hist)
    per_channel = np.stack([D.finish(day, catalog, hist, D.Request(channel=c), best=False)["action_priority"]
                            for c in CHANNELS], axis=2)  # [n, A, C]
    np.testing.assert_array_equal(free["action_priority"], per_channel.max(axis=2))
    finite = np.isfinite(free["action_priority"])
    np.testing.assert_array_equal(free["action_channel"][finite], per_channel.argmax(axis=2)[finite])
    # score() is the two steps, and the day's part is left as it was
    before = {k: v.copy() for k, v in day.items()}
    again = D.score(feats, catalog, inputs, hist, DAY)
    for k in ("P", "V", "removed_by", "action_priority", "action_channel", "chan_ok"):
        np.testing.assert_array_equal(again[k], free[k], err_msg=k)
    for k in before:
        np.testing.assert_array_equal(day[k], before[k], err_msg=k)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(clients=st.lists(client, min_size=1, max_size=12), prods=st.lists(product_row, min_size=1, max_size=5),
       max_contacts=st.integers(1, 3))
def test_the_quiet_decision_is_finish_without_history_per_client(clients, prods, max_contacts):
    """The API takes a client's row of quiet_finish when the ledger has no history for it and the request
    narrows nothing: it must equal finish on that one client with an empty history and that request."""
    from nba import decision as D
    feats, catalog, inputs, _, _ = build_case(clients, prods, (1, 1, 1), max_contacts)
    day = D.day_scores(feats, catalog, inputs, DAY)
    quiet = D.quiet_finish(day, catalog)
    assert D.narrows_nothing(D.Request()) and D.narrows_nothing(None)
    assert not D.narrows_nothing(D.Request(channel="app")) and not D.narrows_nothing(D.Request(exclude=("x",)))
    for i in range(len(feats)):
        one = D.finish(day.take(np.array([i])), catalog, D._History(None, ["c"], catalog, DAY), D.Request(),
                       best=False)
        row = quiet.take(np.array([i]))
        for k in D.ANSWER_KEYS:
            np.testing.assert_array_equal(row[k], one[k], err_msg=k)


def test_feature_hash_is_the_hash_of_the_stored_document(tmp_path):
    """The daily run hashes the documents the online store keeps, so the API hashes the bytes it reads."""
    from feature_store.online import SQLiteOnlineStore
    from nba.decision import document_hash, documents, feature_hashes
    feats = feats_frame([{}, {"age": 70.0, "days_since_resolved_complaint": 12}, {"segment": "mass"}])
    feats["as_of"] = pd.Timestamp(DAY)
    feats["maybe"] = pd.array([1, None, 3], dtype="Int64")
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    store.publish("2026-06-01@v1", list(feats.columns), documents(feats))
    version, columns, docs = store.get_docs(["C0001", "C0000", "nobody"])
    assert version == "2026-06-01@v1" and columns == list(feats.columns) and docs[2] is None
    assert [document_hash(d) for d in docs[:2]] == list(feature_hashes(feats)[[1, 0]])
    changed = feats.copy()
    changed.loc[1, "health_score"] = 61.0
    h0, h1 = feature_hashes(feats), feature_hashes(changed)
    assert h0[0] == h1[0] and h0[1] != h1[1] and len(h0[0]) == 12


# -------------------------------------------------------------------------------------------------
# Former clients (every holding closed): nothing but an opt-in win-back contact


FORMER = {"held_products": "", "former_client": True, "days_since_left": 40, "lifecycle_stage": "former",
          "birthday_in_14d": True, "days_since_last_outbound": None, "total_assets": 0.0, "health_score": 40.0}


def _win_back_catalog(enabled: bool, **win_back):
    from nba.catalog import CatalogConfig
    raw = load_catalog_config().model_dump()
    raw["product_offers"]["products"], raw["product_offers"]["variants"] = {}, []
    raw["policy"]["control_share"] = {"product_offer": 0, "care_contact": 0, "retention_offer": 0}
    raw["retention_offers"]["win_back"] = {**raw["retention_offers"]["win_back"], "enabled": enabled, **win_back}
    return resolve(CatalogConfig.model_validate(raw), products_table())


@pytest.mark.parametrize("enabled", [False, True])
def test_a_former_client_gets_no_care_offer_retention_or_capacity(enabled):
    """A birthday, a long silence, a high propensity and a high churn risk: for a client still at the
    bank these fire; for a former client nothing does, except the win-back contact when enabled."""
    catalog = _win_back_catalog(enabled)
    feats = feats_frame([dict(FORMER), {**FORMER, "former_client": False, "days_since_left": None,
                                        "held_products": "SAV", "lifecycle_stage": "mature"}])
    pp = np.full((2, len(catalog.products)), 0.5, np.float32)
    out = decide(feats, catalog, Inputs(pp, np.array([0.7, 0.7], np.float32), "v9"), {"RM1": 5}, DAY)
    still = out[out.customer_id == "C0001"]
    assert len(still) == 1 and still.iloc[0].in_person  # the client still at the bank gets an RM action
    former = out[out.customer_id == "C0000"]
    if not enabled:
        assert former.empty
        return
    r = former.iloc[0]
    assert (r.action_id, r.action_family, r.in_person) == ("retention:win_back", "retention_offer", False)
    assert r.reasons.startswith("former_client") and "Left the bank 40 days ago" in r.talking_points
    trace = json.loads(r.policy_trace)
    assert "care:birthday" in trace["former_client"] and "offer:MORT" in trace["former_client"]
    assert trace["passed"] == ["retention:win_back"]


def test_win_back_needs_marketing_consent_and_a_recent_departure():
    catalog = _win_back_catalog(True, max_days_since_left=90)
    feats = feats_frame([dict(FORMER), {**FORMER, "consent_marketing": False}, {**FORMER, "days_since_left": 200}])
    pp = np.zeros((3, len(catalog.products)), np.float32)
    out = decide(feats, catalog, Inputs(pp, np.full(3, np.nan, np.float32), "v9"), {"RM1": 5}, DAY)
    assert out.customer_id.tolist() == ["C0000"]


def test_retention_value_counts_the_balances_at_stake():
    """A bank whose export has no product margins: a client at risk with 150,000 in assets still gets a
    retention offer, valued at balance_margin x balances x value_years (plus the held margins)."""
    products = products_table()
    products["annual_margin"] = 0.0
    row = {"held_products": "SAV", "total_assets": 150_000.0, "total_liabilities": 0.0,
           "days_since_last_outbound": 10, "birthday_in_14d": False}
    out, catalog = one(row, churn=0.6, products=products)
    r = out.iloc[0]
    ro = catalog.config.retention_offers
    assert r.action_family == "retention_offer"
    assert r.value == pytest.approx(ro.balance_margin * 150_000 * ro.value_years)
    out, _ = one({**row, "total_assets": 0.0}, churn=0.6, products=products)
    assert not (out.action_family == "retention_offer").any()  # nothing at stake: no retention offer
    out, _ = one({**row, "total_assets": 0.0, "balance_other": 28_000.0}, churn=0.6, products=products)
    r = out.iloc[0]  # a pension in category `other` is at stake too
    assert r.action_family == "retention_offer" and r.value == pytest.approx(ro.balance_margin * 28_000 * ro.value_years)


def test_small_probabilities_are_not_said_as_zero():
    from nba.decision import _pct
    assert [_pct(x) for x in (0.0017, 0.0094, 0.0096, 0.12, 0.0)] == ["0.2%", "0.9%", "1.0%", "12%", "0%"]


def test_the_banks_settings_can_live_outside_the_source_tree(tmp_path, monkeypatch):
    from nba.bank import load_bank_config
    own = tmp_path / "bank.yaml"
    own.write_text("time_zone: Asia/Shanghai\n")
    monkeypatch.setenv("NBA_BANK_CONFIG", str(own))
    assert load_bank_config().time_zone == "Asia/Shanghai"
    from nba.bank import bank_config_name
    assert bank_config_name() == str(own), "messages name the file in force"
    monkeypatch.delenv("NBA_BANK_CONFIG")
    assert bank_config_name() == "configs/bank.yaml"
    assert load_bank_config().time_zone != "Asia/Shanghai"
