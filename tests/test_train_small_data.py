"""Issue 17, training on small or odd data: a 5-product bank trained with the default config (every K
capped at the catalogue, an early-stopping metric that cannot discriminate falls back to the validation
loss), no validation at all, and the churn head kept to the clients who hold a product."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from feature_store.ingest import ingest
from feature_store.materialize import features_at
from feature_store.offline import label_frame
from feature_store.store import TableStore
from nba import schema
from nba.home import Home
from nba.synthetic import generate
from tests.conftest import AS_OF
from training.config import EvalConfig, load_run_config
from training.pipeline import evaluate, holds_a_product, prepare, run_training

TRAIN_AS_OF = AS_OF - timedelta(days=90)  # the store holds the 90 days after it: a backtest
FIVE = ["CUR-ACCT", "SAV-ACCT", "TD-12M", "CARD-CLASSIC", "FUND-BOND"]


@pytest.fixture(scope="module")
def five_product_bank(tmp_path_factory):
    """A 1,000-customer synthetic bank cut down to 5 products: the other products' holdings and
    transactions are dropped, and interactions, complaints and outcomes about them too."""
    root = tmp_path_factory.mktemp("five")
    generate(1_000, seed=11, as_of=AS_OF, out=root / "full", workers=1)
    out = root / "bank"
    for name in schema.TABLES:
        table = ds.dataset(root / "full" / name).to_table()
        if "product_id" in table.column_names:
            keep = pc.is_in(table["product_id"], pa.array(FIVE))
            table = table.filter(keep if name in ("products", "holdings", "transactions")
                                 else pc.or_(pc.is_null(table["product_id"]), keep))
        (out / name).mkdir(parents=True)
        pq.write_table(table, out / name / "part-0.parquet")
    return out


@pytest.fixture(scope="module")
def home(five_product_bank, tmp_path_factory) -> Home:
    h = Home.resolve(tmp_path_factory.mktemp("fivehome")).ensure()
    ingest(five_product_bank, TableStore(h.store))
    return h


@pytest.fixture(scope="module")
def default_run(home):
    """The default config (configs/train.yaml), only without Ray: a backtest with MLflow."""
    cfg = load_run_config(None, ["ray.enabled=false"])[0]
    assert cfg.evaluation.ks == EvalConfig().ks == [1, 3, 5, 10] and cfg.model.early_stop_metric == "recall@5"
    lines: list[str] = []
    report = run_training(home, cfg, TRAIN_AS_OF, log=lines.append)
    return report, lines


def test_five_products_train_with_the_default_ks_capped(default_run):
    report, lines = default_run
    ev = report.evaluation
    assert report.result.model.num_items == 5
    assert ev["ks"] == [1, 3, 5] and ev["ks_requested"] == [1, 3, 5, 10]
    assert {"recall@5", "ndcg@5", "recall@3"} <= set(ev["model"]) and "recall@10" not in ev["model"]
    assert not any(k.endswith(("@10", "@20")) for h in report.result.history for k in h)
    assert any("K capped at the catalogue size (5 products)" in line for line in lines)
    # nba models list shows recall@3 here: recall@5 of 5 products is 1.0 for any model.
    from mlflow import MlflowClient

    from apps.cli import _headline_k
    metrics = MlflowClient().get_run(report.run_id).data.metrics
    assert metrics["catalogue_products"] == 5 and _headline_k(metrics) == 3
    assert _headline_k({"test.model.recall_at_5": 0.4, "test.model.recall_at_10": 0.6, "catalogue_products": 40}) == 5
    assert _headline_k({"val_loss": 1.0}) is None


def test_a_metric_that_cannot_discriminate_does_not_ship_epoch_0(default_run):
    """recall@5 over 5 products is 1.0 whatever the model, and a few dozen held-out pairs cannot choose an
    epoch on their loss either: the configured epochs run and the last is kept (not epoch 0), and the log,
    MLflow and the bundle say so. (The validation-loss fallback itself: tests/test_training.py.)"""
    import mlflow

    from bundle import read_bundle

    report, lines = default_run
    r = report.result
    assert all(h["val_recall@5"] == 1.0 for h in r.history)
    sel = r.selection
    import re
    n_pairs = int(next(m.group(1).replace(",", "") for line in lines
                       if (m := re.search(r"([\d,]+) held out for validation", line))))
    assert 0 < n_pairs < 100, "this bank holds out only a few dozen validation pairs"
    assert sel["criterion"] == "last_epoch" and sel["fallback"]
    assert f"only {n_pairs} validation pairs" in sel["reason"] and "too few to choose an epoch" in sel["reason"]
    epochs = load_run_config(None, ["ray.enabled=false"])[0].model.epochs
    assert r.best_epoch == len(r.history) - 1 > 0 and len(r.history) == epochs
    assert any(f"only {n_pairs} validation pairs" in line for line in lines)
    run = mlflow.MlflowClient().get_run(report.run_id)
    assert run.data.params["selection.criterion"] == "last_epoch"
    assert run.data.params["selection.best_epoch"] == str(r.best_epoch)
    assert run.data.params["evaluation.ks_used"] == "[1, 3, 5]"
    assert run.data.tags["selection.fallback"] == "true" and "too few" in run.data.tags["selection.reason"]
    meta = read_bundle(report.bundle_dir).meta
    assert meta["selection"] == sel and meta["best_epoch"] == r.best_epoch


def test_without_validation_the_log_says_what_happened(home):
    cfg = load_run_config(None, ["ray.enabled=false", "data.valid_share=0", "model.epochs=3"])[0]
    lines: list[str] = []
    r = run_training(home, cfg, TRAIN_AS_OF, log=lines.append, use_mlflow=False)
    assert r.result.selection["criterion"] == "last_epoch" and r.result.best_epoch == 2
    text = "\n".join(lines)
    assert "best epoch -1" not in text
    assert "kept the last epoch (2; 3 run): no validation pairs" in text
    # No held-out openings: no calibration, so every client's propensity is the prior, and says so.
    from bundle import read_bundle
    b = read_bundle(r.bundle_dir)
    assert b.meta["propensity"] is None and b.meta["propensity_prior"]["groups"]["established"]["clients"] > 100
    assert "every client's propensity is the prior of shrunk base rates" in text
    P, from_prior = b.propensity_for(np.arange(len(b.customer_ids)))
    assert from_prior.all() and np.isfinite(P).all() and (P > 0).all() and (P < 0.5).all()


@pytest.fixture(scope="module")
def prepared(home):
    return prepare(home, load_run_config(None, ["ray.enabled=false"])[0], TRAIN_AS_OF)


def test_churn_examples_leave_out_clients_without_a_product(home, prepared):
    cfg = load_run_config(None, ["ray.enabled=false"])[0]
    version = TableStore(home.store).require_current()
    past = TRAIN_AS_OF - timedelta(days=cfg.data.churn_horizon_days)
    labelled = features_at(home, past, version).merge(
        label_frame(version, past, cfg.data.churn_horizon_days)[["customer_id", "label_churn"]], on="customer_id")
    present = labelled["n_products"] > 0
    assert (~present).sum() > 10, "the bank has former clients"
    assert not labelled.loc[~present, "label_churn"].any(), "a client without a product cannot churn"
    assert prepared.churn_former == (~present).sum()
    # the examples: the clients present then, a validation share held out to choose the churn model
    assert prepared.churn_rows == len(prepared.data.churn) + len(prepared.churn_val_y) == present.sum()
    assert 0.15 < len(prepared.churn_val_y) / prepared.churn_rows < 0.25
    churners = prepared.data.churn.sum() + prepared.churn_val_y.sum()
    assert churners == labelled.loc[present, "label_churn"].sum() and prepared.churn_val_y.any()


def test_churn_auc_counts_only_the_clients_present_at_as_of(home, prepared):
    """Scores that rank the present clients perfectly and put every former client at the top: the ROC
    AUC is 1.0 because former clients are left out (counted as non-churners, they would pull it down)."""
    feats = features_at(home, TRAIN_AS_OF, prepared.version).sort_values("customer_id")
    present = holds_a_product(feats)
    assert list(feats["customer_id"]) == prepared.graph.customer_ids and (~present).sum() > 10
    labels = label_frame(prepared.version, TRAIN_AS_OF, 90).set_index("customer_id").reindex(
        prepared.graph.customer_ids)["label_churn"].fillna(False).astype(bool).to_numpy()
    churn = np.where(present, labels * 0.8 + 0.1, 1.0)
    n, m = prepared.full.num_users, prepared.full.num_items
    rng = np.random.default_rng(0)
    ev = evaluate(prepared, rng.normal(size=(n, 4)), rng.normal(size=(m, 4)), np.zeros(m), churn, 90, [1, 3, 5, 10])
    c = ev["churn"]
    assert c["roc_auc"] == 1.0 and c["customers"] == present.sum() and c["former_clients"] == (~present).sum()
    assert c["base_rate"] == pytest.approx(labels[present].mean())


def test_without_transactions_past_balances_are_not_churn_inputs(five_product_bank, tmp_path):
    """Without a transactions table, a past balance is today's: a client who closed everything shows 0
    before the closure, the churn label itself. Those inputs are masked (0, the encoded mean) in the churn
    examples and at as_of, and named; the graph's own features keep them."""
    import shutil

    from nba import features as F

    bank = tmp_path / "bank"
    shutil.copytree(five_product_bank, bank)
    shutil.rmtree(bank / "transactions")
    h = Home.resolve(tmp_path / "home").ensure()
    version = ingest(bank, TableStore(h.store))
    assert version.absent("transactions")
    p = prepare(h, load_run_config(None, ["ray.enabled=false"])[0], TRAIN_AS_OF)
    names = p.graph.encoder.names
    assert {"total_assets", "total_liabilities", "balance_deposit"} <= set(p.churn_masked)
    assert set(p.churn_masked) <= {n.removesuffix("_missing") for n in F.PAST_BALANCES} | {
        f"{n}_missing" for n in F.PAST_BALANCES}
    cols = [names.index(n) for n in p.churn_masked]
    assert p.churn_rows > 100
    for x in (p.data.churn_x, p.churn_val_x, p.full.churn_x):
        assert not x[:, cols].any()
    rec = [names[c] for c in p.graph.rec_columns]
    if "total_assets" in rec:  # the graph's features keep the balances
        assert p.full.user_x[:, rec.index("total_assets")].any()
    # With transactions nothing is masked.
    h2 = Home.resolve(tmp_path / "h2").ensure()
    ingest(five_product_bank, TableStore(h2.store))
    assert prepare(h2, load_run_config(None, ["ray.enabled=false"])[0], TRAIN_AS_OF).churn_masked == []
