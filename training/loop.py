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

Validation runs each ``eval_every`` epochs on the held-out pairs: the ranking metrics (every K capped
at the catalogue size, :func:`validation_plan`) and ``val_loss``, the BPR loss of each held-out pair
against fixed sampled negatives. Early stopping keeps the epoch with the best ``early_stop_metric``,
unless that metric cannot tell the epochs apart (it is the same for any model on these pairs, it sits at
its maximum from the first evaluation, or it never moved before patience ran out): then the validation
loss chooses instead, and without any validation the configured ``epochs`` run and the last is kept.
:attr:`TrainResult.selection` says which rule chose the weights and why. Seeds make CPU runs repeatable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from nba.metrics import cap_ks, capped_metric, metric_k, ranking_metrics
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
    min_validation_pairs: int = Field(100, ge=0, description=(
        "fewer held-out pairs than this cannot choose an epoch (a recall or loss over a handful of pairs "
        "is noise): the configured epochs run and the last one is kept; the metrics are still logged"))
    early_stop_metric: str = Field("recall@5", pattern=r"^((recall|precision|ndcg)@[1-9][0-9]*|loss)$", description=(
        "validation metric that chooses the epoch (higher is better); K above the catalogue size is capped "
        "to it (recall@10 with 5 products is recall@5); 'loss': the validation BPR loss (lower is better). "
        "A metric that cannot tell the epochs apart falls back to the validation loss"))
    topk: int = Field(10, ge=1, description="length of the validation top-K lists (capped at the catalogue size)")
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
    """The trained model (with the weights of ``best_epoch`` loaded), the per-epoch metrics and how the
    epoch was chosen.

    ``selection`` (see :func:`selection_of`): ``criterion`` (``"val_recall@5"``..., ``"val_loss"`` or
    ``"last_epoch"``), ``requested`` (the configured metric, ``val_`` + ``early_stop_metric``),
    ``metric`` (the one validated, its K capped at the catalogue size), ``fallback`` (True when the
    criterion is not the requested metric), ``reason`` (why, or None), ``best_epoch`` and ``epochs_run``.
    """

    model: HybridGNN
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0
    selection: dict = field(default_factory=dict)


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
    """Top-``k`` items ``[len(users), min(k, num_items)]`` per user, excluding the given (user, item) pairs."""
    model.eval()
    u_emb, i_emb, _, _ = model(adj, ux, ix)
    return _rank(model, u_emb, i_emb, users, exclude_users, exclude_items, k)


def _rank(model: HybridGNN, u_emb, i_emb, users, exclude_users, exclude_items, k: int) -> np.ndarray:
    return top_k(lambda b: model.score(u_emb[torch.as_tensor(b, device=u_emb.device)], i_emb),
                 users, model.num_items, k, exclude_users, exclude_items)


def validation_plan(cfg: TrainConfig, num_items: int) -> tuple[int, tuple[int, ...], str]:
    """What validation ranks on a catalogue of ``num_items``: the top-K list length, the cut-offs and the
    early-stopping metric's name, every K capped at ``num_items``.

    The cut-offs are 5, 10, 20 and ``topk`` (those up to ``topk``) plus the K of ``early_stop_metric``; a
    K above the catalogue is computed at the catalogue size and named after it (``recall@10`` with 5
    products is logged as ``val_recall@5``). The metric is ``"loss"`` for ``early_stop_metric: loss``.
    """
    es_k = metric_k(cfg.early_stop_metric)
    length = min(max(cfg.topk, es_k or 0), num_items)
    ks = cap_ks([k for k in (5, 10, 20, cfg.topk) if k <= cfg.topk] + ([es_k] if es_k else []), num_items)
    return length, tuple(ks), capped_metric(cfg.early_stop_metric, num_items)


def _validation_negatives(data: InteractionData, seed: int, budget: int = 200_000):
    """Fixed (user, positive, negative) triples for ``val_loss``: up to 8 negatives per held-out pair (at
    most about ``budget`` triples in all), drawn once among the items the user holds neither in training
    nor in validation (pairs whose user has no such item are left out). Returns three ``[n]`` int64 arrays."""
    n_items = data.num_items
    per_pair = max(1, min(8, budget // max(len(data.valid_users), 1)))
    codes = np.unique(np.concatenate([data.train_users.astype(np.int64) * n_items + data.train_items,
                                      data.valid_users.astype(np.int64) * n_items + data.valid_items]))
    users = np.repeat(data.valid_users.astype(np.int64), per_pair)
    pos = np.repeat(data.valid_items.astype(np.int64), per_pair)
    rng = np.random.default_rng([seed, 104_729])
    neg = rng.integers(0, n_items, len(users))
    clash = np.ones(len(users), bool)
    for _ in range(32):
        q = users * n_items + neg
        at = np.searchsorted(codes, q).clip(max=len(codes) - 1)
        clash = codes[at] == q
        if not clash.any():
            break
        neg[clash] = rng.integers(0, n_items, int(clash.sum()))
    return users[~clash], pos[~clash], neg[~clash]


def _constant_metric(metric: str, data: InteractionData) -> str | None:
    """Why ``metric`` takes the same value for any model on the validation pairs of ``data``, or None.

    recall@K and precision@K: every validation user's unheld items all fit in the top K (always so when
    K is the catalogue size). ndcg@K: every unheld item of every validation user is a relevant one.
    """
    if metric_k(metric) is None or data.valid_users is None or not len(data.valid_users):
        return None
    kind, k = metric.split("@")[0], int(metric.split("@")[1])
    n_items = data.num_items
    held = np.bincount(np.unique(data.train_users.astype(np.int64) * n_items + data.train_items) // n_items,
                       minlength=data.num_users)
    relevant = np.bincount(np.unique(data.valid_users.astype(np.int64) * n_items + data.valid_items) // n_items,
                           minlength=data.num_users)
    users = np.unique(data.valid_users)
    unheld = n_items - held[users]
    if kind in ("recall", "precision") and (unheld <= k).all():
        return (f"val_{metric} is the same for any model: every validation client has at most "
                f"{int(unheld.max())} of the {n_items} products unheld, and they all fit in the top {k}")
    if kind == "ndcg" and (unheld == relevant[users]).all():
        return f"val_{metric} is the same for any model: every product a validation client does not hold is one it opened"
    return None


_MAXIMUM = {"recall": 1.0, "ndcg": 1.0}  # metrics with a known ceiling (precision@K's depends on the data)


def selection_of(state: dict, history: list[dict]) -> tuple[str, dict]:
    """Which weights a run ships, from its early-stopping ``state`` and ``history``: ``("metric" |
    "loss" | "last", selection)`` where ``selection`` is :attr:`TrainResult.selection`."""
    metric, requested = state.get("metric"), state.get("requested")
    criterion, reason = state.get("criterion", "metric"), state.get("reason")
    if criterion == "metric" and state.get("best_epoch", -1) >= 0:
        choice, name, best = "metric", f"val_{metric}", state["best_epoch"]
    elif criterion == "loss" and state.get("loss_best_epoch", -1) >= 0:
        choice, name, best = "loss", "val_loss", state["loss_best_epoch"]
    else:
        choice, name = "last", "last_epoch"
        best = history[-1]["epoch"] if history else -1
        if criterion == "metric" and reason is None:
            reason = ("no validation pairs: the configured epochs ran and the last one is kept"
                      if not state.get("has_validation", True) else
                      f"val_{metric} was never evaluated (eval_every): the last epoch is kept")
    return choice, {"criterion": name, "requested": f"val_{requested}" if requested else None,
                    "metric": f"val_{metric}" if metric else None, "fallback": name != f"val_{metric}",
                    "reason": reason, "best_epoch": int(best), "epochs_run": len(history)}


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
    n_items = data.num_items
    length, ks, metric = validation_plan(cfg, n_items)
    has_valid = data.valid_users is not None and len(data.valid_users) > 0
    vneg = _validation_negatives(data, cfg.seed) if has_valid else None
    # The rule that chooses the epoch: "metric" (early_stop_metric), "loss" (val_loss) or "schedule"
    # (all configured epochs, the last kept); the metric may still be found unable to choose later on.
    criterion, reason, why = "metric", None, None
    if not has_valid:
        criterion, reason = "schedule", "no validation pairs: the configured epochs ran and the last one is kept"
    elif len(data.valid_users) < cfg.min_validation_pairs:
        criterion, reason = "schedule", (f"only {len(data.valid_users)} validation pairs (model.min_validation_pairs "
                                         f"{cfg.min_validation_pairs}): too few to choose an epoch on; the "
                                         f"configured epochs ran and the last one is kept")
    elif metric == "loss" or (why := _constant_metric(metric, data)) is not None:
        criterion = "loss"
        if not len(vneg[0]):
            criterion, reason = "schedule", ((why + "; " if why else "") + "no validation loss (no held-out pair "
                                             "has an unheld negative): the configured epochs ran and the last one is kept")
        elif why:
            reason = why + ": early stopping on the validation loss instead"
    # Early stopping: the requested metric (higher is better) and, alongside, the validation loss (lower
    # is better) with its own best weights, so that a fallback can pick an epoch already past.
    state = {"best_value": -1.0, "bad_epochs": 0, "best_epoch": -1, "best_metrics": {},
             "loss_best": math.inf, "loss_bad_epochs": 0, "loss_best_epoch": -1, "loss_best_metrics": {},
             "metric_values": [], "criterion": criterion, "reason": reason, "metric": metric,
             "requested": cfg.early_stop_metric, "has_validation": has_valid}
    best_weights, loss_weights, history, start_epoch = None, None, [], 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        state.update(resume["early_stopping"])
        best_weights = resume.get("best_metric_model", resume["best_model"])
        loss_weights = resume.get("best_loss_model")
        history, start_epoch = list(resume["history"]), resume["epoch"]

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
        choice, _ = selection_of(state, history)
        return {"epoch": next_epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "early_stopping": dict(state, metric_values=list(state["metric_values"])),
                "best_model": {"metric": best_weights, "loss": loss_weights}.get(choice),
                "best_metric_model": best_weights, "best_loss_model": loss_weights,
                "history": history, "config": cfg.model_dump()}

    def clone() -> dict:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

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
            model.eval()
            with torch.no_grad():
                u_emb, i_emb, _, _ = model(full_adj, ux, ix)
                top = _rank(model, u_emb, i_emb, valid_users, data.train_users, data.train_items, length)
                if len(vneg[0]):
                    nu, npos, nneg = (torch.as_tensor(a, device=device) for a in vneg)
                    ue = u_emb[nu]
                    metrics["val_loss"] = float(torch.nn.functional.softplus(
                        model.score(ue, i_emb, nneg) - model.score(ue, i_emb, npos)).mean())
            lookup = np.full(data.num_users, -1)
            lookup[valid_users] = np.arange(len(valid_users))
            metrics.update({f"val_{k}": v for k, v in ranking_metrics(
                top, lookup[data.valid_users], data.valid_items, n_items, ks=ks).items()})
        stop = False
        vloss = metrics.get("val_loss")
        if vloss is not None:
            if vloss < state["loss_best"]:
                state.update(loss_best=vloss, loss_bad_epochs=0, loss_best_epoch=epoch, loss_best_metrics=metrics)
                loss_weights = clone()
            else:
                state["loss_bad_epochs"] += 1
        value = metrics.get(f"val_{metric}")
        if state["criterion"] == "metric" and value is not None:
            values = state["metric_values"]
            values.append(value)
            if value > state["best_value"]:
                state.update(best_value=value, bad_epochs=0, best_epoch=epoch, best_metrics=metrics)
                best_weights = clone()
            else:
                state["bad_epochs"] += 1
            why = None
            ceiling = _MAXIMUM.get(metric.split("@")[0])
            if len(values) == 1 and ceiling is not None and value >= ceiling - 1e-12:
                why = f"val_{metric} is at its maximum {ceiling:g} from the first evaluation: it cannot rank the epochs"
            elif state["bad_epochs"] >= cfg.patience and max(values) - min(values) <= 1e-12:
                why = f"val_{metric} stayed at {value:.4f} for all {len(values)} evaluations: it cannot rank the epochs"
            if why is not None:
                if state["loss_best_epoch"] >= 0:
                    state.update(criterion="loss", reason=why + ": early stopping on the validation loss instead")
                else:
                    state.update(criterion="schedule", reason=why + "; there is no validation loss either: "
                                 "the configured epochs run and the last one is kept")
            else:
                stop = state["bad_epochs"] >= cfg.patience
        if state["criterion"] == "loss" and vloss is not None:
            stop = state["loss_bad_epochs"] >= cfg.patience
        history.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics, lambda e=epoch, s=stop: snapshot(cfg.epochs if s else e + 1))
        if stop:
            break
    choice, selection = selection_of(state, history)
    if choice == "metric":
        model.load_state_dict(best_weights)
    elif choice == "loss":
        model.load_state_dict(loss_weights)
    best = {"metric": state["best_metrics"], "loss": state["loss_best_metrics"]}.get(choice) or (history[-1] if history else {})
    return TrainResult(model, history, best, selection["best_epoch"], time.perf_counter() - t_start, selection)


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
