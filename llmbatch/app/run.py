"""A whole ``llmbatch run``, as a library: prepare (store, simulator, providers, results file),
execute, finish the file. The command line parses options into a
:class:`~llmbatch.app.runconfig.RunConfig`, calls :func:`~llmbatch.app.validation.validate` (so that a bad line
is reported before anything else happens), then :func:`start` and :func:`execute` inside its display."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmbatch.app.batches import held_by_jobs
from llmbatch.app.inputs import check_output
from llmbatch.app.prefix import HitPrefix
from llmbatch.app.recovery import _recovery
from llmbatch.app.runconfig import RunConfig, cpus, effective_defaults, open_run_store
from llmbatch.engine import Resolver, RunStats, batch_resolver, live_resolver
from llmbatch.errors import CacheError, InputError, LineError, LlmbatchError, UsageError
from llmbatch.input import (
    Request,
    read_requests,
)
from llmbatch.providers.base import CallError, Destination, unknown_provider
from llmbatch.results import ResultWriter
from llmbatch.store import ResponseStore

__all__ = ["RunOutcome", "Started", "check_batch_lines", "execute", "models_of", "start"]


@dataclass
class RunOutcome:
    stats: RunStats
    results_at: str  # a path, or "stdout"
    complete: bool
    #: The cache directory, when it was removed during the run and the answers from then on went
    #: into a new cache there.
    cache_recreated: str | None = None
    #: Answers an earlier run paid for, taken back into the cache from its ``.partial``.
    recovered: int = 0
    #: ``--semantic-audit``: how many semantic hits asked again agreed (app.audit.AuditReport).
    audit: Any = None


@dataclass
class Started:
    """What a run holds once :func:`start` has prepared it: close it with :meth:`close` (or let
    :func:`execute` do it)."""

    provider: Any
    cache: ResponseStore | None
    writer: ResultWriter
    simulator: Any = None
    recovered: int = 0  # answers an earlier run paid for, taken back into the cache from its .partial
    limits: Any = None  # the rate limits' state when it is shared (--cache redis://); None: this process's

    async def close(self, complete: bool = False) -> Path | None:
        """Finish the results file (renamed into place if ``complete``), close everything."""
        try:
            await self.provider.aclose()
        finally:
            identity = self.writer.identity
            where = self.writer.finish(complete)
            if self.simulator is not None:
                await self.simulator.stop()
            if self.limits is not None:
                self.limits.close()
            if self.cache is not None:
                if complete and identity is not None:
                    with contextlib.suppress(CacheError):
                        self.cache.forget_partial(identity)  # renamed into place: no .partial any more
                self.cache.close()
        return where


async def start(config: RunConfig, stats: RunStats, *, models: set[str], prefix: HitPrefix | None = None) -> Started:
    """Everything a run needs before its first call, checked before anything is shown or written:
    the cache, the simulator, and a client for each provider the lines still to answer use
    (``models``: their ``provider:model``), so that a missing API key, an unknown provider or a
    missing extra is one clear :class:`UsageError`, not a failure mid-run. Then the results file.
    Nothing is sent."""
    check_output(config)  # the CLI checked before validating; a library caller may not have
    options = config.options
    cache = prefix.cache if prefix is not None and prefix.cache is not None else None
    simulator = None
    provider = None
    limits = None
    try:
        if cache is None and options.cache_mode != "off":
            cache = open_run_store(config)
        destination = config.destination
        if config.simulate:
            from llmbatch.sim import SimConfig, Simulator

            simulator = Simulator(config.sim_config or SimConfig())
            destination = replace(destination, api_base=await simulator.start())
        workers = _workers(config, _left(stats, prefix), stats)
        provider = _provider(workers, destination)
        if options.cache_mode != "only" and _left(stats, prefix) > 0:
            # With workers, this process waits while they import the SDK: price lookups load then.
            # In one process the SDK's import comes first, so the first request is not later.
            if workers:
                _warm_prices(models, options.prices)
            await _prepare_providers(provider, models, config)
            if not workers:
                _warm_prices(models, options.prices)
            # Runs sharing a server share each budget's pace: whose budget it is, by default a
            # fingerprint of the API key and endpoint (never the key), or --rate-group.
            paying = destination
            limits = config.store_place.limit_state(
                lambda budget: config.rate_group or paying.budget_identity(budget.split(":", 1)[0])
            )
        recovered: list[int] = []
        recover = _recovery(config, cache, recovered) if cache is not None else None
        if prefix is not None:
            writer = prefix.results_writer(config.output, recover)
        else:
            writer = ResultWriter(config.output, recover=recover).open()
        if cache is not None and writer.identity is not None and writer.token is not None:
            cache.note_partial(writer.identity, writer.token)  # a later run may take back what this one pays for
    except BaseException:
        if provider is not None:
            await provider.aclose()
        if simulator is not None:
            await simulator.stop()
        if limits is not None:
            limits.close()
        if cache is not None and (prefix is None or cache is not prefix.cache):
            cache.close()
        raise
    if prefix is not None:
        prefix.cache = None  # the run owns it now
    return Started(provider, cache, writer, simulator, sum(recovered), limits)


#: Failures to prepare a provider that are the fault of whatever names it (a line, --model, a
#: route): no such provider, or its SDK is not installed. Others (no API key) are the run's.
_NAMED_BADLY = frozenset({"UnsupportedProviderError", "ImportError", "ModuleNotFoundError"})


async def _prepare_providers(provider: Any, models: set[str], config: RunConfig) -> None:
    """A client for each provider (nothing is sent): its failure is the run's usage error, and a
    provider that does not exist or cannot be loaded is reported where it is named."""
    refused: dict[str, str] = {}
    for name in sorted({model.split(":", 1)[0] for model in models}):
        probe = Request(line=0, id=0, provider=name, model=models_of(models, name), messages=[])
        try:
            ready = provider.prepare(probe)
            if ready is not None:
                await ready
        except CallError as exc:
            if exc.type not in _NAMED_BADLY:
                raise UsageError(exc.message) from None
            # any-llm's own words list all ~60 providers: one close match says more. (Names it does
            # not know are refused while the file is checked; this covers any-llm disagreeing.)
            refused[name] = unknown_provider(name) or exc.message
    if refused:
        raise _where_named(config, refused)


def _where_named(config: RunConfig, refused: dict[str, str]) -> LlmbatchError:
    """The error for providers that cannot be used (``refused``: name -> why), at the first line
    naming each, as ``FILE:LINE``; at ``--model`` when that is where the first line got it. The file
    is read again: this is rare, and the validation pass need not remember a line per provider."""
    found: list[LineError] = []
    for request in read_requests(config.input.path, effective_defaults(config), source=config.input.source):
        for ref in (request.model_ref, *request.fallback, *filter(None, [request.escalate_to])):
            why = refused.pop(ref.split(":", 1)[0], None)
            if why is None:
                continue
            if request.route == "--model":
                return UsageError(f"--model {ref}: {why}")  # no line is at fault: the option is
            where = "" if request.route == "line" else f" (in {ref}, from {request.route})"
            found.append(LineError(config.input.source, request.line, f"{why}{where}"))
        if not refused:
            break
    return InputError(found) if found else UsageError("; ".join(refused.values()))  # the file changed meanwhile


def _warm_prices(models: set[str], prices: Any) -> None:
    import threading

    from llmbatch.pricing import warm

    threading.Thread(target=warm, args=(sorted(models), prices), name="llmbatch-prices", daemon=True).start()


def models_of(models: set[str], provider: str) -> str:
    return next(m.split(":", 1)[1] for m in sorted(models) if m.split(":", 1)[0] == provider)


async def execute(
    config: RunConfig,
    stats: RunStats,
    started: Started,
    *,
    on_engine: Callable[[Resolver], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    prefix: HitPrefix | None = None,
) -> RunOutcome:
    """Run the validated input to the end (or to a stop) and finish the results file;
    ``prefix``: the leading hits :func:`validate` already answered."""
    provider, writer = started.provider, started.writer
    audit = None
    try:
        if config.batch is not None:
            engine = _batch_engine(config, stats, started, on_event)
        else:
            engine = live_resolver(
                provider,
                store=started.cache,
                options=config.options,
                sink=writer.write,
                flush=writer.flush,
                stats=stats,
                on_event=on_event,
                limit_state=started.limits,
                held=held_by_jobs(config.store_place),
            )
        if on_engine is not None:
            on_engine(engine)
        requests = read_requests(
            config.input.path,
            effective_defaults(config),
            source=config.input.source,
            start_line=prefix.resume_line if prefix is not None else 1,
        )
        try:
            await engine.run(requests)
        finally:
            if config.batch is not None and engine.executor is not None:
                await engine.executor.aclose()  # marks the jobs whose every line was handed out collected
        if started.cache is not None and stats.complete and getattr(started.cache, "audit_sample", None):
            from llmbatch.app.audit import audit_semantic_hits

            audit = await audit_semantic_hits(provider, started.cache, config.options)
    finally:
        stats.workers_lost = provider.lost
        recreated = started.cache is not None and started.cache.recreated
        where = await started.close(stats.complete)
    return RunOutcome(
        stats=stats,
        results_at=str(where) if where is not None else "stdout",
        complete=stats.complete,
        cache_recreated=started.cache.location if recreated and started.cache is not None else None,
        recovered=started.recovered,
        audit=audit,
    )


def _batch_engine(
    config: RunConfig, stats: RunStats, started: Started, on_event: Callable[[dict[str, Any]], None] | None
) -> Resolver:
    from llmbatch.providers.batch import LIMITS, JobLimits
    from llmbatch.store.jobs import JobBook

    assert config.batch is not None
    settings = config.batch
    limits = None
    if settings.max_requests is not None:
        limits = {name: JobLimits(min(settings.max_requests, lim.requests), lim.bytes) for name, lim in LIMITS.items()}
    book = JobBook(config.store_place.jobs_directory)
    with contextlib.suppress(OSError):  # housekeeping: never worth stopping a run for
        book.prune(now=time.time())
    return batch_resolver(
        started.provider,
        book=book,
        store=started.cache,
        options=config.options,
        sink=started.writer.write,
        flush=started.writer.flush,
        stats=stats,
        on_event=on_event,
        limits=limits,
        no_wait=settings.no_wait,
        fallback_live=settings.fallback_live,
        poll_s=settings.poll_s,
        limit_state=started.limits,
    )


def check_batch_lines(config: RunConfig) -> None:
    """With ``--batch-api``: every line the provider's batch path cannot carry as it is, reported as
    ``FILE:LINE: ...`` (exit 2) before anything is sent. Run after the whole file was validated."""
    from llmbatch.providers.batch import cannot_carry

    force = config.destination.force_provider
    errors: list[LineError] = []
    total = 0
    for request in read_requests(config.input.path, effective_defaults(config), source=config.input.source):
        why = cannot_carry(request, force or request.provider)
        # The route's fallback and cascade models are asked through the same batch path.
        for other in (*request.fallback, *([request.escalate_to] if request.escalate_to else [])):
            if why is not None:
                break
            provider, model = other.split(":", 1)
            why = cannot_carry(replace(request, provider=provider, model=model), force or provider)
            if why is not None:
                why = f"{other} (the route's {'cascade' if other == request.escalate_to else 'fallback'}): {why}"
        if why is not None:
            total += 1
            if len(errors) < 100:  # as the validation lists them
                errors.append(LineError(config.input.source, request.line, why))
    if errors:
        raise InputError(errors, total)


def _provider(workers: int, destination: Destination) -> Any:
    if workers > 0:
        from llmbatch.providers.workers import WorkerPool

        return WorkerPool(workers, destination)
    from llmbatch.providers.anyllm import AnyLLMProvider

    return AnyLLMProvider(destination)


def _left(stats: RunStats, prefix: HitPrefix | None) -> int:
    """Requests not yet answered: what worker processes could be needed for."""
    return (stats.total or 0) - (prefix.lines if prefix is not None else 0)


def _workers(config: RunConfig, requests: int, stats: RunStats) -> int:
    if config.batch is not None:
        return 0  # jobs are a few HTTP calls: no worker processes (live fallback calls are made here)
    if config.workers is not None:
        return config.workers
    from llmbatch.providers.workers import auto_workers

    count = auto_workers(config.options.concurrency, cpus(), requests)
    # Said, not done quietly: a run that would use workers on a second core uses none on one.
    stats.one_cpu = count == 0 and cpus() < 2 and auto_workers(config.options.concurrency, 2, requests) > 0
    return count
