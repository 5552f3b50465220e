"""The action catalog: what can be proposed to a client, through which channels, at what value and cost.

Values come from ``configs/actions.yaml``; every key is validated and unknown keys are errors. The
catalog is resolved against the bank's product table into a flat list of :class:`Action` (one per
product offer, variant, care contact and retention offer), which the decision engine scores as one
[clients x actions] matrix.

Action ids: ``offer:<product_id>`` (variants: their own id), ``care:<name>``, ``retention:<name>``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nba.config import load_yaml
from nba.errors import ConfigError
from nba.schema import ACTION_FAMILIES, CHANNELS, PRODUCT_CATEGORIES

Channel = Literal["branch", "phone", "email", "sms", "app", "wechat"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelSpec(_Strict):
    response: float = Field(gt=0, le=1, description="relative response rate of a contact on this channel")
    cost: float = Field(ge=0)
    in_person: bool = Field(description="carried out by the RM (counts on daily capacity)")


class Suitability(_Strict):
    investment_categories: list[str] = ["fund", "wealth", "insurance"]
    assessment_max_age_days: int = Field(365, ge=1)
    protected_age: int = Field(65, ge=18)
    protected_max_risk: int = Field(2, ge=1, le=5)

    @model_validator(mode="after")
    def _known(self):
        bad = [c for c in self.investment_categories if c not in PRODUCT_CATEGORIES]
        if bad:
            raise ValueError(f"unknown product categories {bad} (known: {', '.join(PRODUCT_CATEGORIES)})")
        return self


class Policy(_Strict):
    max_contacts_per_30d: int = Field(2, ge=1)
    decline_cooldown_days: int = Field(90, ge=0)
    family_decline_cooldown_days: int = Field(30, ge=0)
    control_share: dict[Literal["product_offer", "care_contact", "retention_offer"], float] = {
        f: 0.05 for f in ACTION_FAMILIES}
    min_priority: float = 0.0
    suitability: Suitability = Suitability()
    value_years: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _shares(self):
        for f, s in self.control_share.items():
            if not 0 <= s < 1:
                raise ValueError(f"control_share.{f} must be in [0, 1), got {s}")
        return self


class ProductOverride(_Strict):
    channels: list[Channel] | None = None
    lever: float | None = Field(None, gt=0)
    cost: float | None = Field(None, ge=0)
    enabled: bool = True


class Variant(_Strict):
    id: str = Field(pattern=r"^offer:")
    product_id: str
    lever: float = Field(1.0, gt=0)
    cost: float = Field(0.0, ge=0)
    channels: list[Channel] | None = None


class ProductOffers(_Strict):
    channels: list[Channel] = ["branch", "phone", "email", "app"]
    cooldown_days: int = Field(30, ge=0)
    cost: float = Field(2.0, ge=0)
    lever: float = Field(1.0, gt=0)
    products: dict[str, ProductOverride] = {}
    variants: list[Variant] = []
    unknown_products: Literal["warn", "error"] = Field(
        "warn", description="an override or variant naming a product the bank's product table lacks: skipped "
                            "with a warning (Catalog.warnings), or 'error' to refuse the catalog")


class CareContact(_Strict):
    trigger: Literal["birthday", "silence", "complaint", "td_maturity", "anniversary", "holiday"]
    base_rate: float = Field(gt=0, le=1)
    value: float = Field(ge=0)
    health_weight: float = Field(0.5, ge=0)
    cost: float = Field(0.0, ge=0)
    channels: list[Channel]
    cooldown_days: int = Field(30, ge=0)
    silence_days: int | None = Field(None, ge=1)
    within_days: int | None = Field(None, ge=1)
    dates: list[str] | None = None

    @model_validator(mode="after")
    def _trigger_args(self):
        if self.trigger == "silence" and self.silence_days is None:
            raise ValueError("trigger 'silence' needs silence_days")
        if self.trigger == "complaint" and self.within_days is None:
            raise ValueError("trigger 'complaint' needs within_days")
        if self.trigger == "holiday":
            if not self.dates:
                raise ValueError("trigger 'holiday' needs dates (MM-DD)")
            for d in self.dates:
                # Exactly MM-DD, a day that exists in a leap year (the engine compares "%m-%d" strings).
                try:
                    ok = len(d) == 5 and d[2] == "-" and date(2024, int(d[:2]), int(d[3:])).strftime("%m-%d") == d
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(f"holiday date {d!r} is not MM-DD (e.g. 12-25)")
        return self


class RetentionOffer(_Strict):
    save_rate: float = Field(gt=0, le=1, description="share of churners this offer keeps")
    cost: float = Field(ge=0)
    min_churn: float = Field(0.0, ge=0, le=1)
    min_assets: float = Field(0.0, ge=0)
    channels: list[Channel]
    cooldown_days: int = Field(90, ge=0)


class WinBack(_Strict):
    """A contact inviting a former client (every holding closed) back. Off by default; offered only with
    marketing consent, within ``max_days_since_left`` of the last closure. Action id ``retention:win_back``."""

    enabled: bool = False
    return_rate: float = Field(0.05, gt=0, le=1, description="probability that a contacted former client returns")
    value: float = Field(300.0, ge=0, description="value of a returning client, in the bank's currency")
    cost: float = Field(1.0, ge=0)
    max_days_since_left: int = Field(365, ge=1, description="days since the last holding closed")
    channels: list[Channel] = ["email", "app", "sms"]
    cooldown_days: int = Field(180, ge=0)


class RetentionOffers(_Strict):
    value_years: float = Field(2.0, gt=0)
    balance_margin: float = Field(0.01, ge=0, description="annual margin per unit of balance (assets and "
                                                          "liabilities) kept when a client stays")
    offers: dict[str, RetentionOffer] = {}
    win_back: WinBack = WinBack()


class CatalogConfig(_Strict):
    channels: dict[Channel, ChannelSpec]
    policy: Policy = Policy()
    product_offers: ProductOffers = ProductOffers()
    care_contacts: dict[str, CareContact] = {}
    retention_offers: RetentionOffers = RetentionOffers()

    @model_validator(mode="after")
    def _channels_known(self):
        missing = [c for c in CHANNELS if c not in self.channels]
        if missing:
            raise ValueError(f"channels: missing {', '.join(missing)}")
        return self


@dataclass(frozen=True)
class Action:
    action_id: str
    family: str                 # product_offer | care_contact | retention_offer
    channels: tuple[str, ...]
    cost: float
    cooldown_days: int
    product_id: str | None = None
    lever: float = 1.0          # product offers: business lever on the margin
    care: CareContact | None = None
    retention: RetentionOffer | None = None
    win_back: WinBack | None = None


@dataclass(frozen=True)
class Catalog:
    config: CatalogConfig
    actions: tuple[Action, ...]
    products: pd.DataFrame      # the bank's product table, indexed by product_id
    warnings: tuple[str, ...] = ()  # overrides and variants skipped (a product the table lacks)

    @property
    def policy(self) -> Policy:
        return self.config.policy

    def index(self, action_id: str) -> int:
        for j, a in enumerate(self.actions):
            if a.action_id == action_id:
                return j
        raise ConfigError(f"unknown action_id {action_id!r}")


def load_catalog_config(path: Path | None = None) -> CatalogConfig:
    return load_yaml(CatalogConfig, path, default_name="actions.yaml")


def resolve(config: CatalogConfig, products: pd.DataFrame) -> Catalog:
    """One :class:`Action` per product offer (every product of the table unless its override disables it),
    variant, care contact and retention offer.

    An override (``product_offers.products.<id>``) or variant naming a product the table lacks affects
    that entry only: it is skipped and named in ``Catalog.warnings`` (with the config key and the nearest
    product ids), or, with ``product_offers.unknown_products: error``, ``ConfigError`` names them all.
    Raises ``ConfigError`` for duplicate action ids."""
    products = products.set_index("product_id", drop=False).sort_index()
    po = config.product_offers
    problems = [_unknown_product(f"product_offers.products.{pid}", pid, products.index)
                for pid in po.products if pid not in products.index]
    problems += [_unknown_product(f"product_offers.variants[{i}] ({v.id})", v.product_id, products.index)
                 for i, v in enumerate(po.variants) if v.product_id not in products.index]
    if problems and po.unknown_products == "error":
        raise ConfigError("actions config: " + "; ".join(problems))
    actions: list[Action] = []
    for pid in products.index:
        o = po.products.get(pid, ProductOverride())
        if not o.enabled:
            continue
        actions.append(Action(f"offer:{pid}", "product_offer", tuple(o.channels or po.channels),
                              po.cost if o.cost is None else o.cost, po.cooldown_days, pid,
                              po.lever * (o.lever or 1.0)))
    for v in po.variants:
        if v.product_id not in products.index:
            continue  # skipped, with a warning
        actions.append(Action(v.id, "product_offer", tuple(v.channels or po.channels), po.cost + v.cost,
                              po.cooldown_days, v.product_id, po.lever * v.lever))
    for name, c in config.care_contacts.items():
        actions.append(Action(f"care:{name}", "care_contact", tuple(c.channels), c.cost, c.cooldown_days, care=c))
    for name, r in config.retention_offers.offers.items():
        actions.append(Action(f"retention:{name}", "retention_offer", tuple(r.channels), r.cost, r.cooldown_days,
                              retention=r))
    wb = config.retention_offers.win_back
    if wb.enabled:
        actions.append(Action("retention:win_back", "retention_offer", tuple(wb.channels), wb.cost, wb.cooldown_days,
                              win_back=wb))
    ids = [a.action_id for a in actions]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"actions config: duplicate action ids {sorted(dup)}")
    return Catalog(config, tuple(actions), products,
                   warnings=tuple(f"actions config: {p}: skipped" for p in problems))


def _unknown_product(key: str, pid: str, known: pd.Index) -> str:
    ids = [str(k) for k in known]
    near = difflib.get_close_matches(pid, ids, n=3)
    if near:
        hint = f"; did you mean {', '.join(near)}?"
    else:  # nothing close: a catalogue of its own, so say what it holds
        hint = f": {', '.join(ids[:12])}" + (", ..." if len(ids) > 12 else "")
    return f"{key} names product {pid!r}, which is not in the products table ({len(known)} products{hint})"


def load_catalog(products: pd.DataFrame, path: Path | None = None) -> Catalog:
    return resolve(load_catalog_config(path), products)


__all__ = ["Action", "Catalog", "CatalogConfig", "load_catalog", "load_catalog_config", "resolve"]
