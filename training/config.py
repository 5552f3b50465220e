"""``configs/train.yaml``: every setting of a training run, validated (unknown keys are errors).

``--set section.key=value`` overrides any value; the value is parsed as YAML (``3``, ``0.5``,
``true``, ``[1, 2]``), so types are checked exactly as in the file.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nba.config import CONFIG_DIR
from nba.errors import ConfigError

from .loop import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    valid_share: float = Field(0.5, ge=0, lt=1, description=(
        "share of the acquisitions of the last 90 days held out of the graph for validation/early stopping"))
    enquiry_weight: float = Field(0.5, ge=0, description="propagation weight of 'asked about' edges")
    churn_horizon_days: int = Field(90, ge=7, description=(
        "the churn head learns from features at as_of - horizon and churn in the horizon after"))
    valid_seed: int = 0


class EvalConfig(_Strict):
    horizon_days: int = Field(90, ge=1, description="openings and churn in this many days after as_of")
    ks: list[int] = Field([1, 3, 5, 10], min_length=1, description=(
        "cut-offs of the opening metrics; each K above the catalogue size is computed at the catalogue size "
        "and reported under that K (with 5 products @10 becomes @5; the evaluation records ks_requested)"))


class RayConfig(_Strict):
    enabled: bool = Field(True, description="run under Ray Train's TorchTrainer (off: the plain loop in-process)")
    address: str | None = Field(None, description="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    num_workers: int = Field(1, ge=1, description="DDP workers")
    use_gpu: bool | None = Field(None, description="default: when the cluster has a GPU")
    cpus_per_worker: int | None = Field(None, ge=1, description="default: all local CPUs shared by the workers")
    max_failures: int = Field(2, ge=-1, description="restarts from the last checkpoint after a worker dies")
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_every_s: float = Field(30.0, ge=0, description=(
        "seconds of training between reports to Ray Train, each with a checkpoint (0: every epoch); the last "
        "epoch is always reported. A worker that dies loses at most this much work; a report can cost up to "
        "the controller's poll interval (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s)"))


class RunConfig(_Strict):
    model: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    evaluation: EvalConfig = EvalConfig()
    ray: RayConfig = RayConfig()


def _set(raw: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
    node[keys[-1]] = value


def load_run_config(path: Path | None = None, overrides: list[str] | None = None) -> tuple[RunConfig, Path]:
    """Read ``path`` (default ``configs/train.yaml``), apply ``key=value`` overrides, validate."""
    path = Path(path) if path is not None else CONFIG_DIR / "train.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, evaluation, ray)")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        _set(raw, key.strip(), yaml.safe_load(value))
    try:
        return RunConfig.model_validate(raw), path
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{path}: {problems}") from None
