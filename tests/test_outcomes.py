"""Outcomes coming back: one owner in feature_store (record_outcomes / decision_outcomes)."""

from __future__ import annotations

import time
from datetime import date, datetime

import pandas as pd
import pytest

from feature_store.ingest import ingest
from feature_store.outcomes import decision_outcomes, record_outcomes
from feature_store.store import TableStore
from nba.errors import DataValidationError

NOW = datetime(2026, 6, 1, 12, 0, 0)


@pytest.fixture()
def loaded(store, small_csv_bank) -> TableStore:
    ingest(small_csv_bank, store, now=NOW)
    return store


def _row(loaded: TableStore, **kw) -> dict:
    c = loaded.require_current().read("customers").to_pandas()["customer_id"].iloc[0]
    base = {"decision_id": "N-test-1", "customer_id": c, "action_family": "product_offer",
            "action_id": "offer:CARD-GOLD", "product_id": None, "channel": "email",
            "decided_at": pd.Timestamp("2026-05-20T09:00:00"), "outcome": "shown",
            "outcome_at": pd.Timestamp("2026-05-20T09:05:00")}
    return {**base, **kw}


def test_recorded_outcomes_are_a_new_version_and_read_back_once_per_decision(loaded):
    before = loaded.require_current()
    n0 = before.rows("action_outcomes")
    rows = pd.DataFrame([_row(loaded), _row(loaded, outcome="declined", outcome_at=pd.Timestamp("2026-05-21T10:00")),
                         _row(loaded, outcome="reached", outcome_at=pd.Timestamp("2026-05-22T10:00"))])
    v = record_outcomes(loaded, rows, now=NOW)
    assert v.name != before.name and v.rows("action_outcomes") == n0 + 3
    got = decision_outcomes(v, date(2026, 5, 20), date(2026, 5, 21))
    mine = got[got.decision_id == "N-test-1"]
    assert len(mine) == 1 and mine.outcome.iloc[0] == "declined", "a decline wins over later outcomes"
    assert decision_outcomes(v, date(2026, 5, 21), date(2026, 6, 1)).query("decision_id == 'N-test-1'").empty


def test_bad_outcomes_name_the_row_and_column_and_store_nothing(loaded):
    before = loaded.require_current().name
    bad = pd.DataFrame([_row(loaded), _row(loaded, decision_id="N-test-2", outcome="thrilled")])
    with pytest.raises(DataValidationError) as e:
        record_outcomes(loaded, bad, source="POST /v1/outcomes", now=NOW)
    p = e.value.problems[0]
    assert p.file == "POST /v1/outcomes" and p.column == "outcome" and p.row == 2 and "thrilled" in p.message
    assert loaded.require_current().name == before
    with pytest.raises(DataValidationError, match="customer_id"):
        record_outcomes(loaded, pd.DataFrame([_row(loaded, customer_id="NOBODY")]), now=NOW)
    with pytest.raises(DataValidationError, match="mood"):
        record_outcomes(loaded, pd.DataFrame([{**_row(loaded), "mood": "good"}]), now=NOW)
    assert loaded.require_current().name == before


def test_messages_and_the_version_name_the_source_and_an_empty_batch_writes_nothing(loaded):
    before = loaded.require_current()
    assert record_outcomes(loaded, pd.DataFrame(columns=list(_row(loaded))), now=NOW).name == before.name
    dup = pd.DataFrame([_row(loaded), _row(loaded)])
    with pytest.raises(DataValidationError) as e:
        record_outcomes(loaded, dup, source="workbench", now=NOW)
    text = str(e.value)
    assert "duplicate key" in text and "workbench" in text and "incoming" not in text and "/tmp" not in text
    v = record_outcomes(loaded, pd.DataFrame([_row(loaded)]), source="workbench", now=NOW)
    assert v.manifest["source"] == "workbench: 1 outcome row(s)"
    assert not [p for p in loaded.root.iterdir() if p.name.startswith(".incoming")], "nothing left behind"


def test_a_second_writer_waits_for_the_first(loaded):
    import threading

    from nba.atomic import lock

    release = threading.Event()

    def hold():
        with lock(loaded.root / "LOCK"):
            release.wait(10)

    before = loaded.require_current()
    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    threading.Timer(1.0, release.set).start()
    v = record_outcomes(loaded, pd.DataFrame([_row(loaded)]), now=NOW, wait=30)  # StoreError if it did not wait
    t.join()
    assert v.name != before.name and v.rows("action_outcomes") == before.rows("action_outcomes") + 1
    assert "N-test-1" in set(decision_outcomes(v, date(2026, 5, 1), date(2026, 6, 1)).decision_id)


def test_rows_arrow_cannot_read_and_a_missing_store_are_clear_errors(loaded, tmp_path):
    mixed = pd.DataFrame([_row(loaded), _row(loaded, decision_id="N-test-2", customer_id=12345)])
    with pytest.raises(DataValidationError, match="mixed or unsupported types") as e:
        record_outcomes(loaded, mixed, source="api", now=NOW)
    assert e.value.problems[0].file == "api" and e.value.problems[0].column == "customer_id"
    nano = pd.DataFrame([_row(loaded, outcome_at=pd.Timestamp("2026-05-20T09:05:00.000000001"))])
    with pytest.raises(DataValidationError) as e:
        record_outcomes(loaded, nano, source="api", now=NOW)
    assert all(p.file == "api" for p in e.value.problems)
    from nba.errors import StoreError
    with pytest.raises(StoreError, match="empty"):
        record_outcomes(TableStore(tmp_path / "nowhere" / "store"), pd.DataFrame([_row(loaded)]), now=NOW)
    assert not (tmp_path / "nowhere").exists()
