"""The one top-K of the project: validation, backtests, the benchmarks and the bundle's recommendations.

NumPy only at import: a score function that returns a torch tensor is ranked by ``torch.topk`` where the
tensor lives (GPU when there is one), without this module importing torch for the NumPy callers (the
bundle reader and serving).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray], "np.ndarray"]  # user rows [b] -> scores [b, n_items] (NumPy or torch)


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def top_k(score_fn: ScoreFn, users: np.ndarray, n_items: int, k: int, exclude_users: np.ndarray,
          exclude_items: np.ndarray, chunk: int = 2048, return_scores: bool = False):
    """``[len(users), k]`` item rows, best first, never an excluded (user, item) pair unless a user has
    fewer than ``k`` others (those come last, scored ``-inf``). Which of several items tied at the cut
    gets in is unspecified.

    The one top-K of the project: validation, backtests, the benchmarks and the bundle use it.
    ``score_fn`` may return a NumPy array or a torch tensor (on any device): tensors are masked and
    ranked by ``torch.topk`` where they are (GPU when there is one, all CPU threads otherwise), arrays by
    ``np.argpartition``. With ``return_scores`` it also returns the ``[len(users), k]`` scores.
    """
    users = np.asarray(users, dtype=np.int64)
    codes = np.unique(np.asarray(exclude_users, np.int64) * n_items + np.asarray(exclude_items, np.int64))
    kk = min(k, n_items)
    out, vals = [], []
    for start in range(0, len(users), chunk):
        batch = users[start:start + chunk]
        lo = np.searchsorted(codes, batch * n_items)
        hi = np.searchsorted(codes, (batch + 1) * n_items)
        rows = np.repeat(np.arange(len(batch)), hi - lo)
        cols = (codes[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])] % n_items if len(rows)
                else np.zeros(0, np.int64))
        scores = score_fn(batch)
        if _is_torch(scores):
            torch = sys.modules["torch"]  # a tensor in hand means torch is loaded: no import here

            scores = scores.float().clone()
            scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)] = float("-inf")
            v, top = torch.topk(scores, kk, dim=1)
            out.append(top.cpu().numpy())
            vals.append(v.cpu().numpy())
            continue
        scores = np.array(scores, copy=True)
        if not np.issubdtype(scores.dtype, np.floating):
            scores = scores.astype(np.float64)
        scores[rows, cols] = -np.inf
        part = np.sort(np.argpartition(-scores, kk - 1, axis=1)[:, :kk], axis=1)
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, 1)
        out.append(top)
        vals.append(np.take_along_axis(scores, top, 1))
    idx = np.concatenate(out) if out else np.zeros((0, kk), np.int64)
    if return_scores:
        return idx, (np.concatenate(vals) if vals else np.zeros((0, kk)))
    return idx
