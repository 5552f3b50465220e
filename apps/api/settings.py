"""Settings of the scoring API: ``configs/serving.yaml``, validated (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from nba.config import load_yaml


class ServingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(1_048_576, ge=1024, description="request bodies above this get 413 (bytes)")
    max_batch: int = Field(1000, ge=1, le=100_000, description="clients per POST /v1/score")
    max_seeds: int = Field(10_000, ge=1, description="seed clients per lookalike request")
    max_audience: int = Field(100_000, ge=1, description="clients per lookalike answer")
    max_top: int = Field(20, ge=1, le=200, description="ranked actions per next-best-action answer")
    rate_limit: str = Field("60000/minute", description="per API key, in the notation of the limits library "
                            "(1,000 requests/s: a campaign system scores in bulk)")
    rate_limit_storage: str = Field("memory://", description="memory:// (per process) or redis://HOST:PORT/DB")
    reload_poll_seconds: float = Field(30.0, ge=0, description="0: no polling (POST /v1/admin/reload only)")
    opentelemetry: bool = Field(False, description="FastAPI's native OpenTelemetry (traces, metrics and logs "
                                "through the globally configured providers); off: it checks the providers on "
                                "every request even when none is configured")
    workbench_session_hours: float = Field(12.0, gt=0, le=24 * 7, description="RM workbench sign-in lifetime "
                                           "(absolute; hours)")
    workbench_login_rate_limit: str = Field("10/minute", description="failed sign-in attempts per client "
                                            "address (limits notation)")


def load_settings(path: Path | None = None) -> ServingSettings:
    """``path``, else ``configs/serving.yaml``, else the defaults. Raises ``ConfigError`` naming the field."""
    return load_yaml(ServingSettings, path, default_name="serving.yaml")
