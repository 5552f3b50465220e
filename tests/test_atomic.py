"""The one write-aside-and-switch helper (nba.atomic)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nba.atomic import Busy, builds_dir, lock, publish_dir, write_file


def _fill(text: str):
    def build(folder):
        (folder / "a.txt").write_text(text)
        (folder / "sub").mkdir()
        (folder / "sub" / "b.txt").write_text(text * 2)
    return build


def test_publish_switches_the_link_and_removes_the_old_build(tmp_path):
    target = tmp_path / "day"
    publish_dir(target, _fill("one"))
    first = target.resolve()
    assert target.is_symlink() and (target / "a.txt").read_text() == "one"
    publish_dir(target, _fill("two"))
    assert (target / "sub" / "b.txt").read_text() == "twotwo"
    assert not first.exists() and list(builds_dir(target).iterdir()) == [target.resolve()]


def test_a_failed_build_leaves_the_previous_one(tmp_path):
    target = tmp_path / "day"
    publish_dir(target, _fill("one"))

    def broken(folder):
        (folder / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish_dir(target, broken)
    assert (target / "a.txt").read_text() == "one"
    assert list(builds_dir(target).iterdir()) == [target.resolve()]


def test_a_killed_build_leaves_the_previous_one_and_the_next_run_cleans_up(tmp_path):
    target = tmp_path / "day"
    publish_dir(target, _fill("one"))
    code = ("import os; from pathlib import Path; from nba.atomic import publish_dir; "
            f"publish_dir(Path({str(target)!r}), lambda f: ((f / 'a.txt').write_text('x'), os.kill(os.getpid(), 9)))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9
    assert (target / "a.txt").read_text() == "one" and len(list(builds_dir(target).iterdir())) == 2
    publish_dir(target, _fill("two"))
    assert list(builds_dir(target).iterdir()) == [target.resolve()]


def test_one_writer_at_a_time_and_keep_mode(tmp_path):
    target = tmp_path / "model"
    with lock(tmp_path / ".model.lock"):
        with pytest.raises(Busy, match="being written by another process"):
            publish_dir(target, _fill("one"))
    assert not target.exists()
    publish_dir(target, _fill("one"), if_exists="keep")
    publish_dir(target, _fill("two"), if_exists="keep")  # immutable: the first download stays
    assert (target / "a.txt").read_text() == "one"


def test_a_real_folder_from_older_code_is_replaced(tmp_path):
    target = tmp_path / "as_of=2026-06-01"
    target.mkdir()
    (target / "old.txt").write_text("old")
    publish_dir(target, _fill("new"))
    assert target.is_symlink() and not (target / "old.txt").exists() and (target / "a.txt").read_text() == "new"


def test_write_file_replaces_whole(tmp_path):
    f = tmp_path / "CURRENT"
    write_file(f, "v000001\n")
    write_file(f, b"v000002\n")
    assert f.read_text() == "v000002\n" and [p.name for p in tmp_path.iterdir()] == ["CURRENT"]
