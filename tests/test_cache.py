"""The response store, against a real diskcache in a temporary directory."""

from __future__ import annotations

import sqlite3
import time

import pytest

from llmbatch.errors import CacheError
from llmbatch.model.stats import Lookups
from llmbatch.store import DEFAULT_SIZE_LIMIT, DiskStore


def entry(n: int = 0) -> dict:
    return {"response": {"choices": [{"message": {"content": f"answer {n}"}}]}, "usage": {"total_tokens": n}}


def test_a_stored_answer_comes_back_equal(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        cache.put("v1:a", entry(1), tag="openai:m")
        assert cache.get("v1:a") == entry(1)
        assert cache.get("v1:missing") is None
        assert cache.get_many(["v1:a", "v1:missing"]) == {"v1:a": entry(1)}


def test_answers_written_together_are_all_stored_or_none_is(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        cache.put_many([("v1:a", entry(1), "openai:m"), ("v1:b", entry(2), "openai:m")])
        assert cache.get_many(["v1:a", "v1:b"]) == {"v1:a": entry(1), "v1:b": entry(2)}
        with pytest.raises(TypeError):
            cache.put_many([("v1:c", entry(3), "openai:m"), ("v1:d", [4], "openai:m")])  # type: ignore[list-item]
        assert cache.get("v1:c") is None  # rolled back with the bad one
        assert cache.stats().entries == 2


def test_the_directory_is_private_to_the_user(tmp_path):
    DiskStore(tmp_path / "c").close()
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o700


def test_anything_but_a_json_object_is_refused_rather_than_pickled(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        for value in ([1, 2], "text", 3, object()):
            with pytest.raises(TypeError):
                cache.put("v1:x", value, tag="t")  # type: ignore[arg-type]
    with sqlite3.connect(tmp_path / "c" / "cache.db") as db:
        assert db.execute("SELECT COUNT(*) FROM Cache").fetchone() == (0,)


def test_a_large_answer_stored_as_a_file_is_json_too(tmp_path):
    big = {"response": {"text": "x" * 100_000}}
    with DiskStore(tmp_path / "c") as cache:
        cache.put("v1:big", big, tag="t")
        assert cache.get("v1:big") == big
    files = [p for p in (tmp_path / "c").rglob("*.val")]
    assert files and files[0].read_bytes().startswith(b'{"response"')


def test_ttl_expires_an_entry(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        cache.put("v1:a", entry(), tag="t", ttl_s=0.05)
        assert cache.get("v1:a") is not None
        time.sleep(0.1)
        assert cache.get("v1:a") is None


def test_the_size_limit_is_explicit_and_survives_reopening_without_the_option(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        assert cache.stats().size_limit == DEFAULT_SIZE_LIMIT  # generous, never diskcache's 1 GB
    with DiskStore(tmp_path / "c", size_limit=50 * 10**9) as cache:
        assert cache.stats().size_limit == 50 * 10**9
    with DiskStore(tmp_path / "c") as cache:  # a later run without the option keeps it
        assert cache.stats().size_limit == 50 * 10**9


def test_the_database_is_read_without_a_memory_map_even_in_a_cache_made_by_diskcache_defaults(tmp_path):
    # Mapped pages count in the run's RSS (up to 64 MB more on a large cache, for no speed).
    import diskcache

    legacy = diskcache.Cache(str(tmp_path / "c"))
    assert legacy._sql("PRAGMA mmap_size").fetchone()[0] > 0  # what diskcache does by default
    legacy.close()
    with DiskStore(tmp_path / "c") as cache:
        assert cache._cache._sql("PRAGMA mmap_size").fetchone()[0] == 0
    reopened = diskcache.Cache(str(tmp_path / "c"))  # the setting is kept with the cache
    assert reopened._sql("PRAGMA mmap_size").fetchone()[0] == 0
    reopened.close()


def test_an_unknown_eviction_policy_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="unknown eviction policy"):
        DiskStore(tmp_path / "c", eviction_policy="random")


def test_stats_count_entries_by_model_and_lifetime_lookups(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        for i in range(3):
            cache.put(f"v1:a{i}", entry(i), tag="openai:a")
        cache.put("v1:b", entry(), tag="anthropic:b")
        cache.record_lookups({"openai:a": Lookups(5, 4)})
        cache.record_lookups({"openai:a": Lookups(1, 0)})
        stats = cache.stats()
    assert stats.entries == 4
    assert stats.by_model == {"openai:a": 3, "anthropic:b": 1}
    assert (stats.hits, stats.misses) == (6, 4)
    assert stats.oldest is not None and stats.newest is not None and stats.oldest <= stats.newest
    assert stats.size_bytes > 0


def test_purge_removes_only_entries_older_than_the_cutoff(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        for i in range(2500):  # more than one delete batch
            cache.put(f"v1:old{i}", entry(i), tag="openai:a" if i % 2 else "openai:b")
        cutoff = time.time()
        time.sleep(0.01)
        cache.put("v1:new", entry(), tag="openai:a")
        later = time.time() + 0.001
        age = later - cutoff
        assert cache.purge(age, dry_run=True, now=later) == 2500
        assert cache.purge(age, tag="openai:a", now=later) == 1250
        assert cache.purge(age, now=later) == 1250
        assert cache.get("v1:new") is not None
        assert cache.stats().entries == 1


def test_purge_also_removes_value_files(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        cache.put("v1:big", {"text": "x" * 100_000}, tag="t")
        assert list((tmp_path / "c").rglob("*.val"))
        assert cache.purge(0.001, now=time.time() + 1) == 1
    assert not list((tmp_path / "c").rglob("*.val"))


def test_opening_without_create_on_a_missing_cache_says_so(tmp_path):
    with pytest.raises(CacheError, match="no cache"):
        DiskStore(tmp_path / "nothing", create=False)


def test_a_pickled_row_is_never_unpickled_and_reads_as_a_miss(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with DiskStore(tmp_path / "c") as cache:
        cache.put("v1:a", entry(), tag="t")
    # Someone (or another tool) writes a pickle into our table, as diskcache's default Disk would.
    with sqlite3.connect(tmp_path / "c" / "cache.db") as db:
        db.execute("UPDATE Cache SET mode = 4, value = ? WHERE key = 'v1:a'", (pickle.dumps(Exploit()),))
    with DiskStore(tmp_path / "c") as cache:
        assert cache.get("v1:a") is None
    assert not marker.exists()


def test_a_corrupt_value_reads_as_a_miss(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        cache.put("v1:a", entry(), tag="t")
    with sqlite3.connect(tmp_path / "c" / "cache.db") as db:
        db.execute("UPDATE Cache SET value = ? WHERE key = 'v1:a'", (b"{not json",))
    with DiskStore(tmp_path / "c") as cache:
        assert cache.get("v1:a") is None
        assert cache.get_many(["v1:a"]) == {}


def test_a_batch_lookup_skips_expired_entries_and_works_under_every_policy(tmp_path):
    for policy in ("least-recently-stored", "least-recently-used", "none"):
        with DiskStore(tmp_path / policy, eviction_policy=policy) as cache:
            cache.put("v1:live", entry(1), tag="t")
            cache.put("v1:brief", entry(2), tag="t", ttl_s=0.01)
            time.sleep(0.05)
            keys = ["v1:live", "v1:brief", "v1:never"] + [f"v1:x{i}" for i in range(1200)]  # several batches
            assert cache.get_many(keys) == {"v1:live": entry(1)}, policy


# --- a cache directory removed while the cache is open ------------------------------------------


def _put_one(cache: DiskStore, key: str, value: dict) -> None:
    cache.put(key, value, tag="t")


def _put_in_a_batch(cache: DiskStore, key: str, value: dict) -> None:
    cache.put_many([(key, value, "t"), (key + "-too", value, "t")])


@pytest.mark.parametrize("write", [_put_one, _put_in_a_batch])
def test_a_cache_directory_removed_between_two_writes_is_recreated_and_the_second_is_kept(tmp_path, write):
    import shutil
    import stat

    directory = tmp_path / "c"
    with DiskStore(directory, size_limit=5 * 10**9, eviction_policy="none") as cache:
        write(cache, "v1:a", entry(1))
        assert not cache.recreated and cache.recreated_at is None
        shutil.rmtree(directory)
        before = time.time()
        write(cache, "v1:b", entry(2))
        assert cache.recreated and cache.recreated_at is not None and cache.recreated_at >= before
        assert cache.get("v1:b") == entry(2)
        write(cache, "v1:c", entry(3))  # the new cache is the one in use now: no second reopening
        recreated_at = cache.recreated_at
        cache.record_lookups({"openai:a": Lookups(2, 1)})
        assert cache.recreated_at == recreated_at
    with DiskStore(directory) as fresh:
        assert fresh.get("v1:a") is None  # gone with the directory
        assert fresh.get_many(["v1:b", "v1:c"]) == {"v1:b": entry(2), "v1:c": entry(3)}
        stats = fresh.stats()
        # Recreated with the settings it had, not diskcache's (or our) defaults.
        assert (stats.size_limit, stats.eviction_policy) == (5 * 10**9, "none")
        assert (stats.hits, stats.misses) == (2, 1)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "cache.db").stat().st_mode) == 0o600


def test_lifetime_lookups_after_the_directory_was_removed_go_to_the_new_cache(tmp_path):
    import shutil

    directory = tmp_path / "c"
    with DiskStore(directory) as cache:
        shutil.rmtree(directory)
        cache.record_lookups({"openai:a": Lookups(3, 4)})
        assert cache.recreated
    with DiskStore(directory) as fresh:
        assert (fresh.stats().hits, fresh.stats().misses) == (3, 4)


def test_a_cache_replaced_by_another_process_s_is_written_to_and_left_whole(tmp_path):
    import shutil

    directory = tmp_path / "c"
    with DiskStore(directory) as cache:
        cache.put("v1:a", entry(1), tag="t")
        shutil.rmtree(directory)
        with DiskStore(directory) as other:  # another run sharing the directory got there first
            other.put("v1:theirs", entry(9), tag="t")
            cache.put("v1:b", entry(2), tag="t")
            assert cache.recreated
            other.put("v1:theirs-too", entry(8), tag="t")  # its -wal was not removed under it
    with DiskStore(directory) as fresh:
        assert fresh.get_many(["v1:theirs", "v1:b", "v1:theirs-too"]) == {
            "v1:theirs": entry(9),
            "v1:b": entry(2),
            "v1:theirs-too": entry(8),
        }


def test_a_removed_directory_that_comes_back_open_to_others_is_refused_not_written(tmp_path):
    import shutil

    directory = tmp_path / "c"
    with DiskStore(directory) as cache:
        cache.put("v1:a", entry(1), tag="t")
        shutil.rmtree(directory)
        directory.mkdir()
        directory.chmod(0o777)
        with pytest.raises(CacheError, match="writable by other users"):
            cache.put("v1:b", entry(2), tag="t")
        assert not cache.recreated
        assert cache.get("v1:a") == entry(1)  # reads stay on the database that was checked
        assert not (directory / "cache.db").exists()


def test_a_write_with_the_directory_in_place_costs_one_stat_and_no_reopening(tmp_path, monkeypatch):
    import os

    with DiskStore(tmp_path / "c") as cache:
        opened = cache._cache
        calls = []
        real_stat = os.stat
        monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a) or real_stat(*a, **k))
        cache.put("v1:a", entry(1), tag="t")
        cache.put_many([("v1:b", entry(2), "t"), ("v1:c", entry(3), "t")])
        monkeypatch.undo()
        assert len(calls) == 2 and cache._cache is opened and not cache.recreated


# --- clear and purge by model ---------------------------------------------------------------------


def test_clear_removes_every_entry_and_value_file_and_keeps_the_settings(tmp_path):
    with DiskStore(tmp_path / "c", size_limit=5 * 10**9) as cache:
        for i in range(5):
            cache.put(f"v1:{i}", entry(i), tag="openai:a")
        cache.put("v1:big", {"text": "x" * 100_000}, tag="t")
        cache.record_lookups({"openai:a": Lookups(1, 6)})
        assert cache.count() == 6
        assert cache.clear() == 6
        assert cache.count() == 0 and cache.get("v1:0") is None
    assert not list((tmp_path / "c").rglob("*.val"))
    with DiskStore(tmp_path / "c") as cache:
        stats = cache.stats()
    assert (stats.entries, stats.size_limit, stats.hits, stats.misses) == (0, 5 * 10**9, 1, 6)


def test_purge_of_a_model_without_an_age_removes_all_of_its_entries(tmp_path):
    with DiskStore(tmp_path / "c") as cache:
        for i in range(1500):  # more than one delete batch
            cache.put(f"v1:{i}", entry(i), tag="openai:a" if i % 3 else "openai:b")
        assert cache.purge(None, tag="openai:b", dry_run=True) == 500
        assert cache.purge(None, tag="openai:b") == 500
        assert cache.stats().by_model == {"openai:a": 1000}
        with pytest.raises(ValueError, match="clear"):
            cache.purge(None)
