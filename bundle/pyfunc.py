"""The MLflow pyfunc face of a bundle, logged by training: ``mlflow.pyfunc.load_model`` gives a model
that scores customers. Imported only where a model is logged or loaded through MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from .format import BundleError, read_bundle


class NBAPyfunc(mlflow.pyfunc.PythonModel):
    """Input: a frame with ``customer_id`` (param ``k``, default 5). Output: the top products per customer
    (customer_id, rank, product_id, score) and the churn probability over the horizon."""

    def load_context(self, context):
        self.bundle = read_bundle(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "customer_id" not in model_input:
            raise BundleError("input needs a 'customer_id' column")
        k = int((params or {}).get("k", 5))
        out = self.bundle.recommend(model_input["customer_id"].astype(str).tolist(), k)
        if self.bundle.churn is not None:
            idx = self.bundle.rows_of(out["customer_id"].tolist())
            out["churn_probability"] = self.bundle.churn[idx].astype(float)
        return out
