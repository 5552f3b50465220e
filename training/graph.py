"""The customer-product graph at an as_of date, as a PyG ``HeteroData`` and as training arrays.

Nodes: ``customer`` (x: encoded point-in-time features) and ``product`` (x: category, risk, margin,
age limit, segments, term). Typed edges, all dated before as_of, each with a reverse edge:

- ``holds``: held at as_of;
- ``acquired``: opened in the 365 days before as_of (also closed ones);
- ``asked_about``: interactions about a product in the last 365 days;
- ``declined``: offers of a product declined in the last 365 days;
- ``complained_about``: complaints about a product in the last 365 days.

For the recommender, ``holds`` + ``acquired`` are the positive pairs, ``asked_about`` adds
propagation-only edges with a lower weight, and ``declined`` supplies hard negatives. Complaints stay
in the graph for the heads and for later models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from bundle.encoder import FeatureEncoder
from feature_store.offline import connect, instant
from feature_store.store import StoreVersion
from nba import schema

from .loop import InteractionData

RELATIONS = ("holds", "acquired", "asked_about", "declined", "complained_about")
RECENT_DAYS = 90  # acquisitions this recent can be held out for validation
# Features that restate the holdings (counts and balances per category). The graph already carries the
# holdings; the recommender tower leaves these out so it cannot learn to score a product by reading
# its own label (the churn head keeps them: balances are its best evidence).
HOLDING_FEATURES = ("n_products", "balance_")


MAX_EXTENSION_LEVELS = 32  # one-hot columns of a text extension column of the products (the most frequent)


def product_features(products: pd.DataFrame, extensions: Mapping[str, str] | None = None) -> np.ndarray:
    """``[n_products, f]`` the item tower's inputs: category and eligible segments one-hot, risk level,
    margin, minimum age and term (scaled), then the bank's own product columns (``extensions``: name ->
    int, float, bool or str, as declared under ``extensions.products`` in ``configs/bank.yaml``): numbers
    as signed log1p standardised over the catalogue, flags as 0/1, text one-hot (at most
    :data:`MAX_EXTENSION_LEVELS` levels), each with a missing flag where a product has no value."""
    cats = np.array(schema.PRODUCT_CATEGORIES)
    onehot = (products["category"].to_numpy()[:, None] == cats[None, :]).astype(np.float32)
    segs = np.stack([products["eligible_segments"].str.split("|").apply(lambda s, g=g: g in s).to_numpy()
                     for g in schema.SEGMENTS], axis=1).astype(np.float32)
    num = np.stack([
        (products["risk_level"].to_numpy() - 3) / 2,
        np.log1p(products["annual_margin"].to_numpy()) / 8,
        products["min_age"].to_numpy() / 100,
        np.log1p(pd.to_numeric(products["term_months"], errors="coerce").fillna(0).to_numpy(float)) / 6,
    ], axis=1).astype(np.float32)
    parts = [onehot, segs, num]
    for name, kind in (extensions or {}).items():
        if name not in products:
            continue
        col = products[name]
        missing = col.isna().to_numpy()
        if kind in ("int", "float"):
            v = pd.to_numeric(col, errors="coerce").astype("float64").to_numpy()
            v = np.sign(v) * np.log1p(np.abs(v))
            seen = v[~np.isnan(v)]
            mu, sd = (seen.mean(), seen.std() + 1e-6) if len(seen) else (0.0, 1.0)
            parts.append(np.nan_to_num((v - mu) / sd)[:, None])
        elif kind == "bool":
            parts.append(col.astype("boolean").fillna(False).astype(float).to_numpy()[:, None])
        else:
            levels = col.dropna().astype(str).value_counts().index[:MAX_EXTENSION_LEVELS]
            parts.append((col.astype(str).to_numpy()[:, None] == np.array(levels)[None, :]).astype(float)
                         * ~missing[:, None])
        if missing.any():
            parts.append(missing.astype(float)[:, None])
    return np.concatenate(parts, axis=1).astype(np.float32)


@dataclass
class BankGraph:
    data: HeteroData
    customer_ids: list[str]
    product_ids: list[str]
    encoder: FeatureEncoder
    as_of: date
    recent: np.ndarray | None = None  # [2, n] (customer, product) acquired in the RECENT_DAYS before as_of

    @property
    def rec_columns(self) -> np.ndarray:
        """Indices of the encoded customer features the recommender tower reads."""
        return np.array([j for j, n in enumerate(self.encoder.names) if not n.startswith(HOLDING_FEATURES)])

    def interactions(self, relation_weights: dict[str, float] | None = None,
                     churn: np.ndarray | None = None, valid_share: float = 0.0,
                     seed: int = 0) -> InteractionData:
        """The arrays the training loop takes (positives: holds + acquired, deduplicated).

        ``valid_share`` of the recent acquisitions (the last RECENT_DAYS) leave the graph and become the
        validation pairs: the task in small, predicting a new product the graph does not show.
        """
        w = {"asked_about": 0.5, **(relation_weights or {})}
        d = self.data
        pos = torch.cat([d["customer", "holds", "product"].edge_index,
                         d["customer", "acquired", "product"].edge_index], dim=1)
        pairs = torch.unique(pos, dim=1).numpy()
        valid = np.zeros((2, 0), np.int64)
        if valid_share > 0 and self.recent is not None and self.recent.shape[1]:
            n_items = d["product"].num_nodes
            pick = np.random.default_rng(seed).random(self.recent.shape[1]) < valid_share
            valid = self.recent[:, pick]
            out = np.isin(pairs[0] * n_items + pairs[1], valid[0] * n_items + valid[1])
            pairs = pairs[:, ~out]
        ask = d["customer", "asked_about", "product"].edge_index.numpy()
        dec = d["customer", "declined", "product"].edge_index.numpy()
        x = d["customer"].x.numpy()
        return InteractionData(
            num_users=d["customer"].num_nodes, num_items=d["product"].num_nodes,
            train_users=pairs[0], train_items=pairs[1],
            extra_users=ask[0], extra_items=ask[1], extra_weight=np.full(ask.shape[1], w["asked_about"]),
            user_x=x[:, self.rec_columns], item_x=d["product"].x.numpy(), churn_x=x,
            valid_users=valid[0] if valid.shape[1] else None, valid_items=valid[1] if valid.shape[1] else None,
            negative_users=dec[0], negative_items=dec[1], churn=churn)


def build_graph(version: StoreVersion, features: pd.DataFrame, as_of: date,
                encoder: FeatureEncoder | None = None, time_zone: str = "UTC") -> BankGraph:
    """Build the graph of the customers in ``features`` (the feature frame at ``as_of``). Day ``as_of``
    begins at midnight in the bank's ``time_zone``, as for the features."""
    features = features.sort_values("customer_id", ignore_index=True)
    con = connect(version)
    try:
        products = con.execute("SELECT * FROM products ORDER BY product_id").df()
        D = f"DATE '{as_of.isoformat()}'"
        T = instant(as_of, time_zone)
        year = instant(as_of - timedelta(days=365), time_zone)
        queries = {
            "holds": f"SELECT DISTINCT customer_id, product_id FROM holdings WHERE opened_at < {D} "
                     f"AND (closed_at IS NULL OR closed_at >= {D})",
            "acquired": f"SELECT DISTINCT customer_id, product_id FROM holdings WHERE opened_at < {D} "
                        f"AND opened_at >= {D} - INTERVAL 365 DAY",
            "asked_about": f"SELECT DISTINCT customer_id, product_id FROM interactions WHERE ts < {T} "
                           f"AND ts >= {year} AND product_id IS NOT NULL",
            "declined": f"SELECT DISTINCT customer_id, product_id FROM action_outcomes WHERE outcome = 'declined' "
                        f"AND outcome_at < {T} AND outcome_at >= {year} AND product_id IS NOT NULL",
            "recent": f"SELECT DISTINCT customer_id, product_id FROM holdings WHERE opened_at < {D} "
                      f"AND opened_at >= {D} - INTERVAL {RECENT_DAYS} DAY",
            "complained_about": f"SELECT DISTINCT customer_id, product_id FROM complaints WHERE opened_at < {T} "
                                f"AND opened_at >= {year} AND product_id IS NOT NULL",
        }
        edges = {rel: con.execute(q).df() for rel, q in queries.items()}
    finally:
        con.close()

    cust_index = pd.Index(features["customer_id"])
    prod_index = pd.Index(products["product_id"])
    encoder = encoder or FeatureEncoder.fit(features)
    data = HeteroData()
    data["customer"].x = torch.from_numpy(encoder.transform(features))
    data["product"].x = torch.from_numpy(product_features(products, version.extensions("products")))
    recent = None
    for rel, df in edges.items():
        c = cust_index.get_indexer(df["customer_id"])
        p = prod_index.get_indexer(df["product_id"])
        keep = (c >= 0) & (p >= 0)
        pairs = np.stack([c[keep], p[keep]]).astype(np.int64)
        if rel == "recent":
            recent = pairs
            continue
        ei = torch.from_numpy(pairs)
        data["customer", rel, "product"].edge_index = ei
        data["product", f"rev_{rel}", "customer"].edge_index = ei.flip(0)
    return BankGraph(data, cust_index.tolist(), prod_index.tolist(), encoder, as_of, recent)
