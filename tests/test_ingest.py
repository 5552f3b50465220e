"""Safe ingest: every kind of bad input is named precisely and leaves the store exactly as it was."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.ingest import ingest
from feature_store.store import TableStore
from nba.errors import DataValidationError, StoreError

NOW = datetime(2026, 6, 1, 12, 0, 0)


def _csv(folder: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{table}.csv", dtype=str, keep_default_na=False)


def _put(folder: Path, table: str, df: pd.DataFrame) -> None:
    df.to_csv(folder / f"{table}.csv", index=False)


def _snapshot(store: TableStore):
    v = store.current()
    return None if v is None else (v.name, v.content_hash)


@pytest.fixture()
def loaded(store, small_csv_bank):
    """A store that already holds the small bank (so failures must leave it unchanged)."""
    ingest(small_csv_bank, store, now=NOW)
    return store


def _reject(src: Path, store: TableStore, **kw) -> DataValidationError:
    before = _snapshot(store)
    with pytest.raises(DataValidationError) as info:
        ingest(src, store, now=NOW, **kw)
    assert _snapshot(store) == before, "a failed ingest must leave the store exactly as it was"
    assert not (store.root / "staging").exists() or not any((store.root / "staging").iterdir())
    return info.value


def _one(err: DataValidationError, **where):
    """The problem matching ``where`` (file suffix, row, column), failing with all problems shown."""
    for p in err.problems:
        if all((p.file.endswith(v) if k == "file" else getattr(p, k) == v) for k, v in where.items()):
            return p
    raise AssertionError(f"no problem with {where} in:\n{err}")


def test_clean_csv_bank_ingests(store, small_csv_bank):
    v = ingest(small_csv_bank, store, now=NOW)
    assert v.name == "v000001" and store.current().name == "v000001"
    assert v.rows("customers") == 300
    customers = v.read("customers")
    assert customers.schema.field("birth_date").type == pa.date32()
    assert customers.schema.field("vulnerable").type == pa.bool_()


def test_csv_and_parquet_of_the_same_bank_store_the_same_values(tmp_path, small_csv_bank):
    a = TableStore(tmp_path / "a")
    va = ingest(small_csv_bank, a, now=NOW)
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    for t in va.tables:
        pq.write_table(va.read(t), pq_dir / f"{t}.parquet")
    vb = ingest(pq_dir, TableStore(tmp_path / "b"), now=NOW)
    for t in va.tables:
        assert va.read(t).equals(vb.read(t)), t


def test_missing_column(loaded, csv_bank):
    _put(csv_bank, "customers", _csv(csv_bank, "customers").drop(columns=["segment"]))
    p = _one(_reject(csv_bank, loaded), file="customers.csv", column="segment")
    assert "missing column" in p.message and "one of mass, affluent, private" in p.message


def test_unexpected_column(loaded, csv_bank):
    df = _csv(csv_bank, "customers")
    df["segmnet"] = "mass"
    _put(csv_bank, "customers", df)
    p = _one(_reject(csv_bank, loaded), file="customers.csv", column="segmnet")
    assert "unexpected column" in p.message


def test_column_of_the_wrong_type_in_parquet(loaded, csv_bank, tmp_path):
    df = _csv(csv_bank, "customers")
    t = pa.Table.from_pandas(df, preserve_index=False)
    t = t.set_column(t.schema.get_field_index("birth_date"), "birth_date", pa.array([True] * len(df)))
    pq.write_table(t, csv_bank / "customers.parquet")
    (csv_bank / "customers.csv").unlink()
    p = _one(_reject(csv_bank, loaded), file="customers.parquet", column="birth_date")
    assert "type bool" in p.message and "date" in p.message


def test_parquet_types_that_hold_the_values_losslessly_are_accepted(store, csv_bank):
    """What pandas, Spark and DuckDB write for the same values: an all-null optional column as double,
    booleans as 0/1 integers, dictionary-encoded text, large strings, nanosecond timestamps."""
    df = pd.read_csv(csv_bank / "customers.csv", keep_default_na=False, dtype=str)
    t = pa.Table.from_pandas(df, preserve_index=False)
    n = len(df)
    vuln = pa.array([1 if v.lower() in ("true", "1") else 0 for v in df["vulnerable"]], pa.int8())
    t = t.set_column(t.schema.get_field_index("vulnerable"), "vulnerable", vuln)
    t = t.set_column(t.schema.get_field_index("segment"), "segment", pa.array(df["segment"]).dictionary_encode())
    t = t.set_column(t.schema.get_field_index("rm_id"), "rm_id", pa.array(df["rm_id"], pa.large_string()))
    pq.write_table(t, csv_bank / "customers.parquet")
    (csv_bank / "customers.csv").unlink()
    inter = pd.read_csv(csv_bank / "interactions.csv", keep_default_na=False, dtype=str)
    ti = pa.Table.from_pandas(inter, preserve_index=False)
    ti = ti.set_column(ti.schema.get_field_index("product_id"), "product_id", pa.nulls(len(inter), pa.float64()))
    ts = pd.to_datetime(inter["ts"], format="ISO8601", utc=True).dt.tz_convert(None).astype("datetime64[ns]")
    ti = ti.set_column(ti.schema.get_field_index("ts"), "ts", pa.array(ts, pa.timestamp("ns")))
    pq.write_table(ti, csv_bank / "interactions.parquet")
    (csv_bank / "interactions.csv").unlink()
    v = ingest(csv_bank, store, now=NOW)
    got = v.read("customers").to_pandas()
    assert len(got) == n and got["vulnerable"].sum() == int(vuln.to_numpy().sum())
    assert v.read("interactions").to_pandas()["product_id"].isna().all()


def test_lossy_parquet_values_are_rejected(loaded, csv_bank):
    df = pd.read_csv(csv_bank / "customers.csv", keep_default_na=False, dtype=str)
    t = pa.Table.from_pandas(df, preserve_index=False)
    t = t.set_column(t.schema.get_field_index("vulnerable"), "vulnerable", pa.array([2] + [0] * (len(df) - 1)))
    pq.write_table(t, csv_bank / "customers.parquet")
    (csv_bank / "customers.csv").unlink()
    p = _one(_reject(csv_bank, loaded), file="customers.parquet", column="vulnerable", row=1)
    assert "as true/false" in p.message
    inter = pd.read_csv(csv_bank / "interactions.csv", keep_default_na=False, dtype=str)
    ti = pa.Table.from_pandas(inter, preserve_index=False)
    ts = pd.to_datetime(inter["ts"], format="ISO8601", utc=True).dt.tz_convert(None).astype("datetime64[ns]")
    ts.iloc[3] = ts.iloc[3] + pd.Timedelta(nanoseconds=1)
    ti = ti.set_column(ti.schema.get_field_index("ts"), "ts", pa.array(ts, pa.timestamp("ns")))
    pq.write_table(ti, csv_bank / "interactions.parquet")
    (csv_bank / "interactions.csv").unlink()
    (csv_bank / "customers.parquet").unlink()
    df.to_csv(csv_bank / "customers.csv", index=False)
    p = _one(_reject(csv_bank, loaded), file="interactions.parquet", column="ts", row=4)
    assert "timestamp" in p.message


@pytest.mark.parametrize("column,value,needle", [
    ("birth_date", "1980-13-01", "cannot read '1980-13-01' as a date"),
    ("birth_date", "1980-02-30", "cannot read '1980-02-30' as a date"),
    ("risk_tolerance", "high", "cannot read 'high' as an integer"),
    ("vulnerable", "maybe", "cannot read 'maybe' as true/false"),
    ("risk_tolerance", "N/A", "cannot read 'N/A' as an integer in [1, 5]; leave the cell empty for a missing value"),
    ("risk_assessed_at", "NULL", "leave the cell empty for a missing value"),
])
def test_unparseable_value(loaded, csv_bank, column, value, needle):
    df = _csv(csv_bank, "customers")
    df.loc[6, column] = value
    _put(csv_bank, "customers", df)
    p = _one(_reject(csv_bank, loaded), file="customers.csv", column=column)
    assert needle in p.message
    assert (p.row, p.line) == (7, 8), "row 7 is the 7th data row, on line 8 after the header"


@pytest.mark.parametrize("value", ["2025", "2025-07", "2025/07/31 23:40:02", "31/07/2025 10:00", "2025-07-31T25:00",
                                   "July 31 2025", "2025-07-31T10", "20250731T100000"])
def test_timestamps_must_be_iso_8601(loaded, csv_bank, value):
    df = _csv(csv_bank, "interactions")
    df.loc[4, "ts"] = value
    _put(csv_bank, "interactions", df)
    p = _one(_reject(csv_bank, loaded), file="interactions.csv", column="ts", row=5)
    assert f"cannot read {value!r} as an ISO 8601 timestamp" in p.message


@pytest.mark.parametrize("value, instant", [
    ("2025-07-31", "2025-07-31 00:00:00"), ("2025-07-31T23:40", "2025-07-31 23:40:00"),
    ("2025-07-31 23:40:02", "2025-07-31 23:40:02"), ("2025-07-31T23:40:02.5Z", "2025-07-31 23:40:02.500000"),
    ("2025-07-31T23:40:02+08:00", "2025-07-31 15:40:02"), ("2025-07-31T23:40:02-0500", "2025-08-01 04:40:02")])
def test_iso_8601_timestamps_keep_their_instant(store, csv_bank, value, instant):
    df = _csv(csv_bank, "interactions")
    df.loc[4, "ts"] = value
    _put(csv_bank, "interactions", df)
    v = ingest(csv_bank, store, now=NOW)
    got = v.read("interactions").to_pandas().set_index("interaction_id").loc[df.loc[4, "interaction_id"], "ts"]
    assert str(got) == instant


@pytest.mark.parametrize("table,column,value,needle", [
    ("customers", "risk_tolerance", "9", "9 is out of range (expected an integer in [1, 5])"),
    ("interactions", "sentiment", "3", "3.0 is out of range"),
    ("customers", "segment", "gold", "'gold' is not allowed"),
    ("products", "eligible_segments", "mass|vip", "'mass|vip' is not allowed"),
    ("customers", "segment", "", "missing value"),
])
def test_out_of_range_or_not_allowed(loaded, csv_bank, table, column, value, needle):
    df = _csv(csv_bank, table)
    df.loc[2, column] = value
    _put(csv_bank, table, df)
    p = _one(_reject(csv_bank, loaded), file=f"{table}.csv", column=column, row=3)
    assert needle in p.message


def test_timestamps_in_the_future(loaded, csv_bank):
    df = _csv(csv_bank, "interactions")
    df.loc[10, "ts"] = "2031-01-01T09:00:00"
    _put(csv_bank, "interactions", df)
    p = _one(_reject(csv_bank, loaded), file="interactions.csv", column="ts", row=11)
    assert "lies in the future" in p.message


def test_the_future_is_judged_on_the_banks_clock(store, csv_bank):
    """A Shanghai load run after local midnight (2026-06-30 17:30 UTC is 2026-07-01 01:30 there): a
    date of Shanghai's today is not in the future; in UTC it is."""
    from datetime import timezone

    df = _csv(csv_bank, "customers")
    df.loc[0, "risk_assessed_at"] = "2026-07-01"
    _put(csv_bank, "customers", df)
    now = datetime(2026, 6, 30, 17, 30, tzinfo=timezone.utc)
    with pytest.raises(DataValidationError, match="lies in the future"):
        ingest(csv_bank, store, now=now, time_zone="UTC")
    assert ingest(csv_bank, store, now=now, time_zone="Asia/Shanghai").name == "v000001"


def test_timestamps_without_an_offset_are_the_banks_local_time(store, csv_bank):
    """A Chicago export written in local time: stored as the instant it names; a local time the zone
    repeats (clocks back) or skips (clocks forward) names no single instant and is refused."""
    # The generated bank's timestamps are UTC: say so, as an export from a UTC system would.
    tx = _csv(csv_bank, "transactions")
    tx["ts"] = tx["ts"] + "Z"
    _put(csv_bank, "transactions", tx)
    df = _csv(csv_bank, "interactions")
    df["ts"] = df["ts"] + "Z"
    ids = df["interaction_id"].iloc[:3].tolist()
    df.loc[0, "ts"] = "2026-05-29 23:30"       # CDT, UTC-5
    df.loc[1, "ts"] = "2026-01-15T08:00:00"    # CST, UTC-6
    df.loc[2, "ts"] = "2026-05-29T23:30:00Z"   # an explicit instant stays as it is
    _put(csv_bank, "interactions", df)
    v = ingest(csv_bank, store, now=NOW, time_zone="America/Chicago")
    got = v.read("interactions").to_pandas().set_index("interaction_id").loc[ids, "ts"].astype(str).tolist()
    assert got == ["2026-05-30 04:30:00", "2026-01-15 14:00:00", "2026-05-29 23:30:00"]
    # A date alone is the bank's local midnight (its "-15" is a day, not an offset).
    df.loc[0, "ts"] = "2026-01-15"
    _put(csv_bank, "interactions", df)
    v = ingest(csv_bank, store, now=NOW, time_zone="America/Chicago")
    assert str(v.read("interactions").to_pandas().set_index("interaction_id").loc[ids[0], "ts"]) == "2026-01-15 06:00:00"
    for value in ("2025-11-02 01:30", "2026-03-08 02:30"):  # repeated, skipped
        df.loc[0, "ts"] = value
        _put(csv_bank, "interactions", df)
        with pytest.raises(DataValidationError, match="must exist once in its zone"):
            ingest(csv_bank, store, now=NOW, time_zone="America/Chicago")


def test_parquet_values_out_of_any_calendar_are_problems_not_tracebacks(loaded, csv_bank):
    inter = pd.read_csv(csv_bank / "interactions.csv", keep_default_na=False, dtype=str)
    ti = pa.Table.from_pandas(inter, preserve_index=False)
    secs = pd.to_datetime(inter["ts"], format="ISO8601").astype("datetime64[s]").astype("int64").to_numpy().copy()
    secs[2] = 18_448_444_073_710  # the year 586,577: wraps silently in an unchecked cast to microseconds
    ti = ti.set_column(ti.schema.get_field_index("ts"), "ts", pa.array(secs, pa.timestamp("s")))
    pq.write_table(ti, csv_bank / "interactions.parquet")
    (csv_bank / "interactions.csv").unlink()
    p = _one(_reject(csv_bank, loaded), file="interactions.parquet", column="ts")
    assert "cannot hold" in p.message or "cannot read" in p.message
    for zone in ("America/Chicago",):
        with pytest.raises(DataValidationError):
            ingest(csv_bank, loaded, now=NOW, time_zone=zone)
    from nba.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown IANA time zone"):
        ingest(csv_bank, loaded, now=NOW, time_zone="posix/America/Chicago")


def test_closed_before_opened(loaded, csv_bank):
    df = _csv(csv_bank, "holdings")
    df.loc[4, "opened_at"], df.loc[4, "closed_at"] = "2020-05-03", "2020-01-01"
    _put(csv_bank, "holdings", df)
    p = _one(_reject(csv_bank, loaded), file="holdings.csv", column="closed_at", row=5)
    assert "closed_at 2020-01-01 is before opened_at 2020-05-03" in p.message


def test_duplicate_key_within_a_file(loaded, csv_bank):
    df = _csv(csv_bank, "customers")
    df.loc[20, "customer_id"] = df.loc[3, "customer_id"]
    _put(csv_bank, "customers", df)
    err = _reject(csv_bank, loaded)
    p = _one(err, file="customers.csv", row=21)
    assert f"duplicate key customer_id='{df.loc[3, 'customer_id']}'" in p.message
    assert "first at" in p.message and "row 4" in p.message


def test_duplicate_key_across_files_of_one_table(loaded, csv_bank):
    df = _csv(csv_bank, "interactions")
    (csv_bank / "interactions.csv").unlink()
    (csv_bank / "interactions").mkdir()
    df.iloc[:100].to_csv(csv_bank / "interactions" / "a.csv", index=False)
    df.iloc[99:].to_csv(csv_bank / "interactions" / "b.csv", index=False)  # row 100 twice
    p = _one(_reject(csv_bank, loaded), file="b.csv", row=1)
    assert "duplicate key interaction_id=" in p.message and "a.csv row 100" in p.message


def test_unknown_foreign_key(loaded, csv_bank):
    df = _csv(csv_bank, "holdings")
    df.loc[8, "customer_id"] = "C-19"
    _put(csv_bank, "holdings", df)
    p = _one(_reject(csv_bank, loaded), file="holdings.csv", row=9, column="customer_id")
    assert "unknown customers key 'C-19'" in p.message


def test_replacing_a_parent_table_that_orphans_stored_rows(loaded, tmp_path, csv_bank):
    only = tmp_path / "only"
    only.mkdir()
    _put(only, "customers", _csv(csv_bank, "customers").iloc[:10])
    err = _reject(only, loaded)
    p = next(p for p in err.problems if "unknown customers key" in p.message)
    assert "already in store version v000001" in p.file
    # Each stored table that refers to a dropped client is named, with what to do.
    tables = {q.file.split(" ")[0] for q in err.problems if "unknown customers key" in q.message}
    assert {"holdings", "transactions"} <= tables, tables
    assert "give customers with it, or holdings again without it" in next(
        q.message for q in err.problems if q.file.startswith("holdings"))


def test_malformed_csv_row(loaded, csv_bank):
    path = csv_bank / "relationship_managers.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2] + ",extra"
    path.write_text("\n".join(lines) + "\n")
    p = _one(_reject(csv_bank, loaded), file="relationship_managers.csv", line=3)
    assert "fields" in p.message


def test_unknown_table_file_and_unsupported_file(loaded, csv_bank):
    (csv_bank / "accounts.csv").write_text("a,b\n1,2\n")
    (csv_bank / "notes.txt").write_text("hello")
    err = _reject(csv_bank, loaded)
    assert "unknown table 'accounts'" in _one(err, file="accounts.csv").message
    assert "unsupported file" in _one(err, file="notes.txt").message


def test_first_ingest_needs_every_required_table(store, csv_bank):
    (csv_bank / "holdings.csv").unlink()
    (csv_bank / "complaints.csv").unlink()  # optional (tests/test_bank_exports.py): not a problem
    err = _reject(csv_bank, store)
    assert len(err.problems) == 1 and "no file for table 'holdings'" in err.problems[0].message
    assert store.current() is None


def test_header_only_csv_makes_an_empty_table(store, csv_bank):
    df = _csv(csv_bank, "action_outcomes").iloc[:0]
    _put(csv_bank, "action_outcomes", df)
    v = ingest(csv_bank, store, now=NOW)
    assert v.rows("action_outcomes") == 0
    assert v.read("action_outcomes").num_rows == 0


def test_timezone_offsets_are_converted_to_utc(store, csv_bank):
    df = _csv(csv_bank, "interactions")
    df.loc[0, "ts"] = "2026-01-05T10:00:00+02:00"
    _put(csv_bank, "interactions", df)
    v = ingest(csv_bank, store, now=NOW)
    ts = v.read("interactions").column("ts").to_pylist()[0]
    assert ts == datetime(2026, 1, 5, 8, 0, 0)


def test_partial_replace_carries_other_tables_over(loaded, tmp_path, csv_bank):
    src = tmp_path / "rms"
    src.mkdir()
    df = _csv(csv_bank, "relationship_managers")
    df["daily_capacity"] = "12"
    _put(src, "relationship_managers", df)
    v = ingest(src, loaded, now=NOW)
    assert v.name == "v000002" and v.manifest["parent"] == "v000001"
    assert set(v.read("relationship_managers").column("daily_capacity").to_pylist()) == {12}
    assert v.read("customers").equals(loaded.version("v000001").read("customers"))


def test_append_adds_rows_and_keeps_keys_unique(loaded, tmp_path, csv_bank):
    inter = _csv(csv_bank, "interactions")
    new = inter.iloc[:5].copy()
    new["interaction_id"] = [f"NEW-{i}" for i in range(5)]
    src = tmp_path / "new"
    src.mkdir()
    _put(src, "interactions", new)
    v = ingest(src, loaded, mode="append", now=NOW)
    assert v.rows("interactions") == len(inter) + 5

    dup = tmp_path / "dup"
    dup.mkdir()
    _put(dup, "interactions", inter.iloc[:1])
    p = _reject(dup, loaded, mode="append").problems[0]
    assert "duplicate key" in p.message and "already in store version v000002" in p.message


def test_many_problems_are_capped_and_counted(loaded, csv_bank):
    df = _csv(csv_bank, "interactions")
    df["sentiment"] = "7"
    _put(csv_bank, "interactions", df)
    err = _reject(csv_bank, loaded)
    assert len(err.problems) <= 50 and err.truncated > 0
    assert f"{len(err.problems) + err.truncated:,} problems" in str(err)


def test_one_writer_at_a_time(loaded, csv_bank):
    import fcntl

    with open(loaded.root / "LOCK", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="being written by another process"):
            ingest(csv_bank, loaded, now=NOW)


def test_old_versions_stay_readable_for_a_grace_period(loaded):
    """A burst of commits (outcomes coming back) must not delete the version a long run is reading."""
    from nba import schema

    reading = loaded.require_current()
    for i in range(7):
        with loaded.write(f"burst {i}") as w:
            for t in schema.TABLES:
                w.link_from_parent(t)
    assert len(loaded.version_names()) == 8 and reading.path.exists()
    assert reading.read("customers").num_rows > 0
    loaded._gc(keep=5, grace_seconds=0)  # past the grace period only the newest 5 remain
    assert loaded.version_names() == [f"v{n:06d}" for n in range(4, 9)] and not reading.path.exists()


def test_a_version_made_live_by_rollback_is_spared_after_it_is_superseded(loaded):
    from nba import schema

    def commit():
        with loaded.write("x") as w:
            for t in schema.TABLES:
                w.link_from_parent(t)

    for _ in range(6):
        commit()
    loaded._gc(keep=5, grace_seconds=0)
    oldest = loaded.version_names()[0]
    loaded.rollback(oldest)
    commit()  # the rolled-back version stopped being live just now: a reader may be on it
    loaded._gc(keep=5, grace_seconds=3600)
    assert oldest in loaded.version_names() and loaded.version(oldest).read("customers").num_rows > 0


def test_rollback_takes_version_names_not_paths(loaded):
    with pytest.raises(StoreError, match="not a store version name"):
        loaded.rollback("../versions/v000001")
    assert loaded.current().name == "v000001"


def test_rollback_makes_an_older_version_live(loaded, csv_bank):
    df = _csv(csv_bank, "relationship_managers")
    df["branch"] = "HQ"
    _put(csv_bank, "relationship_managers", df)
    ingest(csv_bank, loaded, now=NOW)
    assert loaded.current().name == "v000002"
    loaded.rollback("v000001")
    assert loaded.current().name == "v000001"
    with pytest.raises(StoreError, match="does not exist"):
        loaded.rollback("v000099")


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from datetime import datetime
    from pathlib import Path
    from feature_store import store as store_mod
    from feature_store.ingest import ingest
    src, root, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if where == "switch":      # after the new version is renamed into place, before CURRENT moves
        store_mod.TableStore._switch = die
    def progress(msg):
        if where == "midway" and msg.startswith("interactions"):
            die()
    ingest(src, store_mod.TableStore(root), now=datetime(2026, 6, 1, 12), progress=progress)
""")


@pytest.mark.parametrize("where", ["midway", "switch"])
def test_killed_ingest_leaves_the_previous_version(loaded, csv_bank, where):
    before = _snapshot(loaded)
    df = _csv(csv_bank, "relationship_managers")
    df["branch"] = "KILLED"
    _put(csv_bank, "relationship_managers", df)
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(csv_bank), str(loaded.root), where])
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(loaded) == before
    assert "KILLED" not in loaded.current().read("relationship_managers").column("branch").to_pylist()
    # The next ingest cleans up after the killed one and commits normally.
    v = ingest(csv_bank, loaded, now=NOW)
    assert set(v.read("relationship_managers").column("branch").to_pylist()) == {"KILLED"}
    assert not any((loaded.root / "staging").glob("*"))


# -------------------------------------------------------------------------------------------------
# Messages a bank reads after ingesting its own export


def test_a_local_time_in_a_clock_change_is_named_as_such(loaded, tmp_path, csv_bank):
    """A time without an offset that the bank's zone skips (clocks forward) or repeats (clocks back) is
    refused, and the message says which clock change, not that the value cannot be read."""
    src = tmp_path / "zurich"
    src.mkdir()
    df = _csv(csv_bank, "interactions")
    df["ts"] = df["ts"] + "Z"  # the generated times are UTC: say so
    df.loc[2, "ts"] = "2026-03-29T02:30:00"   # skipped in Zurich
    df.loc[4, "ts"] = "2025-10-26 02:30"      # happened twice in Zurich
    df.loc[5, "ts"] = "2025-10-26T02:30:00+01:00"  # with its offset: one instant, accepted
    _put(src, "interactions", df)
    err = _reject(src, loaded, time_zone="Europe/Zurich")
    why = "(a time without one is the bank's local time and must exist once in its zone)"
    assert str(_one(err, file="interactions.csv", row=3, column="ts")) == (
        f"{src / 'interactions.csv'}, row 3 (line 4), column 'ts': 2026-03-29T02:30:00 does not exist in "
        f"Europe/Zurich (the clocks went forward from 02:00 to 03:00 that night); give the time with its UTC "
        f"offset {why}")
    assert _one(err, file="interactions.csv", row=5, column="ts").message == (
        f"2025-10-26T02:30:00 happened twice in Europe/Zurich (the clocks went back from 03:00 to 02:00); "
        f"give it with its UTC offset, e.g. +02:00 or +01:00 {why}")
    assert len(err.problems) == 2 and err.truncated == 0

    # The same in Parquet, where a naive timestamp is the bank's local time too.
    ti = pa.Table.from_pandas(df.drop(columns="ts"), preserve_index=False)
    ts = pd.to_datetime(_csv(csv_bank, "interactions")["ts"], format="ISO8601")
    ts.iloc[2] = pd.Timestamp("2026-03-29 02:30")
    pq.write_table(ti.append_column("ts", pa.array(ts, pa.timestamp("us"))), src / "interactions.parquet")
    (src / "interactions.csv").unlink()
    p = _one(_reject(src, loaded, time_zone="Europe/Zurich"), file="interactions.parquet", row=3, column="ts")
    assert p.message.startswith("2026-03-29T02:30:00 does not exist in Europe/Zurich (the clocks went forward")


def test_every_kind_of_problem_of_a_file_is_reported_in_one_run(loaded, csv_bank):
    """A missing column, an unexpected one, a bad value, a duplicate key and an unknown reference in one
    run: a bank fixes its export once, not once per stage of the checks."""
    cust = _csv(csv_bank, "customers").drop(columns=["segment"])
    cust["segmnet"] = "mass"
    cust.loc[6, "birth_date"] = "1980-13-01"
    cust = pd.concat([cust, cust.iloc[[3]]], ignore_index=True)  # customer of row 4 twice
    _put(csv_bank, "customers", cust)
    hold = _csv(csv_bank, "holdings")
    hold.loc[8, "customer_id"] = "C-19"
    _put(csv_bank, "holdings", hold)
    (csv_bank / "accounts.csv").write_text("a,b\n1,2\n")
    err = _reject(csv_bank, loaded)
    assert "missing column" in _one(err, file="customers.csv", column="segment").message
    assert "unexpected column" in _one(err, file="customers.csv", column="segmnet").message
    assert "cannot read '1980-13-01' as a date" in _one(err, file="customers.csv", row=7, column="birth_date").message
    assert "duplicate key customer_id=" in _one(err, file="customers.csv", row=len(cust)).message
    assert "unknown customers key 'C-19'" in _one(err, file="holdings.csv", row=9, column="customer_id").message
    assert "unknown table 'accounts'" in _one(err, file="accounts.csv").message
    # The missing column is one problem, not a missing value in every row.
    assert [p.row for p in err.problems if p.column == "segment"] == [None]
    assert len(err.problems) == 6 and err.truncated == 0


def test_a_key_that_could_not_be_read_is_not_a_duplicate(loaded, csv_bank):
    hold = _csv(csv_bank, "holdings")
    hold.loc[[3, 4], "opened_at"] = "2020-13-01"
    hold.loc[[3, 4], ["customer_id", "product_id"]] = hold.loc[3, ["customer_id", "product_id"]].values
    _put(csv_bank, "holdings", hold)
    err = _reject(csv_bank, loaded)
    assert [p.row for p in err.problems] == [4, 5]
    assert all("cannot read '2020-13-01'" in p.message for p in err.problems)


def test_a_duplicate_key_shows_dates_as_the_bank_wrote_them(loaded, csv_bank):
    hold = _csv(csv_bank, "holdings")
    hold = pd.concat([hold, hold.iloc[[4]]], ignore_index=True)
    hold.loc[len(hold) - 1, "balance"] = "1.0"
    _put(csv_bank, "holdings", hold)
    p = _one(_reject(csv_bank, loaded), file="holdings.csv", row=len(hold))
    r = hold.iloc[4]
    assert (f"duplicate key customer_id='{r.customer_id}', product_id='{r.product_id}', "
            f"opened_at={r.opened_at} (2 rows; first at") in p.message
    assert "datetime" not in p.message


def test_a_short_list_of_problems_is_shown_whole(loaded, csv_bank):
    """Six bad values are six lines, not five and "and 1 more"."""
    df = _csv(csv_bank, "interactions")
    df.loc[:5, "sentiment"] = "7"
    _put(csv_bank, "interactions", df)
    err = _reject(csv_bank, loaded)
    assert [p.row for p in err.problems] == [1, 2, 3, 4, 5, 6] and err.truncated == 0


def test_a_long_list_counts_what_it_leaves_out(loaded, csv_bank):
    """Listed + "and K more" is the number of problems; each check gets its share of the list."""
    df = _csv(csv_bank, "interactions")
    df["sentiment"] = "7"
    df["channel"] = "fax"
    _put(csv_bank, "interactions", df)
    err = _reject(csv_bank, loaded)
    assert len(err.problems) + err.truncated == 2 * len(df)
    assert sorted({p.column for p in err.problems}) == ["channel", "sentiment"]
    assert all(sum(p.column == c for p in err.problems) == 5 for c in ("channel", "sentiment"))


def test_a_csv_with_another_delimiter_is_named(loaded, csv_bank):
    df = _csv(csv_bank, "relationship_managers")
    df.to_csv(csv_bank / "relationship_managers.csv", index=False, sep=";")
    p = _one(_reject(csv_bank, loaded), file="relationship_managers.csv")
    assert "semicolons" in p.message and "comma-separated" in p.message
