"""Public-benchmark protocols and loaders (issue 5): worked values and the Recommenders split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.errors import DataValidationError
from nba.metrics import ranking_metrics
from nba.ranking import top_k
from recsys_bench.datasets import detect_format, load
from recsys_bench.protocols import (
    lightgcn_all_ranking,
    recommenders_top_k,
    stratified_split,
)

# ../shared/datasets beside the repository (read in place), or NBA_DATASETS.
SHARED = Path(os.environ.get("NBA_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def test_map_at_k_worked_value():
    # user 0: ranked [0, 5, 1], relevant {0, 1, 2}: hits at ranks 1 and 3 -> (1/1 + 2/3) / 3
    m = ranking_metrics(np.array([[0, 5, 1]]), np.array([0, 0, 0]), np.array([0, 1, 2]), 10, ks=(3,),
                        with_map=True)
    assert m["map@3"] == pytest.approx((1 + 2 / 3) / 3)
    assert m["precision@3"] == pytest.approx(2 / 3) and m["recall@3"] == pytest.approx(2 / 3)
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / np.log2(4)) / ideal)


def _recommenders_reference(users, items, ratio=0.75, seed=42):
    """Recommenders' python_stratified_split(filter_by='user', is_random=True), re-stated with pandas."""
    data = pd.DataFrame({"userID": users, "itemID": items})
    np.random.seed(seed)
    data["random"] = np.random.rand(data.shape[0])
    data = data.sort_values(["userID", "random"])
    groups = data.groupby("userID")
    data["count"] = groups["userID"].transform("count")
    data["rank"] = groups.cumcount() + 1
    train = data[data["rank"] <= round(ratio * data["count"])]
    return set(train.index)


def test_stratified_split_matches_recommenders():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 2000)
    items = rng.integers(0, 300, 2000)
    mask = stratified_split(users, items)
    assert set(np.flatnonzero(mask)) == _recommenders_reference(users, items)
    # round half to even, per user: 4 ratings -> 3 train, 2 -> 2 (1.5 rounds to 2), 3 -> 2 (2.25)
    u = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    m = stratified_split(u, np.arange(9))
    assert [m[u == k].sum() for k in range(3)] == [3, 2, 2]


def test_top_k_masks_training_items_and_ranks():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    top = top_k(lambda b: scores[b], np.array([0, 1]), 4, 2, np.array([0, 1]), np.array([1, 0]))
    assert top.tolist() == [[3, 2], [1, 2]]
    # a user with fewer than k other items: the excluded ones come last, scored -inf
    top, vals = top_k(lambda b: scores[b], np.array([0]), 4, 4, np.array([0, 0, 0]), np.array([1, 2, 3]),
                      return_scores=True)
    assert top[0, 0] == 0 and vals[0, 0] == pytest.approx(0.1) and np.isneginf(vals[0, 1:]).all()


def test_protocols_on_a_worked_example():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    fn = lambda b: scores[b]
    train_u, train_i = np.array([0, 1]), np.array([1, 0])
    test_u, test_i = np.array([0, 1, 1]), np.array([2, 3, 1])
    m = lightgcn_all_ranking(fn, train_u, train_i, test_u, test_i, 4, k=2)
    # user 0: top [3, 2], relevant {2} -> recall 1, ndcg 1/log2(3); user 1: top [1, 2], relevant {3, 1}
    assert m["recall@2"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@2"] == pytest.approx(((1 / np.log2(3)) + 1 / (1 + 1 / np.log2(3))) / 2)
    r = recommenders_top_k(fn, train_u, train_i, test_u, test_i, 4, k=2)
    assert r["precision@2"] == pytest.approx(0.5) and r["map@2"] == pytest.approx((0.5 + 0.5) / 2)


def test_loaders_read_the_shared_datasets_in_place():
    if not (SHARED / "ml-1m").is_dir():
        pytest.skip(f"shared datasets not present at {SHARED}")
    ml1m = load(SHARED / "ml-1m")
    assert ml1m.format == "lightgcn" and len(ml1m.train) == 590_733 and ml1m.valid is not None
    ml100k = load(SHARED / "ml-100k")
    assert ml100k.format == "movielens" and len(ml100k.ratings) == 100_000
    assert ml100k.num_users == 943 and ml100k.num_items == 1682
    assert ml100k.user_x.shape[0] == 943 and ml100k.item_x.shape == (1682, 19)


def test_lightgcn_format_errors_name_file_line_and_column(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2\n1 3 x4\n")
    (tmp_path / "test.txt").write_text("0 3\n")
    assert detect_format(tmp_path) == "lightgcn"
    with pytest.raises(DataValidationError, match=r"train.txt, row 2 \(line 2\), column '3': 'x4'"):
        load(tmp_path)
    (tmp_path / "train.txt").write_text("0 1 2\n1 3\n")
    ds = load(tmp_path)
    assert ds.num_users == 2 and ds.num_items == 4 and ds.train.items.tolist() == [1, 2, 3]
    with pytest.raises(DataValidationError, match="unknown dataset layout"):
        detect_format(tmp_path / "..")
