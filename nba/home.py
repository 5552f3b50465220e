"""``NBA_HOME``: the one data directory every command works in.

It holds the table store, features, MLflow's database and artifacts, indexes, outputs and keys. Nothing
is written elsewhere. Resolution order: explicit ``--home``, then ``$NBA_HOME``, then ``./.nba``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "NBA_HOME"
DEFAULT = ".nba"


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> Home:
        raw = home if home is not None else os.environ.get(ENV_VAR) or DEFAULT
        return cls(Path(raw).expanduser().resolve())

    def ensure(self) -> Home:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def store(self) -> Path:
        """Versioned Parquet snapshots of the contract tables."""
        return self.root / "store"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def indexes(self) -> Path:
        return self.root / "indexes"

    @property
    def daily(self) -> Path:
        return self.root / "daily"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def synthetic(self) -> Path:
        """Where ``nba demo`` writes its generated bank before ingesting it."""
        return self.root / "synthetic"
