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


MAX_EXTENSION_LEVELS = 50  # a text extension column is one-hot over at most this many of its values


def _kind(name: str, values: pd.Series) -> str | None:
    """The type of a feature column: from ``nba.features``; for the bank's extension columns (``x_<name>``,
    declared in ``configs/bank.yaml``) from its values: numbers and booleans are numeric, the rest text."""
    if name in F.COLUMNS:
        return F.FEATURES.get(name, F.STATE.get(name, ("str",)))[0]
    if F.is_extension(name):
        numeric = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values) \
            or pd.api.types.infer_dtype(values, skipna=True) in ("boolean", "integer", "floating", "mixed-integer-float")
        return "float" if numeric else "str"
    return None


def _levels(values: pd.Series) -> list[str]:
    """The most frequent values of a text extension column (at most :data:`MAX_EXTENSION_LEVELS`), sorted."""
    return sorted(map(str, values.dropna().astype(str).value_counts().index[:MAX_EXTENSION_LEVELS]))


@dataclass
class FeatureEncoder:
    """Numeric features -> signed log1p -> standardised; categoricals -> one-hot; missing -> 0 + flag.

    Fitted statistics travel with the model bundle so serving encodes exactly as training did. A numeric
    column that is null in every fitted row (a bank that lacks the table it comes from) gets mean 0 and
    std 1 and a missing flag, without a warning: it encodes as 0 with the flag set until it has values.
    """

    numeric: list[str]
    categorical: dict[str, list[str]]
    mean: np.ndarray
    std: np.ndarray
    flags: list[str]

    @classmethod
    def fit(cls, df: pd.DataFrame) -> FeatureEncoder:
        """Fit on a feature frame (one row per customer, the columns of ``nba.features``): the numeric
        inputs' mean and std after the signed log1p (``[n_numeric]`` each; 0 and 1 for a column without
        a value), the categories seen, and a missing flag for every numeric column with a null."""
        numeric = [c for c in df.columns if c not in _NOT_INPUTS and c not in _CATEGORICAL
                   and _kind(c, df[c]) in ("int", "float", "bool")]
        categorical = {c: sorted(map(str, df[c].dropna().unique())) for c in _CATEGORICAL if c in df}
        categorical |= {c: _levels(df[c]) for c in df.columns if F.is_extension(c) and _kind(c, df[c]) == "str"}
        flags = [c for c in numeric if df[c].isna().any()]
        raw = cls._raw(df, numeric)
        # nanmean/nanstd by hand: an all-null column has no mean (np.nanmean warns "Mean of empty slice")
        seen = ~np.isnan(raw)
        n = seen.sum(axis=0)
        filled = np.where(seen, raw, 0.0)
        mean = np.divide(filled.sum(axis=0), n, out=np.zeros(raw.shape[1]), where=n > 0)
        var = np.divide((np.where(seen, raw - mean, 0.0) ** 2).sum(axis=0), n, out=np.zeros(raw.shape[1]), where=n > 0)
        std = np.where(n > 0, np.sqrt(var) + 1e-6, 1.0)
        return cls(numeric, categorical, mean, std, flags)

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
