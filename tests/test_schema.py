"""The contract is consistent with itself: keys and references name real columns, in a valid order."""

import pytest

from nba import schema


@pytest.mark.parametrize("tbl", schema.TABLES.values(), ids=lambda t: t.name)
def test_keys_and_references_name_real_columns(tbl):
    names = set(tbl.column_names)
    assert set(tbl.primary_key) <= names
    assert all(not tbl.column(k).nullable for k in tbl.primary_key)
    order = list(schema.TABLES)
    for fk in tbl.foreign_keys:
        assert set(fk.columns) <= names
        ref = schema.table(fk.table)
        assert set(fk.ref_columns) == set(ref.primary_key)
        assert order.index(fk.table) < order.index(tbl.name), "referenced tables come first"
    for rule in tbl.ordered:
        assert {rule.earlier, rule.later} <= names


def test_arrow_schema_follows_the_contract():
    s = schema.CUSTOMERS.arrow_schema
    assert s.names == list(schema.CUSTOMERS.column_names)
    assert str(s.field("birth_date").type) == "date32[day]"
    assert not s.field("customer_id").nullable
    assert s.field("risk_assessed_at").nullable


def test_unknown_table_is_a_named_error():
    with pytest.raises(KeyError, match="unknown table 'accounts'"):
        schema.table("accounts")


def test_expected_text_describes_bounds_and_sets():
    assert schema.CUSTOMERS.column("risk_tolerance").expected() == "an integer in [1, 5]"
    assert "mass, affluent, private" in schema.CUSTOMERS.column("segment").expected()
