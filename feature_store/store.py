"""Versioned, immutable table store of the bank's data under ``$NBA_HOME/store``.

Layout::

    store/
      CURRENT                      name of the live version ("v000003"), replaced atomically
      LOCK                         held (flock) by the one writer at a time
      SWITCHES                     when each version became live (the GC spares recently live ones)
      versions/v000003/
        manifest.json              tables, parts, row counts, content hashes, source, created_at
        customers/part-00000.parquet ...
      staging/<random>/            a version being written; never read

A writer fills a staging folder, then renames it into ``versions/`` and finally replaces ``CURRENT``.
A failed or killed write therefore leaves ``CURRENT`` on the previous complete version; readers see
the old or the new version, never a mix. Files of a version are never modified after commit, so a new
version shares unchanged tables with its parent by hard links.

Each table's manifest entry may also say ``"absent": true`` (an optional table the bank's export did not
have, stored empty) and ``"extensions": {column: type}`` (the bank's declared extension columns its parts
hold, after the contract's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from nba import schema
from nba.atomic import Busy, fsync_dir, fsync_tree, lock, write_file
from nba.errors import StoreError

_VERSION_RE = re.compile(r"^v(\d{6})$")
KEEP_VERSIONS = 5
# A version stays readable for this long after a newer one was committed, however many versions come
# after it: a daily run or a training run that started on it finishes on it.
GRACE_SECONDS = 6 * 3600


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class StoreVersion:
    """One committed, immutable snapshot of all contract tables."""

    name: str
    path: Path
    manifest: dict

    @property
    def tables(self) -> list[str]:
        return list(self.manifest["tables"])

    def rows(self, table: str) -> int:
        return int(self._entry(table)["rows"])

    def absent(self, table: str) -> bool:
        """Whether ``table`` was absent from the bank's export (stored empty; see ``schema.OPTIONAL_TABLES``):
        its rows are unknown, not zero. Raises ``StoreError`` for a table not in the version."""
        return bool(self._entry(table).get("absent", False))

    @property
    def absent_tables(self) -> list[str]:
        return [t for t in self.tables if self.absent(t)]

    def extensions(self, table: str) -> dict[str, str]:
        """The extension columns (name -> type) ``table``'s parts hold after the contract's; {} for none."""
        return dict(self._entry(table).get("extensions", {}))

    def contract(self, table: str) -> schema.Table:
        """``table``'s contract as this version holds it: with its extension columns."""
        return schema.extended(schema.table(table), self.extensions(table))

    def table_dir(self, table: str) -> Path:
        self._entry(table)
        return self.path / table

    def table_glob(self, table: str) -> str:
        """Glob of the table's Parquet parts, for DuckDB's ``read_parquet``."""
        return str(self.table_dir(table) / "*.parquet")

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        entry = self._entry(table)
        parts = [self.path / table / p["file"] for p in entry["parts"]]
        contract = self.contract(table).arrow_schema
        if not parts:
            empty = contract if columns is None else pa.schema([contract.field(c) for c in columns])
            return empty.empty_table()
        tables = [pq.read_table(p, columns=columns) for p in parts]
        return pa.concat_tables(tables)

    @property
    def content_hash(self) -> str:
        """One hash over every part of every table: the data snapshot's identity."""
        h = hashlib.sha256()
        for t in sorted(self.manifest["tables"]):
            if self.manifest["tables"][t].get("absent"):  # absent is not the same data as empty
                h.update(f"{t}/absent".encode())
            for p in self.manifest["tables"][t]["parts"]:
                h.update(f"{t}/{p['sha256']}".encode())
        return h.hexdigest()

    def _entry(self, table: str) -> dict:
        try:
            return self.manifest["tables"][table]
        except KeyError:
            raise StoreError(f"table {table!r} is not in store version {self.name}") from None


class VersionWriter:
    """Builds a new version in a staging folder; ``TableStore.write`` commits or discards it."""

    def __init__(self, store: "TableStore", path: Path, parent: StoreVersion | None):
        self.store = store
        self.path = path
        self.parent = parent
        self._parts: dict[str, list[dict]] = {}
        self._meta: dict[str, dict] = {}  # table -> {"extensions": {...}, "absent": bool}

    def contract(self, table: str) -> schema.Table:
        """``table``'s contract in this version: with the extension columns set by :meth:`ensure_table`
        (or carried over by :meth:`link_from_parent`)."""
        return schema.extended(schema.table(table), self._meta.get(table, {}).get("extensions"))

    def table_dir(self, table: str) -> Path:
        d = self.path / table
        d.mkdir(parents=True, exist_ok=True)
        self._parts.setdefault(table, [])
        return d

    def write_part(self, table: str, data: pa.Table) -> Path:
        """Write one Parquet part of ``table`` (already in contract types) and return its path."""
        d = self.table_dir(table)
        part = d / f"part-{len(self._parts[table]):05d}.parquet"
        data = data.cast(self.contract(table).arrow_schema)
        pq.write_table(data, part, compression="zstd")  # fsynced with the whole version at commit
        self._parts[table].append({"file": part.name, "rows": data.num_rows, "sha256": _sha256(part)})
        return part

    def ensure_table(self, table: str, extensions: Mapping[str, str] | None = None, absent: bool = False) -> None:
        """Declare ``table`` present even if it received no rows (an empty table). ``extensions``: the
        extension columns (name -> type) its parts hold (None: keep those carried over from the parent);
        ``absent``: the bank's export does not have the table (it stays empty). Call before :meth:`write_part`."""
        self.table_dir(table)
        meta = self._meta.setdefault(table, {})
        if extensions is not None:
            meta["extensions"] = dict(extensions)
        meta["absent"] = absent

    def link_from_parent(self, table: str) -> None:
        """Carry the parent version's ``table`` over unchanged (hard links: no copy, no rewrite)."""
        if self.parent is None or table not in self.parent.tables:
            raise StoreError(f"no previous version of table {table!r} to carry over")
        d = self.table_dir(table)
        self._meta[table] = {"extensions": self.parent.extensions(table), "absent": self.parent.absent(table)}
        for p in self.parent.manifest["tables"][table]["parts"]:
            src = self.parent.path / table / p["file"]
            dst = d / f"part-{len(self._parts[table]):05d}.parquet"
            try:
                os.link(src, dst)
            except OSError:  # file systems without hard links
                shutil.copy2(src, dst)
            self._parts[table].append({**p, "file": dst.name})

    def staged_glob(self, table: str) -> str:
        return str(self.path / table / "*.parquet")

    def staged_parts(self, table: str) -> list[dict]:
        return list(self._parts.get(table, []))

    def manifest(self, source: str) -> dict:
        tables = {}
        for t, parts in sorted(self._parts.items()):
            tables[t] = {"rows": sum(p["rows"] for p in parts), "parts": parts}
            meta = self._meta.get(t, {})
            if meta.get("extensions"):
                tables[t]["extensions"] = meta["extensions"]
            if meta.get("absent"):
                tables[t]["absent"] = True
        return {
            "schema_version": schema.SCHEMA_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "parent": self.parent.name if self.parent else None,
            "source": source,
            "tables": tables,
        }


class TableStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def _versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def _current_file(self) -> Path:
        return self.root / "CURRENT"

    def version_names(self) -> list[str]:
        if not self._versions_dir.is_dir():
            return []
        return sorted(p.name for p in self._versions_dir.iterdir() if _VERSION_RE.match(p.name))

    def current(self) -> StoreVersion | None:
        try:
            name = self._current_file.read_text().strip()
        except FileNotFoundError:
            return None
        return self.version(name)

    def require_current(self) -> StoreVersion:
        v = self.current()
        if v is None:
            raise StoreError(
                f"the store at {self.root} is empty: run 'nba data ingest DIR' "
                "(or 'nba data generate' first for a synthetic bank)"
            )
        return v

    def version(self, name: str) -> StoreVersion:
        if not _VERSION_RE.fullmatch(name):
            raise StoreError(f"{name!r} is not a store version name (like v000001); kept: "
                             f"{', '.join(self.version_names()) or 'none'}")
        path = self._versions_dir / name
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:
            raise StoreError(f"store version {name!r} does not exist under {self._versions_dir}") from None
        if manifest.get("schema_version") != schema.SCHEMA_VERSION:
            raise StoreError(
                f"store version {name} has schema version {manifest.get('schema_version')}, "
                f"this code reads {schema.SCHEMA_VERSION}"
            )
        return StoreVersion(name, path, manifest)

    @contextlib.contextmanager
    def _lock(self, wait: float = 0) -> Iterator[None]:
        try:
            with lock(self.root / "LOCK", timeout=wait, what=f"the store at {self.root}"):
                yield
        except Busy as e:
            raise StoreError(str(e)) from None

    @contextlib.contextmanager
    def write(self, source: str, wait: float = 0) -> Iterator[VersionWriter]:
        """Stage a new version; commit it if the block succeeds, discard it if it raises.

        Only one writer at a time: another one gets ``StoreError`` after waiting ``wait`` seconds for
        the lock (0: at once). Staging folders left by a killed writer are removed here, under the lock.
        """
        with self._lock(wait):
            staging_root = self.root / "staging"
            shutil.rmtree(staging_root, ignore_errors=True)
            staging = staging_root / uuid.uuid4().hex
            staging.mkdir(parents=True)
            writer = VersionWriter(self, staging, self.current())
            try:
                yield writer
                self._commit(writer, source)
            finally:
                shutil.rmtree(staging_root, ignore_errors=True)

    def _commit(self, writer: VersionWriter, source: str) -> StoreVersion:
        manifest = writer.manifest(source)
        (writer.path / "manifest.json").write_text(json.dumps(manifest, indent=1))
        fsync_tree(writer.path)

        self._versions_dir.mkdir(parents=True, exist_ok=True)
        names = self.version_names()
        number = int(_VERSION_RE.match(names[-1]).group(1)) + 1 if names else 1
        name = f"v{number:06d}"
        final = self._versions_dir / name
        os.rename(writer.path, final)
        fsync_dir(self._versions_dir)
        self._switch(name)
        self._gc(keep=KEEP_VERSIONS)
        return self.version(name)

    def _switch(self, name: str) -> None:
        write_file(self._current_file, name + "\n")
        # When each version became live: the GC spares a version for a while after it stopped being live.
        with open(self.root / "SWITCHES", "a") as f:
            f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {name}\n")

    def _superseded_at(self) -> dict[str, datetime]:
        """When each version last stopped being live, from the switch log."""
        out: dict[str, datetime] = {}
        try:
            lines = (self.root / "SWITCHES").read_text().splitlines()
        except FileNotFoundError:
            return out
        prev = None
        for line in lines:
            at, _, name = line.partition(" ")
            try:
                when = datetime.fromisoformat(at)
            except ValueError:
                continue
            if prev is not None and prev != name:
                out[prev] = when
            prev = name
        return out

    def rollback(self, name: str) -> StoreVersion:
        """Make an earlier committed version live again."""
        with self._lock():
            v = self.version(name)
            self._switch(name)
            return v

    def _gc(self, keep: int, grace_seconds: float | None = None) -> None:
        """Remove versions beyond the newest ``keep``, except the live one and those that stopped being
        live less than ``grace_seconds`` ago (a reader may still be on them; a rollback makes an old
        version live again)."""
        grace = GRACE_SECONDS if grace_seconds is None else grace_seconds
        current = self._current_file.read_text().strip()
        names = self.version_names()
        superseded = self._superseded_at()
        now = datetime.now(timezone.utc)
        for name, successor in zip(names[:-keep], names[1:]):
            if name == current:
                continue
            when = superseded.get(name)
            if when is None:  # before the switch log existed: the next version's commit time
                try:
                    when = datetime.fromisoformat(
                        json.loads((self._versions_dir / successor / "manifest.json").read_text())["created_at"])
                except (OSError, KeyError, ValueError):
                    when = None
            if when is None or (now - when).total_seconds() >= grace:
                shutil.rmtree(self._versions_dir / name, ignore_errors=True)
