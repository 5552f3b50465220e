"""Outcomes of decisions coming back (shown, reached, accepted, declined, not reachable): the one owner.

The daily run, the scoring API and the RM workbench write outcomes through :func:`record_outcomes`, and
read them back through :func:`decision_outcomes`. They are stored in the contract table
``action_outcomes`` of the versioned store, so they are validated exactly as an ingest is (contract
types, allowed values, keys, no timestamps in the future) and become training labels like any other
table.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nba.bank import day_start, load_bank_config
from nba.errors import DataValidationError, Problem

from .ingest import ingest
from .store import StoreVersion, TableStore

TABLE = "action_outcomes"


def record_outcomes(store: TableStore, rows: pd.DataFrame, *, source: str = "outcomes",
                    now: datetime | None = None, wait: float = 30, time_zone: str | None = None) -> StoreVersion:
    """Append outcome rows (columns of the ``action_outcomes`` contract) as a new store version.

    Validated as ``nba data ingest --mode append`` validates a file (contract types, allowed values,
    keys unique, customers and products known, no time in the future): on any problem
    ``DataValidationError`` lists each one (row, column, what was wrong, with ``source`` as the file
    name) and nothing is stored. Only ``action_outcomes`` and what it references are re-checked.
    Waits up to ``wait`` seconds for another writer, then raises ``StoreError``. No rows: nothing is
    written and the live version is returned. Timestamps with a time zone are converted to UTC; naive
    ones are the bank's local time in ``time_zone`` (default: ``configs/bank.yaml``), as in an export.

    Each call commits one store version (unchanged tables are hard links, but each version costs a
    folder and its files, and the GC spares versions for hours), so write outcomes in batches; the
    scoring API's own outcome store (issue 15) is the place for one-at-a-time writes. Raises
    ``StoreError`` when the store is empty.
    """
    live = store.require_current()  # StoreError for an empty or missing store: nothing is created
    if rows.empty:
        return live
    try:
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        found = re.search(r"for column (\S+) with type", str(e))  # pyarrow names the column it failed on
        column = found.group(1) if found else None
        raise DataValidationError([Problem(source, f"values of mixed or unsupported types: {e}",
                                           column=column)]) from None
    # Rows pass through a Parquet file inside the store's folder (never the system's temp).
    with tempfile.TemporaryDirectory(prefix=".incoming-", dir=store.root) as tmp:
        path = Path(tmp) / f"{TABLE}.parquet"
        pq.write_table(table, path)
        try:
            return ingest(Path(tmp), store, mode="append", now=now, wait=wait, time_zone=time_zone,
                          source=f"{source}: {len(rows):,} outcome row(s)")
        except DataValidationError as e:
            # Name the caller's source, not the file the rows went through.
            raise DataValidationError([replace(p, file=source if p.file in (str(path), tmp) else p.file,
                                               message=p.message.replace(str(path), source))
                                       for p in e.problems], e.truncated) from None
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # e.g. nanoseconds the contract cannot hold
            raise DataValidationError([Problem(source, f"values the contract cannot hold: {e}")]) from None


def decision_outcomes(version: StoreVersion, start: date, end: date, known_before: date | None = None,
                      time_zone: str | None = None) -> pd.DataFrame:
    """One row per decision made in days ``[start, end)`` that has an outcome: its latest outcome, except
    that a decline wins (declines drive the cooldowns). With ``known_before``, only outcome events
    before that day count (point in time: a re-run of a past day sees what was known then). Days begin
    at midnight in the bank's ``time_zone`` (default: ``configs/bank.yaml``).

    Columns: decision_id, customer_id, action_id, action_family, decided_at, outcome, outcome_at (UTC
    instants), decided_date, outcome_date (the bank's calendar dates).
    """
    cols = ["decision_id", "customer_id", "action_id", "action_family", "decided_at", "outcome", "outcome_at"]
    if TABLE not in version.tables:
        return pd.DataFrame(columns=cols + ["decided_date", "outcome_date"])
    zone = time_zone or load_bank_config().time_zone
    o = version.read(TABLE, columns=cols).to_pandas()
    keep = (o["decided_at"] >= day_start(start, zone)) & (o["decided_at"] < day_start(end, zone))
    if known_before is not None:
        keep &= o["outcome_at"] < day_start(known_before, zone)
    o = o[keep]
    o = (o.assign(_declined=o["outcome"] == "declined").sort_values(["_declined", "outcome_at"], kind="stable")
         .drop_duplicates("decision_id", keep="last"))[cols].reset_index(drop=True)
    for c in ("decided", "outcome"):
        o[f"{c}_date"] = o[f"{c}_at"].dt.tz_localize("UTC").dt.tz_convert(zone).dt.date
    return o


__all__ = ["record_outcomes", "decision_outcomes", "TABLE"]
