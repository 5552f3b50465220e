"""The propensity prior (issue 17): shrunk base rates where the Platt calibration cannot be applied:
every client when too few openings were held out to fit it, new clients always."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from bundle import Bundle
from nba.decision import Inputs, explain
from training.pipeline import propensity_prior

START, END = date(2026, 3, 1), date(2026, 6, 1)


def _window(n_est: int = 200, n_new: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Established clients: 20 of the 100 'mass' ones without CARD open it, 2 of the 100 'affluent' do;
    new clients: 20 of 40 open SAV (their first product)."""
    rows, labels = [], []
    for i in range(n_est):
        seg = "mass" if i < n_est // 2 else "affluent"
        opened = "CARD" if (seg == "mass" and i < 20) or (seg == "affluent" and i < n_est // 2 + 2) else ""
        rows.append({"customer_id": f"E{i}", "segment": seg, "tenure_days": 800, "held_products": "SAV",
                     "n_products": 1})
        labels.append({"customer_id": f"E{i}", "label_opened_products": opened})
    for i in range(n_new):
        rows.append({"customer_id": f"N{i}", "segment": "mass", "tenure_days": 10, "held_products": "",
                     "n_products": 0})
        labels.append({"customer_id": f"N{i}", "label_opened_products": "SAV" if i < 20 else ""})
    rows.append({"customer_id": "GONE", "segment": "mass", "tenure_days": 900, "held_products": "", "n_products": 0})
    labels.append({"customer_id": "GONE", "label_opened_products": "CARD"})  # a former client: left out
    return pd.DataFrame(rows), pd.DataFrame(labels)


def test_rates_are_shrunk_toward_the_coarser_rate():
    feats, labels = _window()
    k = 50.0
    prior = propensity_prior(feats, labels, ["SAV", "CARD"], 90, START, END, shrink=k)
    est, new = prior["groups"]["established"], prior["groups"]["new"]
    assert est["clients"] == 200 and new["clients"] == 40, "the former client is left out"
    # Established: nobody is eligible for SAV (all hold it); 22 of 200 opened CARD.
    base = (22 + 1) / (200 + 2 + 1)
    card = (22 + k * base) / (200 + k)
    assert est["rate"] == pytest.approx(base, abs=1e-6) and est["by_product"]["CARD"] == pytest.approx(card, abs=1e-6)
    assert est["by_segment"]["mass"]["CARD"] == pytest.approx((20 + k * card) / (100 + k), abs=1e-6)
    assert est["by_segment"]["affluent"]["CARD"] == pytest.approx((2 + k * card) / (100 + k), abs=1e-6)
    assert est["by_segment"]["mass"]["CARD"] > est["by_product"]["CARD"] > est["by_segment"]["affluent"]["CARD"]
    assert new["by_product"]["SAV"] > 0.3 > est["by_product"]["CARD"]
    assert prior["new_client_max_tenure_days"] == 90 and prior["window"] == [str(START), str(END)]


def _bundle(meta: dict) -> Bundle:
    n, m = 4, 2
    rng = np.random.default_rng(0)
    return Bundle(meta=meta, customer_ids=[f"C{i}" for i in range(n)], product_ids=["SAV", "CARD"], encoder=None,
                  user_emb=rng.normal(size=(n, 3)).astype(np.float32) * 10,
                  item_emb=rng.normal(size=(m, 3)).astype(np.float32) * 10,
                  item_bias=np.zeros(m, np.float32), churn=None, held=np.zeros((2, 0), np.int64), path=None)


def test_new_clients_and_uncalibrated_bundles_get_the_prior():
    feats, labels = _window()
    prior = propensity_prior(feats, labels, ["SAV", "CARD"], 90, START, END)
    cal = {"a": 1.0, "b": 0.0, "offsets": {}}
    rows = np.arange(4)
    tenure, segs = np.array([10.0, 800, np.nan, 400]), np.array(["mass", "mass", "affluent", "private"], object)
    P, from_prior = _bundle({"propensity": cal, "propensity_prior": prior}).propensity_for(rows, tenure, segs)
    assert from_prior.tolist() == [True, False, False, False]  # only the new client (unknown tenure: established)
    assert P[0].tolist() == pytest.approx([prior["groups"]["new"]["by_segment"]["mass"]["SAV"],
                                           prior["groups"]["new"]["by_segment"]["mass"]["CARD"]], abs=1e-6)
    np.testing.assert_allclose(P[1:], _bundle({"propensity": cal}).propensity(rows[1:]), rtol=1e-6)
    P, from_prior = _bundle({"propensity": None, "propensity_prior": prior}).propensity_for(rows, tenure, segs)
    assert from_prior.all()
    est = prior["groups"]["established"]
    assert P[3, 1] == pytest.approx(est["by_product"]["CARD"], abs=1e-6)  # segment 'private' unseen: by product
    assert P[2, 1] == pytest.approx(est["by_segment"]["affluent"]["CARD"], abs=1e-6)
    P, from_prior = _bundle({"propensity": cal}).propensity_for(rows, tenure, segs)  # an older bundle
    assert not from_prior.any()
    from bundle import BundleError
    with pytest.raises(BundleError, match="no propensity calibration"):
        _bundle({}).propensity_for(rows)


def test_a_base_rate_is_said_as_one():
    from tests.test_decision import catalog_for, feats_frame, products_table
    catalog = catalog_for(products_table())
    offer = next(a for a in catalog.actions if a.action_id == "offer:CARD")
    feats = feats_frame([{}, {}])
    P = np.array([0.12, 0.12])
    reasons, points, data = explain(feats, [offer, offer], P, np.zeros(2), catalog, pd.DataFrame(),
                                    np.zeros(2, bool), START, prior=np.array([True, False]))
    assert reasons[0].split("|")[0] == "propensity_prior" and reasons[1].split("|")[0] == "model_propensity"
    assert "12% of clients like this one open it within 90 days (a base rate" in points[0]
    assert data[0][0] == ["offer_base_rate", {"product": "Gold card", "p": 0.12}]
    assert Inputs(np.zeros((2, 1)), np.zeros(2), "v", np.array([True, False])).take([1]).prior.tolist() == [False]
