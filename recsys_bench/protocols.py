"""Evaluation protocols of the public recommender benchmarks, each implemented once.

- :func:`lightgcn_all_ranking`: the LightGCN paper's protocol. Score every item for every user with
  test items, mask the user's training items, and average recall@K and NDCG@K (binary relevance, ideal
  DCG over min(|test|, K) items) over those users.
- :func:`stratified_split` + :func:`recommenders_top_k`: Microsoft Recommenders' MovieLens protocol.
  A per-user stratified random split (``python_stratified_split(ratio=0.75, seed=42)``: one uniform
  random number per rating from ``np.random.seed(seed)``, ratings ordered by user then that number, and
  the first ``round(0.75 * n_user)`` of each user go to train), then top-10 with the user's training
  items removed: precision, recall, NDCG and MAP at 10, averaged over the test users. MAP is
  Recommenders' classic ``map_at_k``: the sum of precision at each hit, divided by the user's number
  of relevant items.
"""

from __future__ import annotations

import numpy as np

from nba.metrics import ranking_metrics
from nba.ranking import ScoreFn, top_k


def stratified_split(users: np.ndarray, items: np.ndarray, ratio: float = 0.75,
                     seed: int = 42) -> np.ndarray:
    """Boolean mask over the ratings: True = train. Same assignment as Recommenders' splitter."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), not {ratio}")
    np.random.seed(seed)
    r = np.random.rand(len(users))
    order = np.lexsort((r, users))  # by user, then by the random number
    su = users[order]
    count = np.bincount(users)[su]
    first = np.r_[0, np.flatnonzero(np.diff(su)) + 1]
    rank = np.arange(len(su)) - np.repeat(first, np.diff(np.r_[first, len(su)])) + 1
    # Python's round() is banker's rounding, as pandas .round() and np.round are: match it exactly.
    train_sorted = rank <= np.round(ratio * count)
    mask = np.empty(len(users), bool)
    mask[order] = train_sorted
    return mask


def _evaluate(score_fn: ScoreFn, train_u, train_i, test_u, test_i, n_items: int, ks: tuple[int, ...],
              with_map: bool) -> dict[str, float]:
    users = np.unique(test_u)
    top = top_k(score_fn, users, n_items, max(ks), train_u, train_i)
    look = np.full(int(max(users.max(), test_u.max())) + 1, -1)
    look[users] = np.arange(len(users))
    return ranking_metrics(top, look[test_u], test_i, n_items, ks=ks, with_map=with_map)


def lightgcn_all_ranking(score_fn: ScoreFn, train_u, train_i, test_u, test_i, n_items: int,
                         k: int = 20) -> dict[str, float]:
    m = _evaluate(score_fn, train_u, train_i, test_u, test_i, n_items, (k,), with_map=False)
    return {f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"], "users_evaluated": m["users_evaluated"]}


def recommenders_top_k(score_fn: ScoreFn, train_u, train_i, test_u, test_i, n_items: int,
                       k: int = 10) -> dict[str, float]:
    m = _evaluate(score_fn, train_u, train_i, test_u, test_i, n_items, (k,), with_map=True)
    return {f"precision@{k}": m[f"precision@{k}"], f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"],
            f"map@{k}": m[f"map@{k}"], "users_evaluated": m["users_evaluated"]}
