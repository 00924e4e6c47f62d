"""--max-cost: no call starts that could take spending past the budget.

Each call reserves its estimated cost before it starts, and its reservation ends with its
attempt, when its real cost (if any) is already counted as spent: so spending plus every call in
flight at its estimate never passes the limit. Near the budget, fewer calls run at once: a call
that does not fit waits for one in flight to finish (its real cost, and this run's answers so far,
make the next estimate). Only when a call cannot fit even with nothing in flight is the budget
reached. Estimates use ``max_tokens`` when set, so that is a hard ceiling; without it, the output
is estimated from this run's own answers for the model (256 tokens before any has come back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from llmbatch.limits import Budget as ModelBudget
from llmbatch.limits import estimate_split
from llmbatch.model.request import Request
from llmbatch.pricing import Prices, estimate_cost, format_usd

__all__ = ["CostBudget", "Reservation"]


@dataclass(frozen=True, slots=True)
class Reservation:
    """A call may start (``usd``: what it reserved), or must not (``refusal``: why, when the budget
    is the reason; None when the run is stopping)."""

    usd: float = 0.0
    allowed: bool = True
    refusal: str | None = None
    unpriced: bool = False  # the model has no known price: the budget cannot be kept


class CostBudget:
    def __init__(
        self,
        limit_usd: float | None,
        spent: Callable[[], float],
        stopping: Callable[[], bool],
        prices: Prices | None = None,
    ) -> None:
        """``spent``: what the run has spent so far; ``stopping``: the run no longer starts calls;
        ``prices``: llmbatch.toml's, for models genai-prices does not know."""
        self.limit_usd = limit_usd
        self._prices: Prices = prices or {}
        self._spent = spent
        self._stopping = stopping
        self._committed_usd = 0.0  # estimates of the calls that hold a reservation ...
        self._reservations = 0  # ... and how many they are
        self._freed = asyncio.Event()  # a reservation ended: waiters look again

    async def reserve(self, request: Request, model: ModelBudget) -> Reservation:
        """Room for ``request`` (``model``: its pace state, with the average completion so far)."""
        if self.limit_usd is None:
            return Reservation()
        while True:
            # Estimated afresh on each look: the output is the average of this run's own answers
            # for the model once some have come back, not the 256 tokens assumed before any.
            tokens_in, tokens_out = estimate_split(request.messages, request.params, model.avg_completion)
            estimate = estimate_cost(request.provider, request.model, tokens_in, tokens_out, prices=self._prices)
            if estimate is None:
                return Reservation(allowed=False, unpriced=True, refusal=f"no price known for {request.model_ref}")
            if self._stopping():
                return Reservation(allowed=False)
            if self._spent() + self._committed_usd + estimate <= self.limit_usd:
                break
            if self._reservations == 0:
                refusal = (
                    f"the budget of {format_usd(self.limit_usd)} is reached ({format_usd(self._spent())} spent; "
                    f"the next call would cost about {format_usd(estimate)})"
                )
                return Reservation(allowed=False, refusal=refusal)
            self._freed.clear()
            await self._freed.wait()
        self._reservations += 1
        self._committed_usd += estimate
        return Reservation(usd=estimate)

    def settle(self, reservation: Reservation) -> None:
        """A call's reservation ends (its real cost, if any, is already in what was spent)."""
        if reservation.usd:
            self._reservations -= 1
            # Counted, not compared with zero: float sums leave crumbs (5e-20) that never reach 0.
            self._committed_usd = self._committed_usd - reservation.usd if self._reservations else 0.0
            self._freed.set()

    def wake(self) -> None:
        """The run is stopping: waiters look again, and give up."""
        self._freed.set()
