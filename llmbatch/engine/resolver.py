"""The resolver: requests in, results out in input order, each answer paid for at most once.

A library with no CLI inside, between two ports: a :class:`~llmbatch.store.base.ResponseStore`
(where answers live) and an :class:`~llmbatch.engine.executor.Executor` (how calls are made). It
imports neither a concrete store nor a concrete executor. For each request, in this order:

1. a hit in the store is the result;
2. the same key already in flight in this run: wait for that call (duplicates cost one call);
3. the same key leased by another run sharing the store: wait for its answer to land;
4. otherwise hand the call to the executor, **store the answer the moment it comes back**
   (before anything else happens with it), and only then make it a result.

Memory does not grow with the file: requests are pulled lazily and at most ``window`` of them are
held at once (answered or not yet written). Results leave through ``sink`` strictly in input order,
as soon as the order allows. Lookups are made a chunk at a time, so a mostly cached rerun does not
pay per-line overhead; the cache modes (``--no-cache``, ``--refresh``, ``--cache-only``) are decided
here.

A fatal failure, the budget, or :meth:`Resolver.stop` ends the run early: no new call starts, calls
in flight finish and are stored, results are written up to the first line that was not answered,
and ``RunStats.stop_reason`` says why.

The keys record the executor's :class:`~llmbatch.providers.base.Destination`: the same value
that decides where its calls go, so a local server's answers can never be filed under a real
provider's keys. A run without an executor (answers from the store alone) is given one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from itertools import islice
from typing import Any

from llmbatch.answers import cacheable, failed_check
from llmbatch.engine.executor import Answered, Call, Executor, Failed, NotStarted, Outcome
from llmbatch.engine.leases import Leases
from llmbatch.engine.options import RunOptions
from llmbatch.errors import CacheError
from llmbatch.keys import key_material, request_key
from llmbatch.model.entry import CacheEntry, make_entry
from llmbatch.model.request import Request
from llmbatch.model.result import Result
from llmbatch.model.stats import Lookups, RunStats, StopReason
from llmbatch.pricing import call_cost
from llmbatch.providers.base import CallError, Destination, model_failed
from llmbatch.store.base import ResponseStore, WriteBatcher

__all__ = ["LOOKUP_CHUNK", "Resolver"]

#: Requests whose keys are looked up in the store together.
LOOKUP_CHUNK = 256
#: The same, when the store also looks for neighbours (``get_near_async``, store.semantic): each
#: miss is then embedded (~2-5 ms), so a chunk of 256 would hold the first calls back for a second
#: or more; 32 lets them leave after the first 32 lines and keeps the embedding beside the calls.
NEAR_CHUNK = 32


class _Skipped:
    """A request that never started because the run was stopping."""


_SKIPPED = _Skipped()
_END = object()


class Resolver:
    """One run. Build it, then ``await resolver.run(requests)``; ``stop()`` may be called meanwhile."""

    def __init__(
        self,
        *,
        executor: Executor | None,
        store: ResponseStore | None,
        options: RunOptions | None = None,
        sink: Callable[[Result], None],
        flush: Callable[[], None] = lambda: None,
        stats: RunStats | None = None,
        destination: Destination | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """``destination``: only for a run without an executor (answers from the store alone);
        otherwise it is the executor's own. ``on_event``: told of each stop as it happens (the
        executor tells of retries and failed lines), as a JSON-ready dict (``-v``, ``--log``)."""
        options = options or RunOptions()
        if executor is not None and destination is not None and destination != executor.destination:
            raise ValueError("the keys' destination must be the provider's own: give one or the other")
        self.executor = executor
        self.destination = executor.destination if executor is not None else destination or Destination.of()
        self.store = store if options.cache_mode != "off" else None
        self.options = options
        self.sink = sink
        self.flush = flush
        self.stats = stats or RunStats()
        self.on_event = on_event
        self.clock = clock
        self.wall_clock = wall_clock
        self._in_flight: dict[str, asyncio.Future[CacheEntry]] = {}
        # --refresh must call each key once per run, however far apart its duplicates are.
        self._refreshed: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._outstanding = 0  # items queued or being awaited by the consumer, not yet emitted
        self._gap = False
        self._writes = WriteBatcher(self.store, ttl_s=options.ttl_s) if self.store is not None else None
        #: Which run calls which key, when runs share the store (only when calls can be made): a
        #: store shared by several runs offers leases; one private to this run needs none.
        self.leases: Leases | None = None
        if executor is not None and options.cache_mode == "normal" and hasattr(self.store, "lease"):
            assert self.store is not None and self._writes is not None
            # Held at most: what the run calls at once, twice over, so that a call that ends is
            # followed at once by another; never a whole chunk, which a faster run sharing the
            # store would have to wait for.
            # (getattr: a scripted executor in a test may not say how many it wants.)
            cap = max(32, 2 * getattr(executor, "wants", options.concurrency))
            self.leases = Leases(self.store, cap=cap, clock=wall_clock, sleep=sleep)
            self._writes.after.append(self.leases.stored)  # stored: the leases go

    def key_of(self, request: Request) -> str:
        return request_key(request, self.destination.key_endpoint(request.provider))

    @property
    def longest_timeout_s(self) -> float:
        """No call in flight outlives this (how long a stopping run waits for them)."""
        return self.executor.longest_timeout_s if self.executor is not None else 0.0

    # -- control ------------------------------------------------------------------------------

    def stop(self, reason: str, kind: StopReason = StopReason.INTERRUPTED) -> None:
        """Start no new call; let calls in flight finish; write results up to the first gap.
        The first stop's reason stands."""
        if self._stopping:
            return
        self._stopping = True
        if self.executor is not None:
            self.executor.stop()
        if self.leases is not None:
            self.leases.stop_waiting()
        self.stats.stopped = reason
        self.stats.stop_reason = kind
        if self.on_event is not None:
            self.on_event({"event": "stop", "reason": kind.value, "message": reason})

    # -- the run ------------------------------------------------------------------------------

    async def run(self, requests: Iterable[Request]) -> RunStats:
        if not self.stats.started_at:  # app.prefix may have begun the run while validating
            self.stats.started_at = self.clock()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.options.effective_window())
        producer = asyncio.create_task(self._produce(iter(requests), queue))
        keeper = None
        if self.leases is not None:
            self.leases.reap()  # a run that died holding keys here must not hold this one up
            keeper = asyncio.create_task(self.leases.run())
        try:
            await self._consume(queue)
            await producer  # re-raise anything the producer hit (a changed input file, ...)
            await self._keep_unclaimed()
        except Exception:
            # Something went wrong around the calls (a results file that cannot be written, a
            # changed input): calls already in flight are paid for, so let them finish and be
            # stored before the error propagates.
            self.stop("stopped by an error", StopReason.ERROR)
            producer.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            raise
        finally:
            if not producer.done():
                producer.cancel()
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if self.leases is not None:
                self.leases.close()
            self.stats.finished_at = self.clock()
            if self.store is not None:
                # Lifetime counters, not paid work: a full disk here must not hide the run's outcome.
                prefix = self.destination.tag_prefix  # the store's tags, as put() files answers
                with contextlib.suppress(CacheError):
                    self.store.record_lookups({prefix + ref: n for ref, n in self.stats.lookups.items()})
        return self.stats

    async def _produce(self, requests: Iterator[Request], queue: asyncio.Queue[Any]) -> None:
        try:
            near = getattr(self.store, "get_near_async", None)
            size = NEAR_CHUNK if near is not None and self.options.cache_mode != "refresh" else LOOKUP_CHUNK
            while not self._stopping:
                chunk, found = await self._lookup(list(islice(requests, size)))
                if not chunk:
                    break
                if self.leases is not None:  # the chunk's misses, for this run to call (one transaction)
                    self.leases.take(k for _, k in chunk if k not in found and k not in self._in_flight)
                for request, key in chunk:
                    if self._stopping:
                        break
                    self.stats.read += 1
                    entry = found.get(key)
                    if entry is not None and not self._escalates(request, entry):
                        hit = self._hit(request, key, entry)
                        self._count(hit)
                        if self._outstanding == 0:
                            # Nothing is waiting ahead of this line: it can go straight out. On a
                            # cached rerun that is nearly every line, and the queue costs more
                            # than the rest of the work.
                            self._emit(hit)
                            continue
                        item: Any = hit
                    else:
                        item = asyncio.create_task(self._resolve(request, key))
                        self._tasks.add(item)
                        item.add_done_callback(self._tasks.discard)
                    self._outstanding += 1
                    await queue.put(item)
                if self._outstanding == 0:
                    self.flush()  # lines emitted straight out: let a reader see them
        except asyncio.CancelledError:
            raise  # the consumer is gone (run() is failing): nobody waits for the end marker
        except CacheError as exc:  # the store went away (a server lost): what is answered is kept
            self._store_failed(exc)
        except BaseException:
            await queue.put(_END)  # let the consumer finish what is queued; run() re-raises this
            raise
        await queue.put(_END)

    def answer_from_cache(self, requests: list[Request]) -> int:
        """Emit the results of the leading requests that are hits, up to the first that is not;
        return how many there were. Nothing is sent: this is for the start of a run only."""
        keyed, found = self._keyed_lookup(requests, near=False)
        get_near = getattr(self.store, "get_near", None) if self.options.cache_mode != "refresh" else None
        asked: set[str] = set()
        for answered, (request, key) in enumerate(keyed):
            if get_near is not None and key not in found and key not in asked:
                # The leading hits end at the first line nothing answers: neighbours are looked for a
                # few misses at a time (each is embedded), not for the whole chunk.
                ahead = [(r, k) for r, k in keyed[answered:] if k not in found][:NEAR_CHUNK]
                asked.update(k for _, k in ahead)
                found.update(get_near(self._misses(ahead, found)))
            entry = found.get(key)
            if entry is None or self._escalates(request, entry):
                return answered
            self.stats.read += 1
            hit = self._hit(request, key, entry)
            self._count(hit)
            self._emit(hit)
        return len(keyed)

    def _keyed_lookup(
        self, requests: list[Request], *, near: bool = True
    ) -> tuple[list[tuple[Request, str]], dict[str, CacheEntry]]:
        """Each request with its key, and the stored entries found for those keys (one batch)."""
        keyed = [(r, self.key_of(r)) for r in requests]
        if not keyed or self.store is None or self.options.cache_mode == "refresh":
            return keyed, {}
        found = self.store.get_many([k for _, k in keyed])
        # A store that can answer near-identical requests (store.semantic) is asked about the exact
        # misses only, with their key material: which ones it may answer is its decision, not ours.
        get_near = getattr(self.store, "get_near", None) if near else None
        if get_near is not None and len(found) < len(keyed):
            found.update(get_near(self._misses(keyed, found)))
        return keyed, found

    async def _lookup(self, requests: list[Request]) -> tuple[list[tuple[Request, str]], dict[str, CacheEntry]]:
        """:meth:`_keyed_lookup` in the run: a store that looks for neighbours on an event loop
        (``get_near_async``) does so while the calls in flight go on."""
        get_near = getattr(self.store, "get_near_async", None)
        if get_near is None:
            return self._keyed_lookup(requests)
        keyed, found = self._keyed_lookup(requests, near=False)
        if keyed and len(found) < len(keyed) and self.options.cache_mode != "refresh":
            found.update(await get_near(self._misses(keyed, found)))
        return keyed, found

    def _misses(
        self, keyed: list[tuple[Request, str]], found: dict[str, CacheEntry]
    ) -> list[tuple[str, dict[str, Any]]]:
        endpoint = self.destination.key_endpoint
        return [(k, key_material(r, endpoint(r.provider))) for r, k in keyed if k not in found]

    async def _consume(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            if queue.empty():
                self.flush()  # everything ready is out; let a reader see it before we wait
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, asyncio.Task):
                if not item.done():
                    # The next line waits on a call: a reader (or a kill -9) must not lose the lines
                    # before it to the write buffer. A warm run's hits never wait, so they pay no syscall.
                    self.flush()
                result = await item
            else:
                result = item
            self._outstanding -= 1
            if result is _SKIPPED:
                self._gap = True
                continue
            self._emit(result)
        self.flush()

    def _emit(self, result: Result) -> None:
        if not self._gap:  # once a line is missing, later lines cannot be written in order
            self.sink(result)
            self.stats.written += 1

    def _count(self, result: Result) -> None:
        """A line is answered: counted now, whatever its place in the output."""
        s = self.stats
        s.done += 1
        if result.ok:
            s.ok += 1
            if result.truncated:
                s.truncated += 1
        else:
            s.errors += 1

    # -- one request --------------------------------------------------------------------------

    def _hit(self, request: Request, key: str, entry: CacheEntry, *, coalesced: bool = False) -> Result:
        # Entries stored before prices were recorded are priced from their usage.
        cost = (
            entry["cost_usd"]
            if "cost_usd" in entry
            else call_cost(request.provider, request.model, entry.get("usage"), prices=self.options.prices)
        )
        if coalesced:
            self.stats.coalesced += 1
            if cost is not None:
                self.stats.deduplicated_usd += cost
        else:
            self.stats.hits += 1
            counts = self._lookups(request)
            counts.hits += 1
            if cost is not None:
                self.stats.saved_usd += cost
                counts.saved_usd += cost
        near = entry.get("semantic") if not coalesced else None  # another prompt's answer (store.semantic)
        if near is not None:
            self.stats.semantic_hits += 1
            counts.semantic += 1
            counts.semantic_saved_usd += cost or 0.0
        return Result(
            cost_usd=cost,
            line=request.line,
            id=request.id,
            key=key,
            status="ok",
            cached=True,
            hit="duplicate" if coalesced else "semantic" if near is not None else "exact",
            similarity=near["similarity"] if near is not None else None,
            matched_key=near["matched_key"] if near is not None else None,
            model=request.model_ref,
            answered_by=request.model_ref,
            metadata=request.metadata,
            response=entry.get("response"),
            usage=entry.get("usage"),
            latency_ms=entry.get("latency_ms"),
            attempts=0,
            via=entry.get("via", "live"),
        )

    def _lookups(self, request: Request) -> Lookups:
        counts = self.stats.lookups.get(request.model_ref)
        if counts is None:
            counts = self.stats.lookups[request.model_ref] = Lookups()
        return counts

    async def _resolve(self, request: Request, key: str) -> Result | _Skipped:
        result = await (self._fall_back(request, key) if request.fallback else self._answer(request, key))
        if isinstance(result, Result) and result.ok and request.escalate_to is not None:
            reason = failed_check(result.response, request.params, request.escalate_on)
            if reason is not None:
                result = await self._escalate(request, result, reason)
        if result is not _SKIPPED:
            assert isinstance(result, Result)
            self._count(result)
        return result

    def _escalates(self, request: Request, entry: CacheEntry) -> bool:
        """A stored answer this line's cascade would not accept: it goes the slow way, to be escalated."""
        checks = request.escalate_on
        return (
            request.escalate_to is not None and failed_check(entry.get("response"), request.params, checks) is not None
        )

    async def _escalate(self, request: Request, first: Result, reason: str) -> Result:
        """The cascade: an answer that failed the route's check is asked again of ``escalate_to``, an
        ordinary request under its own key (a rerun finds both answers stored and pays nothing). The line
        reports the second answer and what both cost; if the second cannot be had (it failed, the run is
        stopping, the budget is spent), the first stays the line's answer and a rerun tries again."""
        assert request.escalate_to is not None
        provider, model = request.escalate_to.split(":", 1)
        bigger = replace(request, provider=provider, model=model, fallback=(), escalate_on=(), escalate_to=None)
        second = await self._answer_another(bigger, self.key_of(bigger))
        if isinstance(second, _Skipped) or not second.ok:
            return first
        if self.on_event is not None:
            moved = {"from": first.answered_by, "to": bigger.model_ref, "reason": reason}
            self.on_event({"event": "escalate", "line": request.line, "id": request.id, **moved})
        both = None if first.cost_usd is None or second.cost_usd is None else first.cost_usd + second.cost_usd
        return replace(
            second,
            model=request.model_ref,
            attempts=first.attempts + second.attempts,
            cost_usd=both,
            cached=first.cached and second.cached,
            escalated=reason,
        )

    async def _fall_back(self, request: Request, key: str) -> Result | _Skipped:
        """A line whose route has a ``fallback``: its model, then each fallback model in turn, each under
        its own key, moving on only after a failure another model may not share (``model_failed``).
        Each model of the chain is an ordinary request, so coalescing, leases, the budget and the store
        work as for any line; the chain's later keys are looked up before the first call, so a rerun
        finds an answer an earlier run's fallback paid for and calls nothing."""
        chain = [(request, key)]
        for at in range(len(request.fallback)):
            alternate = request.ask_instead(at)
            chain.append((alternate, self.key_of(alternate)))
        if self.store is not None and self.options.cache_mode in ("normal", "only"):
            for alternate, alternate_key in chain[1:]:
                entry = self.store.get(alternate_key)
                if entry is not None:
                    return _asked_for(request, self._hit(alternate, alternate_key, entry), 0)
        attempts = 0
        for alternate, alternate_key in chain:
            result = await (self._answer_another if alternate is not request else self._answer)(
                alternate, alternate_key
            )
            if isinstance(result, _Skipped):
                return result
            attempts += result.attempts
            if result.ok or not alternate.fallback or not model_failed(result.error or {}):
                return _asked_for(request, result, attempts)
            if self.on_event is not None:
                moved = {"from": alternate.model_ref, "to": alternate.fallback[0], "error": result.error}
                self.on_event({"event": "fallback", "line": request.line, "id": request.id, **moved})
        raise AssertionError("the last model of a chain has no fallback")  # pragma: no cover

    async def _answer_another(self, request: Request, key: str) -> Result | _Skipped:
        """``_answer`` for a key the producer never saw (a fallback's, an escalation's). Leased first,
        as the producer leases a chunk's misses: an unleased key would be taken for one another run
        holds, and this run would wait for the leases' next poll before calling it."""
        if self.leases is not None and key not in self._in_flight:
            try:
                self.leases.take([key])  # released after, as any lease, if the key turns out stored
            except CacheError as exc:
                self._store_failed(exc)
                return _SKIPPED
        return await self._answer(request, key)

    async def _answer(self, request: Request, key: str) -> Result | _Skipped:
        try:
            return await self._answer_once(request, key)
        except CacheError as exc:  # a lookup or a lease failed: the store went away
            self._store_failed(exc)
            return _SKIPPED

    def _store_failed(self, exc: CacheError) -> None:
        self.stop(f"{exc} — stopping so that no more answers are paid for and lost", StopReason.FATAL)

    async def _answer_once(self, request: Request, key: str) -> Result | _Skipped:
        try:
            while True:
                decided = self._decide(request, key)
                if decided is not None:
                    return decided if isinstance(decided, (Result, _Skipped)) else await decided
                # Another run holds the key: its answer will land in the store, or the key comes
                # back to this run (its call failed, it died, or this run is stopping): decide afresh.
                # Or this run holds as many keys as it may, and the key waits its turn here: that is
                # not waiting on another run, and the display must not say so.
                assert self.leases is not None
                elsewhere = not self.leases.queued(key)
                self.stats.waiting += elsewhere
                try:
                    entry = await self.leases.wait(key)
                finally:
                    self.stats.waiting -= elsewhere
                if entry is not None:
                    return self._hit(request, key, entry)
        finally:
            # Not called here after all, or failed: free for other runs (a stopping run frees all
            # of its leases at once when it ends).
            if self.leases is not None:
                self.leases.forget(key)
                if key not in self._in_flight and not self._stopping:
                    self.leases.release([key])

    def _decide(self, request: Request, key: str) -> Result | _Skipped | Awaitable[Result | _Skipped] | None:
        """What to do with a miss now, with no ``await`` between the checks and the registration
        of a call in flight (so one run never calls one key twice): a result, the call to await,
        or None when another run holds the key."""
        mode = self.options.cache_mode
        pending = self._in_flight.get(key)
        if pending is not None:
            return self._coalesce(request, key, pending)
        if self.store is not None and (mode == "normal" or (mode == "refresh" and key in self._refreshed)):
            # The chunk lookup may be stale: an identical call can have finished since.
            entry = self.store.get(key)
            if entry is not None:
                return self._hit(request, key, entry)
        if mode == "only":
            return _error(request, key, CallError("permanent", "CacheMiss", "not in the cache (--cache-only)"), 0)
        if self._stopping:
            return _SKIPPED
        if self.leases is not None and key not in self.leases.held:
            return None
        future: asyncio.Future[CacheEntry] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_exception)
        self._in_flight[key] = future
        return self._call_once(request, key, future)

    async def _coalesce(self, request: Request, key: str, pending: asyncio.Future[CacheEntry]) -> Result | _Skipped:
        await asyncio.wait([pending])  # never raises for the other call's outcome
        if not pending.cancelled():
            failure = pending.exception()
            if failure is None:
                return self._hit(request, key, pending.result(), coalesced=True)
            # The identical call failed after its retries: so would this one.
            assert isinstance(failure, CallError)
            self.stats.coalesced += 1
            return _error(request, key, failure, 0, hit="duplicate")
        # The other call never ran (the run is stopping): decide afresh.
        return await self._answer(request, key)

    async def _call_once(self, request: Request, key: str, future: asyncio.Future[CacheEntry]) -> Result | _Skipped:
        try:
            assert self.executor is not None, "a run with misses needs an executor"
            outcome = await self.executor.execute(Call(request, key))
            return await self._settle(request, key, future, outcome)
        finally:
            self._in_flight.pop(key, None)
            if not future.done():
                future.cancel()

    async def _settle(
        self, request: Request, key: str, future: asyncio.Future[CacheEntry], outcome: Outcome
    ) -> Result | _Skipped:
        """What the executor's outcome means for the line, and for the run."""
        if isinstance(outcome, NotStarted):
            if outcome.reason is not None:
                self.stop(outcome.message, outcome.reason)
            return _SKIPPED
        if outcome.attempts:  # a call was made: a miss, as the executor counts calls
            self._lookups(request).misses += 1
        await self._keep_unclaimed()
        if isinstance(outcome, Failed):
            future.set_exception(outcome.error)
            # A model that is gone is not fatal to a line that has another to ask (its route's fallback).
            if outcome.error.kind == "fatal" and not (request.fallback and model_failed(outcome.error.to_dict())):
                self.stop(outcome.error.message, StopReason.FATAL)
            return _error(request, key, outcome.error, outcome.attempts)
        assert isinstance(outcome, Answered)
        if outcome.cost_usd is not None:
            spent = self.stats.spent_by_route.setdefault(request.route, {})
            spent[request.model_ref] = spent.get(request.model_ref, 0.0) + outcome.cost_usd
        material = key_material(request, self.destination.key_endpoint(request.provider))
        entry = await self._keep(key, material, outcome)
        if self.options.cache_mode == "refresh":
            self._refreshed.add(key)
        future.set_result(entry)
        return Result(
            line=request.line,
            id=request.id,
            key=key,
            status="ok",
            cached=False,
            model=request.model_ref,
            answered_by=request.model_ref,
            metadata=request.metadata,
            response=outcome.response,
            usage=outcome.usage,
            latency_ms=outcome.latency_ms,
            attempts=outcome.attempts,
            cost_usd=outcome.cost_usd,
            via=outcome.via,
        )


    async def _keep(self, key: str, material: dict[str, Any], outcome: Answered) -> CacheEntry:
        """A paid answer into the store, before anything else happens with it."""
        entry = make_entry(
            key=key,
            request=material,
            response=outcome.response,
            stored_at=self.wall_clock(),
            usage=outcome.usage,
            latency_ms=outcome.latency_ms,
            cost_usd=outcome.cost_usd,
            via=outcome.via,
        )
        if self._writes is not None and cacheable(outcome.response):
            tag = self.destination.tag_prefix + f"{material['provider']}:{material['model']}"
            failed = await self._writes.put(key, entry, tag)
            if failed is not None:
                self._store_failed(failed)
        return entry

    async def _keep_unclaimed(self) -> None:
        """Answers no line of this run asked for (a batch job's lines that the input, changed since
        the job went out, no longer has): paid for, so stored under their own keys. Without a store
        they are not taken, and the executor leaves their job pending for a later run."""
        if self.executor is None or self._writes is None:
            return
        for found in self.executor.unclaimed():
            await self._keep(found.key, found.request, found.answer)
            self.stats.unclaimed_kept += 1

def _error(request: Request, key: str, exc: CallError, attempts: int, *, hit: str | None = None) -> Result:
    return Result(
        line=request.line,
        id=request.id,
        key=key,
        status="error",
        cached=False,  # as it always was for errors; ``hit`` tells a failed duplicate apart
        hit=hit,
        model=request.model_ref,
        metadata=request.metadata,
        attempts=attempts,
        error=exc.to_dict(),
    )


def _asked_for(request: Request, result: Result, attempts: int) -> Result:
    """A chain's result as the line's: the model it asked for, beside ``answered_by`` and the key of the
    one that answered (where its answer is stored), and every attempt the chain made in this run."""
    return replace(result, model=request.model_ref, attempts=attempts)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A failed call's future may have no waiter; reading the exception keeps asyncio quiet.
    if not future.cancelled():
        future.exception()
