"""One training run end to end: feature store -> graph -> Ray Train -> evaluation -> MLflow bundle.

:func:`run_training` is what ``nba train`` calls:

1. the graph at ``as_of`` from the live store version and the features of that date (materialized
   ones when fresh, else computed point-in-time); a share of the last 90 days' acquisitions is held
   out of it for validation and early stopping;
2. churn examples: features at ``as_of - horizon`` and churn in the horizon after, for the clients
   who held a product at ``as_of - horizon`` (a former client cannot churn);
3. training (Ray Train's TorchTrainer, or in-process); the epoch is chosen on the validation metric, or
   on the validation loss when that metric cannot tell the epochs apart (``TrainResult.selection``);
4. embeddings of the full graph and churn probabilities at ``as_of``, saved as the bundle;
5. a temporal evaluation when the store holds the ``horizon_days`` after ``as_of``: product openings
   in that window (recall / precision / NDCG @K of the model and of popularity, every K capped at the
   catalogue size) and churn (ROC AUC, PR AUC, calibration) on the clients holding a product at as_of;
6. an MLflow run with the resolved config, per-epoch metrics, the data snapshot, the code version,
   plots and the bundle as a pyfunc model, registered as a new version of ``nba`` (``challenger``,
   and ``champion`` on ``promote`` or when there is none).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch

from bundle import registry, write_bundle
from feature_store.materialize import default_as_of, features_at, time_zone
from feature_store.offline import data_end, label_frame
from feature_store.store import StoreVersion, TableStore
from nba import features as F
from nba.decision import held_matrix
from nba.errors import StoreError
from nba.features import LABEL_OPENED as F_LABEL_OPENED
from nba.home import Home
from nba.metrics import average_precision, calibration, cap_ks, ranking_metrics, roc_auc
from nba.ranking import top_k

from .churn import ChurnSelection, validation_split
from .churn import select as select_churn
from .config import RunConfig
from .graph import BankGraph, build_graph
from .loop import (
    InteractionData,
    TrainResult,
    graph_adjacency,
    popularity_topk,
    validation_plan,
)
from .model import HybridGNN

CHURN_MODEL_FILE = "churn_model.joblib"  # in the bundle: the chosen gradient-boosting churn model


@dataclass
class Prepared:
    graph: BankGraph
    data: InteractionData  # validation pairs held out
    full: InteractionData  # every edge (for the final embeddings)
    as_of: date
    version: StoreVersion
    feature_hash: str
    churn_rows: int = 0
    churn_rate: float = float("nan")
    churn_former: int = 0  # former clients (no product at as_of - horizon) left out of the churn examples
    tenure_days: np.ndarray | None = None  # [num_users] in graph order (for the propensity calibration)
    present: np.ndarray | None = None  # [num_users] bool in graph order: holds a product at as_of
    churn_val_x: np.ndarray | None = None  # [n_val, f] churn examples held out to choose the churn model
    churn_val_y: np.ndarray | None = None  # [n_val] bool
    propensity_prior: dict | None = None  # base rates of opening (propensity_prior), for the bundle
    churn_masked: list[str] = field(default_factory=list)  # churn inputs set to their mean (no transactions)


def holds_a_product(feats: pd.DataFrame) -> np.ndarray:
    """``[len(feats)]`` bool: the client holds at least one product at the frame's as_of (``n_products``
    > 0, which agrees with the holdings' ``held_start`` of ``label_frame``). Clients with no product are
    former clients (or never held one): they cannot churn, so the churn head neither learns from nor is
    scored on them. All True when the frame has no ``n_products`` column."""
    if "n_products" not in feats:
        return np.ones(len(feats), bool)
    return pd.to_numeric(feats["n_products"], errors="coerce").fillna(0).to_numpy() > 0


@dataclass
class RunReport:
    as_of: date
    result: TrainResult
    evaluation: dict | None
    bundle_dir: Path
    run_id: str | None = None
    registered: object | None = None
    seconds: dict = field(default_factory=dict)


def frame_hash(df: pd.DataFrame) -> str:
    h = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def prepare(home: Home, cfg: RunConfig, as_of: date | None = None) -> Prepared:
    """The graph at ``as_of`` (default: the store's data end) with validation pairs held out, and the churn
    examples: features at ``as_of - churn_horizon_days`` of the clients holding a product then, labelled
    with churn in the horizon that followed. Raises ``StoreError`` when no customer was onboarded before
    ``as_of``."""
    version = TableStore(home.store).require_current()
    as_of = as_of or default_as_of(version)
    feats = features_at(home, as_of, version)
    if feats.empty:
        raise StoreError(f"no customers onboarded before {as_of}: nothing to train on")
    graph = build_graph(version, feats, as_of, time_zone=time_zone())
    weights = {"asked_about": cfg.data.enquiry_weight}
    data = graph.interactions(weights, valid_share=cfg.data.valid_share, seed=cfg.data.valid_seed)
    full = graph.interactions(weights)
    prepared = Prepared(graph, data, full, as_of, version, frame_hash(feats))
    ordered = feats.sort_values("customer_id")
    prepared.tenure_days = ordered["tenure_days"].astype("float64").to_numpy() if "tenure_days" in feats else None
    prepared.present = holds_a_product(ordered)
    # Churn examples: features a horizon ago, churn within the horizon that followed.
    h = cfg.data.churn_horizon_days
    past = as_of - timedelta(days=h)
    labels = label_frame(version, past, h)
    mask = []
    if "transactions" in version.absent_tables:
        # Past balances are today's without transactions (nba.features.PAST_BALANCES): the churn model
        # reads them neither in its examples nor at as_of (encoded 0 = the mean, everywhere).
        names = graph.encoder.names
        mask = [i for i, n in enumerate(names) if n in F.PAST_BALANCES or n.removesuffix("_missing") in F.PAST_BALANCES]
        prepared.churn_masked = [names[i] for i in mask]
        if full.churn_x is not None and mask:
            full.churn_x = full.churn_x.copy()
            full.churn_x[:, mask] = 0.0
    if len(labels):
        window_feats = features_at(home, past, version)
        prepared.propensity_prior = propensity_prior(window_feats, labels, graph.product_ids, h, past, as_of)
        past_feats = window_feats.merge(labels[["customer_id", "label_churn"]], on="customer_id")
        present = holds_a_product(past_feats)
        prepared.churn_former = int((~present).sum())
        past_feats = past_feats[present]
        y = past_feats["label_churn"].astype(bool).to_numpy()
        if 0 < y.sum() < len(y):
            # A validation share of the examples is held out from training, to choose the churn model
            # (training.churn: the network's head or gradient boosting) on examples neither has seen.
            x = graph.encoder.transform(past_feats)
            if mask:
                x[:, mask] = 0.0
            train, val = validation_split(y, seed=cfg.data.valid_seed)
            data.churn_x, data.churn = x[train], y[train].astype(np.float32)
            prepared.churn_val_x, prepared.churn_val_y = x[val], y[val]
            prepared.churn_rows, prepared.churn_rate = len(y), float(y.mean())
    return prepared


@torch.no_grad()
def embed(model: HybridGNN, prepared: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """User and item embeddings over the full graph, and churn probabilities at as_of."""
    model = model.eval().cpu()
    full = prepared.full
    adj = graph_adjacency(full, torch.device("cpu"))
    ux = torch.from_numpy(full.user_x) if model.user_mlp is not None else None
    ix = torch.from_numpy(full.item_x) if model.item_mlp is not None else None
    u, i, _, _ = model(adj, ux, ix)
    churn = None
    if model.churn is not None:
        churn = torch.sigmoid(model.churn_logit(torch.from_numpy(full.churn_x))).numpy()
    return u.numpy(), i.numpy(), churn


PRIOR_SHRINK = 50.0  # clients' worth of pseudo-observations pulling a rate toward the next coarser one


def propensity_prior(feats: pd.DataFrame, labels: pd.DataFrame, product_ids: list[str], horizon_days: int,
                     start: date, end: date, shrink: float = PRIOR_SHRINK) -> dict:
    """Base rates of opening each product within ``horizon_days`` (probability), from the window
    ``[start, end)``: among the clients of ``feats`` (features at ``start``) not holding product p then,
    the share that opened p in the window (``labels``: :func:`feature_store.offline.label_frame` at
    ``start``). Former clients are left out. Two groups, as the calibration's population is: ``new``
    (tenure under ``horizon_days`` at ``start``) and ``established``.

    Each (group, segment, product) rate is shrunk toward its (group, product) rate, and that toward the
    group's rate over every product: ``(opened + k x coarser) / (eligible + k)`` with ``k = shrink``
    (additive smoothing toward a prior mean, as in empirical-Bayes rate estimates). The bundle uses it
    where the Platt calibration cannot be applied: for every client when too few openings were held out
    to fit it, and for new clients always (the fit is on established clients only).
    """
    f = feats.merge(labels[["customer_id", F_LABEL_OPENED]], on="customer_id", how="inner")
    f = f[holds_a_product(f) | (pd.to_numeric(f.get("tenure_days"), errors="coerce").fillna(0) < horizon_days)]
    products = pd.Index(product_ids)
    held = held_matrix(f, products)  # [n, m]
    opened = held_matrix(pd.DataFrame({"held_products": f[F_LABEL_OPENED].to_numpy()}), products)
    tenure = pd.to_numeric(f["tenure_days"], errors="coerce").fillna(0).to_numpy()
    group = np.where(tenure < horizon_days, "new", "established")
    segment = f["segment"].astype(str).to_numpy() if "segment" in f else np.full(len(f), "all")
    out: dict = {"method": "base_rate_shrunk", "horizon_days": int(horizon_days), "window": [str(start), str(end)],
                 "shrink": shrink, "new_client_max_tenure_days": int(horizon_days), "groups": {}}
    for g in ("established", "new"):
        in_g = group == g
        elig = {p: ~held[:, j] & in_g for j, p in enumerate(product_ids)}
        hit = {p: opened[:, j] & elig[p] for j, p in enumerate(product_ids)}
        n_all = sum(int(e.sum()) for e in elig.values())
        o_all = sum(int(h.sum()) for h in hit.values())
        base = (o_all + 1.0) / (n_all + 1.0 * len(product_ids) + 1.0) if n_all else 0.0
        by_product, by_segment = {}, {}
        for p in product_ids:
            rp = (int(hit[p].sum()) + shrink * base) / (int(elig[p].sum()) + shrink)
            by_product[p] = round(float(rp), 6)
            for s_ in np.unique(segment[in_g]) if in_g.any() else []:
                m = segment == s_
                by_segment.setdefault(str(s_), {})[p] = round(
                    float((int((hit[p] & m).sum()) + shrink * rp) / (int((elig[p] & m).sum()) + shrink)), 6)
        out["groups"][g] = {"clients": int(in_g.sum()), "openings": o_all, "rate": round(float(base), 6),
                            "by_product": by_product, "by_segment": by_segment}
    return out


@torch.no_grad()
def choose_churn_model(model: HybridGNN, prepared: Prepared, head: np.ndarray | None, seed: int = 0
                       ) -> ChurnSelection | None:
    """The churn model for the bundle (:func:`training.churn.select`): gradient boosting fitted on the
    training churn examples against the network's head, both scored on the held-out examples. None when
    there are no churn examples. ``head``: the head's probabilities at as_of (unused here; the choice
    needs the held-out examples only)."""
    d = prepared.data
    if d.churn_x is None or d.churn is None:
        return None
    x_val = prepared.churn_val_x if prepared.churn_val_x is not None else d.churn_x[:0]
    y_val = prepared.churn_val_y if prepared.churn_val_y is not None else np.zeros(0, bool)
    head_val = None
    if model.churn is not None and len(y_val):
        head_val = torch.sigmoid(model.eval().cpu().churn_logit(torch.from_numpy(x_val))).numpy()
    return select_churn(d.churn_x, d.churn.astype(bool), x_val, y_val, head_val, seed)


@torch.no_grad()
def calibrate(model: HybridGNN, prepared: Prepared, valid_share: float, horizon_days: int = 90,
              negatives: int = 300_000, shrink: float = 1.0, seed: int = 0) -> dict | None:
    """Map the model score to P(the customer opens the product within ``horizon_days``).

    The evidence is the validation acquisitions that ``prepare`` hid from the graph: with the model's
    embeddings of that graph, the hidden pairs are positives and every other pair the customer did not
    hold is a negative (sampled, with weights). The fit is a Platt scaling ``sigmoid(a * score + b +
    offset[product])`` whose per-product offsets carry an L2 penalty ``shrink`` (products with few
    openings stay near the shared fit). Only ``valid_share`` of the acquisitions were hidden, so the
    intercept is raised by ``log(1 / valid_share)``. None when there are too few openings to fit.
    """
    d = prepared.data
    if d.valid_users is None:
        return None
    # Established clients only: a client onboarded inside the window "acquires" its first products, which
    # says nothing about what an existing client will open next (the population the offers go to).
    established = np.ones(d.num_users, bool)
    if prepared.tenure_days is not None and len(prepared.tenure_days) == d.num_users:
        established = np.nan_to_num(prepared.tenure_days, nan=0.0) >= horizon_days
    keep = established[d.valid_users]
    if keep.sum() < 20:
        return None
    model = model.eval().cpu()
    adj = graph_adjacency(d, torch.device("cpu"))
    ux = torch.from_numpy(d.user_x) if model.user_mlp is not None else None
    ix = torch.from_numpy(d.item_x) if model.item_mlp is not None else None
    u, i, _, _ = model(adj, ux, ix)
    m = d.num_items
    train_codes = np.unique(d.train_users * m + d.train_items)
    pos_codes = np.unique(d.valid_users[keep] * m + d.valid_items[keep])
    all_valid = np.unique(d.valid_users * m + d.valid_items)
    pool = np.flatnonzero(established)
    rng = np.random.default_rng(seed)
    cand = pool[rng.integers(0, len(pool), size=negatives * 2)] * m + rng.integers(0, m, size=negatives * 2)
    cand = np.unique(cand[~np.isin(cand, train_codes) & ~np.isin(cand, all_valid)])[:negatives]
    held_established = int(established[d.train_users].sum())
    total_neg = len(pool) * m - held_established - len(pos_codes)
    codes = np.concatenate([pos_codes, cand])
    y = np.concatenate([np.ones(len(pos_codes)), np.zeros(len(cand))]).astype(np.float32)
    w = np.concatenate([np.ones(len(pos_codes)), np.full(len(cand), total_neg / max(len(cand), 1))]).astype(np.float32)
    users, items = codes // m, codes % m
    s = model.score(u[torch.from_numpy(users)], i, torch.from_numpy(items)).float()
    mu, sd = float(s.mean()), float(s.std()) + 1e-6
    x = (s - mu) / sd
    yt, wt, it = torch.from_numpy(y), torch.from_numpy(w / w.mean()), torch.from_numpy(items)
    a = torch.ones(1, requires_grad=True)
    base = float(np.log(max(y @ w, 1e-9) / max((1 - y) @ w, 1e-9)))
    b = torch.full((1,), base, requires_grad=True)
    off = torch.zeros(m, requires_grad=True)
    opt = torch.optim.LBFGS([a, b, off], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logit = a * x + b + off[it]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, yt, weight=wt, reduction="sum") / wt.sum()
        loss = loss + shrink * (off ** 2).sum() / len(y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a_ = float(a) / sd
    b_ = float(b) - float(a) * mu / sd + float(np.log(1.0 / max(valid_share, 1e-6)))
    return {"method": "platt_per_product", "horizon_days": horizon_days, "a": a_, "b": b_,
            "offsets": {pid: float(o) for pid, o in zip(prepared.graph.product_ids, off.detach().numpy())},
            "positives": int(len(pos_codes)), "negatives_sampled": int(len(cand)), "valid_share": valid_share,
            "population": f"clients with tenure >= {horizon_days} days"}


def evaluate(prepared: Prepared, user_emb: np.ndarray, item_emb: np.ndarray, item_bias: np.ndarray,
             churn: np.ndarray | None, horizon_days: int, ks: list[int]) -> dict | None:
    """Temporal evaluation on the ``horizon_days`` after as_of, or None when the store lacks them.

    ``user_emb`` ``[num_users, d]``, ``item_emb`` ``[num_items, d]``, ``item_bias`` ``[num_items]`` and
    ``churn`` ``[num_users]`` (probabilities, or None) are in the graph's row order. Openings: recall,
    precision and NDCG of the model and of popularity at each K of ``ks`` capped at the catalogue size
    (``nba.metrics.cap_ks``: with 5 products @10 is computed and named @5); ``ks`` lists the cut-offs
    used and, when some were capped, ``ks_requested`` the ones asked for. Churn: ROC AUC, PR AUC and
    calibration over the clients who held a product at as_of (``customers``); clients who had already
    left (no product at as_of) are not counted as non-churners but left out (``former_clients``).
    """
    end = data_end(prepared.version, time_zone())
    if prepared.as_of + timedelta(days=horizon_days) > end:
        return None
    labels = label_frame(prepared.version, prepared.as_of, horizon_days)
    labels = labels.set_index("customer_id").reindex(prepared.graph.customer_ids)
    full = prepared.full
    n_items = full.num_items
    held = set(zip(full.train_users.tolist(), full.train_items.tolist()))
    pidx = {p: j for j, p in enumerate(prepared.graph.product_ids)}
    tu, ti = [], []
    for row, products in enumerate(labels["label_opened_products"].fillna("").to_numpy()):
        for p in filter(None, products.split("|")):
            if p in pidx and (row, pidx[p]) not in held:  # new to the customer at as_of
                tu.append(row), ti.append(pidx[p])
    tu, ti = np.array(tu, np.int64), np.array(ti, np.int64)
    out: dict = {"horizon_days": horizon_days, "eval_from": str(prepared.as_of),
                 "eval_to": str(prepared.as_of + timedelta(days=horizon_days))}
    used = cap_ks(ks, n_items)
    out["ks"] = used
    if used != sorted(set(ks)):
        out["ks_requested"] = sorted(set(ks))
    ks = used
    k = max(ks)
    if len(tu):
        users = np.unique(tu)
        look = np.full(full.num_users, -1)
        look[users] = np.arange(len(users))
        top = top_k(lambda b: user_emb[b] @ item_emb.T + item_bias[None, :], users, n_items, k,
                    full.train_users, full.train_items)
        pop_top = popularity_topk(full, users, k)
        for name, t in (("model", top), ("popularity", pop_top)):
            m = ranking_metrics(t, look[tu], ti, n_items, ks=tuple(ks))
            out[name] = {key: v for key, v in m.items() if "@" in key}
        out["customers_with_openings"] = len(users)
        out["openings"] = len(tu)
    if churn is not None:
        present = prepared.present if prepared.present is not None else np.ones(len(labels), bool)
        y = labels["label_churn"].fillna(False).astype(bool).to_numpy()[present]
        p = np.asarray(churn)[present]
        if 0 < y.sum() < len(y):
            cal = calibration(y, p)
            out["churn"] = {"roc_auc": roc_auc(y, p), "pr_auc": average_precision(y, p),
                            "base_rate": float(y.mean()), "mean_predicted": float(p.mean()),
                            "ece": cal["ece"], "calibration": cal, "customers": int(present.sum()),
                            "former_clients": int((~present).sum())}
    return out


def _plots(history: list[dict], evaluation: dict | None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = {}
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ep = [h["epoch"] for h in history]
    ax[0].plot(ep, [h["loss"] for h in history], marker="o", label="training")
    if any("val_loss" in h for h in history):
        ax[0].plot([h["epoch"] for h in history if "val_loss" in h], [h["val_loss"] for h in history if "val_loss" in h],
                   marker="o", label="validation (BPR on held-out pairs)")
        ax[0].legend(fontsize=7)
    ax[0].set(title="loss", xlabel="epoch")
    for key in sorted({k for h in history for k in h if k.startswith(("val_recall", "val_ndcg"))}):
        ax[1].plot([h["epoch"] for h in history if key in h], [h[key] for h in history if key in h], label=key)
    ax[1].set(title="validation", xlabel="epoch")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    figs["metric_curves.png"] = fig
    if evaluation and "churn" in evaluation:
        cal = evaluation["churn"]["calibration"]
        fig, ax = plt.subplots(figsize=(4, 4))
        bins = cal["bins"]
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o")
        ax.set(title=f"churn calibration (ECE {cal['ece']:.3f})", xlabel="predicted", ylabel="observed")
        fig.tight_layout()
        figs["churn_calibration.png"] = fig
    return figs


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _metric_name(name: str) -> str:
    return name.replace("@", "_at_")


def run_training(home: Home, cfg: RunConfig, as_of: date | None = None, *, promote: bool = False,
                 config_path: Path | None = None, log=print, fault_injection: dict | None = None,
                 use_mlflow: bool = True) -> RunReport:
    from bundle.pyfunc import NBAPyfunc

    from .trainer import fit

    home.ensure()
    seconds = {}
    t = time.perf_counter()
    prepared = prepare(home, cfg, as_of)
    seconds["prepare"] = time.perf_counter() - t
    d = prepared.data
    log(f"graph at {prepared.as_of}: {d.num_users:,} customers, {d.num_items} products, "
        f"{len(d.train_users):,} positive edges, {0 if d.valid_users is None else len(d.valid_users):,} held out "
        f"for validation; churn examples {prepared.churn_rows:,} (rate {prepared.churn_rate:.3f}; "
        f"{prepared.churn_former:,} former clients left out)")
    for table in prepared.version.absent_tables:
        if table in F.ABSENT_NOTES:
            log("warning: " + F.ABSENT_NOTES[table])
    if prepared.churn_masked:
        log(f"churn inputs left out (no transactions, past balances unknown): {', '.join(prepared.churn_masked)}")
    eval_ks = cap_ks(cfg.evaluation.ks, d.num_items)
    _, _, val_metric = validation_plan(cfg.model, d.num_items)
    capped = []
    if eval_ks != sorted(set(cfg.evaluation.ks)):
        capped.append(f"evaluation at {', '.join(f'@{k}' for k in eval_ks)} "
                      f"(asked {', '.join(f'@{k}' for k in cfg.evaluation.ks)})")
    if val_metric != cfg.model.early_stop_metric:
        capped.append(f"early stopping on val_{val_metric} (asked val_{cfg.model.early_stop_metric})")
    if capped:
        log(f"K capped at the catalogue size ({d.num_items} products): {'; '.join(capped)}")

    import mlflow
    run = None
    if use_mlflow:
        exp_id = registry.setup(home)
        run = mlflow.start_run(experiment_id=exp_id, run_name=f"{cfg.model.kind}-{prepared.as_of}")
    try:
        if run is not None:
            mlflow.log_params({k: str(v) for k, v in _flat(cfg.model_dump()).items()})
            mlflow.set_tags({"as_of": str(prepared.as_of), "store_version": prepared.version.name,
                             "store_content_hash": prepared.version.content_hash,
                             "feature_hash": prepared.feature_hash, "code_version": registry.code_version(),
                             "config_file": str(config_path or "")})
            mlflow.log_dict(cfg.model_dump(), "config/resolved.json")
            mlflow.log_metric("catalogue_products", d.num_items)  # nba models list: which K can discriminate

        def on_epoch(epoch: int, metrics: dict) -> None:
            val = "".join(f"  {key} {metrics[key]:.4f}" for key in dict.fromkeys((f"val_{val_metric}", "val_loss"))
                          if key in metrics)
            log(f"epoch {epoch:3d}  loss {metrics['loss']:.4f}  {metrics['epoch_seconds']:.1f} s{val}")
            if run is not None:
                mlflow.log_metrics({_metric_name(k): float(v) for k, v in metrics.items()
                                    if isinstance(v, (int, float)) and k != "epoch"}, step=epoch)

        t = time.perf_counter()
        result = fit(cfg.model, d, cfg.ray, home.root / "ray_results",
                     f"train-{prepared.as_of}-{int(time.time())}", on_epoch=on_epoch,
                     fault_injection=fault_injection)
        seconds["train"] = time.perf_counter() - t
        sel = result.selection
        log(f"trained in {seconds['train']:.1f} s; {_selection_line(sel)}")
        if run is not None:
            mlflow.log_params({"selection.criterion": sel["criterion"], "selection.best_epoch": sel["best_epoch"],
                               "selection.epochs_run": sel["epochs_run"], "selection.metric": str(sel["metric"]),
                               "evaluation.ks_used": str(eval_ks)})
            mlflow.set_tags({"selection.fallback": str(sel["fallback"]).lower(),
                             **({"selection.reason": sel["reason"][:5000]} if sel["reason"] else {})})

        t = time.perf_counter()
        propensity = calibrate(result.model, prepared, cfg.data.valid_share, cfg.evaluation.horizon_days)
        if propensity is None and prepared.propensity_prior is not None:
            log("propensity calibration: too few held-out openings to fit it; every client's propensity is the "
                "prior of shrunk base rates by segment and product (flagged on each decision)")
        user_emb, item_emb, churn = embed(result.model, prepared)
        churn_choice = choose_churn_model(result.model, prepared, churn, cfg.data.valid_seed)
        if churn_choice is not None:
            churn = churn_choice.predict(prepared.full.churn_x, churn)
            log(f"churn model: {churn_choice.chosen} ({churn_choice.reason})")
        if churn is not None and prepared.present is not None and len(prepared.present) == len(churn):
            # A client holding nothing at as_of cannot churn: no probability (the model never saw such
            # rows and would say anything), rather than a figure the RM would read as a risk.
            churn = np.where(prepared.present, churn, np.nan).astype(np.float32)
        bias = (result.model.item_bias.detach().numpy() if result.model.item_bias is not None
                else np.zeros(d.num_items, np.float32))
        evaluation = evaluate(prepared, user_emb, item_emb, bias, churn, cfg.evaluation.horizon_days, cfg.evaluation.ks)
        seconds["evaluate"] = time.perf_counter() - t
        _log_evaluation(evaluation, log)

        m = result.model
        model_args = {"num_users": m.num_users, "num_items": m.num_items, "dim": m.dim, "layers": m.layers,
                      "user_features": 0 if m.user_mlp is None else d.user_x.shape[1],
                      "item_features": 0 if m.item_mlp is None else d.item_x.shape[1],
                      "use_ids": m.item_id is not None, "hidden": cfg.model.hidden,
                      "churn_head": m.churn is not None, "user_ids": m.user_id is not None,
                      "item_bias": m.item_bias is not None,
                      "churn_features": None if d.churn_x is None else d.churn_x.shape[1]}
        meta = {"as_of": str(prepared.as_of), "config": cfg.model_dump(), "store_version": prepared.version.name,
                "store_content_hash": prepared.version.content_hash, "feature_hash": prepared.feature_hash,
                "code_version": registry.code_version(), "best_epoch": result.best_epoch,
                "selection": result.selection,
                "rec_columns": prepared.graph.rec_columns.tolist(), "evaluation": evaluation,
                "propensity": propensity, "propensity_prior": prepared.propensity_prior,
                "churn_model": None if churn_choice is None else {
                    "chosen": churn_choice.chosen, "reason": churn_choice.reason,
                    "validation": churn_choice.validation,
                    "file": CHURN_MODEL_FILE if churn_choice.gradient_boosting is not None else None,
                    # encoder columns set to 0 (their mean) in every churn input, examples and as_of alike
                    "masked_inputs": prepared.churn_masked},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        held = np.stack([prepared.full.train_users, prepared.full.train_items])
        bundle_dir = Path(tempfile.mkdtemp(prefix="nba-bundle-")) / "bundle"
        write_bundle(bundle_dir, weights={k: v.detach().cpu().numpy() for k, v in m.state_dict().items()}, model_args=model_args, meta=meta,
                     customer_ids=prepared.graph.customer_ids, product_ids=prepared.graph.product_ids,
                     encoder=prepared.graph.encoder, user_emb=user_emb, item_emb=item_emb, item_bias=bias,
                     churn=churn, held=held)
        if churn_choice is not None and churn_choice.gradient_boosting is not None:
            joblib.dump(churn_choice.gradient_boosting, bundle_dir / CHURN_MODEL_FILE)
        report = RunReport(prepared.as_of, result, evaluation, bundle_dir, seconds=seconds)
        if run is None:
            return report

        if churn_choice is not None:
            mlflow.log_param("churn.model", churn_choice.chosen)
            mlflow.log_metrics({f"churn_val.{name}.{k}": float(v) for name, figs in churn_choice.validation.items()
                                for k, v in figs.items() if isinstance(v, (int, float)) and v == v})

        if evaluation:
            flat = {k: v for k, v in _flat({"test": {k2: v2 for k2, v2 in evaluation.items()
                                                     if k2 in ("model", "popularity", "churn")}}).items()
                    if isinstance(v, (int, float)) and "calibration" not in k}
            mlflow.log_metrics({_metric_name(k): float(v) for k, v in flat.items()})
            mlflow.log_dict(evaluation, "evaluation/evaluation.json")
        for name, fig in _plots(result.history, evaluation).items():
            mlflow.log_figure(fig, f"plots/{name}")
        mlflow.log_dict({"history": result.history}, "evaluation/history.json")
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema
        from mlflow.types.schema import ParamSchema, ParamSpec
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", "customer_id")]),
            outputs=Schema([ColSpec("string", "customer_id"), ColSpec("long", "rank"), ColSpec("string", "product_id"),
                            ColSpec("double", "score"), ColSpec("double", "churn_probability", required=False)]),
            params=ParamSchema([ParamSpec("k", "long", 5)]))
        import warnings
        model_name = registry.default_name()
        with warnings.catch_warnings():  # the input-example advice: our signature is explicit
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=NBAPyfunc(), artifacts={"bundle": str(bundle_dir)},
                registered_model_name=model_name, signature=signature,
                pip_requirements=["nba-engine", "mlflow", "torch", "numpy", "pandas"])
        report.run_id = run.info.run_id
        report.registered = registry.register(model_name, info.registered_model_version,
                                              run.info.run_id, promote)
        log(f"MLflow run {run.info.run_id}: registered {model_name} version "
            f"{report.registered.version} as {', '.join(report.registered.aliases)}")
        mlflow.end_run()
        return report
    except BaseException:
        if run is not None:
            mlflow.end_run(status="FAILED")
        raise


def _selection_line(sel: dict) -> str:
    """How the shipped weights were chosen, in words (the run log's line after training)."""
    if sel["criterion"] == "last_epoch":
        return f"kept the last epoch ({sel['best_epoch']}; {sel['epochs_run']} run): {sel['reason']}"
    line = f"best epoch {sel['best_epoch']} of {sel['epochs_run']} on {sel['criterion']}"
    return line + (f" ({sel['reason']})" if sel["fallback"] and sel["reason"] else "")


def _log_evaluation(evaluation: dict | None, log) -> None:
    if evaluation is None:
        log("evaluation: skipped, the store does not yet hold the horizon after as_of "
            "(train at an earlier --as-of for a backtest)")
        return
    log(f"evaluation on openings {evaluation['eval_from']} .. {evaluation['eval_to']} "
        f"({evaluation.get('openings', 0):,} openings by {evaluation.get('customers_with_openings', 0):,} customers):")
    if "ks_requested" in evaluation:
        log(f"  K capped at the catalogue size: @{max(evaluation['ks_requested'])} asked, "
            f"@{max(evaluation['ks'])} is the whole catalogue")
    if "model" in evaluation:
        for key in evaluation["model"]:
            if key.startswith(("recall", "ndcg")):
                log(f"  {key:10s} model {evaluation['model'][key]:.4f}   popularity {evaluation['popularity'][key]:.4f}")
    if "churn" in evaluation:
        c = evaluation["churn"]
        log(f"  churn: ROC AUC {c['roc_auc']:.4f}, PR AUC {c['pr_auc']:.4f} (base rate {c['base_rate']:.4f}), "
            f"ECE {c['ece']:.4f}, on {c['customers']:,} clients holding a product at as_of "
            f"({c['former_clients']:,} former clients left out)")


def summary(report: RunReport) -> str:
    return json.dumps({"as_of": str(report.as_of), "run_id": report.run_id,
                       "evaluation": report.evaluation}, default=str, indent=2)
