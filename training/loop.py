"""The training loop as a plain function: runs alone (quick experiments, GPU measurements) and is the
function Ray Train's ``TorchTrainer`` will run per worker.

``train_loop(cfg, data)`` trains ``HybridGNN`` on user-item pairs. Each step propagates the full graph
(sparse products) and takes a large batch of positive pairs. Two objectives:

- ``loss="bpr"`` (the bank default): one negative per positive, sampled uniformly and re-drawn when it
  hits a known positive, with declined items mixed in as hard negatives.
- ``loss="softmax"``: the cross-entropy of each positive against the whole catalogue (or against
  ``negatives`` items shared by the step, with the log(n_items / n_negatives) correction). A step's
  positives are grouped by user, so a user's logits are computed once for all its positives: an epoch
  costs about users x items products, not positives x items. On the public benchmarks it beats BPR.

Validation ranking runs each ``eval_every`` epochs, with early stopping on ``early_stop_metric``.
Seeds make CPU runs repeatable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from nba.metrics import ranking_metrics
from nba.ranking import top_k
from training.device import resolve_device

from .model import HybridGNN, normalized_adjacency


class TrainConfig(BaseModel):
    """Model and optimisation settings; the defaults are the project's model on the bank graph."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field("nba", pattern="^(nba|lightgcn)$", description="nba: graph + features; lightgcn: IDs only")
    dim: int = Field(64, ge=4, le=1024)
    layers: int = Field(2, ge=0, le=6)
    hidden: int = Field(0, ge=0, description="hidden width of the feature encoders (0: linear)")
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0, description="L2 on layer-0 embeddings of the batch (BPR reg)")
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(8192, ge=16, description="positives per step and worker (at most)")
    min_steps_per_epoch: int = Field(8, ge=1, description=(
        "smaller batches when an epoch would otherwise take fewer steps (small graphs)"))
    id_dropout: float = Field(0.0, ge=0, lt=1, description="share of user ID embeddings zeroed per step")
    user_ids: bool = Field(False, description=(
        "learn a free embedding per user; off, a user is its features plus its graph neighbourhood "
        "(the kind 'lightgcn' always has them)"))
    item_bias: bool = Field(True, description="learned per-item score offset (carries popularity)")
    target_share: float = Field(0.3, ge=0, lt=1, description=(
        "masked-edge training: each epoch this share of the positive edges leaves the graph and becomes "
        "the BPR targets, so the model learns to predict links it cannot see (0: classic LightGCN)"))
    hard_negative_share: float = Field(0.2, ge=0, le=1)
    loss: str = Field("bpr", pattern="^(bpr|softmax)$", description=(
        "bpr: one sampled negative per positive; softmax: cross-entropy of each positive against "
        "`negatives` items shared by the batch (all items when `negatives` is 0 or >= the catalogue)"))
    negatives: int = Field(1024, ge=0, description="shared negatives per step for loss=softmax")
    churn_weight: float = Field(1.0, ge=0)
    eval_every: int = Field(1, ge=1)
    patience: int = Field(5, ge=1)
    early_stop_metric: str = "recall@5"
    topk: int = Field(10, ge=1)
    seed: int = 0
    device: str | None = None


@dataclass
class InteractionData:
    """Everything the loop needs, as index arrays (``[n]`` int64) and feature matrices."""

    num_users: int
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    edge_weight: np.ndarray | None = None  # propagation weight per training edge
    extra_users: np.ndarray | None = None  # propagation-only edges (e.g. enquiries about a product)
    extra_items: np.ndarray | None = None
    extra_weight: np.ndarray | None = None
    user_x: np.ndarray | None = None  # [num_users, f_u] float32, recommender inputs
    item_x: np.ndarray | None = None  # [num_items, f_i] float32
    valid_users: np.ndarray | None = None
    valid_items: np.ndarray | None = None
    negative_users: np.ndarray | None = None  # declined offers: hard negatives
    negative_items: np.ndarray | None = None
    churn_x: np.ndarray | None = None  # [n, f_c] churn-head inputs (rows: labelled customers)
    churn: np.ndarray | None = None  # [n] 0/1 labels for churn_x, or None


@dataclass
class TrainResult:
    model: HybridGNN
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0


def _t(a, device, dtype=torch.long):
    return None if a is None else torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


def graph_adjacency(data: InteractionData, device: torch.device, hide: np.ndarray | None = None) -> torch.Tensor:
    """The propagation matrix: training edges (less those where ``hide`` is True) plus extra edges."""
    keep = slice(None) if hide is None else ~hide
    users = np.concatenate([data.train_users[keep]] + ([data.extra_users] if data.extra_users is not None else []))
    items = np.concatenate([data.train_items[keep]] + ([data.extra_items] if data.extra_items is not None else []))
    w = np.concatenate([
        (data.edge_weight if data.edge_weight is not None else np.ones(len(data.train_users)))[keep],
        data.extra_weight if data.extra_weight is not None else np.ones(0 if data.extra_users is None else len(data.extra_users)),
    ])
    return normalized_adjacency(_t(users, device), _t(items, device), data.num_users, data.num_items,
                                _t(w, device, torch.float32))


def build(cfg: TrainConfig, data: InteractionData, device: torch.device):
    """Model, full adjacency and feature tensors on ``device``."""
    adj = graph_adjacency(data, device)
    use_features = cfg.kind == "nba" and data.user_x is not None
    ux = _t(data.user_x, device, torch.float32) if use_features else None
    ix = _t(data.item_x, device, torch.float32) if use_features and data.item_x is not None else None
    cx = data.churn_x
    churn_head = cfg.kind == "nba" and data.churn is not None and cx is not None
    model = HybridGNN(
        data.num_users, data.num_items, dim=cfg.dim, layers=cfg.layers,
        user_features=0 if ux is None else ux.shape[1], item_features=0 if ix is None else ix.shape[1],
        hidden=cfg.hidden, churn_head=churn_head, churn_features=cx.shape[1] if churn_head else None,
        id_dropout=cfg.id_dropout if use_features else 0.0,
        user_ids=cfg.user_ids or not use_features, item_bias=cfg.item_bias).to(device)
    return model, adj, ux, ix


@torch.no_grad()
def recommend(model: HybridGNN, adj, ux, ix, users: np.ndarray, exclude_users: np.ndarray,
              exclude_items: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` items ``[len(users), k]`` per user, excluding the given (user, item) pairs."""
    model.eval()
    u_emb, i_emb, _, _ = model(adj, ux, ix)
    return top_k(lambda b: model.score(u_emb[torch.as_tensor(b, device=u_emb.device)], i_emb),
                 users, model.num_items, k, exclude_users, exclude_items)


def popularity_topk(data: InteractionData, users: np.ndarray, k: int) -> np.ndarray:
    """The baseline: most-held items first, the user's own items excluded."""
    pop = np.bincount(data.train_items, minlength=data.num_items).astype(float)
    return top_k(lambda b: np.broadcast_to(pop, (len(b), len(pop))), users, data.num_items, k,
                 data.train_users, data.train_items)


class _Objective(torch.nn.Module):
    """One step's loss as a module, so that DDP sees every parameter used inside ``forward``."""

    def __init__(self, model: HybridGNN, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, adj, ux, ix, bu, bi, bn, cx=None, cy=None):
        model, cfg = self.model, self.cfg
        u_emb, i_emb, u0, i0 = model(adj, ux, ix)
        if cfg.loss == "softmax":
            # The step's positives come grouped by user, so each user's logits over the items are
            # computed once and serve all its positives: sum over positives of -log softmax.
            users, row = torch.unique(bu, return_inverse=True)
            ue = u_emb[users]
            if bn is None:  # every item
                logits = model.score(ue, i_emb)
                loss = (torch.logsumexp(logits, 1)[row] - logits[row, bi]).mean()
            else:  # shared uniform negatives; + log(n_items / n_neg) estimates the full normaliser
                neg = ue @ i_emb[bn].T
                if model.item_bias is not None:
                    neg = neg + model.item_bias[bn][None, :]
                norm = torch.logsumexp(neg, 1) + math.log(model.num_items / len(bn))
                pos = model.score(ue[row], i_emb, bi)
                loss = (torch.logaddexp(pos, norm[row]) - pos).mean()
            reg = (u0[bu].pow(2).sum() + i0[bi].pow(2).sum()) / (2 * len(bu))
        else:
            ub = u_emb[bu]
            loss = torch.nn.functional.softplus(model.score(ub, i_emb, bn) - model.score(ub, i_emb, bi)).mean()
            reg = (u0[bu].pow(2).sum() + i0[bi].pow(2).sum() + i0[bn].pow(2).sum()) / (2 * len(bu))
        loss = loss + cfg.weight_decay * reg
        if cx is not None:
            churn = torch.nn.functional.binary_cross_entropy_with_logits(model.churn_logit(cx), cy)
            loss = loss + cfg.churn_weight * churn
        return loss


def _world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_loop(cfg: TrainConfig, data: InteractionData,
               on_epoch: Callable[[int, dict, Callable[[], dict]], None] | None = None,
               resume: dict | None = None) -> TrainResult:
    """Train; ``on_epoch(epoch, metrics, snapshot)`` runs after each epoch, where ``snapshot()``
    returns everything needed to resume (pass it back as ``resume``): the next epoch, model and
    optimizer states, the early-stopping state with the best weights so far, and the history.

    Each epoch's randomness comes from ``(seed, epoch)``, so a resumed run draws exactly what an
    uninterrupted one would have. Under ``torch.distributed`` (Ray Train) the model is wrapped in DDP
    and every worker takes its share of each global batch.
    """
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    rank, world = _world()
    model, full_adj, ux, ix = build(cfg, data, device)
    objective: torch.nn.Module = _Objective(model, cfg)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = {"best_value": -1.0, "bad_epochs": 0, "best_epoch": -1, "best_metrics": {}}
    best_weights, history, start_epoch = None, [], 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        state.update(resume["early_stopping"])
        best_weights, history, start_epoch = resume["best_model"], list(resume["history"]), resume["epoch"]

    n_items = data.num_items
    pos_codes = np.unique(data.train_users.astype(np.int64) * n_items + data.train_items)
    tu, ti = _t(data.train_users, device), _t(data.train_items, device)
    hard_u, hard_i = data.negative_users, data.negative_items
    if hard_u is not None and len(hard_u):
        order = np.argsort(hard_u, kind="stable")
        hard_u, hard_i = hard_u[order], hard_i[order]
    use_churn = model.churn is not None and cfg.churn_weight > 0
    cx, cy = (_t(data.churn_x, device, torch.float32), _t(data.churn, device, torch.float32)) if use_churn else (None, None)
    valid_users = np.unique(data.valid_users) if data.valid_users is not None else None

    def snapshot(next_epoch: int) -> dict:
        return {"epoch": next_epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "early_stopping": dict(state), "best_model": best_weights, "history": history,
                "config": cfg.model_dump()}

    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        t0 = time.perf_counter()
        if cfg.target_share > 0:
            hide = rng.random(len(data.train_users)) < cfg.target_share
            adj = graph_adjacency(data, device, hide)
            targets = np.flatnonzero(hide)
        else:
            adj, targets = full_adj, np.arange(len(data.train_users))
        perm = rng.permutation(targets)
        if cfg.loss == "softmax":  # group each user's positives (users in random order)
            user_rank = rng.permutation(data.num_users)
            perm = perm[np.argsort(user_rank[data.train_users[perm]], kind="stable")]
        churn_perm = rng.permutation(len(data.churn)) if use_churn else None
        batch = min(cfg.batch_size, max(64, -(-len(perm) // (cfg.min_steps_per_epoch * world))))
        global_batch = batch * world
        steps = max(1, -(-len(perm) // global_batch))
        total = 0.0
        for step in range(steps):
            chunk = perm[step * global_batch:(step + 1) * global_batch]
            # softmax: contiguous shares keep a user's positives on one worker
            idx = np.array_split(chunk, world)[rank] if cfg.loss == "softmax" else chunk[rank::world]
            if len(idx) == 0:  # keep every worker in step with the others
                idx = perm[:1]
            if cfg.loss == "softmax":
                neg = (None if cfg.negatives == 0 or cfg.negatives >= n_items
                       else rng.choice(n_items, cfg.negatives, replace=False))
            else:
                neg = _sample_negatives(rng, data.train_users[idx], n_items, pos_codes, hard_u, hard_i,
                                        cfg.hard_negative_share)
            idx_t = torch.as_tensor(idx, device=device)
            cb = None
            if use_churn:
                n_c = max(1, len(churn_perm) // steps)
                cb = torch.as_tensor(churn_perm[step * n_c:(step + 1) * n_c][rank::world] if step < steps - 1
                                     else churn_perm[step * n_c:][rank::world], device=device)
                if len(cb) == 0:
                    cb = torch.as_tensor(churn_perm[:1], device=device)
            loss = objective(adj, ux, ix, tu[idx_t], ti[idx_t],
                             None if neg is None else torch.as_tensor(neg, device=device),
                             None if cb is None else cx[cb], None if cb is None else cy[cb])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, "loss": total / steps, "epoch_seconds": seconds,
                   "edges_per_second": len(perm) / seconds, "workers": world}
        if valid_users is not None and (epoch + 1) % cfg.eval_every == 0:
            top = recommend(model, full_adj, ux, ix, valid_users, data.train_users, data.train_items, cfg.topk)
            lookup = np.full(data.num_users, -1)
            lookup[valid_users] = np.arange(len(valid_users))
            metrics.update({f"val_{k}": v for k, v in ranking_metrics(
                top, lookup[data.valid_users], data.valid_items, n_items,
                ks=tuple(sorted({k for k in (5, 10, 20, cfg.topk) if k <= cfg.topk}))).items()})
        value = metrics.get(f"val_{cfg.early_stop_metric}")
        stop = False
        if value is not None:
            if value > state["best_value"]:
                state.update(best_value=value, bad_epochs=0, best_epoch=epoch, best_metrics=metrics)
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
                stop = state["bad_epochs"] >= cfg.patience
        history.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics, lambda e=epoch, s=stop: snapshot(cfg.epochs if s else e + 1))
        if stop:
            break
    if best_weights is not None:
        model.load_state_dict(best_weights)
    result = TrainResult(model, history, state["best_metrics"], state["best_epoch"], time.perf_counter() - t_start)
    return result


def _sample_negatives(rng, users: np.ndarray, n_items: int, pos_codes: np.ndarray,
                      hard_u, hard_i, hard_share: float) -> np.ndarray:
    neg = rng.integers(0, n_items, len(users))
    if hard_u is not None and len(hard_u) and hard_share > 0:
        # For a share of the batch, use one of the user's declined items when it has any (sorted by user).
        su, si = hard_u, hard_i
        left = np.searchsorted(su, users, "left")
        right = np.searchsorted(su, users, "right")
        has = (right > left) & (rng.random(len(users)) < hard_share)
        pick = left + (rng.random(len(users)) * np.maximum(right - left, 1)).astype(np.int64)
        neg = np.where(has, si[np.minimum(pick, len(si) - 1)], neg)
    for _ in range(10):  # re-draw negatives that are known positives
        codes = users.astype(np.int64) * n_items + neg
        pos = np.searchsorted(pos_codes, codes).clip(max=len(pos_codes) - 1)
        clash = pos_codes[pos] == codes
        if not clash.any():
            break
        neg[clash] = rng.integers(0, n_items, int(clash.sum()))
    return neg
