"""Features at a date: the one way to get them (:func:`features_at`), materialized offline Parquet
versioned by as_of, and the online store for serving.

Layout under ``$NBA_HOME/features``::

    as_of=2026-11-01/features.parquet    one row per customer: nba.features.COLUMNS
    as_of=2026-11-01/manifest.json       store version + content hash and state config it came from

``as_of=<date>`` is a link to the current build (:func:`nba.atomic.publish_dir`): a re-materialization
is written aside and switched in by one rename.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import duckdb
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nba.atomic import publish_dir
from nba.bank import load_bank_config
from nba.config import load_yaml
from nba.decision import documents
from nba.errors import StoreError
from nba.home import Home
from nba.state import StateConfig

from .offline import compute_features, data_end, label_frame
from .online import OnlineStore, open_online_store
from .store import StoreVersion, TableStore

# 2: age in completed calendar years (int), calendar birthdays and anniversaries; 3: vulnerable_known, the
# product category 'other', null features of absent tables, extension columns x_<name>
FEATURE_SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Materialized:
    as_of: date
    path: Path
    rows: int
    store_version: str
    online_version: str | None  # the version the online store serves after this run
    seconds: dict
    published: bool = True  # whether this run published online (a backfill of an older date does not)


def _dir(home: Home, as_of: date) -> Path:
    return home.features / f"as_of={as_of.isoformat()}"


def available_as_of(home: Home) -> list[date]:
    if not home.features.is_dir():
        return []
    return sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in home.features.glob("as_of=*")
                  if (p / "manifest.json").exists())


def online_store(home: Home, url: str | None = None) -> OnlineStore:
    return open_online_store(home.root / "online.sqlite", url)


def state_config(path: Path | None = None) -> StateConfig:
    """The customer-state thresholds: the ``state:`` section of ``path``, else of
    ``configs/features.yaml``, else the defaults."""
    return load_yaml(StateConfig, path, section="state")


def time_zone() -> str:
    """The bank's time zone (``configs/bank.yaml``): day D begins at local midnight there."""
    return load_bank_config().time_zone


def vulnerable_default() -> bool:
    """What a missing ``customers.vulnerable`` means (``configs/bank.yaml`` missing_values.vulnerable)."""
    return load_bank_config().missing_values.vulnerable


def default_as_of(version: StoreVersion) -> date:
    """The one rule for "today" when no date is given (materialize, train, daily): the first day after
    the store's latest event (in the bank's time zone), so that every feature window is complete."""
    return data_end(version, time_zone())


def _as_stored(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as it reads back from the offline store (Arrow types and pandas dtypes), so that
    features computed on the fly and materialized ones are the same values of the same types."""
    return pa.Table.from_pandas(df, preserve_index=False).to_pandas()


def _fresh(home: Home, as_of: date, version: StoreVersion, state: StateConfig) -> bool:
    if as_of not in available_as_of(home):
        return False
    m = manifest(home, as_of)
    return (m.get("feature_schema_version") == FEATURE_SCHEMA_VERSION
            and m.get("time_zone", "UTC") == time_zone()
            and m.get("vulnerable_default", True) == vulnerable_default()
            and m.get("store_content_hash") == version.content_hash
            and m.get("state_config") == json.loads(json.dumps(state.model_dump())))


def features_at(home: Home, as_of: date, version: StoreVersion | None = None,
                state: StateConfig | None = None) -> pd.DataFrame:
    """Features and customer state of every customer onboarded before ``as_of`` (one row per customer,
    ``nba.features.COLUMNS`` then the bank's extension columns ``x_<name>``, sorted by customer_id).

    The one "features at a date" of the project: training, the daily run and the API call it. It reads
    the materialized features when they were built from this store version with this state config, and
    otherwise computes them point-in-time; both give identical frames (same rounding, same dtypes), so
    a decision's ``feature_hash`` can be reproduced from the features of its date.
    ``version`` defaults to the live store version, ``state`` to :func:`state_config`; day ``as_of``
    begins at midnight in the bank's time zone (:func:`time_zone`).
    Raises ``StoreError`` when the store is empty.
    """
    version = version or TableStore(home.store).require_current()
    state = state or state_config()
    if _fresh(home, as_of, version, state):
        return read_features(home, as_of)
    return _as_stored(compute_features(version, as_of, state, time_zone(), vulnerable_default()))


def online_behind(live: dict | None, store_version: str) -> str | None:
    """Why the online store's live features (``live``, :meth:`OnlineStore.live`) do not reflect store
    version ``store_version`` (they were materialized from an earlier one), or None when they do."""
    if not live:
        return None
    _, _, built_from = str(live.get("version", "")).partition("@")
    if not built_from or built_from == store_version:
        return None
    return (f"the online features ({live.get('version')}) were materialized from store version {built_from}, "
            f"and the store is at {store_version}: run `nba features materialize` so that the API and the "
            f"workbench read its data")


def _live_as_of(live: dict | None) -> date | None:
    try:
        return date.fromisoformat(str(live["version"]).split("@", 1)[0]) if live else None
    except (KeyError, ValueError):
        return None


def materialize(home: Home, as_of: date | None = None, *, online_url: str | None = None,
                state: StateConfig | None = None, progress: Callable[[str], None] | None = None,
                publish: bool | None = None) -> Materialized:
    """Compute features at ``as_of`` (default: :func:`default_as_of`), write them offline and publish
    them online. ``state`` defaults to :func:`state_config`.

    The online store serves the newest as_of: by default (``publish=None``) a run for the current day
    (no ``as_of`` given) publishes, and a backfill of a date older than the one online is written offline
    only, so the online store keeps serving the newer one.
    ``publish=True`` publishes it anyway, ``False`` never. ``Materialized.online_version`` is the version
    online afterwards and ``published`` says whether this run changed it.
    """
    say = progress or (lambda _msg: None)
    version = TableStore(home.store).require_current()
    asked = as_of is not None
    as_of = as_of or default_as_of(version)
    state = state or state_config()
    timings = {}
    t0 = time.perf_counter()
    say(f"computing features at {as_of} from store {version.name}")
    table = pa.Table.from_pandas(compute_features(version, as_of, state, time_zone(), vulnerable_default()),
                                 preserve_index=False)
    timings["compute_s"] = round(time.perf_counter() - t0, 2)

    store = online_store(home, online_url)  # one connection: read what is live, then publish
    try:
        live = store.live()
        live_as_of = _live_as_of(live)
        if publish is None:  # the current day (no date asked for) always; an asked-for date only if not older
            publish = not asked or live_as_of is None or as_of >= live_as_of

        t0 = time.perf_counter()
        say("writing offline Parquet")
        online_version = f"{as_of.isoformat()}@{version.name}"
        manifest = {
            "feature_schema_version": FEATURE_SCHEMA_VERSION, "as_of": as_of.isoformat(), "rows": table.num_rows,
            "store_version": version.name, "store_content_hash": version.content_hash,
            # The version online for this date: this run's, or (not publishing) the one already there.
            "online_version": online_version if publish else (live["version"] if live and live_as_of == as_of
                                                              else None),
            "published": bool(publish),
            "state_config": state.model_dump(), "time_zone": time_zone(), "vulnerable_default": vulnerable_default(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

        def build(folder: Path) -> None:
            pq.write_table(table, folder / "features.parquet", compression="zstd")
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))

        final = publish_dir(_dir(home, as_of), build, what=f"the features at {as_of}")
        timings["offline_write_s"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        if publish:
            df = table.to_pandas()
            say(f"publishing {len(df):,} customers to the online store ({store.url})")
            store.publish(online_version, list(df.columns), documents(df))
            serving = online_version
        else:
            say(f"online store keeps serving {live['version'] if live else 'nothing'} (newer than {as_of})")
            serving = live["version"] if live else None
    finally:
        store.close()
    timings["online_publish_s"] = round(time.perf_counter() - t0, 2)
    return Materialized(as_of, final, table.num_rows, version.name, serving, timings, bool(publish))


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
    end = data_end(version, time_zone())
    if as_of + timedelta(days=label_window_days) > end and not allow_partial_window:
        raise StoreError(
            f"label window {as_of} + {label_window_days} days reaches past the store's data, which ends "
            f"before {end}: pick as_of <= {end - timedelta(days=label_window_days)}")
    feats = features_at(home, as_of, version)
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
