"""The Redis store against a real redis-server: the same entries as the disk store, Redis's own
expiry, leases between runs, and a password that never shows."""

from __future__ import annotations

import time

import pytest
import redis

from llmbatch.errors import CacheError
from llmbatch.store import DiskStore
from llmbatch.store.redis import RedisStore
from tests.redis_server import RedisServer
from tests.test_store_admin import entry


def test_an_entry_written_through_either_store_reads_back_identically_through_the_other(redis_server, tmp_path):
    key, made = entry("q", time.time())
    other_key, other = entry("other", time.time())
    with DiskStore(tmp_path / "cache") as disk, RedisStore(redis_server.url) as shared:
        disk.put(key, made, tag="openai:gpt-4o-mini")
        shared.put(other_key, other, tag="openai:gpt-4o-mini")
        shared.load(disk.entries())
        disk.load(shared.entries())
        assert shared.get(key) == disk.get(key) == made
        assert disk.get(other_key) == shared.get(other_key) == other
        assert shared.stats().by_model == {"openai:gpt-4o-mini": 2}


def test_ttl_is_redis_expiry_and_stats_forget_what_expired(redis_server):
    key, made = entry("q", time.time())
    with RedisStore(redis_server.url) as shared:
        shared.put(key, made, tag="t", ttl_s=0.3)
        assert shared.get(key) == made
        (item,) = shared.entries()
        assert item.expires_at is not None and item.expires_at > time.time()
        time.sleep(0.45)
        assert shared.get(key) is None
        assert shared.stats().entries == 0 and list(shared.entries()) == []


def test_a_leased_key_is_called_by_one_run_until_released_or_its_holder_stops_renewing(redis_server):
    with RedisStore(redis_server.url) as a, RedisStore(redis_server.url) as b:
        assert a.lease(["k1", "k2"], "host:1:a", ttl_s=60) == {"k1", "k2"}
        assert b.lease(["k1", "k2", "k3"], "host:2:b", ttl_s=60) == {"k3"}
        assert a.lease(["k1"], "host:1:a", ttl_s=60) == {"k1"}  # held already: still ours
        assert a.lease_owners() == {"host:1:a", "host:2:b"}
        a.release(["k1"], "host:1:a")
        b.release(["k2"], "host:2:b")  # not b's: nothing happens
        assert b.lease(["k1", "k2"], "host:2:b", ttl_s=60) == {"k1"}
        a.release_all("host:1:a")
        assert b.lease(["k2"], "host:2:b", ttl_s=60) == {"k2"}
        assert a.lease_owners() == {"host:2:b"}
        # A holder that stops renewing loses its keys when the lease runs out; one that renews keeps them.
        assert a.lease(["k9"], "host:1:a", ttl_s=0.2) == {"k9"}
        assert b.lease(["k8"], "host:2:b", ttl_s=0.2) == {"k8"}
        time.sleep(0.1)
        b.renew("host:2:b", ttl_s=60)
        time.sleep(0.2)
        assert b.lease(["k9"], "host:2:b", ttl_s=60) == {"k9"}
        assert a.lease(["k8"], "host:1:a", ttl_s=60) == set()


def test_an_evicted_value_is_a_miss_and_verify_can_drop_its_index(redis_server):
    key, made = entry("q", time.time())
    with RedisStore(redis_server.url) as shared:
        shared.put(key, made, tag="t")
        redis.Redis(unix_socket_path=str(redis_server.socket)).delete(f"llmbatch:e:{key}")  # as maxmemory would
        assert shared.get(key) is None
        assert list(shared.entries()) == []
        (gone,) = shared.entries(broken=True)
        assert gone.key == key and gone.entry is None and "evicted" in (gone.problem or "")
        assert shared.remove([key]) == 1
        assert shared.stats().entries == 0
        assert shared.stats().details["maxmemory_policy"] == "noeviction"


def test_namespaces_keep_two_teams_apart_on_one_server(redis_server):
    key, made = entry("q", time.time())
    with RedisStore(redis_server.url, namespace="team-a:") as a, RedisStore(redis_server.url, namespace="team-b:") as b:
        a.put(key, made, tag="t")
        assert b.get(key) is None and b.stats().entries == 0
        assert b.clear() == 0 and a.get(key) == made
        assert a.clear() == 1 and a.get(key) is None


def test_an_unreachable_server_is_one_clear_error_without_the_password():
    with pytest.raises(CacheError) as caught:
        RedisStore("redis://:s3cret-pw@127.0.0.1:1/0", timeout_s=1)
    message = str(caught.value)
    assert "cannot reach the cache at redis://:***@127.0.0.1:1/0" in message
    assert "s3cret-pw" not in message


def test_a_wrong_password_is_refused_without_showing_either_password(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), password="right-pw-1")
    server.start()
    try:
        with RedisStore(server.url) as ok:
            assert ok.stats().entries == 0
        with pytest.raises(CacheError) as caught:
            RedisStore(f"unix://:wrong-pw-2@{server.socket}")
        message = str(caught.value)
        assert "refused the credentials" in message or "cannot reach" in message
        assert "wrong-pw-2" not in message and "right-pw-1" not in message
    finally:
        server.stop()


def test_an_option_redis_py_does_not_take_is_a_clear_error_without_the_password():
    with pytest.raises(CacheError, match="an option redis-py does not take") as caught:
        RedisStore("redis://:pw-secret-1@127.0.0.1:1/0?foo=bar")
    assert "pw-secret-1" not in str(caught.value)


def test_a_url_that_is_not_redis_is_refused():
    with pytest.raises(CacheError, match="use a redis://, rediss:// or unix:// URL"):
        RedisStore("http://example.com")
