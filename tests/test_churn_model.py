"""The churn model's choice between the network head and gradient boosting (issue 17)."""

from __future__ import annotations

import numpy as np

from training.churn import select, validation_split


def _xor(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Churn that depends on an interaction of two features (a linear model cannot see it) plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    logit = 2.5 * np.sign(x[:, 0] * x[:, 1]) - 1.0
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return x.astype(np.float32), y


def test_validation_split_is_stratified_and_empty_without_both_classes():
    y = np.r_[np.ones(50, bool), np.zeros(450, bool)]
    train, val = validation_split(y, 0.2, seed=1)
    assert len(val) == 100 and y[val].sum() == 10 and not set(train) & set(val)
    assert len(train) + len(val) == len(y)
    train, val = validation_split(np.r_[np.ones(3, bool), np.zeros(100, bool)])
    assert len(val) == 0 and len(train) == 103


def test_gradient_boosting_wins_where_the_head_is_linear():
    x, y = _xor(2000, 0)
    tr, va = validation_split(y, seed=0)
    linear_head = 1 / (1 + np.exp(-(x[va] @ np.r_[0.3, 0.3, 0, 0, 0, 0])))  # what a logistic layer can do
    sel = select(x[tr], y[tr], x[va], y[va], linear_head)
    assert sel.chosen == "gradient_boosting", sel.reason
    v = sel.validation
    assert v["gradient_boosting"]["roc_auc"] > v["gnn_head"]["roc_auc"] + 0.2
    assert v["gradient_boosting"]["roc_auc"] > v["logistic_regression"]["roc_auc"] + 0.2
    assert 0 <= v["gradient_boosting"]["ece"] < 0.1 and v["gradient_boosting"]["rows"] == len(va)
    p = sel.predict(x[:7], head=np.zeros(7, np.float32))
    assert p.shape == (7,) and ((p > 0) & (p < 1)).all()


def test_the_head_is_kept_when_it_validates_better():
    x, y = _xor(1500, 1)
    tr, va = validation_split(y, seed=0)
    oracle = np.where(y[va], 0.9, 0.1)  # a head that knows the answer
    sel = select(x[tr], y[tr], x[va], y[va], oracle)
    assert sel.chosen == "gnn_head" and "gnn_head 1.0000" in sel.reason and "too few" not in sel.reason
    head = np.full(3, 0.25, np.float32)
    assert sel.predict(x[:3], head) is head


def test_one_class_or_no_validation():
    x, y = _xor(300, 2)
    sel = select(x, np.zeros(len(y), bool), x[:0], y[:0], None)
    assert sel.chosen == "none" and sel.gradient_boosting is None
    sel = select(x, y, x[:0], y[:0], None)
    assert sel.chosen == "gradient_boosting" and "without comparison" in sel.reason


def test_a_choice_on_few_churners_says_so():
    x, y = _xor(400, 3)
    rng = np.random.default_rng(0)
    y = rng.random(len(y)) < 0.05  # about 4 churners in the validation share
    tr, va = validation_split(y, seed=0)
    sel = select(x[tr], y[tr], x[va], y[va], np.full(len(va), 0.05))
    assert f"({int(y[va].sum())} churners)" in sel.reason and "too few to tell the candidates apart" in sel.reason
