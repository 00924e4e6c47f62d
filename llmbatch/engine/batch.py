"""The Batch-API executor: a run's misses answered by the providers' Batch APIs, at half price.

The second :class:`~llmbatch.engine.executor.Executor`. The resolver hands it calls as it hands
them to the live executor (only misses: hits and duplicates never get here); it gathers them into
jobs, submits, polls, and answers each call with an :class:`Answered` outcome as its job's output
is read, which the resolver stores before anything else happens with it.

- **Gathering.** Calls are collected until no new one has arrived for a few turns of the event loop
  (the resolver hands over everything its window holds at once, then waits), then grouped by
  ``provider:model`` (one model per job) and split under the provider's limits (requests, bytes
  of the input file; :data:`~llmbatch.providers.batch.LIMITS`, injectable).
- **Durable before the first poll.** Each job's record (:mod:`llmbatch.store.jobs`) is written
  before the provider is asked (``submitting``) and again with its batch id (``submitted``). A
  later run with the same destination attaches each call whose key a pending job holds to that
  job instead of submitting it again.
- **Failed lines** (the error file, Anthropic's ``errored``) are tried again in a later job, or
  live with ``fallback`` (``--batch-fallback live``), up to ``--max-retries``; a line that is not
  worth retrying (a 400) is a failed line at once. **Unfinished lines** of an expired or cancelled
  job go out again in a new job; the finished ones are answered.
- **Money.** Answers are priced at :data:`~llmbatch.pricing.BATCH_MULTIPLIER`; with ``--max-cost``
  a job is submitted only if what was spent plus every job still out at its estimate plus this
  one's estimate fits.
- **Waiting.** ``sleep`` and ``clock`` are injected: polls back off from ``poll_s[0]`` to
  ``poll_s[1]``. ``no_wait``: calls are answered ``NotStarted(PENDING)`` once their job is
  submitted (or found still running), and a rerun collects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmbatch.answers import keepable, problem
from llmbatch.engine.executor import Answered, Call, Executor, Failed, NotStarted, Outcome, Unclaimed, sleep_unless
from llmbatch.engine.options import RunOptions
from llmbatch.errors import CacheError
from llmbatch.keys import key_material
from llmbatch.limits import estimate_split
from llmbatch.model.stats import RunStats, StopReason
from llmbatch.pricing import BATCH_MULTIPLIER, call_cost, estimate_cost, format_usd
from llmbatch.providers.base import CallError
from llmbatch.providers.batch import LIMITS, BatchClient, JobLimits, JobState, LineOutcome, Submitted, batch_line
from llmbatch.store.jobs import JobBook, JobRecord

__all__ = ["BATCH_WINDOW", "BatchExecutor", "JobView", "custom_id_for"]

#: Requests the resolver holds at once in a batch run, and so the most one gathering puts into jobs.
#: Measured with tracemalloc at the moment of submission (prompts of ~260 characters, every line a
#: miss): 5,000 held cost 34 MB, 20,000 cost 102 MB (~5 KB each: the request, its task and future,
#: its key, its line of the job). A live run holds 1,024. 10,000 (~50 MB) keeps a batch run's memory
#: bounded as a live run's is; a bigger file simply makes more jobs, each still at half price.
BATCH_WINDOW = 10_000
#: A job's statuses (the provider's, or ours for a job given up) for which no poll comes next.
_NOT_POLLED = frozenset({"completed", "failed", "expired", "cancelled", "lost", "abandoned"})
#: Turns of the event loop with no new call before a gathering is submitted.
_SETTLE_TURNS = 3


def custom_id_for(key: str, index: int) -> str:
    """A ``custom_id`` both providers accept (Anthropic: at most 64 of ``[a-zA-Z0-9_-]``, which
    ``v1:`` and 64 hex digits are not): the line's place in the job and the key's digest cut to 48
    hex digits. The job record keeps the mapping back to the whole key, so the cut never matters."""
    digest = key.rsplit(":", 1)[-1]
    return f"r{index}-{digest[:48]}"


@dataclass
class JobView:
    """A job as the display shows it."""

    id: str
    batch_id: str | None
    model: str
    status: str
    total: int
    done: int = 0
    failed: int = 0
    submitted_at: float = 0.0  # wall clock
    next_poll_at: float | None = None  # wall clock


@dataclass
class _Job:
    record: JobRecord
    waiting: dict[str, Call] = field(default_factory=dict)  # custom_id -> the call it answers now
    settled: set[str] = field(default_factory=set)  # custom_ids whose outcome was given to the run
    #: custom_ids whose answer was kept as unclaimed (and counted as spent): a call for one that
    #: arrives later (the window had not reached its line) gets it without counting it again.
    counted: set[str] = field(default_factory=set)


class BatchExecutor:
    def __init__(
        self,
        client: BatchClient,
        book: JobBook,
        *,
        options: RunOptions | None = None,
        stats: RunStats | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        limits: dict[str, JobLimits] | None = None,
        no_wait: bool = False,
        fallback: Executor | None = None,
        poll_s: tuple[float, float] = (5.0, 60.0),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.book = book
        self.destination = client.provider.destination
        self.options = options or RunOptions()
        self.stats = stats or RunStats()
        self.on_event = on_event
        self.limits = {**LIMITS, **(limits or {})}
        self.no_wait = no_wait
        self.fallback = fallback
        self.poll_s = poll_s
        self.sleep = sleep
        self.clock = clock
        self.wall_clock = wall_clock
        self.longest_timeout_s = self.options.timeout_s
        #: Calls the resolver may hand over at once (its leases follow this): the run's window
        #: (--batch-window), so that a run leases no more keys ahead than it holds.
        self.wants = self.options.window or BATCH_WINDOW
        self._stopping = False
        self._stopped = asyncio.Event()
        self._futures: dict[str, asyncio.Future[Outcome]] = {}
        self._queue: list[Call] = []
        self._gathering: asyncio.Task[None] | None = None
        self._submitting: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._jobs: dict[str, _Job] = {}  # jobs this run waits on, by record id
        self._attempts: dict[str, int] = {}  # key -> times sent in this run (jobs and live)
        self._sent: set[str] = set()  # keys this run put into a job of its own
        self._retried: set[str] = set()  # keys counted in stats.retries
        self._committed_usd = 0.0  # estimates of the jobs out, for --max-cost
        self._unclaimed: list[Unclaimed] = []  # answers of lines no call waits for, until handed over
        # A pending job's keys, so that a rerun attaches instead of submitting again.
        self._pending: dict[str, tuple[JobRecord, str]] = {}
        self._read_records: set[str] = set()  # the records looked at for _pending
        self._look_for_pending()
        self.views: dict[str, JobView] = {}
        self.stats.batch_jobs = self.views

    def _look_for_pending(self) -> None:
        """Add the keys of pending jobs not seen yet to ``_pending``: at the start, and before each
        gathering is submitted, since another run (``--no-wait``, stopped, killed) may have
        submitted some of this run's misses meanwhile and let their leases go."""
        try:
            # Every record once at most: a later look parses only the records new since.
            records = list(self.book.all(skip=self._read_records | set(self._jobs)))
        except (CacheError, OSError):
            return  # looked at again before the next gathering
        endpoint = self._endpoint()
        for record in records:
            if record.state in ("submitted", "submitting"):
                if record.endpoint != endpoint:
                    continue  # another destination's: never this run's (and not worth remembering)
                for custom_id, key in record.ids.items():
                    self._pending.setdefault(key, (record, custom_id))
            self._read_records.add(record.id)  # collected, refused, lost: never pending again

    def _endpoint(self) -> str:
        # Keys record no endpoint for a provider's own API: a job is matched by provider too.
        return self.destination.namespace or self.destination.api_base or "default"

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.client.secrets

    @property
    def lost(self) -> int:
        return 0

    def unclaimed(self) -> list[Unclaimed]:
        found, self._unclaimed = self._unclaimed, []
        return found

    def stop(self) -> None:
        """No new job is submitted; every call still waiting is left for a rerun (its job, if
        submitted, is in the records and a rerun attaches to it)."""
        if self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        if self.fallback is not None:
            self.fallback.stop()
        for future in self._futures.values():
            if not future.done():
                future.set_result(NotStarted())

    async def aclose(self) -> None:
        # A submission under way finishes, so that its record gets its batch id.
        if self._submitting:
            await asyncio.gather(*self._submitting, return_exceptions=True)
        for task in (self._gathering, self._poller):
            if task is not None and not task.done():
                task.cancel()
        for job in self._jobs.values():
            # Collected only when every line of the job reached this run, and the run did not stop on
            # a failure (a store that refused answers): otherwise a later run must read it again.
            if not self.stats.fatal and job.settled >= set(job.record.ids) and not job.waiting and not self._unclaimed:
                job.record.state = "collected"
                # Not written: left pending, and a rerun reads its output again (free), never resubmits it.
                with contextlib.suppress(CacheError):
                    self.book.write(job.record)
        # The fallback's provider is the run's own, closed with the run (app.run.Started.close).

    # -- calls in --------------------------------------------------------------------------------

    async def execute(self, call: Call) -> Outcome:
        if self._stopping:
            return NotStarted()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._futures[call.key] = future
        try:
            pending = self._pending.pop(call.key, None)
            if pending is not None:
                self._attach(pending[0], pending[1], call)
            else:
                self._enqueue(call)
            return await future
        finally:
            self._futures.pop(call.key, None)

    def _answer(self, key: str, outcome: Outcome) -> None:
        future = self._futures.get(key)
        if future is not None and not future.done():
            future.set_result(outcome)

    def _enqueue(self, call: Call) -> None:
        self._queue.append(call)
        if self._gathering is None:
            self._gathering = asyncio.create_task(self._gather())

    def _attach(self, record: JobRecord, custom_id: str, call: Call) -> None:
        job = self._jobs.get(record.id)
        if job is None:
            job = self._jobs[record.id] = _Job(record)
            if record.estimate_usd is not None:  # out already: --max-cost counts it until it is read
                self._committed_usd += record.estimate_usd
            self._view(record)
            self._event({"event": "batch_attached", "job": record.id, "batch_id": record.batch_id})
        job.waiting[custom_id] = call
        self._attempts[call.key] = self._attempts.get(call.key, 0) + 1  # sent once, by the earlier run
        self._ensure_poller()

    async def _gather(self) -> None:
        seen = -1
        while len(self._queue) != seen:
            seen = len(self._queue)
            for _ in range(_SETTLE_TURNS):
                await asyncio.sleep(0)  # a turn of the loop, not a wait: not the injected sleep
        calls, self._queue = self._queue, []
        self._gathering = None
        self._look_for_pending()
        fresh = []
        for call in calls:
            pending = self._pending.pop(call.key, None)
            if pending is not None:
                self._attach(pending[0], pending[1], call)  # another run's job holds it: no second payment
            else:
                fresh.append(call)
        if fresh:
            self._background(self._submit_all(fresh))

    # -- jobs out --------------------------------------------------------------------------------

    async def _submit_all(self, calls: list[Call]) -> None:
        groups: dict[tuple[str, str], list[Call]] = {}
        submitted: list[_Job] = []
        for call in calls:
            groups.setdefault((call.request.provider, call.request.model), []).append(call)
        for (provider, model), group in groups.items():
            route = self.client.route_of(provider)  # --simulate: every line goes to OpenAI's API
            for chunk in split_jobs(group, self.limits.get(route) or LIMITS["openai"], route):
                if self._stopping:
                    for call in chunk:
                        self._answer(call.key, NotStarted())
                    continue
                job = await self._submit(provider, model, chunk)
                if job is not None:
                    submitted.append(job)
        if self.no_wait:
            # Only once every job of the gathering is out: the first "pending" stops the run.
            for job in submitted:
                self._leave_pending(job)

    def _estimate(self, calls: list[Call]) -> float | None:
        total = 0.0
        for call in calls:
            request = call.request
            tokens_in, tokens_out = estimate_split(request.messages, request.params, None)
            cost = estimate_cost(
                request.provider,
                request.model,
                tokens_in,
                tokens_out,
                multiplier=BATCH_MULTIPLIER,
                prices=self.options.prices,
            )
            if cost is None:
                return None
            total += cost
        return total

    async def _submit(self, provider: str, model: str, calls: list[Call]) -> _Job | None:
        estimate = self._estimate(calls)
        limit = self.options.max_cost_usd
        if limit is not None:
            refusal = None
            if estimate is None:
                refusal, reason = f"no price known for {provider}:{model}: --max-cost cannot be kept", StopReason.FATAL
            elif self.stats.spent_usd + self._committed_usd + estimate > limit:
                spent, out = format_usd(self.stats.spent_usd), format_usd(self._committed_usd)
                refusal = (
                    f"the budget of {format_usd(limit)} is reached ({spent} spent, {out} in jobs out; "
                    f"the next job would cost about {format_usd(estimate)})"
                )
                reason = StopReason.BUDGET
            if refusal is not None:
                for call in calls:
                    self._answer(call.key, NotStarted(reason, refusal))
                return None
        ids = {custom_id_for(call.key, n): call.key for n, call in enumerate(calls)}
        record = JobRecord(
            id=JobBook.new_id(),
            provider=provider,
            model=model,
            endpoint=self._endpoint(),
            ids=ids,
            submitted_at=self.wall_clock(),
            estimate_usd=estimate,
        )
        by_key = {call.key: call for call in calls}
        lines = [batch_line(cid, by_key[key].request, self.client.route_of(provider)) for cid, key in ids.items()]
        self._read_records.add(record.id)  # this run's own: never attached to as another run's
        try:
            self.book.write_requests(record.id, {cid: self._material(by_key[key]) for cid, key in ids.items()})
            self.book.write(record)  # before the provider is asked: a batch may exist from now on
        except CacheError as exc:
            for call in calls:
                self._answer(call.key, NotStarted(StopReason.FATAL, str(exc)))
            return None
        submitted = await self._create(provider, lines, record, calls)
        if submitted is None:
            return None
        record.batch_id = submitted.batch_id
        record.input_file_id = submitted.input_file_id
        record.status = submitted.status
        record.state = "submitted"
        try:
            self.book.write(record)
        except CacheError as exc:
            # The batch exists but its record could not be kept: stop, and say which batch it is.
            message = f"{exc} — batch {submitted.batch_id} was submitted; cancel it or collect it by hand"
            for call in calls:
                self._answer(call.key, NotStarted(StopReason.FATAL, message))
            return None
        if estimate is not None:
            self._committed_usd += estimate
        self.stats.batch_submitted += 1
        for call in calls:
            if call.key not in self._sent:
                # As the live executor counts: once a line this run sent, its retries apart (so a line
                # an earlier run's job failed is a retry; one whose job was lost or expired, a call).
                self._sent.add(call.key)
                self.stats.calls += 0 if call.key in self._retried else 1
            self._attempts[call.key] = self._attempts.get(call.key, 0) + 1
        job = self._jobs[record.id] = _Job(record, waiting={cid: by_key[key] for cid, key in ids.items()})
        self._view(record)
        self._event(
            {
                "event": "batch_submitted",
                "job": record.id,
                "batch_id": record.batch_id,
                "model": f"{provider}:{model}",
                "requests": len(calls),
            }
        )
        if not self.no_wait:
            self._ensure_poller()
        return job

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.create_task(self._guarded(work))
        self._submitting.add(task)
        task.add_done_callback(self._submitting.discard)

    async def _guarded(self, work: Awaitable[None]) -> None:
        """Work no call awaits directly: a bug in it must not leave the run waiting for ever, so
        every call still waiting gets the exception (and the run raises it)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(exc)
            raise

    async def _create(
        self, provider: str, lines: list[dict[str, Any]], record: JobRecord, calls: list[Call]
    ) -> Submitted | None:
        """Upload and create the job, tried again after a 429, a 5xx or a lost connection (up to
        ``--max-retries``); None when it was refused (the calls are answered then)."""
        tries = 0
        while True:
            try:
                return await self.client.submit(provider, lines, {"llmbatch_job": record.id})
            except CallError as exc:
                error = exc
            if error.status_code is None:
                # No answer came back: the batch may exist all the same. It carries our job id.
                with contextlib.suppress(CallError):
                    found = await self.client.find(provider, record.id)
                    if found is not None:
                        return Submitted(found, None, "validating")
            tries += 1
            if not error.retryable or tries > self.options.retry.max_retries or self._stopping:
                break
            self.stats.retries += 1
            self._event({"event": "batch_refused", "job": record.id, "retrying": True, **error.to_dict()})
            await self._pause(error.retry_after_s or min(60.0, 2.0**tries))
        # Refused with an HTTP answer: no batch exists. Without one (a timeout), one may: the
        # record stays "submitting", and a later run looks for it by its metadata.
        if error.status_code is not None:
            record.state = "refused"
            self._write_quietly(record)
        self._event({"event": "batch_refused", "job": record.id, **error.to_dict()})
        for call in calls:
            self._answer(call.key, Failed(error, 0))
        return None

    def _leave_pending(self, job: _Job) -> None:
        message = f"batch job {job.record.batch_id} is {job.record.status}: run the same command again to collect it"
        for call in job.waiting.values():
            self._answer(call.key, NotStarted(StopReason.PENDING, message))
        job.waiting.clear()

    def _write_quietly(self, record: JobRecord) -> None:
        with contextlib.suppress(CacheError):  # the status is for display; the state that matters is written
            self.book.write(record)

    # -- polling ---------------------------------------------------------------------------------

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._guarded(self._poll_loop()))

    async def _poll_loop(self) -> None:
        interval = self.poll_s[0]
        while not self._stopping:
            live = [job for job in self._jobs.values() if job.waiting]
            if not live:
                return
            for job in live:
                await self._poll(job)
            if self.no_wait:
                for job in live:
                    if job.waiting:
                        self._leave_pending(job)
                if any(job.waiting for job in self._jobs.values()):
                    continue  # a job attached while these were polled: looked at once too, now
                return
            if not any(job.waiting for job in self._jobs.values()):
                return
            next_at = self.wall_clock() + interval
            for view in self.views.values():
                if view.status not in _NOT_POLLED:
                    view.next_poll_at = next_at
            await self._pause(interval)
            interval = min(interval * 1.5, self.poll_s[1])

    async def _pause(self, seconds: float) -> None:
        await sleep_unless(self.sleep, self._stopped, seconds)

    async def _poll(self, job: _Job) -> None:
        record = job.record
        if record.batch_id is None:
            # Read as "submitting": the run that submits it may have written its batch id since.
            with contextlib.suppress(CacheError):
                newer = self.book.read(record.id)
                if newer is not None and newer.batch_id is not None:
                    record.batch_id, record.input_file_id = newer.batch_id, newer.input_file_id
                    record.state = "submitted"
        if record.batch_id is None:
            # Submitted by a run that died before the batch id came back: the batch, if it was
            # created, carries our job id in its metadata.
            try:
                record.batch_id = await self.client.find(record.provider, record.id)
            except CallError as exc:
                self._event({"event": "batch_poll_failed", "job": record.id, **exc.to_dict()})
                return  # asked again at the next poll
            if record.batch_id is not None:
                record.state = "submitted"
                self._write_quietly(record)
                self._event({"event": "batch_attached", "job": record.id, "batch_id": record.batch_id})
        if record.batch_id is None:
            # No batch carries it (or the provider keeps no metadata): its lines go out again; the
            # record stays, "abandoned", for `batches list`.
            record.state = "abandoned"
            self._write_quietly(record)
            self._view(record)
            self._event(
                {
                    "event": "batch_resubmitting",
                    "job": record.id,
                    "batch_id": None,
                    "requests": len(job.waiting),
                    "message": "no batch carries it (its submission never finished, or the provider keeps no metadata)",
                    "warn": True,
                }
            )
            for call in job.waiting.values():
                self._enqueue(call)
            job.waiting.clear()
            return
        try:
            state = await self.client.state(record.provider, record.batch_id)
        except CallError as exc:
            self._event({"event": "batch_poll_failed", "job": record.id, **exc.to_dict()})
            if exc.status_code == 404:
                # The provider has no such batch (deleted, or another account's): its lines go out again.
                record.state = "lost"
                self._write_quietly(record)
                self._view(record)
                self._event(
                    {
                        "event": "batch_resubmitting",
                        "job": record.id,
                        "batch_id": record.batch_id,
                        "requests": len(job.waiting),
                        "message": "not known to the provider (deleted, another account's, or a simulator now gone)",
                        "warn": True,
                    }
                )
                for call in job.waiting.values():
                    self._again(call, f"batch {record.batch_id} is not known to the provider")
                job.waiting.clear()
            elif exc.kind == "fatal":  # a bad key: every line would fail the same way
                for call in job.waiting.values():
                    self._answer(call.key, Failed(exc, 1))
                job.waiting.clear()
            return  # a passing failure: look again at the next poll
        record.status, record.done, record.failed = state.status, state.done, state.failed
        self._view(record)
        self._write_quietly(record)  # for `llmbatch batches list`
        if not state.finished:
            return
        await self._collect(job, state)

    async def _collect(self, job: _Job, state: JobState) -> None:
        record = job.record
        try:
            lines = (
                []
                if state.status == "failed"
                else await self.client.results(record.provider, record.batch_id or "", state)
            )
        except CallError as exc:
            self._event({"event": "batch_poll_failed", "job": record.id, **exc.to_dict()})
            return  # the files are read again at the next poll
        if self._stopping:
            # Every call was answered "not started" when the run stopped: these answers would reach
            # no store. The job stays pending, and the next run reads its files again (free).
            return
        if record.estimate_usd is not None:
            self._committed_usd = max(0.0, self._committed_usd - record.estimate_usd)
        seen: set[str] = set()
        strays = []
        for line in lines:
            call = job.waiting.pop(line.custom_id, None)
            if call is None:
                if line.custom_id in record.ids and line.custom_id not in job.settled:
                    strays.append(line)  # not in this run's input (changed since): paid all the same
                continue
            seen.add(line.custom_id)
            job.settled.add(line.custom_id)
            if line.response is not None:
                self._answered(call, line.response, record, count=line.custom_id not in job.counted)
            elif line.error is not None:
                self._failed(call, line.error)
            else:
                self._again(call, f"job {record.batch_id} {state.status} before this line was done")
        self._keep_strays(job, strays)
        # Lines the provider says nothing of: the whole job failed, or it ended before them.
        rest = list(job.waiting.values())
        job.settled.update(job.waiting)
        job.waiting.clear()
        for call in rest:
            if state.status == "failed":
                reason = state.errors or "the provider refused the job"
                self._failed(call, CallError("permanent", "BatchFailed", f"batch {record.batch_id} failed: {reason}"))
            else:
                self._again(call, f"job {record.batch_id} {state.status} before this line was done")
        self._event(
            {
                "event": "batch_collected",
                "job": record.id,
                "batch_id": record.batch_id,
                "status": state.status,
                "answered": len(seen),
            }
        )

    def _answered(self, call: Call, response: dict[str, Any], record: JobRecord, *, count: bool = True) -> None:
        attempts = max(1, self._attempts.get(call.key, 1))
        answer = self._paid(call.request.provider, call.request.model, response, record, attempts, count=count)
        if isinstance(answer, CallError):
            self._failed(call, answer)
        else:
            self._answer(call.key, answer)

    def _paid(
        self, provider: str, model: str, response: dict[str, Any], record: JobRecord, attempts: int, *, count: bool
    ) -> Answered | CallError:
        """A job line's answer, counted as spent unless ``count`` is false; or why it is not one."""
        failure = problem(response)
        if failure is not None:
            return failure
        try:
            response = keepable(response, self.secrets)
        except CallError as exc:
            return exc
        usage = response.get("usage")
        cost = call_cost(provider, model, usage, multiplier=BATCH_MULTIPLIER, prices=self.options.prices)
        latency_ms = round(max(0.0, self.wall_clock() - record.submitted_at) * 1000, 1)
        answer = Answered(response, latency_ms, cost, attempts, via="batch")
        if not count:
            return answer
        if isinstance(usage, dict):
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        if cost is None:
            self.stats.unpriced_calls += 1
            self.stats.unpriced_models.add(f"{provider}:{model}")
        else:
            self.stats.spent_usd += cost
        return answer

    def _keep_strays(self, job: _Job, lines: list[LineOutcome]) -> None:
        """Answers to lines the input no longer has: handed to the resolver to store (their key
        material was recorded with the job). Without that record (an older job, a damaged file)
        they are left in the job, and it stays pending for a run of the input that asked them."""
        if not lines:
            return
        materials = self.book.read_requests(job.record.id)
        for line in lines:
            material = materials.get(line.custom_id)
            if material is None:
                continue
            job.settled.add(line.custom_id)
            if line.response is None:
                continue  # an error or a line never done: nothing paid to keep, nobody to tell
            answer = self._paid(material["provider"], material["model"], line.response, job.record, 1, count=True)
            if isinstance(answer, Answered):
                job.counted.add(line.custom_id)
                self._unclaimed.append(Unclaimed(job.record.ids[line.custom_id], material, answer))

    def _material(self, call: Call) -> dict[str, Any]:
        return key_material(call.request, self.destination.key_endpoint(call.request.provider))

    def _failed(self, call: Call, error: CallError) -> None:
        attempts = max(1, self._attempts.get(call.key, 1))
        if not error.retryable or attempts > self.options.retry.max_retries:
            self._event(
                {
                    "event": "error",
                    "line": call.request.line,
                    "id": call.request.id,
                    "attempt": attempts,
                    **error.to_dict(),
                }
            )
            self._answer(call.key, Failed(error, attempts))
            return
        self.stats.retries += 1
        self._retried.add(call.key)
        self._event(
            {
                "event": "retry",
                "line": call.request.line,
                "id": call.request.id,
                "attempt": attempts,
                **error.to_dict(),
                "next": "live" if self.fallback is not None else "job",  # where the next attempt goes
            }
        )
        if self.fallback is not None:
            self._background(self._live(call, attempts))
        else:
            self._enqueue(call)

    def _again(self, call: Call, why: str) -> None:
        """A line its job never did (expired, cancelled): out again, as often as a failure would be."""
        attempts = self._attempts.get(call.key, 1)
        if attempts > self.options.retry.max_retries:
            self._answer(call.key, Failed(CallError("retryable", "BatchExpired", why), attempts))
            return
        self._enqueue(call)

    async def _live(self, call: Call, attempts: int) -> None:
        assert self.fallback is not None
        outcome = await self.fallback.execute(call)
        if isinstance(outcome, (Answered, Failed)):
            outcome = _plus_attempts(outcome, attempts)
        self._answer(call.key, outcome)

    # -- display ---------------------------------------------------------------------------------

    def _view(self, record: JobRecord) -> None:
        view = self.views.get(record.id)
        if view is None:
            view = self.views[record.id] = JobView(
                record.id,
                record.batch_id,
                f"{record.provider}:{record.model}",
                record.status or record.state,
                record.total,
                submitted_at=record.submitted_at,
            )
        view.batch_id = record.batch_id
        # A job given up (lost, abandoned) is shown so, not as the provider's last word on it.
        view.status = record.state if record.state in ("lost", "abandoned") else record.status or record.state
        view.done, view.failed = record.done, record.failed
        if view.status in _NOT_POLLED:
            view.next_poll_at = None

    def _event(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)


def _plus_attempts(outcome: Answered | Failed, earlier: int) -> Answered | Failed:
    if isinstance(outcome, Answered):
        return Answered(outcome.response, outcome.latency_ms, outcome.cost_usd, outcome.attempts + earlier, outcome.via)
    return Failed(outcome.error, outcome.attempts + earlier)


def split_jobs(calls: list[Call], limits: JobLimits, provider: str) -> list[list[Call]]:
    """``calls`` (one model) cut into jobs under ``limits``, in order. Pure."""
    jobs: list[list[Call]] = []
    current: list[Call] = []
    size = 0
    for call in calls:
        line = len(orjson.dumps(batch_line(custom_id_for(call.key, len(current)), call.request, provider))) + 1
        if current and (len(current) >= limits.requests or size + line > limits.bytes):
            jobs.append(current)
            current, size = [], 0
        current.append(call)
        size += line
    if current:
        jobs.append(current)
    return jobs
