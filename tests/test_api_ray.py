"""The scoring API on Ray Serve (``deploy_ray``): one replica on the session's local Ray answers over HTTP,
with the same decisions as the in-process app."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from datetime import time as dtime

import httpx
import pytest
from fastapi.testclient import TestClient

from apps.api.app import create_app
from apps.api.security import KeyStore
from apps.api.serve import deploy_ray
from apps.api.settings import ServingSettings
from feature_store.ledger import Ledger
from feature_store.materialize import features_at
from tests.conftest import AS_OF, _free_port

NOON = datetime.combine(AS_OF, dtime(12), tzinfo=timezone.utc)
READY_TIMEOUT = 180


def test_ray_serve_answers_like_the_in_process_app(api_home, ray_session, tmp_path, monkeypatch):
    from ray import serve

    url = f"sqlite:///{tmp_path / 'serving.sqlite'}"  # keys, ledger, audit of this test only
    _, key = KeyStore.open(api_home, url).create("campaign", label="ray test")
    monkeypatch.setenv("NBA_SERVE_CLOCK", NOON.isoformat())  # travels to the replica in its env
    ids = features_at(api_home, AS_OF)["customer_id"].astype(str).tolist()[:8]
    port = _free_port()
    try:
        deploy_ray(api_home, port=port, replicas=1, blocking=False, replica_cpus=0.5, ledger_url=url)
        base = f"http://127.0.0.1:{port}"
        deadline, last = time.monotonic() + READY_TIMEOUT, None
        while time.monotonic() < deadline:
            try:
                last = httpx.get(f"{base}/readyz", timeout=5)
                if last.status_code == 200:
                    break
            except httpx.TransportError as e:
                last = e
            time.sleep(0.5)
        else:
            pytest.fail(f"Ray Serve not ready within {READY_TIMEOUT} s: {last}")
        assert last.json()["model_version"].endswith("/1")
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as http:
            remote = {c: http.post("/v1/next-best-action", json={"customer_id": c}) for c in ids}
            assert http.get("/v1/model").status_code == 200
            assert http.post("/v1/next-best-action", json={"customer_id": ids[0]},
                             headers={"X-API-Key": "nba_000000000000_nope"}).status_code == 401
    finally:
        serve.shutdown()
    assert all(r.status_code == 200 for r in remote.values()), [r.text for r in remote.values()][:2]
    # The replica decided on NBA_SERVE_CLOCK (noon of the bank's day), not on the system clock.
    made = [r.json()["decision_id"] for r in remote.values() if r.json()["decision_id"]]
    assert made
    with Ledger(url) as ledger:
        for d in made:
            at = ledger.decision(d)["decided_at"]
            assert NOON.replace(tzinfo=None) <= at < NOON.replace(tzinfo=None) + timedelta(minutes=10), (d, at)
    settings = ServingSettings(reload_poll_seconds=0)
    with TestClient(create_app(api_home, settings, ledger_url=url, clock=lambda: NOON, poll=False)) as local:
        for c, r in remote.items():
            want = local.post("/v1/next-best-action", json={"customer_id": c}, headers={"X-API-Key": key})
            assert want.status_code == 200
            assert r.json() == want.json(), c
    assert any(r.json()["actions"] for r in remote.values())
