"""A run's settings, as the command line or a library caller gives them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmbatch.app.inputs import Input
from llmbatch.engine import RunOptions
from llmbatch.input import (
    Defaults,
)
from llmbatch.keys import SIMULATOR_ENDPOINT
from llmbatch.providers.base import SIMULATOR_KEY, Destination
from llmbatch.store import ResponseStore, StorePlace

__all__ = [
    "SIMULATE_DEFAULT_MODEL",
    "BatchSettings",
    "RunConfig",
    "cpu_quota",
    "cpus",
    "effective_defaults",
    "open_run_store",
]


#: With --simulate and no model anywhere, lines get this one: a real model name, so that
#: everything downstream (keys, tags, later prices) behaves as it will for real.
SIMULATE_DEFAULT_MODEL = "openai:gpt-4o-mini"


@dataclass(frozen=True)
class BatchSettings:
    """``--batch-api``: the misses go to the providers' Batch APIs (see :mod:`llmbatch.engine.batch`)."""

    no_wait: bool = False  # --no-wait: submit (or look once at pending jobs) and return
    fallback_live: bool = False  # --batch-fallback live: failed lines are retried live
    max_requests: int | None = None  # a lower per-job request limit than the provider's
    poll_s: tuple[float, float] = (5.0, 60.0)  # first and longest wait between polls


@dataclass
class RunConfig:
    input: Input
    output: Path | None  # None: standard output
    defaults: Defaults = field(default_factory=Defaults)
    options: RunOptions = field(default_factory=RunOptions)
    api_base: str | None = None
    simulate: bool = False
    sim_config: Any = None  # simulator.SimConfig when simulate is set
    cache_dir: Path | None = None
    cache_size_limit: int | None = None
    cache_eviction: str | None = None
    shared_cache: bool = False  # --shared-cache: a cache directory others may own or write, on purpose
    cache_url: str | None = None  # --cache redis://...: answers on a shared server (cache_dir stays local)
    cache_namespace: str | None = None  # None: the default (llmbatch.store.DEFAULT_NAMESPACE)
    rate_group: str | None = None  # --rate-group: whose rate budget the calls spend, when shared
    workers: int | None = None  # processes making the calls; None: auto_workers decides, 0: this one
    split: bool = False  # check a big input in two halves at once, by forking (not with workers=0)
    batch: BatchSettings | None = None  # --batch-api
    #: ``--semantic``: near-identical prompts answered from the store (store.semantic.SemanticSettings)
    semantic: Any = None
    #: Where the calls go, and so what the keys record; made from the fields above when not given.
    destination: Destination = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.destination is None:
            # Once per run: the environment's base URLs are read now, for every key of the run.
            if self.simulate:
                self.destination = Destination.of(
                    api_key=SIMULATOR_KEY, force_provider="openai", namespace=SIMULATOR_ENDPOINT
                )
            else:
                self.destination = Destination.of(api_base=self.api_base)

    @property
    def store_place(self) -> StorePlace:
        return StorePlace.of(self.cache_dir, self.cache_url, self.cache_namespace, self.shared_cache)


def effective_defaults(config: RunConfig) -> Defaults:
    if config.simulate and config.defaults.model is None:
        # replace, not a new Defaults: the line limits and the normalisation still hold.
        return replace(config.defaults, model=SIMULATE_DEFAULT_MODEL)
    return config.defaults


def open_run_store(config: RunConfig) -> ResponseStore:
    """The run's store, with the settings the command line gave (wrapped by the semantic store with
    ``--semantic``, its vectors beside this machine's cache directory)."""
    store = config.store_place.open(size_limit=config.cache_size_limit, eviction_policy=config.cache_eviction)
    if config.semantic is None:
        return store
    from llmbatch.store.semantic import SemanticStore  # the model and the index only when asked for

    return SemanticStore(store, config.store_place.local_directory, config.semantic)


def cpus() -> int:
    """The CPUs this process can use: those it may run on (``taskset``, a container's cpuset), or
    fewer when a CPU quota allows less time than that (``docker run --cpus 1`` leaves every core in
    the affinity mask and sets a quota instead), rounded up. Worker processes under a quota of one
    CPU would only share it."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, math.ceil(quota))) if quota is not None else count


#: Where a process sees its CPU quota: cgroup v2's one file, then cgroup v1's pair.
_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_CFS = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def _cgroup_quota() -> float | None:
    try:
        if _CPU_MAX.exists():
            return cpu_quota(_CPU_MAX.read_text())
        quota, period = (path.read_text() for path in _CFS)
    except OSError:
        return None
    return cpu_quota(f"{quota.strip()} {period.strip()}")


def cpu_quota(text: str) -> float | None:
    """CPUs' worth of time a cgroup quota allows, from ``cpu.max`` ("QUOTA PERIOD", "max PERIOD")
    or cgroup v1's quota and period joined by a space (-1: none); None when there is no quota."""
    fields = text.split()
    try:
        quota, period = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):  # "max", or nothing readable: no quota
        return None
    return quota / period if quota > 0 and period > 0 else None
