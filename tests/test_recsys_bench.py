"""Smoke test of `nba bench recsys` on a slice of MovieLens 100K: the pipeline, not the score."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("NBA_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


@pytest.fixture(scope="module")
def ml_slice(tmp_path_factory) -> Path:
    src = SHARED / "ml-100k"
    if not src.is_dir():
        pytest.skip(f"shared datasets not present at {src}")
    d = tmp_path_factory.mktemp("ml-slice") / "ml-slice"
    d.mkdir()
    lines = [ln for ln in (src / "u.data").read_text().splitlines() if int(ln.split("\t")[0]) <= 150]
    (d / "u.data").write_text("\n".join(lines) + "\n")
    for name in ("u.user", "u.item"):
        (d / name).write_bytes((src / name).read_bytes())
    return d


def test_bench_recsys_runs_every_model_and_writes_json(ml_slice, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("nba: {epochs: 3, dim: 16, loss: softmax, negatives: 50}\nlightgcn: {epochs: 3, dim: 16}\n"
                   "pyg_lightgcn: {dim: 16, budget_seconds: 2}\nals: {factors: 8, iterations: 2}\n")
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "recsys", "--data", str(ml_slice),
                        "--out", str(out), "--config", str(cfg)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["protocol"] == "recommenders" and res["format"] == "movielens"
    assert set(res["models"]) == {"nba", "lightgcn", "pyg-lightgcn", "als", "pop"}
    for name, m in res["models"].items():
        assert set(m["metrics"]) == {"precision@10", "recall@10", "ndcg@10", "map@10"}, name
        assert 0 <= m["metrics"]["ndcg@10"] <= 1 and m["train_seconds"] >= 0 and m["peak_rss_mb"] > 0
    assert res["models"]["pyg-lightgcn"]["budget"].startswith("stopped by the 2 s budget")
    assert "ml-slice" in r.stdout and "pop" in r.stdout


def test_bench_recsys_rejects_unknown_models(ml_slice):
    r = subprocess.run([sys.executable, "-m", "apps.cli", "bench", "recsys", "--data", str(ml_slice),
                        "--models", "pop,bert4rec"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "bert4rec" in r.stderr


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "recsys").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_recsys_config_is_valid(path):
    from recsys_bench.harness import load_bench_config
    from training.loop import TrainConfig
    cfg, used = load_bench_config("unused", path)
    assert used == path
    for overrides in (cfg.nba, cfg.lightgcn):
        TrainConfig(**overrides)  # raises on a misspelt or out-of-range setting


def test_bad_recsys_config_names_the_file(tmp_path):
    from nba.errors import ConfigError
    from recsys_bench.harness import load_bench_config
    bad = tmp_path / "bad.yaml"
    bad.write_text("als: {factorz: 3}\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_bench_config("x", bad)
    bad.write_text("nba: {loss: hinge}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml(.|\n)*loss"):
        load_bench_config("x", bad)
