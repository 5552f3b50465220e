"""Notebooks run top to bottom against a small bank (their code cells, in one namespace)."""

import json
from pathlib import Path

import pytest

from feature_store.ingest import ingest
from feature_store.store import TableStore
from nba.home import Home
from nba.synthetic import generate

from .conftest import AS_OF

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    home = Home.resolve(tmp_path / "home")
    generate(600, seed=2, as_of=AS_OF, out=home.synthetic, workers=1)
    ingest(home.synthetic, TableStore(home.store), now=None)
    monkeypatch.setenv("NBA_HOME", str(home.root))
    ns: dict = {}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), ns)
    assert ns["by_complaint"]["customers"].sum() > 0
