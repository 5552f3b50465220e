"""Safe ingest of a bank's own data (CSV or Parquet in the contract of ``nba.schema``).

``ingest(src_dir, store)`` reads one file or one folder of files per table (``customers.csv``,
``holdings/part-0.parquet`` ...), validates every value against the contract, converts it to the
contract's types and commits a new store version only if nothing at all was wrong. Entries whose name
starts with ``_`` or ``.`` are ignored (the generator keeps its ground truth in ``_truth/``).

Checks, each reported with file, row (and CSV line) and column:
- layout: unknown table file, a table given twice, unreadable or malformed file, a required table missing on
  the first ingest (the tables of ``schema.OPTIONAL_TABLES`` may be absent: they are stored empty and
  marked absent; ``schema.ENGINE_TABLES`` are stored empty);
- columns: missing required column, unexpected column (the extension columns declared in
  ``configs/bank.yaml`` are expected), column of an incompatible type;
- values: unparseable, missing where required, not in the allowed set, out of range, in the future,
  out of order within a row (``closed_at`` before ``opened_at``);
- keys (DuckDB over the staged Parquet): duplicate primary key, unknown foreign key.

Files are streamed in batches, so memory stays bounded by the batch, not the file.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Literal
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import ValidationError

from nba import schema
from nba.bank import BankConfig, Extensions, load_bank_config
from nba.errors import ConfigError, DataValidationError, Problem
from nba.schema import Column, DType, Table

from .store import StoreVersion, TableStore

SUFFIXES = (".csv", ".parquet")
MAX_PROBLEMS = 50
MAX_PER_CHECK = 5  # problems shown per (file, column, kind of check) before summarising
BATCH_ROWS = 500_000
DUCKDB_MEMORY = "2GB"  # key checks spill to disk beyond this

Mode = Literal["replace", "append"]


@dataclass
class _Origin:
    """Where the rows of one staged part came from."""

    file: str
    first_row: int  # 0-based index of the part's first row within the source file
    csv: bool


@dataclass
class _Report:
    problems: list[Problem] = field(default_factory=list)
    dropped: int = 0
    _per_check: dict = field(default_factory=lambda: defaultdict(int))

    def add(self, p: Problem, check: str = "") -> None:
        key = (p.file, p.column, check)
        self._per_check[key] += 1
        if self._per_check[key] > MAX_PER_CHECK or len(self.problems) >= MAX_PROBLEMS:
            self.dropped += 1
        else:
            self.problems.append(p)

    def add_rows(self, file: str, column: str | None, check: str, rows: np.ndarray,
                 first_row: int, csv_: bool, message: Callable[[int], str]) -> None:
        """Report each bad row (``rows`` are 0-based batch positions) with ``message(pos)``."""
        for pos in rows[: MAX_PER_CHECK + 1]:
            row = first_row + int(pos) + 1
            self.add(Problem(file, message(int(pos)), row=row, column=column,
                             line=row + 1 if csv_ else None), check)
        self.dropped += max(0, len(rows) - (MAX_PER_CHECK + 1))

    def __bool__(self) -> bool:
        return bool(self.problems) or self.dropped > 0

    def raise_if_any(self) -> None:
        if self:
            raise DataValidationError(self.problems, self.dropped)


# ---------------------------------------------------------------------------------------------
# Discovery


def discover(src: Path) -> tuple[dict[str, list[Path]], list[Problem]]:
    """Map each table to its input files in ``src``."""
    problems: list[Problem] = []
    found: dict[str, list[Path]] = {}
    if not src.is_dir():
        return {}, [Problem(str(src), "not a folder (expected one file or folder per table)")]
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_dir():
            name = entry.name
            files = sorted(p for p in entry.iterdir()
                           if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(("_", ".")))
            if not files:
                problems.append(Problem(str(entry), "folder holds no .csv or .parquet files"))
                continue
            kinds = {p.suffix.lower() for p in files}
            if len(kinds) > 1:
                problems.append(Problem(str(entry), "folder mixes .csv and .parquet files; use one format"))
                continue
        elif entry.suffix.lower() in SUFFIXES:
            name, files = entry.stem, [entry]
        else:
            problems.append(Problem(str(entry), "unsupported file (expected .csv or .parquet, or a folder)"))
            continue
        if name not in schema.TABLES:
            problems.append(Problem(
                str(entry), f"unknown table {name!r} (contract tables: {', '.join(schema.TABLES)})"))
            continue
        if name in found:
            problems.append(Problem(str(entry), f"table {name!r} is given more than once"))
            continue
        found[name] = files
    return found, problems


# ---------------------------------------------------------------------------------------------
# Reading


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def _read_batches(path: Path, report: _Report) -> Iterator[tuple[int, pa.Table]]:
    """Yield ``(first_row, batch)``; CSV values come as strings, Parquet in its own types."""
    f = str(path)
    if path.suffix.lower() == ".parquet":
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            report.add(Problem(f, f"cannot read Parquet file: {e}"))
            return
        offset = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS):
            yield offset, pa.Table.from_batches([batch])
            offset += batch.num_rows
        return

    try:
        header = _csv_header(path)
    except UnicodeDecodeError as e:
        report.add(Problem(f, f"not UTF-8 text: {e}"))
        return
    if not header:
        report.add(Problem(f, "empty file (expected a header line with the column names)"))
        return
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        report.add(Problem(f, f"header repeats column(s) {', '.join(dupes)}", line=1))
        return

    def on_invalid(row) -> str:  # pyarrow.csv.InvalidRow
        line = row.number
        report.add(Problem(
            f, f"has {row.actual_columns} fields, the header has {row.expected_columns}: {row.text[:80]!r}",
            row=None if line is None else line - 1, line=line), "fields")
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            # single-threaded reading is what lets pyarrow report line numbers of malformed rows
            read_options=pacsv.ReadOptions(block_size=64 << 20, encoding="utf8", use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header}, strings_can_be_null=False,
                quoted_strings_can_be_null=False),
        )
        offset = 0
        for batch in reader:
            yield offset, pa.Table.from_batches([batch])
            offset += batch.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        report.add(Problem(f, f"cannot parse CSV: {e}"))


# ---------------------------------------------------------------------------------------------
# Conversion of one column to its contract type


_INT_RE = r"^[+-]?\d+(\.0*)?$"  # "6.0" is an integer (pandas writes nullable ints so); "6.5" is not
_FLOAT_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_DATE_RE = r"^\d{4}-\d{2}-\d{2}$"
# ISO 8601 only: a full date, optionally a time to the minute or finer, optionally Z or an offset.
# (pandas' ISO8601 parser alone also takes "2025", "2025-07" and "2025/07/31 23:40:02".)
_TIMESTAMP_RE = (r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6}0{0,3})?)?"
                 r"(Z|[+-]\d{2}(:?\d{2})?)?)?$")  # an offset only after a time
_OFFSET_RE = r"[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)$"
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class _TypeMismatch(Exception):
    pass


def _convert(arr: pa.ChunkedArray, col: Column, zone: str = "UTC") -> tuple[pa.Array, np.ndarray]:
    """Return the column in contract type and the positions whose value could not be parsed.
    Timestamps without a time zone are the bank's local time (``zone``) and are stored as UTC."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    t = arr.type
    none = np.zeros(0, dtype=np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _parse_strings(arr.cast(pa.string()), col, zone)
    if pa.types.is_dictionary(t):
        return _convert(arr.dictionary_decode(), col, zone)
    if pa.types.is_null(t) or arr.null_count == len(arr):
        # All missing: pandas writes an empty optional column as double, Spark as int32; any type holds
        # "no value" losslessly.
        return pa.nulls(len(arr), col.dtype.arrow), none
    if getattr(pa.types, "is_string_view", lambda _t: False)(t):
        return _parse_strings(arr.cast(pa.string()), col, zone)

    target = col.dtype
    if target is DType.STRING and (pa.types.is_integer(t)):
        return pc.cast(arr, pa.string()), none
    if target is DType.BOOL and pa.types.is_integer(t):
        # 0/1 integers (Spark, DuckDB and SQL exports): lossless; other numbers are not booleans.
        bad = np.flatnonzero(pc.and_(pc.is_valid(arr), pc.invert(pc.is_in(arr, pa.array([0, 1], t))))
                             .to_numpy(zero_copy_only=False))
        return pc.if_else(pc.is_in(arr, pa.array([0, 1], t)), pc.equal(arr, pa.scalar(1, t)),
                          pa.scalar(None, pa.bool_())), bad
    if target is DType.INT and pa.types.is_decimal(t):
        return pc.cast(arr, pa.int64()), none  # safe: a fraction or an overflow is reported
    if target is DType.INT:
        if pa.types.is_integer(t):
            return pc.cast(arr, pa.int64()), none
        if pa.types.is_floating(t):
            vals = arr.to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(~np.isnan(vals) & (np.mod(vals, 1) != 0))
            ok = pc.if_else(pc.is_nan(arr), pa.scalar(None, t), arr)
            if len(bad):
                mask = np.zeros(len(arr), bool)
                mask[bad] = True
                ok = pc.if_else(pa.array(mask), pa.scalar(None, t), ok)
            return pc.cast(ok, pa.int64()), bad
    if target is DType.FLOAT and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        out = pc.cast(arr, pa.float64())
        return pc.if_else(pc.is_nan(out), pa.scalar(None, pa.float64()), out), none
    if target is DType.BOOL and pa.types.is_boolean(t):
        return arr, none
    if target is DType.DATE:
        if pa.types.is_date(t):
            return pc.cast(arr, pa.date32()), none
        if pa.types.is_timestamp(t):
            # A date exported as a timestamp at midnight, in its own zone (or none): its wall clock.
            naive = pc.local_timestamp(arr) if t.tz is not None else arr
            day = pc.cast(pc.cast(naive, pa.date32()), pa.timestamp(naive.type.unit))
            bad = np.flatnonzero(pc.fill_null(pc.not_equal(naive, day), False).to_numpy(zero_copy_only=False))
            return pc.cast(naive, pa.date32()), bad
    if target is DType.TIMESTAMP:
        if pa.types.is_timestamp(t):
            naive, bad_local = _to_naive_utc(arr, zone)
            if t.unit == "ns":  # the store keeps microseconds: finer instants would be changed, so rejected
                ns = pc.cast(naive, pa.int64())
                lossy = pc.fill_null(pc.not_equal(pc.subtract(ns, pc.multiply(pc.divide(ns, 1000), 1000)), 0), False)
                bad = np.union1d(np.flatnonzero(lossy.to_numpy(zero_copy_only=False)), bad_local)
                naive = pc.if_else(lossy, pa.scalar(None, naive.type), naive)
                return pc.cast(naive, pa.timestamp("us")), bad
            return pc.cast(naive, pa.timestamp("us")), bad_local  # safe: an overflow is reported
        if pa.types.is_date(t):  # a date in a timestamp column: the bank's local midnight
            return _to_naive_utc(pc.cast(pc.cast(arr, pa.date32()), pa.timestamp("us")), zone)
    raise _TypeMismatch(f"column has type {t}, expected {col.expected()}")


def _show(arr: pa.Array, i: int, quote: bool = True) -> str:
    """A value for an error message, also one Python cannot hold (a year past 9999)."""
    try:
        v = arr[i].as_py()
        return repr(v) if quote else str(v)
    except (OverflowError, ValueError):
        return f"{arr[i]} ({arr.type})"


def _to_naive_utc(arr: pa.Array, zone: str = "UTC") -> tuple[pa.Array, np.ndarray]:
    """Timestamps as naive UTC, and the rows that name no single instant. With a time zone they are
    converted; without one they are the bank's local time in ``zone``: a local time that the zone skips
    (clocks forward) or repeats (clocks back) is refused, as it does not say which instant it means."""
    none = np.zeros(0, dtype=np.int64)
    if arr.type.tz is not None:
        return pc.cast(arr, pa.timestamp(arr.type.unit)), none
    if zone == "UTC":
        return arr, none
    local = arr.to_pandas()
    utc = local.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC").dt.tz_localize(None)
    bad = np.flatnonzero(local.notna().to_numpy() & utc.isna().to_numpy())
    return pa.array(utc, type=pa.timestamp(arr.type.unit)), bad


def _parse_strings(arr: pa.Array, col: Column, zone: str = "UTC") -> tuple[pa.Array, np.ndarray]:
    s = pc.utf8_trim_whitespace(arr)
    s = pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)
    present = pc.is_valid(s)
    target = col.dtype
    if target is DType.STRING:
        return s, np.zeros(0, dtype=np.int64)
    if target is DType.INT:
        ok = pc.match_substring_regex(s, _INT_RE)
    elif target is DType.FLOAT:
        ok = pc.match_substring_regex(s, _FLOAT_RE)
    elif target is DType.BOOL:
        low = pc.utf8_lower(s)
        ok = pc.is_in(low, pa.array(sorted(_TRUE | _FALSE)))
    elif target is DType.DATE:
        ok = pc.match_substring_regex(s, _DATE_RE)
    else:
        ok = None

    if target is DType.TIMESTAMP:
        iso = pc.fill_null(pc.match_substring_regex(s, _TIMESTAMP_RE), False)
        s = pc.if_else(iso, s, pa.scalar(None, pa.string()))
        text = s.to_pandas()
        offset = text.str.contains(_OFFSET_RE, regex=True, na=False)  # "2026-01-15" ends in "-15": no offset
        parsed = pd.to_datetime(text.where(offset), format="ISO8601", utc=True, errors="coerce")
        local = pd.to_datetime(text.where(~offset), format="ISO8601", errors="coerce")
        if zone != "UTC":  # no offset: the bank's local time (refused where the zone skips or repeats it)
            local = local.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
        else:
            local = local.dt.tz_localize("UTC")
        both = parsed.where(offset, local)
        out = pa.array(both.dt.tz_convert(None).astype("datetime64[us]"), type=pa.timestamp("us"))
        bad = pc.and_(present, pc.is_null(out))
        return out, np.flatnonzero(bad.to_numpy(zero_copy_only=False))

    ok = pc.fill_null(ok, False)
    bad_mask = pc.and_(present, pc.invert(ok))
    clean = pc.if_else(ok, s, pa.scalar(None, pa.string()))
    if target is DType.INT:
        clean = pc.replace_substring_regex(clean, r"\.0*$", "")
        try:
            out = pc.cast(clean, pa.int64())
        except pa.ArrowInvalid:  # overflow
            vals = pd.to_numeric(clean.to_pandas(), errors="coerce")
            over = clean.is_valid().to_numpy(zero_copy_only=False) & (vals.abs() > 2**62).to_numpy()
            bad_mask = pc.or_(bad_mask, pa.array(over))
            out = pc.cast(pc.if_else(pa.array(over), pa.scalar(None, pa.string()), clean), pa.int64())
    elif target is DType.FLOAT:
        out = pc.cast(clean, pa.float64())
    elif target is DType.BOOL:
        out = pc.is_in(pc.utf8_lower(clean), pa.array(sorted(_TRUE)))
        out = pc.if_else(pc.is_valid(clean), out, pa.scalar(None, pa.bool_()))
    else:  # DATE: strptime rolls 2026-02-30 over to March; a round trip finds such dates
        out = pc.cast(pc.strptime(clean, format="%Y-%m-%d", unit="s", error_is_null=True), pa.date32())
        same = pc.equal(pc.strftime(out, format="%Y-%m-%d"), clean)
        bad_mask = pc.or_(bad_mask, pc.and_(pc.is_valid(clean), pc.invert(pc.fill_null(same, False))))
        out = pc.if_else(pc.fill_null(same, False), out, pa.scalar(None, pa.date32()))
    return out, np.flatnonzero(bad_mask.to_numpy(zero_copy_only=False))


# ---------------------------------------------------------------------------------------------
# Per-batch validation


def _check_batch(batch: pa.Table, tbl: Table, file: str, first_row: int, csv_: bool,
                 now: datetime, report: _Report) -> pa.Table | None:
    """Convert and check one batch; return it in contract types, or None if anything was wrong."""
    before = len(report.problems) + report.dropped
    raw = {name: batch.column(name) for name in batch.column_names}
    out: dict[str, pa.Array] = {}
    n = batch.num_rows

    def bad_rows(column, check, rows, message):
        report.add_rows(file, column, check, rows, first_row, csv_, message)

    for col in tbl.columns:
        if col.name not in raw:  # absent optional column (header checked per file)
            out[col.name] = pa.nulls(n, col.dtype.arrow)
            continue
        src = raw[col.name]
        try:
            arr, unparseable = _convert(src, col, getattr(now.tzinfo, "key", "UTC"))
        except _TypeMismatch as e:
            report.add(Problem(file, str(e), column=col.name), "type")
            continue
        except (pa.ArrowInvalid, OverflowError, NotImplementedError, ValueError) as e:
            # e.g. uint64 or decimal values beyond int64, a fraction in an integer decimal, a timestamp
            # past the years a calendar library can localize
            report.add(Problem(file, f"values the contract cannot hold losslessly as {col.expected()}: {e}",
                               column=col.name), "type")
            continue
        if len(unparseable):
            text = src.combine_chunks() if isinstance(src, pa.ChunkedArray) else src
            bad_rows(col.name, "parse", unparseable,
                     lambda i: f"cannot read {_show(text, i)} as {col.expected()}")
        unparsed = np.zeros(n, bool)
        unparsed[unparseable] = True
        _check_values(arr, col, unparsed, now, lambda check, rows, msg: bad_rows(col.name, check, rows, msg))
        out[col.name] = arr

    if len(report.problems) + report.dropped > before:
        return None
    for rule in tbl.ordered:
        a, b = out[rule.earlier], out[rule.later]
        wrong = pc.fill_null(pc.less(b, a), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(wrong)
        if len(rows):
            bad_rows(rule.later, "order", rows,
                     lambda i: f"{rule.later} {_show(b, i, False)} is before {rule.earlier} {_show(a, i, False)}")
    if len(report.problems) + report.dropped > before:
        return None
    return pa.table(out, schema=tbl.arrow_schema)


def _check_values(arr: pa.Array, col: Column, unparsed: np.ndarray, now: datetime,
                  bad: Callable[[str, np.ndarray, Callable[[int], str]], None]) -> None:
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if not col.nullable:
        rows = np.flatnonzero(~valid & ~unparsed)
        if len(rows):
            bad("null", rows, lambda i: f"missing value (expected {col.expected()})")
    if col.allowed is not None:
        ok = pc.fill_null(pc.is_in(arr, pa.array(col.allowed)), True).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(~ok)
        if len(rows):
            bad("allowed", rows, lambda i: f"{arr[i].as_py()!r} is not allowed (expected {col.expected()})")
    if col.list_of is not None:
        items = pc.split_pattern(arr, "|")
        flat = pc.utf8_trim_whitespace(pc.list_flatten(items))
        ok_items = pc.is_in(flat, pa.array(col.list_of)).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(items).to_numpy(zero_copy_only=False)
        rows = np.unique(parents[~ok_items])
        if len(rows):
            bad("allowed", rows, lambda i: f"{arr[i].as_py()!r} is not allowed (expected {col.expected()})")
    if col.min is not None or col.max is not None:
        vals = arr.to_numpy(zero_copy_only=False).astype(float)
        out = np.zeros(len(arr), bool)
        with np.errstate(invalid="ignore"):
            if col.min is not None:
                out |= vals < col.min
            if col.max is not None:
                out |= vals > col.max
        rows = np.flatnonzero(out & valid)
        if len(rows):
            bad("range", rows, lambda i: f"{arr[i].as_py()} is out of range (expected {col.expected()})")
    if col.not_in_future:
        # ``now`` is the bank's local time: a date is in the future after the bank's today, a timestamp
        # after this instant (stored as UTC).
        limit = (pa.scalar(now.date(), pa.date32()) if col.dtype is DType.DATE else
                 pa.scalar(now.astimezone(timezone.utc).replace(tzinfo=None), pa.timestamp("us")))
        late = pc.fill_null(pc.greater(arr, limit), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(late)
        if len(rows):
            bad("future", rows,
                lambda i: f"{_show(arr, i, quote=False)} lies in the future (ingest clock {now.isoformat(timespec='seconds')}, "
                          f"bank time zone {now.tzinfo})")


def _check_header(columns: list[str], tbl: Table, file: str, report: _Report) -> bool:
    ok = True
    for col in tbl.columns:
        if col.required and col.name not in columns:
            report.add(Problem(file, f"missing column (expected {col.expected()})", column=col.name), "header")
            ok = False
    for name in columns:
        if name not in tbl.column_names:
            hint = (f"; a column the bank has beyond the contract must be declared, with its type, under "
                    f"extensions.{tbl.name} in configs/bank.yaml" if tbl.name in schema.EXTENSION_TABLES else "")
            report.add(Problem(
                file, f"unexpected column (table {tbl.name} has: {', '.join(tbl.column_names)}){hint}",
                column=name), "header")
            ok = False
    return ok


# ---------------------------------------------------------------------------------------------
# Key checks over the staged version


def _locate(origins: dict[str, _Origin], part: str, row0: int, store_name: str | None) -> tuple[str, int | None, int | None]:
    o = origins.get(part)
    if o is None:
        return f"(already in store version {store_name})", None, None
    row = o.first_row + row0 + 1
    return o.file, row, (row + 1 if o.csv else None)


def _check_keys(con: duckdb.DuckDBPyConnection, writer, tbl: Table, origins: dict[str, _Origin],
                report: _Report) -> None:
    parent = writer.parent.name if writer.parent else None
    glob = writer.staged_glob(tbl.name)
    src = f"read_parquet('{glob}', filename=true, file_row_number=true)"
    keys = ", ".join(f'"{k}"' for k in tbl.primary_key)
    # Find duplicate keys first (cheap aggregate), then locate only those rows.
    con.execute(f"CREATE OR REPLACE TEMP TABLE dupes AS SELECT {keys}, count(*) AS n FROM {src} "
                f"GROUP BY ALL HAVING count(*) > 1")
    n_dupes = con.execute("SELECT count(*) FROM dupes").fetchone()[0]
    dupes = []
    if n_dupes:
        on = " AND ".join(f's."{k}" = d."{k}"' for k in tbl.primary_key)
        dupes = con.execute(
            f"""WITH d AS (SELECT * FROM dupes ORDER BY ALL LIMIT {MAX_PER_CHECK + 1})
                SELECT {", ".join(f'd."{k}"' for k in tbl.primary_key)},
                       list(s.filename ORDER BY s.filename, s.file_row_number),
                       list(s.file_row_number ORDER BY s.filename, s.file_row_number), any_value(d.n)
                FROM {src} s JOIN d ON {on} GROUP BY ALL ORDER BY ALL""").fetchall()
    for rec in dupes:
        key = dict(zip(tbl.primary_key, rec[: len(tbl.primary_key)]))
        files, rows, n = rec[len(tbl.primary_key)], rec[len(tbl.primary_key) + 1], rec[-1]
        first = _locate(origins, files[0], rows[0], parent)
        second = _locate(origins, files[1], rows[1], parent)
        where_first = first[0] + (f" row {first[1]}" if first[1] else "")
        report.add(Problem(
            second[0], f"duplicate key {_fmt_key(key)} ({n} rows; first at {where_first})",
            row=second[1], line=second[2], column=", ".join(tbl.primary_key)), "dupe")
    report.dropped += max(0, n_dupes - len(dupes))

    for fk in tbl.foreign_keys:
        ref = f"read_parquet('{writer.staged_glob(fk.table)}')"
        on = " AND ".join(f'c."{a}" = p."{b}"' for a, b in zip(fk.columns, fk.ref_columns))
        notnull = " AND ".join(f'c."{a}" IS NOT NULL' for a in fk.columns)
        q = f"FROM {src} c ANTI JOIN {ref} p ON {on} WHERE {notnull}"
        cols = ", ".join(f'c."{a}"' for a in fk.columns)
        missing = con.execute(
            f"SELECT {cols}, c.filename, c.file_row_number {q} ORDER BY c.filename, c.file_row_number "
            f"LIMIT {MAX_PER_CHECK}").fetchall()
        if not missing:
            continue
        total = con.execute(f"SELECT count(*) {q}").fetchone()[0]
        for rec in missing:
            vals = rec[: len(fk.columns)]
            file, row, line = _locate(origins, rec[-2], rec[-1], parent)
            report.add(Problem(
                file, f"unknown {fk.table} key {', '.join(map(repr, vals))} (no such {'/'.join(fk.ref_columns)} "
                f"in {fk.table})", row=row, line=line, column=", ".join(fk.columns)), "fk")
        report.dropped += max(0, total - len(missing))


def _fmt_key(key: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in key.items())


# ---------------------------------------------------------------------------------------------


def ingest(src: Path, store: TableStore, *, mode: Mode = "replace", now: datetime | None = None,
           progress: Callable[[str], None] | None = None, source: str | None = None,
           wait: float = 0, time_zone: str | None = None,
           extensions: Extensions | dict | None = None) -> StoreVersion:
    """Validate ``src`` and commit it as a new store version; raise ``DataValidationError`` otherwise.

    ``mode="replace"``: each table given replaces the stored one; tables not given are carried over.
    ``mode="append"``: rows given are added to the stored tables (keys must stay unique).
    On any problem nothing is committed and the live version is unchanged. ``source`` describes the
    input in the version's manifest (default: the folder and mode); ``wait`` is how many seconds to
    wait for another writer (0: fail at once with ``StoreError``). ``time_zone`` (default: the bank's,
    ``configs/bank.yaml``) decides what "in the future" means for date columns. ``extensions`` (default:
    ``extensions`` of ``configs/bank.yaml``; a dict ``{"customers": {"credit_score": "float"}}`` or
    :class:`nba.bank.Extensions`) are the extra columns the files may have; an appended table must have
    the extensions it was stored with. Tables of ``schema.OPTIONAL_TABLES`` missing on the first ingest
    are stored empty and marked absent (``StoreVersion.absent``); ``ConfigError`` for bad extensions.
    """
    if mode not in ("replace", "append"):
        raise ValueError(f"mode must be 'replace' or 'append', not {mode!r}")
    # The bank's clock: "today" for date columns is the bank's today (configs/bank.yaml). A naive ``now``
    # is UTC.
    try:
        zone = BankConfig(time_zone=time_zone).time_zone if time_zone else load_bank_config().time_zone
    except ValidationError as e:
        raise ConfigError(f"time_zone: {e.errors()[0]['msg']}") from None
    try:
        ext = (load_bank_config().extensions if extensions is None else
               extensions if isinstance(extensions, Extensions) else Extensions.model_validate(extensions)).as_dict()
    except ValidationError as e:
        raise ConfigError(f"extensions: {'; '.join(err['msg'] for err in e.errors())}") from None
    tables = schema.tables(ext)
    now = now or datetime.now(timezone.utc)
    now = (now if now.tzinfo else now.replace(tzinfo=timezone.utc)).astimezone(ZoneInfo(zone))
    src = Path(src)
    report = _Report()
    files, layout = discover(src)
    for p in layout:
        report.add(p)
    report.raise_if_any()
    if not files:
        raise DataValidationError([Problem(str(src), "holds no table files (expected e.g. customers.csv)")])

    current = store.current()
    stored = set(current.tables) if current else set()
    may_lack = schema.OPTIONAL_TABLES + schema.ENGINE_TABLES
    missing = [t for t in schema.TABLES if t not in files and t not in stored and t not in may_lack]
    if missing:
        raise DataValidationError([Problem(
            str(src), f"no file for table {t!r} and the store has none yet (give {t}.csv, "
                      f"{t}.parquet or a {t}/ folder; a header-only CSV makes an empty table; only "
                      f"{', '.join(may_lack)} may be left out)")
            for t in missing])
    if mode == "append":
        changed = [t for t in files if t in stored and current.extensions(t) != ext.get(t, {})]
        if changed:
            raise DataValidationError([Problem(
                str(src), f"table {t!r} is stored with extension columns {current.extensions(t) or 'none'}, and "
                          f"configs/bank.yaml declares {ext.get(t) or 'none'}: append needs the same columns "
                          f"(ingest {t} in replace mode to change them)") for t in changed])

    origins: dict[str, _Origin] = {}
    source = source or f"ingest {src} (mode={mode})"
    with store.write(source, wait=wait) as writer:
        for name, tbl in tables.items():
            if name not in files:
                if name in stored:
                    writer.link_from_parent(name)
                else:  # an optional table the export does not have: empty, and absent if the bank's
                    writer.ensure_table(name, ext.get(name, {}), absent=name in schema.OPTIONAL_TABLES)
                    writer.write_part(name, tbl.arrow_schema.empty_table())
                continue
            if mode == "append" and name in stored:
                writer.link_from_parent(name)
            writer.ensure_table(name, ext.get(name, {}))
            for path in files[name]:
                if progress:
                    progress(f"{name}: {path.name}")
                _ingest_file(path, tbl, writer, origins, now, report)
            if not writer.staged_parts(name):
                writer.write_part(name, tbl.arrow_schema.empty_table())
        report.raise_if_any()

        if progress:
            progress("checking keys")
        con = duckdb.connect(config={
            "threads": 2, "memory_limit": DUCKDB_MEMORY, "preserve_insertion_order": False,
            "temp_directory": str(writer.path / ".duckdb-spill")})
        try:
            for tbl in tables.values():
                # A table carried over unchanged whose referenced tables are unchanged was checked when
                # it was committed: only what the new files touch is checked again.
                if tbl.name in files or any(fk.table in files for fk in tbl.foreign_keys):
                    _check_keys(con, writer, tbl, origins, report)
        finally:
            con.close()
        report.raise_if_any()
    return store.require_current()


def _ingest_file(path: Path, tbl: Table, writer, origins: dict[str, _Origin], now: datetime,
                 report: _Report) -> None:
    csv_ = path.suffix.lower() == ".csv"
    f = str(path)
    header_checked = False
    for first_row, batch in _read_batches(path, report):
        if not header_checked:
            header_checked = True
            if not _check_header(batch.column_names, tbl, f, report):
                return
        checked = _check_batch(batch, tbl, f, first_row, csv_, now, report)
        if checked is None or report:
            continue  # keep validating to report more, but write nothing once anything is wrong
        part = writer.write_part(tbl.name, checked)
        origins[str(part)] = _Origin(f, first_row, csv_)
    if not header_checked and not report:
        # A file without rows still needs a valid header (Parquet always has its schema).
        if csv_:
            _check_header(_csv_header(path), tbl, f, report)
        else:
            _check_header(pq.read_schema(path).names, tbl, f, report)
