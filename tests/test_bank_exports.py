"""A bank's own export, not the demo's (issue 17, "the contract meets real exports"): values and tables
it does not have, extra columns it does have, a product category beyond the eight, and an action catalog
that follows its products. Each test builds a small export in the test."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bundle.encoder import FeatureEncoder
from feature_store.ingest import ingest
from feature_store.offline import compute_features, data_end
from feature_store.store import TableStore
from nba import features as F
from nba import schema
from nba.bank import BankConfig
from nba.catalog import CatalogConfig, load_catalog_config, resolve
from nba.decision import RULES, Inputs, day_scores
from nba.errors import ConfigError, DataValidationError

NOW = datetime(2026, 6, 1, 12)
D = date(2026, 6, 1)
OPTIONAL = ("transactions", "interactions", "complaints", "consents")

PRODUCTS = [  # a 5-product bank, one of them in the category "other"
    {"product_id": "CUR", "name": "Current account", "category": "deposit", "risk_level": 1, "annual_margin": 80.0,
     "min_age": 16, "eligible_segments": "mass|affluent|private"},
    {"product_id": "CARD", "name": "Credit card", "category": "card", "risk_level": 1, "annual_margin": 150.0,
     "min_age": 18, "eligible_segments": "mass|affluent|private"},
    {"product_id": "FUND", "name": "Equity fund", "category": "fund", "risk_level": 4, "annual_margin": 300.0,
     "min_age": 18, "eligible_segments": "mass|affluent|private"},
    {"product_id": "LOAN", "name": "Personal loan", "category": "loan", "risk_level": 2, "annual_margin": 400.0,
     "min_age": 18, "eligible_segments": "mass|affluent|private"},
    {"product_id": "SAFE", "name": "Safe deposit box", "category": "other", "risk_level": 1, "annual_margin": 60.0,
     "min_age": 18, "eligible_segments": "mass|affluent|private"},
]


def _customer(cid: str, **kw) -> dict:
    return {"customer_id": cid, "birth_date": "1980-03-01", "segment": "mass", "income_band": "middle",
            "risk_tolerance": 4, "risk_assessed_at": "2026-01-10", "onboarded_at": "2018-05-01", "rm_id": "RM1",
            "vulnerable": False, **kw}


CUSTOMERS = [
    _customer("C1"),                                                  # assessed, not vulnerable
    _customer("C2", risk_tolerance="", risk_assessed_at=""),          # never assessed
    _customer("C3", vulnerable=""),                                   # vulnerability not on record
    _customer("C4", risk_tolerance=5, risk_assessed_at=""),           # a tolerance without an assessment date
]
HOLDINGS = [
    {"customer_id": "C1", "product_id": "CUR", "opened_at": "2018-05-01", "closed_at": "", "balance": 2500.0},
    {"customer_id": "C1", "product_id": "SAFE", "opened_at": "2020-01-01", "closed_at": "", "balance": 0.0},
    {"customer_id": "C2", "product_id": "CUR", "opened_at": "2018-05-01", "closed_at": "", "balance": 900.0},
    {"customer_id": "C3", "product_id": "CUR", "opened_at": "2018-05-01", "closed_at": "", "balance": 40.0},
    {"customer_id": "C4", "product_id": "CARD", "opened_at": "2019-05-01", "closed_at": "", "balance": -300.0},
]


def export(folder: Path, *, customers: list[dict] = CUSTOMERS, products: list[dict] = PRODUCTS,
           extra: dict[str, pd.DataFrame] | None = None) -> Path:
    """A small bank export as CSV files: RMs, customers, products and holdings only (no transactions,
    interactions, complaints, consents or action outcomes), plus ``extra`` tables."""
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"relationship_managers": pd.DataFrame([{"rm_id": "RM1", "branch": "North", "daily_capacity": 5}]),
              "customers": pd.DataFrame(customers), "products": pd.DataFrame(products),
              "holdings": pd.DataFrame(HOLDINGS), **(extra or {})}
    for name, df in tables.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    return folder


def header_only(table: str) -> pd.DataFrame:
    return pd.DataFrame(columns=[c.name for c in schema.table(table).columns if c.required])


@pytest.fixture()
def store(tmp_path) -> TableStore:
    return TableStore(tmp_path / "store")


@pytest.fixture()
def lean(tmp_path, store):
    """The lean bank ingested, and its features at D."""
    version = ingest(export(tmp_path / "in"), store, now=NOW, extensions={})
    return version, compute_features(version, D).set_index("customer_id")


# -------------------------------------------------------------------------------------------------
# Tables a bank may not have


def test_optional_tables_may_be_absent_and_are_marked_so(lean):
    version, _ = lean
    for t in OPTIONAL:
        assert version.absent(t) and version.rows(t) == 0, t
    assert not version.absent("customers") and not version.absent("action_outcomes")
    assert version.read("interactions").num_rows == 0  # readers see an empty table of the contract


def test_required_tables_are_still_required(tmp_path, store):
    folder = export(tmp_path / "in")
    (folder / "holdings.csv").unlink()
    with pytest.raises(DataValidationError, match="no file for table 'holdings'"):
        ingest(folder, store, now=NOW, extensions={})
    assert store.current() is None


def test_features_that_need_an_absent_table_are_null_not_zero(lean):
    _, feats = lean
    for table in ("transactions", "interactions", "complaints"):
        cols = F.NEEDS_TABLE[table]
        assert cols, table
        assert feats[list(cols)].isna().all().all(), table
    # What the export does give is still there: products held (including 'other') and balances.
    c1 = feats.loc["C1"]
    assert c1.n_products == 2 and c1.n_products_other == 1 and c1.balance_deposit == 2500.0
    assert c1.total_assets == 2500.0, "'other' is neither an asset nor a liability"
    assert pd.isna(c1.balance_deposit_trend_90d) and pd.isna(c1.total_assets_trend_90d), \
        "without transactions past balances cannot be rebuilt: trends are unknown"


def test_an_empty_table_is_zero_where_an_absent_one_is_null(tmp_path, store):
    extra = {t: header_only(t) for t in OPTIONAL}
    version = ingest(export(tmp_path / "in", extra=extra), store, now=NOW, extensions={})
    assert not any(version.absent(t) for t in OPTIONAL)
    feats = compute_features(version, D).set_index("customer_id")
    assert (feats[["txn_90d", "inbound_90d", "outbound_30d", "open_complaints"]] == 0).all().all()
    absent = ingest(export(tmp_path / "in2"), TableStore(tmp_path / "store2"), now=NOW, extensions={})
    assert absent.content_hash != version.content_hash, "absent and empty are different data"


def test_absence_is_carried_over_until_the_table_is_given(tmp_path, store, lean):
    version, _ = lean
    folder = tmp_path / "more"
    folder.mkdir()
    header_only("complaints").to_csv(folder / "complaints.csv", index=False)
    v2 = ingest(folder, store, now=NOW, mode="append", extensions={})
    assert not v2.absent("complaints") and v2.absent("interactions") and v2.absent("transactions")
    feats = compute_features(v2, D).set_index("customer_id")
    assert (feats["open_complaints"] == 0).all() and feats["inbound_90d"].isna().all()


def test_consent_stays_strict_without_a_consents_table(lean):
    version, feats = lean
    assert not feats[[f"consent_{s}" for s in schema.CONSENT_SCOPES]].any().any(), "no record, no contact"
    catalog = resolve(_catalog_config(), version.read("products").to_pandas())
    s = _scores(feats, catalog)
    assert (s["removed_by"] > 0).all(), "nothing can be proposed to a client without consent"


def test_an_unknown_contact_history_is_not_silence(lean):
    """Without interactions the bank's silence is unknown: the check-in after silence does not fire
    (it would reach every client 'with no outbound contact on record')."""
    version, feats = lean
    catalog = resolve(_catalog_config(), version.read("products").to_pandas())
    s = _scores(feats, catalog)
    j = catalog.index("care:check_in")
    assert (s["removed_by"][:, j] == RULES.index("eligibility") + 1).all()


def test_data_end_without_event_tables(lean):
    version, _ = lean
    assert data_end(version) == date(2020, 1, 2), "the latest holding opened on 2020-01-01"


# -------------------------------------------------------------------------------------------------
# Values a bank does not have


def test_missing_risk_values_block_every_product_that_needs_an_assessment(lean):
    version, feats = lean
    assert pd.isna(feats.loc["C2", "risk_tolerance"]) and pd.isna(feats.loc["C2", "risk_assessment_age_days"])
    catalog = resolve(_catalog_config(), version.read("products").to_pandas())
    s = _scores(feats, catalog)
    fund = catalog.index("offer:FUND")
    rows = {c: i for i, c in enumerate(feats.index)}
    suitability = RULES.index("suitability") + 1
    assert s["removed_by"][rows["C2"], fund] == suitability, "never assessed"
    assert s["removed_by"][rows["C4"], fund] == suitability, "a tolerance without an assessment date"
    assert s["removed_by"][rows["C1"], fund] != suitability, "assessed, within tolerance"
    card = catalog.index("offer:CARD")
    assert s["removed_by"][rows["C2"], card] != suitability, "a card needs no assessment"


def test_columns_with_values_a_bank_does_not_have_may_be_left_out(tmp_path, store):
    customers = [{k: v for k, v in c.items() if k not in ("risk_tolerance", "risk_assessed_at", "vulnerable")}
                 for c in CUSTOMERS]
    version = ingest(export(tmp_path / "in", customers=customers), store, now=NOW, extensions={})
    feats = compute_features(version, D)
    assert feats["risk_tolerance"].isna().all() and feats["vulnerable"].all() and not feats["vulnerable_known"].any()


def test_unknown_vulnerability_is_protected_by_default_and_stays_visible(lean):
    version, feats = lean
    assert feats.loc["C3", "vulnerable"] and not feats.loc["C3", "vulnerable_known"]
    assert not feats.loc["C1", "vulnerable"] and feats.loc["C1", "vulnerable_known"]
    catalog = resolve(_catalog_config(), version.read("products").to_pandas())
    s = _scores(feats, catalog)
    rows = {c: i for i, c in enumerate(feats.index)}
    assert s["protected"][rows["C3"]] and not s["protected"][rows["C1"]]
    assert s["rm_review"][rows["C3"], catalog.index("offer:CARD")], "a protected client's offers need an RM"
    relaxed = compute_features(version, D, vulnerable_default=False).set_index("customer_id")
    assert not relaxed.loc["C3", "vulnerable"] and not relaxed.loc["C3", "vulnerable_known"]


def test_a_bad_risk_value_is_still_named(tmp_path, store):
    customers = [*CUSTOMERS[:2], _customer("C9", risk_tolerance=9)]
    with pytest.raises(DataValidationError) as e:
        ingest(export(tmp_path / "in", customers=customers), store, now=NOW, extensions={})
    p = e.value.problems[0]
    assert p.file.endswith("customers.csv") and p.row == 3 and p.column == "risk_tolerance"


# -------------------------------------------------------------------------------------------------
# Extra columns a bank has


EXT = {"customers": {"credit_score": "float", "region": "str", "branch_visits": "int", "has_app": "bool"},
       "products": {"fee_tier": "str"}}


def _extended(tmp_path, store, **kw):
    customers = [{**c, "credit_score": 600 + 10 * i, "region": ["north", "south"][i % 2], "branch_visits": i,
                  "has_app": ["true", "false", "", "1"][i]} for i, c in enumerate(CUSTOMERS)]
    products = [{**p, "fee_tier": "A"} for p in PRODUCTS]
    return export(tmp_path / "in", customers=customers, products=products)


def test_declared_extension_columns_flow_into_features_and_the_model(tmp_path, store):
    version = ingest(_extended(tmp_path, store), store, now=NOW, extensions=EXT)
    assert version.extensions("customers") == EXT["customers"] and version.extensions("products") == EXT["products"]
    assert version.read("products").column("fee_tier").to_pylist() == ["A"] * 5
    feats = compute_features(version, D)
    ext = ["x_credit_score", "x_region", "x_branch_visits", "x_has_app"]
    assert list(feats.columns) == list(F.COLUMNS) + ext
    f = feats.set_index("customer_id")
    assert f.loc["C2", "x_credit_score"] == 610.0 and f.loc["C2", "x_region"] == "south"
    assert f.loc["C4", "x_branch_visits"] == 3 and pd.isna(f.loc["C3", "x_has_app"])
    enc = FeatureEncoder.fit(feats)
    assert {"x_credit_score", "x_branch_visits", "x_has_app"} <= set(enc.numeric)
    assert enc.categorical["x_region"] == ["north", "south"]
    x = enc.transform(feats)
    assert x.shape == (4, len(enc.names)) and np.isfinite(x).all()
    # The products' own columns feed the item tower.
    from training.graph import build_graph, product_features
    products = version.read("products").to_pandas().sort_values("product_id", ignore_index=True)
    base = product_features(products)
    assert product_features(products, version.extensions("products")).shape[1] > base.shape[1]
    graph = build_graph(version, feats, D)
    assert graph.data["product"].x.shape[1] == product_features(products, version.extensions("products")).shape[1]


def test_product_extension_columns_are_encoded_by_kind():
    from training.graph import product_features
    p = pd.DataFrame(PRODUCTS).assign(term_months=None, fee=[10.0, None, 30.0, 1000.0, 0.0],
                                      islamic=[True, False, None, False, True], tier=["A", "B", "A", None, "C"])
    base = product_features(p).shape[1]
    x = product_features(p, {"fee": "float", "islamic": "bool", "tier": "str"})
    # fee + its missing flag, islamic + flag, tier A/B/C + flag
    assert x.shape == (5, base + 2 + 2 + 4) and np.isfinite(x).all()
    tier = x[:, base + 4:base + 7]
    assert tier.sum(axis=1).tolist() == [1, 1, 1, 0, 1] and x[:, -1].tolist() == [0, 0, 0, 1, 0]


def test_undeclared_extra_columns_are_refused_with_a_hint(tmp_path, store):
    with pytest.raises(DataValidationError) as e:
        ingest(_extended(tmp_path, store), store, now=NOW, extensions={"customers": {"credit_score": "float"}})
    cols = {(p.file.rsplit("/", 1)[-1], p.column) for p in e.value.problems}
    assert ("customers.csv", "region") in cols and ("products.csv", "fee_tier") in cols
    assert ("customers.csv", "credit_score") not in cols
    assert all("extensions" in p.message and "configs/bank.yaml" in p.message for p in e.value.problems)
    assert store.current() is None


def test_extension_values_are_validated_with_file_row_and_column(tmp_path, store):
    folder = _extended(tmp_path, store)
    df = pd.read_csv(folder / "customers.csv", dtype=str, keep_default_na=False)
    df.loc[2, "credit_score"] = "excellent"
    df.to_csv(folder / "customers.csv", index=False)
    with pytest.raises(DataValidationError) as e:
        ingest(folder, store, now=NOW, extensions=EXT)
    p = e.value.problems[0]
    assert (p.file.endswith("customers.csv"), p.row, p.line, p.column) == (True, 3, 4, "credit_score")
    assert "'excellent'" in p.message and "a number" in p.message


def test_appending_under_other_extensions_is_refused(tmp_path, store):
    ingest(_extended(tmp_path, store), store, now=NOW, extensions=EXT)
    more = tmp_path / "more"
    more.mkdir()
    pd.DataFrame([{**_customer("C8"), "credit_score": 700}]).to_csv(more / "customers.csv", index=False)
    with pytest.raises(DataValidationError, match="extension columns"):
        ingest(more, store, now=NOW, mode="append", extensions={"customers": {"credit_score": "float"}})


@pytest.mark.parametrize("ext, needle", [
    ({"customers": {"segment": "str"}}, "already a contract column"),
    ({"customers": {"Credit Score": "float"}}, "lower-case"),
    ({"customers": {"score": "decimal"}}, "score"),
    ({"holdings": {"fee": "float"}}, "holdings"),
])
def test_extension_declarations_are_checked(ext, needle):
    with pytest.raises(ValueError, match=needle):
        BankConfig.model_validate({"extensions": ext})


# -------------------------------------------------------------------------------------------------
# The action catalog follows the bank's products


def _catalog_config(**product_offers) -> CatalogConfig:
    raw = load_catalog_config().model_dump()
    raw["product_offers"].update({"products": {}, "variants": [], **product_offers})
    return CatalogConfig.model_validate(raw)


def test_every_product_gets_an_offer_without_overrides():
    catalog = resolve(_catalog_config(), pd.DataFrame(PRODUCTS))
    assert [a.action_id for a in catalog.actions if a.family == "product_offer"] == \
        [f"offer:{p}" for p in sorted(p["product_id"] for p in PRODUCTS)]
    assert catalog.warnings == ()


def test_an_override_for_a_product_the_bank_lacks_is_skipped_with_a_named_warning():
    cfg = _catalog_config(products={"MORTGAGE": {"channels": ["branch"]}, "CARD": {"lever": 1.5}},
                          variants=[{"id": "offer:GOLD:promo", "product_id": "GOLD", "lever": 1.2}])
    catalog = resolve(cfg, pd.DataFrame(PRODUCTS))
    assert catalog.actions[catalog.index("offer:CARD")].lever == 1.5, "the other overrides still apply"
    assert "offer:GOLD:promo" not in {a.action_id for a in catalog.actions}
    assert len(catalog.warnings) == 2
    assert "product_offers.products.MORTGAGE" in catalog.warnings[0] and "'MORTGAGE'" in catalog.warnings[0]
    assert "product_offers.variants[0]" in catalog.warnings[1] and "'GOLD'" in catalog.warnings[1]


def test_a_strict_catalog_refuses_an_override_for_a_missing_product():
    cfg = _catalog_config(products={"CARDD": {"lever": 1.5}}, unknown_products="error")
    with pytest.raises(ConfigError, match=r"product_offers.products.CARDD.*'CARDD'.*did you mean CARD"):
        resolve(cfg, pd.DataFrame(PRODUCTS))


def test_other_is_a_category_the_catalog_knows():
    raw = load_catalog_config().model_dump()
    raw["policy"]["suitability"]["investment_categories"] = ["fund", "other"]
    CatalogConfig.model_validate(raw)
    assert "other" in schema.PRODUCT_CATEGORIES


# -------------------------------------------------------------------------------------------------


def _scores(feats: pd.DataFrame, catalog) -> dict:
    f = feats.reset_index()
    m = len(catalog.products)
    inputs = Inputs(np.full((len(f), m), 0.5), np.full(len(f), 0.1))
    return day_scores(f, catalog, inputs, D)


def test_the_daily_run_says_what_each_absent_table_costs(lean):
    """The daily run logs a warning per absent table and writes them to the day's manifest
    (``absent_tables``, ``data_notes``); without consents it says why the lists are empty."""
    from serving import daily
    version, _ = lean
    absent = [t for t in daily.ABSENT_NOTES if daily._absent(version, t)]
    assert sorted(absent) == sorted(OPTIONAL)
    assert "lists are empty" in daily.ABSENT_NOTES["consents"]
    assert "balances at past dates are today's balances" in daily.ABSENT_NOTES["transactions"]


def test_the_data_end_counts_consents_and_onboardings(tmp_path, store):
    """Without interactions or transactions, the export's today is not the last holding event: a later
    consent change (or onboarding) moves it, so the default day does not fall behind the export."""
    from feature_store.offline import data_end
    lean = ingest(export(tmp_path / "a"), store, now=NOW, extensions={})
    later = date(2026, 5, 31)
    assert data_end(lean) < later, "the holdings end earlier"
    consents = pd.DataFrame([{"customer_id": "C1", "channel": "email", "allowed": True,
                              "updated_at": f"{later.isoformat()}T10:00:00"}])
    other = TableStore(tmp_path / "store2")
    v = ingest(export(tmp_path / "b", extra={"consents": consents}), other, now=NOW, extensions={})
    assert data_end(v) == later + timedelta(days=1)


def test_the_client_view_does_not_show_absent_tables_as_facts(lean, tmp_path):
    """The workbench's client view: without transactions only today's balance is known (no flat line
    back through the year), without interactions there are no contact counts (not zeros)."""
    from nba.home import Home
    from serving.client_view import ClientView

    version, feats = lean
    view = ClientView(Home.resolve(tmp_path / "h"), version, D)
    assert view.absent == frozenset(OPTIONAL)
    points = view.balance_trend("C1")
    assert [p["date"] for p in points] == [D]
    assert points[0]["assets"] == pytest.approx(sum(h["balance"] for h in HOLDINGS
                                                    if h["customer_id"] == "C1" and h["balance"] > 0))
    assert view.contacts_per_channel("C1") == {}
    assert view.interactions("C1") == [] and view.complaints("C1") == []
