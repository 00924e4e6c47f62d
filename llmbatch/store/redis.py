"""The Redis store: one cache shared by many machines (``--cache redis://host:6379/0``).

The same :class:`~llmbatch.store.base.ResponseStore` as the disk store: the same keys and the same
versioned JSON entries, so an entry written through one reads back identically through the other
(and ``cache export | cache import`` moves them between the two). This is the only module that
imports redis-py.

Layout, under a namespace (a key prefix, ``llmbatch:`` by default, so that teams can share a
server; it is not a security boundary: whoever can read the server can read every answer)::

    {ns}e:{key}       the entry's JSON (a string), with Redis's own expiry when --ttl is given
    {ns}idx           sorted set: key -> stored_at (what purge, stats and export go by)
    {ns}t:{tag}       sorted set per provider:model: key -> stored_at
    {ns}tags          set of the tags in use
    {ns}tagof         hash: key -> tag (to unindex a key)
    {ns}cost          hash: key -> what the answer cost (the stored value in stats)
    {ns}exp           sorted set: key -> expires_at, to unindex what Redis has expired
    {ns}lookups       hash: lifetime hits, misses and dollars saved
    {ns}lease:{key}   who is calling this key now (an owner token, with an expiry)
    {ns}owners        set of lease owners (a run on this machine takes a dead one's keys at once)

Every write of an entry and its index is one MULTI/EXEC transaction, so the indexes never name a
value that was not written. They can name one that is gone: Redis evicts under its maxmemory
policy, and then a lookup is a miss (never a wrong answer), ``cache stats`` shows the policy, and
``cache verify --repair`` drops the stale index entries.

The port is synchronous and batch-shaped: a lookup of a window of keys is one MGET, a batch of
answers one transaction. The event loop is held for one round trip per batch, which on a LAN is
well under the time the disk store takes for the same batch. Leases are taken with ``SET NX PX``
and renewed and released with redis-py's own lock scripts (compare the owner, then act), in
pipelines. Redis Cluster is not supported (a transaction spans keys in different slots).

Which ``.partial`` files are this cache's runs' is a fact about this machine, so it is kept in the
local disk store (``--cache-dir``), opened the first time a run needs it.

:class:`RedisLimitState` is the other thing kept on the server: the rate limits' state, so that every
run spending one budget (an API key at an endpoint, or a ``--rate-group``) keeps one pace and one
pause. It lives here because this is redis-py's one home; what it implements is
:class:`llmbatch.limits.state.LimitState`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import redis
from pyrate_limiter import InMemoryStateStore, StateStore
from pyrate_limiter.buckets.redis_state import RedisStateStore
from redis.lock import Lock

from llmbatch.errors import CacheError
from llmbatch.model.entry import CacheEntry, servable
from llmbatch.model.stats import Lookups
from llmbatch.store.base import DEFAULT_NAMESPACE, GONE, Loaded, Stored, StoreStats
from llmbatch.urls import REDIS, checked_url, redact_url

if TYPE_CHECKING:
    from llmbatch.store.base import ResponseStore

__all__ = ["RedisLimitState", "RedisStore", "redact_url"]

_PAGE = 1000
_DB_PATH = re.compile(r"/?|/[0-9]+")


class RedisStore:
    """A store on a Redis server. ``local``: opens the disk store of this machine (``.partial``
    records), when a run first needs it (``cache stats`` never does, and makes no directory)."""

    def __init__(
        self,
        url: str,
        *,
        local: Callable[[], ResponseStore] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
    ) -> None:
        checked_url(url, what="--cache", schemes=REDIS, error=CacheError)
        if not _NAMESPACE.fullmatch(namespace):
            raise CacheError(
                f"--cache-namespace {namespace!r}: use letters, digits, '.', '_' or '-', ending in ':' "
                "(one namespace must never be the start of another's keys)"
            )
        if url.startswith(("redis://", "rediss://")) and not _DB_PATH.fullmatch(urlsplit(url).path):
            # redis-py reads a path it cannot parse as no database at all, so /abc would quietly be db 0.
            raise CacheError(
                f"--cache {redact_url(url)}: the path must be a database number, as in redis://host:6379/0"
            )
        self.url = url
        self.namespace = namespace
        self.location = f"{redact_url(url)} (namespace {namespace})"
        self.recreated = False
        self.clock = clock
        self._open_local = local
        self._local: ResponseStore | None = None
        self._secrets = _passwords(url)
        try:
            # Typed Any: redis-py types every reply as the union of what each decoding mode could
            # give; with decode_responses=False they are bytes, floats and lists of them.
            self._redis: Any = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=False
            )
        except ValueError as exc:
            raise CacheError(f"--cache {redact_url(url)}: {self._clean(exc)}") from None
        self._extend = self._redis.register_script(Lock.LUA_EXTEND_SCRIPT)
        self._release = self._redis.register_script(Lock.LUA_RELEASE_SCRIPT)
        self._partials: dict[tuple[int, int], str] = {}
        with self._talking("reach"):
            try:
                self._redis.ping()
            except TypeError as exc:  # redis-py hands unknown ?options to the connection, which refuses them
                raise CacheError(
                    f"--cache {redact_url(url)}: an option redis-py does not take: {self._clean(exc)}"
                ) from None

    # -- names and errors --

    def _k(self, *parts: str) -> str:
        return self.namespace + ":".join(parts)

    def _clean(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        """Turn the server's failures into a :class:`CacheError` for people, without the password."""
        try:
            yield
        except redis.AuthenticationError as exc:
            raise CacheError(f"the cache at {self.location} refused the credentials: {self._clean(exc)}") from None
        except redis.RedisError as exc:
            raise CacheError(f"cannot {doing} the cache at {self.location}: {self._clean(exc)}") from None

    # -- the run's side --

    def get(self, key: str) -> CacheEntry | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        keys = list(keys)
        if not keys:
            return {}
        with self._talking("read"):
            values = self._redis.mget([self._k("e", key) for key in keys])
        found: dict[str, CacheEntry] = {}
        for key, value in zip(keys, values, strict=True):
            entry = _decode(value)
            if entry is not None and servable(key, entry):
                found[key] = entry
        return found

    def put(self, key: str, entry: CacheEntry, *, tag: str, ttl_s: float | None = None) -> None:
        self.put_many([(key, entry, tag)], ttl_s=ttl_s)

    def put_many(self, items: list[tuple[str, CacheEntry, str]], *, ttl_s: float | None = None) -> None:
        """Store every item and its index entries in one transaction: all of them, or none."""
        now = self.clock()
        expires = now + ttl_s if ttl_s is not None else None
        self._write([Stored(key, entry, tag, now, expires) for key, entry, tag in items])

    def _write(self, items: list[Stored]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        for item in items:
            data = orjson.dumps(item.entry)
            tag = item.tag or "(untagged)"
            if item.expires_at is not None:
                pipe.set(self._k("e", item.key), data, pxat=int(item.expires_at * 1000))
                pipe.zadd(self._k("exp"), {item.key: item.expires_at})
            else:
                pipe.set(self._k("e", item.key), data)
                pipe.zrem(self._k("exp"), item.key)
            pipe.zadd(self._k("idx"), {item.key: item.stored_at})
            pipe.zadd(self._k("t", tag), {item.key: item.stored_at})
            pipe.sadd(self._k("tags"), tag)
            pipe.hset(self._k("tagof"), item.key, tag)
            cost = item.entry.get("cost_usd") if item.entry is not None else None
            if cost:
                pipe.hset(self._k("cost"), item.key, repr(float(cost)))
        with self._talking("write to"):
            pipe.execute()

    def record_lookups(self, lookups: Mapping[str, Lookups]) -> None:
        """Add a run's lookups per ``provider:model`` (a hash per tag) and in total, in one transaction."""
        lookups = {tag: n for tag, n in lookups.items() if n.hits or n.misses}
        if not lookups:
            return
        pipe = self._redis.pipeline(transaction=True)
        for name, n in [
            (self._k("lookups"), _sum(lookups.values())),
            *((self._k("lookups", t), n) for t, n in lookups.items()),
        ]:
            pipe.hincrby(name, "hits", n.hits)
            pipe.hincrby(name, "misses", n.misses)
            if n.saved_usd:
                pipe.hincrbyfloat(name, "saved_usd", n.saved_usd)
        pipe.sadd(self._k("lookup-tags"), *lookups)
        with self._talking("write to"):
            pipe.execute()

    def close(self) -> None:
        self._redis.close()
        if self._local is not None:
            self._local.close()

    # -- runs sharing it --

    def lease(self, keys: Iterable[str], owner: str, *, ttl_s: float, now: float | None = None) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()
        ttl_ms = max(1, int(ttl_s * 1000))
        pipe = self._redis.pipeline(transaction=False)
        pipe.sadd(self._k("owners"), owner)
        for key in keys:
            pipe.set(self._k("lease", key), owner, nx=True, px=ttl_ms)
        with self._talking("lease keys in"):
            taken = pipe.execute()[1:]
            # A key not taken may be ours already (taken earlier by this run): then it is held, renewed.
            again = [key for key, ok in zip(keys, taken, strict=True) if not ok]
            holders = self._redis.mget([self._k("lease", key) for key in again]) if again else []
        held = {key for key, ok in zip(keys, taken, strict=True) if ok}
        mine = [key for key, holder in zip(again, holders, strict=True) if holder == owner.encode()]
        if held:
            # What this owner holds, so that renewing and releasing never scan the server's keys.
            # The set outlives its leases by a little; a dead owner's is found by lease_owners.
            with self._talking("lease keys in"):
                self._redis.pipeline(transaction=False).sadd(self._k("owned", owner), *held).pexpire(
                    self._k("owned", owner), 2 * ttl_ms
                ).execute()
        if mine:
            self._renew_keys(mine, owner, ttl_ms)
        return held | set(mine)

    def _renew_keys(self, keys: list[str], owner: str, ttl_ms: int) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            self._extend(keys=[self._k("lease", key)], args=[owner, ttl_ms, "1"], client=pipe)
        pipe.pexpire(self._k("owned", owner), 2 * ttl_ms)
        with self._talking("renew leases in"):
            pipe.execute()

    def renew(self, owner: str, *, ttl_s: float, now: float | None = None) -> None:
        keys = self._owned(owner)
        if keys:
            self._renew_keys(keys, owner, max(1, int(ttl_s * 1000)))

    def _owned(self, owner: str) -> list[str]:
        with self._talking("read leases in"):
            return sorted(key.decode() for key in self._redis.smembers(self._k("owned", owner)))

    def release(self, keys: Iterable[str], owner: str) -> None:
        keys = list(keys)
        if not keys:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            # redis-py's own compare-and-delete: a lease that ran out and was taken by another
            # run is left to it.
            self._release(keys=[self._k("lease", key)], args=[owner], client=pipe)
        pipe.srem(self._k("owned", owner), *keys)
        with self._talking("release leases in"):
            pipe.execute()

    def release_all(self, owner: str) -> None:
        self.release(self._owned(owner), owner)
        with self._talking("release leases in"):
            self._redis.srem(self._k("owners"), owner)

    def lease_owners(self) -> set[str]:
        with self._talking("read leases in"):
            return {owner.decode() for owner in self._redis.smembers(self._k("owners"))}

    # .partial files are on this machine: their records live in its disk store.
    def _here(self) -> ResponseStore | None:
        if self._local is None and self._open_local is not None:
            self._local = self._open_local()
        return self._local

    def note_partial(self, identity: tuple[int, int], token: str) -> None:
        local = self._here()
        if local is not None:
            local.note_partial(identity, token)
        else:
            self._partials[identity] = token

    def knows_partial(self, identity: tuple[int, int], token: str) -> bool:
        local = self._here()
        return local.knows_partial(identity, token) if local is not None else self._partials.get(identity) == token

    def forget_partial(self, identity: tuple[int, int]) -> None:
        local = self._here()
        if local is not None:
            local.forget_partial(identity)
        else:
            self._partials.pop(identity, None)

    # -- the admin side --

    def _sweep(self) -> None:
        """Unindex what Redis has expired (its values are gone already)."""
        now = self.clock()
        with self._talking("read"):
            while True:
                gone = [k.decode() for k in self._redis.zrangebyscore(self._k("exp"), "-inf", now, start=0, num=_PAGE)]
                if not gone:
                    return
                self._unindex(gone)

    def _unindex(self, keys: list[str], *, values: bool = False) -> None:
        """Take ``keys`` out of every index (and their values, if ``values``)."""
        with self._talking("write to"):
            tags = self._redis.hmget(self._k("tagof"), keys)
            pipe = self._redis.pipeline(transaction=True)
            if values:
                pipe.unlink(*[self._k("e", key) for key in keys])
            pipe.zrem(self._k("idx"), *keys)
            for key, tag in zip(keys, tags, strict=True):
                if tag is not None:
                    pipe.zrem(self._k("t", tag.decode()), key)
            pipe.hdel(self._k("tagof"), *keys)
            pipe.hdel(self._k("cost"), *keys)
            pipe.zrem(self._k("exp"), *keys)
            pipe.execute()

    def stats(self) -> StoreStats:
        self._sweep()
        with self._talking("read"):
            count = int(self._redis.zcard(self._k("idx")))
            oldest = self._redis.zrange(self._k("idx"), 0, 0, withscores=True)
            newest = self._redis.zrange(self._k("idx"), -1, -1, withscores=True)
            by_model = {}
            for tag in sorted(self._redis.smembers(self._k("tags"))):
                n = int(self._redis.zcard(self._k("t", tag.decode())))
                if n:
                    by_model[tag.decode()] = n
            lookups = self._redis.hgetall(self._k("lookups"))
            by_tag = {}
            for tag in sorted(self._redis.smembers(self._k("lookup-tags"))):
                counted = self._redis.hgetall(self._k("lookups", tag.decode()))
                by_tag[tag.decode()] = Lookups(
                    int(_number(counted.get(b"hits"))),
                    int(_number(counted.get(b"misses"))),
                    _number(counted.get(b"saved_usd")),
                )
            stored_value = sum(_number(v) for v in self._redis.hvals(self._k("cost")))
            memory = self._redis.info("memory")
            try:
                policy = str(self._redis.config_get("maxmemory-policy").get("maxmemory-policy", "unknown"))
            except redis.ResponseError:  # CONFIG is disabled on many managed servers
                policy = str(memory.get("maxmemory_policy", "unknown"))
        return StoreStats(
            location=self.location,
            entries=count,
            size_bytes=int(memory.get("used_memory", 0)),
            oldest=_moment(oldest),
            newest=_moment(newest),
            by_model=dict(sorted(by_model.items(), key=lambda item: -item[1])),
            hits=int(_number(lookups.get(b"hits"))),
            misses=int(_number(lookups.get(b"misses"))),
            saved_usd=_number(lookups.get(b"saved_usd")),
            stored_value_usd=stored_value,
            lookups_by_model=by_tag,
            details={
                "namespace": self.namespace,
                "maxmemory_policy": policy,
                "maxmemory": int(memory.get("maxmemory", 0)),
            },
        )

    def count(self) -> int:
        with self._talking("read"):
            return int(self._redis.zcard(self._k("idx")))

    def purge(
        self, older_than_s: float | None, *, tag: str | None = None, dry_run: bool = False, now: float | None = None
    ) -> int:
        """As the disk store's: from the index, never reading a value."""
        if older_than_s is None and tag is None:
            raise ValueError("purge needs older_than_s or tag; clear() removes every entry")
        self._sweep()
        index = self._k("t", tag) if tag is not None else self._k("idx")
        cutoff: Any = "+inf"
        if older_than_s is not None:
            cutoff = f"({(self.clock() if now is None else now) - older_than_s!r}"  # ( : strictly before
        if dry_run:
            with self._talking("read"):
                return int(self._redis.zcount(index, "-inf", cutoff))
        removed = 0
        while True:
            with self._talking("read"):
                keys = [k.decode() for k in self._redis.zrangebyscore(index, "-inf", cutoff, start=0, num=_PAGE)]
            if not keys:
                return removed
            self._unindex(keys, values=True)
            removed += len(keys)

    def clear(self) -> int:
        """Remove every entry of this namespace and its indexes; lifetime counters, leases and the
        rate limits' state stay."""
        count = self.count()
        with self._talking("clear"):
            batch: list[bytes] = []
            for name in self._redis.scan_iter(match=_glob(self._k("e", "")) + "*", count=_PAGE):
                batch.append(name)
                if len(batch) >= _PAGE:
                    self._redis.unlink(*batch)
                    batch = []
            tags = [self._k("t", tag.decode()) for tag in self._redis.smembers(self._k("tags"))]
            self._redis.unlink(*batch, *tags, *(self._k(name) for name in ("idx", "tags", "tagof", "cost", "exp")))
        self._partials.clear()
        return count

    def entries(
        self,
        *,
        tag: str | None = None,
        stored_before: float | None = None,
        stored_after: float | None = None,
        broken: bool = False,
        key_prefix: str | None = None,
    ) -> Iterator[Stored]:
        """Oldest first, a page at a time, from the index. ``key_prefix`` (``cache show``) looks the
        keys up by name instead: a scan of the server's key names, for a handful of entries."""
        if not broken:
            self._sweep()
        if key_prefix is not None:
            yield from self._by_prefix(key_prefix, tag, stored_before, stored_after, broken)
            return
        index = self._k("t", tag) if tag is not None else self._k("idx")
        low: Any = f"({stored_after!r}" if stored_after is not None else "-inf"
        high: Any = f"({stored_before!r}" if stored_before is not None else "+inf"
        offset = 0
        while True:
            with self._talking("read"):
                page = self._redis.zrangebyscore(index, low, high, start=offset, num=_PAGE)
            if not page:
                return
            offset += len(page)
            yield from self._items([key.decode() for key in page], broken)

    def _by_prefix(
        self, prefix: str, tag: str | None, before: float | None, after: float | None, broken: bool
    ) -> Iterator[Stored]:
        start = len(self._k("e", ""))
        with self._talking("read"):
            keys = sorted(
                name.decode()[start:]
                for name in self._redis.scan_iter(match=_glob(self._k("e", prefix)) + "*", count=_PAGE)
            )
        for at in range(0, len(keys), _PAGE):
            for item in self._items(keys[at : at + _PAGE], broken):
                if (
                    (tag is None or item.tag == tag)
                    and (before is None or item.stored_at < before)
                    and (after is None or item.stored_at > after)
                ):
                    yield item

    def _items(self, keys: list[str], broken: bool) -> list[Stored]:
        """The entries under ``keys`` with their index data; unreadable ones only if ``broken``."""
        with self._talking("read"):
            values = self._redis.mget([self._k("e", key) for key in keys])
            tags = self._redis.hmget(self._k("tagof"), keys)
            expiries = self._redis.zmscore(self._k("exp"), keys)
            stamps = self._redis.zmscore(self._k("idx"), keys)
        found = []
        for key, value, tag, expires, stored_at in zip(keys, values, tags, expiries, stamps, strict=True):
            tag_text = tag.decode() if tag is not None else None
            entry = _decode(value)
            if entry is None:
                if broken:
                    problem = GONE if value is None else "not a JSON object"
                    found.append(Stored(key, None, tag_text, stored_at or 0.0, expires, problem=problem))
                continue
            found.append(Stored(key, entry, tag_text, stored_at if stored_at is not None else 0.0, expires))
        return found

    def load(self, items: Iterable[Stored]) -> Loaded:
        loaded = Loaded()
        batch: list[Stored] = []
        for item in items:
            batch.append(item)
            if len(batch) >= _PAGE:
                self._load_batch(batch, loaded)
                batch = []
        if batch:
            self._load_batch(batch, loaded)
        return loaded

    def _load_batch(self, batch: list[Stored], loaded: Loaded) -> None:
        with self._talking("read"):
            scores = self._redis.zmscore(self._k("idx"), [item.key for item in batch])
        held = {item.key: score for item, score in zip(batch, scores, strict=True) if score is not None}
        newer: dict[str, Stored] = {}
        for item in batch:
            if item.key in held and held[item.key] >= item.stored_at:
                loaded.kept += 1
                continue
            if item.key in held:
                loaded.replaced += 1
            else:
                loaded.added += 1
            held[item.key] = item.stored_at
            newer[item.key] = item
        if newer:
            self._write(list(newer.values()))

    def remove(self, keys: Iterable[str]) -> int:
        """Take out the entries under ``keys``, value and index (an evicted one's index too); how many."""
        keys = list(keys)
        removed = 0
        for at in range(0, len(keys), _PAGE):
            chunk = keys[at : at + _PAGE]
            with self._talking("read"):
                pipe = self._redis.pipeline(transaction=False)
                for key in chunk:
                    pipe.exists(self._k("e", key))
                pipe.zmscore(self._k("idx"), chunk)
                *values, scores = pipe.execute()
            removed += sum(bool(value) or score is not None for value, score in zip(values, scores, strict=True))
            self._unindex(chunk, values=True)
        return removed

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _number(value: bytes | None) -> float:
    """A counter read back from the server; 0 for one that is missing or was damaged by hand."""
    try:
        number = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _moment(found: list[tuple[bytes, float]]) -> float | None:
    """The score of a one-item ZRANGE WITHSCORES as a time, if it is one."""
    return found[0][1] if found and math.isfinite(found[0][1]) else None


def _sum(counts: Iterable[Lookups]) -> Lookups:
    total = Lookups()
    for n in counts:
        total.add(n)
    return total


def _decode(value: bytes | None) -> CacheEntry | None:
    if value is None:
        return None
    try:
        entry = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None  # type: ignore[return-value]


#: A namespace is a name and one colon, so that no namespace's keys begin with another's.
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]+:")


def _passwords(url: str) -> list[str]:
    """The passwords in ``url`` (address and query), to keep out of every message."""
    found: list[str] = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        found += [
            value
            for name, _, value in (i.partition("=") for i in parts.query.split("&"))
            if name.lower() == "password" and value
        ]
    return found


def _glob(text: str) -> str:
    """``text`` as a literal in a SCAN pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class RedisLimitState:
    """Each budget's pace (pyrate-limiter's GCRA in its Redis state store, atomic in Lua) and its
    run-wide pause (a sorted set, raised with ZADD GT so a later pause in force stands), shared by
    every run on this server whose calls spend the same budget.

    ``group(budget)`` names whose limits a ``provider:model`` budget spends (a fingerprint of the API
    key and endpoint, or ``--rate-group``). Times are on the server's clock: the offset of this
    machine's clock from the server's is measured at the start (the best of a few round trips, so
    it is off by at most half the fastest one) and added to ``time.time()``. If the server goes away
    mid-run, each budget goes on pacing in this process (the run is stopping anyway: its next
    write to the cache fails).
    """

    shared = True

    def __init__(self, url: str, *, namespace: str, group: Callable[[str], str], timeout_s: float = 5.0) -> None:
        self._store = RedisStore(url, namespace=namespace, timeout_s=timeout_s)
        self._redis = self._store._redis
        self._group = group
        self._local_pauses: dict[str, float] = {}
        self._offset = self._measure_offset()

    def _k(self, *parts: str) -> str:
        return self._store._k(*parts)

    def _measure_offset(self) -> float:
        best: tuple[float, float] | None = None
        with self._store._talking("read the clock of"):
            for _ in range(5):
                sent = time.time()
                seconds, micros = self._redis.time()
                back = time.time()
                trip = back - sent
                if best is None or trip < best[0]:
                    best = (trip, seconds + micros / 1e6 - (sent + back) / 2)
        assert best is not None
        return best[1]

    def clock(self) -> float:
        return time.time() + self._offset

    def bucket_store(self, budget: str, kind: str) -> StateStore:
        shared = RedisStateStore(self._redis, key=self._k("rate", self._group(budget), budget, kind))
        return _Fallback(shared, InMemoryStateStore())

    def paused_until(self, budget: str) -> float:
        try:
            until = self._redis.zscore(self._k("pause", self._group(budget)), budget)
        except redis.RedisError:
            return self._local_pauses.get(budget, 0.0)
        return max(float(until or 0.0), self._local_pauses.get(budget, 0.0))

    def pause(self, budget: str, until: float) -> None:
        self._local_pauses[budget] = max(self._local_pauses.get(budget, 0.0), until)
        with contextlib.suppress(redis.RedisError):
            name = self._k("pause", self._group(budget))
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(name, {budget: until}, gt=True)
            pipe.expire(name, 3600)  # a pause is seconds long; the set goes once nobody is paused
            pipe.execute()

    def learned(self, budget: str) -> tuple[int | None, int | None]:
        try:
            found = self._redis.hget(self._k("learned", self._group(budget)), budget)
        except redis.RedisError:
            return None, None
        if not found:
            return None, None
        rpm, _, tpm = found.decode().partition(",")
        return (int(rpm) if rpm else None), (int(tpm) if tpm else None)

    def learn(self, budget: str, rpm: int | None, tpm: int | None) -> None:
        with contextlib.suppress(redis.RedisError):
            name = self._k("learned", self._group(budget))
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(name, budget, f"{rpm or ''},{tpm or ''}")
            pipe.expire(name, 3600)  # limits change (a new tier): an hour-old figure is heard again
            pipe.execute()

    def close(self) -> None:
        self._store.close()


class _Fallback(StateStore):
    """A pyrate-limiter state store on the server, or in this process while the server is away."""

    is_async = False

    def __init__(self, shared: RedisStateStore, local: InMemoryStateStore) -> None:
        self.shared = shared
        self.local = local
        self.default_clock = shared.default_clock

    def check(self, algorithm: Any, rates: Any, now: int, weight: int) -> Any:
        try:
            return self.shared.check(algorithm, rates, now, weight)
        except redis.RedisError:
            return self.local.check(algorithm, rates, now, weight)

    def read(self, algorithm: Any, rates: Any) -> Any:
        try:
            return self.shared.read(algorithm, rates)
        except redis.RedisError:
            return self.local.read(algorithm, rates)

    def reset(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.shared.reset()
        self.local.reset()
