"""Prometheus metrics of the scoring API (prometheus-client).

Requests and latencies per route template (never a path with a client id in it), decisions by family
and channel, policy removals by rule, outcomes, reloads and the model version served. Under
``uvicorn --workers N`` set ``PROMETHEUS_MULTIPROC_DIR`` (``nba serve`` does): each worker writes its
samples there and ``/metrics`` aggregates them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

REQUESTS = Counter("nba_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram("nba_request_seconds", "Request latency (seconds)", ["route"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
DECISIONS = Counter("nba_decisions_total", "Decisions answered, by the top action's family and channel",
                    ["family", "channel"])
POLICY_REMOVALS = Counter("nba_policy_removals_total", "Actions removed by each policy rule", ["rule"])
OUTCOMES = Counter("nba_outcomes_total", "Outcomes received", ["outcome", "result"])
RELOADS = Counter("nba_reloads_total", "Model reload checks: switched, unchanged or refused", ["result"])
MODEL_VERSION = Gauge("nba_model_version", "Registered model version being served", multiprocess_mode="max")


_CHILDREN: dict = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, kept: prometheus-client checks and locks on every ``labels()`` call,
    a few µs each, several times per request. The label sets are bounded (routes, rules, families)."""
    key = (metric, labels)
    c = _CHILDREN.get(key)
    if c is None:
        c = metric.labels(*labels)
        if len(_CHILDREN) < 10_000:
            _CHILDREN[key] = c
    return c


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type (all workers' when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        _mp.MultiProcessCollector(reg)
        return generate_latest(reg), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts each HTTP request and times it under its route template."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def _send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            child(REQUESTS, name, method if method in _METHODS else "other", str(status[0])).inc()
            child(LATENCY, name).observe(time.perf_counter() - start)
