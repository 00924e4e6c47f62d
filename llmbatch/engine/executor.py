"""The executor port: how the calls for a run's misses are made.

The resolver decides which requests need a call (not a hit, not a duplicate in flight, not held by
another run) and hands each to an :class:`Executor` as a :class:`Call`; it gets back an
:class:`Outcome`, a value. The executor never reaches back into the resolver: it is told to stop
(:meth:`Executor.stop`), and it says what happened.

:class:`~llmbatch.engine.live.LiveExecutor` makes the calls now, under the pace, with retries and
the budget, through a provider in this process or in worker processes. A Batch-API executor will be
the second (:mod:`llmbatch.engine.batch`): it gathers its calls into jobs and answers them when
a job's output is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llmbatch.model.request import Request
from llmbatch.model.stats import StopReason
from llmbatch.providers.base import CallError, Destination

__all__ = ["Answered", "Call", "Executor", "Failed", "NotStarted", "Outcome", "Unclaimed", "sleep_unless"]


@dataclass(frozen=True, slots=True)
class Call:
    """One request to call, with its key."""

    request: Request
    key: str


@dataclass(frozen=True, slots=True)
class Answered:
    """The call was answered, and the answer is one (``answers.problem`` found nothing wrong with it)
    and safe to keep (``answers.keepable``): the resolver stores it before it does anything else."""

    response: dict[str, Any]
    latency_ms: float
    cost_usd: float | None
    attempts: int
    #: How the answer was made: ``"live"`` (a call now) or ``"batch"`` (a Batch-API job).
    via: str = "live"

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.response.get("usage")


@dataclass(frozen=True, slots=True)
class Unclaimed:
    """An answer no call of this run waits for: a Batch-API job's line that the input (changed
    since the job was submitted) no longer has. It was paid for, so the resolver stores it under
    ``key``, made from ``request`` (the key material the job recorded)."""

    key: str
    request: dict[str, Any]
    answer: Answered


@dataclass(frozen=True, slots=True)
class Failed:
    """The call failed for good (after its retries); ``error.kind == "fatal"``: every line would fail
    the same way, and the run stops."""

    error: CallError
    attempts: int


@dataclass(frozen=True, slots=True)
class NotStarted:
    """No attempt was made: the run is stopping, or (``reason``) the call would have stopped it
    (the budget is spent); the line is left for a rerun."""

    reason: StopReason | None = None
    message: str = ""


Outcome = Answered | Failed | NotStarted


class Executor(Protocol):
    """What the resolver needs from whatever makes the calls."""

    #: Where the calls go; the keys record its endpoint.
    destination: Destination
    #: No attempt outlives this many seconds (how long a stopping run waits for calls in flight).
    longest_timeout_s: float
    #: Calls it can use at once: the resolver leases this many keys ahead (a live executor: about
    #: its concurrency; a batch executor: a whole job's worth).
    wants: int

    async def execute(self, call: Call) -> Outcome: ...

    def unclaimed(self) -> list[Unclaimed]:
        """Answers that came back with no call waiting for them, each handed over once (a live
        executor has none)."""

    def stop(self) -> None:
        """Start no new attempt; attempts in flight finish."""

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API keys in use (never stored, never written)."""

    @property
    def lost(self) -> int:
        """Worker processes that died during the run."""

    async def aclose(self) -> None: ...


async def sleep_unless(sleep: Callable[[float], Awaitable[Any]], stopped: asyncio.Event, seconds: float) -> None:
    """``sleep(seconds)``, cut short when ``stopped`` is set: an executor's waits (a retry's, a
    poll's) must not keep a stopping run sitting out a 45 s Retry-After before it exits."""
    sleeper = asyncio.ensure_future(sleep(seconds))
    stopper = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopper.cancel()
