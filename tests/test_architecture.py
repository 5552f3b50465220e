"""The layers hold: import-linter's contracts (pyproject.toml), and serving starts without the trainer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torch_geometric", "mlflow", "ray", "sklearn")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_import_linter_contracts_are_kept():
    r = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_serving_and_the_bundle_reader_load_without_the_trainer():
    assert _loaded_after("import serving.daily, serving.retrieval, serving.index, bundle, bundle.registry") == set()


def test_cli_help_loads_no_stage():
    assert _loaded_after("from apps.cli import app") == set()


def test_reading_a_bundle_needs_no_torch(tmp_path):
    code = ("import numpy as np; from bundle import write_bundle, read_bundle; "
            f"p = write_bundle(__import__('pathlib').Path({str(tmp_path / 'b')!r}), weights={{'w': np.ones(3)}}, "
            "model_args={}, meta={'as_of': '2026-06-01'}, customer_ids=['C1', 'C2'], product_ids=['P1', 'P2', 'P3'], "
            "encoder=None, user_emb=np.array([[1., .5, .2, 0], [.1, 1., 0, 0]]), item_emb=np.eye(3, 4), item_bias=np.zeros(3), churn=None, "
            "held=np.array([[0], [0]])); b = read_bundle(p); "
            "r = b.recommend(['C1', 'C2'], k=2); assert list(r.product_id) == ['P2', 'P3', 'P2', 'P1'], r")
    assert _loaded_after(code) == set()
