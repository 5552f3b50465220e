"""MLflow: where runs are tracked, how bundles are registered, and how serving loads them.

Embedded default: tracking in ``sqlite:///$NBA_HOME/mlflow.db``, artifacts under
``$NBA_HOME/mlartifacts``. ``MLFLOW_TRACKING_URI`` points everything at a remote server instead.
Each training run registers a new version of the model ``nba`` and moves the alias ``challenger`` to
it; ``champion`` moves on ``--promote`` or when no champion exists yet.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nba.home import Home

from .bundle import Bundle, BundleError, load_bundle

CHALLENGER, CHAMPION = "challenger", "champion"


def tracking_uri(home: Home) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home.mlflow_db.resolve()}"


def setup(home: Home, experiment: str) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; returns its id."""
    _quiet()
    import mlflow
    mlflow.set_tracking_uri(tracking_uri(home))
    mlflow.set_registry_uri(tracking_uri(home))
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    location = None if os.environ.get("MLFLOW_TRACKING_URI") else home.artifacts.resolve().as_uri()
    return mlflow.create_experiment(experiment, artifact_location=location)


def _quiet() -> None:
    """No progress bars or advice banners from MLflow in our logs."""
    import logging
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def code_version() -> str:
    """Git commit of the code (with '+dirty' when it has uncommitted changes), else the package version."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version
        return f"nba-engine {version('nba-engine')}"


@dataclass
class Registered:
    name: str
    version: int
    aliases: list[str]
    run_id: str


def register(name: str, version: int | str, run_id: str, promote: bool) -> Registered:
    """Move ``challenger`` to ``version``; ``champion`` too when asked or when there is none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    aliases = [CHALLENGER]
    try:
        client.get_model_version_by_alias(name, CHAMPION)
        has_champion = True
    except MlflowException:
        has_champion = False
    if promote or not has_champion:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        aliases.append(CHAMPION)
    return Registered(name, int(version), aliases, run_id)


def load_registered(home: Home, alias_or_version: str = CHAMPION, name: str = "nba") -> tuple[Bundle, int]:
    """The bundle an alias (or a version number) points at, and that version number.

    The alias is resolved once, then that exact version is downloaded, so a concurrent promotion cannot
    hand back a different version than the one named. The bundle's schema version is checked.
    """
    _quiet()
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    setup_uri = tracking_uri(home)
    mlflow.set_tracking_uri(setup_uri)
    mlflow.set_registry_uri(setup_uri)
    client = MlflowClient()
    try:
        if str(alias_or_version).isdigit():
            mv = client.get_model_version(name, str(alias_or_version))
        else:
            mv = client.get_model_version_by_alias(name, alias_or_version)
    except MlflowException as e:
        raise BundleError(f"registered model {name!r} has no version or alias {alias_or_version!r} "
                          f"(tracking {setup_uri}): {e.message}") from None
    dest = Path(tempfile.mkdtemp(prefix=f"nba-model-{mv.version}-"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(dest)))
    bundle_dir = next((p.parent for p in local.rglob("bundle.json")), None)
    if bundle_dir is None:
        raise BundleError(f"model {name} version {mv.version} has no bundle among its artifacts")
    bundle = load_bundle(bundle_dir)
    bundle.meta["registered_version"] = int(mv.version)
    return bundle, int(mv.version)
