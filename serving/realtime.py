"""Real-time decisions for the scoring API: one loaded model, the online store and the contact ledger.

:class:`DecisionService` answers, for one client or a batch, with the same engine as the daily lists
(:func:`nba.decision.realtime`): features from the online store's live snapshot (its day is the
decision day), the model's calibrated propensities and churn from the registered bundle, and the
client's contact history from the ledger (decisions and outcomes of every source) plus the outcomes in
the table store.

Everything a request needs from a model lives in one immutable :class:`ServingState`. :meth:`reload`
builds a new state beside the current one (bundle, FAISS indexes, catalog, cohort shares, store
outcomes), checks it (a missing file, an unknown schema version, NaN scores: refused, the old state
keeps serving) and switches one reference. A request reads the reference once at its start and
finishes on that state, so a swap never fails a request in flight.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Callable, Sequence

import numpy as np
import orjson
import pandas as pd

from bundle import Bundle, BundleError, registry
from feature_store.ledger import Ledger
from feature_store.materialize import (
    _live_as_of,
    features_at,
    online_behind,
    online_store,
)
from feature_store.online import OnlineStore
from feature_store.outcomes import decision_outcomes
from feature_store.store import TableStore
from nba.catalog import Catalog, load_catalog
from nba.decision import (
    ANSWER_KEYS,
    DAY_RULES,
    RULES,
    DayScores,
    Inputs,
    Request,
    _History,
    answers,
    cohort_shares,
    day_scores,
    document_hash,
    finish,
    narrows_nothing,
    quiet_finish,
    realtime,
)
from nba.errors import NBAError
from nba.home import Home
from nba.schema import CHANNELS

from .daily import merge_outcome_rows
from .retrieval import INDEX_TAG, Snapshot, load_for_version

log = logging.getLogger("nba.api")

HISTORY_DAYS = 120


class ServingError(NBAError):
    """The service cannot load or answer (no model, no online features, a broken bundle)."""


@dataclass(frozen=True)
class ServingState:
    """Everything a request needs, immutable once built; requests hold it while they use it."""

    model_name: str
    model_version: int
    label: str              # "<name>/<version>", recorded with every decision
    build_id: str           # the FAISS index build
    snapshot: Snapshot      # bundle + indexes
    catalog: Catalog
    product_col: np.ndarray  # [n_catalog_products] column in the bundle's products, -1 unknown
    day: date               # decision day: the online store's live as_of
    online_version: str
    store_version: str
    cohort: pd.DataFrame    # cohort_shares of the whole bank on ``day``
    kinds: dict             # column -> "num" | "bool" | "obj" (dtypes of the offline frame)
    rows: dict              # customer_id -> bundle row
    store_history: dict     # customer_id -> HISTORY_COLUMNS tuples from the store's action_outcomes
    meta: dict              # bundle meta (as_of, trained_at, evaluation)
    metrics: dict           # the registered version's run metrics
    day_rows: dict = field(default_factory=dict)  # customer_id -> row of ``scores`` and ``churn``
    scores: DayScores | None = None  # nba.decision.day_scores of every client of the day, [n_clients, ...]
    quiet: DayScores | None = None  # nba.decision.quiet_finish of those scores
    churn: np.ndarray | None = None   # [n_clients] churn probability from the model (NaN: unknown)
    prior: np.ndarray | None = None   # [n_clients] bool: propensities from the bundle's prior (base rates)
    warnings: tuple[str, ...] = ()  # what the operator should know about this state (stale features)
    loaded_at: float = field(default_factory=time.time)

    @property
    def bundle(self) -> Bundle:
        return self.snapshot.bundle

    def key(self) -> tuple:
        return (self.model_version, self.build_id, self.online_version, self.store_version)


class DecisionService:
    """Loads a model alias (``champion``) with its indexes and answers real-time requests.

    ``ledger``: the contact ledger (decisions and outcomes); ``online_url``: the online store
    (``$NBA_ONLINE_STORE`` / SQLite in ``NBA_HOME`` by default); ``clock``: the time decisions are
    recorded at (tz-aware; default the system clock; a replay of a past day passes that day's clock).
    Nothing is loaded until :meth:`reload`.
    """

    def __init__(self, home: Home, ledger: Ledger, *, model: str | int = registry.CHAMPION,
                 online_url: str | None = None, catalog_path=None, device: str | None = None,
                 clock: Callable[[], datetime] | None = None):
        self.home, self.ledger, self.model = home, ledger, model
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.catalog_path, self.device = catalog_path, device
        self.online: OnlineStore = online_store(home, online_url)
        self._state: ServingState | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def state(self) -> ServingState:
        s = self._state
        if s is None:
            raise ServingError("not ready: no model loaded yet" + (f" ({self.last_error})" if self.last_error else ""))
        return s

    @property
    def ready(self) -> bool:
        return self._state is not None

    # -- loading ------------------------------------------------------------------------------------

    def _target(self) -> tuple:
        """What the current state should be: model version + index build, online and store versions."""
        mv = registry.model_version(self.home, self.model)
        live = self.online.live()
        if not live:
            raise ServingError(f"the online store {self.online.url} is empty: run `nba features materialize`")
        store = TableStore(self.home.store).require_current()
        return mv, live, store

    def reload(self, force: bool = False) -> tuple[bool, str]:
        """Load the alias's current model (and the online/store versions) when any changed, or always with
        ``force``. Returns (switched, what happened). A new state that fails to load or to pass its checks
        is refused with ``ServingError``; the current state keeps serving."""
        with self._lock:
            try:
                mv, live, store = self._target()
                key = (int(mv.version), mv.tags.get(INDEX_TAG), str(live.get("version")), store.name)
                if not force and self._state is not None and self._state.key() == key:
                    return False, "unchanged"
                state = self._build(mv, live, store)
            except Exception as e:  # noqa: BLE001 - any failure to load (a truncated file: BadZipFile,
                # a FAISS RuntimeError) is a refusal: the current state keeps serving
                hint = ""
                if not isinstance(e, NBAError):
                    hint = (f" (a damaged download? remove {self.home.root / 'models'}/<name>-v<N>-*/ to fetch it "
                            f"again from MLflow)")
                self.last_error = f"{type(e).__name__}: {e}{hint}"
                raise ServingError(f"reload refused, still serving "
                                   f"{self._state.label if self._state else 'nothing'}: "
                                   f"{type(e).__name__}: {e}{hint}") from None
            old, self._state = self._state, state  # one reference switch
            replaced = old.label if old else None
            self.last_error = None
            # The state is millions of long-lived objects (id maps, cohort tables, history): out of the
            # cyclic GC's generations, so that its full collections (pauses of 100s of ms, seen as p99
            # spikes) do not walk them again and again. Before freezing again, the last frozen objects are
            # released and collected, so an old state caught in a reference cycle is freed, not leaked.
            del old
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            return True, (f"loaded {state.label} (index {state.build_id}, features {state.online_version})"
                          + (f", replacing {replaced}" if replaced else ""))

    def _build(self, mv, live: dict, store) -> ServingState:
        snap = load_for_version(self.home, int(mv.version), mv.name, self.device)
        b = snap.bundle
        _check_bundle(b, int(mv.version))
        day = _live_as_of(live)
        if day is None:
            raise ServingError(f"the online store's live version {live.get('version')!r} names no as_of date")
        products = store.read("products").to_pandas()
        catalog = load_catalog(products, self.catalog_path)
        for w in catalog.warnings:  # an override naming a product the bank does not have: skipped
            log.warning("%s", w)
        feats = features_at(self.home, day, store)
        kinds = {c: ("bool" if t.kind == "b" and str(t) == "bool" else
                     "num" if pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) else "obj")
                 for c, t in feats.dtypes.items()}
        missing = [c for c in live.get("columns", []) if c not in kinds]
        if missing:
            raise ServingError(f"the online store's columns differ from the features at {day}: {missing[:5]}")
        cohort = cohort_shares(feats, catalog)
        hist = _store_history(store, day)
        # The day's part of every client's decision (propensity, value and the policies that read only
        # the features and the model), computed once here; a request adds its contact history and
        # context (nba.decision.finish). The online store's live version holds the same rows.
        rows = {c: i for i, c in enumerate(b.customer_ids)}
        product_col = pd.Index(b.product_ids).get_indexer(catalog.products.index)
        day_ids = feats["customer_id"].astype(str).tolist()
        inputs = _model_inputs(b, rows, product_col, day_ids, f"{mv.name}/{mv.version}",
                               pd.to_numeric(feats["tenure_days"], errors="coerce").to_numpy(),
                               feats["segment"].astype(str).to_numpy())
        parts = [day_scores(feats.iloc[s:s + DAY_CHUNK], catalog, inputs.take(slice(s, s + DAY_CHUNK)), day)
                 for s in range(0, len(feats), DAY_CHUNK)] or [day_scores(feats, catalog, inputs, day)]
        scores = DayScores({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        # ... and the whole decision of a client without contact history, for a request that narrows
        # nothing: most requests take a row of it instead of running finish.
        quiet = [quiet_finish(scores.take(slice(s, s + DAY_CHUNK)), catalog) for s in range(0, len(feats), DAY_CHUNK)]
        same = ("P", "V", "rm_review")  # finish passes these through: the day's own arrays, not copies
        quiet = DayScores({k: scores[k] if k in same else np.concatenate([q[k] for q in quiet])
                           for k in ANSWER_KEYS}) if quiet else None

        behind = online_behind(live, store.name)
        if behind:
            log.warning("%s", behind)
        try:
            run_metrics = _run_metrics(mv)
        except Exception:  # noqa: BLE001 - metrics are informative only
            run_metrics = {}
        return ServingState(
            model_name=mv.name, model_version=int(mv.version), label=f"{mv.name}/{mv.version}",
            build_id=snap.build_id, snapshot=snap, catalog=catalog,
            product_col=product_col, day=day,
            online_version=str(live.get("version")), store_version=store.name, cohort=cohort, kinds=kinds,
            rows=rows, store_history=hist, meta=dict(b.meta), metrics=run_metrics, warnings=(behind,) if behind else (),
            day_rows={c: i for i, c in enumerate(day_ids)}, scores=scores, quiet=quiet, churn=inputs.churn,
            prior=inputs.prior)

    # -- reading clients ----------------------------------------------------------------------------

    def features(self, customer_ids: Sequence[str], state: ServingState, rm_id: str | None = None
                 ) -> tuple[list[str], dict[str, np.ndarray]]:
        """The live online features of the known clients among ``customer_ids`` (in their order), as typed
        column arrays. With ``rm_id``, clients outside that RM's book are left out, exactly as unknown ones."""
        rows = self.rows_of(customer_ids, state, rm_id)
        return rows.ids, (_columns(rows.records, state.kinds) if rows.ids else {})

    def inputs(self, ids: Sequence[str], state: ServingState, cols: dict | None = None) -> Inputs:
        """The model's propensities [n, n_catalog_products] and churn [n] for ``ids`` (NaN: unknown to it);
        ``cols``: their feature columns (tenure and segment decide who gets the prior), if at hand."""
        cols = cols or {}
        return _model_inputs(state.bundle, state.rows, state.product_col, ids, state.label,
                             cols.get("tenure_days"), cols.get("segment"))

    def rows_of(self, customer_ids: Sequence[str], state: ServingState, rm_id: str | None = None) -> OnlineRows:
        """The live online feature rows of the known clients among ``customer_ids`` (in their order) as
        dicts, values typed as :meth:`features` types them (numbers float, NaN for missing; flags bool),
        with their feature hashes (of the stored bytes) and the snapshot's version. With ``rm_id``,
        clients outside that RM's book are left out, exactly as unknown ones."""
        version, columns, docs = self.online.get_docs(list(customer_ids))
        num, flags = _typing_plan(tuple(columns), state.kinds)
        nan = float("nan")
        out = OnlineRows(version)
        for cid, doc in zip(customer_ids, docs):
            if doc is None:
                continue
            vals = orjson.loads(doc)
            for i in num:
                v = vals[i]
                vals[i] = nan if v is None else float(v)
            for i in flags:
                vals[i] = bool(vals[i])
            rec = dict(zip(columns, vals))
            if rm_id is not None and rec.get("rm_id") != rm_id:
                continue
            out.ids.append(cid)
            out.records.append(rec)
            out.hashes.append(document_hash(doc))
        for c in state.kinds.keys() - set(columns):  # a column the online snapshot lacks
            for rec in out.records:
                rec[c] = nan if state.kinds[c] == "num" else False if state.kinds[c] == "bool" else None
        return out

    def history(self, ids: Sequence[str], state: ServingState) -> list[tuple]:
        """HISTORY_COLUMNS rows (tuples) of these clients, each decision once: the ledger's (every source,
        up to now) merged with the store's outcomes as the daily run merges them
        (:func:`serving.daily.merge_outcome_rows`: a decline wins, then the later outcome)."""
        ledger = self.ledger.history(state.day, list(ids), days=HISTORY_DAYS, decision_ids=True, as_rows=True)
        store = [r for c in ids for r in state.store_history.get(c, ())]
        return [r[:-1] for r in merge_outcome_rows(ledger, store)]

    # -- answers ------------------------------------------------------------------------------------

    def next_best_action(self, customer_ids: Sequence[str], request: Request | None = None, top: int = 5,
                         rm_id: str | None = None, record: bool = True, state: ServingState | None = None
                         ) -> tuple[ServingState, list[dict]]:
        """Ranked actions for each known client (:func:`nba.decision.realtime`); unknown clients, and with
        ``rm_id`` clients outside that RM's book, are absent from the answer. Each answer's decision (its
        top action, or the held-out one) is recorded in the ledger as an API decision, which counts as a
        contact once an outcome says it was delivered."""
        state, out, _, _ = self._decide(customer_ids, request, top, rm_id, record, state)
        return state, out

    def score(self, customer_ids: Sequence[str], candidates: Sequence[str] | None = None, *,
              channel: str | None = None, rm_id: str | None = None, record: bool = True,
              state: ServingState | None = None) -> tuple[ServingState, list[dict], list[list[dict]]]:
        """The decision of each known client among ``candidates`` (action ids; None: all) and, per
        candidate, its propensity, priority at the best allowed channel (None when a policy removed it)
        and the rule that removed it. Returns (state, decisions, scores), aligned."""
        req = Request(channel=channel, candidates=candidates)
        state, out, d, ids = self._decide(customer_ids, req, 1, rm_id, record, state)
        scores: list[list[dict]] = []
        if not out or not candidates:
            return state, out, [[] for _ in out]
        cat = state.catalog
        cols = [cat.index(a) for a in dict.fromkeys(candidates)]
        names = RULES + ("request",)
        for i in range(len(out)):
            row = []
            for j in cols:
                pri = float(d["action_priority"][i, j])
                rb = int(d["removed_by"][i, j])
                ok = np.isfinite(pri)
                row.append({"action_id": cat.actions[j].action_id, "propensity": round(float(d["P"][i, j]), 5),
                            "priority": round(pri, 4) if ok else None,
                            "channel": CHANNELS[int(d["action_channel"][i, j])] if ok else None,
                            "removed_by": names[rb - 1] if rb else (None if ok else "min_priority")})
            scores.append(row)
        return state, out, scores

    def _decide(self, customer_ids, request, top, rm_id, record, state):
        state = state or self.state
        rows = self.rows_of(customer_ids, state, rm_id)
        ids = rows.ids
        if not ids:
            return state, [], None, ids
        at = [state.day_rows.get(c) for c in ids]
        if rows.version != state.online_version or None in at:
            # The online store moved on before this state was reloaded: the day's scores are not these
            # rows', so the whole engine runs on them.
            cols = _columns(rows.records, state.kinds)
            out, d = realtime(cols, state.catalog, self.inputs(ids, state, cols), state.day, self.history(ids, state),
                              state.cohort, request, top, detail=True, hashes=rows.hashes)
        else:
            at = np.array(at, dtype=np.int64)
            history = self.history(ids, state)
            if not history and state.quiet is not None and narrows_nothing(request):
                d = state.quiet.take(at)  # = finish with no history and this request (quiet_finish)
            else:
                hist = _History(history, ids, state.catalog, state.day)
                d = finish(state.scores.take(at), state.catalog, hist, request, best=False)
            out = answers(ids, rows.records, rows.hashes, state.churn[at], d, state.catalog, state.cohort,
                          state.day, request, top, prior=state.prior[at])
        now = self.clock()
        rows = []  # the ledger's
        for r in out:
            r["model_version"] = state.label
            r["as_of"] = state.day.isoformat()
            held = r["held_out"]
            r["decision_id"] = None
            if not r["actions"] and held is None:
                continue
            r["decision_id"] = (r["actions"][0] if r["actions"] else held)["decision_id"]
            # Every action shown gets its decision in the ledger (a tool may show the top 3 and the client
            # take the second); none counts as a contact until an outcome says it was delivered.
            for a in r["actions"] or [held]:
                act = state.catalog.actions[state.catalog.index(a["action_id"])]
                rows.append({"decision_id": a["decision_id"], "date": state.day, "customer_id": r["customer_id"],
                             "action_id": act.action_id, "action_family": act.family, "product_id": act.product_id,
                             "channel": a.get("channel") or act.channels[0], "control_group": held is not None,
                             "model_version": state.label})
        if record and rows:
            self.ledger.record_decisions(rows, source="api", decided_at=now, durable=False)
        return state, out, d, ids

    def recommendations(self, customer_id: str, k: int, rm_id: str | None = None,
                        state: ServingState | None = None) -> tuple[ServingState, dict | None]:
        """Top-``k`` products for one client after the policies a product offer must pass (eligibility,
        already held, suitability, open complaint, marketing consent on some channel), by calibrated
        propensity (P(opens within 90 days)). None for an unknown client."""
        state = state or self.state
        rows = self.rows_of([customer_id], state, rm_id)
        if not rows.ids:
            return state, None
        if rows.version == state.online_version and customer_id in state.day_rows:
            d = state.scores.take([state.day_rows[customer_id]])
        else:  # the online store moved on before this state was reloaded
            cols = _columns(rows.records, state.kinds)
            d = day_scores(cols, state.catalog, self.inputs(rows.ids, state, cols), state.day)
        rb = d["removed_by"][0]
        blocking = {RULES.index(r) + 1 for r in DAY_RULES}
        best: dict[str, dict] = {}
        for j, a in enumerate(state.catalog.actions):
            if a.family != "product_offer":
                continue
            ok = rb[j] not in blocking
            p = float(d["P"][0, j])
            cur = best.get(a.product_id)
            if cur is None or (ok and not cur["_ok"]):
                best[a.product_id] = {"_ok": ok, "product_id": a.product_id, "propensity": p,
                                      "removed_by": None if ok else RULES[rb[j] - 1]}
        ranked = sorted((v for v in best.values() if v["_ok"]), key=lambda v: -v["propensity"])[:k]
        names = state.catalog.products["name"] if "name" in state.catalog.products else None
        items = [{"rank": i + 1, "product_id": v["product_id"],
                  "name": str(names[v["product_id"]]) if names is not None else v["product_id"],
                  "propensity": round(v["propensity"], 5)} for i, v in enumerate(ranked)]
        removed = {v["product_id"]: v["removed_by"] for v in best.values() if not v["_ok"]}
        return state, {"customer_id": customer_id, "as_of": state.day.isoformat(), "model_version": state.label,
                       "recommendations": items, "removed": removed}

    def lookalike(self, seeds: Sequence[str], n: int, *, method: str = "nearest", channel: str | None = None,
                  product_id: str | None = None, exclude: Sequence[str] = (), rm_id: str | None = None,
                  state: ServingState | None = None) -> tuple[ServingState, dict]:
        """Up to ``n`` clients most similar to the seeds (cosine of the model's embeddings, FAISS), filtered:
        ``channel`` (consent on that channel and for marketing), ``product_id`` (suitable for its offer:
        eligibility, not held, suitability, no open complaint), ``exclude`` (suppressed ids), ``rm_id``
        (only that book: seeds outside it count as unknown). Fetches 4x, then more, until ``n`` pass."""
        from .retrieval import Retriever
        state = state or self.state
        snap = state.snapshot
        given = list(dict.fromkeys(seeds))
        seeds = given
        if rm_id is not None:  # seeds outside the RM's book count as unknown, exactly as unknown ones
            seeds, _ = self.features(given, state, rm_id)
        outside = set(given) - set(seeds)
        if not seeds:
            return state, {"audience": [], "unknown_seeds": [s for s in given if s in outside], "seeds_used": 0}
        retr = Retriever.of(snap)  # the state's snapshot, without resolving the alias again
        if channel is not None and channel not in CHANNELS:
            raise ServingError(f"unknown channel {channel!r} (one of {', '.join(CHANNELS)})")
        offer = None
        if product_id is not None:
            offers = [j for j, a in enumerate(state.catalog.actions) if a.product_id == product_id]
            if not offers:
                raise ServingError(f"unknown product_id {product_id!r}")
            offer = offers[0]
        want = n
        fetch = n if channel is None and offer is None and rm_id is None else min(4 * n, len(state.rows))
        while True:
            res = retr.lookalike(seeds, fetch, method=method, exclude=exclude)
            aud = res.audience
            keep = np.ones(len(aud), bool)
            if len(aud) and (channel is not None or offer is not None or rm_id is not None):
                rows = self.rows_of(aud["customer_id"].tolist(), state, rm_id)
                ids, recs = rows.ids, rows.records
                ok = pd.Series(False, index=aud["customer_id"])
                if ids:
                    passed = np.ones(len(ids), bool)
                    if channel is not None:
                        passed &= np.array([bool(r.get(f"consent_{channel}")) and bool(r.get("consent_marketing"))
                                            for r in recs], bool)
                    if offer is not None:
                        at = [state.day_rows.get(c) for c in ids]
                        if rows.version == state.online_version and None not in at:
                            d = state.scores.take(np.array(at, dtype=np.int64))
                        else:  # the online store moved on before this state was reloaded
                            cols = _columns(recs, state.kinds)
                            d = day_scores(cols, state.catalog, self.inputs(ids, state, cols), state.day)
                        passed &= ~np.isin(d["removed_by"][:, offer],
                                           [RULES.index(r) + 1 for r in DAY_RULES if r != "consent"])
                    ok.loc[np.asarray(ids, dtype=object)[passed]] = True
                keep = ok.reindex(aud["customer_id"]).fillna(False).to_numpy()
            aud = aud[keep]
            if len(aud) >= want or fetch >= len(state.rows) or len(res.audience) < fetch:
                break
            fetch = min(fetch * 4, len(state.rows))
        aud = aud.head(want).reset_index(drop=True)
        aud["rank"] = np.arange(1, len(aud) + 1)
        return state, {"audience": [{"rank": int(r.rank), "customer_id": r.customer_id,
                                     "similarity": round(float(r.similarity), 6)} for r in aud.itertuples()],
                       "unknown_seeds": [s for s in given if s in outside or s in set(res.unknown_seeds)],
                       "seeds_used": res.seeds_used}

    def close(self) -> None:
        self.online.close()


@dataclass
class OnlineRows:
    """Feature rows read from the online store: the snapshot's ``version``, and per known client (in the
    order asked) its id, its row as a dict and its feature hash."""

    version: str | None
    ids: list = field(default_factory=list)
    records: list = field(default_factory=list)
    hashes: list = field(default_factory=list)


_PLANS: dict = {}


def _typing_plan(columns: tuple, kinds: dict) -> tuple[list[int], list[int]]:
    """Positions of the numeric and of the flag columns in an online document of ``columns``, as
    ``kinds`` types them (kept per column list and kinds: computed once per snapshot, not per request)."""
    key = (columns, id(kinds))
    plan = _PLANS.get(key)
    if plan is None or plan[0] is not kinds:
        if len(_PLANS) > 64:
            _PLANS.clear()
        plan = _PLANS[key] = (kinds, [i for i, c in enumerate(columns) if kinds.get(c, "obj") == "num"],
                              [i for i, c in enumerate(columns) if kinds.get(c, "obj") == "bool"])
    return plan[1], plan[2]


def _columns(records: list[dict], kinds: dict) -> dict[str, np.ndarray]:
    """Rows as typed column arrays (num float64, bool, object), the engine's mapping form."""
    cols = {}
    for c, kind in kinds.items():
        vals = [r.get(c) for r in records]
        cols[c] = (np.array(vals, dtype="float64") if kind == "num" else np.array(vals, dtype=bool) if kind == "bool"
                   else np.array(vals, dtype=object))
    return cols


DAY_CHUNK = 50_000  # clients per day_scores call at load (bounds the [n, actions, channels] temporaries)


def _model_inputs(b: Bundle, rows: dict, product_col: np.ndarray, ids: Sequence[str], label: str,
                  tenure_days: np.ndarray | None = None, segments: np.ndarray | None = None) -> Inputs:
    """The bundle's propensities [n, n_catalog_products] and churn [n] for ``ids`` (NaN: unknown to it).
    ``rows``: customer_id -> bundle row; ``product_col``: each catalog product's bundle column (-1: none);
    ``tenure_days``/``segments`` [n]: the clients' features (new clients get the bundle's prior,
    :meth:`bundle.Bundle.propensity_for`)."""
    at = np.array([rows.get(c, -1) for c in ids], dtype=np.int64)
    known = at >= 0
    pp = np.full((len(ids), len(product_col)), np.nan, np.float32)
    churn = np.full(len(ids), np.nan, np.float32)
    prior = np.zeros(len(ids), bool)
    if known.any():
        full, from_prior = b.propensity_for(at[known], None if tenure_days is None else np.asarray(tenure_days)[known],
                                            None if segments is None else np.asarray(segments, dtype=object)[known])
        pp[known] = np.hstack([full, np.full((len(full), 1), np.nan, np.float32)])[:, product_col]
        prior[known] = from_prior
        if b.churn is not None:
            churn[known] = b.churn[at[known]]
    return Inputs(pp, churn, label, prior)


def _check_bundle(b: Bundle, version: int) -> None:
    """Refuse a bundle whose scores are not finite (NaN or inf weights), or without calibration."""
    for name, arr in (("user embeddings", b.user_emb), ("item embeddings", b.item_emb), ("item bias", b.item_bias)):
        if not np.isfinite(arr).all():
            raise BundleError(f"model version {version}: {name} contain NaN or infinite values")
    sample = np.arange(min(len(b.customer_ids), 256))
    if len(sample) and not np.isfinite(b.propensity_for(sample)[0]).all():
        raise BundleError(f"model version {version}: propensities are not finite")


def _day(v) -> date | None:
    if isinstance(v, datetime):
        return v.date()
    return v if isinstance(v, date) or v is None else pd.Timestamp(v).date()


def _store_history(version, day: date) -> dict[str, list[tuple]]:
    """The store's outcomes of the last HISTORY_DAYS (up to now): client -> (HISTORY_COLUMNS...,
    decision_id) tuples. As in the daily run, an outcome that says the client was not reached makes no
    contact by itself."""
    rows = decision_outcomes(version, day - timedelta(days=HISTORY_DAYS), day + timedelta(days=1))
    rows = rows[rows["outcome"] != "not_reachable"]
    out: dict[str, list[tuple]] = {}
    for r in zip(rows["customer_id"].astype(str), rows["action_id"], rows["action_family"], rows["decided_date"],
                 rows["outcome"], rows["outcome_date"], rows["decision_id"]):
        out.setdefault(r[0], []).append((*r[:6], False, r[6]))
    return out


def _run_metrics(mv) -> dict:
    from mlflow import MlflowClient
    run = MlflowClient().get_run(mv.run_id) if mv.run_id else None
    return {k: float(v) for k, v in (run.data.metrics if run else {}).items()}


__all__ = ["DecisionService", "ServingState", "ServingError"]
