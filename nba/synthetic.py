"""A synthetic bank with structure a model can learn and a test can verify.

``generate(n_customers, seed, as_of, out)`` writes every contract table (``nba.schema``) as Parquet,
one folder of part files per table, in the layout ``nba data ingest`` reads. History ends the day
before ``as_of``; ``out/_truth/`` holds what happens in the 90 days from ``as_of`` (product openings,
churn), for evaluation only (ingest ignores ``_``-prefixed entries).

The world it simulates
- Customers have a life stage (from age), income, segment, risk tolerance, digital affinity, a latent
  taste vector and a latent dissatisfaction.
- Products are acquired one at a time over the tenure; each choice is a softmax over affinities from
  life stage, segment, income, risk fit, products already held (co-holding: a mortgage pulls home and
  life insurance) and taste. The same process continues into the future window (the truth).
- Dissatisfaction raises complaints and lowers contact sentiment. Churn hazard rises with it, with open
  or recent complaints, with long silences (no outbound contact) and falls with products held. Future
  churners mostly show it first: deposit balances drain and sentiment drops in the last 60 days.
- Some customers churned within the past year (all holdings closed): dormant relationships.
- Birthdays, term-deposit maturities and onboarding anniversaries fall naturally in the coming weeks.

Generation runs in chunks of ``CHUNK`` customers, each from its own seed (``SeedSequence([seed,
chunk])``), so the output is the same bytes for the same seed whatever the number of processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nba import schema
from nba.atomic import publish_dir
from nba.errors import ConfigError

CHUNK = 50_000
HISTORY_DAYS = 365  # event history (interactions, transactions, complaints) before as_of
TRUTH_DAYS = 90
GENERATOR_VERSION = 1
_EPOCH = date(1970, 1, 1)
_DAY_S = 86_400


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    risk_level: int
    annual_margin: float
    min_age: int
    eligible_segments: str
    term_months: int | None = None


CATALOG: tuple[Product, ...] = (
    Product("CUR-ACCT", "Current account", "deposit", 1, 60, 16, "mass|affluent|private"),
    Product("SAV-ACCT", "Savings account", "deposit", 1, 90, 16, "mass|affluent|private"),
    Product("TD-6M", "Term deposit 6 months", "term_deposit", 1, 110, 18, "mass|affluent|private", 6),
    Product("TD-12M", "Term deposit 12 months", "term_deposit", 1, 150, 18, "mass|affluent|private", 12),
    Product("TD-24M", "Term deposit 24 months", "term_deposit", 1, 190, 18, "mass|affluent|private", 24),
    Product("CARD-CLASSIC", "Classic credit card", "card", 1, 80, 18, "mass|affluent|private"),
    Product("CARD-GOLD", "Gold credit card", "card", 1, 180, 21, "affluent|private"),
    Product("CARD-PLAT", "Platinum credit card", "card", 1, 350, 25, "private"),
    Product("LOAN-PERSONAL", "Personal loan", "loan", 2, 420, 21, "mass|affluent|private", 48),
    Product("LOAN-CAR", "Car loan", "loan", 2, 460, 21, "mass|affluent|private", 60),
    Product("MORTGAGE", "Mortgage", "mortgage", 2, 1800, 21, "mass|affluent|private", 300),
    Product("FUND-BOND", "Bond fund", "fund", 2, 240, 18, "mass|affluent|private"),
    Product("FUND-BALANCED", "Balanced fund", "fund", 3, 320, 18, "mass|affluent|private"),
    Product("FUND-EQUITY", "Global equity fund", "fund", 4, 400, 18, "mass|affluent|private"),
    Product("FUND-EM", "Emerging markets fund", "fund", 5, 480, 18, "affluent|private"),
    Product("PENSION-PLAN", "Private pension plan", "fund", 3, 350, 18, "mass|affluent|private"),
    Product("INS-LIFE", "Life insurance", "insurance", 2, 300, 18, "mass|affluent|private"),
    Product("INS-HOME", "Home insurance", "insurance", 1, 150, 18, "mass|affluent|private"),
    Product("INS-TRAVEL", "Travel insurance", "insurance", 1, 60, 18, "mass|affluent|private"),
    Product("INS-HEALTH", "Health insurance", "insurance", 2, 220, 18, "mass|affluent|private"),
    Product("WEALTH-ADVISORY", "Advisory mandate", "wealth", 3, 1500, 25, "affluent|private"),
    Product("WEALTH-DISCRETIONARY", "Discretionary mandate", "wealth", 4, 3000, 25, "private"),
)
P = len(CATALOG)
PIDX = {p.product_id: i for i, p in enumerate(CATALOG)}
_CAT = np.array([p.category for p in CATALOG])
_RISK = np.array([p.risk_level for p in CATALOG])
_MIN_AGE = np.array([p.min_age for p in CATALOG])
_TERM = np.array([p.term_months or 0 for p in CATALOG])
_SEG_OK = np.array([[s in p.eligible_segments.split("|") for p in CATALOG] for s in schema.SEGMENTS])

STAGES = ("student", "young_professional", "family", "established", "retired")


def _affinities() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hand-written preferences: base [P], stage [5,P], segment [3,P], income slope [P], co-holding [P,P]."""
    base = np.full(P, -1.0)
    for pid, v in {"SAV-ACCT": 0.6, "CARD-CLASSIC": 0.5, "INS-TRAVEL": 0.0, "TD-12M": -0.3,
                   "FUND-BALANCED": -0.4, "INS-HOME": -0.5, "WEALTH-DISCRETIONARY": -2.0,
                   "FUND-EM": -1.5, "CARD-PLAT": -1.2}.items():
        base[PIDX[pid]] = v
    stage = np.zeros((5, P))
    prefs = {
        "student": {"CARD-CLASSIC": 1.2, "SAV-ACCT": 0.5, "INS-TRAVEL": 0.8, "LOAN-PERSONAL": 0.4,
                    "MORTGAGE": -2.0, "PENSION-PLAN": -1.0, "INS-LIFE": -1.0},
        "young_professional": {"CARD-GOLD": 0.8, "LOAN-CAR": 1.0, "FUND-EQUITY": 0.6,
                               "INS-TRAVEL": 0.7, "MORTGAGE": 0.5, "LOAN-PERSONAL": 0.5},
        "family": {"MORTGAGE": 1.6, "INS-LIFE": 1.1, "INS-HOME": 0.9, "LOAN-CAR": 0.6,
                   "LOAN-PERSONAL": 0.4, "SAV-ACCT": 0.3},
        "established": {"FUND-BALANCED": 0.9, "PENSION-PLAN": 1.2, "TD-12M": 0.6, "WEALTH-ADVISORY": 0.6,
                        "FUND-BOND": 0.4, "INS-HEALTH": 0.4},
        "retired": {"TD-6M": 1.0, "TD-12M": 1.2, "TD-24M": 0.9, "FUND-BOND": 0.9, "INS-HEALTH": 1.0,
                    "CARD-GOLD": -0.5, "LOAN-CAR": -1.5, "LOAN-PERSONAL": -1.2, "MORTGAGE": -3.0,
                    "PENSION-PLAN": -2.0, "FUND-EQUITY": -0.6},
    }
    for s, d in prefs.items():
        for pid, v in d.items():
            stage[STAGES.index(s), PIDX[pid]] = v
    seg = np.zeros((3, P))
    for pid, (aff, priv) in {"CARD-GOLD": (0.8, 0.6), "CARD-PLAT": (0.0, 1.4), "WEALTH-ADVISORY": (1.0, 1.5),
                             "WEALTH-DISCRETIONARY": (0.0, 2.0), "FUND-EM": (0.6, 1.0),
                             "FUND-EQUITY": (0.4, 0.6)}.items():
        seg[1, PIDX[pid]], seg[2, PIDX[pid]] = aff, priv
    income = np.zeros(P)
    for pid, v in {"WEALTH-ADVISORY": 0.6, "WEALTH-DISCRETIONARY": 0.7, "CARD-PLAT": 0.5, "CARD-GOLD": 0.3,
                   "FUND-EQUITY": 0.3, "FUND-BALANCED": 0.25, "FUND-EM": 0.3, "MORTGAGE": 0.2,
                   "LOAN-PERSONAL": -0.25, "TD-24M": 0.15}.items():
        income[PIDX[pid]] = v
    co = np.zeros((P, P))
    for (a, b), v in {
        ("MORTGAGE", "INS-HOME"): 1.8, ("MORTGAGE", "INS-LIFE"): 1.4, ("CARD-GOLD", "INS-TRAVEL"): 1.1,
        ("CARD-PLAT", "INS-TRAVEL"): 1.1, ("FUND-BOND", "FUND-BALANCED"): 0.9,
        ("FUND-BALANCED", "FUND-EQUITY"): 0.9, ("FUND-EQUITY", "FUND-EM"): 1.0,
        ("FUND-EQUITY", "WEALTH-ADVISORY"): 0.8, ("WEALTH-ADVISORY", "WEALTH-DISCRETIONARY"): 1.2,
        ("TD-6M", "TD-12M"): 0.9, ("TD-12M", "TD-24M"): 0.7, ("SAV-ACCT", "TD-12M"): 0.6,
        ("CARD-CLASSIC", "CARD-GOLD"): 0.9, ("CARD-GOLD", "CARD-PLAT"): 0.9, ("CUR-ACCT", "CARD-CLASSIC"): 0.7,
        ("LOAN-CAR", "INS-LIFE"): 0.4, ("INS-LIFE", "INS-HEALTH"): 0.6, ("PENSION-PLAN", "FUND-BALANCED"): 0.5,
    }.items():
        co[PIDX[a], PIDX[b]] = v
    return base, stage, seg, income, co


_BASE, _STAGE_AFF, _SEG_AFF, _INC_AFF, _CO = _affinities()
TASTE_DIM = 4
_TASTE_V = np.random.default_rng(20240601).normal(0, 1, (P, TASTE_DIM)) / np.sqrt(TASTE_DIM)


def day_number(d: date) -> int:
    return (d - _EPOCH).days


# -------------------------------------------------------------------------------------------------
# Helpers


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _dates(days: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(days.astype("int32"), pa.date32(), mask=mask)


def _ts(seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(seconds.astype("int64") * 1_000_000, pa.timestamp("us"), mask=mask)


def _choice(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw from an [n, k] matrix of (unnormalised) probabilities."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _seq_within(groups: np.ndarray) -> np.ndarray:
    """0,1,2.. numbering of rows within runs of equal ``groups`` (which must be sorted)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    counts = np.diff(np.r_[starts, n])
    return np.arange(n) - np.repeat(starts, counts)


def _table(name: str, cols: dict[str, pa.Array]) -> pa.Table:
    return pa.table(cols, schema=schema.table(name).arrow_schema)


# -------------------------------------------------------------------------------------------------
# One chunk of customers


def _chunk(seed: int, chunk: int, start: int, n: int, as_of: int, n_rm: int) -> dict[str, pa.Table]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk]))
    A = as_of
    end_s = A * _DAY_S  # history ends before the as_of day starts
    cust_no = np.arange(start, start + n)
    cid = _ids("C", cust_no, 8)

    # --- customers -----------------------------------------------------------------------------
    age = 18 + 72 * rng.beta(2.0, 2.6, n)
    stage = np.digitize(age, [26, 36, 51, 66])
    inc_score = np.array([-0.8, 0.0, 0.5, 0.7, -0.2])[stage] + rng.normal(0, 1, n)
    income = np.digitize(inc_score, [-1.0, -0.2, 0.6, 1.4])  # 0..4
    seg_score = income + rng.normal(0, 0.8, n)
    segment = np.digitize(seg_score, [3.0, 4.6])  # 0 mass, 1 affluent, 2 private
    risk = np.clip(np.rint(3.1 - 0.03 * (age - 40) + 0.35 * segment + rng.normal(0, 0.9, n)), 1, 5).astype(int)
    birth = A - (age * 365.25).astype(int)
    tenure_days = np.minimum((age - 18) * 365.25, rng.exponential(8 * 365, n)).astype(int) + 1
    new_client = rng.random(n) < 0.05
    tenure_days[new_client] = rng.integers(5, 120, new_client.sum())
    onboarded = A - tenure_days
    assessed = A - rng.exponential(300, n).astype(int) - 1
    assessed = np.maximum(assessed, onboarded)
    never_assessed = rng.random(n) < 0.02
    vulnerable = rng.random(n) < (0.02 + 0.10 * (age > 75))
    rm = rng.integers(0, n_rm, n)
    dig = _sigmoid(2.0 - 0.07 * (age - 35) + rng.normal(0, 1, n))  # digital affinity
    dissat = rng.normal(0, 1, n)
    engage = rng.normal(0, 1, n)
    taste = rng.normal(0, 0.9, (n, TASTE_DIM))
    attention = np.exp(rng.normal(0, 0.5, n))
    neglected = rng.random(n) < 0.22
    attention[neglected] = 0.03

    past_churn = (rng.random(n) < 0.04) & (tenure_days > 400)
    end_day = np.where(past_churn, A - rng.integers(30, 330, n), A)  # last day of the relationship

    customers = _table("customers", {
        "customer_id": cid,
        "birth_date": _dates(birth),
        "segment": pa.array(np.array(schema.SEGMENTS)[segment]),
        "income_band": pa.array(np.array(schema.INCOME_BANDS)[income]),
        "risk_tolerance": pa.array(risk, pa.int64()),
        "risk_assessed_at": _dates(assessed, mask=never_assessed),
        "onboarded_at": _dates(onboarded),
        "rm_id": _ids("RM", rm, 4),
        "vulnerable": pa.array(vulnerable),
    })

    # --- product acquisition process -----------------------------------------------------------
    static = (_BASE[None, :] + _STAGE_AFF[stage] + _SEG_AFF[segment] + np.outer(income, _INC_AFF)
              - 0.6 * np.maximum(0, _RISK[None, :] - risk[:, None]) * np.isin(_CAT, ["fund", "wealth"])[None, :]
              + taste @ _TASTE_V.T)
    static = np.where(_SEG_OK[segment], static, -np.inf)
    held = np.zeros((n, P), bool)
    h_cust, h_prod, h_open = [], [], []

    def acquire(who: np.ndarray, when: np.ndarray) -> np.ndarray:
        """Each customer in ``who`` opens one product at day ``when``; returns the products (-1: none)."""
        age_then = (when - birth[who]) / 365.25
        logits = static[who] + (held[who].astype(float) @ _CO)
        logits = np.where(held[who] | (age_then[:, None] < _MIN_AGE[None, :]), -np.inf, logits)
        g = logits + rng.gumbel(size=logits.shape)
        prod = np.argmax(g, axis=1)
        ok = np.isfinite(g[np.arange(len(who)), prod])
        prod = np.where(ok, prod, -1)
        held[who[ok], prod[ok]] = True
        return prod

    first = np.where(rng.random(n) < 0.96, PIDX["CUR-ACCT"], PIDX["SAV-ACCT"])
    held[np.arange(n), first] = True
    h_cust.append(np.arange(n)), h_prod.append(first), h_open.append(onboarded.copy())

    rate = 0.22 * np.exp(0.2 * income + 0.25 * segment + 0.3 * engage)  # acquisitions per year
    active_years = (end_day - onboarded) / 365.25
    k = np.minimum(rng.poisson(rate * active_years), 10)
    times = np.sort(np.where(np.arange(10)[None, :] < k[:, None],
                             onboarded[:, None] + rng.random((n, 10)) * (end_day - onboarded)[:, None],
                             np.inf), axis=1)
    for j in range(10):
        who = np.flatnonzero(k > j)
        if len(who) == 0:
            break
        when = times[who, j].astype(int)
        prod = acquire(who, when)
        ok = prod >= 0
        h_cust.append(who[ok]), h_prod.append(prod[ok]), h_open.append(when[ok])

    # Term deposits roll over at maturity half of the time: a new holding of the same product.
    td = np.isin(_CAT[np.concatenate(h_prod)], ["term_deposit"])
    r_c, r_p, r_o = (np.concatenate(x)[td] for x in (h_cust, h_prod, h_open))
    for _ in range(12):
        r_o = r_o + (_TERM[r_p] * 30.44).astype(int)
        roll = (r_o < end_day[r_c]) & (rng.random(len(r_c)) < 0.5)
        r_c, r_p, r_o = r_c[roll], r_p[roll], r_o[roll]
        if len(r_c) == 0:
            break
        h_cust.append(r_c), h_prod.append(r_p), h_open.append(r_o)
    hc, hp, ho = (np.concatenate(x) for x in (h_cust, h_prod, h_open))
    # Same customer/product/day twice cannot happen (a product is acquired once), keys stay unique.
    order = np.lexsort((ho, hc))
    hc, hp, ho = hc[order], hp[order], ho[order]

    term = _TERM[hp]
    maturity = np.where(term > 0, ho + (term * 30.44).astype(int), -1)
    close_rate = np.select([_CAT[hp] == "deposit", _CAT[hp] == "card", _CAT[hp] == "insurance"],
                           [0.01, 0.05, 0.04], 0.03)
    closed = ho + (rng.exponential(1.0, len(hc)) / close_rate * 365).astype(int)
    closed = np.where(term > 0, np.minimum(closed, maturity), closed)
    churn_end = end_day[hc]
    is_past_churn = past_churn[hc]
    closed = np.where(is_past_churn, np.minimum(closed, churn_end), closed)
    is_closed = closed < A
    closed = np.where(is_closed, np.maximum(closed, ho), closed)

    # Open state at as_of, used by churn hazard and the future window.
    open_now = ~is_closed
    held_open = np.zeros((n, P), bool)
    held_open[hc[open_now], hp[open_now]] = True
    n_open = held_open.sum(axis=1)

    # --- complaints ----------------------------------------------------------------------------
    win_start = np.maximum(end_day - HISTORY_DAYS, onboarded)
    win_len = np.maximum(end_day - win_start, 1)
    nk = np.minimum(rng.poisson(0.13 * np.exp(0.9 * dissat) * win_len / 365), 20)
    kc = np.repeat(np.arange(n), nk)
    k_open_s = (win_start[kc] * _DAY_S + rng.random(len(kc)) * win_len[kc] * _DAY_S).astype(np.int64)
    sev = _choice(rng, np.tile([0.45, 0.40, 0.15], (len(kc), 1)))
    k_res_s = k_open_s + (rng.exponential(1, len(kc)) * np.array([5, 12, 25])[sev] * _DAY_S).astype(np.int64)
    k_open_state = (k_res_s >= end_s) & ~past_churn[kc]
    k_res_s = np.where(past_churn[kc], np.minimum(k_res_s, end_day[kc] * _DAY_S - 1), k_res_s)
    kcat = _choice(rng, np.tile([0.25, 0.25, 0.15, 0.15, 0.05, 0.1, 0.05], (len(kc), 1)))
    # Product complaints name a product the customer holds (a random one of theirs).
    kprod = np.full(len(kc), -1)
    wants = np.isin(kcat, [0, 2])
    if wants.any():
        pick = rng.random((wants.sum(), P)) * held[kc[wants]]
        kprod[wants] = np.where(pick.max(axis=1) > 0, pick.argmax(axis=1), -1)
    ko = np.lexsort((k_open_s, kc))
    kc, k_open_s, k_res_s, k_open_state, sev, kcat, kprod = (
        x[ko] for x in (kc, k_open_s, k_res_s, k_open_state, sev, kcat, kprod))
    open_complaint = np.zeros(n, bool)
    open_complaint[kc[k_open_state]] = True
    recent_complaint = np.zeros(n, bool)
    recent_complaint[kc[k_open_s > (A - 90) * _DAY_S]] = True
    complaints = _table("complaints", {
        "complaint_id": _ids("K", cust_no[kc] * 100 + _seq_within(kc), 10),
        "customer_id": cid.take(pa.array(kc)),
        "opened_at": _ts(k_open_s),
        "resolved_at": _ts(k_res_s, mask=k_open_state),
        "severity": pa.array(np.array(schema.COMPLAINT_SEVERITIES)[sev]),
        "category": pa.array(np.array(schema.COMPLAINT_CATEGORIES)[kcat]),
        "product_id": pa.array(np.array([p.product_id for p in CATALOG] + [""])[kprod], mask=kprod < 0),
    })

    # --- outbound contact (silence) and churn hazard --------------------------------------------
    out_rate = np.array([0.35, 0.9, 2.0])[segment] * attention  # outbound contacts per month
    n_out = rng.poisson(out_rate * win_len / 30.44)
    # Days since the last outbound contact, from the same draws used for the interactions below.
    out_c = np.repeat(np.arange(n), n_out)
    out_s = (win_start[out_c] * _DAY_S + rng.random(len(out_c)) * win_len[out_c] * _DAY_S).astype(np.int64)
    last_out = np.full(n, -1 << 40, np.int64)
    np.maximum.at(last_out, out_c, out_s)
    silent = (end_s - last_out) > 120 * _DAY_S

    active = ~past_churn
    hazard = (-3.8 + 0.75 * dissat + 1.0 * open_complaint + 0.5 * recent_complaint + 0.8 * silent
              - 0.2 * np.minimum(n_open, 6) + 0.6 * (tenure_days < 365) + 0.3 * (segment == 0))
    churn_future = active & (rng.random(n) < _sigmoid(hazard))
    churn_day = A + rng.integers(0, TRUTH_DAYS, n)
    # Most future churners drain their deposits and sour in the last 60 days; a few others do too.
    declining = (churn_future & (rng.random(n) < 0.75)) | (active & ~churn_future & (rng.random(n) < 0.03))

    # --- future window (truth): openings and churn ---------------------------------------------
    f_rate = rate * np.exp(0.3 * (n_open < 3)) * TRUTH_DAYS / 365.25 * 1.6
    fk = np.where(active & ~churn_future, np.minimum(rng.poisson(f_rate), 3), 0)
    f_c, f_p, f_d = [], [], []
    for j in range(3):
        who = np.flatnonzero(fk > j)
        if len(who) == 0:
            break
        when = A + rng.integers(0, TRUTH_DAYS, len(who))
        prod = acquire(who, when)
        ok = prod >= 0
        f_c.append(who[ok]), f_p.append(prod[ok]), f_d.append(when[ok])
    f_c, f_p, f_d = (np.concatenate(x) if x else np.zeros(0, int) for x in (f_c, f_p, f_d))
    truth_open = pa.table({
        "customer_id": cid.take(pa.array(f_c, pa.int64())),
        "product_id": pa.array(np.array([p.product_id for p in CATALOG])[f_p] if len(f_p) else [], pa.string()),
        "opened_at": _dates(f_d),
    })
    act_idx = np.flatnonzero(active)
    truth_churn = pa.table({
        "customer_id": cid.take(pa.array(act_idx)),
        "churned": pa.array(churn_future[act_idx]),
        "churn_date": _dates(churn_day[act_idx], mask=~churn_future[act_idx]),
    })

    # --- interactions --------------------------------------------------------------------------
    in_rate = 0.7 * np.exp(0.35 * engage)
    n_in = rng.poisson(in_rate * win_len / 30.44)
    in_c = np.repeat(np.arange(n), n_in)
    in_s = (win_start[in_c] * _DAY_S + rng.random(len(in_c)) * win_len[in_c] * _DAY_S).astype(np.int64)
    # Pre-purchase enquiries about a product, 1-40 days before opening it (history and future alike).
    recent_acq = (ho >= A - HISTORY_DAYS) & (ho > onboarded[hc])
    e_c = np.r_[hc[recent_acq], f_c]
    e_p = np.r_[hp[recent_acq], f_p]
    e_d = np.r_[ho[recent_acq], f_d]
    e_s = ((e_d - rng.integers(1, 41, len(e_d))) * _DAY_S + rng.integers(8 * 3600, 19 * 3600, len(e_d)))
    keep = (rng.random(len(e_c)) < 0.5) & (e_s < np.minimum(end_day[e_c], A) * _DAY_S) & (e_s > win_start[e_c] * _DAY_S)
    e_c, e_p, e_s = e_c[keep], e_p[keep], e_s[keep]

    ic = np.r_[in_c, out_c, kc, e_c]
    its = np.r_[in_s, out_s, k_open_s, e_s]
    kind_src = np.r_[np.zeros(len(in_c), int), np.ones(len(out_c), int), np.full(len(kc), 2), np.full(len(e_c), 3)]
    m = len(ic)
    direction = np.where(kind_src == 1, 1, 0)
    ch_in = np.column_stack([0.35 * (1 - dig[ic]) + 0.05, 0.25 * (1 - dig[ic]) + 0.1, np.full(m, 0.12),
                             np.full(m, 0.02), 0.5 * dig[ic], 0.15 * dig[ic]])
    ch_out = np.tile([0.06, 0.45, 0.2, 0.14, 0.1, 0.05], (m, 1))
    channel = _choice(rng, np.where((direction == 1)[:, None], ch_out, ch_in))
    kinds = np.array(schema.INTERACTION_KINDS)
    kind = np.where(kind_src == 0, _choice(rng, np.tile([0.5, 0.2, 0.0, 0.0, 0.0, 0.3, 0.0], (m, 1))),
           np.where(kind_src == 1, _choice(rng, np.tile([0.0, 0.1, 0.3, 0.35, 0.0, 0.0, 0.25], (m, 1))),
           np.where(kind_src == 2, 4, 1)))
    iprod = np.full(m, -1)
    iprod[kind_src == 3] = e_p
    sales = kind == 2
    iprod[sales] = rng.integers(0, P, sales.sum())
    late = its > (end_day[ic] - 60) * _DAY_S
    sent = (0.3 - 0.3 * dissat[ic] + rng.normal(0, 0.25, m) - 0.45 * (declining[ic] & late)
            - np.where(kind_src == 2, 0.6 + 0.2 * np.r_[np.zeros(len(in_c) + len(out_c)), sev, np.zeros(len(e_c))], 0))
    sent = np.clip(sent, -1, 1).round(3)
    person = np.isin(channel, [0, 1, 5])
    reach = rng.random(m)
    outcome = np.where(direction == 0, np.where((kind_src == 2) & (reach < 0.4), 4, 0),
              np.where(person, np.where(reach < 0.7, 1, 2), np.where(reach < 0.25, 1, 3)))
    no_sent = np.isin(outcome, [2, 3])
    io = np.lexsort((its, ic))
    ic, its, channel, direction, kind, outcome, sent, no_sent, iprod = (
        x[io] for x in (ic, its, channel, direction, kind, outcome, sent, no_sent, iprod))
    interactions = _table("interactions", {
        "interaction_id": _ids("I", cust_no[ic] * 10_000 + _seq_within(ic), 12),
        "customer_id": cid.take(pa.array(ic)),
        "ts": _ts(its),
        "channel": pa.array(np.array(schema.CHANNELS)[channel]),
        "direction": pa.array(np.array(schema.DIRECTIONS)[direction]),
        "kind": pa.array(kinds[kind]),
        "outcome": pa.array(np.array(schema.INTERACTION_OUTCOMES)[outcome]),
        "sentiment": pa.array(sent, pa.float64(), mask=no_sent),
        "product_id": pa.array(np.array([p.product_id for p in CATALOG] + [""])[iprod], mask=iprod < 0),
    })

    # --- balances and transactions -------------------------------------------------------------
    scale = 1500.0 * 2.0 ** income[hc] * np.exp(rng.normal(0, 0.6, len(hc)))
    cat = _CAT[hp]
    start_bal = np.select(
        [cat == "deposit", cat == "term_deposit", cat == "fund", cat == "wealth", cat == "card",
         cat == "loan", cat == "mortgage"],
        [scale * np.where(hp == PIDX["SAV-ACCT"], 4, 1), scale * 8, scale * 6, scale * 40, -scale * 0.4,
         -scale * 6, -scale * 80], 0.0)
    # Transactions on deposit accounts and cards open during the window.
    tx_hold = np.flatnonzero(np.isin(cat, ["deposit", "card"]))
    t_from = np.maximum(ho[tx_hold], win_start[hc[tx_hold]])
    t_to = np.minimum(np.where(is_closed[tx_hold], closed[tx_hold], A), end_day[hc[tx_hold]])
    span = np.maximum(t_to - t_from, 0)
    per_month = np.where(hp[tx_hold] == PIDX["CUR-ACCT"], 2.0, np.where(cat[tx_hold] == "card", 1.5, 0.3))
    nt = np.minimum(rng.poisson(per_month * span / 30.44 * np.exp(0.3 * engage[hc[tx_hold]])), 60)
    th = np.repeat(tx_hold, nt)
    tts = (np.repeat(t_from, nt) * _DAY_S + rng.random(len(th)) * np.repeat(span, nt) * _DAY_S).astype(np.int64)
    sign = np.where(rng.random(len(th)) < 0.5, 1.0, -1.0)
    amount = sign * scale[th] * rng.exponential(0.15, len(th))
    tkind = np.where(sign > 0, 3, np.where(cat[th] == "card", 2, 1))
    # Drain: declining customers move 30-70% of each deposit balance out in the last 60 days.
    dd = tx_hold[(cat[tx_hold] == "deposit") & declining[hc[tx_hold]] & ~is_closed[tx_hold]]
    dn = rng.integers(2, 5, len(dd))
    d_h = np.repeat(dd, dn)
    frac = rng.uniform(0.3, 0.7, len(dd))
    d_amt = -np.repeat(start_bal[dd] * frac / dn, dn)
    d_s = ((A - rng.integers(1, 60, len(d_h))) * _DAY_S - rng.integers(1, 36_000, len(d_h))).astype(np.int64)
    d_s = np.maximum(d_s, ho[d_h] * _DAY_S + 1)
    th = np.r_[th, d_h]
    tts = np.r_[tts, d_s]
    amount = np.r_[amount, d_amt].round(2)
    tkind = np.r_[tkind, np.full(len(d_h), 4)]
    moved = np.zeros(len(hc))
    np.add.at(moved, th, amount)
    balance = np.where(is_closed, 0.0, start_bal + moved).round(2)
    to = np.lexsort((tts, th))
    th, tts, amount, tkind = th[to], tts[to], amount[to], tkind[to]
    tcust = hc[th]
    transactions = _table("transactions", {
        "transaction_id": _ids("T", cust_no[tcust] * 100_000 + _seq_within(tcust), 13),
        "customer_id": cid.take(pa.array(tcust)),
        "product_id": pa.array(np.array([p.product_id for p in CATALOG])[hp[th]] if len(th) else [], pa.string()),
        "ts": _ts(tts),
        "amount": pa.array(amount, pa.float64()),
        "kind": pa.array(np.array(schema.TRANSACTION_KINDS)[tkind] if len(th) else [], pa.string()),
    })

    holdings = _table("holdings", {
        "customer_id": cid.take(pa.array(hc)),
        "product_id": pa.array(np.array([p.product_id for p in CATALOG])[hp]),
        "opened_at": _dates(ho),
        "closed_at": _dates(closed, mask=~is_closed),
        "balance": pa.array(balance),
        "maturity_date": _dates(maturity, mask=maturity < 0),
    })

    # --- consents (a log: latest record wins; no record = not allowed) ----------------------------
    scopes = np.array(schema.CONSENT_SCOPES)
    base_p = np.array([0.97, 0.9, 0.85, 0.7, 0.0, 0.0, 0.8])  # app and wechat depend on digital affinity
    p_allow = np.tile(base_p, (n, 1))
    p_allow[:, 4] = 0.2 + 0.7 * dig
    p_allow[:, 5] = 0.1 + 0.4 * dig
    has_rec = rng.random((n, 7)) < 0.93
    allowed = rng.random((n, 7)) < p_allow
    cc, cs = np.nonzero(has_rec)
    c_allowed = allowed[cc, cs]
    c_at = np.minimum(onboarded[cc] * _DAY_S + rng.integers(0, 3 * _DAY_S, len(cc)), A * _DAY_S - 2).astype(np.int64)
    # Some later changes of mind (mostly opt-outs), strictly after the first record.
    change = rng.random(len(cc)) < 0.06
    ch_at = c_at[change] + (rng.random(change.sum()) * (A * _DAY_S - 1 - c_at[change])).astype(np.int64) + 1
    ok = ch_at < A * _DAY_S
    cc2, cs2 = cc[change][ok], cs[change][ok]
    c2_allowed = np.where(rng.random(ok.sum()) < 0.8, False, ~c_allowed[change][ok])
    all_c, all_s = np.r_[cc, cc2], np.r_[cs, cs2]
    all_at, all_allowed = np.r_[c_at, ch_at[ok]], np.r_[c_allowed, c2_allowed]
    co = np.lexsort((all_at, all_s, all_c))
    consents = _table("consents", {
        "customer_id": cid.take(pa.array(all_c[co])),
        "channel": pa.array(scopes[all_s[co]]),
        "allowed": pa.array(all_allowed[co]),
        "updated_at": _ts(all_at[co]),
    })

    action_outcomes = _action_outcomes(rng, n, cust_no, cid, A, end_day, win_start, hc, hp, ho, held_open,
                                       static, stage)

    return {
        "customers": customers, "holdings": holdings, "transactions": transactions,
        "interactions": interactions, "complaints": complaints, "consents": consents,
        "action_outcomes": action_outcomes,
        "_truth/future_openings": truth_open, "_truth/future_churn": truth_churn,
    }


def _action_outcomes(rng, n, cust_no, cid, A, end_day, win_start, hc, hp, ho, held_open, static, stage) -> pa.Table:
    """Past NBA decisions (last 180 days) and their outcome events."""
    window = 180
    start = np.maximum(end_day - window, win_start)
    span = np.maximum(end_day - start, 0)
    # Accepted offers: a quarter of recent acquisitions followed an offer.
    acc = np.flatnonzero((ho >= A - window + 20) & (rng.random(len(hc)) < 0.25) & (ho > start[hc] + 20))
    a_c, a_p = hc[acc], hp[acc]
    a_dec = ho[acc] - rng.integers(2, 20, len(acc))
    # Other decisions: mostly offers of products the client does not want (declined), care, retention.
    nd = rng.poisson(0.5 * span / window)
    o_c = np.repeat(np.arange(n), nd)
    o_dec = start[o_c] + (rng.random(len(o_c)) * span[o_c]).astype(int)
    fam = _choice(rng, np.tile([0.6, 0.3, 0.1], (len(o_c), 1)))
    # Offer the least wanted eligible products (lowest affinity): these are the declines.
    low = np.where(np.isfinite(static[o_c]) & ~held_open[o_c], -static[o_c] + rng.gumbel(size=(len(o_c), P)), -np.inf)
    o_p = np.where(fam == 0, np.argmax(low, axis=1), -1)
    o_p = np.where((fam == 0) & ~np.isfinite(low.max(axis=1)), -1, o_p)
    fam = np.where((fam == 0) & (o_p < 0), 1, fam)

    dc = np.r_[a_c, o_c]
    dday = np.r_[a_dec, o_dec]
    dfam = np.r_[np.zeros(len(a_c), int), fam]
    dprod = np.r_[a_p, o_p]
    accepted = np.r_[np.ones(len(a_c), bool), np.zeros(len(o_c), bool)]
    care = np.array(["care:birthday", "care:check_in", "care:complaint_follow_up", "care:td_maturity",
                     "care:onboarding_anniversary"])
    retention = np.array(["retention:fee_waiver", "retention:rate_bonus", "retention:rm_visit"])
    pids = np.array([p.product_id for p in CATALOG] + [""])
    action = np.where(dfam == 0, np.char.add("offer:", pids[dprod]),
             np.where(dfam == 1, care[rng.integers(0, len(care), len(dc))],
                      retention[rng.integers(0, len(retention), len(dc))]))
    m = len(dc)
    channel = _choice(rng, np.tile([0.1, 0.45, 0.2, 0.1, 0.1, 0.05], (m, 1)))
    person = np.isin(channel, [0, 1, 5])
    dec_s = dday.astype(np.int64) * _DAY_S + rng.integers(8 * 3600, 18 * 3600, m)
    first_s = dec_s + rng.integers(60, 2 * _DAY_S, m)
    reached = accepted | (rng.random(m) < 0.7)
    first = np.where(person, np.where(reached, 1, 4), 0)  # reached / not_reachable / shown
    resp_p = np.where(dfam == 2, 0.35, 0.0)
    resp = np.where(accepted, 2, np.where(rng.random(m) < resp_p, 2, 3))  # accepted / declined
    second_s = np.where(accepted, np.maximum(np.r_[ho[acc], np.zeros(len(o_c), int)] * _DAY_S + 3600, first_s + 60),
                        first_s + rng.integers(3600, 10 * _DAY_S, m))
    has_second = (first != 4) & (dfam != 1) & (accepted | (rng.random(m) < 0.6))
    limit = end_day[dc] * _DAY_S
    valid = (first_s < limit)
    has_second &= valid & (second_s < limit)

    order = np.lexsort((dec_s, dc))
    dc, dec_s, dfam, dprod, action, channel, first, first_s, resp, second_s, has_second, valid = (
        x[order] for x in (dc, dec_s, dfam, dprod, action, channel, first, first_s, resp, second_s, has_second, valid))
    dnum = cust_no[dc] * 1000 + _seq_within(dc)
    rows = np.r_[np.flatnonzero(valid), np.flatnonzero(has_second)]
    outcome = np.r_[first[valid], resp[has_second]]
    out_s = np.r_[first_s[valid], second_s[has_second]]
    ro = np.lexsort((out_s, rows))
    rows, outcome, out_s = rows[ro], outcome[ro], out_s[ro]
    return _table("action_outcomes", {
        "decision_id": _ids("D", dnum[rows], 11),
        "customer_id": cid.take(pa.array(dc[rows])),
        "action_family": pa.array(np.array(schema.ACTION_FAMILIES)[dfam[rows]]),
        "action_id": pa.array(action[rows]),
        "product_id": pa.array(pids[dprod[rows]], mask=dprod[rows] < 0),
        "channel": pa.array(np.array(schema.CHANNELS)[channel[rows]]),
        "decided_at": _ts(dec_s[rows]),
        "outcome": pa.array(np.array(schema.ACTION_OUTCOME_VALUES)[outcome]),
        "outcome_at": _ts(out_s),
    })


# -------------------------------------------------------------------------------------------------
# Driver


def _static_tables(n_customers: int, seed: int) -> tuple[dict[str, pa.Table], int]:
    n_rm = max(3, -(-n_customers // 300))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1 << 30]))
    n_branch = max(1, n_rm // 6)
    rms = _table("relationship_managers", {
        "rm_id": _ids("RM", np.arange(n_rm), 4),
        "branch": _ids("BR", rng.integers(0, n_branch, n_rm), 3),
        "daily_capacity": pa.array(rng.integers(8, 21, n_rm), pa.int64()),
    })
    products = _table("products", {
        "product_id": [p.product_id for p in CATALOG],
        "name": [p.name for p in CATALOG],
        "category": [p.category for p in CATALOG],
        "risk_level": [p.risk_level for p in CATALOG],
        "annual_margin": [float(p.annual_margin) for p in CATALOG],
        "min_age": [p.min_age for p in CATALOG],
        "eligible_segments": [p.eligible_segments for p in CATALOG],
        "term_months": [p.term_months for p in CATALOG],
    })
    return {"relationship_managers": rms, "products": products}, n_rm


def _write(out: Path, name: str, part: int, data: pa.Table) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, d / f"part-{part:05d}.parquet", compression="zstd")


def _run_chunk(args: tuple) -> int:
    out, seed, chunk, start, n, as_of, n_rm = args
    tables = _chunk(seed, chunk, start, n, as_of, n_rm)
    rows = 0
    for name, data in tables.items():
        _write(out, name, chunk, data)
        rows += data.num_rows
    return rows


def generate(n_customers: int, seed: int, as_of: date, out: Path, *, workers: int | None = None,
             overwrite: bool = False, chunk_size: int = CHUNK,
             on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a synthetic bank of ``n_customers`` to ``out``; return its manifest.

    The folder is built aside and ``out`` is switched to it atomically (:func:`nba.atomic.publish_dir`),
    so ``out`` never holds a partial bank.
    """
    if n_customers < 1:
        raise ConfigError(f"--customers must be at least 1, not {n_customers}")
    if n_customers > 99_999_999:
        raise ConfigError(f"--customers must be at most 99,999,999, not {n_customers}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder {out} is not empty (pass --overwrite to replace it)")
    manifest: dict = {}

    def build(tmp: Path) -> None:
        statics, n_rm = _static_tables(n_customers, seed)
        for name, data in statics.items():
            _write(tmp, name, 0, data)
        A = day_number(as_of)
        jobs = [(tmp, seed, c, s, min(chunk_size, n_customers - s), A, n_rm)
                for c, s in enumerate(range(0, n_customers, chunk_size))]
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        done = 0
        if n_workers == 1:
            for job in jobs:
                _run_chunk(job)
                done += job[4]
                if on_progress:
                    on_progress(done, n_customers)
        else:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                for job, _rows in zip(jobs, pool.map(_run_chunk, jobs)):
                    done += job[4]
                    if on_progress:
                        on_progress(done, n_customers)
        manifest.update({
            "generator_version": GENERATOR_VERSION, "schema_version": schema.SCHEMA_VERSION,
            "customers": n_customers, "seed": seed, "as_of": as_of.isoformat(),
            "history_days": HISTORY_DAYS, "truth_days": TRUTH_DAYS, "chunk_size": chunk_size,
        })
        (tmp / "_manifest.json").write_text(json.dumps(manifest, indent=1))

    publish_dir(out, build, what=f"the synthetic bank at {out}")
    return manifest
