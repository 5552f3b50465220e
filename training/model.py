"""The recommender: LightGCN-style propagation plus node-feature encoders, in one module.

``HybridGNN`` propagates layer-0 embeddings over the normalised user-item graph with sparse matrix
products (no per-edge Python) and averages the layers, as LightGCN does. A node's layer-0 embedding is
the sum of what it has of:

- an ID embedding (users and items; either can be switched off);
- an encoder of its features (an MLP, or a linear map with ``hidden=0``).

With features, a user never seen in training still gets an embedding from its features (cold start);
with IDs only (``kind="lightgcn"``) it is plain LightGCN, the baseline, from the same code. Propagation
goes through :class:`SymmetricSpMM`: the adjacency is symmetric, so the backward pass is one more
product with the same matrix instead of torch's generic sparse backward (about 2x faster on CPU).

Heads: ``score(u, i) = <e_u, e_i> + b_i`` for ranking (``b_i`` is an optional learned item bias, which
carries popularity so the embeddings need not), and an optional churn probability from the customer's
features. The churn head does not read the propagated embedding: its labels come from a window that
ends at as_of, so it learns on features of as_of - horizon, when the graph was a different one.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn


def normalized_adjacency(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric ``D^-1/2 A D^-1/2`` of the bipartite graph as a CSR tensor ``[n_users + n_items]^2``.

    Repeated (user, item) pairs add up their weights.
    """
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
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; products are all we use
        warnings.simplefilter("ignore", UserWarning)
        adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n)).coalesce()
        return adj.to_sparse_csr()


class SymmetricSpMM(torch.autograd.Function):
    """``adj @ x`` for a symmetric sparse ``adj``: the gradient is ``adj @ grad`` (``adj.T == adj``)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adj @ grad


class HybridGNN(nn.Module):
    """Embeddings ``[num_users, dim]`` and ``[num_items, dim]`` from IDs, features and propagation."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64, layers: int = 2,
                 user_features: int = 0, item_features: int = 0, use_ids: bool = True,
                 hidden: int = 128, churn_head: bool = False, id_dropout: float = 0.0,
                 user_ids: bool | None = None, item_bias: bool = False, churn_features: int | None = None):
        super().__init__()
        user_ids = use_ids if user_ids is None else user_ids
        if not user_ids and user_features == 0:
            raise ValueError("a model without user ID embeddings needs user features")
        self.num_users, self.num_items, self.dim, self.layers = num_users, num_items, dim, layers
        self.id_dropout = id_dropout
        self.user_id = nn.Embedding(num_users, dim) if user_ids else None
        self.item_id = nn.Embedding(num_items, dim) if use_ids or item_features == 0 else None
        for emb in (self.user_id, self.item_id):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.1)
        self.user_mlp = self._mlp(user_features, hidden, dim) if user_features else None
        self.item_mlp = self._mlp(item_features, hidden, dim) if item_features else None
        self.item_bias = nn.Parameter(torch.zeros(num_items)) if item_bias else None
        n_churn = user_features if churn_features is None else churn_features
        self.churn = (nn.Sequential(nn.Linear(n_churn, 64), nn.ReLU(), nn.Linear(64, 1))
                      if churn_head and n_churn else None)

    @staticmethod
    def _mlp(n_in: int, hidden: int, dim: int) -> nn.Module:
        if hidden == 0:
            return nn.Linear(n_in, dim)
        return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def ego(self, user_x: torch.Tensor | None = None, item_x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-0 embeddings ``[num_users, dim]``, ``[num_items, dim]``."""
        u = self._ego_users(user_x)
        i = None
        if self.item_id is not None:
            i = self.item_id.weight
        if self.item_mlp is not None:
            f = self.item_mlp(item_x)
            i = f if i is None else i + f
        return u, i

    def _ego_users(self, user_x: torch.Tensor | None) -> torch.Tensor:
        u = None
        if self.user_id is not None:
            u = self.user_id.weight
            if self.training and self.id_dropout > 0:
                keep = (torch.rand(self.num_users, 1, device=u.device) >= self.id_dropout).to(u.dtype)
                u = u * keep
        if self.user_mlp is not None:
            f = self.user_mlp(user_x)
            u = f if u is None else u + f
        return u

    def forward(self, adj: torch.Tensor, user_x: torch.Tensor | None = None,
                item_x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Propagated user and item embeddings, and the layer-0 ones (for regularisation)."""
        u0, i0 = self.ego(user_x, item_x)
        x = torch.cat([u0, i0])
        out = x
        for _ in range(self.layers):
            x = SymmetricSpMM.apply(adj, x)
            out = out + x
        out = out / (self.layers + 1)
        return out[: self.num_users], out[self.num_users:], u0, i0

    def score(self, u_emb: torch.Tensor, i_emb: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Pairwise scores ``[n]`` when ``items`` indexes ``i_emb`` row by row, else all pairs ``[n_u, n_i]``."""
        if items is None:
            s = u_emb @ i_emb.T
            return s if self.item_bias is None else s + self.item_bias[None, :]
        s = (u_emb * i_emb[items]).sum(1)
        return s if self.item_bias is None else s + self.item_bias[items]

    def embed_new_users(self, user_x: torch.Tensor) -> torch.Tensor:
        """Embeddings of users not in the graph (cold start): features only, no neighbours."""
        if self.user_mlp is None:
            raise ValueError("this model has no user-feature encoder: it cannot embed unseen users")
        return self.user_mlp(user_x) / (self.layers + 1)

    def churn_logit(self, churn_x: torch.Tensor) -> torch.Tensor:
        """Churn logit per customer from its encoded features (all of them, holdings included)."""
        if self.churn is None:
            raise ValueError("this model was built without a churn head")
        return self.churn(churn_x).squeeze(1)


def from_bundle(bundle) -> HybridGNN:
    """The network of a bundle (:class:`bundle.Bundle`) rebuilt with its trained weights, on the CPU and
    in eval mode. The one place the bundle's ``weights.pt`` is read (serving reads the embeddings)."""
    m = HybridGNN(**bundle.meta["model_args"])
    path = bundle.weights_path
    if path.suffix == ".npz":
        with np.load(path) as z:
            state = {k: torch.from_numpy(z[k]) for k in z.files}
    else:  # schema 1
        state = torch.load(path, map_location="cpu", weights_only=True)
    m.load_state_dict(state)
    return m.eval()
