"""Public user-item datasets, read in place: the LightGCN text format and MovieLens 100K.

- **LightGCN format** (``train.txt``, optional ``valid.txt``, ``test.txt``): one line per user,
  ``user item item ...``, IDs already 0-based integers (ml-1m, Gowalla, Yelp2018, Amazon-Book splits).
- **MovieLens 100K** (``u.data``: ``user \\t item \\t rating \\t timestamp``; ``u.user``:
  ``id|age|gender|occupation|zip``; ``u.item``: ``id|title|date|video|url|19 genre flags``). Every
  rating counts as an interaction (the Recommenders protocol); users and items are mapped to 0-based
  rows. User features (age, gender, occupation) and item genres come along.

Bad input raises :class:`~nba.errors.DataValidationError` naming the file, line and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nba.errors import DataValidationError, Problem

LIGHTGCN_FILES = ("train.txt", "valid.txt", "test.txt")
MOVIELENS_FILES = ("u.data", "u.user", "u.item")


@dataclass
class Interactions:
    users: np.ndarray  # int64
    items: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class RecDataset:
    name: str
    format: str
    num_users: int
    num_items: int
    train: Interactions | None = None  # LightGCN format: the given splits
    valid: Interactions | None = None
    test: Interactions | None = None
    ratings: Interactions | None = None  # MovieLens: every rating, to be split by a protocol
    user_x: np.ndarray | None = None
    item_x: np.ndarray | None = None


def detect_format(directory: Path) -> str:
    d = Path(directory)
    if not d.is_dir():
        raise DataValidationError([Problem(str(d), "not a directory")])
    if (d / "train.txt").exists() and (d / "test.txt").exists():
        return "lightgcn"
    if (d / "u.data").exists():
        return "movielens"
    raise DataValidationError([Problem(str(d),
                                       "unknown dataset layout: expected train.txt + test.txt (LightGCN "
                                       "format) or u.data (MovieLens 100K)")])


def load(directory: Path, fmt: str | None = None) -> RecDataset:
    fmt = fmt or detect_format(directory)
    if fmt == "lightgcn":
        return load_lightgcn(directory)
    if fmt == "movielens":
        return load_movielens(directory)
    raise ValueError(f"unknown format {fmt!r}: expected lightgcn or movielens")


def _read_adjacency_lists(path: Path) -> Interactions:
    users, items = [], []
    problems: list[Problem] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                ids = np.array(tokens, dtype=np.int64)
            except ValueError:
                col = next(i for i, t in enumerate(tokens, 1) if not t.lstrip("-").isdigit())
                problems.append(Problem(str(path), f"{tokens[col - 1]!r} is not an integer ID",
                                        row=line_no, column=str(col), line=line_no))
                if len(problems) >= 20:
                    break
                continue
            if (ids < 0).any():
                problems.append(Problem(str(path), "negative ID", row=line_no, line=line_no))
                continue
            if len(ids) > 1:
                users.append(np.full(len(ids) - 1, ids[0]))
                items.append(ids[1:])
    if problems:
        raise DataValidationError(problems)
    if not users:
        return Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return Interactions(np.concatenate(users), np.concatenate(items))


def load_lightgcn(directory: Path) -> RecDataset:
    d = Path(directory)
    parts = {name: _read_adjacency_lists(d / name) for name in LIGHTGCN_FILES if (d / name).exists()}
    for need in ("train.txt", "test.txt"):
        if need not in parts:
            raise DataValidationError([Problem(str(d / need), "missing")])
    n_users = max(int(p.users.max(initial=-1)) for p in parts.values()) + 1
    n_items = max(int(p.items.max(initial=-1)) for p in parts.values()) + 1
    return RecDataset(d.name, "lightgcn", n_users, n_items, train=parts["train.txt"],
                      valid=parts.get("valid.txt"), test=parts["test.txt"])


def _split_lines(path: Path, sep: str, min_fields: int) -> list[list[str]]:
    rows, problems = [], []
    with open(path, encoding="latin-1") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split(sep)
            if len(fields) < min_fields:
                problems.append(Problem(str(path), f"expected at least {min_fields} fields separated by {sep!r}, "
                                        f"got {len(fields)}", row=line_no, line=line_no))
            rows.append(fields)
    if problems:
        raise DataValidationError(problems[:20], truncated=max(0, len(problems) - 20))
    return rows


def load_movielens(directory: Path) -> RecDataset:
    d = Path(directory)
    path = d / "u.data"
    try:
        data = np.loadtxt(path, dtype=np.int64, delimiter="\t", ndmin=2)
    except ValueError as e:
        raise DataValidationError([Problem(str(path), f"not 4 tab-separated integers: {e}")]) from None
    if data.shape[1] != 4:
        raise DataValidationError([Problem(str(path),
                                           f"expected 4 columns (user, item, rating, timestamp), got {data.shape[1]}")])
    user_ids, users = np.unique(data[:, 0], return_inverse=True)
    item_ids, items = np.unique(data[:, 1], return_inverse=True)
    user_x = item_x = None
    if (d / "u.user").exists():
        rows = {int(r[0]): r for r in _split_lines(d / "u.user", "|", 5)}
        occupations = sorted({r[3] for r in rows.values()})
        feats = []
        for uid in user_ids:
            r = rows.get(int(uid))
            if r is None:
                feats.append(np.zeros(2 + len(occupations), np.float32))
                continue
            age = (float(r[1]) - 33) / 12
            occ = np.array([r[3] == o for o in occupations], np.float32)
            feats.append(np.concatenate([[age, float(r[2] == "F")], occ]).astype(np.float32))
        user_x = np.stack(feats)
    if (d / "u.item").exists():
        rows = {int(r[0]): r for r in _split_lines(d / "u.item", "|", 24)}
        item_x = np.stack([np.array([float(x) for x in rows[int(i)][-19:]], np.float32) if int(i) in rows
                           else np.zeros(19, np.float32) for i in item_ids])
    return RecDataset(d.name, "movielens", len(user_ids), len(item_ids),
                      ratings=Interactions(users.astype(np.int64), items.astype(np.int64)),
                      user_x=user_x, item_x=item_x)
