"""Customer state identification from point-in-time features (vectorised over a feature frame).

Four states, each with the rule that fired and the feature values behind it (``state_evidence``, one
JSON object per customer), so that an RM can be shown why:

- lifecycle stage: former (left the bank: every holding closed before as_of) > dormant (no products) > new >
  dormant (went quiet) > declining > growing > mature;
- relationship health score 0-100: a transparent sum of named components;
- complaint state: open / recently_resolved / none;
- emotional state from recent contact sentiment: escalating > negative > positive > neutral.

Thresholds live in ``StateConfig`` (values in ``configs/features.yaml``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class StateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    new_tenure_days: int = Field(180, ge=1, description="clients younger than this are 'new'")
    dormant_silence_days: int = Field(180, ge=1, description="no contact for this long (and no activity)")
    declining_assets_trend_90d: float = Field(-0.25, le=0, description="assets down at least this much in 90 days")
    growing_assets_trend_90d: float = Field(0.15, ge=0, description="assets up at least this much in 90 days")
    recently_resolved_days: int = Field(30, ge=1, description="a complaint resolved this recently still counts")
    silence_days: int = Field(120, ge=1, description="no outbound contact for this long hurts health")
    negative_sentiment: float = Field(-0.2, le=0)
    positive_sentiment: float = Field(0.3, ge=0)
    escalating_trend: float = Field(-0.3, le=0, description="sentiment falling at least this much")


def _num(s: pd.Series, digits: int = 2) -> pd.Series:
    """JSON literal of a numeric series (null for missing)."""
    v = pd.to_numeric(s, errors="coerce").astype("float64").round(digits)
    text = v.map(lambda x: repr(int(x)) if float(x).is_integer() else repr(x), na_action="ignore")
    return text.astype(object).where(v.notna(), "null").astype(str)


def _obj(rule: pd.Series, facts: dict[str, pd.Series | None], masks: dict[str, np.ndarray] | None = None) -> pd.Series:
    """Vectorised ``{"rule": <rule>, "<fact>": <value>, ...}``; a fact is left out where its mask is False."""
    out = '{"rule":"' + rule.astype(str) + '"'
    for name, values in facts.items():
        piece = f',"{name}":' + _num(values)
        if masks and name in masks:
            piece = piece.where(masks[name], "")
        out = out + piece
    return out + "}"


def identify(df: pd.DataFrame, cfg: StateConfig) -> pd.DataFrame:
    """Add lifecycle_stage, health_score, complaint_state, emotional_state and state_evidence."""
    n = len(df)
    f = lambda name: pd.to_numeric(df[name], errors="coerce").astype("float64")
    tenure, n_products = f("tenure_days"), f("n_products")
    trend90 = f("total_assets_trend_90d")
    since_contact, since_out = f("days_since_last_contact"), f("days_since_last_outbound")
    txn90, inbound90 = f("txn_90d"), f("inbound_90d")
    opened180, closed90 = f("products_opened_180d"), f("products_closed_90d")
    open_c, since_resolved = f("open_complaints"), f("days_since_resolved_complaint")
    sent, sent_trend, escal = f("sentiment_last5"), f("sentiment_trend"), f("escalations_30d")
    contacts_known = (f("outbound_30d").notna() if "outbound_30d" in df else pd.Series(True, index=df.index)).to_numpy()

    # --- lifecycle stage ---------------------------------------------------------------------------
    silent_long = since_contact.isna() | (since_contact > cfg.dormant_silence_days)
    new = tenure < cfg.new_tenure_days
    # No products at all, or an established relationship that went quiet (a new client is not dormant).
    dormant = (n_products == 0) | (~new & (txn90 == 0) & (inbound90 == 0) & silent_long)
    declining = (trend90 <= cfg.declining_assets_trend_90d) | ((closed90 > 0) & (closed90 > opened180))
    growing = (opened180 > 0) | (trend90 >= cfg.growing_assets_trend_90d)
    former = df["former_client"].fillna(False).astype(bool).to_numpy() if "former_client" in df else np.zeros(n, bool)
    left = f("days_since_left") if "days_since_left" in df else pd.Series(np.nan, index=df.index)
    stage = np.select([former, dormant, new, declining, growing], ["former", "dormant", "new", "declining", "growing"],
                      "mature")
    stage = pd.Series(stage, index=df.index)
    lifecycle_ev = _obj(stage, {
        "tenure_days": tenure, "n_products": n_products, "total_assets_trend_90d": trend90,
        "products_opened_180d": opened180, "products_closed_90d": closed90,
        "days_since_last_contact": since_contact, "txn_90d": txn90, "days_since_left": left,
    }, masks={
        "days_since_left": (stage == "former").to_numpy(),
        "tenure_days": (stage.isin(["new", "mature"])).to_numpy(),
        "n_products": (stage != "former").to_numpy(),
        "txn_90d": (stage == "dormant").to_numpy(),
        "days_since_last_contact": (stage == "dormant").to_numpy(),
        "products_opened_180d": (stage == "growing").to_numpy(),
        "products_closed_90d": (stage == "declining").to_numpy(),
        "total_assets_trend_90d": stage.isin(["declining", "growing"]).to_numpy(),
    })

    # --- complaint state ---------------------------------------------------------------------------
    recent = since_resolved.le(cfg.recently_resolved_days).fillna(False)
    complaint = pd.Series(np.select([open_c > 0, recent], ["open", "recently_resolved"], "none"), index=df.index)
    complaint_ev = _obj(complaint, {
        "open_complaints": open_c, "open_complaint_max_severity": f("open_complaint_max_severity"),
        "days_since_resolved_complaint": since_resolved,
    }, masks={
        "open_complaints": (complaint == "open").to_numpy(),
        "open_complaint_max_severity": (complaint == "open").to_numpy(),
        "days_since_resolved_complaint": (complaint == "recently_resolved").to_numpy(),
    })

    # --- emotional state ---------------------------------------------------------------------------
    rated = sent.notna()
    escalating = rated & (((sent_trend <= cfg.escalating_trend) & (sent < 0)).fillna(False) | (escal > 0))
    emotion = np.select([escalating, rated & (sent <= cfg.negative_sentiment), rated & (sent >= cfg.positive_sentiment)],
                        ["escalating", "negative", "positive"], "neutral")
    emotion = pd.Series(emotion, index=df.index)
    emotion_rule = emotion.where(rated, "no_rated_contacts")
    emotion_ev = _obj(emotion_rule, {
        "sentiment_last5": sent, "sentiment_trend": sent_trend, "escalations_30d": escal,
    }, masks={"sentiment_last5": rated.to_numpy(), "sentiment_trend": (emotion == "escalating").to_numpy(),
              "escalations_30d": (escal > 0).to_numpy()})

    # --- relationship health -----------------------------------------------------------------------
    comp = pd.DataFrame({
        "base": np.full(n, 60.0),
        "breadth": 5.0 * np.minimum(n_products.fillna(0), 5),
        "recent_contact": np.where(since_contact.le(90).fillna(False), 10.0, 0.0),
        # No outbound contact on record counts as silence only where contacts are on record at all (a
        # bank that exported no interactions has outbound_30d null: unknown, not silent).
        "silence": np.where(contacts_known & (since_out.isna() | (since_out > cfg.silence_days)), -10.0, 0.0),
        "complaint": np.select([complaint == "open", complaint == "recently_resolved"], [-20.0, -8.0], 0.0),
        "sentiment": 15.0 * sent.fillna(0).clip(-1, 1),
        "assets_falling": np.where(trend90 <= cfg.declining_assets_trend_90d, -15.0, 0.0),
        "dormant": np.where(stage.isin(["dormant", "former"]), -10.0, 0.0),
    }, index=df.index)
    health = comp.sum(axis=1).clip(0, 100).round(1)
    health_ev = _obj(pd.Series("sum_of_components", index=df.index),
                     {k: comp[k] for k in comp.columns},
                     masks={k: (comp[k] != 0).to_numpy() for k in comp.columns})

    out = df.copy()
    out["lifecycle_stage"] = stage.astype(object)
    out["health_score"] = health.astype("float64")
    out["complaint_state"] = complaint.astype(object)
    out["emotional_state"] = emotion.astype(object)
    out["state_evidence"] = ('{"lifecycle_stage":' + lifecycle_ev + ',"health_score":' + health_ev
                             + ',"complaint_state":' + complaint_ev + ',"emotional_state":' + emotion_ev + "}")
    return out
