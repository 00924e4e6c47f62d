"""Leases: which run is calling which key, so that runs sharing a cache pay once for each answer.

Two runs on the same input and cache, started together, used to pay for every prompt twice: each
looked its chunk up, found it missing, and called. Now, before a miss is called, its key is leased
in the store (an owner token and an expiry, taken a chunk at a time in one transaction). A run that
meets a key another run holds does not call it and does not wait in line: it goes on with the keys
it holds, and comes back for the other when its answer lands in the store (it looks every so often,
more often while answers are arriving). If the holder gives the key up without an answer (its call
failed) or stops renewing it (it died), the lease runs out and the waiting run takes the key over.

The store keeps the leases (``DiskStore.lease``/``renew``/``release``/``release_all``); this
class is the run's side: what it holds, what it waits for, and the background loop that renews
and polls. Clock and sleep are injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from itertools import islice
from typing import Any

from llmbatch.errors import CacheError
from llmbatch.model.entry import CacheEntry
from llmbatch.store.base import ResponseStore

__all__ = ["LEASE_TTL_S", "Leases"]

#: How long a lease lasts without renewal: a run that died frees its keys this long after.
LEASE_TTL_S = 60.0
#: Looking for answers other runs are making: soon after one arrived, slower while none do.
POLL_MIN_S = 0.05
POLL_MAX_S = 1.0
#: While waiting on other runs, how often to look for holders on this machine that have died.
REAP_EVERY_S = 2.0

_HOST = socket.gethostname()


#: The runs of this process that are still going (one process can run several, one after the
#: other or at once: the library's run_batch, tests).
_LIVE: set[str] = set()


def _died_here(owner: str) -> bool:
    """``owner`` ran on this machine and is over: its process is gone, or it was this process's
    and has ended."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != _HOST or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return owner not in _LIVE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


class Leases:
    """One run's leases. :meth:`take` before calling; :meth:`wait` for a key another run holds;
    :meth:`release` when done with a key; :meth:`run` in the background while the run goes."""

    def __init__(
        self,
        store: ResponseStore,
        *,
        ttl_s: float = LEASE_TTL_S,
        cap: int | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """``cap``: how many keys this run holds at most (twice what it calls at once, say): a run
        that holds no more than it will call soon leaves the rest to others that share the store,
        however fast or slow each of them is."""
        self.store = store
        self.cap = cap
        # This run: where it runs and a random part, never anything secret. The host and the pid
        # let a run on the same machine see that a holder has died and take its keys at once,
        # instead of waiting for its leases to run out (a run stopped by a full disk could not even
        # give them up).
        self.owner = f"{_HOST}:{os.getpid()}:{secrets.token_hex(6)}"
        _LIVE.add(self.owner)
        self.ttl_s = ttl_s
        self.clock = clock
        self.sleep = sleep
        self.held: set[str] = set()
        #: Keys another run holds, each with the future its waiters share: the stored entry when it
        #: lands, or None once the key is this run's to call.
        self._waiting: dict[str, asyncio.Future[CacheEntry | None]] = {}
        #: Keys waited on that this run has not tried to lease yet (it held its cap): it tries as
        #: room frees, before the keys other runs hold (those are looked at by the poller).
        self._untried: dict[str, None] = {}
        self.waited = 0  # keys answered by another run while this one waited (for the summary)
        # Leases are given up and taken in bites, not one key per answer: a cold run at -c 100 spent
        # 7 % of its CPU on a transaction to release one key and another to lease the next. A key
        # whose answer is stored is let go with the next bite (a run waiting on it looks for the
        # answer, which is there); room is used once a bite of it is free, or when what is left
        # fits. Held keys stay above what is called at once (the cap is twice that), so no call
        # waits for a bite.
        self._bite = max(1, (cap or 0) // 8)
        self._answered: list[str] = []  # stored, not yet let go in the store
        self._renewed = self._reaped = 0.0  # when run() last renewed the leases, and looked for dead holders

    @property
    def room(self) -> int:
        return len(self._waiting) + len(self.held) if self.cap is None else max(0, self.cap - len(self.held))

    def take(self, keys: Iterable[str]) -> set[str]:
        """Lease what nobody else holds among ``keys``, up to the cap (one transaction); the keys
        taken now. Keys beyond the cap are left untried, for when room frees."""
        wanted = [key for key in dict.fromkeys(keys) if key not in self.held]
        tried, untried = wanted[: self.room], wanted[self.room :]
        self._untried.update(dict.fromkeys(untried))
        if not tried:
            return set()
        for key in tried:
            self._untried.pop(key, None)
        taken = self.store.lease(tried, self.owner, ttl_s=self.ttl_s, now=self.clock()) & set(tried)
        self.held |= taken
        return taken

    async def wait(self, key: str) -> CacheEntry | None:
        """Until another run's answer for ``key`` is stored (the entry), or the key is this run's
        to call (None: nobody held it, its holder gave it up or died, or this run is stopping)."""
        future = self._waiting.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[key] = future
            if key in self._untried and self.room:
                self._claim()
        return await asyncio.shield(future)

    def queued(self, key: str) -> bool:
        """Whether ``key`` waits for room under this run's cap (not for another run)."""
        return key in self._untried

    def release(self, keys: Iterable[str]) -> None:
        """Give up the leases on ``keys`` that this run holds (their calls failed) at once, so
        another run can take them over, and use the room for keys waiting their turn."""
        mine = [key for key in keys if key in self.held]
        if mine:
            self.held.difference_update(mine)
            with contextlib.suppress(CacheError):  # the store is gone: the leases run out on their own
                self.store.release(mine, self.owner)
            self._claim()

    def stored(self, keys: Iterable[str]) -> None:
        """``keys``' answers are in the store: their leases go with the next bite."""
        mine = [key for key in keys if key in self.held]
        if mine:
            self.held.difference_update(mine)
            self._answered.extend(mine)
            if len(self._answered) >= self._bite:
                self._let_go()
            self._claim()

    def _let_go(self) -> None:
        answered, self._answered = self._answered, []
        if answered:
            with contextlib.suppress(CacheError):
                self.store.release(answered, self.owner)

    def forget(self, key: str) -> None:
        """``key`` is settled for this run (answered, or given up): never claim it any more."""
        self._untried.pop(key, None)

    def _claim(self) -> None:
        """Lease untried keys that are waited on, a bite at a time (or all that are left, when they
        fit): the ones taken are this run's."""
        room = self.room
        if not room or (room < self._bite and len(self._untried) > room):
            return
        candidates = list(islice((key for key in self._untried if key in self._waiting), room))
        for key in self.take(candidates):
            self._finish(key, None)

    def stop_waiting(self) -> None:
        """The run is stopping: every waiter hears back now (None), and starts no call."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_result(None)

    async def run(self) -> None:
        """Renew what is held and look for what is waited on, until cancelled."""
        interval = POLL_MIN_S
        self._renewed = self._reaped = self.clock()
        while True:
            await self.sleep(interval)
            try:
                interval = self._tend(interval)
            except CacheError:
                # The store is gone (a server lost): the run hears of it from its own lookups and
                # writes, and stops; until then, keep trying.
                interval = POLL_MAX_S

    def _tend(self, interval: float) -> float:
        """One round of :meth:`run`: renew, reap, poll; the interval until the next."""
        now = self.clock()
        self._let_go()
        if now - self._renewed >= self.ttl_s / 3:
            self._renewed = now
            if self.held:
                self.store.renew(self.owner, ttl_s=self.ttl_s, now=now)
        if self._waiting and now - self._reaped >= REAP_EVERY_S:
            self._reaped = now
            self.reap()
        progress = self.poll()
        return POLL_MIN_S if progress else min(POLL_MAX_S, interval * 2)

    def reap(self) -> int:
        """Give up the leases of runs on this machine that are no longer running; how many runs."""
        dead = [owner for owner in self.store.lease_owners() if owner != self.owner and _died_here(owner)]
        for owner in dead:
            self.store.release_all(owner)
        return len(dead)

    @property
    def waiting(self) -> int:
        """Keys this run waits for another run to answer."""
        return len(self._waiting)

    def poll(self) -> bool:
        """One look at the keys waited on that another run holds; True if any waiter heard back.

        Keys that wait for room under this run's own cap are not looked up (at -c 100 that was
        a lookup of ~1,400 keys every 50 ms): they are claimed as room frees, and the resolver looks
        each one up again right before calling it, so another run's answer is still found."""
        if not self._waiting:
            return False
        waiting = len(self._waiting)
        others = [key for key in self._waiting if key not in self._untried]
        found = self.store.get_many(others) if others else {}
        for key, entry in found.items():
            self.waited += 1
            self._finish(key, entry)
        # This run's own turn first, then keys another run held: if it let go (its call failed) or
        # died, the key is ours to call now.
        self._claim()
        left = [key for key in others if key not in found]
        taken = self.take(left[: self.room]) if left and self.room else set()
        for key in taken:
            self._finish(key, None)
        return bool(found or taken or len(self._waiting) < waiting)

    def _finish(self, key: str, result: CacheEntry | None) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)

    def close(self) -> None:
        """The run is over: give up every lease it still holds."""
        self.stop_waiting()
        self.held.clear()
        _LIVE.discard(self.owner)
        with contextlib.suppress(Exception):  # the store may be gone; leases run out on their own
            self.store.release_all(self.owner)
