"""Config files: pydantic models in code (extra keys rejected), values in ``configs/*.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from nba.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load_yaml(model: type[M], path: Path | None, section: str | None = None,
              default_name: str = "features.yaml") -> M:
    """Validate ``path`` (or ``configs/<default_name>`` when it exists) into ``model``.

    With ``section``, only that top-level key is read. Errors name the file and the field path.
    """
    if path is None:
        path = CONFIG_DIR / default_name
        if not path.exists():
            return model()
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if section is not None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with a '{section}:' section")
        raw = raw.get(section, {}) or {}
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in ([section] if section else []) + list(err['loc']))}: {err['msg']}"
            for err in e.errors())
        raise ConfigError(f"{path}: {problems}") from None
