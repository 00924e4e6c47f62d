"""Even pacing of requests and tokens per minute, on pyrate-limiter's GCRA.

The pacing is pyrate-limiter's GCRA (a leaky bucket kept as one timestamp), rather than a
hand-written token bucket; its state lives in a store that is given (in memory by default;
pyrate-limiter's Redis state store, atomic in Lua, for a pace shared between machines). Tokens are
estimated before a call and the difference from the real usage is carried into the next
reservation, so the long-run token rate is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from inspect import isawaitable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyrate_limiter import StateBucket, StateStore

__all__ = ["PACE_SAFETY", "Pacer"]

#: Fraction of a known limit we pace at. 3 % covers scheduling and network jitter between our
#: send and the server's count; measured against a strict 1-second window in bench/.
PACE_SAFETY = 0.97
#: pyrate-limiter counts in whole units: microseconds, so rounding never slows the pace.
_MINUTE_US = 60_000_000


def _memory_store(_kind: str) -> StateStore:
    from pyrate_limiter import InMemoryStateStore

    return InMemoryStateStore()


async def _answer(value: Any) -> Any:
    """A store's answer, awaited when the store is asynchronous (Redis with an asyncio client)."""
    return await value if isawaitable(value) else value


class Pacer:
    """Even pacing of requests and tokens per minute, on pyrate-limiter's GCRA.

    Where each bucket's state lives is given (``stores``: a pyrate-limiter ``StateStore`` for
    ``"requests"`` and for ``"tokens"``; in memory by default), so several processes can share one
    pace through a shared store. A store may answer at once or be awaited (pyrate-limiter's Redis
    store with an asyncio client): :meth:`reserve` and :meth:`precharge` await what needs awaiting.
    """

    def __init__(self, rpm: int | None, tpm: int | None, stores: Callable[[str], StateStore] | None = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._stores = stores or _memory_store
        # A provider enforcing its limit over one second allows floor(rpm / 60) in any second: pace
        # under that, not under rpm / 60 (500 rpm: 8 a second, not 8.3).
        self._requests = self._bucket(rpm // 60 * 60 if rpm >= 60 else rpm, burst=1, kind="requests") if rpm else None
        # A request pays for its tokens in lumps of at most 10 ms worth, waiting between lumps, so
        # it starts only once its tokens have been paid at the rate. The slack a lump allows is 1 %
        # of a second's tokens, inside the 3 % safety margin even for a half-second window.
        self._token_burst = max(1, int(tpm * PACE_SAFETY / 60 / 100)) if tpm else 0
        self._tokens = self._bucket(tpm, burst=self._token_burst, kind="tokens") if tpm else None
        # Tokens paid to the bucket and not yet used (negative: used and not yet paid, when an
        # answer cost more than its estimate).
        self.balance = 0

    def _bucket(self, per_minute: int, *, burst: int, kind: str) -> StateBucket:
        from pyrate_limiter import GCRA, Rate, StateBucket  # only when pacing: start-up

        limit = max(1, int(per_minute * PACE_SAFETY))
        return StateBucket([Rate(limit, _MINUTE_US, burst=min(burst, limit))], GCRA(), self._stores(kind))

    async def reserve(self, tokens: int, now: float, *, slot: float | None = None) -> float:
        """Take room for one request of ``tokens`` at ``now`` (seconds): 0.0 when granted, else
        the seconds to wait before asking again. ``slot``: the time an earlier answer said to come
        back, when we are slightly late for it; the request schedule keeps that slot's place.
        (Token lumps always count from ``now``: a token window has no slack to spare.)"""
        from pyrate_limiter import RateItem

        stamp = int(now * 1_000_000)
        request_stamp = int(slot * 1_000_000) if slot is not None else stamp
        if self._tokens is not None:
            # Pay the bucket in lumps of at most a burst until this request's tokens are covered;
            # what is paid stays paid (``balance``) if we have to wait for the rest.
            while self.balance < tokens:
                lump = min(tokens - self.balance, self._token_burst)
                if not await _answer(self._tokens.put(RateItem("tokens", stamp, lump))):
                    return await self._wait(self._tokens, lump, stamp)
                self.balance += lump
        if self._requests is not None and not await _answer(self._requests.put(RateItem("requests", request_stamp, 1))):
            # The wait counts from the slot; the caller counts from now.
            waited = await self._wait(self._requests, 1, request_stamp)
            return max(1e-6, waited - (stamp - request_stamp) / 1_000_000)
        if self._tokens is not None:
            self.balance -= tokens
        return 0.0

    @staticmethod
    async def _wait(bucket: StateBucket, weight: int, stamp: int) -> float:
        from pyrate_limiter import RateItem

        waited = await _answer(bucket.waiting(RateItem("wait", stamp, weight)))
        assert isinstance(waited, int)
        return max(1e-6, waited / 1_000_000)

    def settle(self, estimated: int, actual: int) -> None:
        """The answer came: carry the estimate's error into the next reservations."""
        if self._tokens is not None:
            self.balance -= actual - estimated

    async def precharge(self, requests: int, tokens: int, now: float) -> None:
        """Count calls (and their tokens) sent before this pacer existed (limits learned from
        headers mid-run), so the next start waits as if they had been paced too."""
        if self._tokens is not None:
            self.balance -= tokens  # owed: the next reservations pay for them first
        if self._requests is None or requests <= 0:
            return
        from pyrate_limiter import RateItem

        stamp = int(now * 1_000_000)
        # Each at the bucket's next free moment: admitted, it pushes that moment one interval on.
        for _ in range(requests):
            while not await _answer(self._requests.put(RateItem("requests", stamp, 1))):
                waited = await _answer(self._requests.waiting(RateItem("requests", stamp, 1)))
                assert isinstance(waited, int)
                stamp += max(1, waited)

    def carry(self, old: Pacer) -> None:
        """Take over from the pacer of an earlier limit: its schedule, not the run's history."""
        for mine, theirs in ((self._requests, old._requests), (self._tokens, old._tokens)):
            if mine is not None and theirs is not None:
                mine.store = theirs.store  # when each bucket is next free
        if self._tokens is not None and old._tokens is not None:
            self.balance = old.balance
