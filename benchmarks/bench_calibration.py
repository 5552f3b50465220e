"""Propensity calibration in a backtest (issue 7): predicted against actual product openings.

    python benchmarks/bench_calibration.py --home .nba --model 1

The model must be a backtest (trained at least 90 days before the end of the store's data; `nba demo`
registers one as version 1). For every (customer, product) not held at the model's as_of, the
calibrated P(opens within 90 days) is summed per product and compared with the openings that followed,
for the established clients (tenure >= 90 days at as_of: the population offers go to) and for all.
Also prints ROC AUC over all pairs. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bundle.registry import load_registered  # noqa: E402
from feature_store.materialize import features_at, time_zone  # noqa: E402
from feature_store.offline import data_end, label_frame  # noqa: E402
from feature_store.store import TableStore  # noqa: E402
from nba.home import Home  # noqa: E402
from nba.metrics import roc_auc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--model", default="1")
    args = ap.parse_args()
    home = Home.resolve(args.home)
    bundle, version = load_registered(home, args.model)
    as_of = date.fromisoformat(bundle.meta["as_of"])
    cal = bundle.meta.get("propensity") or {}
    horizon = int(cal.get("horizon_days", 90))
    store = TableStore(home.store).require_current()
    if as_of + timedelta(days=horizon) > data_end(store, time_zone()):
        raise SystemExit(f"model {version} (as of {as_of}) is not a backtest: the store ends {data_end(store, time_zone())}")
    labels = label_frame(store, as_of, horizon).set_index("customer_id").reindex(bundle.customer_ids)
    P = bundle.propensity(np.arange(len(bundle.customer_ids)))
    held = np.zeros(P.shape, bool)
    held[bundle.held[0], bundle.held[1]] = True
    col = {p: j for j, p in enumerate(bundle.product_ids)}
    Y = np.zeros(P.shape, bool)
    for r, s in enumerate(labels["label_opened_products"].fillna("").to_numpy()):
        for p in filter(None, s.split("|")):
            if p in col:
                Y[r, col[p]] = True
    Y &= ~held
    feats = features_at(home, as_of, store).set_index("customer_id").reindex(bundle.customer_ids)
    established = feats["tenure_days"].fillna(0).to_numpy() >= horizon
    out = {"model_version": version, "as_of": str(as_of), "horizon_days": horizon}
    for name, rows in (("established", established), ("all", np.ones(len(P), bool))):
        h, p_, y_ = held[rows], P[rows], Y[rows]
        pred = np.where(h, 0, p_).sum(axis=0)
        act = y_.sum(axis=0)
        out[name] = {"customers": int(rows.sum()), "predicted_openings": round(float(pred.sum()), 1),
                     "actual_openings": int(act.sum()), "ratio": round(float(pred.sum() / max(act.sum(), 1)), 3),
                     "roc_auc": round(roc_auc(y_[~h], p_[~h]), 4),
                     "per_product": {p: {"predicted": round(float(pred[j]), 1), "actual": int(act[j])}
                                     for p, j in sorted(col.items())}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
