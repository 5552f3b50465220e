"""Metrics: perfect case, zero case and one worked value each."""

import math

import numpy as np
import pytest

from nba.metrics import average_precision, calibration, ranking_metrics, roc_auc


def test_perfect_and_zero_rankings():
    topk = np.array([[0, 1], [2, 3]])
    perfect = ranking_metrics(topk, np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]), n_items=4, ks=(2,))
    assert perfect["recall@2"] == perfect["ndcg@2"] == perfect["precision@2"] == 1.0
    zero = ranking_metrics(topk, np.array([0, 1]), np.array([3, 0]), n_items=4, ks=(2,))
    assert zero["recall@2"] == zero["ndcg@2"] == 0.0


def test_worked_value():
    # user 0: relevant {1, 5}; top-3 [1, 2, 5] -> hits at ranks 0 and 2
    # user 1: relevant {4}; top-3 [0, 4, 3] -> hit at rank 1
    # user 2: no relevant items: not evaluated
    topk = np.array([[1, 2, 5], [0, 4, 3], [0, 1, 2]])
    m = ranking_metrics(topk, np.array([0, 0, 1]), np.array([1, 5, 4]), n_items=6, ks=(1, 3))
    assert m["users_evaluated"] == 2
    assert m["recall@3"] == pytest.approx((2 / 2 + 1 / 1) / 2)
    assert m["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    ndcg0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg1 = (1 / math.log2(3)) / 1
    assert m["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)


def test_bad_ranking_input_is_named():
    with pytest.raises(ValueError, match="topk holds only 2"):
        ranking_metrics(np.zeros((2, 2), int), np.array([0]), np.array([1]), 3, ks=(5,))
    with pytest.raises(ValueError, match="no user has a relevant item"):
        ranking_metrics(np.zeros((2, 2), int), np.array([], int), np.array([], int), 3, ks=(2,))


def test_roc_auc_and_average_precision():
    y = np.array([1, 0, 1, 0])
    assert roc_auc(y, np.array([0.9, 0.1, 0.8, 0.2])) == 1.0
    assert roc_auc(y, np.array([0.1, 0.9, 0.2, 0.8])) == 0.0
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    # scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): AUC = 3/4; AP = (1/1 + 2/3) / 2
    s = np.array([0.9, 0.1, 0.7, 0.8])
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_tied_scores_match_scikit_learn_whatever_the_order():
    """Tied scores form one threshold: the order of the input must not change AP or AUC (the earlier
    hand-written AP gave 0.4041 and 0.4049 for two orders of the same data, scikit-learn 0.3886)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.random(2000) < 0.2
    s = np.round(rng.random(2000) + 0.3 * y, 1)  # a tenth-step grid: many ties
    want_ap, want_auc = average_precision_score(y, s), roc_auc_score(y, s)
    for seed in range(3):
        p = np.random.default_rng(seed).permutation(len(y))
        assert average_precision(y[p], s[p]) == pytest.approx(want_ap, abs=1e-12)
        assert roc_auc(y[p], s[p]) == pytest.approx(want_auc, abs=1e-12)
    # One worked value with a tie: scores 0.8(+) 0.8(-) 0.1(+): thresholds 0.8 (P 1/2, R 1/2), 0.1 (P 2/3, R 1)
    assert average_precision(np.array([1, 0, 1]), np.array([0.8, 0.8, 0.1])) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    with pytest.raises(ValueError, match="both classes"):
        average_precision(np.array([0, 0]), np.array([0.2, 0.3]))


def test_calibration():
    c = calibration(np.array([0, 1, 0, 1]), np.array([0.05, 0.95, 0.05, 0.95]), bins=10)
    assert c["ece"] == pytest.approx(0.05)
    assert [b["n"] for b in c["bins"]] == [2, 2]


def test_ks_are_capped_at_the_catalogue_size():
    from nba.metrics import cap_ks, capped_metric, metric_k
    assert cap_ks([1, 3, 5, 10], 5) == [1, 3, 5]
    assert cap_ks([10, 1, 3], 22) == [1, 3, 10]
    assert capped_metric("recall@10", 5) == "recall@5" and capped_metric("ndcg@3", 5) == "ndcg@3"
    assert capped_metric("loss", 5) == "loss" and metric_k("loss") is None
    with pytest.raises(ValueError, match="at least 1"):
        cap_ks([0, 3], 5)
    with pytest.raises(ValueError, match="catalogue"):
        cap_ks([3], 0)
    with pytest.raises(ValueError, match="K >= 1"):
        metric_k("recall@x")
    # capped cut-offs make a 5-item top list evaluable at the default ks
    topk = np.array([[0, 1, 2, 3, 4]])
    m = ranking_metrics(topk, np.array([0]), np.array([4]), 5, ks=tuple(cap_ks([1, 3, 5, 10], 5)))
    assert m["recall@5"] == 1.0 and "recall@10" not in m
