"""Where paid answers live: the store port and its implementations.

:mod:`~llmbatch.store.base` holds the port (:class:`ResponseStore`), the figures every store gives
(:class:`StoreStats`) and a run's batched writes (:class:`WriteBatcher`);
:mod:`~llmbatch.store.disk` is the diskcache store (the default), :mod:`~llmbatch.store.memory`
a dict. :func:`open_store` is the one place that chooses and opens a store for a run or a command.
"""

from __future__ import annotations

from pathlib import Path

from llmbatch.model.stats import Lookups
from llmbatch.store.base import Loaded, ResponseStore, Stored, StoreStats, WriteBatcher
from llmbatch.store.disk import DEFAULT_EVICTION, DEFAULT_SIZE_LIMIT, DiskStore, default_cache_dir, store_exists
from llmbatch.store.memory import MemoryStore

__all__ = [
    "DEFAULT_EVICTION",
    "DEFAULT_SIZE_LIMIT",
    "DiskStore",
    "Loaded",
    "Lookups",
    "MemoryStore",
    "ResponseStore",
    "StoreStats",
    "Stored",
    "WriteBatcher",
    "default_cache_dir",
    "open_store",
    "store_exists",
]


def open_store(
    directory: Path | None = None,
    *,
    create: bool = True,
    shared: bool = False,
    size_limit: int | None = None,
    eviction_policy: str | None = None,
) -> DiskStore | None:
    """The store at ``directory`` (default: :func:`default_cache_dir`); with ``create=False``,
    None when there is none yet (``cache stats`` on a machine that never ran anything)."""
    directory = directory or default_cache_dir()
    if not create and not store_exists(directory):
        return None
    return DiskStore(directory, create=create, shared=shared, size_limit=size_limit, eviction_policy=eviction_policy)
