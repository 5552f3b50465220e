"""The MLflow model registry: where runs are tracked, how bundles are registered, resolved and promoted.

Embedded default: tracking in ``sqlite:///$NBA_HOME/mlflow.db``, artifacts under
``$NBA_HOME/mlartifacts``. ``MLFLOW_TRACKING_URI`` points everything at a remote server instead.
The registered model's name and the experiment come from ``configs/registry.yaml``
(:class:`RegistryConfig`). Each training run registers a new version and moves the alias
``challenger`` to it; ``champion`` moves on promotion or when no champion exists yet.

MLflow is imported inside the functions: importing this module costs nothing until a registry is used.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from nba.atomic import publish_dir
from nba.config import load_yaml
from nba.errors import NBAError
from nba.home import Home

from .format import Bundle, BundleError, read_bundle

CHALLENGER, CHAMPION = "challenger", "champion"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # also safe in a search filter and a folder name


class RegistryConfig(BaseModel):
    """``configs/registry.yaml``: the one place that names the registered model."""

    model_config = ConfigDict(extra="forbid")
    model_name: str = Field("nba", pattern=NAME_PATTERN, description="registered model name in MLflow")
    experiment: str = Field("nba", min_length=1, description="MLflow experiment of the training runs")


@functools.lru_cache(maxsize=8)
def load_config(path: Path | None = None) -> RegistryConfig:
    """``path``, else ``configs/registry.yaml``, else the defaults (cached per path)."""
    return load_yaml(RegistryConfig, path, default_name="registry.yaml")


def default_name() -> str:
    return load_config().model_name


def model_name(name: str | None = None) -> str:
    """``name`` checked against :data:`NAME_PATTERN`, or the configured name. Raises ``BundleError``."""
    if name is None:
        return default_name()
    if not re.match(NAME_PATTERN, name):
        raise BundleError(f"registered model name {name!r} is not allowed (letters, digits, '.', '_', '-'; "
                          f"at most 64, starting with a letter or digit)")
    return name


def tracking_uri(home: Home) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home.mlflow_db.resolve()}"


def use(home: Home) -> str:
    """Point this process's MLflow client at ``home``'s tracking store (or ``$MLFLOW_TRACKING_URI``).

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``. Left in place, a second home in the
    same process (or any child process) would silently use the first home's store, and its experiments
    would put their artifacts under ``./mlruns`` of the working directory. So the environment is restored.
    """
    _quiet()
    import mlflow
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    uri = tracking_uri(home)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return uri


def setup(home: Home, experiment: str | None = None) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; returns its id."""
    import mlflow
    use(home)
    experiment = experiment or load_config().experiment
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
    """Move ``challenger`` to ``version``; ``champion`` too when asked or when there is none.

    The MLflow client must already point at the store (:func:`setup`)."""
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


def model_version(home: Home, alias_or_version: str | int = CHAMPION, name: str | None = None):
    """The registered ``ModelVersion`` an alias or a version number names (resolved once).

    Raises ``BundleError`` naming the model, the alias or version and the tracking store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    name = model_name(name)
    uri = use(home)
    client = MlflowClient()
    try:
        if str(alias_or_version).isdigit():
            return client.get_model_version(name, str(alias_or_version))
        return client.get_model_version_by_alias(name, str(alias_or_version))
    except MlflowException as e:
        hint = ""
        try:
            if not client.search_model_versions(f"name = '{name}'", max_results=1):
                hint = "; no model is registered yet: run `nba train --promote` (or `nba demo`)"
            elif alias_or_version == CHAMPION:
                hint = "; no version is the champion yet: `nba models promote VERSION` (see `nba models list`)"
        except MlflowException:
            pass
        raise BundleError(f"registered model {name!r} has no version or alias {alias_or_version!r} "
                          f"(tracking {uri}): {e.message}{hint}") from None


def promote(home: Home, version: int, name: str | None = None, alias: str = CHAMPION) -> None:
    """Point ``alias`` (the champion by default) at ``version``. Raises ``BundleError`` when the
    version does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    name = model_name(name)
    mv = model_version(home, int(version), name)
    try:
        MlflowClient().set_registered_model_alias(name, alias, str(mv.version))
    except MlflowException as e:
        raise BundleError(f"cannot move {alias} of {name} to version {version}: {e.message}") from None


@dataclass
class VersionInfo:
    """One registered version as ``nba models list`` shows it."""

    name: str
    version: int
    aliases: list[str]
    run_id: str | None
    as_of: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def list_versions(home: Home, name: str | None = None) -> list[VersionInfo]:
    """Every registered version of ``name`` (oldest first), with aliases, as_of and its run's metrics.

    Raises ``BundleError`` when the model has no registered version."""
    from mlflow import MlflowClient
    name = model_name(name)
    uri = use(home)
    client = MlflowClient()
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    if not versions:
        raise BundleError(f"no registered versions of {name!r} under {uri}")
    out = []
    for v in versions:
        run = client.get_run(v.run_id) if v.run_id else None
        out.append(VersionInfo(name, int(v.version), list(client.get_model_version(name, v.version).aliases),
                               v.run_id, run.data.tags.get("as_of", "") if run else "",
                               dict(run.data.metrics) if run else {}, dict(v.tags or {})))
    return out


def logged_model_id(mv) -> str | None:
    """The id of the MLflow logged model behind a model version (``models:/m-...`` source), if any."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    src = mv.source or ""
    if src.startswith("models:/m-"):
        return src.removeprefix("models:/").split("/")[0]
    return None


def artifact_uri(mv, subpath: str = "") -> str:
    """URI of the artifacts of a model version's logged model (``subpath`` inside it)."""
    from mlflow import MlflowClient
    model_id = logged_model_id(mv)
    if model_id:
        base = MlflowClient().get_logged_model(model_id).artifact_location
    else:  # a version registered from a run path (MLflow 2 style)
        base = mv.source
    return base.rstrip("/") + (f"/{subpath.strip('/')}" if subpath else "")


def log_artifacts(mv, folder: Path, subpath: str) -> None:
    """Add ``folder`` to the artifacts of a version's logged model under ``subpath`` (e.g. an index build)."""
    from mlflow import MlflowClient
    model_id = logged_model_id(mv)
    if not model_id:
        raise NBAError(f"model {mv.name} version {mv.version} has no logged model to attach artifacts to")
    MlflowClient().log_model_artifacts(model_id, str(folder), subpath)


def set_version_tag(mv, key: str, value: str) -> None:
    from mlflow import MlflowClient
    MlflowClient().set_model_version_tag(mv.name, mv.version, key, value)


def cache_dir(home: Home, mv) -> Path:
    """Where a model version's downloads are kept in ``NBA_HOME``: one folder per registered version,
    keyed by name, version and the logged model (or run) behind it, so that a recreated tracking store
    or another ``MLFLOW_TRACKING_URI`` whose version 1 is another model never reads this one's files."""
    ident = re.sub(r"[^A-Za-z0-9]", "", str(logged_model_id(mv) or mv.run_id or "norun"))[-12:]
    return home.root / "models" / f"{model_name(mv.name)}-v{int(mv.version)}-{ident}"


def download(home: Home, mv, subpath: str, dest_name: str) -> Path:
    """Download ``subpath`` of a version's logged model into its cache folder once; later calls reuse it.

    Written aside and switched into place (:func:`nba.atomic.publish_dir`), so a killed download leaves
    no half folder behind, and a second process waits for the first one's download instead of
    repeating it.
    """
    import mlflow
    dest = cache_dir(home, mv) / dest_name
    if dest.exists():
        return dest

    def fetch(folder: Path) -> None:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri(mv, subpath),
                                                         dst_path=str(folder / ".download")))
        for child in local.iterdir():
            os.rename(child, folder / child.name)
        shutil.rmtree(folder / ".download")

    return publish_dir(dest, fetch, timeout=-1, if_exists="keep", what=f"the download of {mv.name} v{mv.version}")


def bundle_of(home: Home, mv) -> Bundle:
    """The bundle of a model version (downloaded once into ``NBA_HOME/models``), schema checked."""
    # Only the bundle folder of the pyfunc model: the logged model also carries the index builds.
    local = download(home, mv, "artifacts/bundle", "bundle")
    bundle_dir = next((p.parent for p in local.rglob("bundle.json")), None)
    if bundle_dir is None:
        raise BundleError(f"model {mv.name} version {mv.version} has no bundle among its artifacts")
    bundle = read_bundle(bundle_dir)
    bundle.meta["registered_version"] = int(mv.version)
    return bundle


def load_registered(home: Home, alias_or_version: str | int = CHAMPION,
                    name: str | None = None) -> tuple[Bundle, int]:
    """The bundle an alias (or a version number) points at, and that version number.

    The alias is resolved once, then that exact version is downloaded, so a concurrent promotion cannot
    hand back a different version than the one named. The bundle's schema version is checked.
    """
    mv = model_version(home, alias_or_version, name)
    return bundle_of(home, mv), int(mv.version)
