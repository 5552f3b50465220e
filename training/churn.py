"""The churn model: P(a client who holds products at as_of closes every one within the horizon).

Churn drives retention offers, the health score and RM priorities, so the bundle gets the better of two
candidates fitted on the same churn examples (encoded features a horizon before as_of, labelled with
what followed; former clients left out) and compared on the same held-out validation share:

- ``gnn_head``: the network's churn head, trained with the ranking loss (``training.loop``);
- ``gradient_boosting``: scikit-learn's ``HistGradientBoostingClassifier`` on the same encoded features
  (tabular gradient boosting, the strongest plain baseline on such data: on a public bank export it
  scored ROC AUC 0.826 against 0.70-0.79 for the head, issue 17).

The one with the higher validation ROC AUC is chosen (a tie keeps gradient boosting, the simpler model
to audit). Both figures, and logistic regression's as a reference, are returned for the run's log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nba.metrics import average_precision, calibration, roc_auc

CANDIDATES = ("gnn_head", "gradient_boosting")
MIN_VALIDATION_CHURNERS = 20  # below this, the choice is reported as weak
VALIDATION_SHARE = 0.2


def validation_split(y: np.ndarray, share: float = VALIDATION_SHARE, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation) of churn examples ``y`` ``[n]`` (bool), stratified by the label.
    Without at least 5 examples of each class the validation share is empty (nothing to choose on)."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(y, bool)
    idx = np.arange(len(y))
    if min(int(y.sum()), int((~y).sum())) < 5:
        return idx, idx[:0]
    train, val = train_test_split(idx, test_size=share, random_state=seed, stratify=y)
    return np.sort(train), np.sort(val)


def fit_gradient_boosting(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """``HistGradientBoostingClassifier`` on encoded features ``x`` ``[n, f]`` and labels ``y`` ``[n]``;
    None when ``y`` holds one class only. Early stopping on an internal 15% split when n >= 1,000."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return None
    model = HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=500, max_leaf_nodes=31, min_samples_leaf=20, l2_regularization=1.0,
        early_stopping=len(y) >= 1000, validation_fraction=0.15, n_iter_no_change=30, random_state=seed)
    return model.fit(x, y)


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """The reference: standardised logistic regression (L2, C=1); None for one class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return None
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(x, y)


@dataclass
class ChurnSelection:
    """The chosen candidate, each candidate's validation figures (ROC AUC, PR AUC, ECE, rows) and the
    fitted gradient-boosting model (None when it could not be fitted)."""

    chosen: str
    validation: dict[str, dict] = field(default_factory=dict)
    gradient_boosting: object | None = None
    reason: str = ""

    def predict(self, x: np.ndarray, head: np.ndarray | None) -> np.ndarray | None:
        """Churn probabilities ``[n]`` of encoded rows ``x`` ``[n, f]``: the chosen model's; ``head``:
        the network head's probabilities for the same rows (used when it was chosen)."""
        if self.chosen == "gradient_boosting" and self.gradient_boosting is not None:
            return self.gradient_boosting.predict_proba(x)[:, 1].astype(np.float32)
        return head


def _figures(y: np.ndarray, p: np.ndarray) -> dict:
    return {"roc_auc": roc_auc(y, p), "pr_auc": average_precision(y, p),
            "ece": calibration(y, p)["ece"], "rows": int(len(y))}


def select(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
           head_val: np.ndarray | None, seed: int = 0) -> ChurnSelection:
    """Fit gradient boosting (and the logistic-regression reference) on the training examples and choose
    between it and the network head (``head_val``: its probabilities ``[n_val]`` on ``x_val``, or None
    without a head) by ROC AUC on the validation examples ``y_val`` ``[n_val]``."""
    y_train, y_val = np.asarray(y_train, bool), np.asarray(y_val, bool)
    gbm = fit_gradient_boosting(x_train, y_train, seed)
    out = ChurnSelection(chosen="gradient_boosting" if gbm is not None else "gnn_head", gradient_boosting=gbm)
    if not len(y_val) or y_val.all() or not y_val.any():
        out.reason = "no validation examples of both classes: gradient boosting kept without comparison" \
            if gbm is not None else "gradient boosting could not be fitted (one class): the network head kept"
        if gbm is None and head_val is None:
            out.chosen, out.reason = "none", "no churn model: the churn examples hold one class only"
        return out
    if gbm is not None:
        out.validation["gradient_boosting"] = _figures(y_val, gbm.predict_proba(x_val)[:, 1])
    if head_val is not None:
        out.validation["gnn_head"] = _figures(y_val, head_val)
    lr = fit_logistic_regression(x_train, y_train, seed)
    if lr is not None:
        out.validation["logistic_regression"] = _figures(y_val, lr.predict_proba(x_val)[:, 1])
    auc = {k: v["roc_auc"] for k, v in out.validation.items() if k in CANDIDATES}
    if not auc:
        out.chosen, out.reason = "none", "no churn model could be fitted"
        return out
    best = max(auc.values())
    out.chosen = "gradient_boosting" if auc.get("gradient_boosting") == best else max(auc, key=auc.get)
    churners = int(y_val.sum())
    out.reason = (f"validation ROC AUC on {len(y_val):,} examples ({churners:,} churners): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in sorted(auc.items())))
    if churners < MIN_VALIDATION_CHURNERS:
        out.reason += (f"; only {churners} churners held out, too few to tell the candidates apart "
                       f"(the ROC AUC moves by about 1/{churners} per churner)")
    return out


__all__ = ["CANDIDATES", "ChurnSelection", "fit_gradient_boosting", "fit_logistic_regression", "select",
           "validation_split"]
