"""The bank data contract: every table, its columns, types, keys and value rules.

This module is the single source of truth. The synthetic generator writes these tables, ingest
validates against them, and the feature store reads them; nothing else spells a table or column name
by hand. Changing the contract means bumping ``SCHEMA_VERSION``.

Conventions
- Dates are calendar dates (``date32``); timestamps are naive UTC (``timestamp[us]``). CSV input may
  carry an offset (``2026-01-05T10:00:00+01:00``); it is converted to UTC.
- ``holdings.balance`` is the balance at extraction time; ``transactions`` carry the movements, so the
  balance at any earlier date is ``balance - sum(amount after that date)`` (point-in-time correct).
- A list-valued cell (``products.eligible_segments``) is written ``mass|affluent``.
- A bank's export may leave out the tables of :data:`OPTIONAL_TABLES` (stored empty and marked absent:
  the features computed from them are null) and :data:`ENGINE_TABLES` (stored empty), and may add the
  extension columns it declares on :data:`EXTENSION_TABLES` (:func:`extended`, ``configs/bank.yaml``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import pyarrow as pa

SCHEMA_VERSION = 1


class DType(str, Enum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    TIMESTAMP = "timestamp"

    @property
    def arrow(self) -> pa.DataType:
        return _ARROW[self]


_ARROW = {
    DType.STRING: pa.string(),
    DType.INT: pa.int64(),
    DType.FLOAT: pa.float64(),
    DType.BOOL: pa.bool_(),
    DType.DATE: pa.date32(),
    DType.TIMESTAMP: pa.timestamp("us"),
}

# Enumerations (value sets) used by the contract and, through it, by the rest of the code.
SEGMENTS = ("mass", "affluent", "private")
INCOME_BANDS = ("low", "lower_middle", "middle", "upper_middle", "high")
PRODUCT_CATEGORIES = (
    "deposit", "term_deposit", "card", "loan", "mortgage", "fund", "insurance", "wealth",
    "other",  # anything else a bank sells (a safe deposit box, a pension): its risk level still applies
)
CHANNELS = ("branch", "phone", "email", "sms", "app", "wechat")
CONSENT_SCOPES = CHANNELS + ("marketing",)
DIRECTIONS = ("inbound", "outbound")
INTERACTION_KINDS = (
    "service", "advice", "sales", "care", "complaint", "transaction_query", "campaign",
)
INTERACTION_OUTCOMES = ("completed", "reached", "not_reachable", "no_response", "escalated")
COMPLAINT_SEVERITIES = ("low", "medium", "high")
COMPLAINT_CATEGORIES = ("fees", "service", "product", "digital", "fraud", "advice", "other")
ACTION_FAMILIES = ("product_offer", "care_contact", "retention_offer")
ACTION_OUTCOME_VALUES = ("shown", "reached", "accepted", "declined", "not_reachable")
TRANSACTION_KINDS = ("deposit", "withdrawal", "payment", "transfer_in", "transfer_out", "fee", "interest")


@dataclass(frozen=True)
class Column:
    """One column of a contract table.

    ``required=False`` lets an input file leave the column out (it is then all null); it does not
    make values optional: that is ``nullable``.
    """

    name: str
    dtype: DType
    nullable: bool = False
    required: bool = True
    allowed: tuple[str, ...] | None = None  # enumerated values (strings)
    list_of: tuple[str, ...] | None = None  # '|'-separated list whose items must be in this set
    min: float | None = None
    max: float | None = None
    not_in_future: bool = False  # dates/timestamps that must not lie after the ingest clock
    doc: str = ""

    def expected(self) -> str:
        """Human description of what a value must look like, for error messages."""
        if self.allowed:
            return "one of " + ", ".join(self.allowed)
        if self.list_of:
            return "'|'-separated values from " + ", ".join(self.list_of)
        text = {
            DType.STRING: "text",
            DType.INT: "an integer",
            DType.FLOAT: "a number",
            DType.BOOL: "true/false (also 1/0, yes/no)",
            DType.DATE: "a date YYYY-MM-DD",
            DType.TIMESTAMP: ("an ISO 8601 timestamp YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|+HH:MM] (without an offset, "
                              "the bank's local time, which must exist once in its zone)"),
        }[self.dtype]
        if self.min is not None and self.max is not None:
            text += f" in [{_fmt(self.min)}, {_fmt(self.max)}]"
        elif self.min is not None:
            text += f" >= {_fmt(self.min)}"
        elif self.max is not None:
            text += f" <= {_fmt(self.max)}"
        return text


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class Ordered:
    """``later`` must not be before ``earlier`` in the same row (when both are set)."""

    earlier: str
    later: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...] = ()
    ordered: tuple[Ordered, ...] = ()
    doc: str = ""
    _by_name: dict[str, Column] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({c.name: c for c in self.columns})

    def column(self, name: str) -> Column:
        return self._by_name[name]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.dtype.arrow, nullable=c.nullable) for c in self.columns])


def _c(name: str, dtype: DType, **kw) -> Column:
    return Column(name, dtype, **kw)


S, I, F, B, D, T = DType.STRING, DType.INT, DType.FLOAT, DType.BOOL, DType.DATE, DType.TIMESTAMP

RELATIONSHIP_MANAGERS = Table(
    "relationship_managers",
    (
        _c("rm_id", S),
        _c("branch", S),
        _c("daily_capacity", I, min=0, max=500, doc="actions the RM can carry out in person per day"),
    ),
    primary_key=("rm_id",),
)

CUSTOMERS = Table(
    "customers",
    (
        _c("customer_id", S),
        _c("birth_date", D, not_in_future=True),
        _c("segment", S, allowed=SEGMENTS),
        _c("income_band", S, allowed=INCOME_BANDS),
        _c("risk_tolerance", I, nullable=True, required=False, min=1, max=5,
           doc="risk tolerance 1-5; null (or the column left out): not assessed, so suitability blocks every "
               "product that needs an assessment"),
        _c("risk_assessed_at", D, nullable=True, required=False, not_in_future=True,
           doc="date of the last suitability (risk) assessment; null if never assessed"),
        _c("onboarded_at", D, not_in_future=True),
        _c("rm_id", S),
        _c("vulnerable", B, nullable=True, required=False,
           doc="flagged vulnerable; null (or the column left out): unknown, treated as configs/bank.yaml "
               "missing_values.vulnerable says (default: vulnerable)"),
    ),
    primary_key=("customer_id",),
    foreign_keys=(ForeignKey(("rm_id",), "relationship_managers", ("rm_id",)),),
    ordered=(Ordered("birth_date", "onboarded_at"),),
)

PRODUCTS = Table(
    "products",
    (
        _c("product_id", S),
        _c("name", S),
        _c("category", S, allowed=PRODUCT_CATEGORIES),
        _c("risk_level", I, min=1, max=5),
        _c("annual_margin", F, min=0, doc="expected yearly margin per holding, in the bank's currency"),
        _c("min_age", I, min=0, max=120),
        _c("eligible_segments", S, list_of=SEGMENTS),
        _c("term_months", I, nullable=True, required=False, min=1, max=600,
           doc="contract term for term deposits and loans"),
    ),
    primary_key=("product_id",),
)

HOLDINGS = Table(
    "holdings",
    (
        _c("customer_id", S),
        _c("product_id", S),
        _c("opened_at", D, not_in_future=True),
        _c("closed_at", D, nullable=True, not_in_future=True),
        _c("balance", F, doc="balance at extraction time (negative for credit)"),
        _c("maturity_date", D, nullable=True, required=False,
           doc="contractual maturity (term deposits, loans); may lie in the future"),
    ),
    primary_key=("customer_id", "product_id", "opened_at"),
    foreign_keys=(
        ForeignKey(("customer_id",), "customers", ("customer_id",)),
        ForeignKey(("product_id",), "products", ("product_id",)),
    ),
    ordered=(Ordered("opened_at", "closed_at"), Ordered("opened_at", "maturity_date")),
)

TRANSACTIONS = Table(
    "transactions",
    (
        _c("transaction_id", S),
        _c("customer_id", S),
        _c("product_id", S),
        _c("ts", T, not_in_future=True),
        _c("amount", F, doc="signed movement of the holding's balance"),
        _c("kind", S, allowed=TRANSACTION_KINDS),
    ),
    primary_key=("transaction_id",),
    foreign_keys=(
        ForeignKey(("customer_id",), "customers", ("customer_id",)),
        ForeignKey(("product_id",), "products", ("product_id",)),
    ),
)

INTERACTIONS = Table(
    "interactions",
    (
        _c("interaction_id", S),
        _c("customer_id", S),
        _c("ts", T, not_in_future=True),
        _c("channel", S, allowed=CHANNELS),
        _c("direction", S, allowed=DIRECTIONS),
        _c("kind", S, allowed=INTERACTION_KINDS),
        _c("outcome", S, allowed=INTERACTION_OUTCOMES),
        _c("sentiment", F, nullable=True, min=-1, max=1),
        _c("product_id", S, nullable=True, required=False, doc="the product the contact was about"),
    ),
    primary_key=("interaction_id",),
    foreign_keys=(
        ForeignKey(("customer_id",), "customers", ("customer_id",)),
        ForeignKey(("product_id",), "products", ("product_id",)),
    ),
)

COMPLAINTS = Table(
    "complaints",
    (
        _c("complaint_id", S),
        _c("customer_id", S),
        _c("opened_at", T, not_in_future=True),
        _c("resolved_at", T, nullable=True, not_in_future=True),
        _c("severity", S, allowed=COMPLAINT_SEVERITIES),
        _c("category", S, allowed=COMPLAINT_CATEGORIES),
        _c("product_id", S, nullable=True, required=False),
    ),
    primary_key=("complaint_id",),
    foreign_keys=(
        ForeignKey(("customer_id",), "customers", ("customer_id",)),
        ForeignKey(("product_id",), "products", ("product_id",)),
    ),
    ordered=(Ordered("opened_at", "resolved_at"),),
)

CONSENTS = Table(
    "consents",
    (
        _c("customer_id", S),
        _c("channel", S, allowed=CONSENT_SCOPES,
           doc="a contact channel, or 'marketing' for direct marketing as a whole"),
        _c("allowed", B),
        _c("updated_at", T, not_in_future=True),
    ),
    # A log: the latest record at or before a date is the consent in force; no record = not allowed.
    primary_key=("customer_id", "channel", "updated_at"),
    foreign_keys=(ForeignKey(("customer_id",), "customers", ("customer_id",)),),
)

ACTION_OUTCOMES = Table(
    "action_outcomes",
    (
        _c("decision_id", S, doc="one decision (one action for one client on one day)"),
        _c("customer_id", S),
        _c("action_family", S, allowed=ACTION_FAMILIES),
        _c("action_id", S, doc="the catalog action, e.g. offer:CARD-GOLD or care:birthday"),
        _c("product_id", S, nullable=True, required=False),
        _c("channel", S, allowed=CHANNELS),
        _c("decided_at", T, not_in_future=True),
        _c("outcome", S, allowed=ACTION_OUTCOME_VALUES),
        _c("outcome_at", T, not_in_future=True),
    ),
    # One row per outcome event of a decision (shown, then reached, then accepted ...).
    primary_key=("decision_id", "outcome"),
    foreign_keys=(
        ForeignKey(("customer_id",), "customers", ("customer_id",)),
        ForeignKey(("product_id",), "products", ("product_id",)),
    ),
    ordered=(Ordered("decided_at", "outcome_at"),),
)

# Dependency order: a table's foreign keys point only at tables before it.
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        RELATIONSHIP_MANAGERS, CUSTOMERS, PRODUCTS, HOLDINGS, TRANSACTIONS, INTERACTIONS,
        COMPLAINTS, CONSENTS, ACTION_OUTCOMES,
    )
}


#: Tables a bank's export may leave out. An absent table is stored empty and marked absent in the store
#: version; the features computed from it are null (unknown), not zero (``nba.features.NEEDS_TABLE``).
#: Consents stay strict: without a ``consents`` table no client has consented to anything.
OPTIONAL_TABLES = ("transactions", "interactions", "complaints", "consents")
#: Tables the engine fills itself (the outcomes of its decisions): an export may leave them out (stored empty).
ENGINE_TABLES = ("action_outcomes",)

#: Tables on which a bank may declare extension columns (``extensions`` in ``configs/bank.yaml``).
EXTENSION_TABLES = ("customers", "products")
#: Types an extension column may be declared with.
EXTENSION_TYPES: dict[str, DType] = {"int": DType.INT, "float": DType.FLOAT, "bool": DType.BOOL, "str": DType.STRING}
EXTENSION_NAME = r"^[a-z][a-z0-9_]{0,62}$"


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r} (contract tables: {', '.join(TABLES)})") from None


def check_extensions(extensions: Mapping[str, Mapping[str, str]]) -> None:
    """Raise ``ValueError`` naming ``extensions.<table>.<column>`` when a declaration is not allowed: a table
    other than :data:`EXTENSION_TABLES`, a name that is not lower-case ``[a-z][a-z0-9_]*``, a contract
    column's name, or a type outside :data:`EXTENSION_TYPES`."""
    for tname, cols in extensions.items():
        if tname not in EXTENSION_TABLES:
            raise ValueError(f"extensions.{tname}: extension columns are allowed on {', '.join(EXTENSION_TABLES)} "
                             f"only, not on {tname!r}")
        for name, kind in cols.items():
            where = f"extensions.{tname}.{name}"
            if not re.fullmatch(EXTENSION_NAME, str(name)):
                raise ValueError(f"{where}: a column name must be lower-case letters, digits and _, starting with a "
                                 "letter (at most 63 characters)")
            if name in TABLES[tname].column_names:
                raise ValueError(f"{where}: {name!r} is already a contract column of {tname}")
            if kind not in EXTENSION_TYPES:
                raise ValueError(f"{where}: type {kind!r} is not one of {', '.join(EXTENSION_TYPES)}")


def extended(tbl: Table, columns: Mapping[str, str] | None) -> Table:
    """``tbl`` with the bank's extension ``columns`` (name -> type, :data:`EXTENSION_TYPES`) after the
    contract's own. Extension columns are optional (a file may leave them out) and nullable. Raises
    ``ValueError`` (see :func:`check_extensions`)."""
    if not columns:
        return tbl
    check_extensions({tbl.name: columns})
    extra = tuple(Column(n, EXTENSION_TYPES[k], nullable=True, required=False,
                         doc=f"extension column ({k}) declared in configs/bank.yaml") for n, k in columns.items())
    return Table(tbl.name, tbl.columns + extra, tbl.primary_key, tbl.foreign_keys, tbl.ordered, tbl.doc)


def tables(extensions: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Table]:
    """:data:`TABLES` with the declared extension columns (table -> {column: type}) added."""
    extensions = extensions or {}
    check_extensions(extensions)
    return {name: extended(t, extensions.get(name)) for name, t in TABLES.items()}
