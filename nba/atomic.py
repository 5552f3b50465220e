"""Write aside, switch atomically under a lock, fsync: the one way this project replaces what it stores.

Readers never see a half-written folder or file, a killed writer leaves the previous complete state,
and two writers of the same target never interleave.

- :func:`publish_dir` builds a folder aside and then repoints ``target`` (a symbolic link) to it in one
  ``rename``: used for the daily lists, materialized features, the synthetic bank and model downloads.
  Layout beside the target ``T``: ``.T.d/<run-id>/`` (the builds; older ones are removed after a
  switch) and ``.T.lock``.
- :func:`write_file` replaces one file the same way (the store's ``CURRENT`` pointer).
- :func:`lock` is the writers' lock (``filelock``, an ``flock`` on Linux): ``timeout=0`` fails at once
  with :class:`Busy` when another process holds it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
import time
import unicodedata
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import filelock

from nba.errors import NBAError


class Busy(NBAError):
    """Another process holds the lock of the target being written."""


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (files first, then their folders)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


# One instance per lock file while it is held, for the re-entrant locks (weak: released ones go away).
_REENTRANT: weakref.WeakValueDictionary[str, filelock.FileLock] = weakref.WeakValueDictionary()


@contextlib.contextmanager
def lock(path: Path, timeout: float = 0, what: str | None = None, reentrant: bool = False) -> Iterator[None]:
    """Hold the lock file ``path`` for the block. ``timeout``: seconds to wait (0: fail at once, -1:
    wait for ever). With ``reentrant``, a thread that holds it may take it again (a run that locks its
    target for its whole length, then publishes into it); without, even the same thread is refused.
    Raises :class:`Busy` naming ``what`` (default: the lock file) when another holder has it.
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if reentrant:
        fl = _REENTRANT.get(str(path))
        if fl is None:
            fl = filelock.FileLock(str(path))
            _REENTRANT[str(path)] = fl
    else:
        fl = filelock.FileLock(str(path))
    try:
        fl.acquire(timeout=timeout)
    except filelock.Timeout:
        raise Busy(f"{what or path} is being written by another process or thread (lock {path})") from None
    try:
        yield
    finally:
        fl.release()


def write_file(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data``: written to a temporary file beside it, fsynced, renamed over.
    The caller holds the lock of whatever ``path`` belongs to."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}"
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def file_stem(identifier: str, max_slug: int = 40) -> str:
    """A file name stem for an identifier that comes from the data (an RM id, a campaign id): an ASCII
    slug of it (letters, digits, ``_`` and ``-``; at most ``max_slug`` characters) plus ``-`` and 10 hex
    digits of its BLAKE2b hash. Never empty, never ``.``/``..``, never a path, at most 51 characters,
    and two different identifiers never share a stem (up to the hash). Keep the identifier -> stem
    mapping beside the files (a manifest): the stem alone does not give the identifier back."""
    text = unicodedata.normalize("NFKD", str(identifier)).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")[:max_slug] or "id"
    digest = hashlib.blake2b(str(identifier).encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()
    return f"{slug}-{digest}"


def builds_dir(target: Path) -> Path:
    """Where :func:`publish_dir` keeps the builds of ``target``."""
    return target.parent / f".{target.name}.d"


def lock_path(target: Path) -> Path:
    """The lock file :func:`publish_dir` holds while it writes ``target``."""
    return target.parent / f".{target.name}.lock"


def _checked(target: Path) -> Path:
    target = Path(os.path.abspath(target))
    if target.name in ("", ".", ".."):
        raise NBAError(f"cannot publish a folder at {target}: name a folder")
    real = Path(os.path.realpath(target.parent)) / target.name  # through any linked parent folder
    cwd = Path(os.path.realpath(Path.cwd()))
    if real == cwd or real in cwd.parents:
        raise NBAError(f"cannot replace {target}: it holds the current directory; name another folder")
    if target.exists() and not target.is_symlink() and not target.is_dir():
        raise NBAError(f"cannot publish a folder at {target}: a file is there")
    return target


def publish_dir(target: Path, build: Callable[[Path], None], *, timeout: float = 0, what: str | None = None,
                if_exists: Literal["replace", "keep"] = "replace") -> Path:
    """Build a new version of the folder ``target`` aside and switch to it atomically.

    ``build(folder)`` fills an empty folder. When it returns, every file is fsynced and the link
    ``target`` is repointed to the folder in one rename, under the target's lock; the previous build
    and builds left by killed writers are then removed. When ``build`` raises (or the process dies),
    ``target`` still shows the previous complete build. ``if_exists="keep"`` leaves an existing target
    alone without building (immutable downloads). A ``target`` that is a real folder (written by an
    earlier version of this code) is moved aside into the builds first.

    Raises :class:`Busy` when another writer holds the lock longer than ``timeout`` seconds, and
    ``NBAError`` for a target that is no folder name, is a file, or holds the current directory
    (also when reached through a linked folder).
    """
    target = _checked(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    builds = builds_dir(target)
    with lock(lock_path(target), timeout, what or str(target), reentrant=True):
        if if_exists == "keep" and target.exists():
            return target
        builds.mkdir(exist_ok=True)
        folder = builds / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        try:
            build(folder)
            fsync_tree(folder)
            if target.exists() and not target.is_symlink():
                os.rename(target, builds / f"legacy-{uuid.uuid4().hex[:8]}")
            tmp = parent / f".{target.name}.{uuid.uuid4().hex[:8]}.link"
            os.symlink(os.path.relpath(folder, parent), tmp)
            os.replace(tmp, target)  # atomic: readers see the old build or the new one
            fsync_dir(parent)
        except BaseException:
            if not (target.is_symlink() and target.resolve() == folder.resolve()):
                shutil.rmtree(folder, ignore_errors=True)
            raise
        for stale in builds.iterdir():
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        for stale in parent.glob(f".{glob.escape(target.name)}.*.link"):  # left by a writer killed mid-switch
            stale.unlink(missing_ok=True)
    return target
