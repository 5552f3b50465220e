"""One code path for CPU and GPU: every stage asks here which device to use."""

from __future__ import annotations

import os

import torch

from nba.errors import ConfigError

ENV_VAR = "NBA_DEVICE"


def resolve_device(requested: str | None = None) -> torch.device:
    """``requested`` (or ``$NBA_DEVICE``), else CUDA when present, else CPU.

    Asking for CUDA on a machine without it is an error, not a silent fallback.
    """
    name = requested or os.environ.get(ENV_VAR) or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r} (expected cpu, cuda or cuda:N)")
    return device
