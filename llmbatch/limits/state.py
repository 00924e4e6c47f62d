"""Where the limits' shared state lives: each budget's pace and its run-wide pause.

Injected into the :class:`~llmbatch.limits.governor.Governor` (and from it into each
:class:`~llmbatch.limits.pacer.Pacer`), so that several processes can keep one budget: a pace
that all of them spend, and a pause that one process's 429 imposes on all of them.
:class:`LocalLimitState` keeps it in this process; a Redis one (pyrate-limiter's Redis state store
for the pace, a key with the server's clock for the pause) is the next.

What stays in the process, whatever the state: the probe, the calls in flight and the AIMD limit of
calls allowed in flight are about this process's own connections.

The state also gives the clock that its times are read on: this process's monotonic clock for
:class:`LocalLimitState`; for a state shared between machines, the server's (machines' own clocks
may differ by seconds, which would shift one machine's pace against another's).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyrate_limiter import StateStore

__all__ = ["LimitState", "LocalLimitState"]


class LimitState(Protocol):
    #: Kept where several processes spend it (a server), rather than in this one.
    shared: bool

    def clock(self) -> float:
        """Now, on the clock every time kept in this state is on (seconds)."""

    def bucket_store(self, budget: str, kind: str) -> StateStore:
        """The store of ``budget``'s ``kind`` bucket (``"requests"`` or ``"tokens"``)."""

    def paused_until(self, budget: str) -> float:
        """The clock time before which no call of ``budget`` starts (0: none)."""

    def pause(self, budget: str, until: float) -> None:
        """No call of ``budget`` starts before ``until`` (a later pause in force stands)."""

    def learned(self, budget: str) -> tuple[int | None, int | None]:
        """The (rpm, tpm) a run sharing this state learned from ``budget``'s headers, if any."""

    def learn(self, budget: str, rpm: int | None, tpm: int | None) -> None:
        """``budget``'s headers state these limits: runs that start later need not probe for them."""

    def close(self) -> None:
        """The run is over: let go of what the state holds (a connection)."""


class LocalLimitState:
    """Limits kept in this process: every governor given the same object shares them (one per run
    by default, so nothing is shared)."""

    shared = False

    def __init__(self) -> None:
        self._pauses: dict[str, float] = {}
        self._stores: dict[tuple[str, str], StateStore] = {}
        self._learned: dict[str, tuple[int | None, int | None]] = {}

    def clock(self) -> float:
        return time.monotonic()

    def bucket_store(self, budget: str, kind: str) -> StateStore:
        from pyrate_limiter import InMemoryStateStore

        return self._stores.setdefault((budget, kind), InMemoryStateStore())

    def paused_until(self, budget: str) -> float:
        return self._pauses.get(budget, 0.0)

    def pause(self, budget: str, until: float) -> None:
        self._pauses[budget] = max(self._pauses.get(budget, 0.0), until)

    def learned(self, budget: str) -> tuple[int | None, int | None]:
        return self._learned.get(budget, (None, None))

    def learn(self, budget: str, rpm: int | None, tpm: int | None) -> None:
        self._learned[budget] = (rpm, tpm)

    def close(self) -> None:
        pass
