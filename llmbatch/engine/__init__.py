"""The engine: a resolver between a store port and an executor port.

- :mod:`~llmbatch.engine.resolver`: window, input order, coalescing, cache modes, leases between
  runs; misses go to an executor, answers to the store, results out in order.
- :mod:`~llmbatch.engine.executor`: the executor port and the values that cross it.
- :mod:`~llmbatch.engine.live`: calls made now (pace, retries, budget, a provider).
- :mod:`~llmbatch.engine.budget`, :mod:`~llmbatch.engine.leases`, :mod:`~llmbatch.answers`:
  the ``--max-cost`` reservations, who calls which key, what counts as an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from llmbatch.engine.executor import Answered, Call, Executor, Failed, NotStarted, Outcome
from llmbatch.engine.live import LiveExecutor
from llmbatch.engine.options import CacheMode, RunOptions
from llmbatch.engine.resolver import LOOKUP_CHUNK, Resolver
from llmbatch.limits.state import LimitState
from llmbatch.model.result import Result
from llmbatch.model.stats import RunStats, StopReason
from llmbatch.providers.base import Provider
from llmbatch.store.base import ResponseStore

__all__ = [
    "LOOKUP_CHUNK",
    "Answered",
    "CacheMode",
    "Call",
    "Executor",
    "Failed",
    "LiveExecutor",
    "NotStarted",
    "Outcome",
    "Resolver",
    "RunOptions",
    "RunStats",
    "StopReason",
    "batch_resolver",
    "live_resolver",
]


def live_resolver(
    provider: Provider,
    *,
    store: ResponseStore | None,
    sink: Callable[[Result], None],
    options: RunOptions | None = None,
    flush: Callable[[], None] = lambda: None,
    stats: RunStats | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    limit_state: LimitState | None = None,
    held: Mapping[str, str] | None = None,
) -> Resolver:
    """A run whose calls are made now through ``provider``: what the command line and the library use.
    ``limit_state``: where the pace and pauses live; ``held``: keys earlier Batch-API jobs hold (see
    :class:`LiveExecutor`)."""
    stats = stats or RunStats()
    options = options or RunOptions()
    executor = LiveExecutor(
        provider,
        options=options,
        stats=stats,
        on_event=on_event,
        sleep=sleep,
        clock=clock,
        limit_state=limit_state,
        held=held,
    )
    return Resolver(
        executor=executor,
        store=store,
        options=options,
        sink=sink,
        flush=flush,
        stats=stats,
        on_event=on_event,
        clock=clock,
        wall_clock=wall_clock,
        sleep=sleep,
    )


def batch_resolver(
    provider: Any,
    *,
    book: Any,
    store: ResponseStore | None,
    sink: Callable[[Result], None],
    options: RunOptions | None = None,
    flush: Callable[[], None] = lambda: None,
    stats: RunStats | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    limits: dict[str, Any] | None = None,
    no_wait: bool = False,
    fallback_live: bool = False,
    poll_s: tuple[float, float] = (5.0, 60.0),
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    limit_state: LimitState | None = None,
) -> Resolver:
    """A run whose misses go to the providers' Batch APIs through ``provider`` (an
    ``AnyLLMProvider``), with job records in ``book`` (a ``store.jobs.JobBook``). The resolver holds
    up to :data:`~llmbatch.engine.batch.BATCH_WINDOW` requests (unless ``options.window`` says),
    so that one gathering fills a job."""
    from dataclasses import replace

    from llmbatch.engine.batch import BATCH_WINDOW, BatchExecutor
    from llmbatch.providers.batch import BatchClient

    stats = stats or RunStats()
    options = options or RunOptions()
    if options.window is None:
        options = replace(options, window=BATCH_WINDOW)
    fallback = None
    if fallback_live:
        fallback = LiveExecutor(
            provider, options=options, stats=stats, on_event=on_event, sleep=sleep, clock=clock, limit_state=limit_state
        )
    executor = BatchExecutor(
        BatchClient(provider),
        book,
        options=options,
        stats=stats,
        on_event=on_event,
        limits=limits,
        no_wait=no_wait,
        fallback=fallback,
        poll_s=poll_s,
        sleep=sleep,
        clock=clock,
        wall_clock=wall_clock,
    )
    return Resolver(
        executor=executor,
        store=store,
        options=options,
        sink=sink,
        flush=flush,
        stats=stats,
        on_event=on_event,
        clock=clock,
        wall_clock=wall_clock,
        sleep=sleep,
    )
