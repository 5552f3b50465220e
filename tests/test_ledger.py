"""The contact ledger (issue 15), on SQLite and on a real PostgreSQL: decisions recorded once, outcomes
idempotent per caller (also when the same key arrives from 8 threads at once), named errors, what counts
as a contact and when (point in time), the daily list's replacement, the export to the store, and
acknowledged outcomes that survive a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from feature_store.ingest import ingest
from feature_store.ledger import (
    IdempotencyConflict,
    Ledger,
    LedgerError,
    UnknownDecision,
    decisions,
    outcomes,
)
from feature_store.outcomes import decision_outcomes, record_outcomes
from feature_store.store import TableStore
from nba.decision import HISTORY_COLUMNS
from nba.errors import DataValidationError

D = date(2026, 6, 2)  # after the test bank's data (it ends 2026-05-31), so that its outcomes can be exported
NOW = datetime(2026, 6, 5, 12, 0)  # naive: UTC
SHANGHAI = "Asia/Shanghai"  # UTC+8, no daylight saving: day D starts at D-1 16:00 UTC
BEGAN = datetime(2026, 6, 1, 16, 0)  # D began, in Shanghai


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path) -> str:
    """Each ledger test runs on SQLite (a fresh file) and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    import psycopg

    base = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"{base.rsplit('/', 1)[0]}/{name}"


@pytest.fixture()
def ledger(ledger_url):
    led = Ledger(ledger_url, time_zone="UTC")
    yield led
    led.close()


def dec(i: int | str, customer: str = "C1", day: date = D, action: str = "offer:CARD-GOLD",
        family: str = "product_offer", control: bool = False, **kw) -> dict:
    return {"decision_id": f"N{i}", "date": day, "customer_id": customer, "action_id": action,
            "action_family": family, "product_id": None, "channel": "email", "control_group": control,
            "model_version": "nba/1", **kw}


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute)


def count(led: Ledger, table: sa.Table, *where) -> int:
    with led.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()


# -- decisions ---------------------------------------------------------------------------------------


def test_decisions_are_recorded_once_and_checked(ledger):
    assert ledger.record_decisions([dec(1), dec(2, "C2")], source="api", decided_at=at(D, 10)) == 2
    assert ledger.record_decisions([dec(1, channel="sms"), dec(3)], source="api", decided_at=at(D, 11)) == 1
    d1 = ledger.decision("N1")
    assert d1 == {"decision_id": "N1", "day": D, "customer_id": "C1", "action_id": "offer:CARD-GOLD",
                  "action_family": "product_offer", "product_id": None, "channel": "email", "source": "api",
                  "control_group": False, "model_version": "nba/1", "decided_at": at(D, 10), "contact": False}
    assert ledger.decision("N404") is None
    # The daily's rows: contact unless control, decided when their day begins; a DataFrame works too.
    frame = pd.DataFrame([dec(4, control=True), dec(5, product_id="P1", date=str(D))])
    assert ledger.record_decisions(frame, source="daily") == 2
    assert (ledger.decision("N4")["contact"], ledger.decision("N5")["contact"]) == (False, True)
    assert ledger.decision("N5")["decided_at"] == at(D, 0) and ledger.decision("N5")["product_id"] == "P1"
    # A tz-aware time is stored as the UTC instant.
    ledger.record_decisions(dec(6), source="api", decided_at=datetime(2026, 6, 2, 18, 30, tzinfo=ZoneInfo(SHANGHAI)))
    assert ledger.decision("N6")["decided_at"] == at(D, 10, 30)
    for bad, field in [({"action_family": "spam"}, "action_family"), ({"channel": "pigeon"}, "channel"),
                       ({"date": "2026-13-01"}, "day"), ({"customer_id": None}, "customer_id"),
                       ({"control_group": "yes"}, "control_group")]:
        with pytest.raises(LedgerError) as e:
            ledger.record_decisions([dec(7), dec(8, **bad)], source="api")
        assert e.value.field == field and "decision row 2" in str(e.value)
    without = {k: v for k, v in dec(9).items() if k != "model_version"}
    with pytest.raises(LedgerError, match="model_version: missing"):
        ledger.record_decisions([without], source="api")
    assert ledger.decision("N7") is None, "nothing of a refused batch is recorded"


# -- outcomes ----------------------------------------------------------------------------------------


def test_outcomes_are_idempotent_per_caller(ledger):
    ledger.record_decisions(dec(1), source="api", decided_at=at(D, 9))
    row, replayed = ledger.record_outcome("N1", "shown", idempotency_key="k1", key_id="K", outcome_at=at(D, 10),
                                          request_hash="h1", now=NOW)
    assert not replayed and row["outcome"] == "shown" and row["outcome_at"] == at(D, 10)
    assert row["recorded_at"] == NOW and row["customer_id"] == "C1" and row["decided_at"] == at(D, 9)
    assert row["exported_version"] is None and row["source"] == "api"
    again, replayed = ledger.record_outcome("N1", "shown", idempotency_key="k1", key_id="K", outcome_at=at(D, 10),
                                            request_hash="h1", now=NOW + timedelta(hours=1))
    assert replayed and again == row, "a retry is answered from the stored row"
    with pytest.raises(IdempotencyConflict, match="'k1' was already used"):
        ledger.record_outcome("N1", "accepted", idempotency_key="k1", key_id="K", request_hash="h2", now=NOW)
    # Keys are per caller: another caller's k1 is another outcome.
    other, replayed = ledger.record_outcome("N1", "shown", idempotency_key="k1", key_id="K2", outcome_at=at(D, 10),
                                            request_hash="h1", now=NOW)
    assert not replayed and other["id"] != row["id"]
    # Without a request hash, the outcome's own fields are the request.
    first, _ = ledger.record_outcome("N1", "declined", idempotency_key="k2", reason="too expensive", now=NOW)
    second, replayed = ledger.record_outcome("N1", "declined", idempotency_key="k2", reason="too expensive",
                                             now=NOW + timedelta(minutes=3))
    assert replayed and second == first and first["outcome_at"] == NOW and first["reason"] == "too expensive"
    with pytest.raises(IdempotencyConflict):
        ledger.record_outcome("N1", "declined", idempotency_key="k2", reason="no need", now=NOW)
    assert count(ledger, outcomes) == 3


def test_notes_and_the_readers_of_a_clients_decisions(ledger):
    """A note is stored with its outcome in one transaction, is part of the default request hash, is
    checked, and comes back from outcomes_of and client_decisions (newest decision first)."""
    ledger.record_decisions([dec(1), dec(2), dec(3, "C2")], source="api", decided_at=at(D, 9))
    ledger.record_decisions([dec(4, day=D + timedelta(days=1))], source="api", decided_at=at(D + timedelta(days=1), 9))
    row, _ = ledger.record_outcome("N1", "declined", idempotency_key="n1", reason="no need",
                                   note="  Call back in June  ", now=NOW)
    assert row["note"] == "Call back in June"
    again, replayed = ledger.record_outcome("N1", "declined", idempotency_key="n1", reason="no need",
                                            note="Call back in June", now=NOW)
    assert replayed and again["note"] == "Call back in June"
    with pytest.raises(IdempotencyConflict):  # the same key with another note is another request
        ledger.record_outcome("N1", "declined", idempotency_key="n1", reason="no need", note="other", now=NOW)
    ledger.record_outcome("N1", "reached", idempotency_key="n2", outcome_at=at(D, 10), now=NOW)
    for bad in ("x" * 501, "bell\x07"):
        with pytest.raises(LedgerError, match="note"):
            ledger.record_outcome("N2", "reached", idempotency_key="bad", note=bad, now=NOW)
    assert count(ledger, outcomes, outcomes.c.decision_id == "N2") == 0, "nothing of a refused outcome is stored"
    got = ledger.outcomes_of(["N1", "N2", "N404"])
    assert set(got) == {"N1"} and [o["outcome"] for o in got["N1"]] == ["reached", "declined"]
    assert [o["note"] for o in got["N1"]] == [None, "Call back in June"]
    mine = ledger.client_decisions("C1", since=D)
    assert [d["decision_id"] for d in mine] == ["N4", "N1", "N2"]
    assert [o["outcome"] for o in mine[1]["outcomes"]] == ["reached", "declined"] and mine[2]["outcomes"] == []
    assert [d["decision_id"] for d in ledger.client_decisions("C1", since=D, until=D)] == ["N1", "N2"]
    assert ledger.client_decisions("C404", since=D) == []


@pytest.mark.parametrize("same_request", [True, False], ids=["same-request", "different-requests"])
def test_one_key_from_eight_threads_at_once_stores_one_row(ledger, same_request):
    ledger.record_decisions(dec(1), source="api", decided_at=at(D, 9))
    start = threading.Barrier(8)
    results: list = [None] * 8

    def send(i: int) -> None:
        start.wait()
        try:
            results[i] = ledger.record_outcome("N1", "accepted", idempotency_key="same", key_id="K",
                                               outcome_at=at(D, 10, i), request_hash="h" if same_request else f"h{i}",
                                               now=NOW)
        except Exception as e:  # noqa: BLE001 - collected and checked below
            results[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert count(ledger, outcomes) == 1
    with ledger.engine.connect() as c:
        stored = c.execute(sa.select(outcomes)).mappings().one()
    if same_request:
        assert all(isinstance(r, tuple) for r in results), results
        assert sorted(r[1] for r in results) == [False] + [True] * 7
        assert all(r[0] == {**dict(stored), "note": None} for r in results)  # no note given
    else:
        wins = [r for r in results if isinstance(r, tuple)]
        assert len(wins) == 1 and not wins[0][1] and wins[0][0] == {**dict(stored), "note": None}
        assert sum(isinstance(r, IdempotencyConflict) for r in results) == 7


def test_unknown_decisions_and_bad_outcomes_are_refused(ledger_url):
    led = Ledger(ledger_url, time_zone=SHANGHAI)  # day D begins at D-1 16:00 UTC
    try:
        began = BEGAN
        led.record_decisions(dec(1), source="api", decided_at=began + timedelta(hours=1))
        with pytest.raises(UnknownDecision, match="'N404'"):
            led.record_outcome("N404", "shown", idempotency_key="a", now=NOW)
        cases = [(dict(outcome="thrilled"), "outcome"),
                 (dict(outcome="shown", reason="busy"), "reason"),
                 (dict(outcome="shown", idempotency_key=""), "idempotency_key"),
                 (dict(outcome="shown", outcome_at=NOW + timedelta(minutes=6)), "outcome_at"),
                 (dict(outcome="shown", outcome_at=began - timedelta(minutes=1)), "outcome_at"),
                 (dict(outcome="shown", outcome_at=began + timedelta(minutes=30)), "outcome_at"),
                 (dict(outcome="shown", outcome_at=D), "outcome_at")]
        for kw, field in cases:
            kw = {"idempotency_key": "b", **kw}
            with pytest.raises(LedgerError) as e:
                led.record_outcome("N1", kw.pop("outcome"), now=NOW, **kw)
            assert e.value.field == field and str(e.value).startswith(field)
        assert "before the decision's day 2026-06-02 began" in str(
            pytest.raises(LedgerError, led.record_outcome, "N1", "shown", idempotency_key="c",
                          outcome_at=began - timedelta(seconds=1), now=NOW).value)
        assert count(led, outcomes) == 0
        # Within the allowed clock skew, and a tz-aware time converted to UTC.
        row, _ = led.record_outcome("N1", "shown", idempotency_key="d", outcome_at=NOW + timedelta(minutes=4), now=NOW)
        assert row["outcome_at"] == NOW + timedelta(minutes=4)
        row, _ = led.record_outcome("N1", "reached", idempotency_key="e", now=NOW,
                                    outcome_at=datetime(2026, 6, 2, 2, 0, tzinfo=ZoneInfo(SHANGHAI)))
        assert row["outcome_at"] == began + timedelta(hours=2)
    finally:
        led.close()


# -- what counts -------------------------------------------------------------------------------------


def test_history_counts_decisions_that_reached_the_client(ledger_url):
    led = Ledger(ledger_url, time_zone=SHANGHAI)
    try:
        began = BEGAN
        led.replace_daily(D, pd.DataFrame([dec("list", "C1"), dec("ctrl", "C2", control=True)]))
        led.record_decisions([dec("none", "C3"), dec("nr", "C4"), dec("shown", "C5"), dec("decl", "C6")],
                             source="api", decided_at=began + timedelta(hours=2))

        def out(d, o, hours, **kw):
            return led.record_outcome(f"N{d}", o, idempotency_key=f"{d}-{o}", outcome_at=began + timedelta(hours=hours),
                                      now=NOW, **kw)

        out("nr", "not_reachable", 3)
        out("shown", "shown", 25)  # D+1 01:00 in Shanghai, after D+1 began
        out("decl", "shown", 3)
        out("decl", "declined", 4, reason="not now")
        out("decl", "reached", 5)  # later, but the decline wins
        h = led.history(D + timedelta(days=1))
        assert list(h.columns) == list(HISTORY_COLUMNS)
        h = led.history(D + timedelta(days=1), decision_ids=True).set_index("decision_id")
        assert set(h.index) == {"Nlist", "Nctrl", "Nshown", "Ndecl"}, "no outcome or not reached: no contact"
        assert h.loc["Nctrl", "control_group"] and not h.loc["Nlist", "control_group"]
        assert h.loc["Nlist", "outcome"] is None and h.loc["Nlist", "outcome_date"] is None
        assert (h.loc["Ndecl", "outcome"], h.loc["Ndecl", "outcome_date"]) == ("declined", D)
        assert (h.loc["Nshown", "outcome"], h.loc["Nshown", "outcome_date"]) == ("shown", D + timedelta(days=1))
        assert (h["decided"] == D).all() and h.loc["Ndecl", "customer_id"] == "C6"
        # Point in time: as known when D+1 began (the show at 01:00 on D+1 was not).
        pit = led.history(D + timedelta(days=1), known_before=D + timedelta(days=1), decision_ids=True)
        assert set(pit.decision_id) == {"Nlist", "Nctrl", "Ndecl"}
        # ... and when D began, nothing of D was decided yet: the daily's re-run of D does not see its list.
        assert led.history(D, known_before=D).empty
        assert set(led.history(D, decision_ids=True).decision_id) == {"Nlist", "Nctrl", "Nshown", "Ndecl"}
        assert set(led.history(D, exclude_source_on_day="daily", decision_ids=True).decision_id) == {"Nshown", "Ndecl"}
        # One client's rows (the API's read), a window of days.
        one = led.history(D + timedelta(days=1), ["C6", "C3", "nobody"])
        assert len(one) == 1 and one.customer_id.iloc[0] == "C6"
        assert led.history(D, []).empty and list(led.history(D, []).columns) == list(HISTORY_COLUMNS)
        assert led.history(D + timedelta(days=6), days=5).empty and len(led.history(D + timedelta(days=5), days=5)) == 4
    finally:
        led.close()


def test_replace_daily_keeps_contacts_that_happened_and_marks_listed_api_decisions(ledger):
    ledger.record_decisions(dec("api", "C4"), source="api", decided_at=at(D, 1))
    first = pd.DataFrame([dec(1, "C1"), dec(2, "C2"), dec(3, "C3", control=True), dec("api", "C4")])
    ledger.replace_daily(D, first)
    ledger.replace_daily(D + timedelta(days=1), pd.DataFrame([dec(5, "C5", day=D + timedelta(days=1))]))
    assert [ledger.decision(f"N{i}")["contact"] for i in (1, 2, 3)] == [True, True, False]
    assert ledger.decision("N1")["decided_at"] == at(D, 0) and ledger.decision("N1")["source"] == "daily"
    shared = ledger.decision("Napi")
    assert shared["source"] == "api" and shared["contact"] and shared["decided_at"] == at(D, 1), \
        "the API's row is kept, and counts while the list holds it"
    ledger.record_outcome("N2", "reached", idempotency_key="r", outcome_at=at(D, 9), now=NOW)
    # A re-run: N2 and the API decision dropped from the list, N1 changed, N3 the same.
    ledger.replace_daily(D, pd.DataFrame([dec(1, "C1", channel="sms"), dec(3, "C3", control=True)]))
    assert ledger.decision("N1")["channel"] == "sms"
    assert ledger.decision("N2")["contact"], "reached: the contact happened and stays"
    assert not ledger.decision("Napi")["contact"] and ledger.decision("Napi")["source"] == "api"
    assert count(ledger, decisions, decisions.c.source == "daily", decisions.c.day == D) == 3
    with pytest.raises(LedgerError, match="is for 2026-06-03, not 2026-06-02"):
        ledger.replace_daily(D, pd.DataFrame([dec(1, "C1"), dec(9, day=D + timedelta(days=1))]))
    assert ledger.decision("N1")["channel"] == "sms", "nothing changed"
    ledger.replace_daily(D, pd.DataFrame([dec(1)]).iloc[:0])
    assert ledger.decision("N1") is None and ledger.decision("N2") is not None
    assert ledger.decision("N5") is not None, "other days are left alone"


# -- export ------------------------------------------------------------------------------------------


@pytest.fixture()
def loaded(bank, tmp_path) -> TableStore:
    store = TableStore(tmp_path / "store")
    ingest(bank, store, now=NOW)
    return store


def test_export_appends_pending_outcomes_as_one_version(ledger, loaded):
    v0 = loaded.require_current()
    cust = v0.read("customers").to_pandas()["customer_id"].tolist()
    product = v0.read("products").to_pandas()["product_id"].iloc[0]
    ledger.record_decisions([dec(1, cust[0], product_id=product), dec(2, cust[1]), dec(3, "NOBODY")],
                            source="api", decided_at=at(D, 9))
    assert ledger.export_outcomes(loaded, now=NOW) is None, "nothing pending"
    # A problem: raised, nothing marked, no version.
    ledger.record_outcome("N3", "shown", idempotency_key="x", outcome_at=at(D, 10), now=NOW)
    with pytest.raises(DataValidationError, match="NOBODY"):
        ledger.export_outcomes(loaded, source="ledger export", now=NOW)
    assert loaded.require_current().name == v0.name
    assert count(ledger, outcomes, outcomes.c.exported_version.is_(None)) == 1
    with ledger.engine.begin() as c:
        c.execute(sa.delete(outcomes))
    # An outcome already in the store, one pair twice, one outcome not due before a later export.
    record_outcomes(loaded, pd.DataFrame([{"decision_id": "N2", "customer_id": cust[1], "action_family": "product_offer",
                                           "action_id": "offer:CARD-GOLD", "product_id": None, "channel": "email",
                                           "decided_at": pd.Timestamp(at(D, 9)), "outcome": "reached",
                                           "outcome_at": pd.Timestamp(at(D, 11))}]), now=NOW)
    v1 = loaded.require_current()
    for i, (d, o, hour) in enumerate([(1, "shown", 10), (1, "shown", 11), (1, "declined", 12), (2, "reached", 11),
                                      (2, "accepted", 13)]):
        ledger.record_outcome(f"N{d}", o, idempotency_key=f"k{i}", outcome_at=at(D, hour), now=NOW,
                              reason="rate" if o == "declined" else None)
    ledger.record_outcome("N2", "shown", idempotency_key="late", outcome_at=NOW + timedelta(minutes=3), now=NOW)
    v2 = ledger.export_outcomes(loaded, now=NOW)
    assert v2.name != v1.name and loaded.require_current().name == v2.name
    assert v2.rows("action_outcomes") == v1.rows("action_outcomes") + 3  # N1 shown, N1 declined, N2 accepted
    got = decision_outcomes(v2, D, D + timedelta(days=1)).set_index("decision_id")
    assert got.loc["N1", "outcome"] == "declined" and got.loc["N2", "outcome"] == "accepted"
    with ledger.engine.connect() as c:
        marks = dict(c.execute(sa.select(outcomes.c.idempotency_key, outcomes.c.exported_version)).all())
    assert marks == {**{f"k{i}": v2.name for i in range(5)}, "late": None}
    assert ledger.export_outcomes(loaded, now=NOW) is None, "a second export has nothing to do"
    v3 = ledger.export_outcomes(loaded, now=NOW + timedelta(minutes=5))
    assert v3.rows("action_outcomes") == v2.rows("action_outcomes") + 1


@pytest.mark.parametrize("zone", [SHANGHAI, "America/New_York"])
def test_exported_outcomes_keep_their_instants_in_any_bank_time_zone(ledger_url, loaded, zone, tmp_path,
                                                                      monkeypatch):
    """The ledger keeps UTC; the store reads a time without a zone as the bank's local time. The export
    must carry the instants, not the clock readings (8 hours early in Shanghai, refused as "in the
    future" in New York otherwise)."""
    own = tmp_path / "bank.yaml"
    own.write_text(f"time_zone: {zone}\n")
    monkeypatch.setenv("NBA_BANK_CONFIG", str(own))  # the bank's zone, as `nba outcomes export` has it
    led = Ledger(ledger_url)
    try:
        v0 = loaded.require_current()
        cust = v0.read("customers").to_pandas()["customer_id"].iloc[0]
        led.record_decisions([dec(1, cust)], source="api", decided_at=at(D, 9))
        led.record_outcome("N1", "accepted", idempotency_key="k", outcome_at=at(D, 10), now=NOW)
        v1 = led.export_outcomes(loaded, now=NOW)
        got = v1.read("action_outcomes").to_pandas().set_index("decision_id").loc["N1"]
        assert got["decided_at"] == pd.Timestamp(at(D, 9)) and got["outcome_at"] == pd.Timestamp(at(D, 10))
    finally:
        led.close()


# -- durability and opening --------------------------------------------------------------------------

WRITER = """
import sys
from datetime import datetime
from feature_store.ledger import Ledger

led = Ledger(sys.argv[1], time_zone="UTC")
i = 0
while True:
    led.record_outcome("N1", "shown", idempotency_key=f"k{i}", outcome_at=datetime(2026, 6, 2, 10),
                       now=datetime(2026, 6, 5, 12))
    print(i, flush=True)
    i += 1
"""


def test_acknowledged_outcomes_survive_a_killed_writer(ledger_url):
    with Ledger(ledger_url, time_zone="UTC") as led:
        led.record_decisions(dec(1), source="api", decided_at=at(D, 9))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, ledger_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    acked = []
    try:
        while len(acked) < 50:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"the writer stopped: {proc.stderr.read()}")
            acked.append(f"k{int(line)}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    with Ledger(ledger_url, time_zone="UTC") as led, led.engine.connect() as c:
        keys = set(c.execute(sa.select(outcomes.c.idempotency_key)).scalars())
    assert set(acked) <= keys


def test_opened_at_once_and_other_tables_kept(ledger_url):
    start = threading.Barrier(4)
    errors = []

    def open_it() -> None:
        start.wait()
        try:
            Ledger(ledger_url).close()
        except Exception as e:  # noqa: BLE001 - collected and checked below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    mine = sa.MetaData()
    keys = sa.Table("api_keys", mine, sa.Column("key_id", sa.String, primary_key=True))
    with Ledger(ledger_url) as led:
        mine.create_all(led.engine)
        with led.engine.begin() as c:
            c.execute(keys.insert().values(key_id="K1"))
    with Ledger(ledger_url) as led, led.engine.connect() as c:
        assert c.execute(sa.select(keys.c.key_id)).scalars().all() == ["K1"]


def test_api_reads_and_lazy_writes_see_every_commit(ledger_url):
    """The API's per-client history reads keep one connection per thread, and its decisions are
    committed without waiting for the disk: each read still sees what any connection committed since
    (here a second Ledger, as another worker), a failed read gives the thread a fresh connection, and
    the lazy rows are there for every reader."""
    led, other = Ledger(ledger_url, time_zone="UTC"), Ledger(ledger_url, time_zone="UTC")
    try:
        def seen() -> list[str]:
            return [r[-1] for r in led.history(D, ["C1"], decision_ids=True, as_rows=True)]

        assert seen() == []
        led.record_decisions([dec(1)], source="api", decided_at=NOW, durable=False)
        assert led.decision("N1")["customer_id"] == "C1" and other.decision("N1") is not None
        other.record_outcome("N1", "reached", idempotency_key="k1", key_id="key", source="api", now=NOW)
        assert seen() == ["N1"]  # an API decision counts once delivered, seen through the kept connection
        other.record_decisions([dec(2)], source="daily")
        assert sorted(seen()) == ["N1", "N2"]
        kept = led._reader._local.raw  # one client's history is read on the driver (sql.Prepared)
        kept.dbapi_connection.close()  # the server dropped it
        with pytest.raises(led.engine.dialect.loaded_dbapi.Error):
            seen()
        assert sorted(seen()) == ["N1", "N2"] and led._reader._local.raw is not kept
    finally:
        led.close()
        other.close()


def test_one_client_read_on_the_driver_equals_the_sqlalchemy_read(ledger):
    """One client's history is read on the DB-API connection (feature_store.sql.Prepared, the API's
    path); several clients' through SQLAlchemy. Dates, instants, booleans and NULLs come back the same."""
    ledger.record_decisions([dec(1, day=D - timedelta(days=3))], source="api", decided_at=at(D - timedelta(days=3), 8),
                            durable=False)
    ledger.record_decisions([dec(2, control=True), dec(3, customer="C2")], source="api", decided_at=at(D, 7),
                            durable=False)
    ledger.record_decisions([dec(4, day=D - timedelta(days=1))], source="daily")
    ledger.record_outcome("N1", "declined", idempotency_key="k1", key_id="key", source="api",
                          outcome_at=at(D - timedelta(days=2), 9, 30), now=NOW)
    ledger.record_outcome("N4", "accepted", idempotency_key="k4", key_id="key", source="api",
                          outcome_at=at(D, 8), now=NOW)
    one = ledger.history(D, ["C1"], decision_ids=True, as_rows=True)
    both = ledger.history(D, ["C1", "C2"], decision_ids=True, as_rows=True)
    assert sorted(one, key=str) == sorted([r for r in both if r[0] == "C1"], key=str)
    assert {r[-1] for r in one} == {"N1", "N2", "N4"}
    n1 = next(r for r in one if r[-1] == "N1")
    assert isinstance(n1[3], date) and n1[4] == "declined" and n1[5] == D - timedelta(days=2)
    assert [type(v) for v in n1] == [type(v) for v in next(r for r in both if r[-1] == "N1")]
    # The driver's insert skips a decision already recorded, as the SQLAlchemy one does.
    assert ledger.record_decisions([dec(1), dec(5)], source="api", decided_at=NOW, durable=False) == 1


def test_wal_checkpointer_takes_checkpoints_off_the_commits(tmp_path):
    """While a WalCheckpointer runs for a SQLite file, connections opened to it leave checkpoints to
    its thread (wal_autocheckpoint=0) and the thread copies the log into the database; after it
    stops, new connections checkpoint as SQLite does by default."""
    from feature_store.sql import WalCheckpointer, engine

    url = f"sqlite:///{tmp_path / 'serving.sqlite'}"
    with WalCheckpointer(url, interval=0.05) as ckpt:
        eng = engine(url, durable=False)
        with eng.begin() as c:
            assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
            c.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        for i in range(200):
            with eng.begin() as c:
                c.exec_driver_sql("INSERT INTO t VALUES (?)", (i,))
        deadline = time.monotonic() + 10
        while ckpt.copied < 200 and time.monotonic() < deadline:  # a frame (at least) per commit
            time.sleep(0.05)
        assert ckpt.copied >= 200
        eng.dispose()
    later = engine(url)
    with later.connect() as c:
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
        assert c.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 200
    later.dispose()
    WalCheckpointer("postgresql://u@h/db").start().stop()  # other databases: nothing to do
