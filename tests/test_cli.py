"""The `nba` command as a person runs it: real subprocesses, real exit codes, NBA_HOME respected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

NBA = [sys.executable, "-m", "apps.cli"]


def run(args, home: Path, cwd: Path | None = None):
    env = {**os.environ, "NBA_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(NBA + args, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_help_lists_the_stages(tmp_path):
    r = run(["--help"], tmp_path / "h")
    assert r.returncode == 0
    for stage in ("data", "features", "demo"):
        assert stage in r.stdout
    r = run(["data", "--help"], tmp_path / "h")
    for cmd in ("generate", "ingest", "status", "rollback"):
        assert cmd in r.stdout


def test_generate_then_ingest_then_status(tmp_path):
    home = tmp_path / "home"
    r = run(["data", "generate", "-n", "400", "--seed", "3", "--as-of", "2026-05-01"], home)
    assert r.returncode == 0, r.stderr
    assert (home / "synthetic" / "customers").is_dir() and (home / "synthetic" / "_truth").is_dir()
    r = run(["data", "ingest", str(home / "synthetic")], home)
    assert r.returncode == 0, r.stderr
    assert "v000001 is live" in r.stdout
    r = run(["data", "status"], home)
    assert r.returncode == 0 and "customers" in r.stdout and "400" in r.stdout
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == ["store", "synthetic"], \
        "nothing outside NBA_HOME"
    # A bank written over NBA_HOME (or a folder holding it) would replace the store: refused.
    for out in (home, tmp_path):
        r = run(["data", "generate", "-n", "50", "--out", str(out), "--overwrite"], home)
        assert r.returncode == 2 and "holds NBA_HOME" in r.stderr
    assert (home / "store" / "CURRENT").exists()


def test_features_materialize_and_get(tmp_path):
    import json

    home = tmp_path / "home"
    assert run(["data", "generate", "-n", "300", "--seed", "4", "--as-of", "2026-05-01"], home).returncode == 0
    assert run(["data", "ingest", str(home / "synthetic")], home).returncode == 0
    r = run(["features", "materialize"], home)  # as_of defaults to the day after the latest event
    assert r.returncode == 0, r.stderr
    assert "features at 2026-05-01 for" in r.stdout and (home / "features" / "as_of=2026-05-01").is_dir()
    r = run(["features", "get", "C00000005", "--json"], home)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["customer_id"] == "C00000005" and doc["as_of"] == "2026-05-01"
    assert doc["lifecycle_stage"] in ("new", "growing", "mature", "declining", "dormant")
    assert set(doc["state_evidence"]) == {"lifecycle_stage", "health_score", "complaint_state", "emotional_state"}
    offline = json.loads(run(["features", "get", "C00000005", "--as-of", "2026-05-01", "--json"], home).stdout)
    assert offline == doc, "offline and online agree"
    r = run(["features", "get", "C-19"], home)
    assert r.returncode == 2 and "unknown customer_id 'C-19'" in r.stderr
    r = run(["features", "get", "C00000005", "--as-of", "2020-01-01"], home)
    assert r.returncode == 2 and "no features materialized for as_of 2020-01-01" in r.stderr
    # A new store version after the features were published: ingest says the online features are behind.
    assert "online features" not in run(["data", "status"], home).stdout
    r = run(["data", "ingest", str(home / "synthetic")], home)
    assert r.returncode == 0 and "were materialized from store version v000001" in r.stdout \
        and "nba features materialize" in r.stdout, r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("state:\n  new_tenure_dayz: 10\n")
    r = run(["features", "materialize", "--config", str(bad)], home)
    assert r.returncode == 2 and "state.new_tenure_dayz" in r.stderr


def test_home_option_overrides_the_environment(tmp_path):
    other = tmp_path / "other"
    r = run(["--home", str(other), "data", "generate", "-n", "50", "--as-of", "2026-05-01"], tmp_path / "env")
    assert r.returncode == 0, r.stderr
    assert (other / "synthetic" / "customers").is_dir()
    assert not (tmp_path / "env").exists()


def test_bad_input_exits_non_zero_with_file_row_and_column(tmp_path, small_csv_bank):
    home = tmp_path / "home"
    assert run(["data", "ingest", str(small_csv_bank)], home).returncode == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    df = pd.read_csv(small_csv_bank / "customers.csv", dtype=str, keep_default_na=False)
    df.loc[2, "risk_tolerance"] = "9"
    df.to_csv(bad / "customers.csv", index=False)
    r = run(["data", "ingest", str(bad)], home)
    assert r.returncode == 2
    assert "customers.csv, row 3 (line 4), column 'risk_tolerance': 9 is out of range" in r.stderr
    assert "nothing was stored" in r.stderr
    assert "Traceback" not in r.stderr
    assert "v000001" in run(["data", "status"], home).stdout


@pytest.mark.parametrize("args,needle", [
    (["data", "generate", "--as-of", "2026-13-01"], "not a date"),
    (["data", "generate", "-n", "0"], "greater than or equal to 1"),
    (["data", "ingest", "/nonexistent/dir"], "not a folder"),
    (["data", "ingest", ".", "--mode", "merge"], "replace, append"),
    (["data", "status"], "store"),
])
def test_bad_arguments_are_named(tmp_path, args, needle):
    r = run(args, tmp_path / "h")
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr


def test_demo_runs_the_main_job_end_to_end(tmp_path):
    home = tmp_path / "home"
    r = run(["demo", "-n", "1500"], home)
    assert r.returncode == 0, r.stderr
    assert "demo complete" in r.stdout and "customer state" in r.stdout
    assert "6. FAISS indexes" in r.stdout and "lookalike audience of" in r.stdout
    assert "7. next best actions" in r.stdout and "printable list:" in r.stdout
    days = [p for p in (home / "daily").iterdir() if not p.name.startswith(".")]
    assert len(days) == 1 and (days[0] / "decisions.parquet").exists() and any((days[0] / "rm").glob("*.html"))
    assert any((home / "models").glob("nba-v2-*/index/*/customers/index.faiss"))
    assert not (tmp_path / "mlruns").exists() and not (Path.cwd() / "mlruns").exists()
    r = run(["data", "status"], home)
    assert "1,500" in r.stdout


def test_no_model_yet_says_how_to_make_one(tmp_path):
    from bundle import registry
    from bundle.format import BundleError
    from nba.home import Home
    with pytest.raises(BundleError, match="no model is registered yet: run `nba train --promote`"):
        registry.model_version(Home(tmp_path / "home").ensure())
