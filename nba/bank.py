"""The bank's own settings that every stage shares (``configs/bank.yaml``): its time zone, how fresh its
data must be, the extension columns its export adds to the contract, and what a missing value means.

A bank works in its own zone. Timestamps are stored as instants (naive UTC in the store); what "before
day D" means, for features, consents, declines, complaints, the daily run and the ingest's "not in the
future" check, is decided in the bank's zone: day D starts at local midnight.
"""

from __future__ import annotations

import functools
import os
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nba import schema
from nba.config import load_yaml


class Freshness(BaseModel):
    """How old the store's data may be for a daily run on day D: days from the last day with data to D
    (data that ends the day before D is 1 day old)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    warn_days: int = Field(3, ge=0, description="warn when the data ends more than this many days before D")
    max_days: int = Field(30, ge=0, description="refuse (unless forced) past this many days")


ExtensionType = Literal["int", "float", "bool", "str"]


class Extensions(BaseModel):
    """Columns a bank's export has beyond the contract, declared with their type (``int``, ``float``,
    ``bool``, ``str``): ``customers: {credit_score: float, region: str}``. Declared columns are accepted
    (optional and nullable), validated like contract columns and stored; each customer column becomes
    the feature ``x_<name>`` and a model input. Undeclared extra columns are refused at ingest."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    customers: dict[str, ExtensionType] = {}
    products: dict[str, ExtensionType] = {}

    @model_validator(mode="after")
    def _names(self):
        schema.check_extensions(self.as_dict())
        return self

    def as_dict(self) -> dict[str, dict[str, str]]:
        """table -> {column: type}, declared tables only."""
        return {t: dict(cols) for t, cols in (("customers", self.customers), ("products", self.products)) if cols}


class MissingValues(BaseModel):
    """What the engine assumes where the bank's export has no value."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    vulnerable: bool = Field(True, description="customers.vulnerable missing: treat the client as vulnerable "
                                               "(protected: RM review, no product above the protected risk level)")


class BankConfig(BaseModel):
    """``configs/bank.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    time_zone: str = Field("UTC", description="IANA time zone of the bank, e.g. Asia/Shanghai, America/Chicago")
    data_freshness: Freshness = Freshness()
    extensions: Extensions = Extensions()
    missing_values: MissingValues = MissingValues()

    @field_validator("time_zone")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            # Region names only: "posix/...", "right/..." and "localtime" are files of the system's zone
            # database that DuckDB's (ICU) does not know.
            if v.startswith(("posix/", "right/")) or v in ("localtime", "posixrules", "Factory"):
                raise ValueError(v)
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            near = sorted(z for z in available_timezones() if v.lower().split("/")[-1] in z.lower())[:5]
            raise ValueError(f"unknown IANA time zone {v!r}" + (f" (did you mean {', '.join(near)}?)" if near else
                                                                 " (e.g. UTC, Europe/London, Asia/Shanghai)"))
        return v

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


def load_bank_config(path: Path | None = None) -> BankConfig:
    """``path``, else the file named by ``$NBA_BANK_CONFIG``, else ``configs/bank.yaml``, else the
    defaults (UTC). Raises ``ConfigError``."""
    env = os.environ.get(BANK_CONFIG_ENV, "").strip()
    return _load_bank_config(path or (Path(env) if env else None))


BANK_CONFIG_ENV = "NBA_BANK_CONFIG"


def bank_config_name() -> str:
    """The bank's settings file in force, as messages should name it: ``$NBA_BANK_CONFIG`` when set,
    else ``configs/bank.yaml``."""
    return os.environ.get(BANK_CONFIG_ENV, "").strip() or "configs/bank.yaml"


@functools.lru_cache(maxsize=8)
def _load_bank_config(path: Path | None) -> BankConfig:
    return load_yaml(BankConfig, path, default_name="bank.yaml")


def day_start(day: date, time_zone: str = "UTC") -> datetime:
    """The instant day ``day`` begins in ``time_zone``, as a naive UTC datetime (the store's form).
    Daylight-saving days included: local midnight is looked up in the zone's rules."""
    local = datetime.combine(day, time(0), tzinfo=ZoneInfo(time_zone))
    return local.astimezone(timezone.utc).replace(tzinfo=None)
