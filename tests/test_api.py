"""The scoring API (issue 15): endpoints, scopes and the RM isolation matrix, limits, the one contact
ledger shared with the daily run, API decisions equal to the daily engine's, hot reload under load,
broken-bundle refusal, idempotent outcomes and audit records."""

from __future__ import annotations

import threading
from datetime import date, datetime, time, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from apps.api.app import create_app
from apps.api.security import KeyStore
from apps.api.settings import ServingSettings
from bundle import registry
from feature_store.materialize import features_at
from feature_store.store import TableStore
from nba.catalog import load_catalog
from nba.decision import _History, control_draw, options
from nba.home import Home
from serving.daily import history as daily_history
from serving.daily import model_inputs, run_daily
from tests.conftest import AS_OF

SETTINGS = ServingSettings(max_batch=50, max_body_bytes=4096, rate_limit="100000/minute",
                           reload_poll_seconds=0)


@pytest.fixture(scope="module")
def home(api_home) -> Home:
    return api_home


@pytest.fixture(scope="module")
def keys(home) -> dict:
    ks = KeyStore.open(home)
    feats = features_at(home, AS_OF)
    rm = feats["rm_id"].value_counts().index[0]
    out = {"rm_id": rm}
    for scope, rm_id in (("campaign", None), ("rm", rm), ("admin", None)):
        out[scope] = ks.create(scope, rm_id=rm_id, label=f"test {scope}")[1]
    out["own"] = feats.loc[feats.rm_id == rm, "customer_id"].tolist()
    out["other"] = feats.loc[feats.rm_id != rm, "customer_id"].tolist()
    return out


def CLOCK() -> datetime:
    """The API's clock in these tests: noon (UTC) of the synthetic bank's day."""
    return datetime.combine(AS_OF, time(12), tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def client(home, keys):
    app = create_app(home, SETTINGS, clock=CLOCK)
    with TestClient(app) as c:
        yield c


def H(key: str, **extra) -> dict:
    return {"X-API-Key": key, **extra}


def nba(client, key, cid, **body):
    return client.post("/v1/next-best-action", json={"customer_id": cid, **body}, headers=H(key))


# -------------------------------------------------------------------------------------------------
# Operations, auth, limits


def test_health_ready_model_and_metrics(client, keys):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["model_version"].endswith("/1")
    m = client.get("/v1/model", headers=H(keys["campaign"])).json()
    assert m["model_version"] == 1 and m["features_as_of"] == str(AS_OF) and m["index_build"]
    assert m["warnings"] == [], "the online features are the live store version's"
    text = client.get("/metrics").text
    assert "nba_requests_total" in text and "nba_reloads_total" in text


def test_not_ready_until_a_model_is_loaded(tmp_path):
    h = Home.resolve(tmp_path / "empty").ensure()
    with TestClient(create_app(h, SETTINGS)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        assert c.get("/openapi.json").status_code == 200


def test_keys_and_scopes(client, keys):
    cid = keys["own"][0]
    assert nba(client, "", cid).status_code == 401
    assert client.post("/v1/next-best-action", json={"customer_id": cid}).status_code == 401
    assert nba(client, "nba_000000000000_" + "x" * 43, cid).status_code == 401
    assert nba(client, keys["admin"], cid).status_code == 403           # admin reads no client data
    assert client.post("/v1/admin/reload", headers=H(keys["campaign"])).status_code == 403
    assert client.post("/v1/admin/reload", headers=H(keys["admin"])).status_code == 200
    assert nba(client, keys["campaign"], cid).status_code == 200


def test_rm_sees_only_its_book_everywhere(client, keys):
    rm, own, other = keys["rm"], keys["own"][0], keys["other"][0]
    assert nba(client, rm, own).status_code == 200
    outside, unknown = nba(client, rm, other), nba(client, rm, "NO-SUCH-CLIENT")
    assert outside.status_code == unknown.status_code == 404 and outside.json() == unknown.json()
    r1 = client.get(f"/v1/clients/{other}/recommendations", headers=H(rm))
    r2 = client.get("/v1/clients/NO-SUCH-CLIENT/recommendations", headers=H(rm))
    assert r1.status_code == r2.status_code == 404 and r1.json() == r2.json()
    assert client.get(f"/v1/clients/{own}/recommendations", headers=H(rm)).status_code == 200
    s = client.post("/v1/score", json={"customer_ids": [own, other]}, headers=H(rm)).json()
    assert [r["customer_id"] for r in s["results"]] == [own] and s["unknown"] == [other]
    lk = client.post("/v1/audiences/lookalike", json={"seed_customer_ids": keys["own"][:5], "size": 20},
                     headers=H(rm)).json()
    assert lk["audience"] and set(m["customer_id"] for m in lk["audience"]) <= set(keys["own"])
    # Seeds outside the book are reported as unknown seeds, exactly like seeds that do not exist.
    mixed = client.post("/v1/audiences/lookalike", headers=H(rm),
                        json={"seed_customer_ids": [keys["own"][0], other, "NO-SUCH-CLIENT"], "size": 5}).json()
    assert mixed["unknown_seeds"] == [other, "NO-SUCH-CLIENT"] and mixed["seeds_used"] == 1
    only = client.post("/v1/audiences/lookalike", headers=H(rm), json={"seed_customer_ids": [other], "size": 5})
    assert only.json() == {"audience": [], "unknown_seeds": [other], "seeds_used": 0} | {
        k: v for k, v in only.json().items() if k not in ("audience", "unknown_seeds", "seeds_used")}
    # An outcome for a decision about another RM's client: exactly an unknown decision.
    d = nba(client, keys["campaign"], other).json()["decision_id"]
    if d:
        o1 = client.post("/v1/outcomes", json={"decision_id": d, "outcome": "shown"},
                         headers=H(rm, **{"Idempotency-Key": "rm-x"}))
        o2 = client.post("/v1/outcomes", json={"decision_id": "N-nope", "outcome": "shown"},
                         headers=H(rm, **{"Idempotency-Key": "rm-y"}))
        assert o1.status_code == o2.status_code == 404 and o1.json() == o2.json()


def test_limits_body_batch_and_rate(home, keys, client):
    big = {"customer_ids": ["C" * 100] * 200}
    r = client.post("/v1/score", json=big, headers=H(keys["campaign"]))
    assert r.status_code == 413
    r = client.post("/v1/score", json={"customer_ids": [f"C{i}" for i in range(51)]}, headers=H(keys["campaign"]))
    assert r.status_code == 422 and "at most 50" in r.text and "max_batch" in r.text
    slow = SETTINGS.model_copy(update={"rate_limit": "3/minute"})
    with TestClient(create_app(home, slow, clock=CLOCK)) as c:
        codes = [nba(c, keys["campaign"], keys["own"][0]).status_code for _ in range(4)]
        assert codes[:3] == [200] * 3 and codes[3] == 429
        r = nba(c, keys["campaign"], keys["own"][0])
        assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("body,field", [
    ({"customer_id": ""}, "customer_id"),
    ({"customer_id": "C1", "top": 0}, "top"),
    ({"customer_id": "C1", "context": {"channel": "fax"}}, "channel"),
    ({"customer_id": "C1", "surprise": 1}, "surprise"),
    ({"customer_id": 12}, "customer_id"),
])
def test_bad_input_is_a_422_naming_the_field(client, keys, body, field):
    r = client.post("/v1/next-best-action", json=body, headers=H(keys["campaign"]))
    assert r.status_code == 422 and field in r.text


# -------------------------------------------------------------------------------------------------
# Decisions


def test_next_best_action_answer_and_context(client, keys, home):
    cid = keys["own"][1]
    r = nba(client, keys["campaign"], cid, top=5, context={"campaign_id": "spring"})
    assert r.status_code == 200
    d = r.json()
    assert d["customer_id"] == cid and d["as_of"] == str(AS_OF) and d["campaign_id"] == "spring"
    assert d["model_version"].endswith("/1") and len(d["feature_hash"]) == 12
    assert set(d["policy_trace"]) >= {"eligibility", "consent", "passed", "chosen"}
    pri = [a["priority"] for a in d["actions"]]
    assert pri == sorted(pri, reverse=True)
    for a in d["actions"]:
        assert a["talking_points"] and a["reasons"] and a["action_id"] in d["policy_trace"]["passed"]
    # On an inbound phone call only phone-deliverable actions; candidates and exclusions are honoured.
    for c in keys["own"][:40]:
        p = nba(client, keys["campaign"], c, context={"channel": "phone"}).json()
        assert all(a["channel"] == "phone" for a in p["actions"])
        if len(p["actions"]) >= 2:
            first = p["actions"][0]["action_id"]
            ex = nba(client, keys["campaign"], c, context={"channel": "phone", "exclude": [first]}).json()
            assert first not in [a["action_id"] for a in ex["actions"]] and first in ex["policy_trace"]["request"]
            only = nba(client, keys["campaign"], c, context={"candidates": [p["actions"][1]["action_id"]]}).json()
            assert [a["action_id"] for a in only["actions"]] in ([p["actions"][1]["action_id"]], [])
            break
    unknown = nba(client, keys["campaign"], cid, context={"candidates": ["offer:NOPE"]})
    assert unknown.status_code == 422 and "offer:NOPE" in unknown.text


def test_next_best_action_bodies_are_exactly_the_schema(client, keys):
    """The endpoint writes its answer without a response model (orjson, for speed): each body must be
    what schemas.Decision would have written, no field more or fewer, the same values and types."""
    from apps.api import schemas

    seen_control = seen_actions = 0
    for i, cid in enumerate(keys["own"][:30] + keys["other"][:30]):
        ctx = {"channel": "phone"} if i % 3 == 0 else {"campaign_id": "c1"} if i % 3 == 1 else None
        r = nba(client, keys["campaign"], cid, top=3, **({"context": ctx} if ctx else {}))
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert schemas.Decision.model_validate(body).model_dump(mode="json") == body
        seen_control += body["control_group"]
        seen_actions += bool(body["actions"])
    assert seen_actions  # answers with actions were among them


def test_score_batch_with_candidates(client, keys):
    ids = keys["own"][:10] + ["NO-SUCH"]
    r = client.post("/v1/score", json={"customer_ids": ids, "candidates": ["CARD-GOLD", "care:birthday"]},
                    headers=H(keys["campaign"]))
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["unknown"] == ["NO-SUCH"] and len(s["results"]) == 10
    for res in s["results"]:
        got = {x["action_id"] for x in res["scores"]}
        assert "care:birthday" in got and any(a.startswith("offer:CARD-GOLD") for a in got)
        for x in res["scores"]:
            assert (x["priority"] is None) == (x["removed_by"] is not None)
        for a in res["decision"]["actions"]:
            assert a["action_id"] in got


def test_recommendations_follow_the_policies(client, keys, home):
    cid = keys["own"][2]
    r = client.get(f"/v1/clients/{cid}/recommendations?k=3", headers=H(keys["campaign"]))
    assert r.status_code == 200
    rec = r.json()
    assert len(rec["recommendations"]) <= 3
    held = features_at(home, AS_OF).set_index("customer_id").loc[cid, "held_products"] or ""
    assert not {x["product_id"] for x in rec["recommendations"]} & set(str(held).split("|"))
    assert set(held.split("|")) - {""} <= {p for p, why in rec["removed"].items() if why == "already_held"}
    p = [x["propensity"] for x in rec["recommendations"]]
    assert p == sorted(p, reverse=True)
    assert client.get(f"/v1/clients/{cid}/recommendations?k=0", headers=H(keys["campaign"])).status_code == 422


def test_lookalike_filters(client, keys, home):
    feats = features_at(home, AS_OF).set_index("customer_id")
    seeds = keys["own"][:10]
    r = client.post("/v1/audiences/lookalike", headers=H(keys["campaign"]), json={
        "seed_customer_ids": seeds, "size": 50, "filters": {"channel": "email", "exclude": keys["other"][:100]}})
    assert r.status_code == 200, r.text
    aud = [m["customer_id"] for m in r.json()["audience"]]
    assert len(aud) == 50 and not set(aud) & set(seeds) and not set(aud) & set(keys["other"][:100])
    assert feats.loc[aud, "consent_email"].all() and feats.loc[aud, "consent_marketing"].all()
    r = client.post("/v1/audiences/lookalike", headers=H(keys["campaign"]), json={
        "seed_customer_ids": seeds, "size": 30, "filters": {"product_id": "MORTGAGE"}})
    aud = [m["customer_id"] for m in r.json()["audience"]]
    assert aud and not any("MORTGAGE" in str(feats.loc[c, "held_products"]).split("|") for c in aud)
    bad = client.post("/v1/audiences/lookalike", headers=H(keys["campaign"]),
                      json={"seed_customer_ids": seeds, "size": 10, "filters": {"product_id": "NOPE"}})
    assert bad.status_code == 422 and "product_id" in bad.text


def test_api_decisions_equal_the_daily_engines(home, keys, client):
    """Same client, date and model: the API's top action is the daily engine's best option before the
    book-level capacity assignment; reasons, talking points and the feature hash are the same."""
    version = TableStore(home.store).require_current()
    catalog = load_catalog(version.read("products").to_pandas())
    feats = features_at(home, AS_OF, version)
    mv = registry.model_version(home, "champion")
    inputs = model_inputs(registry.bundle_of(home, mv), feats, catalog, f"{mv.name}/{mv.version}")
    hist_df = daily_history(home, version, AS_OF)
    ids = pd.Index(feats["customer_id"].astype(str))
    opt = options(feats, catalog, inputs, _History(hist_df, ids, catalog, AS_OF), AS_OF)
    sample = np.random.default_rng(0).choice(len(feats), 60, replace=False)
    api = {}
    for i in sample:
        cid = ids[i]
        d = nba(client, keys["campaign"], cid).json()
        api[cid] = d
        ip, dg = opt.ip_p[i], opt.dg_p[i]
        if not np.isfinite(ip) and not np.isfinite(dg):
            assert not d["actions"] and not d["control_group"]
            continue
        j = opt.ip_a[i] if ip > dg else opt.dg_a[i]
        want = catalog.actions[j]
        got = d["actions"][0]["action_id"] if d["actions"] else d["held_out"]["action_id"]
        assert got == want.action_id, cid
        share = catalog.policy.control_share.get(want.family, 0)
        assert d["control_group"] == bool(control_draw(np.array([cid]), np.array([want.family]), AS_OF)[0] < share)
    # The daily run on the same day: where it gave the client that same action, everything matches.
    res = run_daily(home, AS_OF, force=True)
    day = res.decisions.set_index("customer_id")
    compared = 0
    for cid, d in api.items():
        if cid in day.index and d["actions"] and day.loc[cid, "action_id"] == d["actions"][0]["action_id"]:
            row, a = day.loc[cid], d["actions"][0]
            assert row["feature_hash"] == d["feature_hash"]
            assert row["reasons"].split("|") == a["reasons"]
            assert row["talking_points"].split(" || ") == a["talking_points"]
            assert row["decision_id"] == a["decision_id"]
            assert abs(row["propensity"] - a["propensity"]) < 1e-5
            compared += 1
    assert compared >= 5


# -------------------------------------------------------------------------------------------------
# Outcomes, the ledger, audit


def _outcome(client, key, decision_id, outcome, idem, **extra):
    return client.post("/v1/outcomes", json={"decision_id": decision_id, "outcome": outcome, **extra},
                       headers=H(key, **{"Idempotency-Key": idem}))


def _at(day: date, hour: int = 12) -> str:
    return datetime.combine(day, time(hour), tzinfo=timezone.utc).isoformat()


def test_outcomes_are_idempotent_and_validated(client, keys):
    d = second = held = None
    for cid in keys["own"][10:] + keys["other"]:
        ans = nba(client, keys["campaign"], cid, top=3).json()
        if ans["actions"] and d is None:
            d = ans["decision_id"]
        if len(ans["actions"]) >= 2 and second is None:
            second = ans["actions"][1]["decision_id"]
        if ans["control_group"] and held is None:
            held = ans["decision_id"]
        if d and second and held:
            break
    assert d and second and held
    first = _outcome(client, keys["campaign"], d, "shown", "k-1", outcome_at=_at(AS_OF))
    assert first.status_code == 200 and first.json()["replayed"] is False
    again = _outcome(client, keys["campaign"], d, "shown", "k-1", outcome_at=_at(AS_OF))
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["recorded_at"] == first.json()["recorded_at"]
    assert _outcome(client, keys["campaign"], d, "accepted", "k-1", outcome_at=_at(AS_OF)).status_code == 409
    assert _outcome(client, keys["campaign"], "N-unknown", "shown", "k-2").status_code == 404
    assert _outcome(client, keys["campaign"], d, "bought", "k-3").status_code == 422
    r = _outcome(client, keys["campaign"], d, "reached", "k-4", reason="busy")
    assert r.status_code == 422 and "reason" in r.text
    r = _outcome(client, keys["campaign"], d, "reached", "k-5", outcome_at="2999-01-01T00:00:00+00:00")
    assert r.status_code == 422 and "outcome_at" in r.text
    r = client.post("/v1/outcomes", json={"decision_id": d, "outcome": "shown"}, headers=H(keys["campaign"]))
    assert r.status_code == 422 and "Idempotency-Key" in r.text
    # A time without its UTC offset is ambiguous: refused, naming the field.
    r = _outcome(client, keys["campaign"], d, "reached", "k-6", outcome_at="2026-06-01T12:00:00")
    assert r.status_code == 422 and "outcome_at" in r.text
    # Every action shown has its decision: the client took the second one, on another channel.
    r = _outcome(client, keys["campaign"], second, "accepted", "k-7", channel="branch")
    assert r.status_code == 200, r.text
    # A held-out (control-group) client had no action: no outcome for it.
    r = _outcome(client, keys["campaign"], held, "shown", "k-8")
    assert r.status_code == 422 and "control-group" in r.text


@pytest.mark.parametrize("raw", [
    '{"customer_id": "C1", "top": NaN}', '{"customer_id": "C1", "top": Infinity}', '{"customer_id": "C1", "top": 1e400}',
    '{"customer_id": "\\ud800"}', '{"customer_id": "C1", "context": {"campaign_id": "\\ud800"}}',
    '["C00000042", NaN]', '{"customer_id": "C1", "context": {"candidates": []}}'])
def test_values_json_cannot_carry_back_are_a_422_not_a_500(client, keys, raw):
    r = client.post("/v1/next-best-action", content=raw, headers=H(keys["campaign"], **{"content-type": "application/json"}))
    assert r.status_code == 422, r.text
    assert all(set(e) == {"loc", "msg", "type"} for e in r.json()["detail"])  # the bad value is not echoed


def test_head_healthz(client):
    assert client.head("/healthz").status_code == 200


def test_one_ledger_for_the_api_and_the_daily_run(home, keys, client):
    """An API contact today counts towards tomorrow's daily contact cap; an API decline starts the
    cooldown for the API and for the daily run."""
    feats = features_at(home, AS_OF).set_index("customer_id")
    cap = load_catalog(TableStore(home.store).require_current().read("products").to_pandas()).policy.max_contacts_per_30d
    tomorrow = AS_OF + timedelta(days=1)
    # A client one contact below the cap, who gets an action from the API today.
    capped = declined = None
    for cid in keys["own"][60:] + keys["other"]:
        if capped and declined:
            break
        d = nba(client, keys["campaign"], cid).json()
        if not d["actions"] or d["control_group"]:
            continue
        if capped is None and feats.loc[cid, "outbound_30d"] == cap - 1:
            capped = (cid, d)
        elif declined is None and d["actions"][0]["action_family"] == "product_offer":
            declined = (cid, d)
    assert capped and declined
    cid, d = capped
    assert _outcome(client, keys["campaign"], d["decision_id"], "reached", "cap-1", outcome_at=_at(AS_OF)).status_code == 200
    cid2, d2 = declined
    action = d2["actions"][0]["action_id"]
    r = _outcome(client, keys["campaign"], d2["decision_id"], "declined", "dec-1", reason="not interested",
                 outcome_at=_at(AS_OF))
    assert r.status_code == 200
    # The API, later the same day: the declined offer is in cooldown.
    again = nba(client, keys["campaign"], cid2).json()
    assert action not in [a["action_id"] for a in again["actions"]]
    assert action in again["policy_trace"]["cooldown"]
    # Tomorrow's daily list: the capped client is left out, the declined offer is not proposed.
    res = run_daily(home, tomorrow, force=True)
    trace = res.decisions.set_index("customer_id")
    assert cid not in trace.index or trace.loc[cid, "control_group"]
    if cid2 in trace.index:
        assert trace.loc[cid2, "action_id"] != action


def test_audit_records_every_client_read(home, keys, client):
    cid = keys["own"][3]
    nba(client, keys["campaign"], cid)
    eng = sa.create_engine(f"sqlite:///{home.root / 'ledger.sqlite'}")
    with eng.connect() as c:
        rows = c.execute(sa.text("SELECT key_id, customer_id, endpoint, model_version FROM audit "
                                 "WHERE customer_id = :c"), {"c": cid}).fetchall()
    kid = keys["campaign"].split("_")[1]
    assert any(r[0] == kid and r[2] == "next-best-action" and r[3].endswith("/1") for r in rows)


# -------------------------------------------------------------------------------------------------
# Reload


def test_hot_reload_under_concurrent_requests(home, keys, client):
    ids = keys["own"][:20]
    failures, answered, stop = [], [], threading.Event()

    def hammer():
        i = 0
        while not stop.is_set():
            r = nba(client, keys["campaign"], ids[i % len(ids)])
            if r.status_code != 200:
                failures.append((r.status_code, r.text[:200]))
            else:
                answered.append(r.json()["model_version"])
            i += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for k in range(6):
            registry.promote(home, 2 if k % 2 == 0 else 1)
            r = client.post("/v1/admin/reload", headers=H(keys["admin"]))
            assert r.status_code == 200 and r.json()["switched"], r.text
    finally:
        stop.set()
        for t in threads:
            t.join()
        registry.promote(home, 1)
        client.post("/v1/admin/reload", headers=H(keys["admin"]))
    assert not failures and len(answered) > 20
    assert {v.split("/")[-1] for v in answered} == {"1", "2"}


def test_a_broken_bundle_is_refused_and_the_old_one_keeps_serving(home, keys, client):
    import json as _json
    mv = registry.model_version(home, 2)
    b = registry.bundle_of(home, mv)
    meta_file = b.path / "bundle.json"
    saved = meta_file.read_text()
    try:
        meta = _json.loads(saved)
        meta["schema_version"] = 99
        meta_file.write_text(_json.dumps(meta))
        registry.promote(home, 2)
        r = client.post("/v1/admin/reload", headers=H(keys["admin"]))
        assert r.status_code == 409 and "schema version" in r.text
        assert nba(client, keys["campaign"], keys["own"][0]).json()["model_version"].endswith("/1")
        assert 'nba_reloads_total{result="refused"}' in client.get("/metrics").text
        # NaN scores are refused too.
        meta_file.write_text(saved)
        emb = dict(np.load(b.path / "embeddings.npz"))
        emb_saved = {k: v.copy() for k, v in emb.items()}
        emb["users"][0, 0] = np.nan
        np.savez(b.path / "embeddings.npz", **emb)
        r = client.post("/v1/admin/reload", headers=H(keys["admin"]))
        assert r.status_code == 409 and "NaN" in r.text
        # A truncated download (BadZipFile) is a refusal too, with a hint to fetch it again.
        raw = (b.path / "embeddings.npz").read_bytes()
        (b.path / "embeddings.npz").write_bytes(raw[:1000])
        r = client.post("/v1/admin/reload", headers=H(keys["admin"]))
        assert r.status_code == 409 and "fetch it again" in r.text
        np.savez(b.path / "embeddings.npz", **emb_saved)
    finally:
        meta_file.write_text(saved)
        registry.promote(home, 1)
        client.post("/v1/admin/reload", headers=H(keys["admin"]))


def test_the_poller_follows_the_champion_alias(home, keys):
    """Without any admin call, a promotion is picked up within a poll interval."""
    import time as _time
    fast = SETTINGS.model_copy(update={"reload_poll_seconds": 0.2})
    with TestClient(create_app(home, fast, clock=CLOCK)) as c:
        assert c.get("/v1/model", headers=H(keys["campaign"])).json()["model_version"] == 1
        try:
            registry.promote(home, 2)
            deadline = _time.monotonic() + 30
            while c.get("/v1/model", headers=H(keys["campaign"])).json()["model_version"] != 2:
                assert _time.monotonic() < deadline, "the poller did not reload"
                _time.sleep(0.1)
            assert nba(c, keys["campaign"], keys["own"][0]).json()["model_version"].endswith("/2")
        finally:
            registry.promote(home, 1)


def test_the_replayed_clock_is_one_clock_for_all_workers(monkeypatch):
    """``$NBA_SERVE_CLOCK`` with the anchor ``nba serve`` pins (clock_env): processes started at different
    moments read the same instant, so a decision of one worker is never stamped after the outcome another
    recorded for it (the CI failure of 2026-12-01); bad values name the variable."""
    import time as _time

    from apps.api.app import CLOCK_ANCHOR_ENV, CLOCK_ENV, clock_env, clock_from_env
    from nba.errors import ConfigError

    NOON = CLOCK()

    monkeypatch.delenv(CLOCK_ANCHOR_ENV, raising=False)
    monkeypatch.delenv(CLOCK_ENV, raising=False)
    assert clock_env() == {} and clock_from_env() is None
    monkeypatch.setenv(CLOCK_ENV, NOON.isoformat())
    env = clock_env()
    assert env[CLOCK_ENV] == NOON.isoformat() and float(env[CLOCK_ANCHOR_ENV]) <= _time.time()
    monkeypatch.setenv(CLOCK_ANCHOR_ENV, env[CLOCK_ANCHOR_ENV])
    assert clock_env() == env  # an anchor already set is kept (workers of workers)
    first = clock_from_env()
    _time.sleep(0.05)
    second = clock_from_env()  # a worker started later
    a, b = first(), second()
    assert abs((b - a).total_seconds()) < 0.02
    assert NOON <= a < NOON + timedelta(minutes=1) and a.tzinfo is not None
    monkeypatch.setenv(CLOCK_ANCHOR_ENV, "soon")
    with pytest.raises(ConfigError, match=CLOCK_ANCHOR_ENV):
        clock_from_env()
    monkeypatch.setenv(CLOCK_ANCHOR_ENV, env[CLOCK_ANCHOR_ENV])
    monkeypatch.setenv(CLOCK_ENV, "2026-06-01T12:00:00")  # no offset
    with pytest.raises(ConfigError, match=CLOCK_ENV):
        clock_from_env()


def test_answers_follow_the_online_store_when_it_moves_before_a_reload(home, tmp_path):
    """The day's scores are computed when a model loads; if the online store publishes new rows before
    the next reload, requests answer from the new rows (the whole engine on them), with their hash."""
    import sqlite3

    from feature_store.ledger import Ledger
    from feature_store.online import SQLiteOnlineStore
    from nba.decision import documents, feature_hashes
    from serving.realtime import DecisionService

    copy = tmp_path / "online.sqlite"
    with sqlite3.connect(home.root / "online.sqlite") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    led = Ledger.open(home)
    svc = DecisionService(home, led, online_url=f"sqlite:///{copy}", clock=CLOCK)
    try:
        svc.reload()
        state = svc.state
        feats = features_at(home, AS_OF)
        ids = feats["customer_id"].tolist()[:300]
        _, before = svc.next_best_action(ids, record=False)
        acted = [r["customer_id"] for r in before if r["actions"]]
        assert len(acted) >= 2
        changed = feats.copy()
        gone = changed["customer_id"] == acted[0]
        for c in [c for c in changed.columns if c.startswith("consent_")]:
            changed.loc[gone, c] = False
        SQLiteOnlineStore(copy).publish(f"{AS_OF}@moved", list(changed.columns), documents(changed))

        st, after = svc.next_best_action(acted[:2], record=False)
        assert st is state  # not reloaded: the new rows went through the whole engine
        first, second = after
        assert first["actions"] == [] and first["policy_trace"]["consent"]
        assert first["feature_hash"] == feature_hashes(changed[gone])[0] != before[ids.index(acted[0])]["feature_hash"]
        assert second == before[ids.index(acted[1])]  # an unchanged row: the same answer on both paths
    finally:
        svc.close()
        led.close()
