"""A run's settings, as the command line or a library caller gives them."""

from __future__ import annotations

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

__all__ = ["SIMULATE_DEFAULT_MODEL", "RunConfig", "cpus", "effective_defaults", "open_run_store"]


#: With --simulate and no model anywhere, lines get this one: a real model name, so that
#: everything downstream (keys, tags, later prices) behaves as it will for real.
SIMULATE_DEFAULT_MODEL = "openai:gpt-4o-mini"


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
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
