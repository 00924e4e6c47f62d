"""Where paid answers live: the store port and its implementations.

:mod:`~llmbatch.store.base` holds the port (:class:`ResponseStore`), the figures every store gives
(:class:`StoreStats`) and a run's batched writes (:class:`WriteBatcher`);
:mod:`~llmbatch.store.disk` is the diskcache store (the default), :mod:`~llmbatch.store.memory`
a dict, :mod:`~llmbatch.store.redis` a Redis server shared by many machines. :class:`StorePlace`
is the one place that chooses and opens a store for a run or a command: a directory, or a URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch.errors import CacheError
from llmbatch.model.stats import Lookups
from llmbatch.store.base import DEFAULT_NAMESPACE, Loaded, ResponseStore, Stored, StoreStats, WriteBatcher
from llmbatch.store.disk import DEFAULT_EVICTION, DEFAULT_SIZE_LIMIT, DiskStore, default_cache_dir, store_exists
from llmbatch.store.memory import MemoryStore
from llmbatch.urls import REDIS, checked_url, redact_url

if TYPE_CHECKING:
    from llmbatch.limits.state import LimitState

__all__ = [
    "DEFAULT_EVICTION",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SIZE_LIMIT",
    "DiskStore",
    "Loaded",
    "Lookups",
    "MemoryStore",
    "ResponseStore",
    "StorePlace",
    "StoreStats",
    "Stored",
    "WriteBatcher",
    "default_cache_dir",
    "store_exists",
]


@dataclass(frozen=True, slots=True)
class StorePlace:
    """Where a run's or a command's answers live: ``--cache-dir`` and ``--cache URL``.

    Without a URL, the disk store in ``directory`` (default: the user cache directory). With one,
    the answers live on that Redis server, and ``directory`` is still this machine's: it keeps what
    must stay here (which ``.partial`` files this cache's runs wrote). Both given is never an error.
    """

    directory: Path | None = None
    url: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    shared: bool = False

    @classmethod
    def of(cls, directory: Path | None, url: str | None, namespace: str | None, shared: bool) -> StorePlace:
        """From the command line's options, where None means the default; a URL no server could
        be reached at is refused here, before anything is opened (exit 2)."""
        if url is not None:
            checked_url(url, what="--cache", schemes=REDIS, error=CacheError)
        return cls(directory, url, namespace or DEFAULT_NAMESPACE, shared)

    @property
    def local_directory(self) -> Path:
        return self.directory or default_cache_dir()

    @property
    def jobs_directory(self) -> Path:
        """Where Batch-API job records live: beside the disk store, in this machine's directory
        (with ``--cache redis://`` too: a job is attached to by the machine that submitted it)."""
        return self.local_directory / "batches"

    def describe(self) -> str:
        """For people: the directory, or the URL without its password."""
        if self.url is None:
            return str(self.local_directory)
        return f"{redact_url(self.url)} (namespace {self.namespace})"

    def holds(self, path: Path) -> bool:
        """Whether writing ``path`` would write inside the cache directory (over its database, its
        value files): results and exports must never land there."""
        inside = os.path.realpath(self.local_directory)
        return os.path.realpath(path).startswith(inside + os.sep)

    def exists(self) -> bool:
        """Whether there is a store to read (a server is always there to ask: opening checks it)."""
        return self.url is not None or store_exists(self.local_directory)

    def limit_state(self, group: Callable[[str], str]) -> LimitState | None:
        """The rate limits' state shared on the server (None for a directory: then each run keeps
        its own). ``group(budget)``: whose limits a ``provider:model`` spends."""
        if self.url is None:
            return None
        return _redis().RedisLimitState(self.url, namespace=self.namespace, group=group)

    def open(
        self, *, create: bool = True, size_limit: int | None = None, eviction_policy: str | None = None
    ) -> ResponseStore:
        """Open it (a server is asked to answer first: an unreachable one is a CacheError)."""
        if self.url is None:
            return DiskStore(
                self.local_directory,
                create=create,
                shared=self.shared,
                size_limit=size_limit,
                eviction_policy=eviction_policy,
            )
        directory, shared = self.local_directory, self.shared
        here = lambda: DiskStore(directory, shared=shared)  # noqa: E731 - opened when a run first needs it
        return _redis().RedisStore(self.url, local=here, namespace=self.namespace)


def _redis() -> Any:
    """:mod:`llmbatch.store.redis`, or why it cannot be used (redis-py is an extra)."""
    try:
        from llmbatch.store import redis as redis_store
    except ImportError as exc:
        raise CacheError(f"--cache with a server URL needs redis-py ({exc}): pip install 'llmbatch[redis]'") from None
    return redis_store
