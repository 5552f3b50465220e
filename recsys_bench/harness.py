"""``nba bench recsys``: the project's models and their peers on one public split, side by side.

Models: ``nba`` (HybridGNN with IDs and, where the dataset has them, node features), ``lightgcn``
(the project's plain LightGCN), ``pyg-lightgcn`` (PyG's ``torch_geometric.nn.LightGCN`` with its BPR
loss and the settings of PyG's ``examples/lightgcn.py``), ``als`` (``implicit``'s AlternatingLeastSquares) and ``pop``. All of them
train and are evaluated in this process, on the same split, with the same protocol code
(:mod:`recsys_bench.protocols`). Settings come from ``configs/recsys/<dataset>.yaml`` when it exists,
else ``configs/recsys/default.yaml``. Epochs are chosen on validation data (``valid.txt``, or a
10% per-user slice of the training part), never on the test split; the final model is then trained
on everything but the test split for the chosen number of epochs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nba.config import CONFIG_DIR
from nba.errors import ConfigError
from training.loop import InteractionData, TrainConfig, build, train_loop

from .datasets import RecDataset, load
from .protocols import lightgcn_all_ranking, recommenders_top_k, stratified_split

MODELS = ("nba", "lightgcn", "pyg-lightgcn", "als", "pop")
VALID_USERS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PygConfig(_Strict):
    dim: int = 64
    layers: int = 2
    lr: float = 0.001
    batch_size: int = 8192
    weight_decay: float = 1e-4
    epochs: int = 1000
    budget_seconds: float = Field(300, gt=0, description="wall-clock budget; the table says when it ran out")


class AlsConfig(_Strict):
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 1.0
    iterations: int = 15


class BenchConfig(_Strict):
    nba: dict = Field(default_factory=dict, description="TrainConfig overrides for the nba model")
    lightgcn: dict = Field(default_factory=dict, description="TrainConfig overrides for plain LightGCN")
    pyg_lightgcn: PygConfig = PygConfig()
    als: AlsConfig = AlsConfig()
    valid_share: float = Field(0.1, gt=0, lt=1, description="per-user validation slice when there is no valid.txt")

    @field_validator("nba", "lightgcn")
    @classmethod
    def _train_overrides(cls, v: dict) -> dict:
        TrainConfig(**v)  # a misspelt or out-of-range setting fails here, with its name, not mid-run
        return v


def load_bench_config(dataset: str, path: Path | None = None) -> tuple[BenchConfig, Path | None]:
    candidates = [path] if path else [CONFIG_DIR / "recsys" / f"{dataset}.yaml", CONFIG_DIR / "recsys" / "default.yaml"]
    for p in candidates:
        if p is not None and Path(p).exists():
            raw = yaml.safe_load(Path(p).read_text()) or {}
            try:
                return BenchConfig.model_validate(raw), Path(p)
            except Exception as e:  # pydantic ValidationError: name the file
                raise ConfigError(f"{p}: {e}") from None
    if path:
        raise ConfigError(f"config file {path} does not exist")
    return BenchConfig(), None


class PeakRSS:
    """Samples this process's resident memory while a block runs (peak, in MB)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    @staticmethod
    def now_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.now_mb()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now_mb())


# --- splits -------------------------------------------------------------------------------------

def make_split(ds: RecDataset, cfg: BenchConfig) -> dict:
    """train / valid (for choosing epochs) / full-train (train + valid) / test, and the protocol."""
    if ds.format == "lightgcn":
        tr, te = ds.train, ds.test
        if ds.valid is not None and len(ds.valid):
            va = ds.valid
            fit_u, fit_i = tr.users, tr.items
            full_u, full_i = np.r_[tr.users, va.users], np.r_[tr.items, va.items]
        else:
            m = stratified_split(tr.users, tr.items, ratio=1 - cfg.valid_share, seed=7)
            va = type(tr)(tr.users[~m], tr.items[~m])
            fit_u, fit_i, full_u, full_i = tr.users[m], tr.items[m], tr.users, tr.items
        return {"protocol": "lightgcn", "k": 20, "fit": (fit_u, fit_i), "valid": (va.users, va.items),
                "full": (full_u, full_i), "test": (te.users, te.items)}
    r = ds.ratings
    m = stratified_split(r.users, r.items, ratio=0.75, seed=42)
    tu, ti = r.users[m], r.items[m]
    vm = stratified_split(tu, ti, ratio=1 - cfg.valid_share, seed=7)
    return {"protocol": "recommenders", "k": 10, "fit": (tu[vm], ti[vm]), "valid": (tu[~vm], ti[~vm]),
            "full": (tu, ti), "test": (r.users[~m], r.items[~m])}


def evaluate(split: dict, n_items: int, score_fn: Callable[[np.ndarray], np.ndarray]) -> dict:
    tu, ti = split["full"]
    eu, ei = split["test"]
    if split["protocol"] == "lightgcn":
        return lightgcn_all_ranking(score_fn, tu, ti, eu, ei, n_items, k=20)
    return recommenders_top_k(score_fn, tu, ti, eu, ei, n_items, k=10)


# --- the models ---------------------------------------------------------------------------------

def _project_model(kind: str, ds: RecDataset, split: dict, overrides: dict, log) -> tuple[Callable, dict]:
    # Validation every 2 epochs, stop after 5 evaluations without a better ndcg (10 epochs).
    base = {"kind": kind, "user_ids": True, "target_share": 0.0, "epochs": 400, "patience": 5,
            "early_stop_metric": f"ndcg@{split['k']}", "topk": split["k"], "eval_every": 2,
            "min_steps_per_epoch": 1}
    cfg = TrainConfig(**{**base, **overrides})
    feats = kind == "nba"
    (fu, fi), (vu, vi) = split["fit"], split["valid"]
    # Epoch selection ranks the catalogue for at most VALID_USERS validation users (a fixed random
    # subset): enough to compare epochs, and it keeps validation cheap on big datasets.
    users = np.unique(vu)
    if len(users) > VALID_USERS:
        keep = np.isin(vu, np.random.default_rng(0).choice(users, VALID_USERS, replace=False))
        vu, vi = vu[keep], vi[keep]
    sel = InteractionData(ds.num_users, ds.num_items, fu, fi, valid_users=vu, valid_items=vi,
                          user_x=ds.user_x if feats else None, item_x=ds.item_x if feats else None)
    r = train_loop(cfg, sel)
    epochs = max(1, r.best_epoch + 1)
    log(f"  {kind}: {epochs} epochs chosen on validation ({cfg.early_stop_metric} "
        f"{r.best.get('val_' + cfg.early_stop_metric, float('nan')):.4f}); retraining on train+valid")
    au, ai = split["full"]
    full = InteractionData(ds.num_users, ds.num_items, au, ai,
                           user_x=ds.user_x if feats else None, item_x=ds.item_x if feats else None)
    final_cfg = cfg.model_copy(update={"epochs": epochs})
    r2 = train_loop(final_cfg, full)
    model, adj, ux, ix = build(final_cfg, full, torch.device(r2.model.item_bias.device if r2.model.item_bias is not None else "cpu"))
    model.load_state_dict(r2.model.state_dict())
    model.eval()
    with torch.no_grad():
        U, I, _, _ = model(adj, ux, ix)
    U, I = U.cpu(), I.cpu()
    bias = model.item_bias.detach().cpu() if model.item_bias is not None else None

    def score(b):
        s = U[torch.as_tensor(b)] @ I.T
        return s if bias is None else s + bias
    return score, {"epochs": epochs}


def _pop(ds: RecDataset, split: dict, _cfg, log) -> tuple[Callable, dict]:
    counts = np.bincount(split["full"][1], minlength=ds.num_items).astype(np.float64)
    return (lambda b: np.tile(counts, (len(b), 1))), {}


def _als(ds: RecDataset, split: dict, cfg: AlsConfig, log) -> tuple[Callable, dict]:
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    u, i = split["full"]
    m = sp.csr_matrix((np.full(len(u), cfg.alpha, np.float32), (u, i)), shape=(ds.num_users, ds.num_items))
    m.sum_duplicates()
    model = AlternatingLeastSquares(factors=cfg.factors, regularization=cfg.regularization,
                                    iterations=cfg.iterations, random_state=42,
                                    num_threads=os.cpu_count() or 1)
    model.fit(m, show_progress=False)
    U, V = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return (lambda b: U[b] @ V.T), {"iterations": cfg.iterations}


def _pyg_lightgcn(ds: RecDataset, split: dict, cfg: PygConfig, log) -> tuple[Callable, dict]:
    from torch_geometric.nn import LightGCN
    torch.manual_seed(0)
    n_u, n_i = ds.num_users, ds.num_items
    u, i = (torch.as_tensor(x) for x in split["full"])
    edge_index = torch.stack([torch.cat([u, i + n_u]), torch.cat([i + n_u, u])])
    model = LightGCN(n_u + n_i, cfg.dim, cfg.layers)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, epochs, stopped = time.perf_counter(), 0, ""
    gen = torch.Generator().manual_seed(0)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(u), generator=gen)
        for s in range(0, len(u), cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            neg = torch.randint(0, n_i, (len(idx),), generator=gen) + n_u
            eli = torch.stack([torch.cat([u[idx], u[idx]]), torch.cat([i[idx] + n_u, neg])])
            pos_rank, neg_rank = model(edge_index, eli).chunk(2)
            loss = model.recommendation_loss(pos_rank, neg_rank, node_id=eli.unique(), lambda_reg=cfg.weight_decay)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if time.perf_counter() - start > cfg.budget_seconds:
                stopped = f"stopped by the {cfg.budget_seconds:g} s budget in epoch {epochs + 1}"
                break
        if stopped:
            break
        epochs += 1
    with torch.no_grad():
        emb = model.get_embedding(edge_index)
    U, I = emb[:n_u], emb[n_u:]
    info = {"epochs": epochs, "budget": stopped or f"{epochs} epochs, within budget"}
    log(f"  pyg-lightgcn: {info['budget']}")
    return (lambda b: U[torch.as_tensor(b)] @ I.T), info


def run(directory: Path, fmt: str | None = None, models: list[str] | None = None, out: Path | None = None,
        config: Path | None = None, log=print) -> dict:
    ds = load(directory, fmt)
    cfg, cfg_path = load_bench_config(ds.name, config)
    models = list(models or MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    split = make_split(ds, cfg)
    log(f"{ds.name} ({ds.format}): {ds.num_users:,} users, {ds.num_items:,} items, "
        f"{len(split['full'][0]):,} training interactions, {len(split['test'][0]):,} test; "
        f"protocol {split['protocol']}; config {cfg_path or 'built-in defaults'}")
    runners = {"nba": lambda: _project_model("nba", ds, split, cfg.nba, log),
               "lightgcn": lambda: _project_model("lightgcn", ds, split, cfg.lightgcn, log),
               "pyg-lightgcn": lambda: _pyg_lightgcn(ds, split, cfg.pyg_lightgcn, log),
               "als": lambda: _als(ds, split, cfg.als, log),
               "pop": lambda: _pop(ds, split, None, log)}
    results = {"dataset": ds.name, "format": ds.format, "protocol": split["protocol"],
               "config": str(cfg_path) if cfg_path else None, "models": {}}
    for name in models:
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            score, info = runners[name]()
            train_s = time.perf_counter() - t0
            metrics = evaluate(split, ds.num_items, score)
        results["models"][name] = {"metrics": {k: v for k, v in metrics.items() if "@" in k},
                                   "train_seconds": round(train_s, 2), "peak_rss_mb": round(mem.peak, 1),
                                   **info}
        log(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results["models"][name]["metrics"].items())
            + f"; {train_s:.1f} s, peak RSS {mem.peak:,.0f} MB")
    if out:
        Path(out).write_text(json.dumps(results, indent=2))
    return results
