"""The synthetic bank: reproducible, in the contract, and carrying the structure it promises."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from feature_store.ingest import ingest
from nba import schema
from nba.atomic import builds_dir
from nba.errors import ConfigError
from nba.synthetic import CATALOG, generate

from .conftest import AS_OF


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _read(folder, name) -> pd.DataFrame:
    return ds.dataset(folder / name).to_table().to_pandas()


def test_same_seed_same_bytes_whatever_the_number_of_processes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(1_200, seed=3, as_of=AS_OF, out=a, workers=1, chunk_size=500)
    generate(1_200, seed=3, as_of=AS_OF, out=b, workers=2, chunk_size=500)
    generate(1_200, seed=4, as_of=AS_OF, out=c, workers=1, chunk_size=500)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_refuses_a_file_as_output(tmp_path):
    f = tmp_path / "bank.csv"
    f.write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is a file"):
            generate(50, seed=1, as_of=AS_OF, out=f, workers=1, overwrite=overwrite)
    assert f.read_text() == "keep me"


def test_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "bank"
    generate(50, seed=1, as_of=AS_OF, out=out, workers=1)
    with pytest.raises(ConfigError, match="not empty"):
        generate(50, seed=1, as_of=AS_OF, out=out, workers=1)
    generate(60, seed=1, as_of=AS_OF, out=out, workers=1, overwrite=True)
    assert len(_read(out, "customers")) == 60
    # Only the published build is kept beside the link: nothing left from the first or a killed build.
    assert list(builds_dir(out).iterdir()) == [out.resolve()], "no temporary folder left behind"


def test_rejects_a_bad_customer_count(tmp_path):
    with pytest.raises(ConfigError, match="at least 1"):
        generate(0, seed=1, as_of=AS_OF, out=tmp_path / "x")


def test_every_table_is_in_the_contract_and_ingests_cleanly(bank, store):
    for name, tbl in schema.TABLES.items():
        assert ds.dataset(bank / name).schema == tbl.arrow_schema, name
    version = ingest(bank, store, now=pd.Timestamp(AS_OF).to_pydatetime())
    assert version.rows("customers") == 5_000
    assert version.rows("interactions") > 20_000


def test_history_ends_before_as_of_and_truth_lies_in_the_window(bank):
    end = pd.Timestamp(AS_OF)
    assert _read(bank, "interactions").ts.max() < end
    assert _read(bank, "transactions").ts.max() < end
    assert pd.to_datetime(_read(bank, "holdings").opened_at).max() < end
    opens = _read(bank, "_truth/future_openings")
    days = (pd.to_datetime(opens.opened_at) - end).dt.days
    assert days.between(0, 89).all()
    churn = _read(bank, "_truth/future_churn")
    assert churn.churned.between(0, 1).all() and 0.01 < churn.churned.mean() < 0.12


def test_future_openings_are_new_products_the_customer_may_hold(bank):
    hold = _read(bank, "holdings")
    opens = _read(bank, "_truth/future_openings")
    cust = _read(bank, "customers").set_index("customer_id")
    held = set(zip(hold.customer_id, hold.product_id))
    assert not any(k in held for k in zip(opens.customer_id, opens.product_id))
    eligible = {p.product_id: set(p.eligible_segments.split("|")) for p in CATALOG}
    assert all(cust.segment[c] in eligible[p] for c, p in zip(opens.customer_id, opens.product_id))


def test_churn_follows_complaints_silence_and_draining_balances(bank):
    end = pd.Timestamp(AS_OF)
    churn = _read(bank, "_truth/future_churn").set_index("customer_id").churned
    comp = _read(bank, "complaints")
    open_c = churn.index.isin(comp[comp.resolved_at.isna()].customer_id)
    assert churn[open_c].mean() > 2 * churn[~open_c].mean()

    inter = _read(bank, "interactions")
    last_out = inter[inter.direction == "outbound"].groupby("customer_id").ts.max()
    silence = (end - last_out.reindex(churn.index)).dt.days.fillna(9999)
    assert churn[silence > 120].mean() > 1.5 * churn[silence <= 120].mean()

    tx = _read(bank, "transactions")
    dep = tx[tx.product_id.isin(["CUR-ACCT", "SAV-ACCT"])]
    net60 = dep[dep.ts >= end - timedelta(days=60)].groupby("customer_id").amount.sum()
    hold = _read(bank, "holdings")
    bal = hold[hold.product_id.isin(["CUR-ACCT", "SAV-ACCT"])].groupby("customer_id").balance.sum()
    drop = (net60 / (bal - net60).clip(lower=1)).reindex(churn.index).fillna(0)
    assert drop[churn].median() < -0.15, "future churners drain their deposits"
    assert drop[~churn].median() > -0.05

    sent = inter[inter.ts >= end - timedelta(days=60)].groupby("customer_id").sentiment.mean()
    sent = sent.reindex(churn.index)
    assert sent[churn].mean() < sent[~churn].mean() - 0.2


def test_co_holding_and_life_stage_shape_what_is_bought_next(bank):
    hold = _read(bank, "holdings")
    opens = _read(bank, "_truth/future_openings")
    cust = _read(bank, "customers").set_index("customer_id")
    pop = cust.index
    mortgage = pop.isin(hold[(hold.product_id == "MORTGAGE") & hold.closed_at.isna()].customer_id)
    no_ins = ~pop.isin(hold[hold.product_id == "INS-HOME"].customer_id)
    buys = pop.isin(opens[opens.product_id == "INS-HOME"].customer_id)
    assert buys[mortgage & no_ins].mean() > 2 * buys[~mortgage & no_ins].mean()

    age = (pd.Timestamp(AS_OF) - pd.to_datetime(cust.birth_date)).dt.days / 365.25
    holders = hold.groupby("customer_id").product_id.agg(set)
    has = lambda p: pop.map(lambda c: p in holders.get(c, ()))
    assert np.asarray(has("MORTGAGE"))[age.values > 70].mean() < np.asarray(has("MORTGAGE"))[
        (age.values > 35) & (age.values < 50)].mean()


def test_care_moments_fall_in_the_coming_weeks(bank):
    end = pd.Timestamp(AS_OF)
    cust = _read(bank, "customers")
    bd = pd.to_datetime(cust.birth_date)
    next_bd = pd.to_datetime({"year": end.year, "month": bd.dt.month, "day": bd.dt.day.where(
        ~((bd.dt.month == 2) & (bd.dt.day == 29)), 28)})
    soon = ((next_bd - end).dt.days % 365).between(0, 13)
    assert 0.02 < soon.mean() < 0.06
    hold = _read(bank, "holdings")
    mat = pd.to_datetime(hold.maturity_date)
    td = hold.product_id.str.startswith("TD-") & hold.closed_at.isna()
    assert ((mat - end).dt.days.between(0, 27) & td).sum() >= 10
    assert (cust.vulnerable.mean() > 0.01) and cust.risk_assessed_at.isna().any()


def test_consents_are_a_log_with_missing_records(bank):
    cons = _read(bank, "consents")
    per = cons.groupby("customer_id").channel.nunique()
    assert (per < len(schema.CONSENT_SCOPES)).mean() > 0.2, "some scopes have no record (= not allowed)"
    assert cons.duplicated(["customer_id", "channel"]).any(), "some clients changed their mind"
