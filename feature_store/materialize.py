"""Materialize features: offline Parquet versioned by as_of, and the online store for serving.

Layout under ``$NBA_HOME/features``::

    as_of=2026-11-01/features.parquet    one row per customer: nba.features.COLUMNS
    as_of=2026-11-01/manifest.json       store version + content hash it came from, rows, timings

A re-materialization of the same as_of is written beside the old folder and swapped in by renames.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import duckdb
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nba import features as F
from nba.errors import StoreError
from nba.home import Home
from nba.state import StateConfig

from .offline import compute_features, data_end, label_frame
from .online import OnlineStore, open_online_store
from .store import StoreVersion, TableStore

FEATURE_SCHEMA_VERSION = 1
_MONEY = [n for n, (t, _) in F.FEATURES.items()
          if t == "float" and (n.startswith("balance_") and "trend" not in n
                               or n in ("total_assets", "total_liabilities", "inflow_90d", "outflow_90d"))]


@dataclass(frozen=True)
class Materialized:
    as_of: date
    path: Path
    rows: int
    store_version: str
    online_version: str
    seconds: dict


def _dir(home: Home, as_of: date) -> Path:
    return home.features / f"as_of={as_of.isoformat()}"


def available_as_of(home: Home) -> list[date]:
    if not home.features.is_dir():
        return []
    return sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in home.features.glob("as_of=*")
                  if (p / "manifest.json").exists())


def online_store(home: Home, url: str | None = None) -> OnlineStore:
    return open_online_store(home.root / "online.sqlite", url)


def _round(df: pd.DataFrame) -> pd.DataFrame:
    df[_MONEY] = df[_MONEY].round(2)
    trends = [c for c in df.columns if "trend" in c or c.startswith("sentiment") or c == "age"]
    df[trends] = df[trends].round(4)
    return df


def documents(df: pd.DataFrame, chunk: int = 50_000):
    """Yield batches of ``(customer_id, JSON array of the row's values)`` for the online store."""
    out = df.copy(deep=False)
    out["as_of"] = out["as_of"].astype(str)
    for c in out.columns:
        if str(out[c].dtype) == "Int64":  # pd.NA -> None, so JSON gets null
            out[c] = out[c].astype(object).where(out[c].notna(), None)
    for start in range(0, len(out), chunk):  # per chunk: Python objects for 1M x 112 cells would not fit
        part = out.iloc[start:start + chunk]
        rows = part.to_numpy(dtype=object).tolist()
        yield [(cid, orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY))
               for cid, r in zip(part["customer_id"].tolist(), rows)]


def materialize(home: Home, as_of: date | None = None, *, online_url: str | None = None,
                state: StateConfig | None = None, progress: Callable[[str], None] | None = None) -> Materialized:
    """Compute features at ``as_of`` (default: the day after the store's latest event), write them
    offline and publish them online."""
    say = progress or (lambda _msg: None)
    version = TableStore(home.store).require_current()
    as_of = as_of or data_end(version)
    timings = {}
    t0 = time.perf_counter()
    say(f"computing features at {as_of} from store {version.name}")
    df = _round(compute_features(version, as_of, state))
    timings["compute_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    say("writing offline Parquet")
    final = _dir(home, as_of)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp / "features.parquet",
                       compression="zstd")
        online_version = f"{as_of.isoformat()}@{version.name}"
        manifest = {
            "feature_schema_version": FEATURE_SCHEMA_VERSION, "as_of": as_of.isoformat(), "rows": len(df),
            "store_version": version.name, "store_content_hash": version.content_hash,
            "online_version": online_version, "state_config": (state or StateConfig()).model_dump(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["offline_write_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    store = online_store(home, online_url)
    say(f"publishing {len(df):,} customers to the online store ({store.url})")
    try:
        store.publish(online_version, list(df.columns), documents(df))
    finally:
        store.close()
    timings["online_publish_s"] = round(time.perf_counter() - t0, 2)
    manifest["seconds"] = timings
    (final / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return Materialized(as_of, final, len(df), version.name, online_version, timings)


def _swap_in(tmp: Path, final: Path) -> None:
    if final.exists():
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


def manifest(home: Home, as_of: date) -> dict:
    path = _dir(home, as_of) / "manifest.json"
    if not path.exists():
        have = ", ".join(d.isoformat() for d in available_as_of(home)) or "none"
        raise StoreError(f"no features materialized for as_of {as_of} (available: {have}); "
                         f"run 'nba features materialize --as-of {as_of}'")
    return json.loads(path.read_text())


def read_features(home: Home, as_of: date, customer_ids: list[str] | None = None) -> pd.DataFrame:
    """Materialized features at ``as_of`` (all customers, or just ``customer_ids``)."""
    manifest(home, as_of)
    path = _dir(home, as_of) / "features.parquet"
    if customer_ids is None:
        return pq.read_table(path).to_pandas()
    con = duckdb.connect()
    try:
        con.execute("CREATE TEMP TABLE ids (customer_id VARCHAR)")
        con.executemany("INSERT INTO ids VALUES (?)", [(c,) for c in customer_ids])
        return con.execute(f"SELECT f.* FROM read_parquet('{path}') f JOIN ids USING (customer_id)").df()
    finally:
        con.close()


def get_training_frame(as_of: date, label_window_days: int, home: Home | None = None, *,
                       allow_partial_window: bool = False) -> pd.DataFrame:
    """Features at ``as_of`` joined to labels from ``[as_of, as_of + label_window_days)``.

    Uses the materialized features when they were built from the live store version, else computes
    them. Labels: ``label_opened_products`` ('|'-joined), ``label_n_opened``, ``label_churn``.
    Raises ``StoreError`` when the window reaches past the store's data (labels would be incomplete).
    """
    home = home or Home.resolve()
    if label_window_days < 1:
        raise ValueError(f"label_window_days must be >= 1, not {label_window_days}")
    version: StoreVersion = TableStore(home.store).require_current()
    end = data_end(version)
    if as_of + timedelta(days=label_window_days) > end and not allow_partial_window:
        raise StoreError(
            f"label window {as_of} + {label_window_days} days reaches past the store's data, which ends "
            f"before {end}: pick as_of <= {end - timedelta(days=label_window_days)}")
    try:
        m = manifest(home, as_of)
        fresh = m["store_content_hash"] == version.content_hash
    except StoreError:
        fresh = False
    feats = read_features(home, as_of) if fresh else _round(compute_features(version, as_of))
    labels = label_frame(version, as_of, label_window_days)
    return feats.merge(labels, on="customer_id", how="left", validate="one_to_one")


def get_online(home: Home, customer_id: str, url: str | None = None) -> dict | None:
    store = online_store(home, url)
    try:
        return store.get(customer_id)
    finally:
        store.close()


def decode(doc: dict) -> dict:
    """An online/offline row as a person reads it: the evidence JSON parsed."""
    out = dict(doc)
    if isinstance(out.get("state_evidence"), str):
        out["state_evidence"] = orjson.loads(out["state_evidence"])
    return out
