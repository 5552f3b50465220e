"""Run the scoring API: uvicorn on one machine, or Ray Serve replicas on a Ray cluster.

Both run the same FastAPI app (:func:`apps.api.app.create_app`). uvicorn with ``workers`` > 1 starts
that many processes from :func:`apps.api.app.app_from_env` (settings travel in environment variables)
and gives Prometheus a multiprocess folder. Ray Serve deploys the app with ``serve.ingress`` from a
builder that runs in each replica, ``replicas`` copies behind Ray Serve's HTTP proxy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bundle import registry
from nba.home import Home


def _env(home: Home, model: str, ledger_url: str | None, online_url: str | None, config: Path | None) -> dict:
    from .app import clock_env

    env = {"NBA_HOME": str(home.root), "NBA_SERVE_MODEL": str(model)}
    env.update(clock_env())  # replays of a past day: one clock for all workers or replicas
    if ledger_url:
        env["NBA_LEDGER_URL"] = ledger_url
    if online_url:
        env["NBA_ONLINE_STORE"] = online_url
    if config:
        env["NBA_SERVING_CONFIG"] = str(Path(config).resolve())
    return env


def run_uvicorn(home: Home, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
                model: str = registry.CHAMPION, ledger_url: str | None = None, online_url: str | None = None,
                config: Path | None = None, log_level: str = "info", access_log: bool = False) -> None:
    """Serve until interrupted. ``workers`` > 1: separate processes sharing the port. ``access_log``:
    uvicorn's line per request (off by default: it costs about a quarter of a request's time)."""
    import uvicorn

    from .app import clock_from_env

    os.environ.update(_env(home, model, ledger_url, online_url, config))  # the workers read these
    clock = clock_from_env()  # a bad $NBA_SERVE_CLOCK fails here, before anything starts
    if workers > 1:
        # The workers' Prometheus samples, inside NBA_HOME (nothing is written elsewhere), emptied per start.
        prom = home.root / "run" / f"prometheus-{port}"
        shutil.rmtree(prom, ignore_errors=True)
        prom.mkdir(parents=True)
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(prom))
        uvicorn.run("apps.api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=access_log)
        return
    from .app import create_app
    from .settings import load_settings

    app = create_app(home, load_settings(config), model=model, ledger_url=ledger_url, online_url=online_url,
                     clock=clock)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


def deploy_ray(home: Home, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
               address: str | None = None, model: str = registry.CHAMPION, ledger_url: str | None = None,
               online_url: str | None = None, config: Path | None = None, blocking: bool = True,
               replica_cpus: float = 1.0):
    """Deploy the app on Ray Serve (``serve.ingress``) with ``replicas`` replicas; ``address``: a Ray
    cluster (``ray://...`` or ``auto``), default a local Ray. Returns the Serve app handle when not
    ``blocking``; otherwise serves until interrupted."""
    import ray
    from ray import serve

    from .app import clock_from_env

    clock_from_env()  # a bad $NBA_SERVE_CLOCK fails here, before anything is deployed
    env = _env(home, model, ledger_url, online_url, config)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": env})
    root, cfg = str(home.root), env.get("NBA_SERVING_CONFIG")

    def build():  # runs in each replica (with env: $NBA_SERVE_CLOCK travels there)
        from .app import clock_from_env, create_app
        from .settings import load_settings

        return create_app(Home(Path(root)), load_settings(Path(cfg) if cfg else None), model=model,
                          ledger_url=ledger_url, online_url=online_url, clock=clock_from_env())

    @serve.ingress(build)
    class NBAScoringAPI:
        pass

    deployment = serve.deployment(NBAScoringAPI, name="nba-api", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": replica_cpus, "runtime_env": {"env_vars": env}})
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(deployment.bind(), name="nba", route_prefix="/", blocking=blocking)
    return handle
