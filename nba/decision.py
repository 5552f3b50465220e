"""Next-best-action decisions: one action (or none) per client for a day, and why.

:func:`decide` scores every client against every catalog action as one [clients x actions x channels]
computation, in chunks:

1. **propensity** per (client, action): product offers from the model's calibrated probability of
   opening the product within 90 days; retention offers from churn risk x the offer's save rate; care
   contacts from the care moment (its trigger) x base rate x (1 + weight x (1 - health / 100)).
2. **hard policies**, in this order, each named in the decision's trace with the actions it removed:
   ``eligibility`` (age, segment, trigger, churn and asset floors, a model score), ``already_held``,
   ``suitability`` (investment risk within tolerance and a risk assessment younger than 12 months;
   protected clients, 65+ or vulnerable: no product above risk 2 and RM review, so in person only),
   ``complaint_first`` (open complaint: no product or retention offers), ``consent`` (per channel, no
   record = not allowed; ``marketing`` for offers), ``cooldown`` (same action recently; declined
   action or family), ``contact_cap`` (outbound contacts + NBA actions in 30 days) and ``one_per_day``.
3. **channel and priority**: priority = propensity x channel response x value x lever - action cost -
   channel cost, at the best allowed channel. Families compare on this one scale.
4. **control group**: a deterministic share per family (hash of client, family and day) gets no action;
   the row names the action it would have had.
5. **capacity**: in-person channels (branch, phone, WeChat) are carried out by the client's RM within
   ``daily_capacity``. Each client's best in-person option competes with its best digital one; per RM
   the clients with the largest gain ``in_person - max(digital, 0)`` get the in-person action, the
   others their digital one. This maximises the book's total priority under the capacity.

The module depends on nothing but numpy, pandas and orjson: the model's outputs come in as arrays.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import orjson
import pandas as pd

from nba.catalog import Catalog
from nba.schema import CHANNELS

RULES = ("former_client", "eligibility", "already_held", "suitability", "complaint_first", "consent", "cooldown",
         "contact_cap", "one_per_day")
DECISION_COLUMNS = ("date", "rm_id", "customer_id", "action_family", "action_id", "product_id", "channel",
                    "priority", "propensity", "value", "reasons", "talking_points", "policy_trace",
                    "model_version", "control_group", "decision_id", "in_person", "rm_review", "feature_hash",
                    "lifecycle_stage", "health_score", "complaint_state", "emotional_state", "talking_point_data")
HISTORY_COLUMNS = ("customer_id", "action_id", "action_family", "decided", "outcome", "outcome_date", "control_group")
AGE_BANDS = (0, 30, 45, 65, 200)
AGE_BAND_NAMES = ("under 30", "30-44", "45-64", "65+")


def empty_history() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in HISTORY_COLUMNS})


@dataclass
class Inputs:
    """What the engine needs beyond the features: the model's outputs, aligned with the feature rows."""

    product_propensity: np.ndarray  # [n, len(catalog.products)] P(open in 90 days); NaN: not scored
    churn: np.ndarray               # [n] churn probability; NaN: unknown
    model_version: str = ""
    prior: np.ndarray | None = None  # [n] bool: the propensities are the prior's base rates, not the model's

    def take(self, idx) -> Inputs:
        return Inputs(self.product_propensity[idx], self.churn[idx], self.model_version,
                      None if self.prior is None else self.prior[idx])


# The engine reads its clients either from a DataFrame (the daily run: every client) or from a mapping of
# column name -> 1-D array (the API: a few clients read from the online store), with the same results.


def _len(df) -> int:
    return len(df) if isinstance(df, pd.DataFrame) else len(next(iter(df.values())))


@dataclass(frozen=True)
class Request:
    """A real-time caller's context for :func:`score` / :func:`realtime`.

    ``channel``: the channel the client is on now (an inbound call: ``phone``; an app session: ``app``);
    only actions deliverable on it are proposed. ``candidates``: action ids to choose among (None: all).
    ``exclude``: action ids never to propose. Actions these remove are traced under the rule ``request``.
    """

    channel: str | None = None
    candidates: Sequence[str] | None = None
    exclude: Sequence[str] = ()


def _f(df, col: str, fill: float = np.nan) -> np.ndarray:
    """Column ``col`` as float64, values that are not numbers as ``fill``."""
    s = df[col]
    if isinstance(s, pd.Series):
        if s.dtype.kind in "fiub":
            a = s.to_numpy(dtype="float64", na_value=np.nan)
        else:
            a = pd.to_numeric(s, errors="coerce").astype("float64").to_numpy()
    else:
        a = np.asarray(s)
        if a.dtype.kind not in "fiub":
            a = np.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else
                          float(v) if isinstance(v, (bool, np.bool_)) else _number(v) for v in a], dtype="float64")
        a = a.astype("float64", copy=False)
    return a if np.isnan(fill) else np.where(np.isnan(a), fill, a)


def _nan0(a: np.ndarray) -> np.ndarray:
    """NaN as 0 (probabilities: never infinite), cheaper than np.nan_to_num on small arrays."""
    return np.where(np.isnan(a), 0.0, a)


def _number(v) -> float:
    try:
        return float(v) if v is not None and not isinstance(v, str) else float(pd.to_numeric(v, errors="coerce"))
    except (TypeError, ValueError):
        return np.nan


def _b(df, col: str) -> np.ndarray:
    """Column ``col`` as bool, missing values False."""
    s = df[col]
    if isinstance(s, pd.Series):
        return s.fillna(False).astype(bool).to_numpy()
    a = np.asarray(s)
    if a.dtype == bool:
        return a
    return np.array([False if v is None or (isinstance(v, float) and np.isnan(v)) else bool(v) for v in a], bool)


def _s(df, col: str) -> np.ndarray:
    """Column ``col`` as an object array of str (missing values as 'None'/'nan', as pandas' astype(str))."""
    s = df[col]
    if isinstance(s, pd.Series):
        return s.astype(str).to_numpy()
    return np.array([str(v) for v in s], dtype=object)


def _has(df, col: str) -> bool:
    return col in (df.columns if isinstance(df, pd.DataFrame) else df)


def _records(df) -> list[dict]:
    if isinstance(df, pd.DataFrame):
        return df.to_dict("records")
    cols = list(df.items())
    return [{c: v[i] for c, v in cols} for i in range(_len(df))]


def held_matrix(feats, product_ids: pd.Index) -> np.ndarray:
    """[n, m] bool: the client holds the product (from ``held_products``)."""
    s = feats["held_products"]
    s = s.fillna("").astype(str).to_numpy() if isinstance(s, pd.Series) else s
    out = np.zeros((_len(feats), len(product_ids)), bool)
    codes = {p: j for j, p in enumerate(product_ids)}
    for i, text in enumerate(s):
        if isinstance(text, str) and text:
            for p in text.split("|"):
                j = codes.get(p)
                if j is not None:
                    out[i, j] = True
    return out


def control_draw(customer_ids: np.ndarray, family: np.ndarray, day: date) -> np.ndarray:
    """Uniform [0, 1) per (client, family, day), stable across runs, machines and versions."""
    d = day.isoformat()
    out = np.empty(len(customer_ids))
    for i, (c, f) in enumerate(zip(customer_ids, family)):
        h = hashlib.blake2b(f"{c}|{f}|{d}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2**64
    return out


def decision_id(day: date, customer_id: str, action_id: str) -> str:
    return "N" + hashlib.blake2b(f"{day}|{customer_id}|{action_id}".encode(), digest_size=8).hexdigest()


def _json_default(v):
    """Values orjson does not know: missing ones (pd.NA, NaT) as null, timestamps as ISO text."""
    if v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (datetime, date, pd.Timestamp)):
        return v.isoformat()
    raise TypeError(f"cannot write {type(v).__name__} in a feature document")


def documents(df: pd.DataFrame, chunk: int = 50_000):
    """Yield batches of ``(customer_id, document)``: each row's values as a JSON array in the frame's
    column order (UTF-8 bytes; missing values null). The online store keeps these documents, and
    :func:`feature_hashes` hashes them, so the scoring API hashes the bytes it reads."""
    out = df.copy(deep=False)
    if "as_of" in out.columns:
        out["as_of"] = out["as_of"].astype(str)
    for c in out.columns:
        if str(out[c].dtype) == "Int64":  # pd.NA -> None, so JSON gets null
            out[c] = out[c].astype(object).where(out[c].notna(), None)
    opts = orjson.OPT_SERIALIZE_NUMPY
    for start in range(0, len(out), chunk):  # per chunk: Python objects for 1M x 112 cells would not fit
        part = out.iloc[start:start + chunk]
        rows = part.to_numpy(dtype=object).tolist()
        yield [(cid, orjson.dumps(r, default=_json_default, option=opts))
               for cid, r in zip(part["customer_id"].astype(str).tolist(), rows)]


def document_hash(doc: bytes) -> str:
    """A feature row's hash: BLAKE2b (6 bytes, hex) of its :func:`documents` bytes."""
    return hashlib.blake2b(doc, digest_size=6).hexdigest()


def feature_hashes(feats) -> np.ndarray:
    """``[n]`` a short hash of each client's feature row: :func:`document_hash` of its :func:`documents`
    bytes, so the daily run, the scoring API (which hashes the online store's bytes) and a re-run from
    the features of the date give the same hash for the same row. ``feats``: a DataFrame (a mapping of
    column -> 1-D array is hashed as the DataFrame it makes, whose dtypes may differ from the store's)."""
    if not isinstance(feats, pd.DataFrame):
        feats = pd.DataFrame(dict(feats))
    return np.array([document_hash(doc) for batch in documents(feats) for _, doc in batch], dtype=object)


SMALL_HISTORY = 256  # rows: below this _History is filled in plain Python (the API's few clients)


def _as_day(v) -> date | None:
    if v is None or (isinstance(v, float) and v != v) or v is pd.NaT:
        return None
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    return pd.Timestamp(v).date()


class _History:
    """Per (client, action) days since the last decision and the last decline; per client the NBA
    contacts of the last 30 days and whether an action is already decided for the day."""

    def take(self, idx) -> _History:
        out = object.__new__(_History)
        out.contacts_30d, out.today = self.contacts_30d[idx], self.today[idx]
        out.since_action, out.since_decline = self.since_action[idx], self.since_decline[idx]
        out.since_family_decline = {k: v[idx] for k, v in self.since_family_decline.items()}
        out.empty = self.empty
        return out

    def _fill_rows(self, history, ids, catalog: Catalog, day: date) -> None:
        """The same as the pandas path, row by row: ``history`` is a small DataFrame or a sequence of
        HISTORY_COLUMNS tuples."""
        rows = (history[list(HISTORY_COLUMNS)].itertuples(index=False, name=None)
                if isinstance(history, pd.DataFrame) else history)
        pos = {c: i for i, c in enumerate(ids)}
        aidx = {a.action_id: j for j, a in enumerate(catalog.actions)}
        for cid, action_id, family, decided, outcome, outcome_date, control in rows:
            r = pos.get(cid)
            d = _as_day(decided)
            if r is None or d is None:
                continue
            ago = (day - d).days
            if ago < 0:
                continue
            col = aidx.get(action_id)
            if not (control is True or (control is not None and control == control and bool(control))):
                if 0 < ago < 30:
                    self.contacts_30d[r] += 1
                elif ago == 0:
                    self.today[r] = True
                if col is not None and ago < self.since_action[r, col]:
                    self.since_action[r, col] = ago
            if outcome == "declined":
                od = _as_day(outcome_date) or d
                dago = (day - od).days
                if dago < 0:
                    continue
                if col is not None and dago < self.since_decline[r, col]:
                    self.since_decline[r, col] = dago
                fam = self.since_family_decline.get(family)
                if fam is not None and dago < fam[r]:
                    fam[r] = dago

    def __init__(self, history: pd.DataFrame, ids: pd.Index, catalog: Catalog, day: date):
        n, A = len(ids), len(catalog.actions)
        self.contacts_30d = np.zeros(n)
        self.today = np.zeros(n, bool)
        self.since_action = np.full((n, A), np.inf)
        self.since_decline = np.full((n, A), np.inf)
        self.since_family_decline = {f: np.full(n, np.inf) for f in ("product_offer", "care_contact", "retention_offer")}
        self.empty = history is None or len(history) == 0  # nothing counts: no cooldown, no contact today
        if self.empty:
            return
        if not isinstance(history, pd.DataFrame) or len(history) <= SMALL_HISTORY:
            self._fill_rows(history, ids, catalog, day)
            return
        ids = ids if isinstance(ids, pd.Index) else pd.Index(ids)
        h = history.copy()
        h["row"] = ids.get_indexer(h["customer_id"])
        h = h[h["row"] >= 0]
        dec = pd.to_datetime(h["decided"]).dt.date
        h["ago"] = [(day - d).days for d in dec]
        h = h[h["ago"] >= 0]
        acted = h[~h["control_group"].fillna(False).astype(bool)]
        recent = acted[(acted["ago"] < 30) & (acted["ago"] > 0)]
        self.contacts_30d = np.bincount(recent["row"], minlength=n).astype(float)
        self.today[acted.loc[acted["ago"] == 0, "row"].to_numpy()] = True
        aidx = {a.action_id: j for j, a in enumerate(catalog.actions)}
        acted = acted.assign(col=acted["action_id"].map(aidx))
        known = acted.dropna(subset=["col"])
        if len(known):
            g = known.groupby(["row", "col"])["ago"].min()
            self.since_action[g.index.get_level_values(0), g.index.get_level_values(1).astype(int)] = g.to_numpy()
        declines = h[h["outcome"] == "declined"].copy()
        if len(declines):
            od = pd.to_datetime(declines["outcome_date"].fillna(declines["decided"])).dt.date
            declines["dago"] = [(day - d).days for d in od]
            declines = declines[declines["dago"] >= 0]
            declines["col"] = declines["action_id"].map(aidx)
            k = declines.dropna(subset=["col"])
            if len(k):
                g = k.groupby(["row", "col"])["dago"].min()
                self.since_decline[g.index.get_level_values(0), g.index.get_level_values(1).astype(int)] = g.to_numpy()
            for fam, grp in declines.groupby("action_family"):
                if fam in self.since_family_decline:
                    g = grp.groupby("row")["dago"].min()
                    self.since_family_decline[fam][g.index.to_numpy()] = g.to_numpy()


@dataclass
class _Static:
    """Per-action arrays of the catalog."""

    fam: np.ndarray       # [A] family code 0 offer, 1 care, 2 retention
    prod: np.ndarray      # [A] product column (-1 none)
    ch: np.ndarray        # [A, C] allowed channels
    cost: np.ndarray      # [A]
    lever: np.ndarray     # [A]
    cooldown: np.ndarray  # [A]
    resp: np.ndarray      # [C]
    ccost: np.ndarray     # [C]
    in_person: np.ndarray  # [C]
    min_age: np.ndarray    # [A] offers: the product's minimum age (0 for other actions)
    segments: list         # [A] offers: the product's eligible segments (a set), else None
    margins: np.ndarray    # [m] annual margin per catalog product
    risk: np.ndarray       # [A] offers: the product's risk level (0 for other actions)
    invest: np.ndarray     # [A] offers: an investment product (suitability applies)
    action_ids: np.ndarray  # [A] object
    action_id_list: list = None  # [A] the same, as a list (per-action Python loops)
    product_rows: dict = None  # product_id -> the product's row as a dict (talking points)
    segment_cache: dict = None  # segment -> [A] bool (see _segment_rows)


FAMILIES = ("product_offer", "care_contact", "retention_offer")


_STATIC_CACHE: list = []  # (catalog, _Static) of the last few catalogs: the API scores one client at a time


def _static(catalog: Catalog) -> _Static:
    for cat, s in _STATIC_CACHE:
        if cat is catalog:
            return s
    s = _build_static(catalog)
    _STATIC_CACHE[:] = [(catalog, s), *_STATIC_CACHE[:3]]
    return s


def _build_static(catalog: Catalog) -> _Static:
    A, C = len(catalog.actions), len(CHANNELS)
    pidx = {p: j for j, p in enumerate(catalog.products.index)}
    ch = np.zeros((A, C), bool)
    for j, a in enumerate(catalog.actions):
        for c in a.channels:
            ch[j, CHANNELS.index(c)] = True
    cfg = catalog.config.channels
    prods = catalog.products
    suit = catalog.policy.suitability
    min_age, risk, invest = np.zeros(A), np.zeros(A), np.zeros(A, bool)
    segments: list = [None] * A
    for j, a in enumerate(catalog.actions):
        if a.product_id:
            p = prods.loc[a.product_id]
            min_age[j], risk[j] = float(p["min_age"]), float(p["risk_level"])
            invest[j] = p["category"] in suit.investment_categories
            segments[j] = frozenset(str(p["eligible_segments"]).split("|"))
    return _Static(
        min_age=min_age, segments=segments, margins=prods["annual_margin"].to_numpy(float), risk=risk,
        invest=invest, action_ids=np.array([a.action_id for a in catalog.actions], dtype=object),
        action_id_list=[a.action_id for a in catalog.actions],
        product_rows={pid: row for pid, row in zip(prods.index, prods.to_dict("records"))}, segment_cache={},
        fam=np.array([FAMILIES.index(a.family) for a in catalog.actions]),
        prod=np.array([pidx[a.product_id] if a.product_id else -1 for a in catalog.actions]),
        ch=ch, cost=np.array([a.cost for a in catalog.actions]), lever=np.array([a.lever for a in catalog.actions]),
        cooldown=np.array([a.cooldown_days for a in catalog.actions], float),
        resp=np.array([cfg[c].response for c in CHANNELS]), ccost=np.array([cfg[c].cost for c in CHANNELS]),
        in_person=np.array([cfg[c].in_person for c in CHANNELS]))


def _segment_rows(S: _Static, segs: np.ndarray) -> np.ndarray:
    """``[n, A]`` bool: each client's segment is among the eligible segments of each action's product
    (True for actions without a product). One row per distinct segment, computed once per catalog."""
    cache = S.segment_cache
    uniq, inv = np.unique(segs.astype(str), return_inverse=True)
    rows = []
    for s in uniq.tolist():
        row = cache.get(s)
        if row is None:
            row = cache[s] = np.array([True if g is None else s in g for g in S.segments], bool)
        rows.append(row)
    return np.stack(rows)[inv.reshape(-1)]


def _care_triggers(feats, catalog: Catalog, day: date) -> dict[str, np.ndarray]:
    out = {}
    for name, c in catalog.config.care_contacts.items():
        if c.trigger == "birthday":
            t = _b(feats, "birthday_in_14d")
        elif c.trigger == "silence":
            # No outbound contact on record counts as silence once the client is older than the window;
            # an unknown contact history (no interactions in the export: outbound_30d null) does not.
            since = _f(feats, "days_since_last_outbound", np.nan)
            known = ~np.isnan(_f(feats, "outbound_30d", np.nan))
            t = np.where(np.isnan(since), known & (_f(feats, "tenure_days", 0) >= c.silence_days),
                         since >= c.silence_days)
        elif c.trigger == "complaint":
            t = (_f(feats, "open_complaints", 0) > 0) | (_f(feats, "days_since_resolved_complaint", np.inf) <= c.within_days)
        elif c.trigger == "td_maturity":
            t = _b(feats, "td_maturity_in_14d")
        elif c.trigger == "anniversary":
            t = _b(feats, "anniversary_in_14d") & (_f(feats, "tenure_days", 0) >= 300)
        else:  # holiday
            t = np.full(_len(feats), day.strftime("%m-%d") in (c.dates or []))
        out[f"care:{name}"] = t
    return out


def score(f, catalog: Catalog, inputs: Inputs, history: _History, day: date,
          request: Request | None = None) -> dict:
    """Propensity, value, policies and the best in-person and digital option of each client in ``f``
    (a DataFrame, or a mapping of column -> 1-D array; ``inputs`` and ``history`` aligned with its rows).

    ``request``: a real-time caller's context (:class:`Request`), applied as the rule ``request`` after
    the hard policies. Returns arrays: ``P``, ``V`` [n, A]; ``removed_by`` [n, A] (0 passed, else
    1 + index in :data:`RULES`, or ``len(RULES) + 1`` for ``request``); ``best`` per kind ("ip", "dg"):
    (priority [n], action [n], channel [n]); ``action_priority`` / ``action_channel`` [n, A]: each action
    at its best allowed channel (-inf: not allowed).

    Two steps: :func:`day_scores` (what depends only on the day's features and model outputs) and
    :func:`finish` (the contact history and the request). The scoring API runs the first for every
    client when it loads a model and the second per request; the daily run runs both here.
    """
    return finish(day_scores(f, catalog, inputs, day), catalog, history, request)


#: The rules :func:`day_scores` applies (the others need the contact history or a request).
DAY_RULES = ("former_client", "eligibility", "already_held", "suitability", "complaint_first", "consent")


class DayScores(dict):
    """:func:`day_scores`' arrays, aligned with the clients' rows: ``P``, ``V``, ``removed_by``,
    ``rm_review`` [n, A]; ``chan`` [n, A, C] (allowed channels after consent); ``held`` [n, m];
    ``protected``, ``churn``, ``outbound_30d`` [n]. :meth:`take` selects rows."""

    def take(self, idx) -> DayScores:
        if isinstance(idx, np.ndarray) and idx.shape == (1,):  # one client (the API): views, no copies
            i = int(idx[0])
            idx = slice(i, i + 1)
        return DayScores({k: v[idx] for k, v in self.items()})


def day_scores(f, catalog: Catalog, inputs: Inputs, day: date) -> DayScores:
    """The part of :func:`score` fixed for the day: propensity and value per (client, action) and the
    hard policies that read only the features and the model (:data:`DAY_RULES`: eligibility, already
    held, suitability, complaint first, consent). Returns a :class:`DayScores`; ``removed_by`` is int8
    (0 passed, else 1 + index in :data:`RULES`)."""
    S = _static(catalog)
    n, A = _len(f), len(catalog.actions)
    pol = catalog.policy
    prods = catalog.products
    age = _f(f, "age", 0)
    protected = (age >= pol.suitability.protected_age) | _b(f, "vulnerable")
    held = held_matrix(f, prods.index)
    margins = S.margins
    client_margin = held.astype(float) @ margins
    # What the bank stands to lose if the client leaves (currency, over value_years): the margins of the
    # products held plus a margin on the balances (assets and liabilities), which a bank's export may
    # carry when its product margins are unknown.
    ro = catalog.config.retention_offers
    balances = _nan0(_f(f, "total_assets", 0))
    for col in ("total_liabilities", "balance_other"):  # `other` products (a pension): neither asset nor liability
        if _has(f, col):
            balances = balances + np.abs(_nan0(_f(f, col, 0)))
    at_risk = (client_margin + ro.balance_margin * balances) * ro.value_years
    health = _f(f, "health_score", 50)
    churn = inputs.churn
    assets = _f(f, "total_assets", 0)
    open_complaint = _f(f, "open_complaints", 0) > 0

    # --- propensity and value ---------------------------------------------------------------------
    P = np.zeros((n, A))
    V = np.zeros((n, A))
    elig = np.ones((n, A), bool)
    pp = inputs.product_propensity
    offer_cols = np.flatnonzero(S.fam == 0)
    P[:, offer_cols] = _nan0(pp[:, S.prod[offer_cols]])
    V[:, offer_cols] = margins[S.prod[offer_cols]] * pol.value_years * S.lever[offer_cols]
    segs = _s(f, "segment")
    seg_ok = _segment_rows(S, segs)  # [n, A] the client's segment may have the action's product
    elig[:, offer_cols] = (age[:, None] >= S.min_age[offer_cols][None, :]) & seg_ok[:, offer_cols] \
        & ~np.isnan(pp[:, S.prod[offer_cols]])
    triggers = _care_triggers(f, catalog, day)
    churn0 = _nan0(churn)
    former = _b(f, "former_client") if _has(f, "former_client") else np.zeros(n, bool)
    for j, a in enumerate(catalog.actions):
        if a.win_back is not None:
            wb = a.win_back
            P[:, j] = wb.return_rate
            V[:, j] = wb.value
            elig[:, j] = former & (_f(f, "days_since_left", np.inf) <= wb.max_days_since_left)
        elif a.care is not None:
            t = triggers[a.action_id]
            P[:, j] = np.where(t, a.care.base_rate * (1 + a.care.health_weight * (1 - health / 100)), 0.0)
            V[:, j] = a.care.value
            elig[:, j] = t
        elif a.retention is not None:
            r = a.retention
            P[:, j] = churn0 * r.save_rate
            V[:, j] = at_risk
            elig[:, j] = ~np.isnan(churn) & (churn0 >= r.min_churn) & (assets >= r.min_assets) \
                & (at_risk > 0)

    # --- hard policies, in order; removed_by: the first rule that removed the action (0: passed) -----
    removed_by = np.zeros((n, A), np.int8)

    def apply(rule: str, removes: np.ndarray) -> None:
        hit = removes & (removed_by == 0)
        removed_by[hit] = RULES.index(rule) + 1

    # A former client (every holding closed) gets no care contact, offer, retention offer or capacity;
    # only the win-back contact, when it is enabled.
    is_win_back = np.array([a.win_back is not None for a in catalog.actions])
    apply("former_client", former[:, None] & ~is_win_back[None, :])
    apply("eligibility", ~elig)
    is_offer = S.fam == 0
    held_a = np.zeros((n, A), bool)
    held_a[:, offer_cols] = held[:, S.prod[offer_cols]]
    apply("already_held", held_a)
    # Suitability: investment products within risk tolerance and a fresh assessment; protected clients
    # get nothing above the protected risk level, and their product offers need an RM (in person).
    suit = pol.suitability
    risk, invest = S.risk, S.invest
    tol = _f(f, "risk_tolerance", 0)
    assessed = _f(f, "risk_assessment_age_days", np.inf) < suit.assessment_max_age_days
    unsuitable = invest[None, :] & ((risk[None, :] > tol[:, None]) | ~assessed[:, None])
    unsuitable |= is_offer[None, :] & protected[:, None] & (risk[None, :] > suit.protected_max_risk)
    rm_review = is_offer[None, :] & protected[:, None]
    # Channels: the action's own, consent per channel, marketing consent for offers, in person for review.
    consent = np.stack([_b(f, f"consent_{c}") for c in CHANNELS], axis=1)  # [n, C]
    marketing = _b(f, "consent_marketing")
    needs_marketing = S.fam != 1
    chan = S.ch[None, :, :] & np.ones((n, 1, 1), bool)
    in_person_only = chan & S.in_person[None, None, :]
    chan = np.where(rm_review[:, :, None], in_person_only, chan)
    unsuitable |= rm_review & ~chan.any(axis=2)  # review needed but the action has no in-person channel
    apply("suitability", unsuitable)
    apply("complaint_first", open_complaint[:, None] & (S.fam != 1)[None, :])
    chan &= consent[:, None, :]
    chan &= ~(needs_marketing[None, :, None] & ~marketing[:, None, None])
    apply("consent", ~chan.any(axis=2))
    # Each action's expected value at its best allowed in-person and digital channel, as far as these
    # rules go: the later rules remove whole actions, so finish() only masks these.
    ev = _expected_value(S, P, V, (removed_by == 0)[:, :, None] & chan)
    ip_ev = np.where(S.in_person[None, None, :], ev, -np.inf)
    dg_ev = np.where(S.in_person[None, None, :], -np.inf, ev)
    return DayScores(P=P, V=V, removed_by=removed_by, rm_review=rm_review, chan=chan, held=held,
                     protected=protected, churn=np.asarray(churn), outbound_30d=_f(f, "outbound_30d", 0),
                     ip_ev=ip_ev.max(axis=2), ip_ch=ip_ev.argmax(axis=2).astype(np.int8),
                     dg_ev=dg_ev.max(axis=2), dg_ch=dg_ev.argmax(axis=2).astype(np.int8))


def _expected_value(S: _Static, P: np.ndarray, V: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``[n, A, C]`` expected value of each action on each channel, net of the channel's and the
    action's cost (currency); ``-inf`` where ``ok`` ([n, A, C] bool) is False."""
    ev = P[:, :, None] * S.resp[None, None, :] * V[:, :, None] - S.ccost[None, None, :] - S.cost[None, :, None]
    return np.where(ok, ev, -np.inf)


def finish(day: DayScores, catalog: Catalog, history: _History, request: Request | None = None,
           best: bool = True) -> dict:
    """:func:`score` from the day's part: the contact-history rules (cooldown, contact cap, one per
    day), the request, then the expected value per channel and (with ``best``) the best in-person and
    digital options. ``day`` is not modified."""
    S = _static(catalog)
    pol = catalog.policy
    P, V, rm_review = day["P"], day["V"], day["rm_review"]
    n, A = P.shape
    removed_by = day["removed_by"].copy()
    chan = day["chan"]

    def apply(rule: str, removes: np.ndarray) -> None:
        hit = removes & (removed_by == 0)
        removed_by[hit] = RULES.index(rule) + 1

    if not history.empty:
        cool = history.since_action < S.cooldown[None, :]
        cool |= history.since_decline < pol.decline_cooldown_days
        for fi, fam in enumerate(FAMILIES):
            fam_block = history.since_family_decline[fam] < pol.family_decline_cooldown_days
            cool |= fam_block[:, None] & (S.fam == fi)[None, :]
        apply("cooldown", cool)
    contacts = day["outbound_30d"] + history.contacts_30d
    apply("contact_cap", (contacts >= pol.max_contacts_per_30d)[:, None] & np.ones((1, A), bool))
    if not history.empty:
        apply("one_per_day", history.today[:, None] & np.ones((1, A), bool))
    if request is not None:
        before = chan.any(axis=2)
        if request.channel is not None:
            chan = chan & (np.array(CHANNELS) == request.channel)[None, None, :]
        allowed = np.ones(A, bool)
        if request.candidates is not None:
            allowed &= np.isin(S.action_ids, list(request.candidates))
        if request.exclude:
            allowed &= ~np.isin(S.action_ids, list(request.exclude))
        removed_by[((~allowed)[None, :] | (before & ~chan.any(axis=2))) & (removed_by == 0)] = len(RULES) + 1

    # --- expected value per channel; best in-person and best digital option -------------------------
    passed = removed_by == 0
    if request is not None and request.channel is not None:  # channels narrowed: from the channels again
        ok = passed[:, :, None] & chan
        ev = _expected_value(S, P, V, ok)
        ip = np.where(S.in_person[None, None, :], ev, -np.inf)
        dg = np.where(S.in_person[None, None, :], -np.inf, ev)
        ip_ev, ip_ch, dg_ev, dg_ch = ip.max(axis=2), ip.argmax(axis=2), dg.max(axis=2), dg.argmax(axis=2)
        chan_ok = ok.any(axis=2)
    else:  # the day's best channels, without the actions the later rules removed
        ip_ev = np.where(passed, day["ip_ev"], -np.inf)
        dg_ev = np.where(passed, day["dg_ev"], -np.inf)
        ip_ch, dg_ch = day["ip_ch"], day["dg_ch"]
        chan_ok = passed & day["chan"].any(axis=2)
    best_ev = np.maximum(ip_ev, dg_ev)  # [n, A]
    # the channel of the best value (the first channel on a tie, as an argmax over all channels)
    channel = np.where(ip_ev > dg_ev, ip_ch, np.where(dg_ev > ip_ev, dg_ch, np.minimum(ip_ch, dg_ch)))
    channel = np.where(np.isfinite(best_ev), channel, 0).astype(np.int64)
    per_action = np.where(best_ev > pol.min_priority, best_ev, -np.inf)
    options_ = {}
    rows = np.arange(n)
    for name, e, ch in (("ip", ip_ev, ip_ch), ("dg", dg_ev, dg_ch)) if best else ():
        k = np.argmax(e, axis=1)  # the first best action (an argmax over actions x channels)
        pr = e[rows, k]
        valid = np.isfinite(pr) & (pr > pol.min_priority)
        options_[name] = (np.where(valid, pr, -np.inf), k, np.asarray(ch)[rows, k].astype(np.int64))
    return {"P": P, "V": V, "removed_by": removed_by, "rm_review": rm_review, "chan_ok": chan_ok,
            "best": options_, "held": day["held"], "protected": day["protected"], "churn": day["churn"],
            "action_priority": per_action, "action_channel": channel}


#: What :func:`answers` and the scoring API read of :func:`finish`'s arrays.
ANSWER_KEYS = ("P", "V", "rm_review", "removed_by", "chan_ok", "action_priority", "action_channel")


def quiet_finish(day: DayScores, catalog: Catalog) -> DayScores:
    """:func:`finish` of every client of ``day`` with no contact history in the ledger and a request
    that narrows nothing (no channel, candidates or exclusions): :data:`ANSWER_KEYS` [n, A], equal to
    ``finish(day.take(i), catalog, <empty history>, Request())`` for each row ``i`` (tested). Most API
    requests are such: the server computes this when it loads a model and takes a row per request
    instead of running :func:`finish`. ``action_channel`` is int8 (an index into :data:`CHANNELS`)."""
    n = len(day["P"])
    d = finish(day, catalog, _History(None, range(n), catalog, date.min), None, best=False)
    out = DayScores({k: d[k] for k in ANSWER_KEYS})
    out["action_channel"] = out["action_channel"].astype(np.int8)
    return out


def narrows_nothing(request: Request | None) -> bool:
    """Whether ``request`` leaves the day's decision as it is (no channel, candidates or exclusions)."""
    return request is None or (request.channel is None and request.candidates is None and not request.exclude)


def assign(rm: np.ndarray, ip: np.ndarray, dg: np.ndarray, capacity: dict[str, int]) -> np.ndarray:
    """Which clients get their in-person option: per RM the ``capacity`` largest positive gains
    ``ip - max(dg, 0)``. ``ip``/``dg`` are priorities (-inf: no option). Returns a bool mask.

    Optimal: total = sum of each client's digital-or-nothing value + the gains of the chosen, and the
    chosen set is any set of at most ``capacity`` clients, so the largest gains maximise it.
    """
    base = np.where(np.isfinite(dg), np.maximum(dg, 0), 0.0)
    gain = np.where(np.isfinite(ip), ip - base, -np.inf)
    frame = pd.DataFrame({"rm": rm, "gain": gain})
    frame = frame[frame["gain"] > 0]
    chosen = np.zeros(len(rm), bool)
    if frame.empty:
        return chosen
    frame = frame.sort_values(["rm", "gain"], ascending=[True, False], kind="stable")
    frame["rank"] = frame.groupby("rm").cumcount()
    frame["cap"] = frame["rm"].map(capacity).fillna(0).astype(int)
    chosen[frame.index[frame["rank"] < frame["cap"]].to_numpy()] = True
    return chosen


def options(feats: pd.DataFrame, catalog: Catalog, inputs: Inputs, hist: _History, day: date,
            chunk: int = 200_000) -> pd.DataFrame:
    """Each client's best in-person and best digital option: priority (-inf: none), action, channel."""
    n = len(feats)
    cols = {k: np.empty(n, t) for k, t in (("ip_p", float), ("ip_a", int), ("ip_c", int),
                                          ("dg_p", float), ("dg_a", int), ("dg_c", int))}
    for s in range(0, n, chunk):
        idx = np.arange(s, min(n, s + chunk))
        out = score(feats.iloc[idx], catalog, inputs.take(idx), hist.take(idx), day)
        for name in ("ip", "dg"):
            p_, a_, c_ = out["best"][name]
            cols[f"{name}_p"][idx], cols[f"{name}_a"][idx], cols[f"{name}_c"][idx] = p_, a_, c_
    return pd.DataFrame(cols)


def decide(feats: pd.DataFrame, catalog: Catalog, inputs: Inputs, capacity: dict[str, int], day: date,
           history: pd.DataFrame | None = None, chunk: int = 200_000,
           precomputed: pd.DataFrame | None = None) -> pd.DataFrame:
    """The day's decisions: one row per client given an action (control-group rows included).

    ``precomputed``: the :func:`options` of every client, computed elsewhere (Ray Data).
    """
    feats = feats.reset_index(drop=True)
    n = len(feats)
    if inputs.product_propensity.shape != (n, len(catalog.products)):
        raise ValueError(f"product_propensity has shape {inputs.product_propensity.shape}, expected "
                         f"({n}, {len(catalog.products)})")
    ids = pd.Index(feats["customer_id"].astype(str))
    hist = _History(history if history is not None else empty_history(), ids, catalog, day)
    opt = precomputed if precomputed is not None else options(feats, catalog, inputs, hist, day, chunk)
    ip_p, ip_a, ip_c = (opt[c].to_numpy() for c in ("ip_p", "ip_a", "ip_c"))
    dg_p, dg_a, dg_c = (opt[c].to_numpy() for c in ("dg_p", "dg_a", "dg_c"))

    # Control group: a random share of the clients who would get an action today, by the family of that
    # action. They are drawn after a first assignment (so they are comparable with the treated), and
    # the capacity they free goes to the next clients in a second assignment.
    rm = feats["rm_id"].astype(str).to_numpy()
    first_ip = assign(rm, ip_p, dg_p, capacity)
    first_dg = ~first_ip & np.isfinite(dg_p)
    would = first_ip | first_dg
    would_a = np.where(first_ip, ip_a, dg_a)
    fam_of = np.array([FAMILIES.index(a.family) for a in catalog.actions])
    fam_names = np.array(FAMILIES, dtype=object)[fam_of[would_a]]
    shares = np.array([catalog.policy.control_share.get(fam, 0.0) for fam in FAMILIES])[fam_of[would_a]]
    control = would & (control_draw(ids.to_numpy(), fam_names, day) < shares)

    in_person = assign(rm, np.where(control, -np.inf, ip_p), np.where(control, -np.inf, dg_p), capacity)
    digital = ~in_person & ~control & np.isfinite(dg_p)
    chosen = control | in_person | digital
    ctrl_ip = control & first_ip
    act = np.where(control, would_a, np.where(in_person, ip_a, dg_a))
    chn = np.where(ctrl_ip | (~control & in_person), ip_c, dg_c)
    pri = np.where(ctrl_ip | (~control & in_person), ip_p, dg_p)
    note = np.where(control, "control_group", np.where(
        in_person, "in_person_within_capacity",
        np.where(np.isfinite(ip_p), "digital_rm_capacity_full_or_lower_gain", "digital")))
    rows = np.flatnonzero(chosen)
    # The chosen clients are scored again for what their rows show (propensity, value, trace).
    detail = score(feats.iloc[rows], catalog, inputs.take(rows), hist.take(rows), day) if len(rows) else None
    return _rows(feats, catalog, rows, act, chn, pri, control, note, detail, day, inputs)


def _rows(feats, catalog, rows, act, chn, pri, control, note, detail, day, inputs) -> pd.DataFrame:
    if not len(rows):
        types = {"priority": float, "propensity": float, "value": float, "health_score": float,
                 "control_group": bool, "in_person": bool, "rm_review": bool}
        return pd.DataFrame({c: pd.Series(dtype=types.get(c, object)) for c in DECISION_COLUMNS})
    f = feats.iloc[rows].reset_index(drop=True)
    a_idx, c_idx = act[rows], chn[rows]
    ar = np.arange(len(rows))
    P, V = detail["P"][ar, a_idx], detail["V"][ar, a_idx]
    review = detail["rm_review"][ar, a_idx]
    traces = []
    ids = np.array([a.action_id for a in catalog.actions], dtype=object)
    removed_by, passed = detail["removed_by"], (detail["removed_by"] == 0) & detail["chan_ok"]
    for i, r in enumerate(rows):
        rb = removed_by[i]
        trace = {rule: ids[rb == k + 1].tolist() for k, rule in enumerate(RULES)}
        trace["passed"] = ids[passed[i]].tolist()
        trace["chosen"] = {"action_id": ids[a_idx[i]], "channel": CHANNELS[c_idx[i]], "assignment": str(note[r])}
        traces.append(json.dumps(trace, separators=(",", ":")))
    actions = [catalog.actions[j] for j in a_idx]
    channels = np.array(CHANNELS, dtype=object)[c_idx]
    cohort = cohort_shares(feats, catalog)
    reasons, points, data = explain(f, actions, P, detail["churn"], catalog, cohort, review, day,
                                    prior=None if inputs.prior is None else inputs.prior[rows])
    out = pd.DataFrame({
        "date": day.isoformat(),
        "rm_id": f["rm_id"].astype(str).to_numpy(),
        "customer_id": f["customer_id"].astype(str).to_numpy(),
        "action_family": [a.family for a in actions],
        "action_id": [a.action_id for a in actions],
        "product_id": [a.product_id for a in actions],
        "channel": channels,
        "priority": pri[rows].astype(float).round(4),
        "propensity": P.round(5),
        "value": V.round(2),
        "reasons": reasons,
        "talking_points": points,
        "policy_trace": traces,
        "model_version": inputs.model_version,
        "control_group": control[rows],
        "decision_id": [decision_id(day, c, a.action_id) for c, a in zip(f["customer_id"], actions)],
        "in_person": [catalog.config.channels[c].in_person for c in channels],
        "rm_review": review,
        "feature_hash": feature_hashes(f),
        "lifecycle_stage": f["lifecycle_stage"].astype(str).to_numpy(),
        "health_score": _f(f, "health_score"),
        "complaint_state": f["complaint_state"].astype(str).to_numpy(),
        "emotional_state": f["emotional_state"].astype(str).to_numpy(),
        "talking_point_data": [json.dumps(d, separators=(",", ":"), ensure_ascii=False) for d in data],
    })
    return out.sort_values(["rm_id", "control_group", "priority"], ascending=[True, True, False],
                           kind="stable", ignore_index=True)


# -------------------------------------------------------------------------------------------------
# Reasons and talking points


def age_band(age: np.ndarray) -> np.ndarray:
    return np.array(AGE_BAND_NAMES, dtype=object)[np.clip(np.searchsorted(AGE_BANDS, age, side="right") - 1, 0, 3)]


def cohort_shares(feats: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """``[n_cohorts, n_products]`` share of clients holding each product, per segment x age band (for the
    talking point 'clients like this one'), over every client of ``feats`` (the whole bank on a day)."""
    held = held_matrix(feats, catalog.products.index)
    key = feats["segment"].astype(str).to_numpy() + "|" + age_band(_f(feats, "age", 0))
    frame = pd.DataFrame(held, columns=catalog.products.index)
    frame["cohort"] = key
    return frame.groupby("cohort").mean()


#: The talking points' codes (:func:`explain`) and their fields, for pages that say them in other languages.
#: ``facts`` holds ``parts``: a list of [code, fields] of the codes under it, said as one sentence.
TALKING_POINT_CODES: dict[str, tuple[str, ...]] = {
    "offer_propensity": ("product", "p"), "offer_base_rate": ("product", "p"), "offer_peers": ("product", "share", "segment", "band"),
    "offer_review": (), "offer_review_age": ("age", "limit"), "offer_review_unknown": (),
    "offer_review_vulnerable": (), "offer_suitable": ("level", "tolerance", "assessed_days"), "facts": ("parts",),
    "churn_risk": ("p",), "assets_down": ("p",), "last_contact": ("days",), "recent_mood": ("mood",),
    "retention_offer": ("action_id", "save_rate", "assets"), "birthday_today": ("turns",),
    "birthday_in": ("days", "turns"), "silence_never": ("tenure_days",), "silence": ("days",),
    "complaint_open": (), "complaint_open_severity": ("severity",), "complaint_resolved": ("days",),
    "td_maturity": ("days",), "anniversary": ("years", "days"), "holiday": (), "health": ("health", "stage"),
    "win_back": ("days",),
}


def _pct(x: float) -> str:
    """A probability as a percentage; under 1% with one decimal (a base rate of 0.2% is not "0%")."""
    return f"{100 * x:.1f}%" if 0 < x < 0.00995 else f"{100 * x:.0f}%"


def explain(f, actions: list, P: np.ndarray, churn: np.ndarray, catalog: Catalog,
            cohort: pd.DataFrame, review: np.ndarray, day: date,
            records: list[dict] | None = None, prior: np.ndarray | None = None
            ) -> tuple[list[str], list[str], list[list]]:
    """Reason codes ('|'-joined), 1-3 talking points in English (' || '-joined) and the same talking
    points as data (a list of ``[code, {field: value}]``, one per point, stored as JSON in the daily
    decisions; see :data:`TALKING_POINT_CODES`) per decision on ``day``, from the evidence. The data lets a page say
    them in another language: the code names the sentence and the fields are the numbers and names in
    it (probabilities 0-1, days, currency, the bank's product names)."""
    S = _static(catalog)
    reasons, points, data = [], [], []
    if records is None:
        records = _records(f)
        age = _f(f, "age", 0)
    else:  # the rows as dicts already (the API): the same ages as _f gives
        age = np.array([_number(r.get("age")) for r in records], dtype="float64")
        age = np.where(np.isnan(age), 0.0, age)
    bands = age_band(age)
    for i, (a, r) in enumerate(zip(actions, records)):
        codes, tp, said = [], [], []

        def say(text: str, code: str, **fields) -> None:
            tp.append(text)
            said.append([code, fields])

        health = float(r.get("health_score", np.nan))
        stage = r.get("lifecycle_stage")
        if a.family == "product_offer":
            p = S.product_rows[a.product_id]
            if prior is not None and prior[i]:  # a new client, or no calibration: a base rate, said as one
                codes.append("propensity_prior")
                say(f"{p['name']}: {_pct(P[i])} of clients like this one open it within 90 days (a base rate, "
                    f"not this client's model score)", "offer_base_rate", product=str(p["name"]),
                    p=round(float(P[i]), 4))
            else:
                codes.append("model_propensity")
                say(f"{p['name']}: {_pct(P[i])} likely to open it within 90 days", "offer_propensity",
                    product=str(p["name"]), p=round(float(P[i]), 4))
            key = f"{r['segment']}|{bands[i]}"
            share = float(cohort.at[key, a.product_id]) if key in cohort.index else 0.0
            if share >= 0.2:
                codes.append("peer_adoption")
                say(f"Clients like this one hold {p['name']}: {_pct(share)} of {r['segment']} clients aged "
                    f"{bands[i]} do", "offer_peers", product=str(p["name"]), share=round(share, 4),
                    segment=str(r["segment"]), band=str(bands[i]))
            if review[i]:
                codes.append("rm_review_required")
                years, limit = age[i], catalog.policy.suitability.protected_age
                if years >= limit:
                    say(f"Protected client (aged {int(years)}, {limit} or over): RM to review suitability in "
                        f"person before offering", "offer_review_age", age=int(years), limit=int(limit))
                elif r.get("vulnerable_known") is False or r.get("vulnerable_known") == 0:
                    say("Protected client (vulnerability not on record, so treated as vulnerable): RM to check it "
                        "and review suitability in person before offering", "offer_review_unknown")
                else:
                    say("Protected client (vulnerable): RM to review suitability in person before offering",
                        "offer_review_vulnerable")
            elif p["category"] in catalog.policy.suitability.investment_categories:
                codes.append("suitable_risk")
                say(f"Risk level {int(p['risk_level'])} within the client's tolerance "
                    f"{int(r['risk_tolerance'])} (assessed {int(r['risk_assessment_age_days'])} days ago)",
                    "offer_suitable", level=int(p["risk_level"]), tolerance=int(r["risk_tolerance"]),
                    assessed_days=int(r["risk_assessment_age_days"]))
        elif a.win_back is not None:
            codes.append("former_client")
            left = r.get("days_since_left")
            days = int(left) if pd.notna(left) else 0
            say(f"Left the bank {days} days ago (every product closed); marketing consent in force: invite them "
                f"back", "win_back", days=days)
        elif a.family == "retention_offer":
            codes.append("churn_risk")
            facts = [f"Churn risk {_pct(churn[i])}"]
            parts = [["churn_risk", {"p": round(float(churn[i]), 4)}]]
            trend = r.get("total_assets_trend_90d")
            if pd.notna(trend) and trend <= -0.1:
                codes.append("assets_declining")
                facts.append(f"assets down {_pct(-trend)} in 90 days")
                parts.append(["assets_down", {"p": round(float(-trend), 4)}])
            since = r.get("days_since_last_contact")
            if pd.notna(since) and since >= 60:
                codes.append("long_silence")
                facts.append(f"last contact {int(since)} days ago")
                parts.append(["last_contact", {"days": int(since)}])
            if r.get("emotional_state") in ("negative", "escalating"):
                codes.append("negative_sentiment")
                facts.append(f"recent contacts {r['emotional_state']}")
                parts.append(["recent_mood", {"mood": str(r["emotional_state"])}])
            say("; ".join(facts), "facts", parts=parts)
            ret = a.retention
            # assets, `other` products (a pension) included
            held_assets = sum(0.0 if v != v else v for v in (_number(r.get("total_assets", 0)),
                                                            _number(r.get("balance_other", 0))))
            say(f"Offer {a.action_id.split(':', 1)[1].replace('_', ' ')}: keeps about {_pct(ret.save_rate)} "
                f"of clients at risk; relationship worth {held_assets:,.0f} in assets",
                "retention_offer", action_id=a.action_id, save_rate=round(float(ret.save_rate), 4),
                assets=round(held_assets, 2))
        else:
            c = a.care
            t = c.trigger
            if t == "birthday":
                codes.append("birthday")
                d = int(r["days_to_birthday"])  # age is in completed years: it went up today when d == 0
                if d == 0:
                    say(f"Birthday today (turns {int(age[i])})", "birthday_today", turns=int(age[i]))
                else:
                    say(f"Birthday in {d} day{'s' if d != 1 else ''} (turns {int(age[i]) + 1})", "birthday_in",
                        days=d, turns=int(age[i]) + 1)
            elif t == "silence":
                codes.append("silence")
                since = r.get("days_since_last_outbound")
                if pd.isna(since):
                    say(f"No outbound contact on record in {int(r['tenure_days'])} days as a client",
                        "silence_never", tenure_days=int(r["tenure_days"]))
                else:
                    say(f"No contact from the bank for {int(since)} days", "silence", days=int(since))
            elif t == "complaint":
                if float(r.get("open_complaints", 0) or 0) > 0:
                    codes.append("complaint_open")
                    sev = {1: "low", 2: "medium", 3: "high"}.get(int(r.get("open_complaint_max_severity") or 0), "")
                    say(f"Open complaint{f' ({sev} severity)' if sev else ''}: follow up on its resolution; "
                        f"no offers until it is resolved", "complaint_open_severity" if sev else "complaint_open",
                        **({"severity": sev} if sev else {}))
                else:
                    codes.append("complaint_resolved")
                    say(f"Complaint resolved {int(r['days_since_resolved_complaint'])} days ago: "
                        f"check the client is satisfied", "complaint_resolved",
                        days=int(r["days_since_resolved_complaint"]))
            elif t == "td_maturity":
                codes.append("td_maturity")
                say(f"Term deposit matures in {int(r['days_to_td_maturity'])} days: discuss reinvestment",
                    "td_maturity", days=int(r["days_to_td_maturity"]))
            elif t == "anniversary":
                codes.append("anniversary")
                # Calendar years at the coming anniversary: its year minus the onboarding year.
                onboarded = day - timedelta(days=int(r["tenure_days"]))
                years = (day + timedelta(days=int(r["days_to_onboarding_anniversary"]))).year - onboarded.year
                say(f"{years} year{'s' if years != 1 else ''} with the bank in "
                    f"{int(r['days_to_onboarding_anniversary'])} days", "anniversary", years=years,
                    days=int(r["days_to_onboarding_anniversary"]))
            else:
                codes.append("holiday")
                say("Seasonal greeting", "holiday")
        if len(tp) < 3 and pd.notna(health):
            codes.append(f"lifecycle_{stage}")
            say(f"Relationship health {health:.0f}/100, {stage} client", "health", health=round(health),
                stage=str(stage))
        reasons.append("|".join(codes))
        points.append(" || ".join(tp[:3]))
        data.append(said[:3])
    return reasons, points, data


# -------------------------------------------------------------------------------------------------
# Real time: one client (or a batch) now, for the scoring API


def realtime(f, catalog: Catalog, inputs: Inputs, day: date, history: pd.DataFrame | None,
             cohort: pd.DataFrame, request: Request | None = None, top: int = 5,
             detail: bool = False, hashes: Sequence[str] | None = None) -> list[dict] | tuple[list[dict], dict]:
    """Ranked actions per client of ``f`` for a real-time caller (the scoring API).

    The daily engine's propensities, hard policies, channels, priorities, control group, reasons and
    talking points for each client on ``day``, with the caller's :class:`Request` applied; without the
    daily run's book-level capacity assignment (a single request cannot see the RM's whole book), so the
    top action equals the daily engine's best option before assignment. ``cohort``: :func:`cohort_shares`
    of the whole bank on ``day``; ``history``: HISTORY_COLUMNS rows of these clients (the ledger).

    Returns one dict per client: ``customer_id``, ``control_group`` (the client is held out today for
    the family of its best action: ``actions`` is then empty and ``held_out`` names that action),
    ``actions`` (at most ``top``, best first: action_id, action_family, product_id, channel, priority,
    propensity, value, in_person, rm_review, reasons, talking_points, decision_id), ``policy_trace``
    (rule -> action ids it removed, ``passed``, ``chosen``), ``feature_hash`` and the client's state.
    With ``detail``, also :func:`score`'s arrays (a pair). ``hashes``: the rows' feature hashes when
    known (the API: from the online store's bytes), else :func:`feature_hashes` of ``f``.
    """
    ids = _s(f, "customer_id")
    hist = _History(history, ids, catalog, day)
    d = score(f, catalog, inputs, hist, day, request)
    out = answers(ids, _records(f), feature_hashes(f) if hashes is None else hashes, inputs.churn, d, catalog,
                  cohort, day, request, top, prior=inputs.prior)
    return (out, d) if detail else out


def answers(ids: Sequence[str], records: list[dict], hashes: Sequence[str], churn: np.ndarray, d: dict,
            catalog: Catalog, cohort: pd.DataFrame, day: date, request: Request | None = None,
            top: int = 5, prior: np.ndarray | None = None) -> list[dict]:
    """:func:`realtime`'s answers from :func:`score`'s arrays ``d`` for clients ``ids`` (their feature
    rows as dicts ``records``, :func:`feature_hashes` and churn probabilities ``churn``, aligned)."""
    S = _static(catalog)
    rules = RULES + (("request",) if request is not None else ())
    out = []
    for i in range(len(ids)):
        pri = d["action_priority"][i]
        order = np.argsort(-pri, kind="stable")
        order = order[np.isfinite(pri[order])][:max(int(top), 1)]
        rb = d["removed_by"][i]
        trace = {rule: [] for rule in rules}
        for j in np.flatnonzero(rb).tolist():  # in action order, as a mask per rule would give
            trace[rules[int(rb[j]) - 1]].append(S.action_id_list[j])
        trace["passed"] = S.action_ids[(rb == 0) & d["chan_ok"][i]].tolist()
        trace["chosen"] = None
        r = records[i]
        row = {"customer_id": ids[i], "control_group": False, "held_out": None, "actions": [],
               "policy_trace": trace, "feature_hash": str(hashes[i]),
               "state": {"lifecycle_stage": r.get("lifecycle_stage"), "health_score": _num_or_none(r.get("health_score")),
                         "complaint_state": r.get("complaint_state"), "emotional_state": r.get("emotional_state"),
                         "churn_risk": _num_or_none(churn[i])}}
        if len(order):
            fam = catalog.actions[order[0]].family
            share = catalog.policy.control_share.get(fam, 0.0)
            if control_draw(np.array([ids[i]]), np.array([fam]), day)[0] < share:
                row["control_group"] = True
                row["held_out"] = {"action_id": S.action_ids[order[0]], "action_family": fam,
                                   "decision_id": decision_id(day, ids[i], S.action_ids[order[0]])}
                trace["chosen"] = {"action_id": S.action_ids[order[0]], "channel": None, "assignment": "control_group"}
                out.append(row)
                continue
            acts = [catalog.actions[j] for j in order]
            reasons, points, data = explain(None, acts, d["P"][i, order], np.repeat(churn[i], len(order)),
                                            catalog, cohort, d["rm_review"][i, order], day, records=[r] * len(order),
                                            prior=None if prior is None else np.repeat(prior[i], len(order)))
            for k, (j, a) in enumerate(zip(order, acts)):
                c = CHANNELS[d["action_channel"][i, j]]
                row["actions"].append({
                    "rank": k + 1, "action_id": a.action_id, "action_family": a.family, "product_id": a.product_id,
                    "channel": c, "in_person": bool(catalog.config.channels[c].in_person),
                    "rm_review": bool(d["rm_review"][i, j]), "priority": round(float(pri[j]), 4),
                    "propensity": round(float(d["P"][i, j]), 5), "value": round(float(d["V"][i, j]), 2),
                    "reasons": reasons[k].split("|") if reasons[k] else [],
                    "talking_points": points[k].split(" || ") if points[k] else [],
                    "talking_point_data": data[k],
                    "decision_id": decision_id(day, ids[i], a.action_id)})
            trace["chosen"] = {"action_id": acts[0].action_id, "channel": row["actions"][0]["channel"],
                               "assignment": "realtime"}
        out.append(row)
    return out


def _num_or_none(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if v != v else v
