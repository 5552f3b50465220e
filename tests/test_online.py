"""The online store, run identically against SQLite and Redis."""

from __future__ import annotations

import threading

import orjson
import pytest

from feature_store.online import (
    RedisOnlineStore,
    SQLiteOnlineStore,
    batches,
    open_online_store,
)
from nba.errors import ConfigError, StoreError

COLS = ["customer_id", "v", "i"]


def _rows(version: str, n: int):
    return [(f"C{i:05d}", orjson.dumps([f"C{i:05d}", version, i])) for i in range(n)]


def test_publish_get_and_get_many(online_url, tmp_path):
    store = open_online_store(tmp_path / "unused.sqlite", online_url)
    assert store.live() is None
    with pytest.raises(StoreError, match="empty"):
        store.get("C00001")
    assert store.publish("2026-06-01@v000001", COLS, batches(_rows("a", 2_500), size=1_000)) == 2_500
    assert store.live()["version"] == "2026-06-01@v000001" and store.live()["rows"] == 2_500
    assert store.live()["columns"] == COLS
    assert store.get("C00042") == {"customer_id": "C00042", "v": "a", "i": 42}
    assert store.get("nobody") is None
    many = store.get_many(["C00003", "nobody", "C02499", "C00003"])
    assert [m and m["i"] for m in many] == [3, None, 2499, 3]
    assert len(store.get_many([f"C{i:05d}" for i in range(1_000)])) == 1_000
    assert store.get_many([]) == []
    store.close()


def test_switch_is_atomic_for_concurrent_readers(online_url, tmp_path):
    store = open_online_store(tmp_path / "unused.sqlite", online_url)
    store.publish("v1", COLS, [_rows("v1", 3_000)])
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        local = open_online_store(tmp_path / "unused.sqlite", online_url)
        try:
            while not stop.is_set():
                docs = local.get_many(["C00000", "C01500", "C02999"])
                versions = {d["v"] for d in docs if d is not None}
                if len(versions) != 1 or any(d is None for d in docs):
                    errors.append(docs)
                seen.update(versions)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            local.close()

    t = threading.Thread(target=reader)
    t.start()
    for k in range(2, 5):
        store.publish(f"v{k}", COLS, batches(_rows(f"v{k}", 3_000), size=500))
    stop.set()
    t.join()
    assert not errors, errors[:3]
    assert store.get("C00000")["v"] == "v4"
    assert seen <= {"v1", "v2", "v3", "v4"}


def test_failed_publish_leaves_the_live_version(online_url, tmp_path):
    store = open_online_store(tmp_path / "unused.sqlite", online_url)
    store.publish("good", COLS, [_rows("good", 100)])

    def broken():
        yield _rows("bad", 50)
        raise RuntimeError("source died midway")

    with pytest.raises(RuntimeError, match="midway"):
        store.publish("bad", COLS, broken())
    assert store.live()["version"] == "good"
    assert store.get("C00010")["v"] == "good"


def test_only_live_and_previous_snapshots_are_kept(online_url, tmp_path):
    store = open_online_store(tmp_path / "unused.sqlite", online_url)
    for k in range(4):
        store.publish(f"v{k}", COLS, [_rows(f"v{k}", 10)])
    if isinstance(store, SQLiteOnlineStore):
        names = [r[0] for r in store._con().execute("SELECT name FROM sqlite_master WHERE name LIKE 'snap_%'")]
    else:
        assert isinstance(store, RedisOnlineStore)
        names = list(store.r.scan_iter(match=f"{store.prefix}:snap:*"))
    assert len(names) == 2


def test_unknown_backend_is_a_named_error(tmp_path):
    with pytest.raises(ConfigError, match="unsupported online store 'mongodb://x'"):
        open_online_store(tmp_path / "x.sqlite", "mongodb://x")


def test_unreachable_redis_is_a_named_error(tmp_path):
    with pytest.raises(StoreError, match="cannot reach the online store"):
        open_online_store(tmp_path / "x.sqlite", "redis://127.0.0.1:1/0")


def test_online_features_behind_the_store_are_named():
    from feature_store.materialize import online_behind
    live = {"version": "2026-05-01@v000002"}
    assert online_behind(live, "v000002") is None and online_behind(None, "v000003") is None
    why = online_behind(live, "v000003")
    assert "store version v000002" in why and "at v000003" in why and "nba features materialize" in why
