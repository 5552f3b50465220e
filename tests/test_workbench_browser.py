"""The RM workbench in a real headless Chromium (Debian's package, driven by Playwright; issue 16).

An RM signs in, sees the list, opens a client, declines an action with a reason and a note, sees it on
the list, and the decision engine then holds that family back (the API's next decision, and the next
day's daily run: cooldown). Editing the URL to another RM's client gives the unknown-client page.
Screenshots of the list and the client view at laptop and tablet width go to ``$NBA_SCREENSHOTS`` (a
folder; default the test's tmp dir). Accessibility basics are checked in the browser: a language on the
page, a label for every form control, WCAG AA contrast for text."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time as _time
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import uvicorn

from apps.api.app import create_app
from apps.api.security import KeyStore
from apps.api.settings import ServingSettings
from feature_store.ledger import Ledger
from serving.daily import read_day, run_daily
from tests.conftest import AS_OF

NOON = datetime.combine(AS_OF, time(12), tzinfo=timezone.utc)
LAPTOP, TABLET = {"width": 1280, "height": 800}, {"width": 768, "height": 1024}

# WCAG 2.x contrast of every element that draws text: its color against the first opaque background up
# its ancestors (white when none). Large text (>= 24px, or >= 18.66px bold) needs 3:1, other text 4.5:1.
CONTRAST_JS = r"""
() => {
  const parse = c => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(',').map(x => parseFloat(x)); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = c => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const bg = el => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c.a > 0.99) return c; } return {r: 255, g: 255, b: 255, a: 1}; };
  const bad = []; let checked = 0;
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const s = getComputedStyle(el);
    if (s.visibility === 'hidden' || s.display === 'none' || el.getClientRects().length === 0) continue;
    const fg = parse(s.color), b = bg(el);
    const l1 = lum(fg), l2 = lum(b), ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight) >= 700;
    const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    checked++;
    if (ratio < need) bad.push({tag: el.tagName, text: el.textContent.trim().slice(0, 40), ratio: ratio.toFixed(2), need});
  }
  return {checked, bad};
}
"""

LABELS_JS = r"""
() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden')
  .filter(e => !(e.labels && e.labels.length && [...e.labels].some(l => l.textContent.trim()))
               && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
  .map(e => e.outerHTML.slice(0, 120))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(workbench_home):
    """The API app with the workbench on uvicorn in a thread (its own event loop), on a free port."""
    app = create_app(workbench_home, ServingSettings(reload_poll_seconds=0), clock=lambda: NOON, poll=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = _time.monotonic() + 120
    while not server.started:
        assert _time.monotonic() < deadline, "uvicorn did not start"
        _time.sleep(0.05)
    base = f"http://127.0.0.1:{server.config.port}"
    while httpx.get(base + "/readyz").status_code != 200:
        assert _time.monotonic() < deadline, "the app did not become ready"
        _time.sleep(0.1)
    yield base
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def people(workbench_home):
    d = read_day(workbench_home, AS_OF)
    d = d[~d.control_group]
    rm = d.rm_id.value_counts().index[0]
    ks = KeyStore.open(workbench_home)
    return {"rm": rm, "mine": d[d.rm_id == rm], "theirs": d[d.rm_id != rm],
            "key": ks.create("rm", rm_id=rm, label="browser test")[1],
            "campaign": ks.create("campaign", label="browser test campaign")[1]}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("NBA_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_accessibility(page, where: str) -> None:
    assert page.evaluate("document.documentElement.lang") in ("en", "zh-Hans"), where
    unlabeled = page.evaluate(LABELS_JS)
    assert not unlabeled, f"{where}: form controls without a label: {unlabeled[:3]}"
    contrast = page.evaluate(CONTRAST_JS)
    assert contrast["checked"] >= 5, where
    assert not contrast["bad"], f"{where}: text below WCAG AA contrast: {contrast['bad'][:5]}"


def _family_cooldowns(base: str, campaign: str, cid: str, family_actions: list[str]) -> dict[str, str | None]:
    """Per action of a family, the rule that removes it for ``cid`` in the API's decision now."""
    r = httpx.post(base + "/v1/score", headers={"X-API-Key": campaign},
                   json={"customer_ids": [cid], "candidates": family_actions}, timeout=60)
    r.raise_for_status()
    return {s["action_id"]: s["removed_by"] for s in r.json()["results"][0]["scores"]}


def test_an_rm_works_the_list_in_a_browser(browser, served, people, shots, workbench_home):
    base, mine = served, people["mine"]
    page = browser.new_page(viewport=LAPTOP)

    # Sign in.
    page.goto(base + "/")
    assert page.url == base + "/login"
    _check_accessibility(page, "sign-in page")
    page.get_by_label("Your RM key").fill(people["key"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")

    # The list: the RM's own book, every listed action.
    assert page.get_by_role("heading", level=1).inner_text() == f"Next best actions of {people['rm']}"
    rows = page.locator("table.actions tbody tr")
    assert rows.count() == len(mine)
    _check_accessibility(page, "list")
    page.screenshot(path=str(shots / "workbench-list-laptop.png"))
    page.set_viewport_size(TABLET)
    page.screenshot(path=str(shots / "workbench-list-tablet.png"), full_page=False)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), "no sideways scroll"
    page.set_viewport_size(LAPTOP)

    # Printing keeps the list and drops the forms.
    page.emulate_media(media="print")
    assert page.locator("form.outcome").first.is_hidden() and rows.first.is_visible()
    heads, cells = page.locator("table.actions thead th"), rows.first.locator("td")
    for k in range(6):  # each printed column under its heading
        h, c = heads.nth(k).bounding_box(), cells.nth(k).bounding_box()
        assert abs(h["x"] - c["x"]) < 2 and abs(h["width"] - c["width"]) < 2, (k, h, c)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(shots / "workbench-list-print.png"))
    page.emulate_media(media="screen")

    # Pick an action whose family has another action the engine would still allow for that client, so
    # that the decline's family cooldown shows in the next decision.
    assert httpx.get(base + "/readyz").json()["status"] == "ready"
    catalog = _catalog_actions(workbench_home)
    chosen = None
    for r in mine.itertuples():
        family = [a for a, fam in catalog if fam == r.action_family]
        before = _family_cooldowns(base, people["campaign"], r.customer_id, family)
        free = [a for a, rule in before.items()
                if a != r.action_id and rule in (None, "contact_cap", "one_per_day", "min_priority")]
        if free:
            chosen, before_rules, other = r, before, free[0]
            break
    assert chosen is not None, "no listed action with a second action of its family still open"

    # Open the client from the list.
    page.locator(f'tr#d-{chosen.decision_id} a[href^="/clients/"]').click()
    page.wait_for_url(re.compile(rf"/clients/{chosen.customer_id}$"))
    assert page.get_by_role("heading", level=1).inner_text() == f"Client {chosen.customer_id}"
    for img in page.locator("figure img").all():
        assert img.evaluate("i => i.complete && i.naturalWidth > 0"), "a chart did not load"
    _check_accessibility(page, "client view")
    page.screenshot(path=str(shots / "workbench-client-laptop.png"), full_page=True)
    page.set_viewport_size(TABLET)
    page.screenshot(path=str(shots / "workbench-client-tablet.png"), full_page=True)
    page.set_viewport_size(LAPTOP)

    # Decline it with a reason and a note, from the client view.
    form = page.locator(f"tr#d-{chosen.decision_id} form.outcome")
    form.get_by_label("If declined, why").select_option("bad_timing")
    form.get_by_label("Note").fill("Wants to talk after the summer")
    form.get_by_role("button", name="Declined").click()
    page.wait_for_url(re.compile(r"recorded="))
    assert "Outcome recorded" in page.get_by_role("status").inner_text()
    row = page.locator(f"tr#d-{chosen.decision_id}")
    assert "Done" in row.inner_text() and "Wants to talk after the summer" in row.inner_text()

    # ... and on the list at once.
    page.goto(base + "/?status=done")
    done = page.locator(f"tr#d-{chosen.decision_id}")
    assert done.count() == 1 and "Declined: Not now" in done.inner_text()

    # The engine's next decision for that client holds the family back (decline cooldown).
    after = _family_cooldowns(base, people["campaign"], chosen.customer_id, list(before_rules))
    assert before_rules[other] != "cooldown" and after[other] == "cooldown", (before_rules, after)
    assert after[chosen.action_id] == "cooldown"

    # Another RM's client by URL: the unknown-client page.
    theirs = people["theirs"].customer_id.iloc[0]
    resp = page.goto(base + f"/clients/{theirs}")
    assert resp.status == 404 and page.get_by_role("heading", level=1).inner_text() == "Client not found"
    resp = page.goto(base + "/clients/NO-SUCH-CLIENT")
    assert resp.status == 404 and page.get_by_role("heading", level=1).inner_text() == "Client not found"

    # The Chinese catalog, chosen by the link in the header.
    page.goto(base + "/")
    page.get_by_role("link", name="中文").click()
    assert page.evaluate("document.documentElement.lang") == "zh-Hans"
    assert "下一最佳行动" in page.get_by_role("heading", level=1).inner_text()
    _check_accessibility(page, "list (zh)")
    page.close()

    # The next day's daily run reads the decline from the ledger: that family is in cooldown for the client.
    with Ledger.open(workbench_home) as ledger:
        hist = ledger.history(AS_OF + timedelta(days=1), [chosen.customer_id], known_before=AS_OF + timedelta(days=1))
    assert "declined" in set(hist.loc[hist.action_id == chosen.action_id, "outcome"])
    run_daily(workbench_home, AS_OF + timedelta(days=1), force=True)
    nxt = read_day(workbench_home, AS_OF + timedelta(days=1))
    theirs_next = nxt[nxt.customer_id == chosen.customer_id]
    assert chosen.action_family not in set(theirs_next.action_family)
    for trace in theirs_next.policy_trace:
        assert chosen.action_id in json.loads(trace)["cooldown"]

    # ... and `nba outcomes export` makes it a label of the next training (the store's action_outcomes).
    from feature_store.outcomes import decision_outcomes
    from feature_store.store import TableStore
    with Ledger.open(workbench_home) as ledger:
        version = ledger.export_outcomes(TableStore(workbench_home.store))
    labels = decision_outcomes(version, AS_OF - timedelta(days=1), AS_OF + timedelta(days=2))
    assert "declined" in set(labels.loc[labels.decision_id == chosen.decision_id, "outcome"])


def _catalog_actions(home) -> list[tuple[str, str]]:
    """(action_id, family) of the served catalog."""
    from feature_store.store import TableStore
    from nba.catalog import load_catalog

    products = TableStore(home.store).require_current().read("products").to_pandas()
    return [(a.action_id, a.family) for a in load_catalog(products).actions]
