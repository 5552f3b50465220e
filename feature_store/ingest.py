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

All of them in one run, so that a bank fixes its export once: a problem found does not stop the checks,
only those it makes meaningless (the keys of a column that could not be read, references to a table
that could not be read in full). Up to ``MAX_PROBLEMS`` are listed, the rest counted.

Files are streamed in batches, so memory stays bounded by the batch, not the file.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
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
from nba.bank import BankConfig, Extensions, bank_config_name, load_bank_config
from nba.errors import ConfigError, DataValidationError, Problem
from nba.schema import Column, DType, Table

from .store import StoreVersion, TableStore

SUFFIXES = (".csv", ".parquet")
MAX_PROBLEMS = 50  # problems listed in all; at most so many of one check are kept
MAX_PER_CHECK = 5  # problems listed per (file, column, kind of check) when there are more than MAX_PROBLEMS
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
    """Every problem found, in one run. Kept per check (file, column, kind of check) up to MAX_PROBLEMS
    each and counted beyond; :meth:`listing` lists them all if there are at most MAX_PROBLEMS, else up to
    MAX_PER_CHECK of each check (round robin, MAX_PROBLEMS in all) and counts the rest."""

    _kept: dict = field(default_factory=dict)  # check -> [Problem], in the order found
    _counts: dict = field(default_factory=lambda: defaultdict(int))  # check -> problems found

    def add(self, p: Problem, check: str = "") -> None:
        key = (p.file, p.column, check)
        self._counts[key] += 1
        kept = self._kept.setdefault(key, [])
        if len(kept) < MAX_PROBLEMS:
            kept.append(p)

    def add_uncounted(self, file: str, column: str | None, check: str, n: int) -> None:
        """Count ``n`` more problems of one check that are not kept (beyond what :meth:`add` was given)."""
        if n > 0:
            self._counts[(file, column, check)] += n

    def add_rows(self, file: str, column: str | None, check: str, rows: np.ndarray,
                 first_row: int, csv_: bool, message: Callable[[int], str]) -> None:
        """Report each bad row (``rows`` are 0-based batch positions) with ``message(pos)``."""
        for pos in rows[:MAX_PROBLEMS]:
            row = first_row + int(pos) + 1
            self.add(Problem(file, message(int(pos)), row=row, column=column,
                             line=row + 1 if csv_ else None), check)
        self.add_uncounted(file, column, check, len(rows) - MAX_PROBLEMS)

    def count(self, file: str, column: str | None = None, check: str = "") -> int:
        return self._counts.get((file, column, check), 0)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def listing(self) -> tuple[list[Problem], int]:
        """The problems to show and how many more there are (shown + more = :attr:`total`)."""
        per_check = MAX_PROBLEMS if self.total <= MAX_PROBLEMS else MAX_PER_CHECK
        quota = dict.fromkeys(self._kept, 0)
        room = MAX_PROBLEMS
        while room:  # round robin, so that one check with many problems does not hide the others
            before = room
            for key, kept in self._kept.items():
                if room and quota[key] < min(len(kept), per_check):
                    quota[key] += 1
                    room -= 1
            if room == before:
                break
        shown = [p for key, kept in self._kept.items() for p in kept[: quota[key]]]
        return shown, self.total - len(shown)

    def __bool__(self) -> bool:
        return self.total > 0

    def raise_if_any(self) -> None:
        if self:
            raise DataValidationError(*self.listing())


# ---------------------------------------------------------------------------------------------
# Discovery


def discover(src: Path) -> tuple[dict[str, list[Path]], list[Problem]]:
    """Map each table to its input files in ``src``."""
    found, problems, _ = _discover(src)
    return found, problems


def _discover(src: Path) -> tuple[dict[str, list[Path]], list[Problem], set[str]]:
    """:func:`discover`, and the contract tables given in a form that cannot be read (a folder without
    files or of mixed formats, a table given twice): they are not validated further."""
    problems: list[Problem] = []
    found: dict[str, list[Path]] = {}
    broken: set[str] = set()
    if not src.is_dir():
        return {}, [Problem(str(src), "not a folder (expected one file or folder per table)")], broken
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_dir():
            name = entry.name
            files = sorted(p for p in entry.iterdir()
                           if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(("_", ".")))
            if not files:
                problems.append(Problem(str(entry), "folder holds no .csv or .parquet files"))
                broken.add(name)
                continue
            kinds = {p.suffix.lower() for p in files}
            if len(kinds) > 1:
                problems.append(Problem(str(entry), "folder mixes .csv and .parquet files; use one format"))
                broken.add(name)
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
            broken.add(name)
            continue
        found[name] = files
    broken &= set(schema.TABLES)
    return {t: f for t, f in found.items() if t not in broken}, problems, broken


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
            report.add(Problem(f, f"cannot read Parquet file: {e}"), "read")
            return
        offset = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS):
            yield offset, pa.Table.from_batches([batch])
            offset += batch.num_rows
        return

    try:
        header = _csv_header(path)
    except UnicodeDecodeError as e:
        report.add(Problem(f, f"not UTF-8 text: {e}"), "read")
        return
    if not header:
        report.add(Problem(f, "empty file (expected a header line with the column names)"), "read")
        return
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
        if len(header) == 1 and sep in header[0]:
            report.add(Problem(f, f"the header is one column holding {name} ({header[0][:60]!r}): CSV files "
                                  f"must be comma-separated (export with ',' as the delimiter)", line=1), "read")
            return
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        report.add(Problem(f, f"header repeats column{'s' if len(dupes) > 1 else ''} {', '.join(dupes)}", line=1), "read")
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
        report.add(Problem(f, f"cannot parse CSV: {e}"), "read")


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
_NULL_WORDS = {"NULL", "N/A", "NA", "NONE", "NAN", "NIL", "-", "?"}  # what exports write for "no value"
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class _TypeMismatch(Exception):
    pass


@dataclass
class _ClockChange:
    """Rows of a batch whose local time (no offset) the bank's zone skips or repeats, and why."""

    zone: str
    local: pd.Series  # the batch's naive local times, by position
    rows: np.ndarray  # positions

    def message(self, pos: int) -> str | None:
        t = self.local.iloc[pos]
        return None if pd.isna(t) else _clock_change(t.to_pydatetime(warn=False), self.zone)


def _clock_change(t: datetime, zone: str) -> str | None:
    """Why the naive local time ``t`` names no single instant in ``zone`` (None if it does)."""
    z = ZoneInfo(zone)
    # PEP 495: fold=0 reads a skipped or repeated time with the offset before the change, fold=1 after it.
    before, after = t.replace(tzinfo=z, fold=0).utcoffset(), t.replace(tzinfo=z, fold=1).utcoffset()
    if before == after:
        return None
    # The change happens between the two instants the time could mean: find it to the second.
    epoch = datetime(1970, 1, 1)
    a, b = sorted([((t - before) - epoch).total_seconds(), ((t - after) - epoch).total_seconds()])
    lo, hi = int(np.floor(a)), int(np.ceil(b))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, z).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    change = datetime.fromtimestamp(hi, timezone.utc).replace(tzinfo=None)
    old, new = change + before, change + after

    def clock(d: datetime) -> str:
        return d.strftime("%H:%M" if d.second == 0 else "%H:%M:%S")

    why = "a time without one is the bank's local time and must exist once in its zone"
    if after > before:
        when = "that night" if old.hour < 6 or old.hour >= 21 else "that day"
        return (f"{t.isoformat()} does not exist in {zone} (the clocks went forward from {clock(old)} to "
                f"{clock(new)} {when}); give the time with its UTC offset ({why})")
    return (f"{t.isoformat()} happened twice in {zone} (the clocks went back from {clock(old)} to "
            f"{clock(new)}); give it with its UTC offset, e.g. {_fmt_offset(before)} or {_fmt_offset(after)} ({why})")


def _fmt_offset(d) -> str:
    secs = int(d.total_seconds())
    sign, secs = ("-" if secs < 0 else "+"), abs(secs)
    hm = f"{sign}{secs // 3600:02d}:{secs % 3600 // 60:02d}"
    return hm if secs % 60 == 0 else f"{hm}:{secs % 60:02d}"


def _localize(local: pd.Series, zone: str, clock: list | None) -> pd.Series:
    """Naive local times in ``zone`` as aware UTC. A time the zone skips (clocks forward) or repeats
    (clocks back) names no single instant: it becomes NaT, and is appended to ``clock`` as a
    :class:`_ClockChange` (when given) so that the message can say why."""
    utc = local.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
    rows = np.flatnonzero(local.notna().to_numpy() & utc.isna().to_numpy())
    if len(rows) and clock is not None:
        clock.append(_ClockChange(zone, local, rows))
    return utc.dt.tz_convert("UTC")


def _convert(arr: pa.ChunkedArray, col: Column, zone: str = "UTC",
             clock: list | None = None) -> tuple[pa.Array, np.ndarray]:
    """Return the column in contract type and the positions whose value could not be parsed.
    Timestamps without a time zone are the bank's local time (``zone``) and are stored as UTC; those of
    the positions that the zone skips or repeats are also appended to ``clock`` (:class:`_ClockChange`)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    t = arr.type
    none = np.zeros(0, dtype=np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _parse_strings(arr.cast(pa.string()), col, zone, clock)
    if pa.types.is_dictionary(t):
        return _convert(arr.dictionary_decode(), col, zone, clock)
    if pa.types.is_null(t) or arr.null_count == len(arr):
        # All missing: pandas writes an empty optional column as double, Spark as int32; any type holds
        # "no value" losslessly.
        return pa.nulls(len(arr), col.dtype.arrow), none
    if getattr(pa.types, "is_string_view", lambda _t: False)(t):
        return _parse_strings(arr.cast(pa.string()), col, zone, clock)

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
            naive, bad_local = _to_naive_utc(arr, zone, clock)
            if t.unit == "ns":  # the store keeps microseconds: finer instants would be changed, so rejected
                ns = pc.cast(naive, pa.int64())
                lossy = pc.fill_null(pc.not_equal(pc.subtract(ns, pc.multiply(pc.divide(ns, 1000), 1000)), 0), False)
                bad = np.union1d(np.flatnonzero(lossy.to_numpy(zero_copy_only=False)), bad_local)
                naive = pc.if_else(lossy, pa.scalar(None, naive.type), naive)
                return pc.cast(naive, pa.timestamp("us")), bad
            return pc.cast(naive, pa.timestamp("us")), bad_local  # safe: an overflow is reported
        if pa.types.is_date(t):  # a date in a timestamp column: the bank's local midnight
            return _to_naive_utc(pc.cast(pc.cast(arr, pa.date32()), pa.timestamp("us")), zone, clock)
    raise _TypeMismatch(f"column has type {t}, expected {col.expected()}")


def _show(arr: pa.Array, i: int, quote: bool = True) -> str:
    """A value for an error message, also one Python cannot hold (a year past 9999)."""
    try:
        v = arr[i].as_py()
        if isinstance(v, (date, datetime)):
            return v.isoformat()
        if isinstance(v, pd.Timestamp):  # nanoseconds, which datetime cannot hold
            return f"{v.isoformat()} (nanoseconds)"
        return repr(v) if quote else str(v)
    except (OverflowError, ValueError):
        return f"{arr[i]} ({arr.type})"


def _to_naive_utc(arr: pa.Array, zone: str = "UTC", clock: list | None = None) -> tuple[pa.Array, np.ndarray]:
    """Timestamps as naive UTC, and the rows that name no single instant. With a time zone they are
    converted; without one they are the bank's local time in ``zone``: a local time that the zone skips
    (clocks forward) or repeats (clocks back) is refused, as it does not say which instant it means."""
    none = np.zeros(0, dtype=np.int64)
    if arr.type.tz is not None:
        return pc.cast(arr, pa.timestamp(arr.type.unit)), none
    if zone == "UTC":
        return arr, none
    local = arr.to_pandas()
    utc = _localize(local, zone, clock).dt.tz_localize(None)
    bad = np.flatnonzero(local.notna().to_numpy() & utc.isna().to_numpy())
    return pa.array(utc, type=pa.timestamp(arr.type.unit)), bad


def _parse_strings(arr: pa.Array, col: Column, zone: str = "UTC",
                   clock: list | None = None) -> tuple[pa.Array, np.ndarray]:
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
            local = _localize(local, zone, clock)
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
                 now: datetime, report: _Report) -> tuple[pa.Table, set[str]]:
    """Convert and check one batch. Return it in contract types (a value that could not be read, and a
    column that could not be converted, as null) and the names of the columns that could not be converted."""
    raw = {name: batch.column(name) for name in batch.column_names}
    out: dict[str, pa.Array] = {}
    failed: set[str] = set()
    n = batch.num_rows

    def bad_rows(column, check, rows, message):
        report.add_rows(file, column, check, rows, first_row, csv_, message)

    for col in tbl.columns:
        if col.name not in raw:  # absent optional column (header checked per file)
            out[col.name] = pa.nulls(n, col.dtype.arrow)
            continue
        src = raw[col.name]
        clock: list[_ClockChange] = []
        try:
            arr, unparseable = _convert(src, col, getattr(now.tzinfo, "key", "UTC"), clock)
        except _TypeMismatch as e:
            report.add(Problem(file, str(e), column=col.name), "type")
            out[col.name] = pa.nulls(n, col.dtype.arrow)
            failed.add(col.name)
            continue
        except (pa.ArrowInvalid, OverflowError, NotImplementedError, ValueError) as e:
            # e.g. uint64 or decimal values beyond int64, a fraction in an integer decimal, a timestamp
            # past the years a calendar library can localize
            report.add(Problem(file, f"values the contract cannot hold losslessly as {col.expected()}: {e}",
                               column=col.name), "type")
            out[col.name] = pa.nulls(n, col.dtype.arrow)
            failed.add(col.name)
            continue
        if len(unparseable):
            text = src.combine_chunks() if isinstance(src, pa.ChunkedArray) else src

            def cannot_read(i: int) -> str:
                hint = ""
                if pa.types.is_string(text.type) and str(text[i].as_py()).strip().upper() in _NULL_WORDS:
                    hint = "; leave the cell empty for a missing value"
                return f"cannot read {_show(text, i)} as {col.expected()}{hint}"

            # A local time the bank's zone skips or repeats was read: it is its instant that is unknown.
            changes = {int(i): c for c in clock for i in c.rows}
            in_change = np.isin(unparseable, np.fromiter(changes, np.int64, len(changes)))
            if in_change.any():
                bad_rows(col.name, "clock", unparseable[in_change],
                         lambda i: changes[i].message(i) or cannot_read(i))
            if (~in_change).any():
                bad_rows(col.name, "parse", unparseable[~in_change], cannot_read)
        unparsed = np.zeros(n, bool)
        unparsed[unparseable] = True
        _check_values(arr, col, unparsed, now, lambda check, rows, msg: bad_rows(col.name, check, rows, msg))
        out[col.name] = arr

    # Within a row (values that could not be read are null here, and not compared).
    for rule in tbl.ordered:
        a, b = out[rule.earlier], out[rule.later]
        wrong = pc.fill_null(pc.less(b, a), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(wrong)
        if len(rows):
            bad_rows(rule.later, "order", rows,
                     lambda i: f"{rule.later} {_show(b, i, False)} is before {rule.earlier} {_show(a, i, False)}")
    return pa.table(out, schema=_relaxed(tbl)), failed


def _relaxed(tbl: Table) -> pa.Schema:
    """``tbl``'s schema with every column nullable: a batch with problems holds nulls where values were bad."""
    return pa.schema([f.with_nullable(True) for f in tbl.arrow_schema])


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
            def when(i: int) -> str:  # a timestamp in the bank's time, as the clock it is compared with
                v = arr[i].as_py()
                if isinstance(v, datetime):
                    return v.replace(tzinfo=timezone.utc).astimezone(now.tzinfo).isoformat()
                return _show(arr, i, quote=False)

            bad("future", rows,
                lambda i: f"{when(i)} lies in the future (ingest clock {now.isoformat(timespec='seconds')}, "
                          f"bank time zone {now.tzinfo})")


def _check_header(columns: list[str], tbl: Table, file: str, report: _Report) -> set[str]:
    """Report missing and unexpected columns; return the required columns that are missing."""
    missing = set()
    for col in tbl.columns:
        if col.required and col.name not in columns:
            report.add(Problem(file, f"missing column (expected {col.expected()})", column=col.name), "header")
            missing.add(col.name)
    for name in columns:
        if name not in tbl.column_names:
            hint = (f"; a column the bank has beyond the contract must be declared, with its type, under "
                    f"extensions.{tbl.name} in {bank_config_name()}" if tbl.name in schema.EXTENSION_TABLES else "")
            report.add(Problem(
                file, f"unexpected column (table {tbl.name} has: {', '.join(tbl.column_names)}){hint}",
                column=name), "header")
    return missing


# ---------------------------------------------------------------------------------------------
# Key checks over the staged version


def _locate(origins: dict[str, _Origin], part: str, row0: int, store_name: str | None,
            table: str) -> tuple[str, int | None, int | None]:
    """(file, row, CSV line) of row ``row0`` of a staged part; a row carried over from the live version
    is named by its table and version (its file is long gone)."""
    o = origins.get(part)
    if o is None:
        return f"{table} already in store version {store_name}", None, None
    row = o.first_row + row0 + 1
    return o.file, row, (row + 1 if o.csv else None)


def _check_keys(con: duckdb.DuckDBPyConnection, writer, tbl: Table, origins: dict[str, _Origin],
                report: _Report, *, check_dupes: bool = True, foreign_keys: tuple | list | None = None) -> None:
    """Duplicate primary keys (if ``check_dupes``) and unknown ``foreign_keys`` (default: all) of ``tbl``'s
    staged rows. A key value that is missing (null) is neither a duplicate nor unknown: it was reported
    as a missing or unreadable value."""
    parent = writer.parent.name if writer.parent else None
    glob = writer.staged_glob(tbl.name)
    src = f"read_parquet('{glob}', filename=true, file_row_number=true)"
    keys = ", ".join(f'"{k}"' for k in tbl.primary_key)
    key_given = " AND ".join(f'"{k}" IS NOT NULL' for k in tbl.primary_key)
    foreign_keys = tbl.foreign_keys if foreign_keys is None else foreign_keys
    # Find duplicate keys first (cheap aggregate), then locate only those rows.
    n_dupes = 0
    if check_dupes:
        con.execute(f"CREATE OR REPLACE TEMP TABLE dupes AS SELECT {keys}, count(*) AS n FROM {src} "
                    f"WHERE {key_given} GROUP BY ALL HAVING count(*) > 1")
        n_dupes = con.execute("SELECT count(*) FROM dupes").fetchone()[0]
    dupes = []
    if n_dupes:
        on = " AND ".join(f's."{k}" = d."{k}"' for k in tbl.primary_key)
        dupes = con.execute(
            f"""WITH d AS (SELECT * FROM dupes ORDER BY ALL LIMIT {MAX_PROBLEMS})
                SELECT {", ".join(f'd."{k}"' for k in tbl.primary_key)},
                       list(s.filename ORDER BY s.filename, s.file_row_number),
                       list(s.file_row_number ORDER BY s.filename, s.file_row_number), any_value(d.n)
                FROM {src} s JOIN d ON {on} GROUP BY ALL ORDER BY ALL""").fetchall()
    for rec in dupes:
        key = dict(zip(tbl.primary_key, rec[: len(tbl.primary_key)]))
        files, rows, n = rec[len(tbl.primary_key)], rec[len(tbl.primary_key) + 1], rec[-1]
        first = _locate(origins, files[0], rows[0], parent, tbl.name)
        second = _locate(origins, files[1], rows[1], parent, tbl.name)
        where_first = first[0] + (f" row {first[1]}" if first[1] else "")
        report.add(Problem(
            second[0], f"duplicate key {_fmt_key(key)} ({n} rows; first at {where_first})",
            row=second[1], line=second[2], column=", ".join(tbl.primary_key)), "dupe")
    if dupes:
        report.add_uncounted(second[0], ", ".join(tbl.primary_key), "dupe", n_dupes - len(dupes))

    for fk in foreign_keys:
        ref = f"read_parquet('{writer.staged_glob(fk.table)}')"
        on = " AND ".join(f'c."{a}" = p."{b}"' for a, b in zip(fk.columns, fk.ref_columns))
        notnull = " AND ".join(f'c."{a}" IS NOT NULL' for a in fk.columns)
        q = f"FROM {src} c ANTI JOIN {ref} p ON {on} WHERE {notnull}"
        cols = ", ".join(f'c."{a}"' for a in fk.columns)
        missing = con.execute(
            f"SELECT {cols}, c.filename, c.file_row_number {q} ORDER BY c.filename, c.file_row_number "
            f"LIMIT {MAX_PROBLEMS}").fetchall()
        if not missing:
            continue
        total = con.execute(f"SELECT count(*) {q}").fetchone()[0]
        for rec in missing:
            vals = rec[: len(fk.columns)]
            file, row, line = _locate(origins, rec[-2], rec[-1], parent, tbl.name)
            stored = "" if rec[-2] in origins else (
                f"; a stored {tbl.name} row refers to it: give {fk.table} with it, or {tbl.name} again without it")
            report.add(Problem(
                file, f"unknown {fk.table} key {', '.join(map(_fmt_value, vals))} (no such "
                f"{'/'.join(fk.ref_columns)} in {fk.table}{stored})", row=row, line=line,
                column=", ".join(fk.columns)), "fk")
        report.add_uncounted(file, ", ".join(fk.columns), "fk", total - len(missing))


def _fmt_key(key: dict) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in key.items())


def _fmt_value(v) -> str:
    """A key value as the bank wrote it: text quoted, dates and times in ISO 8601."""
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    return repr(v) if isinstance(v, str) else str(v)


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
    # Every kind of problem is looked for in one run: layout, columns, values and keys. A check that a
    # problem found earlier makes meaningless is left out (keys of a column that could not be read,
    # references to a table that could not be read in full).
    report = _Report()
    files, layout, broken = _discover(src)
    for p in layout:
        report.add(p, "layout")
    if not files:
        report.raise_if_any()
        raise DataValidationError([Problem(str(src), "holds no table files (expected e.g. customers.csv)")])

    current = store.current()
    stored = set(current.tables) if current else set()
    may_lack = schema.OPTIONAL_TABLES + schema.ENGINE_TABLES
    missing = [t for t in schema.TABLES if t not in files and t not in stored and t not in may_lack
               and t not in broken]
    for t in missing:
        report.add(Problem(
            str(src), f"no file for table {t!r} and the store has none yet (give {t}.csv, "
                      f"{t}.parquet or a {t}/ folder; a header-only CSV makes an empty table; only "
                      f"{', '.join(may_lack)} may be left out)"), "layout")
    broken |= set(missing)
    if mode == "append":
        changed = [t for t in files if t in stored and current.extensions(t) != ext.get(t, {})]
        for t in changed:
            report.add(Problem(
                str(src), f"table {t!r} is stored with extension columns {current.extensions(t) or 'none'}, and "
                          f"{bank_config_name()} declares {ext.get(t) or 'none'}: append needs the same columns "
                          f"(ingest {t} in replace mode to change them)"), "layout")
        broken |= set(changed)
    files = {t: f for t, f in files.items() if t not in broken}

    origins: dict[str, _Origin] = {}
    damage: dict[str, _Damage] = defaultdict(_Damage)
    source = source or f"ingest {src} (mode={mode})"
    with store.write(source, wait=wait) as writer:
        for name, tbl in tables.items():
            if name in broken:  # reported; nothing is committed
                continue
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
                _ingest_file(path, tbl, writer, origins, now, report, damage[name])
            if not any(writer.table_dir(name).glob("*.parquet")):
                _stage(writer, tbl, _relaxed(tbl).empty_table(), report)

        if progress:
            progress("checking keys")
        con = duckdb.connect(config={
            "threads": 2, "memory_limit": DUCKDB_MEMORY, "preserve_insertion_order": False,
            "temp_directory": str(writer.path / ".duckdb-spill")})
        try:
            for tbl in tables.values():
                # A table carried over unchanged whose referenced tables are unchanged was checked when
                # it was committed: only what the new files touch is checked again.
                if tbl.name in broken or not (tbl.name in files or any(fk.table in files for fk in tbl.foreign_keys)):
                    continue
                lost = damage[tbl.name].columns
                fks = [fk for fk in tbl.foreign_keys
                       if fk.table not in broken and not lost & set(fk.columns)
                       and not damage[fk.table].rows_lost and not damage[fk.table].columns & set(fk.ref_columns)]
                try:
                    _check_keys(con, writer, tbl, origins, report, check_dupes=not lost & set(tbl.primary_key),
                                foreign_keys=fks)
                except duckdb.Error:
                    if not report:
                        raise
                    # Staged data that already has problems may not be readable as one table (a column
                    # of another type in one file): the problems found so far are reported.
        finally:
            con.close()
        report.raise_if_any()
    return store.require_current()


def _stage(writer, tbl: Table, data: pa.Table, report: _Report) -> Path:
    """Stage rows in contract types. Once anything is wrong they are staged for the key checks only, as
    they are (bad values null), outside the version's manifest: such a version is never committed."""
    if not report:
        return writer.write_part(tbl.name, data)
    d = writer.table_dir(tbl.name)
    part = d / f"unchecked-{sum(1 for _ in d.glob('unchecked-*')):05d}.parquet"
    pq.write_table(data, part)
    return part


@dataclass
class _Damage:
    """What of one table could not be staged, so that its key checks would say what is not so."""

    columns: set[str] = field(default_factory=set)  # missing or of another type: staged as null
    rows_lost: bool = False  # a file, or some of its rows, could not be read


def _ingest_file(path: Path, tbl: Table, writer, origins: dict[str, _Origin], now: datetime,
                 report: _Report, damage: _Damage) -> None:
    """Check one file and stage its rows. With any problem (here or before) they are still staged, for
    the key checks, but outside the version's manifest: such a version is never committed."""
    csv_ = path.suffix.lower() == ".csv"
    f = str(path)
    header_checked = False
    for first_row, batch in _read_batches(path, report):
        if not header_checked:
            header_checked = True
            # The other columns are still checked; a missing column is staged as null.
            damage.columns |= _check_header(batch.column_names, tbl, f, report)
        checked, failed = _check_batch(batch, tbl, f, first_row, csv_, now, report)
        damage.columns |= failed
        origins[str(_stage(writer, tbl, checked, report))] = _Origin(f, first_row, csv_)
    if report.count(f, None, "read") or report.count(f, None, "fields"):
        damage.rows_lost = True
    elif not header_checked:
        # A file without rows still needs a valid header (Parquet always has its schema).
        names = _csv_header(path) if csv_ else pq.read_schema(path).names
        damage.columns |= _check_header(names, tbl, f, report)
