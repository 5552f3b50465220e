"""The one write-aside-and-switch helper (nba.atomic)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nba.atomic import (
    Busy,
    builds_dir,
    file_stem,
    lock,
    lock_path,
    publish_dir,
    write_file,
)
from nba.errors import NBAError


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
    ready = tmp_path / "held"
    code = ("import time; from pathlib import Path; from nba.atomic import lock, lock_path; "
            f"cm = lock(lock_path(Path({str(target)!r}))); cm.__enter__(); Path({str(ready)!r}).touch(); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
        with pytest.raises(Busy, match="being written by another process"):
            publish_dir(target, _fill("one"))
    finally:
        holder.kill()
        holder.wait()
    assert not target.exists()
    # The holder's own thread may take a re-entrant lock again (a run that locks its whole length, then
    # publishes); a plain lock (the store's writer lock) refuses even its own thread.
    with lock(lock_path(target), reentrant=True):
        publish_dir(target, _fill("zero"))
    with lock(tmp_path / "LOCK"):
        with pytest.raises(Busy):
            with lock(tmp_path / "LOCK"):
                pass
    shutil.rmtree(builds_dir(target))
    target.unlink()
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


def test_targets_that_are_no_folder_or_hold_the_working_directory_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inner").mkdir()
    for bad in (Path("."), Path(".."), tmp_path):
        with pytest.raises(NBAError, match="cannot"):
            publish_dir(bad, _fill("x"))
    assert (tmp_path / "inner").is_dir() and not list(tmp_path.glob(".*.d"))
    # ... also when reached through a linked folder, and a file is never replaced by a folder.
    (tmp_path.parent / f"{tmp_path.name}-link").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path / "inner")
    with pytest.raises(NBAError, match="current directory"):
        publish_dir(tmp_path.parent / f"{tmp_path.name}-link" / "inner", _fill("x"))
    (tmp_path / "f.txt").write_text("keep")
    with pytest.raises(NBAError, match="a file is there"):
        publish_dir(tmp_path / "f.txt", _fill("x"))
    assert (tmp_path / "inner").is_dir() and (tmp_path / "f.txt").read_text() == "keep"


def test_a_link_left_by_a_writer_killed_mid_switch_is_removed(tmp_path):
    target = tmp_path / "day"
    (tmp_path / ".day.deadbeef.link").symlink_to("nowhere")
    publish_dir(target, _fill("one"))
    assert not list(tmp_path.glob(".day.*.link"))


def test_a_reentrant_lock_is_one_lock_whatever_the_spelling_of_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    with lock(Path("home") / ".day.lock", reentrant=True):  # relative, as a Home built by hand gives it
        publish_dir(tmp_path / "home" / "day", _fill("one"))  # absolute inside publish_dir
    assert (tmp_path / "home" / "day" / "a.txt").read_text() == "one"


@given(st.text(max_size=300))
def test_file_stems_are_safe_names(identifier):
    import re

    stem = file_stem(identifier)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}-[0-9a-f]{10}", stem) and not stem.startswith(("-", "."))


def test_file_stems_tell_ids_apart_and_stay_readable():
    ids = ["RM01", "rm01", "RM/01", "RM 01", "RM_01", "R\u00e9my", "Re\u0301my", "", " "]
    stems = [file_stem(i) for i in ids]
    assert len(set(stems)) == len(ids) and stems[0].startswith("RM01-") and file_stem("RM01") == stems[0]
