"""The store's admin side, the same on disk and in memory: what export walks, what import files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmbatch.keys import key_from_material
from llmbatch.model.entry import CacheEntry, make_entry
from llmbatch.store import DiskStore, MemoryStore, ResponseStore, Stored

NOW = 1_800_000_000.0


def entry(text: str, stored_at: float, answer: str = "yes") -> tuple[str, CacheEntry]:
    material = {
        "provider": "openai",
        "endpoint": None,
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "params": {},
        "extra": {},
        "sample": 0,
    }
    key = key_from_material(material)
    response: dict[str, Any] = {"choices": [{"message": {"content": answer}, "finish_reason": "stop"}]}
    made = make_entry(
        key=key, request=material, response=response, stored_at=stored_at, usage=None, latency_ms=1.0, cost_usd=0.01
    )
    return key, made


@pytest.fixture(params=["disk", "memory", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResponseStore]:
    if request.param == "disk":
        with DiskStore(tmp_path / "cache") as disk:
            yield disk
    elif request.param == "redis":
        from llmbatch.store.redis import RedisStore

        server = request.getfixturevalue("redis_server")
        with RedisStore(server.url, clock=lambda: NOW) as shared:
            yield shared
    else:
        yield MemoryStore(clock=lambda: NOW)


def test_loaded_entries_keep_their_age_so_purge_by_age_still_means_what_it_meant(store: ResponseStore) -> None:
    old_key, old = entry("old", NOW - 40 * 86400)
    new_key, new = entry("new", NOW - 86400)
    loaded = store.load(
        [
            Stored(old_key, old, "openai:gpt-4o-mini", old["stored_at"]),
            Stored(new_key, new, "openai:gpt-4o-mini", new["stored_at"]),
        ]
    )
    assert (loaded.added, loaded.replaced, loaded.kept) == (2, 0, 0)
    assert [item.stored_at for item in store.entries()] == [old["stored_at"], new["stored_at"]]
    assert store.purge(30 * 86400, now=NOW) == 1
    assert store.get(old_key) is None and store.get(new_key) == new


def test_load_keeps_the_newer_answer_of_two_under_one_key(store: ResponseStore) -> None:
    key, older = entry("q", NOW - 100, answer="older")
    _, newer = entry("q", NOW - 10, answer="newer")
    store.load([Stored(key, newer, "t", newer["stored_at"])])
    loaded = store.load([Stored(key, older, "t", older["stored_at"])])
    assert (loaded.added, loaded.replaced, loaded.kept) == (0, 0, 1)
    assert store.get(key) == newer
    _, newest = entry("q", NOW - 1, answer="newest")
    loaded = store.load([Stored(key, newest, "t", newest["stored_at"])])
    assert (loaded.added, loaded.replaced, loaded.kept) == (0, 1, 0)
    assert store.get(key) == newest


def test_entries_filter_by_tag_and_age_and_remove_takes_entries_out(store: ResponseStore) -> None:
    items = []
    for n in range(5):
        key, made = entry(f"p{n}", NOW - 1000 + n * 100)
        items.append(Stored(key, made, "a:x" if n % 2 else "b:y", made["stored_at"]))
    store.load(items)
    assert [i.key for i in store.entries(tag="a:x")] == [items[1].key, items[3].key]
    window = store.entries(stored_after=items[0].stored_at, stored_before=items[4].stored_at)
    assert [i.key for i in window] == [i.key for i in items[1:4]]
    assert store.remove([items[0].key, "v1:nothing-here"]) == 1
    assert len(list(store.entries())) == 4


def test_a_corrupted_row_is_left_out_of_entries_but_shown_to_a_scan_for_broken_ones(tmp_path: Path) -> None:
    key, made = entry("q", NOW)
    with DiskStore(tmp_path / "cache") as disk:
        disk.load([Stored(key, made, "t", NOW)])
    with sqlite3.connect(tmp_path / "cache" / "cache.db") as db:
        db.execute("UPDATE Cache SET value = ? WHERE key = ?", (b'{"v": 3, "respon', key))
    with DiskStore(tmp_path / "cache") as disk:
        assert list(disk.entries()) == []
        (broken,) = disk.entries(broken=True)
        assert broken.key == key and broken.entry is None and broken.problem
        assert disk.remove([key]) == 1
        assert list(disk.entries(broken=True)) == []
