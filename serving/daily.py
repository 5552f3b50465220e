"""``nba daily --date D``: every client scored, the day's actions assigned to RMs, lists written.

Inputs: the live store version (products, RMs and their capacity, action outcomes), the features and
customer state at D (materialized, else computed point-in-time), a registered model version (its
calibrated product propensities and churn) and the contact ledger (:mod:`feature_store.ledger`: the
daily lists' and the scoring API's decisions and their outcomes). Contact caps, one-per-day and cooldowns
count every decision once (matched on ``decision_id``), as known when D began: the ledger's decisions and
outcomes, the store's outcomes, and the daily decision files of homes written before the ledger.

After the day's lists are published, their decisions replace the day's daily rows in the ledger
(:meth:`~feature_store.ledger.Ledger.replace_daily`), where the scoring API sees them at once. The ledger
is ``$NBA_LEDGER_URL``, else ``$NBA_HOME/ledger.sqlite``.

Output, under ``$NBA_HOME/daily/<D>/``: ``decisions.parquet`` (one row per client given an action, the
control group included), ``states.parquet`` (one row per client decided that day, with or without an
action: its customer state and the churn risk the decisions used, :data:`STATE_COLUMNS`; read by
:func:`read_states`), ``rm/<stem>.csv`` (UTF-8 with a byte-order mark, for Excel) and a printable
``rm/<stem>.html`` per RM, and ``manifest.json``, whose ``rm_files`` maps each RM id to its file stem
(:func:`nba.atomic.file_stem`: a slug plus a hash; an id from the data never chooses a path). A run writes aside and then atomically repoints the link ``daily/<D>`` to its
folder, under a per-date lock (:func:`nba.atomic.publish_dir`): a killed run leaves the previous
complete output; the same inputs give the same decisions (idempotent).

With a Ray address (``--ray-address`` or ``$RAY_ADDRESS``) the scoring runs as Ray Data ``map_batches``
over client blocks; the assignment to RMs, which needs each whole book, runs on the driver.
"""

from __future__ import annotations

import html
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from bundle import Bundle, registry
from feature_store.ledger import DAILY, Ledger
from feature_store.materialize import default_as_of, features_at
from feature_store.outcomes import decision_outcomes
from feature_store.sql import redact
from feature_store.store import StoreVersion, TableStore
from nba import features as F
from nba.atomic import Busy, file_stem, lock, lock_path, publish_dir
from nba.bank import bank_config_name, load_bank_config
from nba.catalog import Catalog, load_catalog
from nba.decision import (
    DECISION_COLUMNS,
    HISTORY_COLUMNS,
    Inputs,
    decide,
    empty_history,
)
from nba.errors import NBAError, StoreError
from nba.home import Home

HISTORY_DAYS = 120
RM_COLUMNS = ("customer_id", "action_family", "action_id", "product_id", "channel", "in_person", "rm_review",
              "priority", "propensity", "reasons", "talking_points", "lifecycle_stage", "health_score",
              "complaint_state", "emotional_state", "decision_id")
# states.parquet: one row per client of the day's feature frame (with or without an action). churn_risk is the
# model's churn probability that the decisions used (0-1; NaN where the model does not know the client).
STATES_FILE = "states.parquet"
# Sorted by customer_id in row groups of this many rows, so that a one-client read (the client page's state
# history, over every day's file) skips all row groups but one by their min/max statistics.
STATES_ROW_GROUP = 8192
STATE_COLUMNS = ("customer_id", "rm_id", "health_score", "lifecycle_stage", "complaint_state", "emotional_state",
                 "churn_risk")


class DailyError(NBAError):
    """The daily run cannot proceed (no model, no features, a run in progress for the date)."""


@dataclass
class DailyResult:
    day: date
    path: Path
    decisions: pd.DataFrame
    seconds: dict = field(default_factory=dict)
    model_version: int = 0

    def summary(self) -> dict:
        d = self.decisions
        listed = d[~d.control_group]
        return {"date": str(self.day), "decisions": len(d), "control_group": int(d.control_group.sum()),
                "in_person": int(listed.in_person.sum()), "digital": int((~listed.in_person).sum()),
                "by_family": listed.action_family.value_counts().to_dict(), "rms": int(listed.rm_id.nunique()),
                "model_version": self.model_version, "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def history(home: Home, version: StoreVersion, day: date, *, ledger: Ledger | None = None) -> pd.DataFrame:
    """Decisions of the last HISTORY_DAYS before ``day`` that count towards caps and cooldowns
    (:data:`nba.decision.HISTORY_COLUMNS`), as known when ``day`` began (a re-run of the day decides as it
    did then, and never sees its own list). Each decision once, from:

    - the ledger (``ledger``, else the home's): the daily lists and the API decisions that count
      (:meth:`~feature_store.ledger.Ledger.history`);
    - the store's outcomes (:func:`~feature_store.outcomes.decision_outcomes`), for outcomes recorded
      outside the ledger. One rule with the ledger: an outcome that says the client was not reached makes
      no contact by itself;
    - the daily decision files of homes written before the ledger.

    Where the ledger and the store both hold a decision, a decline wins, then the later outcome.
    """
    start = day - timedelta(days=HISTORY_DAYS)
    # Point in time: outcomes known before the day (a re-run of the day decides as it did then).
    rows = decision_outcomes(version, start, day, known_before=day)
    rows = rows[rows["outcome"] != "not_reachable"]
    store = pd.DataFrame({
        "customer_id": rows["customer_id"], "action_id": rows["action_id"], "action_family": rows["action_family"],
        "decided": rows["decided_date"], "outcome": rows["outcome"], "outcome_date": rows["outcome_date"],
        "control_group": False, "decision_id": rows["decision_id"]})
    led = ledger or Ledger.open(home)
    try:
        mine = led.history(day, known_before=day, days=HISTORY_DAYS, exclude_source_on_day=DAILY, decision_ids=True)
    finally:
        if ledger is None:
            led.close()
    frames = [_merge_outcomes(mine, store)]
    seen = set(frames[0]["decision_id"])
    for d in range(1, HISTORY_DAYS + 1):
        past = day - timedelta(days=d)
        f = home.daily / past.isoformat() / "decisions.parquet"
        if f.exists():
            p = pd.read_parquet(f, columns=["decision_id", "customer_id", "action_id", "action_family", "control_group"])
            p = p[~p["decision_id"].isin(seen)]
            frames.append(pd.DataFrame({"customer_id": p["customer_id"], "action_id": p["action_id"],
                                        "action_family": p["action_family"], "decided": past, "outcome": None,
                                        "outcome_date": None, "control_group": p["control_group"]}))
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_history()
    return pd.concat(frames, ignore_index=True)[list(HISTORY_COLUMNS)]


def merge_outcome_rows(ledger: list[tuple], store: list[tuple]) -> list[tuple]:
    """:func:`_merge_outcomes` for a few clients' rows as tuples (HISTORY_COLUMNS..., decision_id): one
    row per decision, the ledger's decision (day, control group) with the deciding outcome of either (a
    decline wins, then the later outcome date, then the ledger's). The real-time API's path."""
    if not store:
        return list(ledger)
    best: dict = {}
    for rank, rows in ((0, store), (1, ledger)):
        for r in rows:
            key = (r[4] == "declined", r[5] is not None, r[5] or date.min, rank)
            cur = best.get(r[-1])
            if cur is None or key >= cur[0]:
                best[r[-1]] = (key, r)
    mine = {r[-1]: r for r in ledger}
    out = []
    for did, (_, r) in best.items():
        m = mine.get(did)
        out.append(r if m is None else (r[0], r[1], r[2], m[3], r[4], r[5], m[6], did))
    return out


def _merge_outcomes(ledger: pd.DataFrame, store: pd.DataFrame) -> pd.DataFrame:
    """One row per decision_id of the ledger's and the store's rows: the ledger's decision (day, control
    group) with the deciding outcome of either (a decline wins, then the later date, then the ledger's)."""
    if not len(store) or not len(ledger):
        return ledger if len(ledger) else store
    both = pd.concat([ledger.assign(_rank=1), store.assign(_rank=0)], ignore_index=True)
    both["_declined"] = both["outcome"].eq("declined")
    both["_when"] = pd.to_datetime(both["outcome_date"])
    out = (both.sort_values(["_declined", "_when", "_rank"], na_position="first", kind="stable")
           .drop_duplicates("decision_id", keep="last").reset_index(drop=True))
    mine = ledger.set_index("decision_id")
    known = out["decision_id"].isin(mine.index)
    for c in ("decided", "control_group"):
        out.loc[known, c] = out.loc[known, "decision_id"].map(mine[c]).to_numpy()
    out["control_group"] = out["control_group"].astype(bool)
    return out.drop(columns=["_rank", "_declined", "_when"])


def model_inputs(bundle: Bundle, feats: pd.DataFrame, catalog: Catalog, version_label: str) -> Inputs:
    """Product propensities and churn for the feature rows (NaN for clients the model does not know)."""
    rows = bundle.rows_of(feats["customer_id"].astype(str).tolist())
    known = rows >= 0
    pp = np.full((len(feats), len(catalog.products)), np.nan, np.float32)
    prior = np.zeros(len(feats), bool)
    if known.any():
        # Catalog products the model does not know (col -1) read the appended NaN column.
        col = pd.Index(bundle.product_ids).get_indexer(catalog.products.index)
        tenure = pd.to_numeric(feats["tenure_days"], errors="coerce").to_numpy() if "tenure_days" in feats else None
        segs = feats["segment"].astype(str).to_numpy() if "segment" in feats else None
        full, from_prior = bundle.propensity_for(rows[known], None if tenure is None else tenure[known],
                                                 None if segs is None else segs[known])
        pp[known] = np.hstack([full, np.full((len(full), 1), np.nan, np.float32)])[:, col]
        prior[known] = from_prior
    churn = np.full(len(feats), np.nan, np.float32)
    if bundle.churn is not None:
        churn[known] = bundle.churn[rows[known]]
    return Inputs(pp, churn, version_label, prior)


def states_frame(feats: pd.DataFrame, churn: np.ndarray) -> pd.DataFrame:
    """The day's customer states (:data:`STATE_COLUMNS`): one row per feature row, ``churn`` aligned with
    ``feats`` (:attr:`nba.decision.Inputs.churn`)."""
    out = feats[list(STATE_COLUMNS[:-1])].reset_index(drop=True).copy()
    out["health_score"] = pd.to_numeric(out["health_score"], errors="coerce").astype("float64")
    out["churn_risk"] = np.asarray(churn, dtype="float64")
    return out


def _options_with_ray(feats, catalog, inputs, day, hist, address: str) -> pd.DataFrame:
    """Each client's best options (:func:`nba.decision.options`), computed over Ray Data blocks.

    The blocks do the per-client work; the driver then runs the control draw and the capacity
    assignment over whole books, so the decisions equal the local path's.
    """
    import ray

    from nba import decision as dmod
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False, configure_logging=False)
    frame = feats.reset_index(drop=True).copy()
    frame["_row"] = np.arange(len(frame))
    # The shared inputs go to the object store once; each block reads them from there (a closure that
    # captured them would ship them with every task).
    ctx_ref = ray.put({"catalog": catalog, "pp": inputs.product_propensity, "churn": inputs.churn,
                       "hist": hist, "day": day})

    def block(batch: pd.DataFrame) -> pd.DataFrame:
        ctx = ray.get(ctx_ref)
        rows = batch["_row"].to_numpy()
        f = batch.drop(columns="_row").reset_index(drop=True)
        h = dmod._History(ctx["hist"], pd.Index(f["customer_id"].astype(str)), ctx["catalog"], ctx["day"])
        out = dmod.options(f, ctx["catalog"], dmod.Inputs(ctx["pp"][rows], ctx["churn"][rows]), h, ctx["day"])
        out["_row"] = rows
        return out

    blocks = max(2, -(-len(frame) // 100_000))
    res = (ray.data.from_pandas(frame).repartition(blocks)
           .map_batches(block, batch_format="pandas", batch_size=None).to_pandas())
    return res.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def run_daily(home: Home, day: date, *, model: str | int = registry.CHAMPION, catalog_path: Path | None = None,
              ray_address: str | None = None, log=lambda m: None, force: bool = False,
              _kill_at: str | None = None) -> DailyResult:
    """Score every client for ``day``, assign actions to RMs and write the day's lists atomically.

    The day's lock is held for the whole run: a second run for the same day fails at once with
    ``DailyError`` instead of doing all its work and then finding the day locked. Data older than
    ``data_freshness`` in configs/bank.yaml gives a warning, or ``DailyError`` unless ``force``. The
    published decisions replace the day's daily rows in the contact ledger (``$NBA_LEDGER_URL``, else the
    home's SQLite file).
    """
    target = home.daily / day.isoformat()
    with ExitStack() as held:
        try:
            held.enter_context(lock(lock_path(target), 0, f"the daily lists of {day}", reentrant=True))
        except Busy:
            raise DailyError(f"another daily run for {day} is in progress (lock {lock_path(target)})") from None
        ledger = held.enter_context(Ledger.open(home))
        return _run_daily(home, day, model, catalog_path, ray_address, log, _kill_at, force, ledger)


def _staleness(version: StoreVersion, day: date, force: bool, log) -> dict:
    """Days from the store's last data to ``day``; a warning past ``data_freshness.warn_days`` and
    ``DailyError`` past ``max_days`` unless ``force`` (configs/bank.yaml). Returns what the day's manifest
    records: ``data_ends``, ``data_age_days``, ``data_warning``, ``forced``."""
    fresh = load_bank_config().data_freshness
    last = default_as_of(version) - timedelta(days=1)  # the last day with data
    age = (day - last).days
    out = {"data_ends": str(last), "data_age_days": max(age, 0), "data_warning": None, "forced": False}
    if age > fresh.max_days:
        if not force:
            raise DailyError(f"the store's data ends {last}, {age} days before {day} (more than "
                             f"data_freshness.max_days {fresh.max_days} in {bank_config_name()}): load newer data, "
                             f"or pass --force to decide on stale data")
        out["forced"] = True
    if age > fresh.warn_days:
        out["data_warning"] = (f"the store's data ends {last}, {age} days before {day}: features such as days "
                               f"since the last contact are counted up to {day} and may be out of date")
        log("warning: " + out["data_warning"])
    return out


#: What a table absent from the bank's export costs the day's lists (see README, "Tables a bank may not have").
ABSENT_NOTES = F.ABSENT_NOTES  # what each absent table costs (nba.features)


def _absent(version, table: str) -> bool:
    try:
        return version.absent(table)
    except Exception:  # noqa: BLE001 - a store written before absent tables were recorded: present
        return False


def _run_daily(home: Home, day: date, model: str | int, catalog_path: Path | None, ray_address: str | None,
               log, _kill_at: str | None, force: bool, ledger: Ledger) -> DailyResult:
    seconds = {}
    t = time.perf_counter()
    version = TableStore(home.store).require_current()
    stale = _staleness(version, day, force, log)
    products = version.read("products").to_pandas()
    catalog = load_catalog(products, catalog_path)
    for w in catalog.warnings:  # an override or variant for a product the bank lacks: skipped
        log("warning: " + w)
    absent = [t for t in ("consents", "interactions", "transactions", "complaints") if _absent(version, t)]
    data_notes = [ABSENT_NOTES[t] for t in absent]
    for note in data_notes:
        log("warning: " + note)
    rms = version.read("relationship_managers").to_pandas()
    capacity = dict(zip(rms["rm_id"].astype(str), rms["daily_capacity"].astype(int)))
    feats = features_at(home, day, version)
    if feats.empty:
        raise DailyError(f"no clients onboarded before {day}")
    mv = registry.model_version(home, model)
    bundle = registry.bundle_of(home, mv)
    label = f"{mv.name}/{mv.version}"
    inputs = model_inputs(bundle, feats, catalog, label)
    hist = history(home, version, day, ledger=ledger)
    seconds["load"] = time.perf_counter() - t
    if bundle.meta.get("as_of") and day < date.fromisoformat(str(bundle.meta["as_of"])):
        log(f"warning: deciding for {day} with model {label}, trained on the graph at {bundle.meta['as_of']}: "
            f"it has seen what happened after {day}")
    log(f"{len(feats):,} clients at {day}; model {label} (as of {bundle.meta.get('as_of')}); "
        f"{len(catalog.actions)} actions; {len(hist):,} decisions in the last {HISTORY_DAYS} days")

    t = time.perf_counter()
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        opts = _options_with_ray(feats.reset_index(drop=True), catalog, inputs, day, hist, address)
        decisions = decide(feats, catalog, inputs, capacity, day, hist, precomputed=opts)
    else:
        decisions = decide(feats, catalog, inputs, capacity, day, hist)
    seconds["decide"] = time.perf_counter() - t

    t = time.perf_counter()
    path = write(home, day, decisions, {"model": label, "store_version": version.name, **stale, "catalog": str(catalog_path or
                 "configs/actions.yaml"), "catalog_warnings": list(catalog.warnings), "absent_tables": absent, "data_notes": data_notes,
                 "clients": len(feats),
                 "ray_address": address, "ledger": redact(ledger.url)},
                 _kill_at=_kill_at, states=states_frame(feats, inputs.churn))
    seconds["write"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        # After the switch: the ledger never holds a list that was not published. A failure here leaves
        # the ledger with the day's previous list; the re-run (idempotent) records this one.
        ledger.replace_daily(day, decisions)
    except sa.exc.SQLAlchemyError as e:
        raise DailyError(f"the lists of {day} are written to {path}, but recording them in the contact ledger "
                         f"{redact(ledger.url)} failed ({type(e).__name__}: {getattr(e, 'orig', e)}); "
                         f"run `nba daily --date {day}` again") from None
    seconds["ledger"] = time.perf_counter() - t
    res = DailyResult(day, path, decisions, seconds, int(mv.version))
    s = res.summary()
    log(f"{s['decisions']:,} decisions ({s['in_person']:,} in person, {s['digital']:,} digital, "
        f"{s['control_group']:,} control) for {s['rms']:,} RMs; by family {s['by_family']}; written to {path}")
    return res


def write(home: Home, day: date, decisions: pd.DataFrame, meta: dict, _kill_at: str | None = None, *,
          states: pd.DataFrame | None = None) -> Path:
    """Write the day's files aside, then switch ``daily/<day>`` to them in one rename (under the day's
    lock); the previous run's files are removed after. ``states`` (:func:`states_frame`), when given, is
    written as ``states.parquet`` in the same switch. Raises ``DailyError`` when another run for the
    same day is writing."""
    table = decisions[list(DECISION_COLUMNS)]
    listed = table[~table["control_group"]]

    def build(run: Path) -> None:
        table.to_parquet(run / "decisions.parquet", index=False)
        if states is not None:
            states[list(STATE_COLUMNS)].sort_values("customer_id", kind="stable").to_parquet(
                run / STATES_FILE, index=False, row_group_size=STATES_ROW_GROUP)
        if _kill_at == "after_parquet":
            os.kill(os.getpid(), 9)
        rm_dir = run / "rm"
        rm_dir.mkdir()
        files = {}
        for rm_id, g in listed.groupby("rm_id", sort=True):
            # An RM id comes from the bank's data: it never chooses a path (slug + hash, mapped in the
            # manifest). The CSV carries a byte-order mark so that Excel reads UTF-8 in any locale.
            stem = files[str(rm_id)] = file_stem(str(rm_id))
            g = g.sort_values(["in_person", "priority"], ascending=[False, False], kind="stable")
            _excel_safe(g[list(RM_COLUMNS)]).to_csv(rm_dir / f"{stem}.csv", index=False, encoding="utf-8-sig")
            (rm_dir / f"{stem}.html").write_text(rm_html(str(rm_id), day, g, meta.get("model", "")), encoding="utf-8")
        (run / "manifest.json").write_text(json.dumps({**meta, "date": str(day), "rows": len(table),
                                                       "listed": len(listed), "rms": int(listed.rm_id.nunique()),
                                                       "rm_files": files,
                                                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                                      indent=2, default=str))
        if _kill_at == "before_switch":
            os.kill(os.getpid(), 9)

    try:
        return publish_dir(home.daily / day.isoformat(), build, what=f"the daily lists of {day}")
    except Busy:  # reached only when write() is called without run_daily's lock
        raise DailyError(f"another daily run for {day} is in progress "
                         f"(lock {lock_path(home.daily / day.isoformat())})") from None


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _excel_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first)
    get a leading apostrophe, as OWASP's CSV-injection guidance says: the RM files are opened in Excel,
    and ids and names come from the bank's data."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
            text = out[c].astype("string")
            risky = text.str.startswith(_FORMULA_START).fillna(False).astype(bool)
            if risky.any():
                out[c] = text.where(~risky, "'" + text)
    return out


def rm_files(home: Home, day: date) -> dict[str, Path]:
    """The printable list of each RM for ``day``: RM id -> path of its HTML page."""
    folder = home.daily / day.isoformat()
    try:
        stems = json.loads((folder / "manifest.json").read_text())["rm_files"]
    except (FileNotFoundError, KeyError):
        raise StoreError(f"no daily lists for {day} under {home.daily} (run `nba daily --date {day}`)") from None
    return {rm_id: folder / "rm" / f"{stem}.html" for rm_id, stem in stems.items()}


def read_day(home: Home, day: date) -> pd.DataFrame:
    f = home.daily / day.isoformat() / "decisions.parquet"
    if not f.exists():
        raise StoreError(f"no daily decisions for {day} under {home.daily} (run `nba daily --date {day}`)")
    return pd.read_parquet(f)


def read_states(home: Home, day: date) -> pd.DataFrame:
    """The customer states the daily run of ``day`` decided on (:data:`STATE_COLUMNS`, one row per client);
    an empty frame with those columns when the day has no states file (no run, or a run before the file
    existed)."""
    f = home.daily / day.isoformat() / STATES_FILE
    if not f.exists():
        types = {"health_score": "float64", "churn_risk": "float64"}
        return pd.DataFrame({c: pd.Series(dtype=types.get(c, object)) for c in STATE_COLUMNS})
    return pd.read_parquet(f, columns=list(STATE_COLUMNS))


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#111}h1{font-size:20px;margin:0}
.meta{color:#555;margin:4px 0 16px}table{border-collapse:collapse;width:100%;font-size:12px}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}th{background:#f2f2f2}
.fam-retention_offer{border-left:4px solid #c0392b}.fam-care_contact{border-left:4px solid #2e86c1}
.fam-product_offer{border-left:4px solid #229954}.review{color:#c0392b;font-weight:600}
ul{margin:0;padding-left:16px}@media print{body{margin:8mm}tr{page-break-inside:avoid}}"""


_COMPLAINT = {"none": "no complaint", "open": "open complaint", "recently_resolved": "complaint recently resolved"}


def rm_html(rm_id: str, day: date, g: pd.DataFrame, model: str) -> str:
    """A printable action list for one RM: in-person actions first, then digital ones for awareness."""
    e = html.escape
    rows = []
    for r in g.itertuples(index=False):
        points = "".join(f"<li>{e(p)}</li>" for p in str(r.talking_points).split(" || ") if p)
        review = '<div class="review">RM review required</div>' if r.rm_review else ""
        rows.append(
            f'<tr class="fam-{e(r.action_family)}"><td>{e(r.customer_id)}</td><td>{e(r.action_id)}{review}</td>'
            f"<td>{e(r.channel)}{' (you)' if r.in_person else ' (campaign)'}</td><td>{r.priority:,.2f}</td>"
            f"<td>{e(str(r.lifecycle_stage))}, health {r.health_score:.0f}, {e(_COMPLAINT.get(r.complaint_state, ''))}, "
            f"{e(str(r.emotional_state))}</td><td><ul>{points}</ul></td><td>{e(str(r.reasons).replace('|', ', '))}</td>"
            f"<td></td></tr>")
    n_ip = int(g["in_person"].sum())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Actions {e(rm_id)} {day}</title>"
            f"<style>{_CSS}</style></head><body><h1>Next best actions for {e(rm_id)}, {day}</h1>"
            f"<div class='meta'>{n_ip} to carry out yourself, {len(g) - n_ip} going out through campaigns "
            f"(for your awareness). Model {e(model)}. Record each outcome: reached, accepted, declined, "
            f"not reachable.</div><table><tr><th>client</th><th>action</th><th>channel</th><th>priority</th>"
            f"<th>state</th><th>talking points</th><th>reasons</th><th>outcome</th></tr>{''.join(rows)}"
            f"</table></body></html>")
