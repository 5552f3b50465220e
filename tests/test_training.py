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
