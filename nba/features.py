"""Feature and state names: defined once, used by the feature store, training, serving and tests.

Point-in-time rule: features "at as_of D" see only what was known before D began. That is events
with ``ts < D 00:00`` and dates ``< D``; a complaint resolved on or after D is open at D, and a holding
closed on or after D is held at D. Balances at a past date t are ``balance - sum(movements at or after
t)`` over the holdings opened before t.

Unknown is not zero: the features computed from a table the bank's export does not have
(:data:`NEEDS_TABLE`) are null, and the bank's declared extension columns on customers are features
``x_<column>`` after :data:`COLUMNS` (:func:`extension_features`).
"""

from __future__ import annotations

from collections.abc import Mapping

from nba.schema import CHANNELS, CONSENT_SCOPES, PRODUCT_CATEGORIES

# 'other' and 'insurance' are neither assets nor liabilities.
ASSET_CATEGORIES = ("deposit", "term_deposit", "fund", "wealth")
LIABILITY_CATEGORIES = ("card", "loan", "mortgage")
CARE_WINDOW_DAYS = 14

# name -> (type, description). Types: str, int, float, bool, date. Order = column order on disk.
FEATURES: dict[str, tuple[str, str]] = {
    "customer_id": ("str", "customer key"),
    "as_of": ("date", "features describe the customer as known before this day began"),
    "rm_id": ("str", "relationship manager"),
    "age": ("int", "age in completed calendar years on as_of (a 29 Feb birthday counts on 28 Feb in common years)"),
    "tenure_days": ("int", "days since onboarding"),
    "segment": ("str", "mass / affluent / private"),
    "income_band": ("str", "income band label"),
    "income_band_ord": ("int", "income band as 0 (low) .. 4 (high)"),
    "risk_tolerance": ("int", "risk tolerance 1-5 (null: not assessed)"),
    "risk_assessment_age_days": ("int", "days since the last risk assessment (null: never or not yet known)"),
    "vulnerable": ("bool", "flagged vulnerable; where the export does not say, configs/bank.yaml "
                           "missing_values.vulnerable decides (default: vulnerable)"),
    "vulnerable_known": ("bool", "the export says whether the client is vulnerable (false: unknown, the default applies)"),
    "n_products": ("int", "distinct products held at as_of"),
    **{f"n_products_{c}": ("int", f"{c} products held") for c in PRODUCT_CATEGORIES},
    "held_products": ("str", "'|'-joined product ids held at as_of"),
    "products_opened_180d": ("int", "holdings opened in the 180 days before as_of (onboarding excluded)"),
    "products_closed_90d": ("int", "holdings closed in the 90 days before as_of"),
    "former_client": ("bool", "left the bank: held products before as_of, every one closed before as_of"),
    "days_since_left": ("int", "days since the last holding of a former client closed (null: not former)"),
    **{f"balance_{c}": ("float", f"{c} balance at as_of") for c in PRODUCT_CATEGORIES},
    **{f"balance_{c}_trend_{w}d": ("float", f"relative change of the {c} balance over {w} days")
       for c in PRODUCT_CATEGORIES for w in (30, 90)},
    "total_assets": ("float", "deposits + term deposits + funds + wealth at as_of"),
    "total_liabilities": ("float", "owed on cards, loans and mortgages at as_of (positive)"),
    "total_assets_trend_30d": ("float", "relative change of total assets over 30 days"),
    "total_assets_trend_90d": ("float", "relative change of total assets over 90 days"),
    "txn_30d": ("int", "transactions in the last 30 days"),
    "txn_90d": ("int", "transactions in the last 90 days"),
    "days_since_last_txn": ("int", "days since the last transaction (null: none)"),
    "inflow_90d": ("float", "money in over 90 days"),
    "outflow_90d": ("float", "money out over 90 days (positive)"),
    **{f"interactions_90d_{ch}": ("int", f"interactions on {ch} in the last 90 days") for ch in CHANNELS},
    **{f"days_since_{ch}": ("int", f"days since the last interaction on {ch} (null: none)") for ch in CHANNELS},
    "inbound_90d": ("int", "inbound interactions in 90 days"),
    "outbound_90d": ("int", "outbound interactions in 90 days"),
    "outbound_30d": ("int", "outbound contacts in the last 30 days (for contact caps)"),
    "days_since_last_outbound": ("int", "days since the bank last contacted the client (null: never)"),
    "days_since_last_contact": ("int", "days since any interaction (null: never)"),
    "escalations_30d": ("int", "escalated interactions in 30 days"),
    "open_complaints": ("int", "complaints open at as_of"),
    "open_complaint_max_severity": ("int", "0 none, 1 low, 2 medium, 3 high"),
    "days_since_resolved_complaint": ("int", "days since the last complaint was resolved (null: none)"),
    "complaints_365d": ("int", "complaints opened in the last year"),
    "sentiment_last5": ("float", "mean sentiment of the last 5 rated contacts"),
    "sentiment_prev5": ("float", "mean sentiment of the 5 rated contacts before those"),
    "sentiment_trend": ("float", "sentiment_last5 - sentiment_prev5"),
    "sentiment_min_last5": ("float", "worst sentiment among the last 5 rated contacts"),
    "rated_contacts": ("int", "rated contacts among the last 5"),
    "days_to_birthday": ("int", "days until the next birthday, the day age goes up (0 = on as_of)"),
    "birthday_in_14d": ("bool", "birthday within the care window"),
    "days_to_td_maturity": ("int", "days until the next term-deposit maturity (null: none)"),
    "td_maturity_in_14d": ("bool", "a term deposit matures within the care window"),
    "days_to_onboarding_anniversary": ("int", "days until the next onboarding anniversary"),
    "anniversary_in_14d": ("bool", "onboarding anniversary within the care window"),
    "declines_90d_product_offer": ("int", "product offers declined in 90 days"),
    "declines_90d_care_contact": ("int", "care contacts declined in 90 days"),
    "declines_90d_retention_offer": ("int", "retention offers declined in 90 days"),
    "declined_actions_90d": ("str", "'|'-joined action_id=days_ago of declines in 90 days"),
    "actions_30d": ("int", "NBA decisions in the last 30 days"),
    "days_since_last_action": ("int", "days since the last NBA decision (null: none)"),
    **{f"consent_{s}": ("bool", f"consent in force for {s} (no record = not allowed)") for s in CONSENT_SCOPES},
}

LIFECYCLE_STAGES = ("new", "growing", "mature", "declining", "dormant", "former")
COMPLAINT_STATES = ("none", "open", "recently_resolved")
EMOTIONAL_STATES = ("positive", "neutral", "negative", "escalating")

STATE: dict[str, tuple[str, str]] = {
    "lifecycle_stage": ("str", "one of " + ", ".join(LIFECYCLE_STAGES)),
    "health_score": ("float", "relationship health 0-100"),
    "complaint_state": ("str", "one of " + ", ".join(COMPLAINT_STATES)),
    "emotional_state": ("str", "one of " + ", ".join(EMOTIONAL_STATES)),
    "state_evidence": ("str", "JSON: for each state, the rule that fired and the feature values behind it"),
}

COLUMNS: tuple[str, ...] = tuple(FEATURES) + tuple(STATE)

# Features computed from a table the bank's export may leave out (nba.schema.OPTIONAL_TABLES): null when
# the store version marks the table absent (unknown), where an empty table gives 0. Balances are the
# holdings' balances either way; without transactions they cannot be rebuilt at past dates, so their
# trends are unknown. Consents have none: without a record no contact is allowed (consent_* false).
NEEDS_TABLE: dict[str, tuple[str, ...]] = {
    "transactions": ("txn_30d", "txn_90d", "days_since_last_txn", "inflow_90d", "outflow_90d",
                     *(f"balance_{c}_trend_{w}d" for c in PRODUCT_CATEGORIES for w in (30, 90)),
                     "total_assets_trend_30d", "total_assets_trend_90d"),
    "interactions": (*(f"interactions_90d_{ch}" for ch in CHANNELS), *(f"days_since_{ch}" for ch in CHANNELS),
                     "inbound_90d", "outbound_90d", "outbound_30d", "days_since_last_outbound",
                     "days_since_last_contact", "escalations_30d", "sentiment_last5", "sentiment_prev5",
                     "sentiment_trend", "sentiment_min_last5", "rated_contacts"),
    "complaints": ("open_complaints", "open_complaint_max_severity", "days_since_resolved_complaint",
                   "complaints_365d"),
    "consents": (),
}

#: What the lists and the model lose when the bank's export leaves a table out (nba.schema.OPTIONAL_TABLES):
#: said by ``nba data status``, ``nba train`` and the daily run (and written to the day's manifest).
ABSENT_NOTES: dict[str, str] = {
    "consents": "the bank exported no consents: with no record no contact is allowed (consent_* features are "
                "false), so no client can get an action and the lists are empty (load the consents table to "
                "contact anyone)",
    "interactions": "the bank exported no interactions: contact history, mood and silence are unknown (their "
                    "features are null), so no check-in fires on silence and contact caps count only the "
                    "engine's own decisions",
    "transactions": "the bank exported no transactions: balances at past dates are today's balances (trends are "
                    "null, and a backtest or the churn examples would see the balance after a closure: "
                    "training leaves the balances out of the churn model's inputs)",
    "complaints": "the bank exported no complaints: complaint follow-ups and complaint-first cannot fire (their "
                  "features are null)",
}

#: Features whose value at a past date is rebuilt from the transactions (today's balance less the
#: movements since). Without a transactions table they hold today's values at every date: a client who
#: closed everything shows a zero balance before the closure, which is the churn label leaking into the
#: churn examples, so training masks them out of the churn model's inputs (training.pipeline.prepare).
PAST_BALANCES: tuple[str, ...] = (*(f"balance_{c}" for c in PRODUCT_CATEGORIES), "total_assets", "total_liabilities")

EXTENSION_PREFIX = "x_"


def extension_features(columns: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """The features of the customers' extension columns (name -> type: int, float, bool or str, as
    declared under ``extensions.customers`` in ``configs/bank.yaml`` and kept by the store version):
    ``x_<name>`` -> (type, description), in declaration order. Their values are the customer's, as
    exported (null where the export has none)."""
    return {f"{EXTENSION_PREFIX}{n}": (t, f"the bank's own customers.{n} ({t}, an extension column)")
            for n, t in columns.items()}


def is_extension(name: str) -> bool:
    """Whether the feature column ``name`` is one of the bank's extension columns (``x_<name>``)."""
    return name.startswith(EXTENSION_PREFIX)

# Label columns of training frames.
LABEL_OPENED = "label_opened_products"
LABEL_N_OPENED = "label_n_opened"
LABEL_CHURN = "label_churn"
