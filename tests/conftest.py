"""Shared fixtures: one small synthetic bank per test session, in Parquet and in CSV form."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pytest

from feature_store.store import TableStore
from nba import schema
from nba.synthetic import generate

AS_OF = date(2026, 6, 1)


@pytest.fixture(scope="session")
def bank(tmp_path_factory) -> Path:
    """A 5,000-customer synthetic bank (Parquet, the generator's own layout)."""
    out = tmp_path_factory.mktemp("bank") / "bank"
    generate(5_000, seed=11, as_of=AS_OF, out=out, workers=1)
    return out


@pytest.fixture(scope="session")
def small_csv_bank(tmp_path_factory) -> Path:
    """A 300-customer bank written as one CSV per table, the way a bank would hand it over."""
    pq_dir = tmp_path_factory.mktemp("small") / "parquet"
    generate(300, seed=5, as_of=AS_OF, out=pq_dir, workers=1)
    csv_dir = tmp_path_factory.mktemp("small") / "csv"
    csv_dir.mkdir()
    for name in schema.TABLES:
        pacsv.write_csv(ds.dataset(pq_dir / name).to_table(), csv_dir / f"{name}.csv")
    return csv_dir


@pytest.fixture()
def csv_bank(small_csv_bank, tmp_path) -> Path:
    """A private, editable copy of the CSV bank."""
    dst = tmp_path / "in"
    shutil.copytree(small_csv_bank, dst)
    return dst


@pytest.fixture()
def store(tmp_path) -> TableStore:
    return TableStore(tmp_path / "home" / "store")
