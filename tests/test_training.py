"""Training core (issue 4, in progress): graph at as_of, propagation, BPR loop, cold start."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
import torch

from feature_store.ingest import ingest
from feature_store.offline import compute_features
from feature_store.store import TableStore
from training.graph import RELATIONS, build_graph
from training.loop import TrainConfig, build, popularity_topk, recommend, train_loop
from training.model import HybridGNN, normalized_adjacency

AS_OF = date(2026, 5, 1)


@pytest.fixture(scope="module")
def graph(bank, tmp_path_factory):
    store = TableStore(tmp_path_factory.mktemp("train") / "store")
    version = ingest(bank, store)
    feats = compute_features(version, AS_OF)
    return build_graph(version, feats, AS_OF), feats


def test_graph_has_typed_edges_with_reverses_and_node_features(graph):
    g, feats = graph
    d = g.data
    assert d["customer"].num_nodes == len(feats) and d["product"].num_nodes == len(g.product_ids) == 22
    assert d["customer"].x.shape[1] == len(g.encoder.names)
    assert torch.isfinite(d["customer"].x).all()
    for rel in RELATIONS:
        fwd = d["customer", rel, "product"].edge_index
        assert torch.equal(d["product", f"rev_{rel}", "customer"].edge_index, fwd.flip(0))
    assert d["customer", "holds", "product"].edge_index.shape[1] > len(feats)
    assert d["customer", "declined", "product"].edge_index.shape[1] > 0


def test_graph_is_point_in_time(graph):
    g, feats = graph
    held = feats.set_index("customer_id")["held_products"]
    ei = g.data["customer", "holds", "product"].edge_index.numpy()
    from_graph = {}
    for c, p in zip(ei[0], ei[1]):
        from_graph.setdefault(g.customer_ids[c], set()).add(g.product_ids[p])
    for cid in g.customer_ids[:300]:
        assert from_graph.get(cid, set()) == set(filter(None, held[cid].split("|"))), cid


def test_adjacency_is_symmetric_normalised():
    adj = normalized_adjacency(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 2, 2).to_dense()
    assert torch.allclose(adj, adj.T)
    # user 0 has degree 2, item 0 degree 1: weight 1/sqrt(2*1)
    assert adj[0, 2] == pytest.approx(1 / np.sqrt(2))


@pytest.mark.parametrize("kind", ["nba", "lightgcn"])
def test_loss_falls_and_runs_repeat(graph, kind):
    g, _ = graph
    data = g.interactions()
    cfg = TrainConfig(kind=kind, epochs=4, batch_size=2048, dim=16, hidden=32, seed=3)
    first = train_loop(cfg, data)
    losses = [h["loss"] for h in first.history]
    assert losses[-1] < 0.85 * losses[0]
    again = train_loop(cfg, data)
    assert [h["loss"] for h in again.history] == pytest.approx(losses, rel=1e-5), "seeded CPU runs repeat"


def test_recommendations_never_include_held_products(graph):
    g, _ = graph
    data = g.interactions()
    cfg = TrainConfig(epochs=1, batch_size=4096, dim=16, hidden=32)
    result = train_loop(cfg, data)
    model, adj, ux, ix = build(cfg, data, torch.device("cpu"))
    model.load_state_dict(result.model.state_dict())
    users = np.arange(200)
    top = recommend(model, adj, ux, ix, users, data.train_users, data.train_items, k=3)
    held = set(zip(data.train_users.tolist(), data.train_items.tolist()))
    n_held = np.bincount(data.train_users, minlength=data.num_users)
    for u in users:
        if n_held[u] <= data.num_items - 3:
            assert not any((int(u), int(i)) in held for i in top[u])
    pop = popularity_topk(data, users, 3)
    for u in users:
        if n_held[u] <= data.num_items - 3:
            assert not any((int(u), int(i)) in held for i in pop[u])


def test_cold_start_customer_gets_a_useful_embedding(graph):
    g, _ = graph
    data = g.interactions()
    result = train_loop(TrainConfig(epochs=3, batch_size=2048, dim=16, hidden=32, id_dropout=0.5), data)
    model: HybridGNN = result.model.eval()
    x = torch.from_numpy(data.user_x[:50])
    with torch.no_grad():
        cold = model.embed_new_users(x)
    assert torch.isfinite(cold).all()
    assert cold.norm(dim=1).min() > 1e-3, "not a zero vector"
    assert torch.pdist(cold).mean() > 1e-3, "different features give different embeddings"
    with pytest.raises(ValueError, match="no user-feature encoder"):
        HybridGNN(3, 3).embed_new_users(x[:3])


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        TrainConfig(kind="transformer")
    with pytest.raises(ValueError, match="extra"):
        TrainConfig(epochz=3)


def _naive_softmax_loss(model, adj, bu, bi):
    """-log softmax over all items, one positive at a time (what the grouped loss must equal)."""
    u_emb, i_emb, _, _ = model(adj)
    total = 0.0
    for u, i in zip(bu.tolist(), bi.tolist()):
        logits = u_emb[u] @ i_emb.T + model.item_bias
        total = total - torch.log_softmax(logits, 0)[i]
    return total / len(bu)


def test_softmax_loss_is_the_full_softmax_per_positive():
    from training.loop import _Objective
    torch.manual_seed(0)
    n_u, n_i = 5, 7
    users, items = torch.tensor([0, 0, 1, 2, 3, 4, 4]), torch.tensor([0, 1, 2, 3, 4, 5, 6])
    adj = normalized_adjacency(users, items, n_u, n_i)
    model = HybridGNN(n_u, n_i, dim=8, layers=2, item_bias=True)
    with torch.no_grad():
        model.item_bias.normal_()
    bu, bi = torch.tensor([4, 0, 4, 0, 2]), torch.tensor([5, 0, 6, 1, 3])  # users repeat, unsorted
    cfg = TrainConfig(kind="lightgcn", loss="softmax", negatives=0, weight_decay=0)
    full = _Objective(model, cfg)(adj, None, None, bu, bi, None)
    assert full.item() == pytest.approx(_naive_softmax_loss(model, adj, bu, bi).item(), rel=1e-5)
    # sampled: with every item as the shared negatives, the estimate adds the positive once more
    sampled = _Objective(model, cfg.model_copy(update={"negatives": n_i}))(adj, None, None, bu, bi, torch.arange(n_i))
    u_emb, i_emb, _, _ = model(adj)
    lse = torch.logsumexp(u_emb[bu] @ i_emb.T + model.item_bias, 1)
    pos = (u_emb[bu] * i_emb[bi]).sum(1) + model.item_bias[bi]
    assert sampled.item() == pytest.approx((torch.logaddexp(pos, lse) - pos).mean().item(), rel=1e-5)


@pytest.mark.parametrize("negatives", [0, 3])
def test_softmax_training_learns_a_planted_structure(negatives):
    # two groups of users, each with its own half of the items: the held-out item of a user must
    # rank in its own half
    rng = np.random.default_rng(0)
    n_u, n_i = 60, 10
    group = np.arange(n_u) % 2
    pairs = [(u, i) for u in range(n_u) for i in range(n_i) if i % 2 == group[u] and rng.random() < 0.7]
    us, its = np.array(pairs).T
    from training.loop import InteractionData
    data = InteractionData(n_u, n_i, us, its)
    cfg = TrainConfig(kind="lightgcn", loss="softmax", negatives=negatives, epochs=30, dim=8,
                      batch_size=64, min_steps_per_epoch=1, lr=0.05, seed=1, user_ids=True)
    r = train_loop(cfg, data)
    assert r.history[-1]["loss"] < r.history[0]["loss"]
    model, adj, _, _ = build(cfg, data, torch.device("cpu"))
    model.load_state_dict(r.model.state_dict())
    model.eval()
    with torch.no_grad():
        u_emb, i_emb, _, _ = model(adj)
        scores = model.score(u_emb, i_emb)
    own = scores[:, 0::2].mean(1).where(torch.as_tensor(group == 0), scores[:, 1::2].mean(1))
    other = scores[:, 1::2].mean(1).where(torch.as_tensor(group == 0), scores[:, 0::2].mean(1))
    assert (own > other).float().mean() > 0.95


# --- issue 17: epoch selection that holds up on small or odd data ---------------------------------------


def _planted(n_items: int, n_users: int = 80, seed: int = 0):
    """Two groups of users, each holding items of its own parity; one held item per user in three is
    held out for validation."""
    from training.loop import InteractionData
    rng = np.random.default_rng(seed)
    group = np.arange(n_users) % 2
    pairs = np.array([(u, i) for u in range(n_users) for i in range(n_items)
                      if i % 2 == group[u] and rng.random() < 0.7])
    first = np.unique(pairs[:, 0], return_index=True)[1]
    valid = np.zeros(len(pairs), bool)
    valid[first[::3]] = True
    return InteractionData(n_users, n_items, pairs[~valid, 0], pairs[~valid, 1],
                           valid_users=pairs[valid, 0], valid_items=pairs[valid, 1])


def _cfg(**kw):
    # planted data holds out few pairs: min_validation_pairs 0 lets them choose, to test how they choose
    kw.setdefault("min_validation_pairs", 0)
    return TrainConfig(kind="lightgcn", dim=8, batch_size=64, min_steps_per_epoch=1, lr=0.05, seed=1, **kw)


def test_small_catalogue_caps_k_and_a_constant_metric_falls_back_to_the_validation_loss():
    """5 items, topk 10, early stopping on recall@5 (the defaults): K is capped at 5 (no @10 is logged),
    recall@5 is 1.0 for any model, so the validation loss chooses the epoch (not epoch 0 by a tie)."""
    data = _planted(5)
    r = train_loop(_cfg(epochs=12, patience=4), data)
    keys = set(r.history[0])
    assert "val_recall@5" in keys and "val_loss" in keys and not any(k.endswith(("@10", "@20")) for k in keys)
    assert all(h["val_recall@5"] == 1.0 for h in r.history)
    sel = r.selection
    assert sel["criterion"] == "val_loss" and sel["fallback"] and sel["requested"] == "val_recall@5"
    assert "same for any model" in sel["reason"] and "validation loss" in sel["reason"]
    losses = [h["val_loss"] for h in r.history]
    assert r.best_epoch == sel["best_epoch"] == int(np.argmin(losses)) and r.best == r.history[r.best_epoch]
    assert r.best_epoch > 0, "the validation loss improved after epoch 0 here"


def test_early_stop_metric_above_the_catalogue_is_capped():
    from training.loop import validation_plan
    assert validation_plan(TrainConfig(early_stop_metric="ndcg@10", topk=10), 5) == (5, (5,), "ndcg@5")
    assert validation_plan(TrainConfig(early_stop_metric="recall@3", topk=10), 22) == (10, (3, 5, 10), "recall@3")
    assert validation_plan(TrainConfig(early_stop_metric="loss"), 22)[2] == "loss"
    with pytest.raises(ValueError, match="early_stop_metric"):
        TrainConfig(early_stop_metric="recall")


def test_a_metric_that_never_moves_falls_back_to_the_validation_loss(monkeypatch):
    """A metric stuck at one value (here forced to 0.5) for 1 + `patience` evaluations cannot choose the
    epoch: the validation loss takes over, from the epoch with the lowest one so far."""
    import training.loop as loop

    def stuck(topk, tu, ti, n_items, ks=(10,), with_map=False):
        return {f"{m}@{k}": 0.5 for k in ks for m in ("recall", "precision", "ndcg")} | {"users_evaluated": 1}

    monkeypatch.setattr(loop, "ranking_metrics", stuck)
    data = _planted(10)
    r = train_loop(_cfg(epochs=15, patience=3), data)
    sel = r.selection
    assert sel["criterion"] == "val_loss" and "stayed at 0.5000 for all 4 evaluations" in sel["reason"]
    assert r.best_epoch == int(np.argmin([h["val_loss"] for h in r.history]))


def test_without_validation_the_configured_epochs_run_and_the_last_is_kept():
    from training.loop import InteractionData
    d = _planted(10)
    data = InteractionData(d.num_users, d.num_items, d.train_users, d.train_items)
    r = train_loop(_cfg(epochs=3), data)
    sel = r.selection
    assert sel["criterion"] == "last_epoch" and sel["best_epoch"] == r.best_epoch == 2 and sel["epochs_run"] == 3
    assert "no validation pairs" in sel["reason"]


def test_a_checkpoint_gives_the_run_s_selection_and_weights():
    """Ray Train's result is rebuilt from the last checkpoint: same selection, same weights."""
    from training.trainer import _result_from_state
    data = _planted(5)
    cfg = _cfg(epochs=6, patience=10)
    snaps = []
    r = train_loop(cfg, data, on_epoch=lambda e, m, snap: snaps.append(snap()))
    rebuilt = _result_from_state(cfg, data, snaps[-1], 0.0)
    assert rebuilt.selection == r.selection and rebuilt.best_epoch == r.best_epoch
    assert all(torch.equal(v, rebuilt.model.state_dict()[k]) for k, v in r.model.state_dict().items())


def test_encoder_takes_an_all_null_column_quietly():
    """A column a bank does not have (all null) gets mean 0, std 1 and a missing flag, with no numpy
    'Mean of empty slice' warning, and the encoder's JSON stays strict JSON (no NaN)."""
    import json
    import warnings

    import pandas as pd

    from bundle.encoder import FeatureEncoder
    df = pd.DataFrame({"customer_id": ["a", "b", "c"], "age": [30, 40, None],
                       "total_assets": [None, None, None], "segment": ["mass", "affluent", None]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = FeatureEncoder.fit(df)
        x = enc.transform(df)
    j = enc.numeric.index("total_assets")
    assert enc.mean[j] == 0.0 and enc.std[j] == 1.0 and "total_assets" in enc.flags
    assert np.isfinite(x).all() and (x[:, enc.names.index("total_assets_missing")] == 1).all()
    raw = np.sign(np.array([30.0, 40.0])) * np.log1p([30.0, 40.0])
    assert enc.mean[enc.numeric.index("age")] == pytest.approx(raw.mean())
    json.dumps(enc.to_dict(), allow_nan=False)


def test_a_metric_at_its_maximum_from_the_start_falls_back_to_the_validation_loss(monkeypatch):
    """Without the up-front check, recall@5 = 1.0 at the first evaluation is caught as it happens."""
    import training.loop as loop
    monkeypatch.setattr(loop, "_constant_metric", lambda metric, data: None)
    r = train_loop(_cfg(epochs=6, patience=3), _planted(5))
    assert r.selection["criterion"] == "val_loss"
    assert "at its maximum 1 from the first evaluation" in r.selection["reason"]
    assert r.best_epoch == int(np.argmin([h["val_loss"] for h in r.history]))


def test_no_metric_and_no_validation_loss_falls_back_to_the_schedule():
    """Two products, every validation client holds the other one: neither recall@2 nor a validation loss
    (no unheld negative) can choose, so the configured epochs run and the last is kept."""
    from training.loop import InteractionData
    n = 40
    users = np.arange(n)
    data = InteractionData(n, 2, users, np.zeros(n, np.int64), valid_users=users[:10], valid_items=np.ones(10, np.int64))
    r = train_loop(_cfg(epochs=3, patience=1), data)
    sel = r.selection
    assert sel["criterion"] == "last_epoch" and r.best_epoch == 2 and len(r.history) == 3
    assert "same for any model" in sel["reason"] and "no validation loss" in sel["reason"]
    assert "val_recall@2" in r.history[0] and "val_loss" not in r.history[0]


def test_too_few_validation_pairs_run_the_schedule():
    data = _planted(5)
    n = len(data.valid_users)
    r = train_loop(_cfg(epochs=4, patience=1, min_validation_pairs=n + 1), data)
    sel = r.selection
    assert sel["criterion"] == "last_epoch" and r.best_epoch == 3 and len(r.history) == 4
    assert f"only {n} validation pairs (model.min_validation_pairs {n + 1})" in sel["reason"]
    assert "val_loss" in r.history[0], "the validation figures are still logged"
