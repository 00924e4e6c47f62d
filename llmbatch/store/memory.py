"""The memory store: a dict, for the engine's unit tests and short library runs.

The same :class:`~llmbatch.store.base.ResponseStore` as the disk store, kept in this process: no
file, no transaction, nothing to close. Entries are copied through JSON on the way in, so that
what it keeps is what a real store would give back. Leases and ``.partial`` records work among the
runs of this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llmbatch.model.entry import CacheEntry, servable
from llmbatch.model.stats import Lookups
from llmbatch.store.base import Loaded, Stored, StoreStats

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Held:
    entry: CacheEntry
    tag: str | None
    stored_at: float  # the store's own clock, as diskcache's store_time: what purge goes by
    expires: float | None


class MemoryStore:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.location = "memory"
        self.recreated = False
        self.clock = clock
        self._entries: dict[str, _Held] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # key -> (owner, expires)
        self._partials: dict[tuple[int, int], str] = {}
        self._lookups: dict[str, Lookups] = {}  # per provider:model tag

    # -- the run's side --

    def get(self, key: str) -> CacheEntry | None:
        found = self._entries.get(key)
        if found is None or (found.expires is not None and found.expires < self.clock()):
            return None
        return found.entry if servable(key, found.entry) else None

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        found = {key: self.get(key) for key in keys}
        return {key: entry for key, entry in found.items() if entry is not None}

    def put(self, key: str, entry: CacheEntry, *, tag: str, ttl_s: float | None = None) -> None:
        copy: CacheEntry = orjson.loads(orjson.dumps(entry))  # JSON, as a real store keeps it
        now = self.clock()
        self._entries[key] = _Held(copy, tag, now, now + ttl_s if ttl_s is not None else None)

    def put_many(self, items: list[tuple[str, CacheEntry, str]], *, ttl_s: float | None = None) -> None:
        copies = [(key, orjson.loads(orjson.dumps(entry)), tag) for key, entry, tag in items]  # all or none
        for key, entry, tag in copies:
            self.put(key, entry, tag=tag, ttl_s=ttl_s)

    def record_lookups(self, lookups: Mapping[str, Lookups]) -> None:
        for tag, counts in lookups.items():
            self._lookups.setdefault(tag, Lookups()).add(counts)

    def close(self) -> None:
        pass

    # -- runs sharing it --

    def lease(self, keys: Iterable[str], owner: str, *, ttl_s: float, now: float | None = None) -> set[str]:
        now = self.clock() if now is None else now
        held = set()
        for key in keys:
            holder = self._leases.get(key)
            if holder is None or holder[1] < now or holder[0] == owner:
                self._leases[key] = (owner, now + ttl_s)
                held.add(key)
        return held

    def renew(self, owner: str, *, ttl_s: float, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for key, (holder, _) in list(self._leases.items()):
            if holder == owner:
                self._leases[key] = (owner, now + ttl_s)

    def release(self, keys: Iterable[str], owner: str) -> None:
        for key in keys:
            if self._leases.get(key, ("", 0.0))[0] == owner:
                del self._leases[key]

    def release_all(self, owner: str) -> None:
        self.release([key for key, (holder, _) in self._leases.items() if holder == owner], owner)

    def lease_owners(self) -> set[str]:
        return {holder for holder, _ in self._leases.values()}

    def note_partial(self, identity: tuple[int, int], token: str) -> None:
        self._partials[identity] = token

    def knows_partial(self, identity: tuple[int, int], token: str) -> bool:
        return self._partials.get(identity) == token

    def forget_partial(self, identity: tuple[int, int]) -> None:
        self._partials.pop(identity, None)

    # -- the admin side --

    def stats(self) -> StoreStats:
        live = [held for key, held in self._entries.items() if self.get(key) is not None]
        by_model: dict[str, int] = {}
        for held in live:
            by_model[held.tag or "(untagged)"] = by_model.get(held.tag or "(untagged)", 0) + 1
        stamps = [held.stored_at for held in live]
        return StoreStats(
            location=self.location,
            entries=len(live),
            size_bytes=sum(len(orjson.dumps(held.entry)) for held in live),
            oldest=min(stamps, default=None),
            newest=max(stamps, default=None),
            by_model=dict(sorted(by_model.items(), key=lambda item: -item[1])),
            hits=sum(n.hits for n in self._lookups.values()),
            misses=sum(n.misses for n in self._lookups.values()),
            saved_usd=sum(n.saved_usd for n in self._lookups.values()),
            lookups_by_model={tag: Lookups(n.hits, n.misses, n.saved_usd) for tag, n in self._lookups.items()},
            stored_value_usd=sum(held.entry.get("cost_usd") or 0.0 for held in live),
        )

    def count(self) -> int:
        return sum(self.get(key) is not None for key in self._entries)

    def purge(
        self, older_than_s: float | None, *, tag: str | None = None, dry_run: bool = False, now: float | None = None
    ) -> int:
        if older_than_s is None and tag is None:
            raise ValueError("purge needs older_than_s or tag; clear() removes every entry")
        cutoff = (self.clock() if now is None else now) - older_than_s if older_than_s is not None else None
        gone = [
            key
            for key, held in self._entries.items()
            if (cutoff is None or held.stored_at < cutoff) and (tag is None or held.tag == tag)
        ]
        if not dry_run:
            for key in gone:
                del self._entries[key]
        return len(gone)

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
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
        now = self.clock()
        for key, held in sorted(self._entries.items(), key=lambda item: item[1].stored_at):
            if (tag is not None and held.tag != tag) or (key_prefix is not None and not key.startswith(key_prefix)):
                continue
            if (stored_before is not None and held.stored_at >= stored_before) or (
                stored_after is not None and held.stored_at <= stored_after
            ):
                continue
            if held.expires is not None and held.expires < now and not broken:
                continue
            yield Stored(key, held.entry, held.tag, held.stored_at, held.expires)

    def load(self, items: Iterable[Stored]) -> Loaded:
        loaded = Loaded()
        for item in items:
            assert item.entry is not None, "only decoded entries are loaded"
            held = self._entries.get(item.key)
            if held is not None and held.stored_at >= item.stored_at:
                loaded.kept += 1
                continue
            if held is None:
                loaded.added += 1
            else:
                loaded.replaced += 1
            copy: CacheEntry = orjson.loads(orjson.dumps(item.entry))
            self._entries[item.key] = _Held(copy, item.tag, item.stored_at, item.expires_at)
        return loaded

    def remove(self, keys: Iterable[str]) -> int:
        return sum(self._entries.pop(key, None) is not None for key in keys)

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
