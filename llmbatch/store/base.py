"""The store port: where paid answers live, keyed by the request key.

Every store speaks the same versioned JSON entries (:class:`~llmbatch.model.entry.CacheEntry`)
under the same keys, so an entry written through one reads back identically through another. The
port is batch-shaped (``get_many``/``put_many``) because a cached rerun of a million lines lives or
dies by the cost of a lookup. Beside the run's side there is the coordination between runs that
share a store (leases, the ``.partial`` files its runs write) and an admin side (stats, purge,
clear; and for export, import and verify: :meth:`~ResponseStore.entries` walks what is stored as
:class:`Stored` items, :meth:`~ResponseStore.load` files them keeping the newer of two, and
:meth:`~ResponseStore.remove` takes out what verify found broken).

Two implementations: :class:`~llmbatch.store.disk.DiskStore` (diskcache, the default) and
:class:`~llmbatch.store.memory.MemoryStore` (a dict, for tests and short library runs). A store for
Redis lands beside them, and the engine does not change.

:class:`WriteBatcher` is the store side's write path for a run: answers that arrive in the same
turn of the event loop go to the store in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llmbatch.errors import CacheError
from llmbatch.model.entry import CacheEntry
from llmbatch.model.stats import Lookups

#: The key prefix on a shared server (Redis) unless one is chosen: several teams can share a server.
DEFAULT_NAMESPACE = "llmbatch:"

#: ``Stored.problem`` of an entry a server has dropped (its maxmemory policy): a miss, not damage.
GONE = "the value is gone (evicted by the server)"

__all__ = ["DEFAULT_NAMESPACE", "GONE", "Loaded", "ResponseStore", "StoreStats", "Stored", "WriteBatcher"]


@runtime_checkable
class ResponseStore(Protocol):
    """What llmbatch needs of a place where answers live."""

    #: Where it is, for people (a directory, a URL without its password).
    location: str
    #: True once the store found its storage gone during a run and made it again (answers from
    #: then on are in the new one; a run's summary says so).
    recreated: bool

    # -- the run's side: batch-shaped --
    def get(self, key: str) -> CacheEntry | None: ...
    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]: ...
    def put(self, key: str, entry: CacheEntry, *, tag: str, ttl_s: float | None = None) -> None: ...
    def put_many(self, items: list[tuple[str, CacheEntry, str]], *, ttl_s: float | None = None) -> None: ...
    def record_lookups(self, lookups: Mapping[str, Lookups]) -> None:
        """Add a run's hits, misses and savings per ``provider:model`` tag to the lifetime counters
        (and to the totals, which also hold what was counted before there were tags)."""
    def close(self) -> None: ...

    # -- runs sharing the store: who calls which key, and which .partial files are theirs --
    def lease(self, keys: Iterable[str], owner: str, *, ttl_s: float, now: float | None = None) -> set[str]: ...
    def renew(self, owner: str, *, ttl_s: float, now: float | None = None) -> None: ...
    def release(self, keys: Iterable[str], owner: str) -> None: ...
    def release_all(self, owner: str) -> None: ...
    def lease_owners(self) -> set[str]: ...
    def note_partial(self, identity: tuple[int, int], token: str) -> None: ...
    def knows_partial(self, identity: tuple[int, int], token: str) -> bool: ...
    def forget_partial(self, identity: tuple[int, int]) -> None: ...

    # -- the admin side --
    def stats(self) -> StoreStats: ...
    def count(self) -> int: ...
    def purge(
        self, older_than_s: float | None, *, tag: str | None = None, dry_run: bool = False, now: float | None = None
    ) -> int: ...
    def clear(self) -> int: ...
    def entries(
        self,
        *,
        tag: str | None = None,
        stored_before: float | None = None,
        stored_after: float | None = None,
        broken: bool = False,
        key_prefix: str | None = None,
    ) -> Iterator[Stored]:
        """What is stored, oldest first (see :class:`Stored`); ``key_prefix``: only keys that
        start with it (an exact key is its own prefix: ``cache show``)."""
        ...
    def load(self, items: Iterable[Stored]) -> Loaded: ...
    def remove(self, keys: Iterable[str]) -> int: ...


@dataclass(frozen=True, slots=True)
class Stored:
    """One entry as a store holds it, for the admin side: what export writes and import files.

    ``entries()`` yields them oldest first, a page at a time (flat memory over millions). It leaves
    out what has expired and what does not decode, unless asked for them (``broken=True``, for
    verify): then ``entry`` is None and ``problem`` says why, or ``expires_at`` is in the past.
    ``stored_at`` is the store's own record of when (what purge and stats go by); ``load`` keeps it,
    and the expiry, so that an imported answer ages as it would have where it came from.
    """

    key: str
    entry: CacheEntry | None
    tag: str | None
    stored_at: float
    expires_at: float | None = None
    problem: str | None = None


@dataclass(slots=True)
class Loaded:
    """What :meth:`ResponseStore.load` did: entries new to the store, entries that replaced an
    older answer under the same key, and entries not filed because the store's was as new."""

    added: int = 0
    replaced: int = 0
    kept: int = 0


@dataclass(frozen=True, slots=True)
class StoreStats:
    """``llmbatch cache stats``: the same figures for every store, plus what is the store's own
    (``details``: diskcache's size limit and eviction policy, say)."""

    location: str
    entries: int
    size_bytes: int
    oldest: float | None
    newest: float | None
    by_model: dict[str, int]
    hits: int
    misses: int
    saved_usd: float = 0.0  # lifetime: what hits would have cost as calls
    stored_value_usd: float = 0.0  # what the stored answers cost when paid
    details: dict[str, Any] = field(default_factory=dict)
    #: Lifetime lookups per ``provider:model`` tag, since the store counted them so (the totals
    #: above may hold more: what a cache counted before).
    lookups_by_model: dict[str, Lookups] = field(default_factory=dict)

    def models(self) -> dict[str, dict[str, Any]]:
        """Per tag: entries held, and lifetime hits, misses, hit rate and dollars saved (a model
        whose entries are all gone still shows what it saved)."""
        tags = list(self.by_model) + sorted(set(self.lookups_by_model) - set(self.by_model))
        rows: dict[str, dict[str, Any]] = {}
        for tag in tags:
            counts = self.lookups_by_model.get(tag, Lookups())
            lookups = counts.hits + counts.misses
            rows[tag] = {
                "entries": self.by_model.get(tag, 0),
                "hits": counts.hits,
                "misses": counts.misses,
                "hit_rate": round(counts.hits / lookups, 4) if lookups else None,
                "saved_usd": round(counts.saved_usd, 10),
            }
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.location,
            "entries": self.entries,
            "size_bytes": self.size_bytes,
            **self.details,
            "oldest": self.oldest,
            "newest": self.newest,
            "by_model": self.by_model,
            "hits": self.hits,
            "misses": self.misses,
            "saved_usd": round(self.saved_usd, 10),
            "stored_value_usd": round(self.stored_value_usd, 10),
            "models": self.models(),
        }


class WriteBatcher:
    """A run's writes to a store: ``await put(...)`` returns once the entry is stored (None) or
    could not be (the :class:`CacheError`).

    Answers that arrive together are written together: the first one schedules a write for the end
    of this turn of the event loop, and every answer that arrives before then joins it. One
    transaction per turn instead of one per answer (~80 µs of CPU each with diskcache, ~30 in a
    batch) adds no waiting when the run is quiet, and batches grow by themselves when it is busy.
    If the batch fails, each entry is tried alone, so one refused answer does not take the others
    with it. ``after``: told which keys were stored, once they are (the run gives up their leases).
    """

    def __init__(self, store: ResponseStore, *, ttl_s: float | None = None) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._writes: list[tuple[str, CacheEntry, str, asyncio.Future[CacheError | None]]] = []
        self.after: list[Any] = []

    async def put(self, key: str, entry: CacheEntry, tag: str) -> CacheError | None:
        done: asyncio.Future[CacheError | None] = asyncio.get_running_loop().create_future()
        self._writes.append((key, entry, tag, done))
        if len(self._writes) == 1:
            asyncio.get_running_loop().call_soon(self._write_batch)
        return await done

    def _write_batch(self) -> None:
        writes, self._writes = self._writes, []
        ttl_s = self.ttl_s
        try:
            self.store.put_many([(key, entry, tag) for key, entry, tag, _ in writes], ttl_s=ttl_s)
            outcomes: list[CacheError | None] = [None] * len(writes)
        except Exception:  # noqa: BLE001 - whatever it was, every call waiting here must hear back
            # The batch was rolled back: store what can be stored one by one.
            outcomes = []
            for key, entry, tag, _ in writes:
                try:
                    self.store.put(key, entry, tag=tag, ttl_s=ttl_s)
                    outcomes.append(None)
                except CacheError as exc:
                    outcomes.append(exc)
                except Exception as exc:  # noqa: BLE001 - e.g. a number too large for JSON
                    outcomes.append(CacheError(f"cannot store an answer in the cache: {exc}"))
        stored = [key for (key, *_), outcome in zip(writes, outcomes, strict=True) if outcome is None]
        for listener in self.after:
            with contextlib.suppress(CacheError):  # a lease not given up runs out on its own
                listener(stored)
        for (*_, done), outcome in zip(writes, outcomes, strict=True):
            if not done.done():
                done.set_result(outcome)
