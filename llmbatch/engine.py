"""The run: requests in, results out in input order, each answer paid for at most once.

A library with no CLI inside. For each request, in this order:

1. a cache hit is the result;
2. the same key already in flight in this run: wait for that call (duplicates cost one call);
3. otherwise call the provider (under the concurrency limit, retried by the policy), **store the
   answer in the cache the moment it arrives**, and only then make it a result.

Memory does not grow with the file: requests are pulled lazily from an iterator and at most
``window`` of them are held at once (answered or not yet written). Results leave through
``sink`` strictly in input order, as soon as the order allows. Cache lookups are made a chunk at
a time, so a mostly-cached rerun does not pay per-line overhead.

A fatal failure (bad API key, unknown model), the budget, or :meth:`Engine.stop` ends the run
early: no new call starts, calls in flight finish and are stored, results are written up to the
first line that was not answered, and ``RunStats.stop_reason`` says why (it decides the exit code).

Progress is reported through :class:`RunStats`, a plain object of counters that the display
reads a few times a second (cheaper than an event per line on a 100,000-line rerun). Lines are
counted as they are answered (``done``), whatever their place in the output (``written``).

Where the keys' endpoint comes from: the provider's :class:`~llmbatch.provider.Destination`, the
same value that decides where its calls go, so a local server's answers can never be filed under
a real provider's keys. A run without a provider (answers from the cache only) is given one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal, Protocol

from llmbatch import answers
from llmbatch.cache import ResponseCache
from llmbatch.errors import CacheError
from llmbatch.keys import request_key
from llmbatch.leases import Leases
from llmbatch.limits import Budget, Governor, LimitSettings, estimate_split
from llmbatch.pricing import call_cost, estimate_cost, format_usd
from llmbatch.prompts import Request
from llmbatch.provider import CallError, Destination, Reply
from llmbatch.results import Result
from llmbatch.retry import RetryPolicy

__all__ = ["CacheMode", "Engine", "Provider", "RunOptions", "RunStats", "StopReason"]

CacheMode = Literal["normal", "refresh", "off", "only"]

#: Requests whose keys are looked up in the cache together.
LOOKUP_CHUNK = 256
#: The longest a derived per-attempt timeout can be (without --timeout): ten minutes.
MAX_DERIVED_TIMEOUT_S = 600.0


class Provider(Protocol):
    """What the engine needs from a provider (``provider.AnyLLMProvider`` in production,
    ``workers.WorkerPool`` for calls made by child processes)."""

    #: Where the calls go; the keys record its endpoint.
    destination: Destination

    def prepare(self, request: Request) -> Awaitable[None] | None:
        """Get ready to send ``request`` (create the client); raise CallError if it cannot be
        sent at all (no API key, unknown provider). Nothing is sent, so nothing is counted.
        May be a coroutine (``workers.WorkerPool`` asks its children) or a plain function."""

    async def complete(self, request: Request, *, timeout_s: float) -> Reply: ...

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API keys in use: redacted from anything stored or written."""

    @property
    def lost(self) -> int:
        """Worker processes that died during the run (0 for a provider in this process)."""

    async def aclose(self) -> None: ...


class StopReason(enum.Enum):
    """Why a run ended before its last line; it decides the exit code."""

    INTERRUPTED = "interrupted"  # a signal (Ctrl-C, SIGTERM, SIGHUP): calls in flight were finished
    BUDGET = "budget"  # --max-cost: the next call could not fit, even alone
    FATAL = "fatal"  # what every line would share (a bad key, an unknown model), or nowhere to keep answers
    ERROR = "error"  # something around the calls failed (the results file, a changed input)


@dataclass(frozen=True, slots=True)
class RunOptions:
    concurrency: int = 16
    timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: normal: read and write; refresh: ignore hits, overwrite; off: neither; only: never call.
    cache_mode: CacheMode = "normal"
    ttl_s: float | None = None
    #: Requests held in memory at most; default 16 x concurrency, at least 1024.
    window: int | None = None
    #: The timeout was not given: requests with a large max_tokens get more time.
    timeout_auto: bool = False
    #: Pacing per provider:model (config file, command line) and for models not listed.
    limits: dict[str, LimitSettings] = field(default_factory=dict)
    default_limits: LimitSettings = field(default_factory=LimitSettings)
    learn_from_headers: bool = True
    #: --max-cost: no call starts that could take spending past this many USD.
    max_cost_usd: float | None = None

    def effective_window(self) -> int:
        return self.window or max(1024, 16 * self.concurrency)


@dataclass
class RunStats:
    """Live counters of one run. ``hits`` counts lines answered from the cache, ``coalesced``
    lines that waited for an identical call in flight, ``calls`` calls started (misses).
    ``done`` counts lines answered, in whatever order; ``written`` those written in input order."""

    total: int | None = None
    read: int = 0  # lines taken from the input so far
    done: int = 0
    ok: int = 0
    errors: int = 0
    hits: int = 0
    coalesced: int = 0
    calls: int = 0
    retries: int = 0
    in_flight: int = 0
    waiting: int = 0  # lines waiting for an answer another run sharing the cache is making
    prompt_tokens: int = 0
    completion_tokens: int = 0
    written: int = 0
    truncated: int = 0  # lines whose answer was cut off at max_tokens
    rate_limited: int = 0  # 429s received
    throttled: bool = False  # a budget is paused after a 429 or an exhausted window
    pace_rpm: int | None = None  # the limits being paced at, when known
    pace_tpm: int | None = None
    concurrency_limit: int | None = None  # calls currently allowed in flight (after backoff)
    spent_usd: float = 0.0  # what this run's calls cost (priced calls only)
    saved_usd: float = 0.0  # what the lines answered from the cache cost when first paid
    deduplicated_usd: float = 0.0  # what the duplicates that shared a call would have cost
    unpriced_calls: int = 0  # calls whose model genai-prices does not know
    unpriced_models: set[str] = field(default_factory=set)
    workers_lost: int = 0  # worker processes that died during the run (their calls went to the others)
    started_at: float = 0.0
    finished_at: float | None = None
    stopped: str | None = None  # why the run ended early, if it did, for people ...
    stop_reason: StopReason | None = None  # ... and for the exit code

    def elapsed(self, now: float) -> float:
        return (self.finished_at or now) - self.started_at

    @property
    def complete(self) -> bool:
        return self.stopped is None and (self.total is None or self.written == self.total)

    @property
    def fatal(self) -> bool:
        return self.stop_reason in (StopReason.FATAL, StopReason.ERROR)

    @property
    def budget_reached(self) -> bool:
        return self.stop_reason is StopReason.BUDGET


class _Skipped:
    """A request that never started because the run was stopping."""


_SKIPPED = _Skipped()
_END = object()


def _usage_tokens(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class Engine:
    """One run. Build it, then ``await engine.run(requests)``; ``stop()`` may be called meanwhile."""

    def __init__(
        self,
        *,
        provider: Provider | None,
        cache: ResponseCache | None,
        options: RunOptions = RunOptions(),
        sink: Callable[[Result], None],
        flush: Callable[[], None] = lambda: None,
        stats: RunStats | None = None,
        destination: Destination | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``destination``: only for a run without a provider (answers from the cache alone);
        otherwise it is the provider's own. ``on_event``: told of each retry, 429, failed line and
        stop as it happens, as a JSON-ready dict (``llmbatch run -v`` and ``--log``)."""
        if provider is not None and destination is not None and destination != provider.destination:
            raise ValueError("the keys' destination must be the provider's own: give one or the other")
        self.provider = provider
        self.destination = provider.destination if provider is not None else destination or Destination.of()
        self.cache = cache if options.cache_mode != "off" else None
        self.options = options
        self.sink = sink
        self.flush = flush
        self.on_event = on_event
        self.stats = stats or RunStats()
        self.sleep = sleep
        self.clock = clock
        self.wall_clock = wall_clock
        self._semaphore = asyncio.Semaphore(options.concurrency)
        self.governor = Governor(
            concurrency=options.concurrency,
            settings=options.limits,
            default=options.default_limits,
            learn_from_headers=options.learn_from_headers,
            clock=clock,
            sleep=self._sleep,
            stopping=lambda: self._stopping,
        )
        self._in_flight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # --refresh must call each key once per run, however far apart its duplicates are.
        self._refreshed: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._committed_usd = 0.0  # --max-cost: estimates of the calls that hold a reservation ...
        self._reservations = 0  # ... and how many they are
        self._budget_freed = asyncio.Event()  # a reservation was settled: waiters look again
        self._stopping = False
        self._stopped = asyncio.Event()
        self._outstanding = 0  # items queued or being awaited by the consumer, not yet emitted
        self._answered = False  # some call got an HTTP answer: the server is there
        #: The longest timeout any attempt has had: no call in flight outlives it (Ctrl-C's grace).
        self.longest_timeout_s = options.timeout_s
        self._unreachable = 0  # connection failures in a row before any answer
        self._gap = False
        #: Answers waiting for the next cache write (see _store), each with the future its call awaits.
        self._writes: list[tuple[str, dict[str, Any], str, asyncio.Future[CacheError | None]]] = []
        #: Which run calls which key, when runs share the cache (only when calls can be made).
        self.leases: Leases | None = None
        if provider is not None and options.cache_mode == "normal" and hasattr(self.cache, "lease"):
            # A store shared by several runs offers leases (ResponseCache); one private to this run
            # (a dict in a notebook) needs none.
            self.leases = Leases(self.cache, clock=wall_clock, sleep=sleep)  # type: ignore[arg-type]

    def _secrets(self) -> tuple[str, ...]:
        """The API keys in use: never stored, never written (a provider may echo one back)."""
        return self.provider.secrets if self.provider is not None else ()

    def key_of(self, request: Request) -> str:
        return request_key(request, self.destination.key_endpoint(request.provider))

    # -- control ------------------------------------------------------------------------------

    def stop(self, reason: str, kind: StopReason = StopReason.INTERRUPTED) -> None:
        """Start no new call; let calls in flight finish; write results up to the first gap.
        The first stop's reason stands."""
        if not self._stopping:
            self._stopping = True
            self._stopped.set()  # wakes requests sleeping before a retry or for the pace
            self._budget_freed.set()
            self.governor.wake_all()
            if self.leases is not None:
                self.leases.stop_waiting()
            self.stats.stopped = reason
            self.stats.stop_reason = kind
            self._event({"event": "stop", "reason": kind.value, "message": reason})

    async def _sleep(self, seconds: float) -> None:
        """The retry wait, cut short when the run stops: a 401 elsewhere must not leave us
        sitting out a 45 s Retry-After before exiting."""
        if self._stopping:
            return
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        stopper = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    # -- the run ------------------------------------------------------------------------------

    async def run(self, requests: Iterable[Request]) -> RunStats:
        if not self.stats.started_at:  # runner.HitPrefix may have begun the run while validating
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
            if self.cache is not None:
                # Lifetime counters, not paid work: a full disk here must not hide the run's outcome.
                with contextlib.suppress(CacheError):
                    self.cache.record_lookups(self.stats.hits, self.stats.calls, saved_usd=self.stats.saved_usd)
        return self.stats

    async def _produce(self, requests: Iterator[Request], queue: asyncio.Queue[Any]) -> None:
        try:
            while not self._stopping:
                chunk, found = self._keyed_lookup(list(islice(requests, LOOKUP_CHUNK)))
                if not chunk:
                    break
                if self.leases is not None:  # the chunk's misses, for this run to call (one transaction)
                    self.leases.take(k for _, k in chunk if k not in found and k not in self._in_flight)
                for request, key in chunk:
                    if self._stopping:
                        break
                    self.stats.read += 1
                    entry = found.get(key)
                    if entry is not None:
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
        except BaseException:
            await queue.put(_END)  # let the consumer finish what is queued; run() re-raises this
            raise
        await queue.put(_END)

    def answer_from_cache(self, requests: list[Request]) -> int:
        """Emit the results of the leading requests that are cache hits, up to the first that is
        not; return how many there were. Nothing is sent: this is for the start of a run only."""
        keyed, found = self._keyed_lookup(requests)
        for answered, (request, key) in enumerate(keyed):
            entry = found.get(key)
            if entry is None:
                return answered
            self.stats.read += 1
            hit = self._hit(request, key, entry)
            self._count(hit)
            self._emit(hit)
        return len(keyed)

    def _keyed_lookup(self, requests: list[Request]) -> tuple[list[tuple[Request, str]], dict[str, dict[str, Any]]]:
        """Each request with its key, and the stored entries found for those keys (one batch)."""
        keyed = [(r, self.key_of(r)) for r in requests]
        if not keyed or self.cache is None or self.options.cache_mode == "refresh":
            return keyed, {}
        return keyed, self.cache.get_many([k for _, k in keyed])

    async def _consume(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            if queue.empty():
                self.flush()  # everything ready is out; let a reader see it before we wait
            item = await queue.get()
            if item is _END:
                break
            result = await item if isinstance(item, asyncio.Task) else item
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

    def _hit(self, request: Request, key: str, entry: dict[str, Any], *, coalesced: bool = False) -> Result:
        # Entries stored before prices were recorded are priced from their usage.
        cost = (
            entry["cost_usd"] if "cost_usd" in entry else call_cost(request.provider, request.model, entry.get("usage"))
        )
        if coalesced:
            self.stats.coalesced += 1
            if cost is not None:
                self.stats.deduplicated_usd += cost
        else:
            self.stats.hits += 1
            if cost is not None:
                self.stats.saved_usd += cost
        return Result(
            cost_usd=cost,
            line=request.line,
            id=request.id,
            key=key,
            status="ok",
            cached=True,
            hit="duplicate" if coalesced else "exact",
            model=request.model_ref,
            metadata=request.metadata,
            response=entry.get("response"),
            usage=entry.get("usage"),
            latency_ms=entry.get("latency_ms"),
            attempts=0,
        )

    async def _resolve(self, request: Request, key: str) -> Result | _Skipped:
        result = await self._answer(request, key)
        if result is not _SKIPPED:
            assert isinstance(result, Result)
            self._count(result)
        return result

    async def _answer(self, request: Request, key: str) -> Result | _Skipped:
        try:
            while True:
                decided = self._decide(request, key)
                if decided is not None:
                    return decided if isinstance(decided, (Result, _Skipped)) else await decided
                # Another run holds the key: its answer will land in the cache, or the key comes back
                # to this run (its call failed, it died, or this run is stopping): decide afresh.
                assert self.leases is not None
                self.stats.waiting += 1
                try:
                    entry = await self.leases.wait(key)
                finally:
                    self.stats.waiting -= 1
                if entry is not None:
                    return self._hit(request, key, entry)
        finally:
            # Not called here after all, or failed: free for other runs (a stopping run frees all
            # of its leases at once when it ends).
            if self.leases is not None and key not in self._in_flight and not self._stopping:
                self.leases.release([key])

    def _decide(self, request: Request, key: str) -> Result | _Skipped | Awaitable[Result | _Skipped] | None:
        """What to do with a miss now, with no ``await`` between the checks and the registration
        of a call in flight (so one run never calls one key twice): a result, the call to await,
        or None when another run holds the key."""
        mode = self.options.cache_mode
        pending = self._in_flight.get(key)
        if pending is not None:
            return self._coalesce(request, key, pending)
        if self.cache is not None and (mode == "normal" or (mode == "refresh" and key in self._refreshed)):
            # The chunk lookup may be stale: an identical call can have finished since.
            entry = self.cache.get(key)
            if entry is not None:
                return self._hit(request, key, entry)
        if mode == "only":
            return self._error(request, key, CallError("permanent", "CacheMiss", "not in the cache (--cache-only)"), 0)
        if self._stopping:
            return _SKIPPED
        if self.leases is not None and key not in self.leases.held:
            return None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_exception)
        self._in_flight[key] = future
        return self._call_once(request, key, future)

    async def _coalesce(self, request: Request, key: str, pending: asyncio.Future[dict[str, Any]]) -> Result | _Skipped:
        await asyncio.wait([pending])  # never raises for the other call's outcome
        if not pending.cancelled():
            failure = pending.exception()
            if failure is None:
                return self._hit(request, key, pending.result(), coalesced=True)
            # The identical call failed after its retries: so would this one.
            assert isinstance(failure, CallError)
            self.stats.coalesced += 1
            return self._error(request, key, failure, 0, hit="duplicate")
        # The other call never ran (the run is stopping): decide afresh.
        return await self._answer(request, key)

    async def _call_once(self, request: Request, key: str, future: asyncio.Future[dict[str, Any]]) -> Result | _Skipped:
        try:
            return await self._call(request, key, future)
        finally:
            self._in_flight.pop(key, None)
            if not future.done():
                future.cancel()

    async def _call(self, request: Request, key: str, future: asyncio.Future[dict[str, Any]]) -> Result | _Skipped:
        assert self.provider is not None, "a run with cache misses needs a provider"
        attempts = 0
        retrying = self.options.retry.retrying(sleep=self._sleep, on_retry=lambda state: self._on_retry(request, state))
        counted = False
        try:
            async for attempt in retrying:
                with attempt:
                    # Stopping means no new attempt, first or retry: nothing unpaid is lost,
                    # and the rerun picks this line up.
                    if self._stopping:
                        return _SKIPPED
                    ready = self.provider.prepare(request)
                    if ready is not None:
                        await ready
                    budget = self.governor.budget(request.model_ref)
                    self._publish_pace()  # a configured pace shows before the first call waits for it
                    reserved = await self._reserve_budget(request, budget)
                    if reserved is None:
                        return _SKIPPED  # the budget is spent (or the run stopped): the rerun picks it up
                    try:
                        # The model's pace first, then a slot of --concurrency: a call waiting for
                        # a slowly paced model must not hold a slot another model could use.
                        tokens = sum(estimate_split(request.messages, request.params, budget.avg_completion))
                        if not await self.governor.acquire(request.model_ref, tokens):
                            return _SKIPPED  # stopped while waiting for the pace
                        async with self._semaphore:
                            if self._stopping:
                                await self.governor.unused(request.model_ref)
                                return _SKIPPED
                            if not counted and (entry := self._stored_meanwhile(key)) is not None:
                                # Another run sharing the cache answered it while we waited our turn.
                                await self.governor.unused(request.model_ref)
                                future.set_result(entry)
                                return self._hit(request, key, entry)
                            if not counted:
                                self.stats.calls += 1
                                counted = True
                            attempts += 1
                            reply, cost = await self._attempt(request, tokens)
                    finally:
                        self._settle_budget(reserved)
                    # A 200 that is not an answer fails this attempt (retried when transient); an
                    # answer is made safe to keep before anything else sees it.
                    failure = answers.problem(reply.response)
                    if failure is not None:
                        raise failure
                    response = answers.keepable(reply.response, self._secrets())
        except CallError as exc:
            future.set_exception(exc)
            self._event(_line_event("error", request, exc, attempt=attempts))
            if exc.kind == "fatal":
                self.stop(exc.message, StopReason.FATAL)
            return self._error(request, key, exc, attempts)

        usage = response.get("usage")
        latency_ms = round(reply.latency_s * 1000, 1)
        entry = {
            "key": key,
            "stored_at": self.wall_clock(),
            "provider": request.provider,
            "model": request.model,
            "endpoint": self.destination.key_endpoint(request.provider),
            "usage": usage,
            "latency_ms": latency_ms,
            "cost_usd": cost,
            "response": response,
        }
        # Paid for: into the cache before anything else happens with it.
        if self.cache is not None and answers.cacheable(response):
            failed = await self._store(key, entry, self.destination.tag_prefix + request.model_ref)
            if failed is not None:
                self.stop(f"{failed} — stopping so that no more answers are paid for and lost", StopReason.FATAL)
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
            metadata=request.metadata,
            response=response,
            usage=usage,
            latency_ms=latency_ms,
            attempts=attempts,
            cost_usd=cost,
        )

    async def _store(self, key: str, entry: dict[str, Any], tag: str) -> CacheError | None:
        """Write ``entry`` to the cache; return only once it is there (or could not be put there).

        Answers that arrive together are written together: the first one schedules a write for the
        end of this turn of the event loop, and every answer that arrives before then joins it.
        One transaction per turn instead of one per answer (~80 µs of CPU each, ~30 in a batch)
        adds no waiting when the run is quiet, and batches grow by themselves when it is busy.
        """
        done: asyncio.Future[CacheError | None] = asyncio.get_running_loop().create_future()
        self._writes.append((key, entry, tag, done))
        if len(self._writes) == 1:
            asyncio.get_running_loop().call_soon(self._write_batch)
        return await done

    def _write_batch(self) -> None:
        writes, self._writes = self._writes, []
        assert self.cache is not None
        ttl_s = self.options.ttl_s
        try:
            self.cache.put_many([(key, entry, tag) for key, entry, tag, _ in writes], ttl_s=ttl_s)
            outcomes: list[CacheError | None] = [None] * len(writes)
        except Exception:  # noqa: BLE001 - whatever it was, every call waiting here must hear back
            # The batch was rolled back: store what can be stored one by one, so that one answer
            # the disk (or the JSON encoder) refuses does not take the others with it.
            outcomes = []
            for key, entry, tag, _ in writes:
                try:
                    self.cache.put(key, entry, tag=tag, ttl_s=ttl_s)
                    outcomes.append(None)
                except CacheError as exc:
                    outcomes.append(exc)
                except Exception as exc:  # noqa: BLE001 - e.g. a number too large for JSON
                    outcomes.append(CacheError(f"cannot store an answer in the cache: {exc}"))
        if self.leases is not None:
            with contextlib.suppress(CacheError):  # a lease not given up runs out on its own
                self.leases.release(key for (key, *_), outcome in zip(writes, outcomes, strict=True) if outcome is None)
        for (*_, done), outcome in zip(writes, outcomes, strict=True):
            if not done.done():
                done.set_result(outcome)

    def _stored_meanwhile(self, key: str) -> dict[str, Any] | None:
        if self.cache is None or self.options.cache_mode != "normal":
            return None
        return self.cache.get(key)

    # -- --max-cost ---------------------------------------------------------------------------

    async def _reserve_budget(self, request: Request, budget: Budget) -> float | None:
        """--max-cost: reserve this call's estimated cost, so that no call starts that could take
        spending past the budget, counting every call in flight at its estimate. Near the budget,
        fewer calls run at once: a call that does not fit waits for one in flight to finish (its
        real cost, and this run's answers so far, make the next estimate). Only when it cannot fit
        even with nothing in flight does the run stop. The amount reserved (0.0 without a budget),
        or None when the call must not start."""
        limit = self.options.max_cost_usd
        if limit is None:
            return 0.0
        while True:
            # Estimated afresh on each look: the output is the average of this run's own answers
            # for the model once some have come back, not the 256 tokens assumed before any.
            tokens_in, tokens_out = estimate_split(request.messages, request.params, budget.avg_completion)
            estimate = estimate_cost(request.provider, request.model, tokens_in, tokens_out)
            if estimate is None:
                self.stop(f"no price known for {request.model_ref}: --max-cost cannot be kept", StopReason.FATAL)
                return None
            if self._stopping:
                return None
            if self.stats.spent_usd + self._committed_usd + estimate <= limit:
                break
            if self._reservations == 0:
                self.stop(
                    f"the budget of {format_usd(limit)} is reached ({format_usd(self.stats.spent_usd)} spent; the "
                    f"next call would cost about {format_usd(estimate)})",
                    StopReason.BUDGET,
                )
                return None
            self._budget_freed.clear()
            await self._budget_freed.wait()
        self._reservations += 1
        self._committed_usd += estimate
        return estimate

    def _settle_budget(self, reserved: float) -> None:
        """A call's reservation ends (its real cost, if any, is already in ``spent_usd``)."""
        if reserved:
            self._reservations -= 1
            # Counted, not compared with zero: float sums leave crumbs (5e-20) that never reach 0.
            self._committed_usd = self._committed_usd - reserved if self._reservations else 0.0
            self._budget_freed.set()

    # -- one attempt --------------------------------------------------------------------------

    async def _attempt(self, request: Request, estimate: int) -> tuple[Reply, float | None]:
        """One call, with the governor told how it ended (it paces and backs off from that), and
        what it cost, counted in the run's spending as the answer arrives."""
        assert self.provider is not None
        self.stats.in_flight += 1
        try:
            timeout_s = self._timeout_for(request)
            self.longest_timeout_s = max(self.longest_timeout_s, timeout_s)
            reply = await self.provider.complete(request, timeout_s=timeout_s)
        except CallError as exc:
            await self.governor.release(
                request.model_ref,
                status=exc.status_code,
                headers=exc.headers,
                estimated_tokens=estimate,
                actual_tokens=None,
                retry_after_s=exc.retry_after_s,
            )
            if exc.status_code == 429:
                self.stats.rate_limited += 1
            self._note_unreachable(request, exc)
            raise
        finally:
            self.stats.in_flight -= 1
            self._publish_pace()
        self._answered = True
        usage = reply.response.get("usage")
        prompt_tokens, completion_tokens = _usage_tokens(usage)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        cost = call_cost(request.provider, request.model, usage)
        if cost is None:
            self.stats.unpriced_calls += 1
            self.stats.unpriced_models.add(request.model_ref)
        else:
            self.stats.spent_usd += cost
        # What the call counted against the provider's token limit: OpenAI (and our simulator)
        # count max_tokens when it is set, whatever the answer used.
        cap = request.output_cap or 0
        await self.governor.release(
            request.model_ref,
            status=200,
            headers=reply.headers,
            estimated_tokens=estimate,
            actual_tokens=prompt_tokens + max(completion_tokens, cap) if usage else None,
            completion_tokens=completion_tokens if usage else None,
        )
        return reply, cost

    def _note_unreachable(self, request: Request, exc: CallError) -> None:
        """A server that has never answered and refuses every connection is not coming back in
        the next hour of retries: after a few such failures in a row, stop with one message."""
        if exc.status_code is not None:
            self._answered = True
        if self._answered or exc.type != "ConnectionError":
            self._unreachable = 0
            return
        self._unreachable += 1
        if self._unreachable >= max(3, min(self.options.concurrency, 10)):
            where = self.destination.api_base or self.destination.env.get(request.provider)
            where = where or f"the {request.provider} API"
            self.stop(
                f"cannot connect to {where} ({self._unreachable} attempts in a row failed): is it running?",
                StopReason.FATAL,
            )

    def _timeout_for(self, request: Request) -> float:
        """--timeout; by default, long generations get longer (a 4,000-token answer takes a while),
        up to a ceiling: a hung call must be abandoned some time, and Ctrl-C waits that long at most."""
        if not self.options.timeout_auto:
            return self.options.timeout_s
        cap = request.output_cap or 0
        return min(self.options.timeout_s + max(0, cap - 1000) / 50, MAX_DERIVED_TIMEOUT_S)

    def _publish_pace(self) -> None:
        rpm, tpm = self.governor.pace()
        self.stats.pace_rpm = rpm
        self.stats.pace_tpm = tpm
        self.stats.throttled = self.governor.throttled()
        self.stats.concurrency_limit = sum(int(b.limit) for b in self.governor.budgets.values()) or None

    def _on_retry(self, request: Request, state: Any) -> None:
        self.stats.retries += 1
        if self.on_event is not None:
            failure = state.outcome.exception() if state.outcome is not None else None
            wait_s = state.next_action.sleep if state.next_action is not None else None
            event = _line_event("retry", request, failure, attempt=state.attempt_number)
            self.on_event({**event, "wait_s": None if wait_s is None else round(wait_s, 3)})

    def _event(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _error(self, request: Request, key: str, exc: CallError, attempts: int, *, hit: str | None = None) -> Result:
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


def _line_event(kind: str, request: Request, failure: BaseException | None, *, attempt: int) -> dict[str, Any]:
    error = failure.to_dict() if isinstance(failure, CallError) else {"type": type(failure).__name__}
    return {
        "event": kind,
        "line": request.line,
        "id": request.id,
        "model": request.model_ref,
        "attempt": attempt,
        **error,
    }


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A failed call's future may have no waiter; reading the exception keeps asyncio quiet.
    if not future.cancelled():
        future.exception()
