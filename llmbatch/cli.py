"""The ``llmbatch`` command: options in, library calls, errors and exit codes out.

The only module that imports typer. It turns options into a :class:`~llmbatch.runner.RunConfig`,
runs the library, and is the one place where an :class:`~llmbatch.errors.LlmbatchError` becomes
a message on stderr and an exit code. Heavy modules are imported inside the commands, so
``llmbatch --help`` starts fast.

Exit codes: 0 every line ok; 1 some lines ended in error, or the run stopped early (the message
says why); 2 bad usage or input, nothing sent; 3 the --max-cost budget was reached; 130
interrupted by Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from llmbatch.errors import (
    EXIT_BUDGET,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_ERRORS,
    InputError,
    LlmbatchError,
    UsageError,
)

app = typer.Typer(
    name="llmbatch",
    help="Run a JSONL file of LLM prompts against any provider, with a cache that never pays twice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Look after the response cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

F = TypeVar("F", bound=Callable[..., Any])

#: Per attempt, for chat calls: long enough for a normal answer, short enough that a hung
#: connection costs half a minute, not ten (the SDKs' own default).
DEFAULT_TIMEOUT_S = 30.0

#: After the first Ctrl-C, calls in flight get this long past the per-request timeout to finish
#: (no attempt outlives its timeout, so every paid answer still reaches the cache).
INTERRUPT_GRACE_S = 5.0


def _print_error(text: str) -> None:
    # Plain stderr, not rich: messages may contain [brackets] that markup would swallow.
    sys.stderr.write(f"llmbatch: error: {text}\n")
    sys.stderr.flush()


def _handles_errors(command: F) -> F:
    """Render any LlmbatchError as a message and an exit code; let bugs raise."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            for error in exc.errors:
                sys.stderr.write(f"{error}\n")
            hidden = exc.total_errors - len(exc.errors)
            if hidden > 0:
                sys.stderr.write(f"... and {hidden} more invalid lines\n")
            count = exc.total_errors
            _print_error(f"{count} invalid line{'s' if count != 1 else ''}; nothing was sent")
            raise typer.Exit(exc.exit_code) from None
        except LlmbatchError as exc:
            _print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


# --- run ---------------------------------------------------------------------------------------


@app.command()
@_handles_errors
def run(
    input: Annotated[str, typer.Argument(help="JSONL file of requests, or - to read stdin.", show_default=False)],
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Results file (default: <input>.results.jsonl beside the input; - for stdout)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model for lines without one, as provider:model (openai:gpt-4o-mini)."),
    ] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Provider for bare model names (e.g. openai, anthropic, mistral).")
    ] = None,
    api_base: Annotated[
        str | None,
        typer.Option(
            "--api-base", help="Send every call to this base URL (vLLM, LM Studio, any OpenAI-compatible server)."
        ),
    ] = None,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Answer every call from the built-in simulator: no API key, no cost.")
    ] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Calls in flight at most.")] = 16,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            help="Processes making the calls: a number (0: everything in this process, which otherwise checks "
            "an input of 4 MB or more in two halves at once) or auto (several for runs of 2,000+ requests at "
            "-c 64 or more, when there are spare cores).",
        ),
    ] = "auto",
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.1,
            help="Seconds before one attempt is abandoned and retried (default 30, plus 1 s per 50 "
            "max_tokens beyond 1,000).",
            show_default=False,
        ),
    ] = None,
    max_retries: Annotated[
        int, typer.Option("--max-retries", min=0, help="Retries per request after the first attempt.")
    ] = 6,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", envvar="LLMBATCH_CACHE_DIR", help="Cache directory (default: the user cache dir)."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")] = False,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Ignore cached answers and overwrite them with fresh ones.")
    ] = False,
    cache_only: Annotated[
        bool, typer.Option("--cache-only", help="Never call a provider; misses become error lines.")
    ] = False,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Expire new cache entries after this long (7d, 12h).")
    ] = None,
    cache_size_limit: Annotated[
        str | None,
        typer.Option("--cache-size-limit", help="Cache size limit, e.g. 50GB (default 20GB; kept once set)."),
    ] = None,
    cache_eviction: Annotated[
        str | None,
        typer.Option(
            "--cache-eviction",
            help="What goes when the cache is full: least-recently-stored (default), "
            "least-recently-used, least-frequently-used, or none.",
        ),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option("--rpm", min=1, help="Requests per minute per model, paced evenly (default: learn).")
    ] = None,
    tpm: Annotated[
        int | None, typer.Option("--tpm", min=1, help="Tokens per minute per model, paced evenly (default: learn).")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="Per-model defaults (default: ./llmbatch.toml if present).")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option("--max-cost", min=0, help="Stop before spending more than this many USD (exit code 3)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only plan: hits, calls, tokens and cost, without calling anyone.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show only the final summary.")] = False,
) -> None:
    """Run every request in INPUT, writing one result line per input line, in order.

    `llmbatch plan INPUT ...` is `llmbatch run INPUT --dry-run ...`."""
    from llmbatch.display import Display, Summary, choose_mode
    from llmbatch.engine import RunOptions, RunStats
    from llmbatch.prompts import Defaults
    from llmbatch.retry import RetryPolicy
    from llmbatch.runner import HitPrefix, RunConfig, default_output, open_input, validate
    from llmbatch.units import parse_duration, parse_size

    if sum((no_cache, refresh, cache_only)) > 1:
        raise UsageError("--no-cache, --refresh and --cache-only cannot be combined")
    if model is not None and ":" not in model and provider is None:
        raise UsageError(
            f"--model {model} has no provider: write --model openai:{model} (or another provider) or add --provider"
        )
    if simulate and api_base:
        raise UsageError("--simulate sends every call to the simulator; drop --api-base")
    mode = "off" if no_cache else "refresh" if refresh else "only" if cache_only else "normal"
    from llmbatch.config import load_config, merge_limits

    limits, default_limits = merge_limits(load_config(config_file), rpm=rpm, tpm=tpm)
    options = RunOptions(
        concurrency=concurrency,
        timeout_s=timeout if timeout is not None else DEFAULT_TIMEOUT_S,
        timeout_auto=timeout is None,
        limits=limits,
        default_limits=default_limits,
        retry=RetryPolicy(max_retries=max_retries),
        cache_mode=mode,  # type: ignore[arg-type]
        ttl_s=parse_duration(ttl, option="--ttl") if ttl else None,
        max_cost_usd=max_cost,
    )
    source = open_input(input)
    try:
        out = None if output == "-" else Path(output) if output else default_output(source)
        config = RunConfig(
            input=source,
            output=out,
            defaults=Defaults(model=model, provider=provider),
            options=options,
            api_base=api_base,
            simulate=simulate,
            sim_config=_sim_config_for_run() if simulate else None,
            cache_dir=cache_dir,
            cache_size_limit=parse_size(cache_size_limit, option="--cache-size-limit") if cache_size_limit else None,
            cache_eviction=cache_eviction,
            workers=_parse_workers(workers),
            split=True,  # a big input is checked in two halves at once, unless --workers 0
        )
        stats = RunStats()
        # A cached rerun's leading hits are answered in the validation pass: each line parsed once.
        prefix = HitPrefix(config, stats) if not dry_run and mode in ("normal", "only") else None
        try:
            with _tuned_gc():
                try:
                    report = validate(config, prefix)
                except KeyboardInterrupt:
                    _print_error("interrupted while checking the input; nothing was sent")
                    raise typer.Exit(EXIT_INTERRUPTED) from None
                if dry_run:
                    _print_plan(config, as_json=as_json)
                    return
                if max_cost is not None:
                    _check_prices(report.models)
                stats.total = report.requests
                display = Display(stats, mode=choose_mode(sys.stderr, quiet=quiet), stream=sys.stderr)
                interrupted = False
                with display:
                    try:
                        import asyncio  # here, not at the top: --help and usage errors do not need it

                        outcome = asyncio.run(_run_with_signals(config, stats, prefix))
                    except KeyboardInterrupt:
                        interrupted = True
                        outcome = None
        finally:
            if prefix is not None:
                prefix.close()
        results_at = outcome.results_at if outcome else _partial_name(out)
        note = None
        if stats.budget_reached:
            note = (
                f"the budget of ${max_cost:g} is spent; results are incomplete. To go on, run the same command "
                "again with a new --max-cost (answered prompts come from the cache and cost nothing)"
            )
        elif not (outcome and outcome.complete):
            note = "results are incomplete; run the same command again to finish (answered prompts come from the cache)"
        display.summary(Summary(results=results_at, complete=bool(outcome and outcome.complete), note=note))
    finally:
        source.cleanup()
    if interrupted or (stats.stopped and "Ctrl-C" in stats.stopped):
        raise typer.Exit(EXIT_INTERRUPTED)
    if stats.fatal:
        _print_error(stats.stopped or "the run stopped early")
        raise typer.Exit(EXIT_SOME_ERRORS)
    if stats.budget_reached:
        raise typer.Exit(EXIT_BUDGET)
    raise typer.Exit(EXIT_SOME_ERRORS if stats.errors or not stats.complete else EXIT_OK)


def _parse_workers(value: str) -> int | None:
    if value == "auto":
        return None
    if value.isdigit() and int(value) <= 64:
        return int(value)
    raise UsageError(f"--workers {value}: give a number from 0 to 64, or auto")


def _print_plan(config: Any, *, as_json: bool) -> None:
    from llmbatch.display import print_plan
    from llmbatch.runner import plan

    result = plan(config)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_plan(result)


def _check_prices(models: set[str]) -> None:
    """--max-cost needs a price for every model it may call: refuse up front, not mid-run."""
    from llmbatch.pricing import is_priced

    unknown = sorted(m for m in models if not is_priced(*m.split(":", 1)))
    if unknown:
        raise UsageError(
            f"--max-cost: no price is known for {', '.join(unknown)} (genai-prices), so the budget cannot be kept"
        )


@contextlib.contextmanager
def _tuned_gc() -> Iterator[None]:
    """A run makes millions of short-lived dicts (parsed lines, responses). Python's cyclic GC,
    triggered every 700 allocations, rescans everything alive each time, including every module
    imported so far. Freezing what exists now and collecting the young generation less often cut a
    cached rerun of 100,000 lines by a fifth (bench/run.py).

    The oldest generation must still be collected regularly: each call leaves reference cycles
    behind (tenacity's retry state, asyncio's tasks), about a kilobyte, which only a full
    collection frees. Collected only every 50 million allocations, a 1,000,000-line cold run
    (bench/seed_cache.py) peaked at 512 MB, still growing; at most every 500,000 (here; Python
    also waits until a quarter of the tracked objects await it) it stays flat. ``freeze()`` keeps
    what was imported before the run out of those collections; in a run without worker processes
    the provider SDK is imported later and is scanned (0.1-0.35 s a collection, one per ~30,000
    calls). Undone afterwards, for callers that run the command in-process (tests, notebooks)."""
    import gc

    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 5, 2)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _partial_name(out: Path | None) -> str:
    return "stdout" if out is None else str(out.with_name(out.name + ".partial"))


def _sim_config_for_run() -> Any:
    from llmbatch.simulator import SimConfig

    # A little latency so that the demo shows its progress; answers stay deterministic.
    return SimConfig(latency_s=0.05, latency_dist="lognormal", latency_sigma=0.4)


async def _run_with_signals(config: Any, stats: Any, prefix: Any = None) -> Any:
    """Run, with Ctrl-C handled in two steps: the first stops new calls and lets the ones in
    flight finish (they are paid for); the second, or the grace period running out, quits."""
    import asyncio

    from llmbatch.runner import execute

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    engines: list[Any] = []
    presses = 0

    def on_sigint() -> None:
        nonlocal presses
        presses += 1
        if presses == 1 and engines:
            engines[0].stop("interrupted by Ctrl-C: finishing calls in flight (Ctrl-C again to quit now)")
            loop.call_later(engines[0].longest_timeout_s + INTERRUPT_GRACE_S, _cancel, main)
        else:
            _cancel(main)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or no signals
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await execute(config, stats, on_engine=engines.append, prefix=prefix)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


def _cancel(task: Any) -> None:
    if task is not None and not task.done():
        task.cancel()


# --- cache -------------------------------------------------------------------------------------

CacheDirOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", envvar="LLMBATCH_CACHE_DIR", help="Cache directory (default: the user cache dir)."),
]


@cache_app.command("stats")
@_handles_errors
def cache_stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cache_dir: CacheDirOption = None,
) -> None:
    """Entries, size on disk, size limit, oldest and newest entry, entries per model, lifetime hits and misses."""
    from llmbatch.cache import ResponseCache, default_cache_dir
    from llmbatch.display import print_cache_stats

    directory = cache_dir or default_cache_dir()
    if not (directory / "cache.db").exists():
        stats = None
    else:
        with ResponseCache(directory, create=False) as cache:
            stats = cache.stats()
    if as_json:
        import orjson

        payload = stats.to_dict() if stats else {"directory": str(directory), "entries": 0, "size_bytes": 0}
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    print_cache_stats(stats, directory=str(directory))


@cache_app.command("purge")
@_handles_errors
def cache_purge(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Remove entries stored longer ago than this (90s, 45m, 12h, 30d, 2w).")
    ],
    model: Annotated[str | None, typer.Option("--model", help="Only entries of this provider:model.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be removed.")] = False,
    cache_dir: CacheDirOption = None,
) -> None:
    """Remove cache entries older than a duration."""
    from llmbatch.cache import ResponseCache, default_cache_dir
    from llmbatch.units import parse_duration

    seconds = parse_duration(older_than, option="--older-than")
    directory = cache_dir or default_cache_dir()
    if not (directory / "cache.db").exists():
        sys.stdout.write(f"no cache at {directory}: nothing to purge\n")
        return
    with ResponseCache(directory, create=False) as cache:
        count = cache.purge(seconds, tag=model, dry_run=dry_run)
    which = f" of {model}" if model else ""
    verb = "would remove" if dry_run else "removed"
    sys.stdout.write(f"{verb} {count} entr{'y' if count == 1 else 'ies'}{which} older than {older_than}\n")


# --- report ------------------------------------------------------------------------------------


@app.command("report")
@_handles_errors
def report_command(
    results: Annotated[
        str, typer.Argument(help="A results file written by llmbatch run, or - to read stdin.", show_default=False)
    ],
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write the report as one self-contained HTML page (charts inline) to FILE."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Sum up a results file: counts by status, model and finish reason; errors by type and message;
    cost, tokens and latency percentiles; answers that were cut off."""
    from llmbatch.report import read_report, write_html

    summary = read_report(results)
    if html is not None:
        write_html(summary, html)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from llmbatch.display import print_report

        print_report(summary)
    if html is not None:
        sys.stderr.write(f"llmbatch: report page written to {html}\n")  # stderr: stdout may be --json


# --- sim ---------------------------------------------------------------------------------------


@app.command()
@_handles_errors
def sim(
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0 picks a free one).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    latency: Annotated[str, typer.Option("--latency", help="Median latency per call, e.g. 200ms.")] = "0",
    latency_dist: Annotated[str, typer.Option("--latency-dist", help="fixed or lognormal.")] = "fixed",
    latency_sigma: Annotated[float, typer.Option("--latency-sigma", help="Spread of lognormal latency.")] = 0.5,
    p429: Annotated[float, typer.Option("--p429", min=0, max=1, help="Fraction of calls answered 429.")] = 0.0,
    retry_after: Annotated[str, typer.Option("--retry-after", help="Retry-After sent with injected 429s.")] = "1s",
    p500: Annotated[float, typer.Option("--p500", min=0, max=1, help="Fraction answered 500.")] = 0.0,
    p503: Annotated[float, typer.Option("--p503", min=0, max=1, help="Fraction answered 503.")] = 0.0,
    phang: Annotated[
        float, typer.Option("--phang", min=0, max=1, help="Fraction that hang until the client gives up.")
    ] = 0.0,
    pdrop: Annotated[float, typer.Option("--pdrop", min=0, max=1, help="Fraction whose connection is dropped.")] = 0.0,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Enforce this many requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Enforce this many tokens per minute.")] = None,
    limit_window: Annotated[
        str, typer.Option("--limit-window", help="Window over which --rpm/--tpm are enforced.")
    ] = "60s",
    require_api_key: Annotated[
        str | None, typer.Option("--require-api-key", help="Answer 401 unless this key is sent.")
    ] = None,
    models: Annotated[str | None, typer.Option("--models", help="Comma-separated model names; others get 404.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for fault and latency draws.")] = None,
) -> None:
    """Run the OpenAI-compatible simulator, for rehearsals: point --api-base at it."""
    from llmbatch.simulator import SimConfig, parse_duration_s, serve_forever

    def seconds(text: str, option: str) -> float:
        try:
            return parse_duration_s(text)
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None

    try:
        config = SimConfig(
            latency_s=seconds(latency, "--latency"),
            latency_dist=latency_dist,
            latency_sigma=latency_sigma,
            p429=p429,
            retry_after_s=seconds(retry_after, "--retry-after"),
            p500=p500,
            p503=p503,
            phang=phang,
            pdrop=pdrop,
            rpm=rpm,
            tpm=tpm,
            limit_window_s=seconds(limit_window, "--limit-window"),
            require_api_key=require_api_key,
            models=tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
            seed=seed,
        )
    except ValueError as exc:
        raise UsageError(f"sim: {exc}") from None

    def ready(url: str) -> None:
        sys.stderr.write(f"llmbatch simulator listening on {url} (Ctrl-C to stop)\n")
        sys.stderr.write(f"  try: llmbatch run FILE --api-base {url} --model openai:gpt-4o-mini\n")
        sys.stderr.flush()

    serve_forever(config, host=host, port=port, on_ready=ready)


def main() -> None:
    # `llmbatch plan ...` is `llmbatch run --dry-run ...`: one set of options, one code path.
    if len(sys.argv) > 1 and sys.argv[1] == "plan":
        sys.argv[1:2] = ["run", "--dry-run"]
    app()


if __name__ == "__main__":
    main()
