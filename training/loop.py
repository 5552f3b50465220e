"""The training loop as a plain function: runs alone (quick experiments, GPU measurements) and is the
function Ray Train's ``TorchTrainer`` will run per worker.

``train_loop(cfg, data)`` trains ``HybridGNN`` with BPR on user-item pairs. Each step propagates the
full graph (sparse products) and takes a large batch of (user, positive, negative) triples. Negatives
are sampled uniformly and re-drawn when they hit a known positive; declined items are mixed in as
hard negatives. Validation ranking runs each ``eval_every`` epochs, with early stopping on
``early_stop_metric``. Seeds make CPU runs repeatable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from nba.device import resolve_device
from nba.metrics import ranking_metrics

from .model import HybridGNN, normalized_adjacency


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field("nba", pattern="^(nba|lightgcn)$", description="nba: IDs + features; lightgcn: IDs only")
    dim: int = Field(64, ge=4, le=1024)
    layers: int = Field(2, ge=0, le=6)
    hidden: int = Field(128, ge=8)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0, description="L2 on layer-0 embeddings of the batch (BPR reg)")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8192, ge=16)
    id_dropout: float = Field(0.2, ge=0, lt=1)
    hard_negative_share: float = Field(0.2, ge=0, le=1)
    churn_weight: float = Field(1.0, ge=0)
    eval_every: int = Field(1, ge=1)
    patience: int = Field(5, ge=1)
    early_stop_metric: str = "recall@10"
    topk: int = Field(20, ge=1)
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
    user_x: np.ndarray | None = None  # [num_users, f_u] float32
    item_x: np.ndarray | None = None  # [num_items, f_i] float32
    valid_users: np.ndarray | None = None
    valid_items: np.ndarray | None = None
    negative_users: np.ndarray | None = None  # declined offers: hard negatives
    negative_items: np.ndarray | None = None
    churn: np.ndarray | None = None  # [num_users] 0/1, or None


@dataclass
class TrainResult:
    model: HybridGNN
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0


def _t(a, device, dtype=torch.long):
    return None if a is None else torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


def build(cfg: TrainConfig, data: InteractionData, device: torch.device):
    """Model, adjacency and feature tensors on ``device``."""
    users = np.concatenate([data.train_users] + ([data.extra_users] if data.extra_users is not None else []))
    items = np.concatenate([data.train_items] + ([data.extra_items] if data.extra_items is not None else []))
    w = np.concatenate([
        data.edge_weight if data.edge_weight is not None else np.ones(len(data.train_users)),
        data.extra_weight if data.extra_weight is not None else np.ones(0 if data.extra_users is None else len(data.extra_users)),
    ])
    adj = normalized_adjacency(_t(users, device), _t(items, device), data.num_users, data.num_items,
                               _t(w, device, torch.float32))
    use_features = cfg.kind == "nba"
    ux = _t(data.user_x, device, torch.float32) if use_features else None
    ix = _t(data.item_x, device, torch.float32) if use_features else None
    model = HybridGNN(
        data.num_users, data.num_items, dim=cfg.dim, layers=cfg.layers,
        user_features=0 if ux is None else ux.shape[1], item_features=0 if ix is None else ix.shape[1],
        hidden=cfg.hidden, churn_head=use_features and data.churn is not None,
        id_dropout=cfg.id_dropout if use_features else 0.0).to(device)
    return model, adj, ux, ix


@torch.no_grad()
def recommend(model: HybridGNN, adj, ux, ix, users: np.ndarray, exclude_users: np.ndarray,
              exclude_items: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Top-``k`` items ``[len(users), k]`` per user, excluding the given (user, item) pairs."""
    model.eval()
    u_emb, i_emb, _, _ = model(adj, ux, ix)
    device = u_emb.device
    n_items = model.num_items
    codes = torch.as_tensor(np.unique(exclude_users.astype(np.int64) * n_items + exclude_items), device=device)
    out = []
    for start in range(0, len(users), chunk):
        batch = torch.as_tensor(users[start:start + chunk], device=device)
        scores = u_emb[batch] @ i_emb.T
        # mask excluded pairs
        q = batch[:, None] * n_items + torch.arange(n_items, device=device)[None, :]
        if len(codes):
            pos = torch.searchsorted(codes, q).clamp(max=len(codes) - 1)
            scores = scores.masked_fill(codes[pos] == q, float("-inf"))
        out.append(torch.topk(scores, min(k, n_items), dim=1).indices.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def popularity_topk(data: InteractionData, users: np.ndarray, k: int) -> np.ndarray:
    """The baseline: most-held items first, the user's own items excluded (ranked last)."""
    pop = np.bincount(data.train_items, minlength=data.num_items).astype(float)
    scores = np.tile(pop, (len(users), 1))
    row = np.full(data.num_users, -1)
    row[users] = np.arange(len(users))
    mine = row[data.train_users] >= 0
    scores[row[data.train_users[mine]], data.train_items[mine]] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def train_loop(cfg: TrainConfig, data: InteractionData,
               on_epoch: Callable[[int, dict, HybridGNN], None] | None = None,
               start_epoch: int = 0, model_state: dict | None = None) -> TrainResult:
    """Train; ``on_epoch(epoch, metrics, model)`` is called after each epoch (checkpointing, logging)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    model, adj, ux, ix = build(cfg, data, device)
    if model_state is not None:
        model.load_state_dict(model_state)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    n_items = data.num_items
    pos_codes = np.unique(data.train_users.astype(np.int64) * n_items + data.train_items)
    tu, ti = _t(data.train_users, device), _t(data.train_items, device)
    hard_u, hard_i = data.negative_users, data.negative_items
    churn = _t(data.churn, device, torch.float32)
    valid_users = np.unique(data.valid_users) if data.valid_users is not None else None

    result = TrainResult(model)
    best_value, bad_epochs = -1.0, 0
    best_state = None
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.as_tensor(rng.permutation(len(data.train_users)), device=device)
        total, steps = 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            bu, bi = tu[idx], ti[idx]
            neg = _sample_negatives(rng, bu.cpu().numpy(), n_items, pos_codes, hard_u, hard_i,
                                    cfg.hard_negative_share)
            bn = torch.as_tensor(neg, device=device)
            u_emb, i_emb, u0, i0 = model(adj, ux, ix)
            pos_s = (u_emb[bu] * i_emb[bi]).sum(1)
            neg_s = (u_emb[bu] * i_emb[bn]).sum(1)
            loss = torch.nn.functional.softplus(neg_s - pos_s).mean()
            reg = (u0[bu].pow(2).sum() + i0[bi].pow(2).sum() + i0[bn].pow(2).sum()) / (2 * len(bu))
            loss = loss + cfg.weight_decay * reg
            if churn is not None and model.churn is not None and cfg.churn_weight > 0:
                cu = torch.unique(bu)
                logit = model.churn_logit(u_emb[cu], ux[cu] if ux is not None else None)
                loss = loss + cfg.churn_weight * torch.nn.functional.binary_cross_entropy_with_logits(logit, churn[cu])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss)
            steps += 1
        metrics = {"epoch": epoch, "loss": total / max(steps, 1), "epoch_seconds": time.perf_counter() - t0,
                   "edges_per_second": len(perm) / (time.perf_counter() - t0)}
        if valid_users is not None and (epoch + 1) % cfg.eval_every == 0:
            top = recommend(model, adj, ux, ix, valid_users, data.train_users, data.train_items, cfg.topk)
            lookup = np.full(data.num_users, -1)
            lookup[valid_users] = np.arange(len(valid_users))
            metrics.update({f"val_{k}": v for k, v in ranking_metrics(
                top, lookup[data.valid_users], data.valid_items, n_items,
                ks=tuple(k for k in (10, 20) if k <= cfg.topk)).items()})
        result.history.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics, model)
        value = metrics.get(f"val_{cfg.early_stop_metric}")
        if value is None:
            continue
        if value > best_value:
            best_value, bad_epochs, result.best, result.best_epoch = value, 0, metrics, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t_start
    return result


def _sample_negatives(rng, users: np.ndarray, n_items: int, pos_codes: np.ndarray,
                      hard_u, hard_i, hard_share: float) -> np.ndarray:
    neg = rng.integers(0, n_items, len(users))
    if hard_u is not None and len(hard_u) and hard_share > 0:
        # For a share of the batch, use one of the user's declined items when it has any.
        order = np.argsort(hard_u, kind="stable")
        su, si = hard_u[order], hard_i[order]
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
