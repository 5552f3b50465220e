"""Churn: the model the pipeline ships, and the GNN's churn head, against tabular baselines (issue 17).

    python benchmarks/bench_churn.py --home /tmp/churnbench [--customers 20000] [--seed 7]
        [--config configs/train.yaml] [--set section.key=value ...] [--gnn-seeds 0[,1,...]] [--no-truth]
        [--bootstrap 1000] [--out FILE]

The first run builds the home when it holds no store yet (about 10 s for 20,000 clients on 2 cores):

    nba --home H data generate -n N --seed S --workers 2
    nba --home H data ingest H/synthetic

Later runs reuse it (a home built by those two commands by hand is reused too). Then, with
``as_of = data end - horizon`` (the backtest date; the horizon is ``data.churn_horizon_days``, 90):

1. **The pipeline**: ``training.pipeline.run_training(home, cfg, as_of)`` with ``--config`` (default
   ``configs/train.yaml``) and ``ray.enabled=false`` (plus ``model.seed`` per ``--gnn-seeds``); the
   bundle is read back through the registry (``bundle.registry.load_registered(home, version)``). The
   pipeline trains on the churn examples of the clients holding a product at ``as_of - horizon``, holds
   20% of them out, and ships the better of the network's churn head and gradient boosting on that
   share (``training.churn.select``, by ROC AUC). Two scores per run:
   - ``nba_bundle``: the bundle's ``churn`` (P(churn within 90 days) at as_of, aligned with
     ``customer_ids``), i.e. the chosen model; its choice, reason and the validation figures of
     ``gnn_head``, ``gradient_boosting`` and ``logistic_regression`` (``bundle.meta["churn_model"]``) are
     recorded under ``churn_model`` of the run, and the label names the chosen candidate;
   - ``gnn_head``: the network's churn head whatever was chosen: the network rebuilt from the bundle
     (``training.model.from_bundle``), ``sigmoid(model.churn_logit(x))`` on the bundle encoder's
     features at as_of (absent when the network has no churn head).
   ``consistency`` checks that the bundle's churn is what the chosen model gives on those features (the
   head's, or ``churn_model.joblib``'s ``predict_proba``): the largest absolute difference.
2. **Baselines** (scikit-learn), trained as the pipeline trains its churn models (``training.pipeline.prepare``):
   features at ``as_of - horizon`` (``features_at``) with the churn of the horizon that followed
   (``label_frame``), i.e. a *temporal* split, no client-level split; every client onboarded by then, and
   the same input columns as the pipeline's models (the numeric and categorical columns of the bundle's
   fitted encoder, less any numeric column without a value in the training rows):
   - ``logreg``: median imputation with missing-value indicators, standardisation, one-hot
     categoricals (``ColumnTransformer``), ``LogisticRegression``;
   - ``logreg_log1p``: the same after a signed ``log1p`` of the numeric columns (what the GNN's encoder
     does before standardising);
   - ``hgb``: ``HistGradientBoostingClassifier`` with native categorical support (pandas categories),
     missing values native, default settings (early stopping on 10% of the rows, ``random_state=0``).
   Each is also trained on the clients who held a product at the training date only (``*_holders``: the
   rows the pipeline now trains on, without its 20% validation share).
3. **Evaluation** on the horizon after as_of (the window ``training.pipeline.evaluate`` uses), on
   the clients onboarded before as_of, with the labels of ``feature_store.offline.label_frame``:
   - ``holders``: clients who held at least one product at as_of (the population the churn label is
     defined on, and the one ``training.pipeline.evaluate`` scores: its ``test.churn`` figures are the
     ``nba_bundle`` holders' figures); the headline;
   - ``all``: every client (those without a product count as non-churners), for reference.
   Metrics (``sklearn.metrics``): ROC AUC, PR AUC (average precision), Brier score, log loss; base rate
   and mean predicted probability; ECE over 10 equal-width bins (``nba.metrics.calibration``, the
   pipeline's definition) and over 10 equal-count bins, the reliability table of
   ``sklearn.calibration.calibration_curve`` (10 quantile bins); the share of churners in the top 10% of
   scores. A paired bootstrap (``--bootstrap`` resamples of the holders) gives 95% intervals of every
   ROC AUC and of the differences of ``nba_bundle`` and of ``gnn_head`` to each other model.
   ``--gnn-seeds 0,1,2`` adds pipeline runs with other ``model.seed`` values (``nba_bundle_seed1``,
   ``gnn_head_seed1``, ...) to see how much the head, and the choice, move from run to run.
   ``ablation``: the baselines refitted without the point-in-time balance columns, and without those and
   the columns whose range depends on how far back a client's visible history goes (``leak_columns``).
4. **Truth** (unless ``--no-truth``; synthetic homes only): the production setting. The pipeline is run at
   the data end (its churn models learn from the features at data end - horizon and the churn that
   followed), the baselines on the same rows, and every model (``nba_bundle``, ``gnn_head`` and the
   baselines) scores the clients at the data end against the
   generator's own churn of the 90 days after (``synthetic/_truth/future_churn``, not in the store), on the
   clients holding a product at the data end. The generator's historical churners (the labels every model
   learns from) and its future churners are not drawn the same way (see BENCHMARKS.md), so this block
   says what the models learn that carries over to the churn the bank is built around.
   ``cross_validated_on_truth``: a reference only, the baselines fitted on the truth labels themselves
   (5-fold client-level cross-validation): how much of that churn the features can say at all.

Progress goes to stderr; one JSON object with every figure (and the command, machine, date, commit) is
printed on stdout at the end, and written to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from provenance import commit, machine  # noqa: E402

NBA = str(Path(sys.executable).with_name("nba"))
MARKER = "bench-churn-home.json"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_home(home_dir: Path, customers: int, seed: int) -> dict:
    """Generate and ingest the synthetic bank unless the home already holds a store."""
    from feature_store.store import TableStore
    from nba.home import Home

    home = Home.resolve(home_dir)
    marker = home_dir / MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        say(f"reusing {home_dir} (built {info['built']}, {info['customers']:,} customers, seed {info['seed']})")
        return info
    if home.store.is_dir() and TableStore(home.store).current() is not None:
        n = TableStore(home.store).require_current().read("customers").num_rows
        say(f"reusing the store of {home_dir} ({n:,} customers; built outside this script)")
        return {"built": None, "customers": n, "seed": None, "steps": None}
    home_dir.mkdir(parents=True, exist_ok=True)
    base = [NBA, "--home", str(home_dir)]
    steps = {}
    with open(home_dir / "bench-build.log", "a") as log:
        for name, cmd in (("generate_s", [*base, "data", "generate", "-n", str(customers), "--seed", str(seed),
                                          "--workers", "2"]),
                          ("ingest_s", [*base, "data", "ingest", str(home_dir / "synthetic")])):
            say("+ " + " ".join(cmd))
            t = time.perf_counter()
            r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            if r.returncode:
                sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log.name}")
            steps[name] = round(time.perf_counter() - t, 1)
    info = {"built": date.today().isoformat(), "customers": customers, "seed": seed, "steps": steps}
    marker.write_text(json.dumps(info, indent=1))
    return info


# ------------------------------------------------------------------------------------------------
# Data


def held_status(version, as_of: date) -> pd.DataFrame:
    """Per client onboarded before as_of: held a product at as_of (the churn label's own rule), and held
    one at some time before as_of."""
    from feature_store.offline import connect

    D = f"DATE '{as_of.isoformat()}'"
    con = connect(version)
    try:
        return con.execute(f"""
            SELECT c.customer_id,
                   coalesce(bool_or(h.opened_at < {D} AND (h.closed_at IS NULL OR h.closed_at >= {D})), false)
                       AS held_at_as_of,
                   coalesce(bool_or(h.opened_at < {D}), false) AS held_before
            FROM customers c LEFT JOIN holdings h USING (customer_id)
            WHERE c.onboarded_at < {D} GROUP BY c.customer_id""").df()
    finally:
        con.close()


def labelled(home, version, as_of: date, horizon: int) -> pd.DataFrame:
    """Features at as_of with the churn of the horizon after (the rows of ``prepare``'s churn examples)."""
    from feature_store.materialize import features_at
    from feature_store.offline import label_frame
    from nba import features as F

    feats = features_at(home, as_of, version)
    labels = label_frame(version, as_of, horizon)[["customer_id", F.LABEL_CHURN]]
    df = feats.merge(labels, on="customer_id", how="inner", validate="one_to_one")
    df = df.merge(held_status(version, as_of), on="customer_id", how="left", validate="one_to_one")
    df["y"] = df[F.LABEL_CHURN].fillna(False).astype(bool)
    return df.sort_values("customer_id").reset_index(drop=True)


def numeric_frame(df: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
    # As the encoder reads them: nullable ints/bools -> float64 with NaN.
    return df[numeric].apply(pd.to_numeric, errors="coerce").astype("float64")


# ------------------------------------------------------------------------------------------------
# Baselines


def signed_log1p(x):
    return np.sign(x) * np.log1p(np.abs(x))


def make_logreg(numeric: list[str], categorical: list[str], log1p: bool):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    num_steps = [("log1p", FunctionTransformer(signed_log1p, feature_names_out="one-to-one"))] if log1p else []
    num_steps += [("impute", SimpleImputer(strategy="median", add_indicator=True)), ("scale", StandardScaler())]
    pre = ColumnTransformer([("num", Pipeline(num_steps), numeric),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), categorical)])
    return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=5000))])


def logreg_x(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    x = numeric_frame(df, numeric)
    for c in categorical:
        x[c] = df[c].astype(str)  # as the encoder one-hots them (missing -> "nan")
    return x


def hgb_x(df: pd.DataFrame, numeric: list[str], categories: dict[str, list[str]]) -> pd.DataFrame:
    x = numeric_frame(df, numeric)
    for c, values in categories.items():
        v = df[c].astype("object")
        x[c] = pd.Categorical(v.where(v.isin(values)), categories=values)  # unseen or missing -> NaN
    return x


def fit_baselines(train: pd.DataFrame, test: pd.DataFrame, numeric: list[str], categorical: list[str],
                  suffix: str = "") -> dict[str, dict]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    out = {}
    y = train["y"].to_numpy()
    # A column without a value in the training rows (days_since_left among holders) is no input: the
    # imputer would drop it and gradient boosting's binning fails on it.
    numeric = [c for c in numeric if numeric_frame(train, [c])[c].notna().any()]
    for name, log1p in (("logreg", False), ("logreg_log1p", True)):
        model = make_logreg(numeric, categorical, log1p)
        t = time.perf_counter()
        model.fit(logreg_x(train, numeric, categorical), y)
        secs = time.perf_counter() - t
        p = model.predict_proba(logreg_x(test, numeric, categorical))[:, 1]
        out[name + suffix] = {"score": p, "train_seconds": round(secs, 2), "train_rows": len(train),
                              "n_iter": int(model[-1].n_iter_[0])}
    categories = {c: sorted(map(str, train[c].dropna().unique())) for c in categorical}
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    t = time.perf_counter()
    model.fit(hgb_x(train, numeric, categories), y)
    secs = time.perf_counter() - t
    p = model.predict_proba(hgb_x(test, numeric, categories))[:, 1]
    out["hgb" + suffix] = {"score": p, "train_seconds": round(secs, 2), "train_rows": len(train),
                           "n_iter": int(model.n_iter_)}
    return out


# ------------------------------------------------------------------------------------------------
# Metrics


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
    )

    from nba.metrics import calibration

    y = y.astype(bool)
    p = np.clip(p.astype("float64"), 0.0, 1.0)
    eq_width = calibration(y, p, bins=10)
    # Equal-count bins: the probabilities here are mostly below 0.1, where equal-width bins put everything
    # into the first bin.
    order = np.argsort(p, kind="stable")
    ece_q = 0.0
    for part in np.array_split(order, 10):
        ece_q += len(part) / len(p) * abs(p[part].mean() - y[part].mean())
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    top = order[::-1][: max(1, len(p) // 10)]
    return {
        "n": int(len(y)), "churners": int(y.sum()), "base_rate": round(float(y.mean()), 5),
        "roc_auc": round(float(roc_auc_score(y, p)), 4),
        "pr_auc": round(float(average_precision_score(y, p)), 4),
        "brier": round(float(brier_score_loss(y, p)), 5),
        "log_loss": round(float(log_loss(y, p, labels=[False, True])), 5),
        "mean_predicted": round(float(p.mean()), 5),
        "ece_10_equal_width": round(eq_width["ece"], 5),
        "ece_10_equal_count": round(float(ece_q), 5),
        "top10pct_churner_share": round(float(y[top].sum() / max(y.sum(), 1)), 4),
        "reliability_quantile_bins": [{"predicted": round(float(a), 5), "observed": round(float(b), 5)}
                                      for a, b in zip(prob_pred, prob_true)],
        "reliability_equal_width_bins": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in b.items()}
                                         for b in eq_width["bins"]],
    }


def bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], refs: list[str], b: int, seed: int = 0) -> dict:
    """Paired bootstrap over clients: 95% intervals of each ROC AUC and of each of ``refs`` minus each other
    model."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n = len(y)
    aucs = {k: [] for k in scores}
    done = 0
    while done < b:
        idx = rng.integers(0, n, n)
        yy = y[idx]
        if not 0 < yy.sum() < n:
            continue
        for k, s in scores.items():
            aucs[k].append(roc_auc_score(yy, s[idx]))
        done += 1
    ci = lambda a: [round(float(np.percentile(a, 2.5)), 4), round(float(np.percentile(a, 97.5)), 4)]  # noqa: E731
    out = {"resamples": b, "roc_auc_95ci": {k: ci(v) for k, v in aucs.items()}}
    for ref in refs:
        out[f"{ref}_minus_95ci"] = {}
        for k in scores:
            if k != ref:
                d = np.array(aucs[ref]) - np.array(aucs[k])
                out[f"{ref}_minus_95ci"][k] = ci(d) + [round(float((d <= 0).mean()), 4)]
    out["note"] = "REF_minus_95ci: [2.5%, 97.5%, share of resamples where REF does not beat the model]"
    return out


# ------------------------------------------------------------------------------------------------


def run_gnn(home, cfg_path: Path, sets: list[str], seed: int, as_of: date, suffix: str) -> tuple[dict, object]:
    """One ``run_training`` without Ray; the bundle read back through the registry, and what the run says
    of it (timings, the pipeline's own churn evaluation, ``churn_model``: the choice and its figures)."""
    from bundle import registry
    from training.config import load_run_config
    from training.pipeline import run_training

    cfg = load_run_config(cfg_path, ["ray.enabled=false", f"model.seed={seed}", *sets])[0]
    say(f"pipeline (nba_bundle{suffix}): training {cfg_path.name} seed {seed} at {as_of} (no Ray)")
    t = time.perf_counter()
    report = run_training(home, cfg, as_of, log=lambda m: say("  " + m), promote=False)
    wall = time.perf_counter() - t
    bundle, v = registry.load_registered(home, report.registered.version)
    if bundle.churn is None:
        sys.exit("the bundle carries no churn probabilities (no churn model)")
    ev = (report.evaluation or {}).get("churn", {})
    choice = bundle.meta.get("churn_model") or {}
    info = {"model": f"nba_bundle{suffix}", "label": f"nba_bundle{suffix} ({choice.get('chosen', 'unknown')})",
            "seed": seed, "as_of": str(as_of), "registered_version": v,
            "best_epoch": report.result.best_epoch, "epochs_run": len(report.result.history),
            "prepare_s": round(report.seconds["prepare"], 1), "train_s": round(report.seconds["train"], 1),
            "evaluate_s": round(report.seconds["evaluate"], 1), "run_training_wall_s": round(wall, 1),
            "churn_model": choice or None,
            "pipeline_churn_eval": {k: ev.get(k) for k in ("roc_auc", "pr_auc", "base_rate", "ece", "customers",
                                                           "former_clients")} if ev else None}
    say(f"  -> version {v}, {wall:.0f} s; churn model {choice.get('chosen')} ({choice.get('reason')}); "
        f"pipeline's churn ROC AUC {ev.get('roc_auc')}")
    return info, bundle


def pipeline_scores(bundle, frame: pd.DataFrame, suffix: str) -> tuple[dict[str, pd.Series], dict]:
    """The bundle's churn (``nba_bundle``) and the network head's (``gnn_head``, recomputed from the bundle's
    network on the bundle encoder's features of ``frame``: the features at the bundle's as_of), indexed by
    customer_id; and ``consistency``: how far the bundle's churn is from the chosen model on those features."""
    import joblib
    import torch

    from training.model import from_bundle

    ids = list(bundle.customer_ids)
    bundle_churn = pd.Series(np.asarray(bundle.churn, dtype="float64"), index=ids)
    out = {f"nba_bundle{suffix}": bundle_churn}
    frame = frame.set_index("customer_id").loc[ids].reset_index()
    x = bundle.encoder.transform(frame)
    model = from_bundle(bundle)
    choice = bundle.meta.get("churn_model") or {}
    check: dict = {"chosen": choice.get("chosen")}
    if model.churn is not None:
        with torch.no_grad():
            head = torch.sigmoid(model.churn_logit(torch.from_numpy(x))).numpy().astype("float64")
        out[f"gnn_head{suffix}"] = pd.Series(head, index=ids)
        if choice.get("chosen") in (None, "gnn_head"):
            check["max_abs_diff_to_head"] = float(np.abs(head - bundle_churn.to_numpy()).max())
    if choice.get("file") and (bundle.path / choice["file"]).exists():
        gbm = joblib.load(bundle.path / choice["file"])
        p = gbm.predict_proba(x)[:, 1]
        check["gradient_boosting_file"] = choice["file"]
        if choice.get("chosen") == "gradient_boosting":
            check["max_abs_diff_to_gradient_boosting"] = float(np.abs(p - bundle_churn.to_numpy()).max())
    elif choice.get("file"):
        check["gradient_boosting_file"] = f"{choice['file']} named in the meta but not in {bundle.path}"
    diffs = [v for k, v in check.items() if k.startswith("max_abs_diff")]
    say(f"  nba_bundle{suffix} = {check['chosen']}; largest difference to the chosen model recomputed: "
        f"{max(diffs) if diffs else 'not checked'}")
    return out, check


def compare(test: pd.DataFrame, train: pd.DataFrame, pipeline: dict[str, pd.Series], runs: list[dict], encoder,
            n_boot: int) -> dict:
    """Baselines trained on ``train``; every model scored on ``test`` (columns y, held_at_as_of, held_before).
    ``pipeline``: the scores of the pipeline's runs (``nba_bundle*``, ``gnn_head*``) by customer_id."""
    ref = next(iter(pipeline))
    ids = pipeline[ref].index
    if sorted(ids) != sorted(test["customer_id"]):
        sys.exit("the bundle's customers and the evaluation frame's differ")
    test = test.set_index("customer_id").loc[list(ids)].reset_index()
    scores = {k: s.loc[list(ids)].to_numpy() for k, s in pipeline.items()}
    numeric, categorical = list(encoder.numeric), list(encoder.categorical)

    holders = test["held_at_as_of"].astype(bool).to_numpy()
    held_before = test["held_before"].astype(bool).to_numpy()
    y_all = test["y"].astype(bool).to_numpy()
    np_col = pd.to_numeric(test["n_products"], errors="coerce").fillna(0).to_numpy() > 0
    out: dict = {"population": {
        "eval_clients": int(len(test)), "holders": int(holders.sum()),
        "excluded": int((~holders).sum()), "excluded_left_before": int((~holders & held_before).sum()),
        "excluded_never_held": int((~holders & ~held_before).sum()), "churners": int(y_all.sum()),
        "churners_outside_holders": int((y_all & ~holders).sum()),
        "n_products_disagrees_with_holdings": int((np_col != holders).sum()),
        "train_clients": int(len(train)), "train_churners": int(train["y"].sum()),
        "train_holders": int(train["held_at_as_of"].sum()),
        "train_holders_churners": int(train.loc[train["held_at_as_of"].astype(bool), "y"].sum()),
        "train_excluded_left": int((~train["held_at_as_of"] & train["held_before"]).sum()),
    }}
    pop = out["population"]
    say(f"evaluation: {pop['eval_clients']:,} clients, {pop['holders']:,} holders, {pop['excluded']:,} excluded "
        f"({pop['excluded_left_before']:,} left before, {pop['excluded_never_held']:,} never held), "
        f"{pop['churners']} churners ({pop['churners_outside_holders']} outside the holders); training rows: "
        f"{pop['train_clients']:,} ({pop['train_churners']} churners), holders {pop['train_holders']:,} "
        f"({pop['train_holders_churners']} churners)")

    base = fit_baselines(train, test, numeric, categorical)
    train_h = train[train["held_at_as_of"].astype(bool)].reset_index(drop=True)
    base.update(fit_baselines(train_h, test, numeric, categorical, suffix="_holders"))
    for k, v in base.items():
        scores[k] = v["score"]
        say(f"  {k}: trained in {v['train_seconds']} s on {v['train_rows']:,} rows")

    def run_of(name: str) -> dict | None:
        suffix = name.removeprefix("nba_bundle").removeprefix("gnn_head")
        return next((r for r in runs if r["model"] == f"nba_bundle{suffix}"), None)

    models = {}
    for k, s in scores.items():
        run = run_of(k) if k in pipeline else None
        if run:
            chosen = (run.get("churn_model") or {}).get("chosen")
            head = k.startswith("gnn_head") or chosen == "gnn_head"
            entry = {"label": run["label"] if k.startswith("nba_bundle") else k,
                     # the head trains with the network; gradient boosting is fitted in the evaluate phase
                     "train_seconds": run["train_s"] if head else None,
                     "train_rows": "the pipeline's churn examples less its validation share"}
        else:
            entry = {"label": k, "train_seconds": base[k]["train_seconds"], "train_rows": base[k]["train_rows"],
                     "n_iter": base[k]["n_iter"]}
        entry.update({
            "holders": metrics(y_all[holders], s[holders]),
            # the bundle gives no probability (NaN) to clients holding nothing: they count as 0 in "all"
            "all": metrics(y_all, np.nan_to_num(s, nan=0.0)) if 0 < y_all.sum() < len(y_all) else None,
            "mean_predicted_excluded": (round(float(np.nanmean(s[~holders])), 5)
                                        if (~holders).any() and not np.isnan(s[~holders]).all() else None),
        })
        models[k] = entry
    out["models"] = models
    refs = [k for k in ("nba_bundle", "gnn_head") if k in scores]
    t = time.perf_counter()
    out["bootstrap_holders"] = bootstrap(y_all[holders], {k: s[holders] for k, s in scores.items()}, refs, n_boot)
    out["bootstrap_seconds"] = round(time.perf_counter() - t, 1)

    say("\nmodel                                 train s   ROC AUC holders (all)   PR AUC holders (all)   Brier     "
        "mean p   ECE10w  ECE10q")
    for k, m in models.items():
        h, a = m["holders"], m["all"] or {"roc_auc": float("nan"), "pr_auc": float("nan")}
        secs = m["train_seconds"] if m["train_seconds"] is not None else float("nan")
        say(f"{m['label']:38s} {secs:7.1f}   {h['roc_auc']:.4f} ({a['roc_auc']:.4f})       "
            f"{h['pr_auc']:.4f} ({a['pr_auc']:.4f})        {h['brier']:.5f}  {h['mean_predicted']:.4f}  "
            f"{h['ece_10_equal_width']:.4f}  {h['ece_10_equal_count']:.4f}")
    say(f"(base rate among holders {models[ref]['holders']['base_rate']:.4f})\n")
    return out


def leak_columns(numeric: list[str]) -> dict[str, list[str]]:
    """Column groups for the ablations: point-in-time balances (a holding closed later reads ~0 before it
    closes: its stored balance is 0 and no closing movement is subtracted) and columns whose range depends
    on how far back a client's visible history goes (the generator anchors a past churner's history at its
    own last day)."""
    balances = [c for c in numeric if c.startswith(("balance_", "total_assets", "total_liabilities"))]
    history = [c for c in numeric if c.startswith(("days_since", "declines_90d"))
               or c in ("risk_assessment_age_days", "complaints_365d", "actions_30d")]
    return {"balances": balances, "history_length": history}


def ablations(train: pd.DataFrame, test: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict:
    """The baselines refitted without the balance columns, and without those and the history-length ones."""
    groups = leak_columns(numeric)
    holders = test["held_at_as_of"].astype(bool).to_numpy()
    y = test["y"].astype(bool).to_numpy()[holders]
    out = {"columns": groups}
    for name, drop in (("without_balances", groups["balances"]),
                       ("without_balances_and_history_length", groups["balances"] + groups["history_length"])):
        fits = fit_baselines(train, test, [c for c in numeric if c not in drop], categorical)
        out[name] = {k: {m: val for m, val in metrics(y, v["score"][holders]).items() if m in ("roc_auc", "pr_auc")}
                     for k, v in fits.items()}
        say(f"  ablation {name}: " + ", ".join(f"{k} {m['roc_auc']:.4f}" for k, m in out[name].items()))
    return out


def truth_cv(df: pd.DataFrame, numeric: list[str], categorical: list[str], folds: int = 5) -> dict:
    """A reference, not a deployable model: the baselines fitted on the truth labels themselves, out-of-fold
    (client-level stratified ``folds``-fold cross-validation over the holders at the data end). How much of
    the future churn the features at the data end can say."""
    from sklearn.model_selection import StratifiedKFold

    df = df[df["held_at_as_of"].astype(bool)].reset_index(drop=True)
    y = df["y"].astype(bool).to_numpy()
    oof: dict[str, np.ndarray] = {}
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=0).split(df, y):
        for k, v in fit_baselines(df.iloc[tr].reset_index(drop=True), df.iloc[te].reset_index(drop=True),
                                  numeric, categorical).items():
            oof.setdefault(k, np.zeros(len(df)))[te] = v["score"]
    out = {"folds": folds, "clients": int(len(df)), "churners": int(y.sum()),
           "models": {k: {m: metrics(y, p)[m] for m in ("roc_auc", "pr_auc", "brier", "ece_10_equal_count")}
                      for k, p in oof.items()}}
    say("  truth, cross-validated on the truth labels (reference): "
        + ", ".join(f"{k} {m['roc_auc']:.4f}" for k, m in out["models"].items()))
    return out


def truth_frame(home, version, day: date) -> pd.DataFrame | None:
    """Features at ``day`` (the data end) with the synthetic bank's own future churn (``_truth``)."""
    import pyarrow.parquet as pq

    from feature_store.materialize import features_at

    path = home.synthetic / "_truth" / "future_churn"
    if not path.exists():
        return None
    truth = pq.read_table(path).to_pandas()[["customer_id", "churned"]]
    df = features_at(home, day, version).merge(held_status(version, day), on="customer_id", how="left",
                                              validate="one_to_one")
    df = df.merge(truth, on="customer_id", how="left", validate="one_to_one")
    df["y"] = df["churned"].fillna(False).astype(bool)  # not in the truth: left before the data end
    return df.sort_values("customer_id").reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="built on the first run when empty, reused after")
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7, help="the synthetic bank's seed (first run only)")
    ap.add_argument("--config", type=Path, default=REPO / "configs/train.yaml")
    ap.add_argument("--set", action="append", default=[], help="training config override section.key=value")
    ap.add_argument("--gnn-seeds", default="0",
                    help="comma-separated model.seed values: one backtest pipeline run each")
    ap.add_argument("--as-of", default=None, help="backtest date (default: data end - horizon)")
    ap.add_argument("--no-truth", action="store_true", help="skip the production-model check on the bank's truth")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ["NBA_HOME"] = str(args.home)
    t0 = time.perf_counter()

    res: dict = {"command": " ".join(["python", *sys.argv]), "machine": machine(), "date": date.today().isoformat(),
                 "commit": commit(), "home": str(args.home)}
    res["bank"] = build_home(args.home, args.customers, args.seed)

    from feature_store.materialize import default_as_of
    from feature_store.store import TableStore
    from nba.home import Home
    from training.config import load_run_config

    home = Home.resolve(args.home).ensure()
    version = TableStore(home.store).require_current()
    cfg0, cfg_path = load_run_config(args.config, ["ray.enabled=false", *args.set])
    horizon = cfg0.data.churn_horizon_days
    if cfg0.evaluation.horizon_days != horizon:
        sys.exit("this benchmark expects data.churn_horizon_days == evaluation.horizon_days")
    end = default_as_of(version)
    as_of = date.fromisoformat(args.as_of) if args.as_of else end - timedelta(days=horizon)
    past = as_of - timedelta(days=horizon)
    res.update({"data_end": str(end), "horizon_days": horizon,
                "gnn_config": str(cfg_path.relative_to(REPO) if cfg_path.is_relative_to(REPO) else cfg_path),
                "gnn_overrides": ["ray.enabled=false", *args.set]})

    # 1. The backtest: as the pipeline evaluates its churn model (store labels of the horizon after as_of).
    t = time.perf_counter()
    test = labelled(home, version, as_of, horizon)
    train = labelled(home, version, past, horizon)
    frames_s = round(time.perf_counter() - t, 1)
    runs, pipeline, checks, encoder = [], {}, {}, None
    for i, seed in enumerate(int(s) for s in args.gnn_seeds.split(",") if s.strip()):
        suffix = "" if i == 0 else f"_seed{seed}"
        info, bundle = run_gnn(home, cfg_path, args.set, seed, as_of, suffix)
        scores, checks[info["model"]] = pipeline_scores(bundle, test, suffix)
        runs.append(info)
        pipeline.update(scores)
        encoder = encoder or bundle.encoder
    if not runs:
        sys.exit("--gnn-seeds names no run")
    res["backtest"] = {
        "as_of": str(as_of),
        "split": (f"temporal, as the pipeline's churn models: trained on features at {past} with the churn of "
                  f"[{past}, {as_of}), evaluated on features at {as_of} with the churn of "
                  f"[{as_of}, {as_of + timedelta(days=horizon)}) (labels: feature_store.offline.label_frame)"),
        "churn_model": runs[0]["churn_model"], "pipeline_runs": runs, "consistency": checks,
        "frames_seconds": frames_s,
        "inputs": {"numeric": len(encoder.numeric), "categorical": list(encoder.categorical),
                   "note": "the columns of the bundle's fitted encoder (the churn models' inputs)"},
        **compare(test, train, pipeline, runs, encoder, args.bootstrap),
        "ablation": ablations(train, test, list(encoder.numeric), list(encoder.categorical))}

    # 2. The production model (trained at the data end) against the synthetic bank's truth of the next 90 days.
    if not args.no_truth:
        tf = truth_frame(home, version, end)
        if tf is None:
            res["truth"] = "skipped: no synthetic/_truth/future_churn in this home"
        else:
            info, bundle = run_gnn(home, cfg_path, args.set, int(args.gnn_seeds.split(",")[0]), end, "")
            scores, check = pipeline_scores(bundle, tf, "")
            train_t = labelled(home, version, end - timedelta(days=horizon), horizon)
            res["truth"] = {
                "as_of": str(end),
                "split": (f"temporal: trained on features at {end - timedelta(days=horizon)} with the churn of "
                          f"[{end - timedelta(days=horizon)}, {end}) from the store; evaluated on features at {end} "
                          f"with the generator's own churn of the 90 days after ({args.home}/synthetic/_truth)"),
                "churn_model": info["churn_model"], "pipeline_runs": [info], "consistency": {info["model"]: check},
                **compare(tf, train_t, scores, [info], bundle.encoder, args.bootstrap),
                "cross_validated_on_truth": truth_cv(tf, list(bundle.encoder.numeric),
                                                     list(bundle.encoder.categorical))}

    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
