"""The scoring API: FastAPI over the decision service, for campaign systems, front-line tools and RMs.

``create_app()`` builds the app; ``nba serve`` runs it on uvicorn (or on Ray Serve with ``--ray``). At
startup it opens the serving database (contact ledger, API keys, audit log: SQLite in ``NBA_HOME`` or
PostgreSQL by URL), the online store, and loads the model alias (``champion``) with its FAISS indexes;
``/readyz`` answers 503 until that is done. A poller reloads when the alias, the online features or the
store move (every ``reload_poll_seconds``), as does ``POST /v1/admin/reload``.

Every ``/v1`` endpoint needs an ``X-API-Key`` (``nba keys create``): 401 without a valid one, 403 for a
scope that may not call it, 429 with ``Retry-After`` over the key's rate. An ``rm`` key sees only its
RM's clients; any other client answers exactly as an unknown one (404). Each read of a client's data
writes an audit record. Request bodies above ``max_body_bytes`` get 413 before they are parsed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from bundle import registry
from feature_store import sql
from feature_store.ledger import (
    IdempotencyConflict,
    Ledger,
    LedgerError,
    UnknownDecision,
)
from feature_store.sql import WalCheckpointer
from nba.decision import Request as DecisionRequest
from nba.errors import ConfigError, NBAError
from nba.home import Home
from serving.index import RetrievalError
from serving.realtime import DecisionService, ServingError

from . import metrics, schemas
from .security import (
    ADMIN,
    CAMPAIGN,
    RM,
    AuditLog,
    BodySizeLimit,
    KeyStore,
    Principal,
    RateLimiter,
    authenticate,
    install_log_redaction,
    require,
)
from .settings import ServingSettings, load_settings

log = logging.getLogger("nba.api")

CLIENT_READERS = (CAMPAIGN, RM)


class _Server:
    """What the app holds between requests (one per process or Ray Serve replica)."""

    service: DecisionService
    ledger: Ledger
    keys: KeyStore
    audit: AuditLog
    settings: ServingSettings
    stop: threading.Event
    poller: threading.Thread | None = None


def _server(request: Request) -> _Server:
    """The app's server (a plain function: a FastAPI dependency per request costs as much as the key check)."""
    return request.app.state.server


ClientReader = Annotated[Principal, Depends(require(*CLIENT_READERS))]
CampaignOnly = Annotated[Principal, Depends(require(CAMPAIGN))]
Outcomes = Annotated[Principal, Depends(require(CAMPAIGN, RM))]
Admin = Annotated[Principal, Depends(require(ADMIN))]

NOT_FOUND = "unknown customer_id"


def _errors(*codes: int, **described: str) -> dict:
    """OpenAPI ``responses`` of a ``/v1`` route: the errors every one may answer (401, 403, 429, 503), ``codes``
    (400 and 413 for a body) and ``described`` (``e404="unknown customer_id"``), each with the body
    ``{"detail": ...}``."""
    text = {400: "the request body is not UTF-8 JSON", 401: "missing, invalid or revoked API key",
            403: "the key's scope may not call this endpoint", 413: "request body over serving.max_body_bytes",
            429: "over the key's rate limit (the Retry-After header gives the seconds to wait)",
            503: "not ready: no model loaded yet"}
    out = {c: {"model": schemas.Error, "description": text[c]} for c in (401, 403, 429, 503, *codes)}
    out.update({int(k[1:]): {"model": schemas.Error, "description": v} for k, v in described.items()})
    return out


def create_app(home: Home | None = None, settings: ServingSettings | None = None, *,
               model: str | int = registry.CHAMPION, ledger_url: str | None = None, online_url: str | None = None,
               catalog_path=None, poll: bool = True, clock=None, workbench: bool = True) -> FastAPI:
    """The API app. ``home`` defaults to ``$NBA_HOME``, ``settings`` to ``configs/serving.yaml``;
    ``ledger_url`` to ``$NBA_LEDGER_URL`` / SQLite in the home; ``online_url`` to ``$NBA_ONLINE_STORE``.
    ``poll``: reload in the background when the alias or the features move. ``clock``: a callable giving
    the current time (tz-aware; default the system clock): decisions and outcomes are recorded at it.
    ``workbench``: also serve the RM workbench's pages at ``/`` (:mod:`apps.workbench.web`)."""
    home = home or Home.resolve(None)
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nba_log = logging.getLogger("nba")
        if not nba_log.handlers:  # our records get a handler (with the redaction filter), not lastResort
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            nba_log.addHandler(handler)
            nba_log.setLevel(logging.INFO)
        install_log_redaction()
        s = _Server()
        s.settings = settings
        # SQLite: the log is checkpointed by a thread, not inside a request's commit (start it first:
        # it applies to the connections opened after it).
        checkpoints = WalCheckpointer(sql.default_url(home, ledger_url)).start()
        try:
            s.ledger = Ledger.open(home, ledger_url)
            s.keys = KeyStore.open(home, ledger_url)
            s.audit = AuditLog.open(home, ledger_url)
            limiter = RateLimiter(settings.rate_limit, settings.rate_limit_storage)
            app.state.authenticator = authenticate(s.keys, limiter)
            s.service = DecisionService(home, s.ledger, model=model, online_url=online_url,
                                        catalog_path=catalog_path, clock=clock)
        except BaseException:
            checkpoints.stop()
            raise
        s.stop = threading.Event()
        app.state.server = s
        try:
            _reload(s, force=True)
        except ServingError:
            pass  # not ready: /readyz says why, and the poller (or POST /v1/admin/reload) tries again
        if poll and settings.reload_poll_seconds > 0:
            s.poller = threading.Thread(target=_poll, args=(s,), name="nba-reload", daemon=True)
            s.poller.start()
        try:
            yield
        finally:
            s.stop.set()
            if s.poller is not None:
                s.poller.join(timeout=5)
            s.service.close()
            s.ledger.close()
            s.audit.close()
            checkpoints.stop()

    otel = settings.opentelemetry
    app = FastAPI(title="NBA scoring API", version="1", lifespan=lifespan,
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel},
                  description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.MetricsMiddleware)
    _routes(app)
    app.state.record_outcome = record_outcome
    if workbench:
        from apps.workbench.web import install
        install(app, home)

    @app.exception_handler(ServingError)
    async def _not_ready(request: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler sends each bad value back (``input``), which fails to encode for NaN,
        # infinities or lone surrogates (a 500), echoes whatever was sent, and puts client ids into the
        # logs of that failure: the answer names the field and the problem only.
        return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
                                         "type": str(e.get("type", ""))} for e in exc.errors()]},
                            status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The log says where and what kind, not the message (it may hold a client's data); set
        # NBA_LOG_TRACEBACKS=1 to log the traceback as well.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, route,
                  exc_info=exc if os.environ.get("NBA_LOG_TRACEBACKS") == "1" else None)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.exception_handler(NBAError)
    async def _bad_request(request: Request, exc: NBAError) -> JSONResponse:
        # The documented 422 body: a list of problems, each naming its field (``loc``) where the error knows it.
        field = getattr(exc, "field", None)
        return JSONResponse({"detail": [{"loc": ["body", field] if field else ["body"], "msg": str(exc),
                                         "type": "value_error"}]}, status_code=422)

    return app


def _reload(s: _Server, force: bool = False) -> tuple[bool, str]:
    try:
        switched, message = s.service.reload(force=force)
    except ServingError as e:
        metrics.RELOADS.labels("refused").inc()
        log.warning("%s", e)
        raise
    metrics.RELOADS.labels("switched" if switched else "unchanged").inc()
    if switched:
        st = s.service.state
        metrics.MODEL_VERSION.set(st.model_version)
        log.info("%s", message)
    return switched, message


def _poll(s: _Server) -> None:
    while not s.stop.wait(s.settings.reload_poll_seconds):
        try:
            _reload(s)
        except ServingError:
            pass  # logged and counted; the current state keeps serving
        except Exception:  # noqa: BLE001 - the poller must survive a registry hiccup
            log.exception("reload poll failed")


def _json(payload: dict) -> Response:
    """``payload`` as an ``application/json`` response, serialized by orjson without a response model's
    validation (NaN and infinities become null, as pydantic writes them)."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _request_id() -> str:
    return uuid.uuid4().hex


def _candidates(state, ids: list[str] | None) -> list[str] | None:
    """Action ids, with a product id standing for its offers. Raises HTTP 422 naming unknown ids."""
    if ids is None:
        return None
    if not ids:
        return []
    actions = {a.action_id for a in state.catalog.actions}
    by_product: dict[str, list[str]] = {}
    for a in state.catalog.actions:
        if a.product_id:
            by_product.setdefault(a.product_id, []).append(a.action_id)
    out, unknown = [], []
    for i in ids:
        if i in actions:
            out.append(i)
        elif i in by_product:
            out.extend(by_product[i])
        else:
            unknown.append(i)
    if unknown:
        raise HTTPException(422, [{"loc": ["body", "candidates"], "type": "value_error",
                                   "msg": f"unknown action or product id(s): {', '.join(unknown[:10])}"}])
    return out


def _count(decisions: list[dict]) -> None:
    """Decisions by family and channel, policy removals by rule: summed first, one increment per label."""
    removals: dict[str, int] = {}
    answered: dict[tuple[str, str], int] = {}
    for d in decisions:
        for rule, removed in d["policy_trace"].items():
            if rule not in ("passed", "chosen") and removed:
                removals[rule] = removals.get(rule, 0) + len(removed)
        if d["actions"]:
            key = (d["actions"][0]["action_family"], d["actions"][0]["channel"])
        elif d["control_group"]:
            key = (d["held_out"]["action_family"], "control_group")
        else:
            key = ("none", "none")
        answered[key] = answered.get(key, 0) + 1
    for rule, n in removals.items():
        metrics.child(metrics.POLICY_REMOVALS, rule).inc(n)
    for (family, channel), n in answered.items():
        metrics.child(metrics.DECISIONS, family, channel).inc(n)


def _routes(app: FastAPI) -> None:
    @app.api_route("/healthz", methods=["GET", "HEAD"], tags=["operations"], summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Model, indexes and stores are loaded",
             responses={503: {"description": "not ready yet, or the last load failed"}})
    def readyz(request: Request) -> JSONResponse:
        server = _server(request)
        svc = server.service
        if not svc.ready:  # the reason without paths or URLs (this endpoint needs no key); the log has it all
            reason = (svc.last_error or "loading").split(" (tracking ", 1)[0]
            return JSONResponse({"status": "not ready", "detail": reason}, status_code=503)
        st = svc.state
        return JSONResponse({"status": "ready", "model_version": st.label, "index_build": st.build_id,
                             "features_as_of": st.day.isoformat()})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        body, ctype = metrics.exposition()
        return PlainTextResponse(body, media_type=ctype)

    @app.get("/v1/model", tags=["model"], response_model=schemas.ModelInfo, summary="The model being served",
             responses=_errors())
    async def model_info(request: Request, caller: Annotated[Principal, Depends(require(CAMPAIGN, RM, ADMIN))]) -> dict:
        server = _server(request)
        st = server.service.state
        return {"model_name": st.model_name, "model_version": st.model_version, "alias": str(server.service.model),
                "as_of": st.meta.get("as_of"), "trained_at": st.meta.get("created"),
                "features_as_of": st.day.isoformat(), "online_version": st.online_version,
                "store_version": st.store_version, "index_build": st.build_id,
                "loaded_at": datetime.fromtimestamp(st.loaded_at, timezone.utc).isoformat(timespec="seconds"),
                "metrics": st.metrics, "warnings": list(st.warnings)}

    @app.post("/v1/admin/reload", tags=["operations"], response_model=schemas.ReloadResponse,
              summary="Load the alias's current model now",
              responses=_errors(e409="the new model was refused; the old one keeps serving"))
    def admin_reload(request: Request, caller: Admin, force: bool = Query(False, description="reload even if "
                                                                                            "nothing moved")):
        server = _server(request)
        try:
            switched, message = _reload(server, force=force)
        except ServingError as e:
            return JSONResponse({"detail": str(e)}, status_code=409)
        return {"switched": switched, "message": message, "model_version": server.service.state.model_version}

    @app.post("/v1/next-best-action", tags=["decisions"], response_model=schemas.Decision,
              summary="The next best action for one client now", responses=_errors(400, 413, e404=NOT_FOUND))
    async def next_best_action(body: schemas.NextBestActionRequest, request: Request, caller: ClientReader) -> dict:
        server = _server(request)
        svc = server.service
        st = svc.state
        if body.top > server.settings.max_top:
            raise HTTPException(422, [{"loc": ["body", "top"], "type": "less_than_equal",
                                       "msg": f"at most {server.settings.max_top} actions (serving.max_top)"}])
        ctx = body.context or schemas.Context()
        req = DecisionRequest(channel=ctx.channel, candidates=_candidates(st, ctx.candidates),
                              exclude=tuple(_candidates(st, ctx.exclude) or ()))
        st, out = svc.next_best_action([body.customer_id], req, body.top, rm_id=caller.rm_id, state=st)
        if not out:
            raise HTTPException(404, NOT_FOUND)
        server.audit.record_reads(caller, [body.customer_id], "next-best-action", model_version=st.label,
                                  request_id=_request_id())
        _count(out)
        # The answer as JSON bytes: the dict already has the schema's fields and types (a test checks it
        # against schemas.Decision), and validating it again on the way out cost about a tenth of a request.
        return _json({**out[0], "campaign_id": ctx.campaign_id})

    @app.post("/v1/score", tags=["decisions"], response_model=schemas.ScoreResponse,
              summary="Scores and the decision for a batch of clients (campaigns)", responses=_errors(400, 413))
    def score(body: schemas.ScoreRequest, request: Request, caller: ClientReader) -> dict:
        server = _server(request)
        limit = server.settings.max_batch
        if len(body.customer_ids) > limit:
            raise HTTPException(422, [{"loc": ["body", "customer_ids"], "type": "too_long",
                                       "msg": f"at most {limit} clients per call (serving.max_batch); got "
                                              f"{len(body.customer_ids)}"}])
        svc = server.service
        st = svc.state
        cands = _candidates(st, body.candidates)
        ids = list(dict.fromkeys(body.customer_ids))
        st, decisions, scores = svc.score(ids, cands, channel=body.channel, rm_id=caller.rm_id, state=st)
        found = {d["customer_id"] for d in decisions}
        server.audit.record_reads(caller, sorted(found), "score", model_version=st.label, request_id=_request_id())
        _count(decisions)
        return {"as_of": st.day.isoformat(), "model_version": st.label,
                "results": [{"customer_id": d["customer_id"], "decision": d, "scores": s}
                            for d, s in zip(decisions, scores)],
                "unknown": [c for c in ids if c not in found]}

    @app.get("/v1/clients/{customer_id}/recommendations", tags=["decisions"],
             response_model=schemas.RecommendationsResponse, summary="Top-k products after the policies",
             responses=_errors(e404=NOT_FOUND))
    async def recommendations(request: Request, caller: ClientReader,
                        customer_id: Annotated[str, Path(min_length=1, max_length=128)],
                        k: Annotated[int, Query(ge=1, le=100)] = 5) -> dict:
        server = _server(request)
        st, out = server.service.recommendations(customer_id, k, rm_id=caller.rm_id)
        if out is None:
            raise HTTPException(404, NOT_FOUND)
        server.audit.record_reads(caller, [customer_id], "recommendations", model_version=st.label,
                                  request_id=_request_id())
        return out

    @app.post("/v1/audiences/lookalike", tags=["audiences"], response_model=schemas.LookalikeResponse,
              summary="Clients similar to seed clients, filtered", responses=_errors(400, 413))
    def lookalike(body: schemas.LookalikeRequest, request: Request, caller: ClientReader) -> dict:
        server = _server(request)
        s = server.settings
        problems = []
        if len(body.seed_customer_ids) > s.max_seeds:
            problems.append({"loc": ["body", "seed_customer_ids"], "type": "too_long",
                             "msg": f"at most {s.max_seeds} seeds (serving.max_seeds)"})
        if body.size > s.max_audience:
            problems.append({"loc": ["body", "size"], "type": "less_than_equal",
                             "msg": f"at most {s.max_audience} clients (serving.max_audience)"})
        if problems:
            raise HTTPException(422, problems)
        f = body.filters
        st = server.service.state
        if f.product_id is not None and f.product_id not in set(st.catalog.products.index):
            raise HTTPException(422, [{"loc": ["body", "filters", "product_id"], "type": "value_error",
                                       "msg": f"unknown product_id {f.product_id!r}"}])
        try:
            st, out = server.service.lookalike(body.seed_customer_ids, body.size, method=body.method,
                                               channel=f.channel, product_id=f.product_id, exclude=f.exclude,
                                               rm_id=caller.rm_id, state=st)
        except RetrievalError as e:  # method and size are valid here: the seeds are unknown to the model
            raise HTTPException(422, [{"loc": ["body", "seed_customer_ids"], "type": "value_error",
                                       "msg": str(e)}]) from None
        read = [m["customer_id"] for m in out["audience"]]
        server.audit.record_reads(caller, read, "audiences/lookalike", model_version=st.label,
                                  request_id=_request_id())
        return {"model_version": st.label, **out}

    @app.post("/v1/outcomes", tags=["outcomes"], response_model=schemas.OutcomeResponse,
              summary="Record what happened with a decision (idempotent)",
              responses=_errors(400, 413, e404="unknown decision_id",
                                e409="the same Idempotency-Key was used for a different outcome"))
    def outcomes(body: schemas.OutcomeRequest, request: Request, caller: Outcomes,
                 idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                                        pattern=r"^[\x21-\x7e]+$",
                                                        description="unique per outcome; a retry with the "
                                                                    "same key and body is answered from the "
                                                                    "stored outcome")]) -> dict:
        server = _server(request)
        # No note: the same hash as before notes existed (a retry across an upgrade is still a retry).
        canon = json.dumps(body.model_dump(mode="json", exclude={"note"} if body.note is None else None),
                           sort_keys=True, separators=(",", ":"))
        row, replayed = record_outcome(server, caller, body.decision_id, body.outcome, idempotency_key,
                                       outcome_at=body.outcome_at, reason=body.reason, channel=body.channel,
                                       note=body.note, request_hash=hashlib.sha256(canon.encode()).hexdigest())
        return {"decision_id": row["decision_id"], "outcome": row["outcome"],
                "outcome_at": _iso(row["outcome_at"]), "recorded_at": _iso(row["recorded_at"]),
                "replayed": replayed}


def record_outcome(server: _Server, caller: Principal, decision_id: str, outcome: str, idempotency_key: str, *,
                   outcome_at: datetime | None = None, reason: str | None = None, channel: str | None = None,
                   note: str | None = None, request_hash: str = "", endpoint: str = "outcomes") -> tuple[dict, bool]:
    """The one path an outcome takes into the ledger, for ``POST /v1/outcomes`` and the RM workbench's
    forms: an RM key only for its own book's decisions (another's is an unknown decision), then
    :meth:`feature_store.ledger.Ledger.record_outcome` (idempotent per key), the audit row and the
    metric. Returns (the stored row, replayed). Raises ``HTTPException``: 404 unknown decision, 409 the
    idempotency key was used for another outcome, 422 naming the bad field."""
    svc = server.service
    if caller.rm_id is not None:
        svc.state  # noqa: B018 - an RM's answer depends on its book: 503 for every decision until ready
    dec = server.ledger.decision(decision_id)
    if dec is None or (caller.rm_id is not None and
                       not svc.features([dec["customer_id"]], svc.state, caller.rm_id)[0]):
        raise HTTPException(404, "unknown decision_id")
    try:
        row, replayed = server.ledger.record_outcome(
            decision_id, outcome, idempotency_key=idempotency_key, key_id=caller.key_id, outcome_at=outcome_at,
            reason=reason, source="api", now=svc.clock(), channel=channel, note=note, request_hash=request_hash)
    except UnknownDecision:
        raise HTTPException(404, "unknown decision_id") from None
    except IdempotencyConflict as e:
        raise HTTPException(409, str(e)) from None
    except LedgerError as e:
        raise HTTPException(422, [{"loc": ["body", e.field], "type": "value_error", "msg": str(e)}]) from None
    server.audit.record_reads(caller, [dec["customer_id"]], endpoint, model_version=dec.get("model_version"),
                              request_id=_request_id())
    metrics.OUTCOMES.labels(outcome, "replayed" if replayed else "recorded").inc()
    return row, replayed


def _iso(v) -> str:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).isoformat()
    return str(v)


CLOCK_ENV = "NBA_SERVE_CLOCK"
CLOCK_ANCHOR_ENV = "NBA_SERVE_CLOCK_ANCHOR"


def clock_env() -> dict[str, str]:
    """``$NBA_SERVE_CLOCK`` pinned to the present real time (``$NBA_SERVE_CLOCK_ANCHOR``, Unix seconds,
    unless already set), as environment variables for the workers or replicas to start: with one anchor
    they all read the same clock, where each process starting the replayed day at its own start would
    disagree with the others by the gap between the starts (a decision of one worker stamped after the
    outcome another recorded for it). Empty when no clock is set."""
    raw = os.environ.get(CLOCK_ENV, "").strip()
    if not raw:
        return {}
    return {CLOCK_ENV: raw, CLOCK_ANCHOR_ENV: os.environ.get(CLOCK_ANCHOR_ENV, "").strip() or repr(time.time())}


def clock_from_env() -> Callable[[], datetime] | None:
    """The API's clock from ``$NBA_SERVE_CLOCK``, an ISO 8601 instant with its offset
    (``2026-06-01T12:00:00+00:00``; for tests and replays of a past day). It reads that instant at the real
    time ``$NBA_SERVE_CLOCK_ANCHOR`` (Unix seconds; when unset, the moment of this call) and runs forward at
    the real pace, a fixed offset from the system clock, so processes sharing the anchor agree
    (:func:`clock_env`). None (the system clock) when unset. Raises ``ConfigError`` for a value that
    is not a tz-aware ISO 8601 instant, or an anchor that is not a number of seconds."""
    raw = os.environ.get(CLOCK_ENV, "").strip()
    if not raw:
        return None
    try:
        start = datetime.fromisoformat(raw)
    except ValueError:
        start = None
    if start is None or start.tzinfo is None:
        raise ConfigError(f"{CLOCK_ENV}={raw!r}: expected an ISO 8601 instant with its offset, "
                          f"e.g. 2026-06-01T12:00:00+00:00")
    raw_anchor = os.environ.get(CLOCK_ANCHOR_ENV, "").strip()
    try:
        anchor = float(raw_anchor) if raw_anchor else time.time()
    except ValueError:
        anchor = float("nan")
    if anchor != anchor or anchor in (float("inf"), float("-inf")):
        raise ConfigError(f"{CLOCK_ANCHOR_ENV}={raw_anchor!r}: expected Unix seconds, e.g. 1780000000.0")
    offset = start.astimezone(timezone.utc) - datetime.fromtimestamp(anchor, timezone.utc)
    return lambda: datetime.now(timezone.utc) + offset


def app_from_env() -> FastAPI:
    """``uvicorn --factory apps.api.app:app_from_env``: the app of ``$NBA_HOME``, for ``--workers N``
    (``NBA_SERVE_MODEL``, ``NBA_SERVING_CONFIG``, ``NBA_SERVE_CLOCK`` optional)."""
    from pathlib import Path as _P
    cfg = os.environ.get("NBA_SERVING_CONFIG")
    return create_app(settings=load_settings(_P(cfg) if cfg else None),
                      model=os.environ.get("NBA_SERVE_MODEL", registry.CHAMPION), clock=clock_from_env())


__all__ = ["create_app", "app_from_env", "clock_from_env", "clock_env"]
