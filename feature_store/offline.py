"""Offline, point-in-time customer features with DuckDB over the store's Parquet.

``compute_features(version, as_of)`` returns one row per customer onboarded before ``as_of`` with every
column of ``nba.features.FEATURES`` and the customer state of ``nba.state``. Nothing dated on or after
``as_of`` can reach a feature: each source is filtered at its own timestamp before it is aggregated.
The test suite plants future events and checks that the features do not move. A table the store version
marks absent (the bank's export did not have it) makes the features computed from it null
(``nba.features.NEEDS_TABLE``), and the customers' extension columns are appended as ``x_<column>``.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd

from nba import features as F
from nba import schema
from nba.bank import day_start
from nba.state import StateConfig, identify

from .store import StoreVersion

DUCKDB_MEMORY = "4GB"


def connect(version: StoreVersion, memory_limit: str = DUCKDB_MEMORY) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per contract table of ``version`` (timestamps as stored: UTC
    instants)."""
    con = duckdb.connect(config={"threads": 2, "memory_limit": memory_limit,
                                 "preserve_insertion_order": False})
    for t in schema.TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{version.table_glob(t)}')")
    return con


def _zone(time_zone: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", time_zone):
        raise ValueError(f"time zone {time_zone!r} is not an IANA name")
    return time_zone


def local_date(expr: str, time_zone: str = "UTC") -> str:
    """SQL: the bank's calendar date of the UTC instant ``expr`` (a timestamp expression)."""
    if _zone(time_zone) == "UTC":
        return f"CAST({expr} AS DATE)"
    return f"CAST(timezone('{time_zone}', timezone('UTC', {expr})) AS DATE)"


def instant(day: date, time_zone: str = "UTC") -> str:
    """SQL: the UTC instant at which ``day`` begins in the bank's zone (from Python's zoneinfo, so that
    features, the outcome history and the ingest agree on it)."""
    return f"TIMESTAMP '{day_start(day, _zone(time_zone)).isoformat(sep=' ')}'"


def recurs_in(col: str, year: str) -> str:
    """SQL: the day in ``year`` on which the yearly date ``col`` recurs (a birthday, an anniversary). 29 Feb
    falls on 28 Feb in a common year, as in dateutil's ``relativedelta`` (and DuckDB's ``date_sub``)."""
    leap = f"(({year}) % 4 = 0 AND (({year}) % 100 <> 0 OR ({year}) % 400 = 0))"
    return (f"make_date({year}, month({col}), CASE WHEN month({col}) = 2 AND day({col}) = 29 AND NOT {leap} "
            f"THEN 28 ELSE day({col}) END)")


def days_to_next(col: str, d: str) -> str:
    """SQL: days from the date ``d`` to the next recurrence of ``col`` on or after it (0: on ``d``)."""
    this, after = recurs_in(col, f"year({d})"), recurs_in(col, f"year({d}) + 1")
    return f"date_diff('day', {d}, CASE WHEN {this} >= {d} THEN {this} ELSE {after} END)"


def completed_years(col: str, d: str) -> str:
    """SQL: completed calendar years from ``col`` to ``d`` (an age: 65 on the 65th birthday, not before;
    a 29 Feb birthday counts on 28 Feb in a common year), as ``relativedelta(d, col).years``."""
    return f"(year({d}) - year({col}) - CASE WHEN {d} < {recurs_in(col, f'year({d})')} THEN 1 ELSE 0 END)"


def _sql(d: date, time_zone: str = "UTC", vulnerable_default: bool = True,
         extensions: tuple[str, ...] = ()) -> dict[str, str]:
    """One query per feature group, each keyed by customer_id, all filtered before ``d``. A missing
    ``vulnerable`` is ``vulnerable_default``; ``extensions``: the customers' extension columns to add."""
    D = f"DATE '{d.isoformat()}'"
    T = instant(d, time_zone)  # day D begins at midnight in the bank's zone; timestamps are UTC instants

    def days_since(expr: str) -> str:
        return f"date_diff('day', {local_date(expr, time_zone)}, {D})"

    cats = schema.PRODUCT_CATEGORIES
    assets = ", ".join(f"'{c}'" for c in F.ASSET_CATEGORIES)
    liabilities = ", ".join(f"'{c}'" for c in F.LIABILITY_CATEGORIES)

    def trend(now: str, then: str) -> str:
        return f"coalesce(({now} - {then}) / greatest(abs({then}), 100.0), 0)"

    q: dict[str, str] = {}
    q["base"] = f"""
        SELECT customer_id, {D} AS as_of, rm_id,
               {completed_years("birth_date", D)} AS age,
               date_diff('day', onboarded_at, {D}) AS tenure_days,
               segment, income_band,
               CASE income_band {" ".join(f"WHEN '{b}' THEN {i}" for i, b in enumerate(schema.INCOME_BANDS))}
               END AS income_band_ord,
               risk_tolerance,
               CASE WHEN risk_assessed_at < {D} THEN date_diff('day', risk_assessed_at, {D}) END
                   AS risk_assessment_age_days,
               coalesce(vulnerable, {"TRUE" if vulnerable_default else "FALSE"}) AS vulnerable,
               vulnerable IS NOT NULL AS vulnerable_known,
               -- next birthday / anniversary on or after as_of, in calendar terms (recurs_in)
               {days_to_next("birth_date", D)} AS days_to_birthday,
               {days_to_next("onboarded_at", D)} AS days_to_onboarding_anniversary
               {"".join(f', "{c}" AS "{F.EXTENSION_PREFIX}{c}"' for c in extensions)}
        FROM customers WHERE onboarded_at < {D}"""

    held = f"(h.closed_at IS NULL OR h.closed_at >= {D})"
    q["products"] = f"""
        SELECT h.customer_id,
               count(DISTINCT h.product_id) FILTER (WHERE {held}) AS n_products,
               {", ".join(f"count(DISTINCT h.product_id) FILTER (WHERE {held} AND p.category = '{c}') AS n_products_{c}" for c in cats)},
               string_agg(DISTINCT h.product_id, '|' ORDER BY h.product_id) FILTER (WHERE {held}) AS held_products,
               count(*) FILTER (WHERE h.opened_at >= {D} - INTERVAL 180 DAY AND h.opened_at > c.onboarded_at)
                   AS products_opened_180d,
               count(*) FILTER (WHERE h.closed_at >= {D} - INTERVAL 90 DAY AND h.closed_at < {D})
                   AS products_closed_90d,
               -- a former client: held something before as_of and nothing at as_of (all closed before it)
               count(*) FILTER (WHERE {held}) = 0 AS former_client,
               CASE WHEN count(*) FILTER (WHERE {held}) = 0 THEN date_diff('day', max(h.closed_at), {D}) END
                   AS days_since_left,
               min(h.maturity_date) FILTER (WHERE {held} AND p.category = 'term_deposit' AND h.maturity_date >= {D})
                   AS next_td_maturity
        FROM holdings h JOIN products p USING (product_id) JOIN customers c USING (customer_id)
        WHERE h.opened_at < {D}
        GROUP BY h.customer_id"""

    # Balance of a (customer, product) at t: balances of its holdings opened before t, minus the
    # movements at or after t. Movements before D are the only ones that can leak nothing: those at or
    # after D are subtracted, never counted.
    def at(offset: int) -> str:
        return f"{D} - INTERVAL {offset} DAY" if offset else D

    def ts_at(offset: int) -> str:
        return instant(d - timedelta(days=offset), time_zone)

    q["balances"] = f"""
        WITH pair AS (
            SELECT h.customer_id, h.product_id, any_value(p.category) AS category,
                   {", ".join(f"sum(h.balance) FILTER (WHERE h.opened_at < {at(o)}) AS b{o}, bool_or(h.opened_at < {at(o)}) AS ex{o}" for o in (0, 30, 90))}
            FROM holdings h JOIN products p USING (product_id)
            WHERE h.opened_at < {D}
            GROUP BY ALL),
        moved AS (
            SELECT customer_id, product_id,
                   {", ".join(f"sum(amount) FILTER (WHERE ts >= {ts_at(o)}) AS m{o}" for o in (0, 30, 90))}
            FROM transactions WHERE ts >= {ts_at(90)}
            GROUP BY ALL),
        bal AS (
            SELECT customer_id, category,
                   {", ".join(f"CASE WHEN ex{o} THEN b{o} - coalesce(m{o}, 0) ELSE 0 END AS bal{o}" for o in (0, 30, 90))}
            FROM pair LEFT JOIN moved USING (customer_id, product_id)),
        agg AS (
            SELECT customer_id,
                   {", ".join(f"coalesce(sum(bal{o}) FILTER (WHERE category = '{c}'), 0) AS {c}_{o}" for c in cats for o in (0, 30, 90))},
                   {", ".join(f"coalesce(sum(bal{o}) FILTER (WHERE category IN ({assets})), 0) AS assets_{o}" for o in (0, 30, 90))},
                   coalesce(-sum(bal0) FILTER (WHERE category IN ({liabilities})), 0) AS total_liabilities
            FROM bal GROUP BY customer_id)
        SELECT customer_id,
               {", ".join(f"{c}_0 AS balance_{c}" for c in cats)},
               {", ".join(f"{trend(f'{c}_0', f'{c}_{w}')} AS balance_{c}_trend_{w}d" for c in cats for w in (30, 90))},
               assets_0 AS total_assets, total_liabilities,
               {trend('assets_0', 'assets_30')} AS total_assets_trend_30d,
               {trend('assets_0', 'assets_90')} AS total_assets_trend_90d
        FROM agg"""

    q["transactions"] = f"""
        SELECT customer_id,
               count(*) FILTER (WHERE ts >= {ts_at(30)}) AS txn_30d,
               count(*) FILTER (WHERE ts >= {ts_at(90)}) AS txn_90d,
               {days_since('max(ts)')} AS days_since_last_txn,
               coalesce(sum(amount) FILTER (WHERE amount > 0 AND ts >= {ts_at(90)}), 0) AS inflow_90d,
               coalesce(-sum(amount) FILTER (WHERE amount < 0 AND ts >= {ts_at(90)}), 0) AS outflow_90d
        FROM transactions WHERE ts < {T}
        GROUP BY customer_id"""

    last90 = f"ts >= {ts_at(90)}"
    q["interactions"] = f"""
        SELECT customer_id,
               {", ".join(f"count(*) FILTER (WHERE channel = '{ch}' AND {last90}) AS interactions_90d_{ch}" for ch in schema.CHANNELS)},
               {", ".join(f"{days_since('max(ts) FILTER (WHERE channel = ' + repr(ch) + ')')} AS days_since_{ch}" for ch in schema.CHANNELS)},
               count(*) FILTER (WHERE direction = 'inbound' AND {last90}) AS inbound_90d,
               count(*) FILTER (WHERE direction = 'outbound' AND {last90}) AS outbound_90d,
               count(*) FILTER (WHERE direction = 'outbound' AND ts >= {ts_at(30)}) AS outbound_30d,
               {days_since("max(ts) FILTER (WHERE direction = 'outbound')")} AS days_since_last_outbound,
               {days_since('max(ts)')} AS days_since_last_contact,
               count(*) FILTER (WHERE outcome = 'escalated' AND ts >= {ts_at(30)}) AS escalations_30d
        FROM interactions WHERE ts < {T}
        GROUP BY customer_id"""

    q["sentiment"] = f"""
        WITH rated AS (
            SELECT customer_id, sentiment,
                   row_number() OVER (PARTITION BY customer_id ORDER BY ts DESC, interaction_id DESC) AS rn
            FROM interactions
            WHERE ts < {T} AND ts >= {ts_at(730)} AND sentiment IS NOT NULL
            QUALIFY rn <= 10)
        SELECT customer_id,
               avg(sentiment) FILTER (WHERE rn <= 5) AS sentiment_last5,
               avg(sentiment) FILTER (WHERE rn > 5) AS sentiment_prev5,
               min(sentiment) FILTER (WHERE rn <= 5) AS sentiment_min_last5,
               count(*) FILTER (WHERE rn <= 5) AS rated_contacts
        FROM rated GROUP BY customer_id"""

    is_open = f"(resolved_at IS NULL OR resolved_at >= {T})"
    q["complaints"] = f"""
        SELECT customer_id,
               count(*) FILTER (WHERE {is_open}) AS open_complaints,
               coalesce(max(CASE severity WHEN 'low' THEN 1 WHEN 'medium' THEN 2 WHEN 'high' THEN 3 END)
                        FILTER (WHERE {is_open}), 0) AS open_complaint_max_severity,
               {days_since(f"max(resolved_at) FILTER (WHERE resolved_at < {T})")} AS days_since_resolved_complaint,
               count(*) FILTER (WHERE opened_at >= {ts_at(365)}) AS complaints_365d
        FROM complaints WHERE opened_at < {T}
        GROUP BY customer_id"""

    q["consents"] = f"""
        WITH latest AS (
            SELECT customer_id, channel, allowed FROM consents WHERE updated_at < {T}
            -- the latest record wins; at the same instant a withdrawal wins (the conservative reading)
            QUALIFY row_number() OVER (PARTITION BY customer_id, channel ORDER BY updated_at DESC, allowed) = 1)
        SELECT customer_id,
               {", ".join(f"coalesce(bool_or(allowed) FILTER (WHERE channel = '{s}'), false) AS consent_{s}" for s in schema.CONSENT_SCOPES)}
        FROM latest GROUP BY customer_id"""

    declined = f"outcome = 'declined' AND outcome_at < {T} AND outcome_at >= {ts_at(90)}"
    q["actions"] = f"""
        WITH last_decline AS (
            SELECT customer_id, action_id, {days_since('max(outcome_at)')} AS ago
            FROM action_outcomes WHERE {declined} GROUP BY ALL)
        SELECT a.customer_id,
               {", ".join(f"count(*) FILTER (WHERE {declined} AND action_family = '{f}') AS declines_90d_{f}" for f in schema.ACTION_FAMILIES)},
               count(DISTINCT decision_id) FILTER (WHERE decided_at >= {ts_at(30)}) AS actions_30d,
               {days_since('max(decided_at)')} AS days_since_last_action,
               any_value(d.declined) AS declined_actions_90d
        FROM action_outcomes a
        LEFT JOIN (SELECT customer_id, string_agg(action_id || '=' || ago, '|' ORDER BY action_id) AS declined
                   FROM last_decline GROUP BY customer_id) d USING (customer_id)
        WHERE a.decided_at < {T} AND a.outcome_at < {T}  -- rows known before T (outcomes arrive late)
        GROUP BY a.customer_id"""
    return q


_INT_ZERO = [n for n, (t, _) in F.FEATURES.items()
             if t == "int" and (n.startswith(("n_products", "txn_", "interactions_90d_", "declines_90d_"))
                                or n in ("products_opened_180d", "products_closed_90d", "inbound_90d",
                                         "outbound_90d", "outbound_30d", "escalations_30d", "open_complaints",
                                         "open_complaint_max_severity", "complaints_365d", "rated_contacts",
                                         "actions_30d"))]
_FLOAT_ZERO = [n for n, (t, _) in F.FEATURES.items()
               if t == "float" and (n.startswith("balance_") or n.startswith("total_") or n.endswith("flow_90d"))]


def compute_features(version: StoreVersion, as_of: date, state: StateConfig | None = None,
                     time_zone: str = "UTC", vulnerable_default: bool = True) -> pd.DataFrame:
    """Features and customer state of every customer onboarded before ``as_of``, in ``COLUMNS`` order,
    then the customers' extension columns of ``version`` (``x_<column>``, :func:`nba.features.extension_features`).
    Day ``as_of`` begins at midnight in the bank's ``time_zone`` (an IANA name). A client whose
    ``vulnerable`` flag is missing gets ``vulnerable_default`` (``configs/bank.yaml`` missing_values) and
    ``vulnerable_known`` false. The features of a table ``version`` marks absent are null
    (:data:`nba.features.NEEDS_TABLE`)."""
    ext = version.extensions("customers")
    ext_features = F.extension_features(ext)
    con = connect(version)
    try:
        parts = {name: con.execute(sql).df()
                 for name, sql in _sql(as_of, time_zone, vulnerable_default, tuple(ext)).items()}
    finally:
        con.close()
    df = parts.pop("base")
    for name, part in parts.items():
        df = df.merge(part, on="customer_id", how="left")

    df[_INT_ZERO] = df[_INT_ZERO].fillna(0)
    df[_FLOAT_ZERO] = df[_FLOAT_ZERO].fillna(0.0)
    df["held_products"] = df["held_products"].fillna("")
    df["former_client"] = df["former_client"].fillna(False).astype(bool)  # never held anything: not former
    df["declined_actions_90d"] = df["declined_actions_90d"].fillna("")
    for s in schema.CONSENT_SCOPES:
        df[f"consent_{s}"] = df[f"consent_{s}"].fillna(False).astype(bool)
    for table in version.absent_tables:  # not in the bank's export: unknown, not zero
        unknown = list(F.NEEDS_TABLE.get(table, ()))
        if unknown:
            df[unknown] = np.nan
    df["sentiment_trend"] = df["sentiment_last5"] - df["sentiment_prev5"]
    window = F.CARE_WINDOW_DAYS
    df["birthday_in_14d"] = df["days_to_birthday"] < window
    df["anniversary_in_14d"] = df["days_to_onboarding_anniversary"] < window
    df["days_to_td_maturity"] = (pd.to_datetime(df.pop("next_td_maturity")) - pd.Timestamp(as_of)).dt.days
    df["td_maturity_in_14d"] = df["days_to_td_maturity"].lt(window).fillna(False).astype(bool)
    df = _typed(df, {**F.FEATURES, **ext_features})
    df = identify(df, state or StateConfig())
    return _round(df[list(F.COLUMNS) + list(ext_features)].sort_values("customer_id", ignore_index=True))


# Money to the cent; trends and sentiment to 4 decimals: the one rounding of stored features, so
# that features computed now and features materialized earlier are the same numbers.
_MONEY = [n for n, (t, _) in F.FEATURES.items()
          if t == "float" and (n.startswith("balance_") and "trend" not in n
                               or n in ("total_assets", "total_liabilities", "inflow_90d", "outflow_90d"))]


def _round(df: pd.DataFrame) -> pd.DataFrame:
    df[_MONEY] = df[_MONEY].round(2)
    trends = [c for c in df.columns if ("trend" in c or c.startswith("sentiment")) and not F.is_extension(c)]
    df[trends] = df[trends].round(4)
    return df


def _typed(df: pd.DataFrame, types: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """Contract dtypes: nullable integers, floats, booleans, strings, dates. ``types``: name -> (type,
    description), default :data:`nba.features.FEATURES`; extension booleans stay nullable."""
    for name, (t, _) in (types or F.FEATURES).items():
        if name not in df:
            continue
        if t == "int":
            df[name] = df[name].astype("Int64")
        elif t == "float":
            df[name] = df[name].astype("float64")
        elif t == "bool" and F.is_extension(name):
            df[name] = df[name].astype("boolean")
        elif t == "bool":
            df[name] = df[name].astype(bool)
        elif t == "str":
            df[name] = df[name].astype(object)
        elif t == "date":
            df[name] = pd.to_datetime(df[name]).dt.date
    return df


def label_frame(version: StoreVersion, as_of: date, window_days: int) -> pd.DataFrame:
    """Labels of the window ``[as_of, as_of + window_days)``: products opened and churn.

    Churn: the customer held at least one product at ``as_of`` and none at the end of the window.
    """
    D = f"DATE '{as_of.isoformat()}'"
    E = f"DATE '{(as_of + timedelta(days=window_days)).isoformat()}'"
    con = connect(version)
    try:
        return con.execute(f"""
            WITH held_at AS (
                SELECT customer_id,
                       bool_or(opened_at < {D} AND (closed_at IS NULL OR closed_at >= {D})) AS held_start,
                       bool_or(opened_at < {E} AND (closed_at IS NULL OR closed_at >= {E})) AS held_end
                FROM holdings GROUP BY customer_id),
            opened AS (
                SELECT customer_id, string_agg(DISTINCT product_id, '|' ORDER BY product_id) AS products,
                       count(DISTINCT product_id) AS n
                FROM holdings WHERE opened_at >= {D} AND opened_at < {E} GROUP BY customer_id)
            SELECT c.customer_id,
                   coalesce(o.products, '') AS {F.LABEL_OPENED},
                   coalesce(o.n, 0) AS {F.LABEL_N_OPENED},
                   coalesce(h.held_start AND NOT h.held_end, false) AS {F.LABEL_CHURN}
            FROM customers c LEFT JOIN held_at h USING (customer_id) LEFT JOIN opened o USING (customer_id)
            WHERE c.onboarded_at < {D}""").df()
    finally:
        con.close()


def data_end(version: StoreVersion, time_zone: str = "UTC") -> date:
    """The first day after the latest event in the store (the extraction's horizon), in the bank's
    ``time_zone``: interactions, transactions, holdings opened or closed, outcomes, and also consent
    changes, complaints and onboardings (a bank that exports no interactions or transactions still has a
    today)."""
    con = connect(version)
    local = lambda expr: local_date(expr, time_zone)  # noqa: E731
    try:
        latest = con.execute(f"""
            SELECT greatest(
                {local("(SELECT max(ts) FROM interactions)")}, {local("(SELECT max(ts) FROM transactions)")},
                (SELECT max(opened_at) FROM holdings), (SELECT max(closed_at) FROM holdings),
                {local("(SELECT max(outcome_at) FROM action_outcomes)")},
                {local("(SELECT max(updated_at) FROM consents)")}, {local("(SELECT max(opened_at) FROM complaints)")},
                {local("(SELECT max(resolved_at) FROM complaints)")},
                (SELECT max(onboarded_at) FROM customers))""").fetchone()[0]
    finally:
        con.close()
    return (latest or date.min) + timedelta(days=1)
