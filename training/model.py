"""The recommender: LightGCN-style propagation plus node-feature encoders, in one module.

``HybridGNN`` propagates layer-0 embeddings over the normalised user-item graph with sparse matrix
products (no per-edge Python) and averages the layers, as LightGCN does. A node's layer-0 embedding is
its ID embedding plus an MLP of its features:

- with features and IDs (``kind="nba"``): collaborative signal and cold start. A user never seen in
  training still gets ``MLP(features)``. During training, ID dropout zeroes some users' ID embeddings,
  so that the feature path learns to stand on its own.
- without features (``kind="lightgcn"``): plain LightGCN, the baseline, from the same code.

Heads: ``score(u, i) = <e_u, e_i>`` for ranking (trained with BPR), and an optional churn logit from
``[e_u, features_u]``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def normalized_adjacency(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric ``D^-1/2 A D^-1/2`` of the bipartite graph as a CSR tensor ``[n_users + n_items]^2``."""
    device = users.device
    w = torch.ones(len(users), device=device) if weight is None else weight.to(device, torch.float32)
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    vals = torch.cat([w, w])
    n = n_users + n_items
    deg = torch.zeros(n, device=device).index_add_(0, rows, vals)
    inv = deg.pow(-0.5)
    inv[torch.isinf(inv)] = 0
    vals = inv[rows] * vals * inv[cols]
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; products and autograd are what we use
        warnings.simplefilter("ignore", UserWarning)
        adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n)).coalesce()
        return adj.to_sparse_csr()


class HybridGNN(nn.Module):
    """Embeddings ``[num_users, dim]`` and ``[num_items, dim]`` from IDs, features and propagation."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64, layers: int = 2,
                 user_features: int = 0, item_features: int = 0, use_ids: bool = True,
                 hidden: int = 128, churn_head: bool = False, id_dropout: float = 0.0):
        super().__init__()
        if not use_ids and user_features == 0:
            raise ValueError("a model without ID embeddings needs user features")
        self.num_users, self.num_items, self.dim, self.layers = num_users, num_items, dim, layers
        self.id_dropout = id_dropout
        self.user_id = nn.Embedding(num_users, dim) if use_ids else None
        self.item_id = nn.Embedding(num_items, dim) if use_ids or item_features == 0 else None
        for emb in (self.user_id, self.item_id):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.1)
        self.user_mlp = self._mlp(user_features, hidden, dim) if user_features else None
        self.item_mlp = self._mlp(item_features, hidden, dim) if item_features else None
        self.churn = (nn.Sequential(nn.Linear(dim + user_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
                      if churn_head else None)

    @staticmethod
    def _mlp(n_in: int, hidden: int, dim: int) -> nn.Module:
        return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def ego(self, user_x: torch.Tensor | None = None, item_x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-0 embeddings ``[num_users, dim]``, ``[num_items, dim]``."""
        device = next(self.parameters()).device
        u = torch.zeros(self.num_users, self.dim, device=device)
        if self.user_id is not None:
            w = self.user_id.weight
            if self.training and self.id_dropout > 0:
                keep = (torch.rand(self.num_users, 1, device=device) >= self.id_dropout).float()
                w = w * keep
            u = u + w
        if self.user_mlp is not None:
            u = u + self.user_mlp(user_x)
        i = torch.zeros(self.num_items, self.dim, device=device)
        if self.item_id is not None:
            i = i + self.item_id.weight
        if self.item_mlp is not None:
            i = i + self.item_mlp(item_x)
        return u, i

    def forward(self, adj: torch.Tensor, user_x: torch.Tensor | None = None,
                item_x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Propagated user and item embeddings, and the layer-0 ones (for regularisation)."""
        u0, i0 = self.ego(user_x, item_x)
        x = torch.cat([u0, i0])
        out = x
        for _ in range(self.layers):
            x = adj @ x
            out = out + x
        out = out / (self.layers + 1)
        return out[: self.num_users], out[self.num_users:], u0, i0

    def embed_new_users(self, user_x: torch.Tensor) -> torch.Tensor:
        """Embeddings of users not in the graph (cold start): features only, no neighbours."""
        if self.user_mlp is None:
            raise ValueError("this model has no user-feature encoder: it cannot embed unseen users")
        return self.user_mlp(user_x) / (self.layers + 1)

    def churn_logit(self, user_emb: torch.Tensor, user_x: torch.Tensor | None) -> torch.Tensor:
        if self.churn is None:
            raise ValueError("this model was built without a churn head")
        parts = [user_emb] if user_x is None else [user_emb, user_x]
        return self.churn(torch.cat(parts, dim=1)).squeeze(1)
