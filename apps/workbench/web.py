"""The RM workbench: web pages of the scoring API app for relationship managers.

Served by the API app (:func:`apps.api.app.create_app` calls :func:`install`) at ``/``: server-rendered
Jinja2 templates, one stylesheet, charts drawn on the server (:mod:`apps.workbench.charts`); no script and
nothing fetched from the internet, so the pages work offline and under a strict Content-Security-Policy.

- ``GET /login``, ``POST /login``: an RM exchanges an ``rm`` API key for a session cookie
  (:mod:`apps.workbench.sessions`); attempts are rate-limited per client address. ``POST /logout``.
- ``GET /``: the RM's list of a day (the latest daily run by default, ``?day=YYYY-MM-DD``) for their own
  book: priority, client, action, channel (in person or digital), reasons and talking points, and whether
  each is still open or done; filters by family, channel, kind (in person / digital) and status. Prints
  as the printable list.
- ``GET /clients/{id}``: the client's state with its evidence, churn risk, products, recent interactions
  and complaints, care moments coming up, the day's actions, past actions with their outcomes and notes,
  and three charts (``/clients/{id}/charts/{balance,state,contacts}.svg``).
- ``POST /outcomes``: one outcome (reached, accepted, declined with a reason, not reachable, with a short
  note) through the same path as ``POST /v1/outcomes`` (:func:`apps.api.app.record_outcome`), idempotent
  per form (a double click records once). Later decisions read it from the ledger (cooldowns,
  complaint-first, caps) and ``nba outcomes export`` makes it a training label.

An RM sees only their own book: another RM's client, by URL or form, answers exactly as an unknown client.
Every page a client's data appears on is written to the audit log.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import threading
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import pandas as pd
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from apps.api.security import RM, RateLimiter
from feature_store.store import TableStore
from nba.home import Home
from nba.schema import ACTION_FAMILIES, CHANNELS
from serving.client_view import ClientView, care_moments
from serving.realtime import ServingError

from . import charts
from .i18n import LANGUAGES, NAMES, Translator, negotiate
from .sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Session, SessionStore, csrf_ok

log = logging.getLogger("nba.workbench")

_HERE = Path(__file__).parent
LANG_COOKIE = "nba_lang"
DECLINE_REASONS = ("not_interested", "already_has", "too_expensive", "bad_timing", "prefers_other_channel",
                   "complaint", "other")
OUTCOMES = ("reached", "accepted", "declined", "not_reachable")
DONE = frozenset({"reached", "accepted", "declined"})
HISTORY_DAYS = 180
NOTE_MAX = 500
# Unicode bidirectional controls: in a note they would reorder the text shown to the next reader.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


class _Unknown(Exception):
    """The client is unknown, or not in the signed-in RM's book: the same answer for both."""


class Workbench:
    """The workbench of one app: templates, sessions and the cached daily lists."""

    def __init__(self, home: Home, sessions: SessionStore, login_limiter: RateLimiter):
        self.home, self.sessions, self.login_limiter = home, sessions, login_limiter
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self.templates.env.globals.update(LANGUAGES=LANGUAGES, LANGUAGE_NAMES=NAMES)
        self.templates.env.filters.update(money=_money, pct=_pct, when=_when, plain=plain)
        self._days: dict[date, tuple[float, dict[str, pd.DataFrame]]] = {}
        self._lock = threading.Lock()
        self._views: dict[tuple, ClientView] = {}

    # -- data ----------------------------------------------------------------------------------------

    def days(self) -> list[date]:
        """The days with a daily run, newest first."""
        out = []
        if self.home.daily.exists():
            for p in self.home.daily.iterdir():
                try:
                    d = date.fromisoformat(p.name)
                except ValueError:
                    continue
                if (p / "decisions.parquet").exists():
                    out.append(d)
        return sorted(out, reverse=True)

    def book(self, day: date, rm_id: str) -> pd.DataFrame:
        """The RM's listed (not control-group) decisions of ``day``; cached per day while the file is unchanged."""
        f = self.home.daily / day.isoformat() / "decisions.parquet"
        try:
            mtime = f.stat().st_mtime
        except FileNotFoundError:
            return pd.DataFrame()
        with self._lock:
            hit = self._days.get(day)
        if hit is None or hit[0] != mtime:
            df = pd.read_parquet(f)
            df = df[~df["control_group"].astype(bool)]
            groups = {str(k): g.reset_index(drop=True) for k, g in df.groupby("rm_id", sort=False)}
            hit = (mtime, groups)
            with self._lock:
                self._days = {d: v for d, v in self._days.items() if d >= day - timedelta(days=7)}
                self._days[day] = hit
        return hit[1].get(rm_id, pd.DataFrame())

    def view(self, server, state) -> ClientView:
        version = TableStore(self.home.store).version(state.store_version)
        key = (state.store_version, state.day)
        with self._lock:
            v = self._views.get(key)
            if v is None:
                from feature_store.materialize import time_zone
                v = ClientView(self.home, version, state.day, time_zone())
                self._views = {key: v}
        return v


def _money(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(x) else f"{x:,.0f}"


def _pct(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(x) else f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def _when(v: Any) -> str:
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return "" if v is None else str(v)


def _status(outcomes: list[dict]) -> tuple[str, dict | None]:
    """(open | tried | done, the outcome that decides it): a decline wins, then the latest outcome."""
    if not outcomes:
        return "open", None
    decline = next((o for o in reversed(outcomes) if o["outcome"] == "declined"), None)
    last = decline or outcomes[-1]
    if last["outcome"] in DONE:
        return "done", last
    return ("tried" if last["outcome"] == "not_reachable" else "open"), last


def _row_dict(r: pd.Series) -> dict:
    d = r.to_dict()
    d["reasons"] = [x for x in str(d.get("reasons") or "").split("|") if x]  # reason codes
    d["talking_points"] = [x for x in str(d.get("talking_points") or "").split(" || ") if x]
    raw = d.get("talking_point_data")
    try:
        d["talking_point_data"] = json.loads(raw) if isinstance(raw, str) and raw else []
    except ValueError:
        d["talking_point_data"] = []
    return d


def _with_status(rows: pd.DataFrame, ledger) -> list[dict]:
    """A day's listed rows (in their order) as dicts, each with its ``status`` and deciding outcome
    ``last`` from the ledger (:func:`_status`), read in one query."""
    got = ledger.outcomes_of(rows["decision_id"].tolist())
    out = []
    for _, r in rows.iterrows():
        d = _row_dict(r)
        d["status"], d["last"] = _status(got.get(d["decision_id"], []))
        out.append(d)
    return out


_PERCENT = ("p", "share", "save_rate")
_VALUES = {"segment": "segment", "stage": "lifecycle", "mood": "emotion", "severity": "severity",
           "band": "age_band"}


def _say(t: Translator, code: str, fields: dict) -> str:
    """One talking point in ``t``'s language from the engine's data (``nba.decision.explain``):
    ``KeyError`` when this language's catalog lacks the sentence (the caller keeps the English one)."""
    if not t.has(f"tp.{code}"):
        raise KeyError(code)
    if fields.get("days") == 0 and t.has(f"tp.{code}_today"):  # "in 0 days" reads as "today"
        code = f"{code}_today"
    if code == "facts":
        return t("tp.facts_sep").join(_say(t, c, f) for c, f in fields["parts"])
    out = {}
    for k, v in fields.items():
        if k in _PERCENT:
            out[k] = f"{float(v):.0%}"
        elif k == "assets":
            out[k] = f"{float(v):,.0f}"
        elif k == "action_id":
            out["offer"] = t.value("action", v)
        elif k in _VALUES:
            out[k] = t.value(_VALUES[k], v)
        else:
            out[k] = v
    return t(f"tp.{code}", **out)


def talking_points(t: Translator, english: list[str], data: list) -> list[str]:
    """The talking points in the page's language: the engine's English text in English, else each point
    from its data and this language's catalog, falling back to the English text point by point."""
    if t.lang == "en" or not data:
        return english
    out = []
    for k, item in enumerate(data):
        try:
            code, fields = item
            out.append(_say(t, code, fields))
        except (KeyError, ValueError, TypeError, IndexError):
            out.append(english[k] if k < len(english) else "")
    return [x for x in out if x]


def install(app: FastAPI, home: Home) -> None:
    """Add the workbench's routes and static files to the API ``app`` (its lifespan sets up
    ``app.state.server``; the workbench opens its sessions on first use)."""
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="workbench-static")
    state: dict[str, Workbench] = {}
    lock = threading.Lock()

    def wb(request: Request) -> Workbench:
        w = state.get("wb")
        if w is None:
            with lock:
                w = state.get("wb")
                if w is None:
                    server = request.app.state.server
                    s = server.settings
                    sessions = SessionStore(server.keys.engine, ttl=timedelta(hours=s.workbench_session_hours))
                    w = state["wb"] = Workbench(home, sessions, RateLimiter(s.workbench_login_rate_limit,
                                                                            s.rate_limit_storage))
        return w

    def t_of(request: Request) -> Translator:
        return Translator(lang_of(request))

    def lang_of(request: Request) -> str:
        return negotiate(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE),
                         request.headers.get("accept-language"))

    def render(request: Request, name: str, ctx: dict, status: int = 200, session: Session | None = None) -> Response:
        lang = lang_of(request)
        t = Translator(lang)
        query = {k: v for k, v in request.query_params.items() if k not in ("lang", "recorded")}
        path = "/" + request.url.path.lstrip("/")  # never "//host/...": a link off the site
        names = _product_names(request)

        def label(action_id, product_id=None) -> str:
            """An action's name: its product's (the bank's catalog), else the message catalog's, else its id."""
            if product_id and product_id in names and str(action_id).count(":") <= 1:
                return names[product_id]
            return t.value("action", action_id)

        base = {"request": request, "t": t, "lang": lang, "session": session, "label": label,
                "points": lambda r: talking_points(t, r["talking_points"], r.get("talking_point_data") or []),
                "csrf": session.csrf if session else None, "path": path, "query": query,
                "lang_links": {lg: f"{path}?{urlencode({**query, 'lang': lg})}" for lg in LANGUAGES},
                "list_back": "list?" + urlencode(query) if path == "/" else "list?"}
        resp = wb(request).templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)
        _headers(resp)
        if (request.query_params.get("lang") or "").lower() in LANGUAGES:
            resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")
        return resp

    def current(request: Request) -> Session | None:
        return wb(request).sessions.get(request.cookies.get(SESSION_COOKIE))

    def to_login(request: Request) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        _headers(resp)
        return resp

    def not_ready(request: Request, session: Session | None) -> Response:
        return render(request, "message.html", {"title_key": "error.title", "message_key": "error.not_ready"},
                      status=503, session=session)

    def unknown(request: Request, session: Session) -> Response:
        return render(request, "message.html", {"title_key": "unknown.title", "message_key": "unknown.text"},
                      status=404, session=session)

    # -- sign in / out ---------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request) -> Response:
        if current(request) is not None:
            return RedirectResponse("/", status_code=303)
        token = secrets.token_urlsafe(32)
        resp = render(request, "login.html", {"login_csrf": token, "error_key": None})
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    def login(request: Request, key: str = Form(""), csrf: str = Form("")) -> Response:
        w = wb(request)
        server = request.app.state.server

        def again(error_key: str, status: int) -> Response:
            token = secrets.token_urlsafe(32)
            resp = render(request, "login.html", {"login_csrf": token, "error_key": error_key}, status=status)
            resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
            return resp

        if len(csrf) > 100 or not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE), csrf):
            return again("login.expired", 400)
        key = key.strip()[:300]  # longer is no key of ours (KeyStore.verify refuses over 200)
        # Failed attempts are limited per client address (a wrong key, or not an RM's). A valid RM key always
        # signs in: a flood of bad keys from one address (an office behind one NAT) locks no RM out, and
        # a 256-bit key is not guessed anyway; the limit keeps the flood cheap.
        address = request.client.host if request.client else "unknown"
        principal = server.keys.verify(key)
        if principal is None or principal.scope != RM or not principal.rm_id:
            wait = w.login_limiter.blocked(address)
            if wait is not None:
                resp = again("login.throttled", 429)
                resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return resp
            w.login_limiter.hit(address)
            if principal is None:
                log.info("workbench sign-in refused: invalid key")
                return again("login.bad_key", 401)
            return again("login.not_rm", 403)
        token, _ = w.sessions.create(principal)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(SESSION_COOKIE, token, max_age=int(w.sessions.ttl.total_seconds()), httponly=True,
                        samesite="lax", secure=request.url.scheme == "https", path="/")
        resp.delete_cookie(LOGIN_CSRF_COOKIE)
        _headers(resp)
        log.info("workbench sign-in: key %s", principal.key_id)
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("")) -> Response:
        session = current(request)
        if session is not None and not csrf_ok(session.csrf, csrf):
            return render(request, "message.html", {"title_key": "error.title", "message_key": "error.csrf"},
                          status=400, session=session)
        wb(request).sessions.delete(request.cookies.get(SESSION_COOKIE))
        resp = to_login(request)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # -- the list --------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def action_list(request: Request, day: str | None = None, family: str | None = None,
                    channel: str | None = None, kind: str | None = None, status: str | None = None) -> Response:
        session = current(request)
        if session is None:
            return to_login(request)
        w = wb(request)
        server = request.app.state.server
        rm_id = session.principal.rm_id
        days = w.days()
        chosen = None
        if day:
            try:
                chosen = date.fromisoformat(day) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) else None
            except ValueError:
                chosen = None
            if chosen not in days:
                return render(request, "message.html", {"title_key": "error.title", "message_key": "list.no_day",
                                                        "fields": {"day": day[:40]}}, status=404, session=session)
        elif days:
            chosen = _current_day(days, _today(server))
        rows: list[dict] = []
        counts = {"all": 0, "open": 0, "done": 0, "tried": 0}
        if chosen is not None:
            g = w.book(chosen, rm_id)
            if len(g):
                g = g.sort_values(["in_person", "priority"], ascending=[False, False])
                for d in _with_status(g, server.ledger):
                    counts["all"] += 1
                    counts[d["status"]] += 1
                    if family in ACTION_FAMILIES and d["action_family"] != family:
                        continue
                    if channel in CHANNELS and d["channel"] != channel:
                        continue
                    if kind in ("in_person", "digital") and bool(d["in_person"]) != (kind == "in_person"):
                        continue
                    if status in ("open", "done", "tried") and d["status"] != status:
                        continue
                    rows.append(d)
                server.audit.record_reads(session.principal, sorted({r["customer_id"] for r in rows}),
                                          "workbench/list", model_version=str(g["model_version"].iloc[0]))
        filtered = any(v for v in (family, channel, kind, status))
        return render(request, "list.html", {
            "day": chosen, "days": days[:14], "rows": rows, "counts": counts, "rm_id": rm_id, "filtered": filtered,
            "can_record": chosen is not None and chosen <= _today(server),
            "filters": {"family": family if family in ACTION_FAMILIES else "",
                        "channel": channel if channel in CHANNELS else "",
                        "kind": kind if kind in ("in_person", "digital") else "",
                        "status": status if status in ("open", "done", "tried") else ""},
            "families": ACTION_FAMILIES, "channels": CHANNELS, "reasons": DECLINE_REASONS, "outcomes": OUTCOMES,
            "idem": secrets.token_urlsafe(12),
            "done_id": _shown(request.query_params.get("recorded"), rows),
        }, session=session)

    # -- a client --------------------------------------------------------------------------------

    def _client(request: Request, session: Session, customer_id: str) -> tuple[Any, Any, dict]:
        """(serving state, the DecisionService, the client's feature row as a dict); ``_Unknown`` when the
        client is unknown or in another RM's book."""
        server = request.app.state.server
        svc = server.service
        st = svc.state
        ids, cols = svc.features([customer_id], st, session.principal.rm_id)
        if not ids:
            raise _Unknown()
        row = {c: _scalar(v[0]) for c, v in cols.items()}
        return st, svc, row

    @app.get("/clients/{customer_id}", response_class=HTMLResponse, include_in_schema=False)
    def client_page(request: Request, customer_id: str) -> Response:
        session = current(request)
        if session is None:
            return to_login(request)
        if len(customer_id) > 128:
            return unknown(request, session)
        try:
            st, svc, f = _client(request, session, customer_id)
        except _Unknown:
            return unknown(request, session)
        except ServingError:
            return not_ready(request, session)
        w = wb(request)
        server = request.app.state.server
        view = w.view(server, st)
        churn = float(svc.inputs([customer_id], st).churn[0])
        try:
            evidence = json.loads(f.get("state_evidence") or "{}")
        except ValueError:
            evidence = {}
        days = w.days()
        today_rows = []
        list_day = _current_day(days, _today(server)) if days else None
        if list_day is not None:
            g = w.book(list_day, session.principal.rm_id)
            if len(g):
                mine = g[g["customer_id"] == customer_id].sort_values("priority", ascending=False)
                today_rows = _with_status(mine, server.ledger)
        today_ids = {r["decision_id"] for r in today_rows}
        # Past actions: the ledger's (every source, with notes), then the store's history of the others (the
        # bank's own outcomes from before the engine, and any the ledger does not hold).
        tz = ZoneInfo(view.time_zone)
        past = [d for d in server.ledger.client_decisions(customer_id, st.day - timedelta(days=HISTORY_DAYS), st.day)
                if d["decision_id"] not in today_ids]
        for d in past:
            for o in d["outcomes"]:
                if isinstance(o.get("outcome_at"), datetime):
                    o["outcome_at"] = o["outcome_at"].replace(tzinfo=ZoneInfo("UTC")).astimezone(tz)
        seen = {d["decision_id"] for d in past} | today_ids
        past += [{**d, "source": "store", "control_group": False}
                 for d in view.past_actions(customer_id, HISTORY_DAYS) if d["decision_id"] not in seen]
        past.sort(key=lambda d: (d["day"], d["decision_id"]), reverse=True)
        for d in past:
            d["status"], d["last"] = _status(d["outcomes"])
        balance = _since_onboarding(view.balance_trend(customer_id), f, st.day)
        history = view.state_history(customer_id)
        contacts = view.contacts_per_channel(customer_id)
        server.audit.record_reads(session.principal, [customer_id], "workbench/client", model_version=st.label)
        return render(request, "client.html", {
            "cid": customer_id, "f": f, "churn": None if math.isnan(churn) else churn, "evidence": evidence,
            "holdings": view.holdings(customer_id), "interactions": view.interactions(customer_id),
            "complaints": view.complaints(customer_id), "moments": care_moments(f),
            "today": today_rows, "past": past, "balance": balance, "history": history, "contacts": contacts,
            "day": list_day, "features_day": st.day, "model": st.label,
            "can_record": list_day is not None and list_day <= _today(server),
            "tenure": _tenure(t_of(request), f.get("tenure_days")),
            "reasons": DECLINE_REASONS, "outcomes": OUTCOMES, "idem": secrets.token_urlsafe(12),
            "done_id": _shown(request.query_params.get("recorded"), today_rows + past),
            "consents": {c: bool(f.get(f"consent_{c}")) for c in (*CHANNELS, "marketing")},
            "absent": view.absent,
        }, session=session)

    @app.get("/clients/{customer_id}/charts/{name}.svg", include_in_schema=False)
    def client_chart(request: Request, customer_id: str, name: str) -> Response:
        session = current(request)
        if session is None:
            return Response(status_code=401)
        if name not in ("balance", "state", "contacts") or len(customer_id) > 128:
            return Response(status_code=404)
        try:
            st, _, f = _client(request, session, customer_id)
        except _Unknown:
            return Response(status_code=404)
        except ServingError:
            return Response(status_code=503)
        t = Translator(lang_of(request))
        view = wb(request).view(request.app.state.server, st)
        empty = t("chart.empty")
        if name == "balance":
            body = charts.balance_svg(_since_onboarding(view.balance_trend(customer_id), f, st.day),
                                      {"assets": t("chart.assets"), "liabilities": t("chart.liabilities"),
                                       "empty": empty})
        elif name == "state":
            body = charts.state_svg(view.state_history(customer_id),
                                    {"health": t("chart.health"), "churn": t("chart.churn"), "empty": empty})
        else:
            body = charts.contacts_svg(view.contacts_per_channel(customer_id),
                                       {c: t.value("channel", c) for c in CHANNELS},
                                       {"inbound": t("chart.inbound"), "outbound": t("chart.outbound"),
                                        "empty": empty})
        resp = Response(body, media_type="image/svg+xml")  # no-store (_headers): nothing left after sign-out
        _headers(resp)
        return resp

    # -- outcomes --------------------------------------------------------------------------------

    @app.post("/outcomes", include_in_schema=False)
    def post_outcome(request: Request, decision_id: str = Form(""), outcome: str = Form(""),
                     reason: str = Form(""), note: str = Form(""), csrf: str = Form(""), idem: str = Form(""),
                     back: str = Form("list")) -> Response:
        # Every field is checked here, not by FastAPI, so that a bad form gets a page, not JSON.
        from fastapi import HTTPException

        session = current(request)
        if session is None:
            return to_login(request)
        if not csrf_ok(session.csrf, csrf):
            return render(request, "message.html", {"title_key": "error.title", "message_key": "error.csrf"},
                          status=400, session=session)
        record = request.app.state.record_outcome
        server = request.app.state.server
        if not (1 <= len(decision_id) <= 128) or not (8 <= len(idem) <= 64) or not idem.isascii() \
                or not idem.replace("-", "").replace("_", "").isalnum() or len(back) > 300:
            return render(request, "message.html", {"title_key": "error.title", "message_key": "error.form"},
                          status=422, session=session)
        if outcome not in OUTCOMES:
            return render(request, "message.html", {"title_key": "error.title", "message_key": "error.outcome"},
                          status=422, session=session)
        why = None
        if outcome == "declined":
            why = reason if reason in DECLINE_REASONS else "other"
        note = " ".join(_BIDI.sub("", note).split()) or None  # one line, no reordering of the text
        if note is not None and len(note) > NOTE_MAX:
            return render(request, "message.html", {"title_key": "error.title", "message_key": "error.note"},
                          status=422, session=session)
        try:
            record(server, session.principal, decision_id, outcome, f"wb-{idem}-{outcome}", reason=why,
                   note=note, endpoint="workbench/outcomes")
        except ServingError:
            return not_ready(request, session)
        except HTTPException as e:
            key = {404: "error.unknown_decision", 409: "error.conflict"}.get(e.status_code, "error.rejected")
            detail = e.detail if isinstance(e.detail, str) else "; ".join(str(x.get("msg", "")) for x in e.detail)
            return render(request, "message.html", {"title_key": "error.title", "message_key": key,
                                                    "detail": detail if e.status_code == 422 else None},
                          status=e.status_code, session=session)
        target = "/"
        if back.startswith("client:"):
            target = f"/clients/{quote(back.split(':', 1)[1], safe='')}"
        elif back.startswith("list?") and len(back) > 5:
            target = "/?" + back.split("?", 1)[1]
        sep = "&" if "?" in target else "?"
        resp = RedirectResponse(f"{target}{sep}{urlencode({'recorded': decision_id})}#d-{decision_id}",
                                status_code=303)
        _headers(resp)
        return resp

    @app.exception_handler(StarletteHTTPException)
    async def _html_errors(request: Request, exc: StarletteHTTPException):
        # JSON for the API (and anything that asks for it); a page for a browser on the workbench.
        from fastapi.exception_handlers import http_exception_handler
        if request.url.path.startswith(("/v1/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi",
                                        "/redoc", "/static/")) or "text/html" not in request.headers.get("accept", ""):
            return await http_exception_handler(request, exc)
        return render(request, "message.html", {"title_key": "error.title", "message_key": "error.generic",
                                                "fields": {"status": exc.status_code}}, status=exc.status_code,
                      session=None)


def _shown(decision_id: str | None, rows: list[dict]) -> str | None:
    """The just-recorded decision, if the page shows it (no "recorded" flash for any id in a URL)."""
    return decision_id if decision_id and any(r.get("decision_id") == decision_id for r in rows) else None


def plain(text: Any) -> str:
    """Text from the data or a caller, without bidirectional controls (they would reorder what is shown)."""
    return _BIDI.sub("", "" if text is None else str(text))


def _scalar(v: Any) -> Any:
    """A feature value for the page: NumPy scalars as Python values, missing (NaN, NA) as None."""
    v = v.item() if hasattr(v, "item") else v
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    return v


def _current_day(days: list[date], today: date) -> date:
    """The list an RM works today: the newest daily run not after today (a run made ahead for tomorrow
    is not today's list), else the oldest one there is. ``days`` newest first."""
    return next((d for d in days if d <= today), days[-1])


def _tenure(t: Translator, tenure_days) -> str:
    if tenure_days is None:
        return "?"
    n = int(tenure_days)
    return t("client.tenure_years", n=n // 365) if n >= 365 else t("client.tenure_months", n=n // 30)


def _today(server) -> date:
    """The bank's calendar day now (the API's clock, in the bank's time zone)."""
    from feature_store.materialize import time_zone
    return server.service.clock().astimezone(ZoneInfo(time_zone())).date()


def _since_onboarding(points: list[dict], f: dict, day: date) -> list[dict]:
    """Balance points from the month the client was onboarded on (none from before they were a client)."""
    tenure = f.get("tenure_days")
    if tenure is None:
        return points
    start = day - timedelta(days=int(tenure))
    return [p for p in points if (p["date"].year, p["date"].month) >= (start.year, start.month)]


def _product_names(request: Request) -> dict[str, str]:
    try:
        products = request.app.state.server.service.state.catalog.products
    except Exception:  # noqa: BLE001 - not ready: ids stand in for names
        return {}
    return products["name"].astype(str).to_dict() if "name" in products else {}


def _headers(resp: Response) -> None:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers.setdefault("Cache-Control", "no-store")
    resp.headers["Vary"] = "Accept-Language, Cookie"
