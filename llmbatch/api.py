"""The library's front door: a list of requests in, a list of results out, each answer paid once.

::

    from llmbatch import run_batch_sync

    results = run_batch_sync([{"prompt": "What is 2+2?"}], model="openai:gpt-4o-mini")
    print(results[0].content)

:func:`run_batch` is the same call for async code (``await run_batch(...)``); :func:`run_batch_sync`
runs it on an event loop of its own. Both go through the engine the CLI uses, so everything
``llmbatch run`` promises holds here too: the same cache (the same keys, the same default
directory: a library call and the CLI share their answers), retries, pacing, coalescing of
duplicates, and "store the answer before anything else happens with it".

What differs from the CLI, on purpose:

- the requests and their results are held in memory (a list comes back); the CLI streams a file
  and holds at most a window of lines, whatever the file's size. For millions of lines, use
  ``llmbatch run``, or feed this function a slice at a time;
- a stop before the end (a bad key, ``max_cost_usd``, a store that cannot be written) raises
  :class:`RunStopped`, which holds the results answered so far: nothing paid for is lost, and the
  failure cannot go unnoticed. One line's own failure (a 400, a content filter) is not a stop: it
  is a result with ``status == "error"``, as in a results file.

Who closes what: whatever a call creates (the provider and its HTTP connections, the cache it
opens), it closes before it returns, so nothing prints "Unclosed client session" at exit. What the
caller passes in, the caller closes; with one exception, :func:`run_batch_sync` also closes a
``provider`` it is given, because that provider's connections belong to the event loop the call
creates and ends (an :class:`~llmbatch.providers.base.AnyLLMProvider` can be passed again: it opens new
ones).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch.errors import (
    EXIT_BUDGET,
    EXIT_INTERRUPTED,
    EXIT_PENDING,
    EXIT_SOME_ERRORS,
    InputError,
    LineError,
    LlmbatchError,
    UsageError,
)
from llmbatch.input import Defaults, InvalidLine, Request, parse_line
from llmbatch.input.routes import RouteError, parse_routes

if TYPE_CHECKING:
    from llmbatch.engine import Provider, RunOptions, RunStats, StopReason
    from llmbatch.results import Result

__all__ = ["MAX_LISTED_ERRORS", "RunStopped", "run_batch", "run_batch_sync"]

#: An :class:`InputError` lists this many bad requests at most (``total_errors`` counts them all),
#: as ``llmbatch run`` does for a file.
MAX_LISTED_ERRORS = 100
#: The name bad requests are reported under: ``requests:3: unknown field "temprature" ...``, where 3
#: is the request's position in the iterable, counted from 1.
SOURCE = "requests"


class RunStopped(LlmbatchError):
    """The run stopped before every request was answered.

    ``results``: what was answered, in input order, up to the first request that was not (every
    answer paid for is also in the store, so the same call again pays only for the rest).
    ``reason``: the :class:`~llmbatch.engine.StopReason` (``FATAL`` for a bad key, an unknown model,
    a server that cannot be reached or a store that cannot be written; ``BUDGET`` for
    ``max_cost_usd``; ``HELD`` for a request a batch job that ``llmbatch run --batch-api`` submitted
    into the same cache still holds: collect it with that command, it is paid for). ``stats``: the
    run's counters. ``exit_code`` is the one ``llmbatch run`` would end with. ``str(error)`` says
    why, and how far the run got.
    """

    def __init__(self, message: str, *, reason: StopReason, results: list[Result], stats: RunStats) -> None:
        super().__init__(message)
        self.reason = reason
        self.results = results
        self.stats = stats
        exit_codes = {"budget": EXIT_BUDGET, "interrupted": EXIT_INTERRUPTED, "held": EXIT_PENDING}
        self.exit_code = exit_codes.get(reason.value, EXIT_SOME_ERRORS)


async def run_batch(
    requests: Iterable[dict[str, Any] | Request],
    *,
    model: str | None = None,
    routes: Sequence[Mapping[str, Any]] | None = None,
    api_base: str | None = None,
    provider: Provider | None = None,
    store: Any = None,
    cache_dir: str | Path | None = None,
    options: RunOptions | None = None,
    on_result: Callable[[Result], None] | None = None,
    stats: RunStats | None = None,
) -> list[Result]:
    """Answer ``requests``; return one :class:`~llmbatch.results.Result` per request, in input order.

    ``requests``: dicts shaped like the lines of an input file (``{"prompt": ...}``,
    ``{"messages": [...]}`` or an OpenAI Batch API line, with ``model``, ``id``, generation
    parameters, ``metadata``, ``sample``...; see the README's *Input*), or
    :class:`~llmbatch.input.Request` values, which are used as they are. Every dict is checked
    before anything is sent: if any is wrong, :class:`~llmbatch.errors.InputError` lists them (the
    first 100, numbered by position from 1; ``total_errors`` counts all), nothing is sent and
    nothing is opened. Ids must be unique, as in a file; a dict without one gets its position.

    ``model``: ``provider:model`` for the dicts that name none (as ``--model``); a malformed one is
    a :class:`~llmbatch.errors.UsageError`.

    ``routes``: routing rules, each a dict shaped like a ``[[route]]`` table of ``llmbatch.toml``
    (``{"when": {"metadata": {"task": "extract"}}, "model": "openai:gpt-4o", "fallback": [...]}``;
    see the README's *Routing*): a request that names no model takes the first rule it matches,
    else ``model``. A bad rule is a :class:`~llmbatch.errors.UsageError`, before anything is sent.

    ``api_base``: send every call to this base URL (a vLLM or LM Studio server, the simulator).
    ``provider``: an object that makes the calls instead (see :class:`~llmbatch.engine.Provider`;
    default ``AnyLLMProvider(Destination.of(api_base=api_base))``, which reads API keys from the
    environment). Not both: the endpoint recorded in the cache keys is always the provider's own
    ``destination``, so answers from a local server can never be filed under a real provider's keys.

    ``store``: where answers are kept: a :class:`~llmbatch.store.DiskStore`, or any object with
    its methods ``get(key)``, ``get_many(keys)``, ``put(key, entry, *, tag, ttl_s)``,
    ``put_many([(key, entry, tag)], *, ttl_s)``, ``record_lookups({tag: Lookups(hits, misses, saved_usd)})`` and
    ``close()`` (entries are JSON-ready dicts). Default: a ``DiskStore`` at ``cache_dir``, else
    ``$LLMBATCH_CACHE_DIR``, else the user cache directory: the CLI's own. Not both ``store`` and
    ``cache_dir``. With ``options.cache_mode == "off"`` no store is opened or used.

    ``options``: concurrency, timeout, retries, cache mode, TTL, pacing, ``max_cost_usd``
    (:class:`~llmbatch.engine.RunOptions`; default ``RunOptions()``).

    ``on_result``: called with each result as soon as input order allows (on the event loop: keep
    it quick). If it raises, no new call starts, the calls in flight finish and are stored, and the
    exception propagates.

    ``stats``: a fresh :class:`~llmbatch.engine.RunStats` to fill, to read live counters (``done``,
    ``hits``, ``calls``, ``spent_usd``, ...) while the run goes, or after it.

    A line that fails on its own (a 400, a content filter, retries used up) is a result with
    ``status == "error"`` and its ``error``; check ``result.ok``. A stop before the end raises
    :class:`RunStopped` with the results answered so far. Cancelling this coroutine (a timeout,
    Ctrl-C under :func:`run_batch_sync`) starts no new call and waits for the calls in flight to
    finish and be stored (at most their timeout) before the cancellation goes on.
    """
    _check_arguments(requests, api_base=api_base, provider=provider, store=store, cache_dir=cache_dir)
    checked = _check_requests(requests, model, routes)
    return await _run(
        checked,
        api_base=api_base,
        provider=provider,
        store=store,
        cache_dir=cache_dir,
        options=options,
        on_result=on_result,
        stats=stats,
    )


def run_batch_sync(
    requests: Iterable[dict[str, Any] | Request],
    *,
    model: str | None = None,
    routes: Sequence[Mapping[str, Any]] | None = None,
    api_base: str | None = None,
    provider: Provider | None = None,
    store: Any = None,
    cache_dir: str | Path | None = None,
    options: RunOptions | None = None,
    on_result: Callable[[Result], None] | None = None,
    stats: RunStats | None = None,
) -> list[Result]:
    """:func:`run_batch` for code that is not async: the same arguments, the same result.

    It runs on an event loop of its own (``asyncio.run``), so it cannot be called where one is
    running already (a Jupyter notebook, an async function): a :class:`RuntimeError` says to use
    ``await run_batch(...)`` there. A ``provider`` given here is closed before this returns (its
    connections belong to the loop that ends with the call); a ``store`` given is left open.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop running in this thread: the usual case
    else:
        # Checked before the coroutine exists, so that refusing leaves no "never awaited" warning.
        raise RuntimeError(
            "run_batch_sync() cannot be called while an event loop is running (in a notebook or in "
            "async code): use `await llmbatch.run_batch(...)` there, with the same arguments"
        )
    _check_arguments(requests, api_base=api_base, provider=provider, store=store, cache_dir=cache_dir)
    checked = _check_requests(requests, model, routes)
    return asyncio.run(
        _run(
            checked,
            api_base=api_base,
            provider=provider,
            store=store,
            cache_dir=cache_dir,
            options=options,
            on_result=on_result,
            stats=stats,
            close_provider=True,
        )
    )


# --- checks, before anything is opened or sent ---------------------------------------------------


def _check_arguments(requests: Any, *, api_base: Any, provider: Any, store: Any, cache_dir: Any) -> None:
    if provider is not None and api_base is not None:
        raise TypeError(
            "give api_base or provider, not both: a provider sends its calls to its own destination "
            "(AnyLLMProvider(api_base=...))"
        )
    if store is not None and cache_dir is not None:
        raise TypeError("give store or cache_dir, not both (DiskStore(cache_dir) is a store)")
    if isinstance(requests, (dict, str, bytes, Request)):
        # Iterating over one would "work" and give nonsense (a dict's keys, a string's characters).
        raise TypeError(f"requests must be an iterable of requests, got one {type(requests).__name__}: pass [request]")


def _check_requests(
    requests: Iterable[dict[str, Any] | Request], model: str | None, routes: Sequence[Mapping[str, Any]] | None
) -> list[Request]:
    """Every request as a :class:`Request`, or :class:`InputError` listing every bad one."""
    try:
        rules = parse_routes(list(routes)) if routes is not None else ()
    except RouteError as exc:
        raise UsageError(f"routes: {exc}") from None
    defaults = Defaults(model=model, routes=rules)
    if model is not None:
        # A bad default would otherwise be reported once per request that uses it.
        try:
            parse_line(b'{"prompt": "-"}', 1, defaults)
        except InvalidLine as exc:
            raise UsageError(f"model={model!r}: {exc}") from None
    checked: list[Request] = []
    errors: list[LineError] = []
    total_errors = 0
    first_use: dict[str, int] = {}  # id (as text, as in a results file) -> the position it was first used at
    for position, item in enumerate(requests, start=1):
        try:
            request = _request(item, position, defaults)
            first = first_use.setdefault(str(request.id), position)
            if first != position:
                raise InvalidLine(f"duplicate id {request.id!r} (first used on line {first})")
        except InvalidLine as exc:
            total_errors += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(LineError(SOURCE, position, str(exc)))
            continue
        checked.append(request)
    if total_errors:
        raise InputError(errors, total_errors)
    return checked


def _request(item: Any, position: int, defaults: Defaults) -> Request:
    if isinstance(item, Request):
        return item
    if isinstance(item, str):
        raise InvalidLine('expected a dict or a Request, got a string (for a prompt, write {"prompt": "..."})')
    if not isinstance(item, dict):
        raise InvalidLine(f'expected a dict such as {{"prompt": "..."}} or a Request, got {type(item).__name__}')
    try:
        # Through JSON, so that a dict means exactly what the same line in a file means (the keys
        # the CLI computes for that line are the keys computed here).
        raw = orjson.dumps(item)
    except orjson.JSONEncodeError as exc:
        raise InvalidLine(f"cannot be written as JSON: {exc}") from None
    return parse_line(raw, position, defaults)


# --- the run -------------------------------------------------------------------------------------


async def _run(
    requests: list[Request],
    *,
    api_base: str | None,
    provider: Provider | None,
    store: Any,
    cache_dir: str | Path | None,
    options: RunOptions | None,
    on_result: Callable[[Result], None] | None,
    stats: RunStats | None,
    close_provider: bool = False,
) -> list[Result]:
    # Imported here: ``import llmbatch.api`` (and so ``import llmbatch``) stays light until a run.
    from llmbatch.engine import RunOptions, RunStats, live_resolver
    from llmbatch.providers.anyllm import AnyLLMProvider
    from llmbatch.providers.base import Destination
    from llmbatch.store import DiskStore, StorePlace, default_cache_dir
    from llmbatch.store.jobs import JobBook

    options = options if options is not None else RunOptions()
    stats = stats if stats is not None else RunStats()
    stats.total = len(requests)
    if not requests:
        return []
    own_store = store is None and options.cache_mode != "off"
    held: dict[str, str] = {}
    if own_store:
        directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        store = DiskStore(directory)
        # The CLI's cache: a batch job `llmbatch run --batch-api` submitted there holds answers
        # already paid for; a call for one of them stops the run rather than pay for it again.
        with contextlib.suppress(OSError):  # no records to read: nothing is held
            held = JobBook(StorePlace(directory).jobs_directory).held_keys()
    own_provider = provider is None
    if provider is None:
        # The one place the library picks a destination: the keys' endpoint is read from the
        # provider that sends the calls (the resolver takes provider.destination), never given apart.
        provider = AnyLLMProvider(Destination.of(api_base=api_base))
    results: list[Result] = []

    def sink(result: Result) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    try:
        engine = live_resolver(provider, store=store, options=options, sink=sink, stats=stats, held=held)
        await _until_stopped(engine, requests)
    finally:
        try:
            if own_provider or close_provider:
                await provider.aclose()
        finally:
            if own_store:
                store.close()
    if stats.stop_reason is not None or len(results) != len(requests):
        raise _stopped(stats, results, len(requests), stored=store is not None and options.cache_mode != "off")
    return results


async def _until_stopped(engine: Any, requests: list[Request]) -> None:
    """``engine.run(requests)``; if cancelled meanwhile, stop as the CLI's first Ctrl-C does:
    start no new call, let the calls in flight finish and be stored (they are paid for), then let
    the cancellation go on. A second cancellation does not wait."""
    from llmbatch.engine import StopReason

    run = asyncio.ensure_future(engine.run(requests))
    try:
        await asyncio.shield(run)
    except asyncio.CancelledError:
        engine.stop("cancelled", StopReason.INTERRUPTED)
        await asyncio.wait([run])
        if not run.cancelled():
            run.exception()  # read, so asyncio does not log it: the cancellation is what the caller sees
        raise


def _stopped(stats: RunStats, results: list[Result], total: int, *, stored: bool) -> RunStopped:
    from llmbatch.engine import StopReason

    reason = stats.stop_reason or StopReason.ERROR
    why = stats.stopped or "the run stopped early"
    if stored:
        how_far = f"{len(results)} of {total} requests have a result; every answer paid for is in the cache, so "
        how_far += "calling again pays only for the rest"
    else:
        how_far = f"{len(results)} of {total} requests have a result"
    return RunStopped(f"{why} ({how_far})", reason=reason, results=results, stats=stats)
