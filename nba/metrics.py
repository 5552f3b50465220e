"""Ranking and classification metrics, implemented once and tested with worked values.

Ranking metrics take a top-K list per user (``topk``, ``[n_users, K]`` item indices, best first) and the
relevant items as pairs (``truth_users``, ``truth_items``); users without relevant items are left out
of the averages (the LightGCN / Recommenders convention).

- ``recall@K = hits / |relevant|``
- ``precision@K = hits / K``
- ``ndcg@K = DCG / IDCG`` with gains ``1 / log2(rank + 2)`` and ``IDCG`` over ``min(|relevant|, K)`` items.

A top-K list cannot be longer than the catalogue: callers cap every K at the number of items with
:func:`cap_ks` / :func:`capped_metric`, and a K above the catalogue size is then evaluated at the catalogue
size and reported under that K's name (``recall@10`` on a 5-product catalogue is ``recall@5``), so a
metric's name always states the cut-off it was computed at.
"""

from __future__ import annotations

import numpy as np


def cap_ks(ks, n_items: int) -> list[int]:
    """The cut-offs ``ks`` with each K capped at the catalogue size ``n_items``, sorted and without
    duplicates (``[1, 3, 5, 10]`` with 5 items gives ``[1, 3, 5]``). Raises ``ValueError`` when
    ``n_items`` or a K is below 1."""
    ks = [int(k) for k in ks]
    if n_items < 1:
        raise ValueError(f"cannot rank a catalogue of {n_items} items")
    if not ks or min(ks) < 1:
        raise ValueError(f"cut-offs must be at least 1, got {ks}")
    return sorted({min(k, n_items) for k in ks})


def metric_k(name: str) -> int | None:
    """The cut-off of a ranking metric's name (``"recall@10"`` -> 10), or None for a name without one."""
    kind, sep, k = name.partition("@")
    if not sep:
        return None
    if not kind or not k.isdigit() or int(k) < 1:
        raise ValueError(f"metric {name!r}: expected <name>@<K> with K >= 1")
    return int(k)


def capped_metric(name: str, n_items: int) -> str:
    """``name`` with its K capped at ``n_items`` (``"recall@10"``, 5 items -> ``"recall@5"``); names
    without a cut-off are returned as they are."""
    k = metric_k(name)
    return name if k is None else f"{name.partition('@')[0]}@{cap_ks([k], n_items)[0]}"


def _hits(topk: np.ndarray, truth_users: np.ndarray, truth_items: np.ndarray, n_items: int) -> np.ndarray:
    """``[n_users, K]`` booleans: is the item at each rank relevant to that user."""
    codes = np.unique(truth_users.astype(np.int64) * n_items + truth_items.astype(np.int64))
    users = np.arange(topk.shape[0], dtype=np.int64)[:, None]
    q = users * n_items + topk.astype(np.int64)
    pos = np.searchsorted(codes, q)
    pos = np.minimum(pos, len(codes) - 1) if len(codes) else pos
    return (codes[pos] == q) if len(codes) else np.zeros(topk.shape, bool)


def ranking_metrics(topk: np.ndarray, truth_users: np.ndarray, truth_items: np.ndarray, n_items: int,
                    ks: tuple[int, ...] = (10, 20), with_map: bool = False) -> dict[str, float]:
    """recall@K, precision@K and ndcg@K for each K in ``ks`` (K <= topk.shape[1]), averaged over the
    users with at least one relevant item; with ``with_map``, also map@K: the sum of precision at each
    hit within K divided by the user's number of relevant items (Recommenders' classic ``map_at_k``).

    ``topk`` is ``[n_users, L]`` item indices; ``truth_users`` / ``truth_items`` are ``[n]`` rows of
    ``topk`` and item indices. Raises ``ValueError`` when a K exceeds ``L`` (cap the ks at the catalogue
    size first: :func:`cap_ks`) or when no user has a relevant item. Returns the metrics by name
    (``"recall@5"``...) and ``users_evaluated``."""
    topk = np.asarray(topk)
    truth_users, truth_items = np.asarray(truth_users), np.asarray(truth_items)
    if topk.ndim != 2:
        raise ValueError(f"topk must be [n_users, K], got shape {topk.shape}")
    if max(ks) > topk.shape[1]:
        raise ValueError(f"asked for @{max(ks)} but topk holds only {topk.shape[1]} items per user "
                         f"(cap K at the catalogue size: nba.metrics.cap_ks)")
    n_users = topk.shape[0]
    pairs = np.unique(truth_users.astype(np.int64) * n_items + truth_items.astype(np.int64))
    n_rel = np.bincount((pairs // n_items).astype(np.int64), minlength=n_users)[:n_users]
    evaluated = n_rel > 0
    if not evaluated.any():
        raise ValueError("no user has a relevant item: nothing to evaluate")
    hits = _hits(topk, truth_users, truth_items, n_items)
    out: dict[str, float] = {}
    gains = 1.0 / np.log2(np.arange(topk.shape[1]) + 2)
    for k in ks:
        h = hits[:, :k][evaluated]
        rel = n_rel[evaluated]
        n_hit = h.sum(axis=1)
        dcg = (h * gains[:k]).sum(axis=1)
        ideal = np.cumsum(gains[:k])[np.minimum(rel, k) - 1]
        out[f"recall@{k}"] = float(np.mean(n_hit / rel))
        out[f"precision@{k}"] = float(np.mean(n_hit / k))
        out[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
        if with_map:
            prec_at_hit = np.cumsum(h, axis=1) / np.arange(1, k + 1) * h
            out[f"map@{k}"] = float(np.mean(prec_at_hit.sum(axis=1) / rel))
    out["users_evaluated"] = int(evaluated.sum())
    return out


def _binary(y_true: np.ndarray, score: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"{what}: labels {y.shape} and scores {s.shape} must be two vectors of one length")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(f"{what} needs both classes (positives {n_pos}, negatives {len(y) - n_pos})")
    return y, s


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve ([n] labels, [n] scores; ties count half), by scikit-learn's
    ``roc_auc_score``. Raises ``ValueError`` unless both classes are present."""
    from sklearn.metrics import roc_auc_score
    y, s = _binary(y_true, score, "ROC AUC")
    return float(roc_auc_score(y, s))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """PR AUC as average precision, ``sum_n (R_n - R_{n-1}) P_n`` over score thresholds (tied scores form
    one threshold, so the result does not depend on input order), by scikit-learn's
    ``average_precision_score``. Raises ``ValueError`` unless both classes are present."""
    from sklearn.metrics import average_precision_score
    y, s = _binary(y_true, score, "average precision")
    return float(average_precision_score(y, s))


def calibration(y_true: np.ndarray, prob: np.ndarray, bins: int = 10) -> dict:
    """Reliability table (mean predicted vs observed per probability bin) and expected calibration error."""
    y = np.asarray(y_true).astype(float)
    p = np.clip(np.asarray(prob, dtype=float), 0, 1)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            table.append({"bin": b, "n": int(m.sum()), "predicted": float(p[m].mean()), "observed": float(y[m].mean())})
            ece += m.mean() * abs(p[m].mean() - y[m].mean())
    return {"ece": float(ece), "bins": table}
