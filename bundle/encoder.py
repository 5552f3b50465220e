"""The feature encoder: customer feature rows -> the model's numeric inputs, fitted once in training.

Its fitted statistics travel in the bundle (``encoder.json``) so that whoever encodes features later
(serving a client the model has not seen, the next training's churn examples) encodes exactly as the
training run did. NumPy and pandas only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nba import features as F

# Columns that are identifiers, free text or evidence, never model inputs.
_NOT_INPUTS = {"customer_id", "as_of", "rm_id", "held_products", "declined_actions_90d", "state_evidence"}
_CATEGORICAL = ("segment", "income_band", "lifecycle_stage", "complaint_state", "emotional_state")


@dataclass
class FeatureEncoder:
    """Numeric features -> signed log1p -> standardised; categoricals -> one-hot; missing -> 0 + flag.

    Fitted statistics travel with the model bundle so serving encodes exactly as training did.
    """

    numeric: list[str]
    categorical: dict[str, list[str]]
    mean: np.ndarray
    std: np.ndarray
    flags: list[str]

    @classmethod
    def fit(cls, df: pd.DataFrame) -> FeatureEncoder:
        numeric = [c for c in df.columns if c not in _NOT_INPUTS and c not in _CATEGORICAL
                   and c in F.COLUMNS and F.FEATURES.get(c, F.STATE.get(c, ("str",)))[0] in ("int", "float", "bool")]
        categorical = {c: sorted(map(str, df[c].dropna().unique())) for c in _CATEGORICAL if c in df}
        flags = [c for c in numeric if df[c].isna().any()]
        raw = cls._raw(df, numeric)
        return cls(numeric, categorical, np.nanmean(raw, axis=0), np.nanstd(raw, axis=0) + 1e-6, flags)

    @staticmethod
    def _raw(df: pd.DataFrame, numeric: list[str]) -> np.ndarray:
        x = df[numeric].apply(pd.to_numeric, errors="coerce").astype("float64").to_numpy()
        return np.sign(x) * np.log1p(np.abs(x))

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        x = (self._raw(df, self.numeric) - self.mean) / self.std
        missing = np.isnan(x)
        x = np.nan_to_num(x, nan=0.0)
        parts = [x, missing[:, [self.numeric.index(c) for c in self.flags]].astype("float64")]
        for col, values in self.categorical.items():
            parts.append((df[col].astype(str).to_numpy()[:, None] == np.array(values)[None, :]).astype("float64"))
        return np.concatenate(parts, axis=1).astype(np.float32)

    @property
    def names(self) -> list[str]:
        return (self.numeric + [f"{c}_missing" for c in self.flags]
                + [f"{c}={v}" for c, vals in self.categorical.items() for v in vals])

    def to_dict(self) -> dict:
        """The fitted statistics as JSON-ready values (``encoder.json`` in the bundle)."""
        return {"numeric": self.numeric, "categorical": self.categorical, "mean": self.mean.tolist(),
                "std": self.std.tolist(), "flags": self.flags}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureEncoder:
        return cls(d["numeric"], d["categorical"], np.array(d["mean"]), np.array(d["std"]), d["flags"])
