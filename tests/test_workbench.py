"""The RM workbench (issue 16) through its HTTP interface: sign-in and sessions, CSRF, the RM's own book
only, the list and the client view, outcomes through the API's path, languages and the audit log.

The browser test (real Chromium) is tests/test_workbench_browser.py."""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, time, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from apps.api.app import create_app
from apps.api.security import KeyStore
from apps.api.settings import ServingSettings
from apps.workbench.i18n import LANGUAGES, catalog, negotiate, parse_accept_language
from apps.workbench.sessions import SESSION_COOKIE
from feature_store.ledger import Ledger, outcome_notes, outcomes
from feature_store.materialize import features_at
from serving.daily import read_day
from tests.conftest import AS_OF

NOON = datetime.combine(AS_OF, time(12), tzinfo=timezone.utc)
SETTINGS = ServingSettings(reload_poll_seconds=0, workbench_login_rate_limit="5/minute")


@pytest.fixture(scope="module")
def book(workbench_home):
    """(the RM with the most listed actions, their listed rows, another RM's listed rows)."""
    d = read_day(workbench_home, AS_OF)
    d = d[~d.control_group]
    rm = d.rm_id.value_counts().index[0]
    return rm, d[d.rm_id == rm], d[d.rm_id != rm]


@pytest.fixture(scope="module")
def keys(workbench_home, book):
    ks = KeyStore.open(workbench_home)
    rm = book[0]
    other_rm = book[2].rm_id.iloc[0]
    return {"rm": ks.create("rm", rm_id=rm, label="wb test")[1],
            "other_rm": ks.create("rm", rm_id=other_rm, label="wb test other")[1],
            "campaign": ks.create("campaign", label="wb test campaign")[1],
            "revocable": ks.create("rm", rm_id=rm, label="wb test revocable"), "store": ks}


@pytest.fixture(scope="module")
def app(workbench_home):
    return create_app(workbench_home, SETTINGS, clock=lambda: NOON, poll=False)


@pytest.fixture()
def client(app):
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def _form_csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def sign_in(c: TestClient, key: str, **headers) -> None:
    page = c.get("/login", headers=headers)
    assert page.status_code == 200
    r = c.post("/login", data={"key": key, "csrf": _form_csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/", r.text[:500]


def test_pages_need_a_session_and_the_cookie_is_locked_down(client, keys):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/clients/C1/charts/balance.svg").status_code == 401
    page = client.get("/login")
    assert 'lang="en"' in page.text and 'type="password"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    r = client.post("/login", data={"key": keys["rm"], "csrf": _form_csrf(page.text)}, follow_redirects=False)
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert keys["rm"] not in cookie  # the key is exchanged, never stored in the browser


@pytest.mark.parametrize("case", ["no_csrf", "bad_key", "campaign_key"])
def test_refused_sign_ins(client, keys, case):
    page = client.get("/login")
    data = {"key": keys["rm"], "csrf": _form_csrf(page.text)}
    if case == "no_csrf":
        data["csrf"] = "forged"
    elif case == "bad_key":
        data["key"] = keys["rm"][:-3] + "xyz"
    else:
        data["key"] = keys["campaign"]
    r = client.post("/login", data=data, follow_redirects=False)
    assert r.status_code == {"no_csrf": 400, "bad_key": 401, "campaign_key": 403}[case]
    assert 'role="alert"' in r.text and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_sign_in_attempts_are_rate_limited(app, keys):
    with TestClient(app, base_url="http://testserver", client=("10.9.8.7", 5000)) as c:
        codes = []
        for _ in range(7):
            page = c.get("/login")
            codes.append(c.post("/login", data={"key": "nba_000000000000_wrong", "csrf": _form_csrf(page.text)},
                                follow_redirects=False).status_code)
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
        # A valid RM key still signs in from that address: a flood of bad keys locks nobody out.
        sign_in(c, keys["rm"])
        assert c.get("/").status_code == 200


def test_the_list_holds_the_rms_book_only_with_filters(client, keys, book):
    rm, mine, others = book
    sign_in(client, keys["rm"])
    page = client.get("/")
    assert page.status_code == 200
    shown = set(re.findall(r'href="/clients/([^"]+)"', page.text))
    assert shown == set(mine.customer_id)
    assert not shown & set(others.customer_id)
    assert f"{len(mine)} actions" in page.text
    fam = mine.action_family.value_counts().index[0]
    filtered = client.get(f"/?family={fam}")
    ids = set(re.findall(r'href="/clients/([^"]+)"', filtered.text))
    assert ids == set(mine[mine.action_family == fam].customer_id)
    digital = set(re.findall(r'href="/clients/([^"]+)"', client.get("/?kind=digital").text))
    assert digital == set(mine[~mine.in_person.astype(bool)].customer_id)
    assert client.get("/?day=2001-01-01").status_code == 404
    assert client.get("/?day=nonsense").status_code == 404


def test_another_rms_client_answers_as_an_unknown_client(client, keys, book):
    rm, mine, others = book
    sign_in(client, keys["rm"])
    theirs = others.customer_id.iloc[0]
    own = client.get(f"/clients/{mine.customer_id.iloc[0]}")
    assert own.status_code == 200 and mine.customer_id.iloc[0] in own.text
    a, b = client.get(f"/clients/{theirs}"), client.get("/clients/NO-SUCH-CLIENT")
    assert a.status_code == b.status_code == 404
    assert a.text.replace(theirs, "X") == b.text.replace("NO-SUCH-CLIENT", "X")
    assert theirs not in a.text.replace(f"/clients/{theirs}?", "")  # only the address bar's own URL
    for name in ("balance", "state", "contacts"):
        assert client.get(f"/clients/{theirs}/charts/{name}.svg").status_code == 404
    # and their decisions cannot be given an outcome either
    page = client.get("/")
    r = client.post("/outcomes", data={"decision_id": others.decision_id.iloc[0], "outcome": "accepted",
                                       "csrf": _form_csrf(page.text), "idem": "abcdefgh1"}, follow_redirects=False)
    assert r.status_code == 404


def test_the_client_view_shows_state_evidence_products_and_charts(client, keys, book, workbench_home):
    rm, mine, _ = book
    cid = mine.customer_id.iloc[0]
    sign_in(client, keys["rm"])
    page = client.get(f"/clients/{cid}")
    text = page.text
    for section in ("Lifecycle stage", "Relationship health", "Churn risk (90 days)", "Mood of recent contacts",
                    "Products held", "Recent interactions", "Complaints", "Past actions and outcomes",
                    "Care moments coming up"):
        assert section in text, section
    assert "Rule:" in text  # each state with its evidence
    for name in ("balance", "state", "contacts"):
        assert f'/clients/{cid}/charts/{name}.svg' in text
        svg = client.get(f"/clients/{cid}/charts/{name}.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.content.lstrip().startswith(b"<?xml") and b"<svg" in svg.content
    assert re.search(r'<img [^>]*alt="[^"]+"', text)  # every chart has a text alternative


def test_an_outcome_from_the_form_is_recorded_once_and_shown(client, keys, book, workbench_home):
    rm, mine, _ = book
    row = mine.iloc[1]
    sign_in(client, keys["rm"])
    page = client.get("/")
    csrf = _form_csrf(page.text)
    form = {"decision_id": row.decision_id, "outcome": "declined", "reason": "bad_timing",
            "note": "Call again  after the holidays", "csrf": csrf, "idem": "formABCDEF1", "back": "list?"}
    forged = client.post("/outcomes", data={**form, "csrf": "nope"}, follow_redirects=False)
    assert forged.status_code == 400
    first = client.post("/outcomes", data=form, follow_redirects=False)
    again = client.post("/outcomes", data=form, follow_redirects=False)  # a double click
    assert first.status_code == again.status_code == 303
    assert first.headers["location"].startswith("/?recorded=")
    with Ledger.open(workbench_home) as ledger:
        got = ledger.outcomes_of([row.decision_id])[row.decision_id]
        with ledger.engine.connect() as c:
            n_notes = c.execute(sa.select(sa.func.count()).select_from(outcome_notes)).scalar_one()
            n = c.execute(sa.select(sa.func.count()).select_from(outcomes)
                          .where(outcomes.c.decision_id == row.decision_id)).scalar_one()
    assert n == 1 and n_notes >= 1
    assert got[0]["outcome"] == "declined" and got[0]["reason"] == "bad_timing"
    assert got[0]["note"] == "Call again after the holidays"
    listed = client.get("/?status=done")
    assert row.customer_id in listed.text and "Call again after the holidays" in listed.text
    view = client.get(f"/clients/{row.customer_id}")
    assert "Call again after the holidays" in view.text and "Not now" in view.text


def test_the_api_takes_a_note_too(client, keys, book, workbench_home):
    rm, mine, _ = book
    row = mine.iloc[2]
    r = client.post("/v1/outcomes", headers={"X-API-Key": keys["rm"], "Idempotency-Key": "api-note-1"},
                    json={"decision_id": row.decision_id, "outcome": "reached", "note": "Left a message"})
    assert r.status_code == 200, r.text
    with Ledger.open(workbench_home) as ledger:
        assert ledger.outcomes_of([row.decision_id])[row.decision_id][-1]["note"] == "Left a message"
    bad = client.post("/v1/outcomes", headers={"X-API-Key": keys["rm"], "Idempotency-Key": "api-note-2"},
                      json={"decision_id": row.decision_id, "outcome": "reached", "note": "x" * 501})
    assert bad.status_code == 422


def test_revoking_the_key_ends_its_sessions_and_sign_out_ends_one(client, keys):
    principal, key = keys["revocable"]
    sign_in(client, key)
    assert client.get("/").status_code == 200
    keys["store"].revoke(principal.key_id)
    assert client.get("/", follow_redirects=False).status_code == 303
    sign_in(client, keys["rm"])
    page = client.get("/")
    assert client.post("/logout", data={"csrf": "forged"}).status_code == 400
    r = client.post("/logout", data={"csrf": _form_csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_languages_from_the_query_the_cookie_or_the_browser(client, keys):
    sign_in(client, keys["rm"])
    zh = client.get("/?lang=zh")
    assert 'lang="zh-Hans"' in zh.text and "下一最佳行动" in zh.text
    assert 'lang="zh-Hans"' in client.get("/").text  # remembered in a cookie
    client.cookies.delete("nba_lang")
    assert 'lang="en"' in client.get("/").text
    assert 'lang="zh-Hans"' in client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}).text
    assert 'lang="en"' in client.get("/", headers={"Accept-Language": "fr-FR, en;q=0.3"}).text
    assert parse_accept_language("en;q=0.2, zh-TW;q=0.8, *;q=0.1, de;q=0") == ["zh", "en"]
    assert negotiate("xx", None, "zh") == "zh" and negotiate(None, "en", "zh") == "en"


def test_catalogs_hold_the_same_messages_and_every_message_is_used_with_its_fields():
    en = catalog("en")
    for lang in LANGUAGES:
        other = catalog(lang)
        assert set(other) == set(en), f"{lang}: missing {sorted(set(en) - set(other))[:5]}"
        for k, v in other.items():
            assert set(re.findall(r"{(\w+)}", v)) == set(re.findall(r"{(\w+)}", en[k])), (lang, k)
            assert v.strip(), (lang, k)


def test_reads_are_in_the_audit_log(client, keys, book, workbench_home):
    rm, mine, _ = book
    cid = mine.customer_id.iloc[3]
    sign_in(client, keys["rm"])
    client.get(f"/clients/{cid}")
    store = keys["store"]
    from apps.api.security import AuditLog
    rows = AuditLog(store.engine).rows(customer_id=cid)
    assert {"workbench/client", "workbench/list"} <= {r["endpoint"] for r in rows}


def test_the_workbench_leaves_the_api_json(client, keys):
    r = client.get("/v1/model")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/json")
    assert client.get("/no-such-page", headers={"Accept": "text/html"}).status_code == 404
    assert client.get("/no-such-page").headers["content-type"].startswith("application/json")


def test_past_actions_include_the_banks_own_outcome_history(client, keys, book, workbench_home):
    """The store's action_outcomes (the bank's history before the engine) appear beside the ledger's."""
    from feature_store.store import TableStore
    rm, mine, _ = book
    hist = TableStore(workbench_home.store).require_current().read("action_outcomes").to_pandas()
    start = datetime.combine(AS_OF, time(0)) - timedelta(days=170)
    recent = hist[(hist.decided_at >= start) & (hist.outcome_at < datetime.combine(AS_OF, time(0)))]
    feats = features_at(workbench_home, AS_OF)
    own = set(feats.loc[feats.rm_id == rm, "customer_id"])
    cand = recent[recent.customer_id.isin(own)]
    assert len(cand), "the synthetic bank has recent outcomes for the RM's clients"
    row = cand.sort_values("decided_at").iloc[-1]
    sign_in(client, keys["rm"])
    page = client.get(f"/clients/{row.customer_id}").text
    past = page.split('id="h-past"', 1)[1].split("</section>", 1)[0]
    assert "Bank records" in past and row.decided_at.strftime("%Y-%m-%d") in past
    assert {"shown": "Shown", "reached": "Reached", "accepted": "Accepted", "declined": "Declined",
            "not_reachable": "Not reachable"}[row.outcome] in past


def test_missing_values_show_as_unknown_not_zero(client, keys, book, workbench_home):
    rm, _, _ = book
    feats = features_at(workbench_home, AS_OF)
    silent = feats[(feats.rm_id == rm) & feats.days_since_last_contact.isna()]
    if silent.empty:  # another RM's book has one: sign that RM in
        silent = feats[feats.days_since_last_contact.isna()]
        rm = silent.rm_id.iloc[0]
    assert len(silent), "the synthetic bank has clients never contacted"
    key = KeyStore.open(workbench_home).create("rm", rm_id=rm, label="wb silent")[1]
    sign_in(client, key)
    page = client.get(f"/clients/{silent.customer_id.iloc[0]}").text
    card = page.split("Last contact</h3>", 1)[1].split("</div>", 1)[0]
    assert "days ago" not in card and "—" in card


def test_odd_requests_get_pages_not_json_or_foreign_links(client, keys, book, workbench_home):
    rm, mine, _ = book
    html = {"Accept": "text/html"}
    r = client.get("//evil.example/x", headers=html)
    assert r.status_code == 404 and 'href="//' not in r.text
    sign_in(client, keys["rm"])
    page = client.get("/")
    assert "Accept-Language" in page.headers["vary"]
    bad = client.post("/outcomes", data={"decision_id": mine.decision_id.iloc[0], "outcome": "reached",
                                         "csrf": _form_csrf(page.text)}, headers=html)  # no idem
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("text/html")
    assert 'lang="zh-Hans"' in client.get("/?lang=ZH").text
    # A note's bidirectional controls are dropped (they would reorder what the next reader sees).
    row = mine.iloc[4]
    client.post("/outcomes", data={"decision_id": row.decision_id, "outcome": "reached", "csrf": _form_csrf(page.text),
                                   "idem": "bidi-test-1", "note": "pay \u202eLTR\u202c now"})
    with Ledger.open(workbench_home) as ledger:
        assert ledger.outcomes_of([row.decision_id])[row.decision_id][-1]["note"] == "pay LTR now"


def test_a_server_without_a_model_answers_with_a_page(workbench_home, keys, book):
    app = create_app(workbench_home, SETTINGS, model=99, clock=lambda: NOON, poll=False)
    with TestClient(app, base_url="http://testserver") as c:
        sign_in(c, keys["rm"])
        r = c.get(f"/clients/{book[1].customer_id.iloc[0]}", headers={"Accept": "text/html"})
        assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
        assert "tracking" not in r.text and "sqlite" not in r.text


def test_talking_points_are_said_in_chinese_from_the_engines_data(client, keys, book):
    """Every talking point code of the engine has a sentence in each catalog with its fields, and the
    Chinese list shows none of the engine's English sentences."""
    from nba.decision import TALKING_POINT_CODES
    for lang in LANGUAGES:
        cat = catalog(lang)
        for code, fields in TALKING_POINT_CODES.items():
            assert f"tp.{code}" in cat, (lang, code)
            want = {"offer" if f == "action_id" else f for f in fields}
            assert set(re.findall(r"{(\w+)}", cat[f"tp.{code}"])) == want, (lang, code)
    rm, mine, _ = book
    said = {code for data in mine.talking_point_data for code, _ in json.loads(data)}
    assert said <= set(TALKING_POINT_CODES) and len(said) >= 3
    sign_in(client, keys["rm"])
    zh = client.get("/?lang=zh").text
    english = {p for tp in mine.talking_points for p in tp.split(" || ")}
    assert not [p for p in english if html.escape(p, quote=False) in zh]
    assert "关系健康度" in zh


def test_a_list_made_ahead_for_a_later_day_is_not_todays(client, keys, book, workbench_home):
    """The default list is the newest not after the bank's today (the API clock); a later day's list can be
    read but takes no outcomes yet."""
    import shutil
    from datetime import timedelta as _td
    ahead = AS_OF + _td(days=3)
    folder = workbench_home.daily / ahead.isoformat()
    shutil.copytree(workbench_home.daily / AS_OF.isoformat(), folder, symlinks=True)
    try:
        sign_in(client, keys["rm"])
        page = client.get("/").text
        assert f"{AS_OF.isoformat()}:" in page and 'class="outcome"' in page
        later = client.get(f"/?day={ahead.isoformat()}").text
        assert "Not yet" in later and 'class="outcome"' not in later
        assert "Outcome recorded" not in client.get("/?recorded=Nbogus").text
    finally:
        shutil.rmtree(folder)


def test_an_rm_key_names_an_rm_of_the_store(workbench_home, book, monkeypatch):
    """A typo in `nba keys create --rm` would make a key that sees no client: refused, unless --any-rm."""
    from typer.testing import CliRunner

    from apps.api.keys_cli import keys_app
    monkeypatch.setenv("NBA_HOME", str(workbench_home.root))
    monkeypatch.delenv("NBA_LEDGER_URL", raising=False)
    runner = CliRunner()
    bad = runner.invoke(keys_app, ["create", "--scope", "rm", "--rm", "RM-TYPO"])
    assert bad.exit_code == 2 and "unknown RM 'RM-TYPO'" in bad.stderr and not bad.stdout.strip()
    assert runner.invoke(keys_app, ["create", "--scope", "rm", "--rm", "RM-TYPO", "--any-rm"]).exit_code == 0
    ok = runner.invoke(keys_app, ["create", "--scope", "rm", "--rm", book[0]])
    assert ok.exit_code == 0 and ok.stdout.startswith("nba_")
