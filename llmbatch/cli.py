"""The ``llmbatch`` command: options in, library calls, errors and exit codes out.

The only module that imports typer. It turns options into a :class:`~llmbatch.app.runconfig.RunConfig`,
runs the library, and is the one place where an :class:`~llmbatch.errors.LlmbatchError` becomes
a message on stderr and an exit code. Heavy modules are imported inside the commands, so
``llmbatch --help`` starts fast.

Exit codes: 0 every line ok; 1 some lines ended in error, or the run stopped early (the message
says why); 2 bad usage or input, nothing sent; 3 the --max-cost budget was reached; 130, 143 and
129 stopped by Ctrl-C (SIGINT), SIGTERM and SIGHUP (128 + the signal's number), after finishing
the calls in flight and writing what there is.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, ClassVar, TypeVar

import typer

from llmbatch.errors import (
    EXIT_BUDGET,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_SOME_ERRORS,
    InputError,
    LlmbatchError,
    UsageError,
    printable,
)

app = typer.Typer(
    name="llmbatch",
    help="Run a JSONL file of LLM prompts against any provider, with a cache that never pays twice.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help, as click writes it: flags without a misleading <bool>, and --help needs no rich.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
cache_app = typer.Typer(help="Look after the response cache.", no_args_is_help=True)
app.add_typer(
    cache_app, name="cache", short_help="Look after the cache: stats, purge, export, import, explain, verify."
)

batches_app = typer.Typer(help="The Batch-API jobs of --batch-api runs.", no_args_is_help=True)
app.add_typer(batches_app, name="batches", short_help="Batch-API jobs: list, status ID, cancel ID.")

F = TypeVar("F", bound=Callable[..., Any])

#: Per attempt, for chat calls: long enough for a normal answer, short enough that a hung
#: connection costs half a minute, not ten (the SDKs' own default).
DEFAULT_TIMEOUT_S = 30.0

#: After the first Ctrl-C (or SIGTERM, SIGHUP), calls in flight get this long past the per-request
#: timeout to finish (no attempt outlives its timeout, so every paid answer still reaches the cache).
INTERRUPT_GRACE_S = 5.0


def _print_error(text: str) -> None:
    # Plain stderr, not rich: messages may contain [brackets] that markup would swallow, and
    # control characters from a provider or an input file are shown, never obeyed.
    sys.stderr.write(f"llmbatch: error: {printable(text)}\n")
    sys.stderr.flush()


def _handles_errors(command: F | None = None, *, invalid: str = "nothing was sent") -> Any:
    """Render any LlmbatchError as a message and an exit code; let bugs raise. ``invalid``: what
    the footer under a list of invalid lines says happened (for ``run`` and ``plan``: nothing was
    sent; for ``report``, whose lines are results, not requests: no report was made)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except InputError as exc:
                for error in exc.errors:
                    sys.stderr.write(f"{printable(str(error))}\n")
                hidden = exc.total_errors - len(exc.errors)
                if hidden > 0:
                    sys.stderr.write(f"... and {hidden} more invalid lines\n")
                count = exc.total_errors
                _print_error(f"{count} invalid line{'s' if count != 1 else ''}; {invalid}")
                raise typer.Exit(exc.exit_code) from None
            except LlmbatchError as exc:
                _print_error(str(exc))
                raise typer.Exit(exc.exit_code) from None

        return wrapper  # type: ignore[return-value]

    return decorate(command) if command is not None else decorate


def _version(value: bool) -> None:
    if value:
        from llmbatch import __version__

        sys.stdout.write(f"llmbatch {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Run a JSONL file of LLM prompts against any provider, with a cache that never pays twice."""


# --- signals -----------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived before the run started (reading stdin, checking the input): nothing
    was sent, so nothing needs finishing. A KeyboardInterrupt, so that whatever cleans up after
    Ctrl-C cleans up after SIGTERM too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``, a scheduler) and SIGHUP (a closed
    terminal) all mean "stop". While calls are being made, the first stops new calls, lets the
    ones in flight finish and be stored (they are paid for), and writes what there is; a second
    signal, or the grace period running out, quits at once. Before that, they stop at once.
    The exit code is 128 + the first signal's number, as a shell reports it.

    A SIGTERM or SIGHUP that repeats the one before within a second is the same request, not a
    second one: timeout(1) sends its signal to the command and then to the command's whole process
    group, so every run it ends gets SIGTERM twice at once (which quit at once and dropped the calls
    in flight). Ctrl-C twice is always a second press."""

    NAMES: ClassVar[dict[int, str]] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
    SAME_REQUEST_S = 1.0

    def __init__(self) -> None:
        self.first: int | None = None
        self.count = 0
        #: While the run is in progress: told of each signal (and how many there have been, at
        #: the moment it arrived), on the event loop's thread.
        self.during_run: Callable[[int, int], None] | None = None
        self._previous: dict[int, Any] = {}
        self._last: tuple[int, float] | None = None

    def __enter__(self) -> _Signals:
        for signum in self.NAMES:
            with contextlib.suppress(ValueError):  # not the main thread (a test runner, say)
                self._previous[signum] = signal.signal(signum, self._received)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _received(self, signum: int, _frame: FrameType | None) -> None:
        now = time.monotonic()
        last, self._last = self._last, (signum, now)
        if signum != signal.SIGINT and last is not None and last[0] == signum and now - last[1] < self.SAME_REQUEST_S:
            return  # the same stop, sent to the process and to its group
        self.count += 1
        if self.first is None:
            self.first = signum
        if self.during_run is None:
            raise Interrupted(signum)
        self.during_run(signum, self.count)

    @property
    def exit_code(self) -> int:
        return 128 + (self.first or signal.SIGINT)

    def reason(self, signum: int) -> str:
        return "interrupted by Ctrl-C" if signum == signal.SIGINT else f"stopped by {self.NAMES[signum]}"


# --- options shared by run and plan ---------------------------------------------------------------

InputArgument = Annotated[
    str, typer.Argument(metavar="INPUT", help="JSONL file of requests, or - to read stdin.", show_default=False)
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="PROVIDER:MODEL",
        envvar="LLMBATCH_MODEL",
        show_envvar=True,
        help="Model for lines without one, as provider:model (openai:gpt-4o-mini).",
    ),
]
ProviderOption = Annotated[
    str | None,
    typer.Option(
        "--provider",
        metavar="NAME",
        envvar="LLMBATCH_PROVIDER",
        show_envvar=True,
        help="Provider for bare model names (e.g. openai, anthropic, mistral).",
    ),
]
ApiBaseOption = Annotated[
    str | None,
    typer.Option(
        "--api-base",
        metavar="URL",
        help="Send every call to this base URL (vLLM, LM Studio, any OpenAI-compatible server).",
    ),
]
SimulateOption = Annotated[
    bool, typer.Option("--simulate", help="Answer every call from the built-in simulator: no API key, no cost.")
]
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        metavar="DIR",
        envvar="LLMBATCH_CACHE_DIR",
        show_envvar=True,
        help="Cache directory (default: the user cache dir).",
    ),
]
SharedCacheOption = Annotated[
    bool,
    typer.Option(
        "--shared-cache",
        envvar="LLMBATCH_SHARED_CACHE",
        show_envvar=True,
        help="Accept a cache directory that belongs to another user or that others can write to (a cache "
        "shared on purpose): its files are then neither refused nor tightened.",
    ),
]
CacheUrlOption = Annotated[
    str | None,
    typer.Option(
        "--cache",
        metavar="URL",
        envvar="LLMBATCH_CACHE_URL",
        show_envvar=True,
        help="Keep answers on a Redis server shared by many machines (redis://, rediss:// or unix://; "
        "pip install 'llmbatch[redis]'). --cache-dir then holds only what stays on this machine.",
    ),
]
CacheNamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--cache-namespace",
        metavar="PREFIX",
        envvar="LLMBATCH_CACHE_NAMESPACE",
        show_envvar=True,
        help="With --cache URL: the prefix of every key on the server, so teams can share one (default: llmbatch:).",
    ),
]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")]
RefreshOption = Annotated[bool, typer.Option("--refresh", help="Ignore cached answers and overwrite them.")]
CacheOnlyOption = Annotated[bool, typer.Option("--cache-only", help="Never call a provider; misses become errors.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        envvar="LLMBATCH_CONFIG",
        show_envvar=True,
        help="Per-model limits and normalisation (default: ./llmbatch.toml if present).",
    ),
]
NormalizeOption = Annotated[
    str | None,
    typer.Option(
        "--normalize",
        metavar="MODE",
        help="Normalise prompts before they are keyed and sent, for every model: whitespace (runs of "
        "whitespace become one space, ends trimmed; not for code or poetry) or none (default: "
        "llmbatch.toml's normalize, else none).",
        show_default=False,
    ),
]
MaxLineSizeOption = Annotated[
    str | None,
    typer.Option(
        "--max-line-size",
        metavar="SIZE",
        help="Refuse input lines larger than this (default 50MB).",
        show_default=False,
    ),
]
MaxMessagesOption = Annotated[
    int | None,
    typer.Option(
        "--max-messages",
        metavar="N",
        min=1,
        help="Refuse lines with more messages (default 10,000).",
        show_default=False,
    ),
]
BatchApiOption = Annotated[
    bool,
    typer.Option(
        "--batch-api", help="Send the misses to the provider's Batch API (openai, anthropic): half price, slower."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the plan as one JSON object.")]
SemanticOption = Annotated[
    bool,
    typer.Option(
        "--semantic",
        help="Also answer an exact miss with the stored answer of a near-identical prompt: only at temperature 0, "
        "only when everything but the last user message is the same, above the threshold and with the guards "
        "agreeing (needs the semantic extra). Each such line says hit: semantic, with similarity and matched_key.",
    ),
]
SemanticThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--semantic-threshold",
        metavar="SIMILARITY",
        help="With --semantic: the cosine similarity a stored prompt needs (default 0.90; higher is safer).",
        show_default=False,
    ),
]
SemanticGuardsOption = Annotated[
    str | None,
    typer.Option(
        "--semantic-guards",
        metavar="on|off",
        help="With --semantic: require both prompts to agree on numbers, negations, names and quoted text "
        "(default on). off trusts the threshold alone and serves more wrong answers: riskier.",
        show_default=False,
    ),
]
SemanticModelOption = Annotated[
    Path | None,
    typer.Option(
        "--semantic-model",
        metavar="DIR",
        help="With --semantic: your own embedding model, a directory with model.onnx and tokenizer.json "
        "(default: the packaged all-MiniLM-L6-v2, int8).",
        show_default=False,
    ),
]


# --- run ---------------------------------------------------------------------------------------


@app.command(short_help="Run a JSONL file of prompts; results in input order, answers cached.")
@_handles_errors
def run(
    input: InputArgument,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Results file (default: <input>.results.jsonl beside the input; - for stdout).",
        ),
    ] = None,
    model: ModelOption = None,
    provider: ProviderOption = None,
    api_base: ApiBaseOption = None,
    simulate: SimulateOption = False,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            "-c",
            metavar="N",
            min=1,
            envvar="LLMBATCH_CONCURRENCY",
            show_envvar=True,
            help="Calls in flight at most.",
        ),
    ] = 16,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            metavar="N|auto",
            envvar="LLMBATCH_WORKERS",
            show_envvar=True,
            help="Processes making the calls: a number (0: everything in this process, which otherwise checks "
            "an input of 4 MB or more in two halves at once) or auto (several for runs of 2,000+ requests at "
            "-c 64 or more, when there are spare cores).",
        ),
    ] = "auto",
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            min=0.1,
            envvar="LLMBATCH_TIMEOUT",
            show_envvar=True,
            help="Seconds before one attempt is abandoned and retried (default 30, plus 1 s per 50 "
            "max_tokens beyond 1,000, up to 10 minutes).",
            show_default=False,
        ),
    ] = None,
    max_retries: Annotated[
        int,
        typer.Option(
            "--max-retries",
            metavar="N",
            min=0,
            envvar="LLMBATCH_MAX_RETRIES",
            show_envvar=True,
            help="Retries per request after the first attempt.",
        ),
    ] = 6,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
    no_cache: NoCacheOption = False,
    refresh: RefreshOption = False,
    cache_only: CacheOnlyOption = False,
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", metavar="DURATION", help="Expire new cache entries after this long (7d, 12h)."),
    ] = None,
    cache_size_limit: Annotated[
        str | None,
        typer.Option(
            "--cache-size-limit", metavar="SIZE", help="Cache size limit, e.g. 50GB (default 20GB; kept once set)."
        ),
    ] = None,
    cache_eviction: Annotated[
        str | None,
        typer.Option(
            "--cache-eviction",
            metavar="POLICY",
            help="What goes when the cache is full: least-recently-stored (default), "
            "least-recently-used, least-frequently-used, or none.",
        ),
    ] = None,
    rate_group: Annotated[
        str | None,
        typer.Option(
            "--rate-group",
            metavar="NAME",
            envvar="LLMBATCH_RATE_GROUP",
            help="With --cache URL: the runs that share one rate budget (default: every run using the same "
            "API key and endpoint, by a fingerprint that never holds the key).",
        ),
    ] = None,
    rpm: Annotated[
        int | None,
        typer.Option("--rpm", metavar="N", min=1, help="Requests per minute per model, paced evenly (default: learn)."),
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option("--tpm", metavar="N", min=1, help="Tokens per minute per model, paced evenly (default: learn)."),
    ] = None,
    config_file: ConfigOption = None,
    normalize: NormalizeOption = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            "--max-cost", metavar="USD", min=0, help="Stop before spending more than this many USD (exit code 3)."
        ),
    ] = None,
    max_line_size: MaxLineSizeOption = None,
    max_messages: MaxMessagesOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only plan (as `llmbatch plan`): hits, calls, tokens and cost.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as one JSON object.")] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Print each retry, 429, failed line and stop on stderr as it happens."),
    ] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log", metavar="FILE", help="Append each retry, 429, failed line and stop to FILE, as JSON lines."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress and no notes: one summary line at the end.")
    ] = False,
    batch_api: BatchApiOption = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="With --batch-api: submit the jobs and return (exit code 75); the same command later collects.",
        ),
    ] = False,
    batch_fallback: Annotated[
        str | None,
        typer.Option(
            "--batch-fallback",
            metavar="live",
            help="With --batch-api: retry the lines a job failed as live calls (default: in a later job).",
        ),
    ] = None,
    batch_poll: Annotated[
        str,
        typer.Option("--batch-poll", metavar="DURATION", help="With --batch-api: first wait between polls (5s)."),
    ] = "5s",
    batch_max_requests: Annotated[
        int | None, typer.Option("--batch-max-requests", metavar="N", min=1, hidden=True)
    ] = None,
    batch_window: Annotated[
        int | None,
        typer.Option(
            "--batch-window",
            metavar="N",
            min=1,
            help="With --batch-api: misses held at once, ~5 KB each (10,000); more are sent in waves of N.",
        ),
    ] = None,
    semantic: SemanticOption = False,
    semantic_threshold: SemanticThresholdOption = None,
    semantic_guards: SemanticGuardsOption = None,
    semantic_model: SemanticModelOption = None,
    semantic_audit: Annotated[
        int | None,
        typer.Option(
            "--semantic-audit",
            metavar="N",
            min=1,
            help="With --semantic: once the run is done, ask the provider again for N randomly chosen semantic "
            "hits (paid calls) and report how many answers agree; the fresh answers are stored under their own keys.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run every request in INPUT, writing one result line per input line, in input order."""
    from llmbatch.engine import RunOptions
    from llmbatch.retry import RetryPolicy
    from llmbatch.units import parse_size

    if sum((no_cache, refresh, cache_only)) > 1:
        raise UsageError("--no-cache, --refresh and --cache-only cannot be combined")
    if max_cost is not None and not math.isfinite(max_cost):
        raise UsageError(f"--max-cost {max_cost}: give an amount in USD, like 5 or 0.25")
    from llmbatch.config import load_config, merge_limits, merge_normalize

    config_in_use = load_config(config_file)
    limits, default_limits = merge_limits(config_in_use, rpm=rpm, tpm=tpm)
    normalized = merge_normalize(config_in_use, normalize)
    if normalize is None and any(mode for mode in (*normalized[0].values(), normalized[1])) and not quiet:
        # A file nobody named changes what is sent and the keys: said, as its limits are.
        which = "every model" if normalized[1] else ", ".join(m for m, mode in normalized[0].items() if mode)
        sys.stderr.write(f"llmbatch: prompts normalised (whitespace) for {which}, as {config_in_use.source} says\n")
    if config_in_use.routes and not quiet:
        count = len(config_in_use.routes)
        sys.stderr.write(
            f"llmbatch: {count} route{'s' if count != 1 else ''} from {config_in_use.source} choose the model "
            "of lines that name none\n"
        )
    batch = _batch_settings(
        batch_api,
        no_wait=no_wait,
        fallback=batch_fallback,
        poll=batch_poll,
        max_requests=batch_max_requests,
        no_cache=no_cache,
        cache_only=cache_only,
    )
    if batch is not None and batch.no_wait and simulate:
        # Its simulator lives in this process: no later run could collect the jobs, as exit 75 promises.
        raise UsageError(
            "--no-wait with --simulate: the built-in simulator ends with the run, and its jobs with it; "
            "rehearse with `llmbatch sim` and --api-base instead"
        )
    if batch is None and (batch_window is not None or batch_max_requests is not None):
        raise UsageError("--batch-window and --batch-max-requests go with --batch-api")
    options = RunOptions(
        concurrency=concurrency,
        timeout_s=timeout if timeout is not None else DEFAULT_TIMEOUT_S,
        timeout_auto=timeout is None,
        limits=limits,
        default_limits=default_limits,
        retry=RetryPolicy(max_retries=max_retries),
        cache_mode=_cache_mode(no_cache, refresh, cache_only),
        ttl_s=_ttl(ttl),
        max_cost_usd=max_cost,
        window=batch_window if batch is not None else None,
        prices=config_in_use.prices,
    )
    with _Signals() as signals:
        source = _open_input(input)
        try:
            config = _run_config(
                source,
                output=output,
                model=model,
                provider=provider,
                api_base=api_base,
                simulate=simulate,
                options=options,
                cache_dir=cache_dir,
                cache_url=cache_url,
                cache_namespace=cache_namespace,
                shared_cache=shared_cache,
                cache_size_limit=parse_size(cache_size_limit, option="--cache-size-limit")
                if cache_size_limit
                else None,
                cache_eviction=cache_eviction,
                rate_group=rate_group,
                workers=_parse_workers(workers),
                max_line_size=max_line_size,
                max_messages=max_messages,
                normalize=normalized,
                routes=config_in_use.routes,
                batch=batch,
                semantic=_semantic_settings(
                    semantic,
                    semantic_threshold,
                    semantic_guards,
                    semantic_model,
                    semantic_audit,
                    cache_off=no_cache or refresh,
                ),
            )
            if dry_run:
                _validate(config, None)
                if config.batch is not None:
                    from llmbatch.app.run import check_batch_lines

                    check_batch_lines(config)
                _print_plan(config, as_json=as_json)
                return
            from llmbatch.app.inputs import check_output

            check_output(config)  # results that would destroy something: refused before anything is read
            _run(
                config,
                signals,
                config_source=config_in_use.source if config_in_use.models else None,
                limits_given=rpm is not None or tpm is not None,
                quiet=quiet,
                verbose=verbose,
                log_file=log_file,
            )
        except Interrupted as exc:  # a stop signal between the steps above: nothing was sent yet
            _print_error("interrupted before the run started; nothing was sent")
            raise typer.Exit(128 + exc.signum) from None
        finally:
            source.cleanup()


@app.command(short_help="What a run would do and cost, from the cache alone; nothing is sent.")
@_handles_errors
def plan(
    input: InputArgument,
    model: ModelOption = None,
    provider: ProviderOption = None,
    api_base: ApiBaseOption = None,
    simulate: SimulateOption = False,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
    no_cache: NoCacheOption = False,
    refresh: RefreshOption = False,
    cache_only: CacheOnlyOption = False,
    max_line_size: MaxLineSizeOption = None,
    max_messages: MaxMessagesOption = None,
    as_json: JsonOption = False,
    config_file: ConfigOption = None,
    normalize: NormalizeOption = None,
    batch_api: BatchApiOption = False,
    semantic: SemanticOption = False,
    semantic_threshold: SemanticThresholdOption = None,
    semantic_guards: SemanticGuardsOption = None,
    semantic_model: SemanticModelOption = None,
) -> None:
    """Show what a run of INPUT would do and cost, from the cache alone: nothing is sent."""
    from llmbatch.config import load_config, merge_normalize
    from llmbatch.engine import RunOptions

    if sum((no_cache, refresh, cache_only)) > 1:
        raise UsageError("--no-cache, --refresh and --cache-only cannot be combined")
    # The file's normalisation changes the keys, so plan reads it as run does, or the two disagree.
    config_in_use = load_config(config_file)
    normalized = merge_normalize(config_in_use, normalize)
    with _Signals():
        source = _open_input(input)
        try:
            config = _run_config(
                source,
                output=None,
                model=model,
                provider=provider,
                api_base=api_base,
                simulate=simulate,
                options=RunOptions(cache_mode=_cache_mode(no_cache, refresh, cache_only), prices=config_in_use.prices),
                cache_dir=cache_dir,
                cache_url=cache_url,
                cache_namespace=cache_namespace,
                shared_cache=shared_cache,
                max_line_size=max_line_size,
                max_messages=max_messages,
                normalize=normalized,
                routes=config_in_use.routes,
                batch=_batch_settings(batch_api, no_cache=no_cache, cache_only=cache_only),
                semantic=_semantic_settings(
                    semantic, semantic_threshold, semantic_guards, semantic_model, None, cache_off=no_cache or refresh
                ),
            )
            _validate(config, None)
            if config.batch is not None:
                from llmbatch.app.run import check_batch_lines

                check_batch_lines(config)
            _print_plan(config, as_json=as_json)
        finally:
            source.cleanup()


def _batch_settings(
    batch_api: bool,
    *,
    no_wait: bool = False,
    fallback: str | None = None,
    poll: str = "5s",
    max_requests: int | None = None,
    no_cache: bool = False,
    cache_only: bool = False,
) -> Any:
    """``--batch-api`` and its options, checked together; None without it."""
    if not batch_api:
        if no_wait or fallback is not None:
            raise UsageError("--no-wait and --batch-fallback go with --batch-api")
        return None
    if no_cache:
        raise UsageError("--batch-api keeps each job's answers in the cache; it cannot run with --no-cache")
    if cache_only:
        raise UsageError("--batch-api submits jobs; --cache-only never calls: give one or the other")
    if fallback not in (None, "live"):
        raise UsageError(f"--batch-fallback {fallback}: the one fallback is live")
    from llmbatch.app.runconfig import BatchSettings
    from llmbatch.units import parse_duration

    first = parse_duration(poll, option="--batch-poll")
    return BatchSettings(
        no_wait=no_wait,
        fallback_live=fallback == "live",
        max_requests=max_requests,
        poll_s=(first, max(first, 60.0)),
    )


def _cache_mode(no_cache: bool, refresh: bool, cache_only: bool) -> Any:
    return "off" if no_cache else "refresh" if refresh else "only" if cache_only else "normal"


def _open_input(name: str) -> Any:
    from llmbatch.app.inputs import open_input

    try:
        return open_input(name)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP while stdin is copied
        _print_error("interrupted while reading the input; nothing was sent")
        raise typer.Exit(128 + exc_signal(exc)) from None


def _run_config(
    source: Any,
    *,
    output: str | None,
    model: str | None,
    provider: str | None,
    api_base: str | None,
    simulate: bool,
    options: Any,
    cache_dir: Path | None,
    max_line_size: str | None,
    max_messages: int | None,
    shared_cache: bool = False,
    cache_url: str | None = None,
    cache_namespace: str | None = None,
    cache_size_limit: int | None = None,
    cache_eviction: str | None = None,
    rate_group: str | None = None,
    workers: int | None = None,
    normalize: tuple[dict[str, str | None], str | None] = ({}, None),
    routes: tuple[Any, ...] = (),
    batch: Any = None,
    semantic: Any = None,
) -> Any:
    from llmbatch.app.inputs import default_output
    from llmbatch.app.runconfig import RunConfig
    from llmbatch.input import MAX_LINE_BYTES, MAX_MESSAGES, Defaults
    from llmbatch.providers.base import unknown_provider
    from llmbatch.units import parse_size

    if model is not None and ":" not in model and provider is None:
        raise UsageError(
            f"--model {model} has no provider: write --model openai:{model} (or another provider) or add --provider"
        )
    named: str | None = provider
    option = f"--provider {provider}"
    if model is not None and ":" in model:
        option, named = f"--model {model}", model.split(":", 1)[0]
    why = None if named is None else unknown_provider(named.lower())
    if why is not None:
        raise UsageError(f"{option}: {why}")
    if simulate and api_base:
        raise UsageError("--simulate sends every call to the simulator; drop --api-base")
    if rate_group is not None and cache_url is None:
        raise UsageError("--rate-group names a budget shared through a server: give --cache URL too")
    return RunConfig(
        input=source,
        output=None if output == "-" else Path(output) if output else default_output(source),
        defaults=Defaults(
            model=model,
            provider=provider,
            max_line_bytes=parse_size(max_line_size, option="--max-line-size") if max_line_size else MAX_LINE_BYTES,
            max_messages=max_messages or MAX_MESSAGES,
            normalize_models=normalize[0],
            normalize=normalize[1],
            routes=routes,
        ),
        options=options,
        api_base=api_base,
        simulate=simulate,
        sim_config=_sim_config_for_run() if simulate else None,
        cache_dir=cache_dir,
        cache_size_limit=cache_size_limit,
        cache_eviction=cache_eviction,
        shared_cache=shared_cache,
        cache_url=cache_url,
        cache_namespace=cache_namespace,
        rate_group=rate_group,
        workers=workers,
        batch=batch,
        # A big input is checked in two halves at once, unless --workers 0; not with --semantic: the
        # forked half would answer exact hits only.
        split=semantic is None,
        semantic=semantic,
    )


def _semantic_settings(
    semantic: bool,
    threshold: float | None,
    guards: str | None,
    model_dir: Path | None,
    audit: int | None,
    *,
    cache_off: bool,
) -> Any:
    """``--semantic``'s settings, or None; its options without it, or with no cache to read, are
    refused (they would silently do nothing)."""
    if not semantic:
        options = {
            "--semantic-threshold": threshold,
            "--semantic-guards": guards,
            "--semantic-model": model_dir,
            "--semantic-audit": audit,
        }
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]} applies to a semantic cache: add --semantic")
        return None
    if cache_off:
        raise UsageError("--semantic answers from the cache: it cannot be combined with --no-cache or --refresh")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise UsageError(f"--semantic-threshold {threshold}: give a cosine similarity above 0 and at most 1, like 0.9")
    if guards not in (None, "on", "off"):
        raise UsageError(f"--semantic-guards {guards}: give on or off")
    if model_dir is not None and not model_dir.is_dir():
        raise UsageError(f"--semantic-model {model_dir}: not a directory (it needs model.onnx and tokenizer.json)")
    from llmbatch.store.semantic import DEFAULT_THRESHOLD, SemanticSettings

    return SemanticSettings(
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        guards=guards != "off",
        model_dir=model_dir,
        audit=audit or 0,
    )


def _validate(config: Any, prefix: Any) -> Any:
    from llmbatch.app.validation import validate

    with _tuned_gc():
        try:
            return validate(config, prefix)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP: nothing has been sent yet
            _print_error("interrupted while checking the input; nothing was sent")
            raise typer.Exit(128 + exc_signal(exc)) from None


def exc_signal(exc: BaseException | None) -> int:
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def _run(
    config: Any,
    signals: _Signals,
    *,
    config_source: str | None,
    limits_given: bool = False,
    quiet: bool,
    verbose: bool,
    log_file: Path | None,
) -> None:
    """Check the input, prepare every provider it uses, run it under the display, and end with the
    exit code the run earned."""
    import asyncio

    from llmbatch.app.prefix import HitPrefix
    from llmbatch.display import Display, Summary, choose_mode
    from llmbatch.engine import RunStats, StopReason

    stats = RunStats()
    # A cached rerun's leading hits are answered in the validation pass: each line parsed once.
    # (Not with --batch-api: its lines are checked twice, and nothing may be written before that.)
    leading = config.options.cache_mode in ("normal", "only") and config.batch is None
    prefix = HitPrefix(config, stats) if leading else None
    display = Display(stats, mode=choose_mode(sys.stderr, quiet=quiet), stream=sys.stderr, simulated=config.simulate)
    events = _EventLog(
        display if verbose else None,
        log_file,
        None if config.input.temporary else config.input.path,
        warn=display,
        output=config.output,
    )
    outcome = None
    try:
        report = _validate(config, prefix)
        if config.batch is not None:
            from llmbatch.app.run import check_batch_lines

            check_batch_lines(config)
        if config.options.max_cost_usd is not None:
            _check_prices(report.models, config.options.prices)
        stats.total = report.requests
        announce = None
        if config_source is not None and not quiet:
            # Said at the start, once the providers are ready: a file nobody named sets the pace.
            # With -q, the one summary line names it instead.
            given = " and --rpm/--tpm" if limits_given else ""
            announce = f"limits from {config_source}{given}: {_describe_limits(config)}"
        try:
            outcome = asyncio.run(_execute(config, stats, prefix, report.models, display, signals, events, announce))
        except KeyboardInterrupt:  # a second signal, the grace period ran out, or a stop while starting
            outcome = None
            if stats.stopped is None:  # stopped before the engine could say why: the summary says it
                stats.stopped = signals.reason(signals.first or signal.SIGINT)
                stats.stop_reason = StopReason.INTERRUPTED
    finally:
        if prefix is not None:
            prefix.close()
        events.close()
    results_at = outcome.results_at if outcome else _partial_name(config.output)
    note = None
    if stats.stop_reason is StopReason.PENDING:
        # stats.stopped is said already ("stopped early: ..."): once is enough.
        note = (
            "batch jobs are running; run the same command again to collect their answers (nothing is submitted twice)"
        )
    elif stats.stop_reason is StopReason.HELD:
        note = (
            "results are incomplete: some prompts are in batch jobs submitted earlier (--batch-api) and not "
            "collected yet; run the same command with --batch-api to collect them (nothing is paid twice)"
        )
    elif stats.budget_reached:
        note = (
            f"the budget of {_usd(config.options.max_cost_usd)} is spent; results are incomplete. To go on, run the "
            "same command again with a larger --max-cost (answered prompts come from the cache and cost nothing)"
        )
    elif stats.fatal:
        note = (
            "results are incomplete: fix what the error below says, then run the same command again "
            "(nothing answered is paid for again: each answer is in the cache, or in the .partial file "
            "when the cache could not take it, and goes into the cache then)"
        )
    elif not (outcome and outcome.complete):
        note = "results are incomplete; run the same command again to finish (answered prompts come from the cache)"
    if outcome is not None and outcome.recovered:
        taken = (
            f"note: {outcome.recovered} answer{'s' if outcome.recovered != 1 else ''} an earlier run paid for "
            "were taken back into the cache from its .partial file"
        )
        note = f"{taken}\n{note}" if note else taken
    if outcome is not None and outcome.audit is not None:
        from llmbatch.display import audit_note

        note = f"{audit_note(outcome.audit)}\n{note}" if note else audit_note(outcome.audit)
    if outcome is not None and outcome.cache_recreated:
        removed = (
            f"note: the cache directory {outcome.cache_recreated} was removed during the run; "
            "the answers from then on are in a new cache there"
        )
        note = f"{removed}\n{note}" if note else removed
    display.summary(
        Summary(results=results_at, complete=bool(outcome and outcome.complete), note=note, config=config_source)
    )
    if signals.first is not None or stats.stop_reason is StopReason.INTERRUPTED:
        raise typer.Exit(signals.exit_code)
    if stats.fatal:
        _print_error(stats.stopped or "the run stopped early")
        raise typer.Exit(EXIT_SOME_ERRORS)
    if stats.budget_reached:
        raise typer.Exit(EXIT_BUDGET)
    if stats.stop_reason in (StopReason.PENDING, StopReason.HELD):
        raise typer.Exit(EXIT_PENDING)
    raise typer.Exit(EXIT_SOME_ERRORS if stats.errors or not stats.complete else EXIT_OK)


async def _execute(
    config: Any,
    stats: Any,
    prefix: Any,
    models: set[str],
    display: Any,
    signals: _Signals,
    events: _EventLog,
    announce: str | None = None,
) -> Any:
    """Prepare (a failure is a usage error: no display, no summary, no results file), then run
    under the display, with the stop signals handled in two steps."""
    import asyncio

    from llmbatch.app.run import execute, start

    started = await start(config, stats, models=models, prefix=prefix)
    if announce is not None:
        display.message(announce, style="dim")
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    engines: list[Any] = []

    def on_signal(signum: int, count: int) -> None:
        if count == 1 and engines:
            engines[0].stop(signals.reason(signum))
            loop.call_later(engines[0].longest_timeout_s + INTERRUPT_GRACE_S, _cancel, main)
        else:
            _cancel(main)

    def on_engine(engine: Any) -> None:
        engines.append(engine)

    def during_run(signum: int, count: int) -> None:
        loop.call_soon_threadsafe(on_signal, signum, count)

    signals.during_run = during_run
    try:
        with display:
            return await execute(config, stats, started, on_engine=on_engine, on_event=events, prefix=prefix)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        signals.during_run = None


class _EventLog:
    """``-v``: each retry, 429, failed line and stop, as one line on stderr (above the live
    display); ``--log FILE``: the same events appended to FILE as JSON lines.

    The log is never worth a paid answer: if FILE cannot be written any more (a full disk), the
    run says so once and goes on without it. It is never the input file either, nor the results
    file or its ``.partial`` (the results are renamed over the one and truncated in the other)."""

    def __init__(
        self,
        display: Any,
        path: Path | None,
        input_path: Path | None = None,
        warn: Any = None,
        output: Path | None = None,
    ) -> None:
        self._display = display
        self._warn = warn  # events marked "warn" (money spent again) are shown without -v too
        self._file = None
        self._path = path
        if path is not None:
            if input_path is not None and _same_file(path, input_path):
                raise UsageError(f"--log {path}: that is the input file; give the log another name")
            if output is not None and output.name:
                partial = output.with_name(output.name + ".partial")
                for results, what in ((output, "the results file"), (partial, "the results' .partial")):
                    # By name too: neither needs to exist yet for the log to be lost in it.
                    if _same_file(path, results) or os.path.realpath(path) == os.path.realpath(results):
                        raise UsageError(f"--log {path}: that is {what}; give the log another name")
            try:
                self._file = open(path, "ab")  # noqa: SIM115 - held for the run, closed by close()
            except OSError as exc:
                raise UsageError(f"cannot write the log to {path}: {exc.strerror or exc}") from None

    def __call__(self, event: dict[str, Any]) -> None:
        import time

        if self._file is not None:
            import orjson

            try:
                self._file.write(
                    orjson.dumps({"time": round(time.time(), 3), **event}, option=orjson.OPT_APPEND_NEWLINE)
                )
                self._file.flush()
            except OSError as exc:
                self._give_up(exc)
        if self._display is not None:
            self._display.message(_describe_event(event), style="yellow" if event.get("warn") else "dim")
        elif self._warn is not None and event.get("warn"):
            self._warn.message(_describe_event(event), style="yellow")

    def _give_up(self, exc: OSError) -> None:
        file, self._file = self._file, None
        with contextlib.suppress(OSError):
            if file is not None:
                file.close()
        _print_warning(f"cannot write the log to {self._path} any more ({exc.strerror or exc}); the run goes on")

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._file = None
                _print_warning(f"cannot write the log to {self._path} ({exc.strerror or exc})")
            self._file = None


def _same_file(a: Path, b: Path) -> bool:
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _print_warning(text: str) -> None:
    sys.stderr.write(f"llmbatch: warning: {printable(text)}\n")
    sys.stderr.flush()


def _describe_event(event: dict[str, Any]) -> str:
    if event["event"] == "stop":
        return f"stop: {event['message']}"
    if event["event"].startswith("batch_"):
        return _describe_batch_event(event)
    if event["event"] == "escalate":
        failed = f"{event['from']} failed {event['reason']}"
        return f"escalate line {event['line']} ({event['id']}): {failed}, asking {event['to']}"
    if event["event"] == "fallback":
        error = event["error"]
        status = f" {error['status_code']}" if error.get("status_code") else ""
        failed = f"{event['from']} failed ({error['type']}{status})"
        return f"fallback line {event['line']} ({event['id']}): {failed}, asking {event['to']}"
    status = f" {event['status_code']}" if event.get("status_code") else ""
    what = f"line {event['line']} ({event['id']}), attempt {event['attempt']}: {event.get('type')}{status}"
    message = f": {event['message']}" if event.get("message") else ""
    if event["event"] == "retry":
        wait = f"; retrying in {event['wait_s']:.1f}s" if event.get("wait_s") is not None else ""
        if event.get("next") is not None:  # a batch line
            wait = "; retrying in a later job" if event["next"] == "job" else "; retrying live"
        return f"retry {what}{message}{wait}"
    return f"failed {what}{message}"


def _describe_batch_event(event: dict[str, Any]) -> str:
    kind, job = event["event"], f"{event['job']} ({event.get('batch_id') or 'no batch id'})"
    if kind == "batch_submitted":
        return f"batch job {job}: {event['requests']} requests of {event['model']} submitted"
    if kind == "batch_attached":
        return f"batch job {job}: submitted by an earlier run, waiting for it"
    if kind == "batch_collected":
        return f"batch job {job}: {event['status']}, {event['answered']} lines read"
    if kind == "batch_resubmitting":
        return f"batch job {job} is {event['message']}: its {event['requests']} requests go out again in a new job"
    what = "refused" if kind == "batch_refused" else "could not be read"
    again = " (trying again)" if event.get("retrying") else ""
    return f"batch job {job} {what}{again}: {event.get('type')}: {event.get('message')}"


def _describe_limits(config: Any) -> str:
    limits = config.options.limits
    parts = []
    for model, setting in sorted(limits.items()):
        named = [(name, getattr(setting, name)) for name in ("rpm", "tpm", "concurrency")]
        parts.append(f"{model} " + ", ".join(f"{name} {value:,}" for name, value in named if value))
    return "; ".join(parts) or "none"


def _usd(amount: float | None) -> str:
    from llmbatch.pricing import format_usd

    return format_usd(amount)


def _parse_workers(value: str) -> int | None:
    if value == "auto":
        return None
    if value.isdigit() and int(value) <= 64:
        return int(value)
    raise UsageError(f"--workers {value}: give a number from 0 to 64, or auto")


def _print_plan(config: Any, *, as_json: bool) -> None:
    from llmbatch.app.plan import plan
    from llmbatch.display import print_plan

    result = plan(config)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_plan(result)


def _check_prices(models: set[str], prices: Any) -> None:
    """--max-cost needs a price for every model it may call: refuse up front, not mid-run."""
    from llmbatch.pricing import is_priced

    unknown = sorted(m for m in models if not is_priced(*m.split(":", 1), prices=prices))
    if unknown:
        raise UsageError(
            f"--max-cost: no price is known for {', '.join(unknown)}, so the budget cannot be kept; "
            "set input_per_million and output_per_million for it in llmbatch.toml"
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
    """Where the lines of a run that ended early are: the ``.partial`` file, or the stream itself."""
    from llmbatch.results import classify_output

    try:
        target = classify_output(out)
    except LlmbatchError:
        target = None
    if target is None or target.kind == "file":
        return str(out.with_name(out.name + ".partial")) if out is not None else "stdout"
    return "stdout" if target.kind == "stdout" else str(out)


def _sim_config_for_run() -> Any:
    from llmbatch.sim import SimConfig

    # A little latency so that the demo shows its progress; answers stay deterministic.
    return SimConfig(latency_s=0.05, latency_dist="lognormal", latency_sigma=0.4)


def _cancel(task: Any) -> None:
    if task is not None and not task.done():
        task.cancel()


# --- cache -------------------------------------------------------------------------------------


def _stdin_is_terminal() -> bool:
    """Whether someone is there to answer a question (tests replace this)."""
    return sys.stdin.isatty()


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


@cache_app.command("stats", short_help="Entries, size, size limit, entries per model, hits and misses.")
@_handles_errors
def cache_stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
) -> None:
    """Entries, size on disk, size limit, oldest and newest entry, entries per model, lifetime hits and misses."""
    from llmbatch.display import print_cache_stats

    place = _place(cache_dir, cache_url, cache_namespace, shared_cache)
    directory = place.describe()
    if not place.exists():
        stats = None
    else:
        with place.open(create=False) as cache:
            stats = cache.stats()
        from dataclasses import replace

        from llmbatch.store.semantic import semantic_counts  # its own small database: no model is loaded

        semantic = semantic_counts(place.local_directory)
        if semantic is not None:
            stats = replace(stats, details={**stats.details, "semantic": semantic})
    if as_json:
        import orjson

        payload = stats.to_dict() if stats else {"directory": str(directory), "entries": 0, "size_bytes": 0}
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    print_cache_stats(stats, directory=str(directory))


@cache_app.command("purge", short_help="Remove entries older than a duration, or of one model.")
@_handles_errors
def cache_purge(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Remove entries stored longer ago than this (90s, 45m, 12h, 30d, 2w). "
            "Optional with --model: then every entry of that model goes.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", metavar="PROVIDER:MODEL", help="Only entries of this provider:model.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be removed.")] = False,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
) -> None:
    """Remove cache entries older than a duration, or of one model, or both."""
    from llmbatch.units import parse_duration

    if older_than is None and model is None:
        raise UsageError(
            "cache purge needs --older-than DURATION, --model provider:model, or both; "
            "to remove every entry, use llmbatch cache clear"
        )
    seconds = parse_duration(older_than, option="--older-than") if older_than is not None else None
    place = _place(cache_dir, cache_url, cache_namespace, shared_cache)
    directory = place.describe()
    if not place.exists():
        sys.stdout.write(f"no cache at {directory}: nothing to purge\n")
        return
    if model is not None and ":" not in model:
        raise UsageError(f"--model {model}: name it as provider:model, as cache stats lists them")
    with place.open(create=False) as cache:
        count = cache.purge(seconds, tag=model, dry_run=dry_run)
        names = list(cache.stats().by_model) if count == 0 and model is not None else []
    which = f" of {model}" if model else ""
    age = f" older than {older_than}" if older_than is not None else ""
    verb = "would remove" if dry_run else "removed"
    sys.stdout.write(f"{verb} {_entries(count)}{which}{age}\n")
    alike = [name for name in names if name != model and name.endswith(f"/{model}")]
    if alike:  # simulated answers are kept apart, as simulated/provider:model
        sys.stdout.write(f"note: this cache also holds {', '.join(alike)}: name it so to purge those\n")


# --- cache explain, show, verify (the logic is in app.inspect; here options and rendering) ---------

LineRefArgument = Annotated[
    str,
    typer.Argument(
        metavar="FILE:LINE",
        help="An input file and a line number from 1, as error messages give them (split at the last colon).",
        show_default=False,
    ),
]


@cache_app.command("explain", short_help="A line's cache key: what it is made of, and whether it is stored.")
@_handles_errors
def cache_explain(
    line: LineRefArgument,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            metavar="FILE:LINE",
            help="Another line (of this file or another): say field by field how its key material differs.",
        ),
    ] = None,
    model: ModelOption = None,
    provider: ProviderOption = None,
    api_base: ApiBaseOption = None,
    simulate: SimulateOption = False,
    config_file: ConfigOption = None,
    normalize: NormalizeOption = None,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
    max_line_size: MaxLineSizeOption = None,
    max_messages: MaxMessagesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print the key a run with the same options would make for one line: the canonical material it
    hashes (provider, endpoint, model, messages, params, extra, sample), the key, and whether the cache
    holds an answer for it (when stored, at what cost). Nothing is sent."""
    from llmbatch.app.inspect import diff_material, explain_line, split_line_ref, stored_under
    from llmbatch.config import load_config, merge_normalize
    from llmbatch.engine import RunOptions

    refs = [split_line_ref(line)] + ([split_line_ref(against)] if against is not None else [])
    # As run reads it: a bad file is the same error, and its normalisation and routes make the keys.
    config_in_use = load_config(config_file)
    normalized = merge_normalize(config_in_use, normalize)
    routes = config_in_use.routes
    sources: dict[str, Any] = {}
    try:
        explained = []
        for name, number in refs:
            if name not in sources:  # one copy of stdin for both sides of -:3 --against -:4
                sources[name] = _open_input(name)
            config = _run_config(
                sources[name],
                output=None,
                model=model,
                provider=provider,
                api_base=api_base,
                simulate=simulate,
                options=RunOptions(),
                cache_dir=cache_dir,
                shared_cache=shared_cache,
                max_line_size=max_line_size,
                max_messages=max_messages,
                normalize=normalized,
                routes=routes,
            )
            explained.append(explain_line(config, number))
    finally:
        for source in sources.values():
            source.cleanup()
    store = _open_existing(_place(cache_dir, cache_url, cache_namespace, shared_cache))
    try:
        stored = [stored_under(store, item.key) for item in explained]
    finally:
        if store is not None:
            store.close()
    differences = diff_material(explained[1].material, explained[0].material) if against is not None else []
    if as_json:
        import orjson

        sides = [
            {**_explained_dict(item), "stored": _stored_dict(found)}
            for item, found in zip(explained, stored, strict=True)
        ]
        payload: dict[str, Any] = sides[0]
        if against is not None:
            payload = {
                "line": sides[0],
                "against": sides[1],
                "same_key": explained[0].key == explained[1].key,
                "differences": [difference.to_dict() for difference in differences],
            }
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from llmbatch.display import print_against, print_explain

    if against is None:
        print_explain(explained[0], stored[0])
    else:
        print_against(explained, differences, stored)


def _explained_dict(explained: Any) -> dict[str, Any]:
    return {
        "where": explained.where,
        "model": explained.model_ref,
        "key": explained.key,
        "material": explained.material,
    }


def _stored_dict(stored: Any) -> dict[str, Any] | None:
    if stored is None:
        return None
    entry = stored.entry or {}
    expired = stored.expires_at is not None and stored.expires_at < time.time()
    return {
        "stored_at": stored.stored_at,
        "expires_at": stored.expires_at,
        "expired": expired,
        "tag": stored.tag,
        "cost_usd": entry.get("cost_usd"),
        "problem": stored.problem,
        "served": stored.entry is not None and not expired,
    }


@cache_app.command("show", short_help="One cache entry, readably: prompt, answer, usage, cost, when.")
@_handles_errors
def cache_show(
    key: Annotated[
        str,
        typer.Argument(
            metavar="KEY", help="A key (v1:…, as results and cache explain give it) or its first 8+ hex digits."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the stored record itself, as JSON.")] = False,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
) -> None:
    """Show one cache entry: the prompt, the answer, usage, cost, when it was stored and when it
    expires, model and tag. A key that is not in the cache is exit 1; one that is not a key, or a
    prefix of several, exit 2."""
    from llmbatch.app.inspect import find_entry

    store = _open_existing(_place(cache_dir, cache_url, cache_namespace, shared_cache))
    try:
        found = find_entry(store, key)
    finally:
        if store is not None:
            store.close()
    if found.entry is None:
        raise LlmbatchError(
            f"the entry {found.key} does not decode ({found.problem}): it is never served; "
            "llmbatch cache verify --repair removes it"
        )
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(found.entry, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from llmbatch.display import print_entry

    print_entry(found)


@cache_app.command("verify", short_help="Check every entry; --repair removes broken and expired ones.")
@_handles_errors
def cache_verify(
    repair: Annotated[
        bool, typer.Option("--repair", help="Remove every entry found (broken or expired); the next run pays again.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
) -> None:
    """Check every cache entry: that it decodes, that its key is the one its request material makes,
    that its digest matches (damaged bytes), and whether it has expired. Entries from before keys and
    digests were recorded cannot be checked and are counted apart. Like fsck, exits 1 when it finds
    broken entries and --repair was not given (expired ones are listed, but are not damage); with
    --repair, every entry found is removed and it exits 0."""
    from llmbatch.app.inspect import verify

    place = _place(cache_dir, cache_url, cache_namespace, shared_cache)
    store = _open_existing(place)
    if store is None:
        sys.stdout.write(f"no cache at {place.describe()}: nothing to verify\n")
        return
    with store:
        report = verify(store, repair=repair)
    if as_json:
        import orjson

        payload = {"directory": place.describe(), **report.to_dict()}
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from llmbatch.display import print_verify

        print_verify(report, directory=place.describe())
    if report.broken and not repair:
        raise typer.Exit(EXIT_SOME_ERRORS)


@cache_app.command("clear", short_help="Remove every entry (asks first).")
@_handles_errors
def cache_clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first (for scripts).")] = False,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
) -> None:
    """Remove every cache entry; the cache's settings (size limit, eviction) stay."""

    place = _place(cache_dir, cache_url, cache_namespace, shared_cache)
    directory = place.describe()
    if not place.exists():
        sys.stdout.write(f"no cache at {directory}: nothing to clear\n")
        return
    asking = not yes
    if asking and not _stdin_is_terminal():
        # Nobody can answer: a script that forgot --yes must not hang, nor clear without saying so.
        raise UsageError(f"cache clear removes every entry in {directory}: add --yes to do it without a question")
    with place.open(create=False) as cache:
        count = cache.count()
        if count and asking:
            try:
                sure = typer.confirm(f"Remove all {_entries(count)} from the cache at {directory}?", err=True)
            except typer.Abort:  # Ctrl-C or end of input at the question: click would print "Aborted!"
                sure = False
                sys.stderr.write("\n")
            if not sure:
                sys.stderr.write("nothing was removed\n")
                raise typer.Exit(EXIT_SOME_ERRORS)
        removed = cache.clear() if count else 0
    sys.stdout.write(f"removed {_entries(removed)} from the cache at {directory}\n")


@cache_app.command("export", short_help="Write the cache's answers as JSONL, for import elsewhere.")
@_handles_errors
def cache_export(
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Where to write the records (- for standard output).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None, typer.Option("--model", metavar="PROVIDER:MODEL", help="Only entries of this provider:model.")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", metavar="DURATION", help="Only entries stored longer ago than this.")
    ] = None,
    newer_than: Annotated[
        str | None, typer.Option("--newer-than", metavar="DURATION", help="Only entries stored within this (7d, 12h).")
    ] = None,
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
) -> None:
    """Write every live entry as one JSON record per line, oldest first: the answer, the request its
    key was made from, when it was stored, its expiry and a digest. llmbatch cache import reads it."""
    from llmbatch.app.transfer import export_entries
    from llmbatch.units import parse_duration

    if model is not None and ":" not in model:
        raise UsageError(f"--model {model}: name it as provider:model, as cache stats lists them")
    now = time.time()
    before = now - parse_duration(older_than, option="--older-than") if older_than is not None else None
    after = now - parse_duration(newer_than, option="--newer-than") if newer_than is not None else None
    if before is not None and after is not None and after >= before:
        raise UsageError(
            f"--older-than {older_than} and --newer-than {newer_than} select nothing together: "
            "an entry cannot be both; the newer bound must be the shorter duration"
        )
    if output == "-" and _stdout_is_terminal():
        # As gzip does: records scrolling past on a terminal help nobody.
        raise UsageError(
            "cache export -o - writes records to standard output, which is a terminal: pipe it or name a file"
        )
    place = _place(cache_dir, cache_url, cache_namespace, shared_cache)
    directory = place.describe()
    if output != "-" and place.holds(Path(output)):
        raise UsageError(f"cannot write the records to {output}: it is inside the cache directory; choose another file")
    if not place.exists():
        raise UsageError(f"no cache at {directory}: nothing to export")
    with place.open(create=False) as store:
        done = export_entries(
            store, None if output == "-" else Path(output), tag=model, stored_before=before, stored_after=after
        )
    where = "standard output" if done.where is None else str(done.where)
    sys.stderr.write(f"exported {_entries(done.written)} from the cache at {directory} to {where}\n")
    if done.written == 0 and model is not None and not model.startswith("simulated/"):
        # As purge says: answers from --simulate are filed apart, as simulated/provider:model.
        sys.stderr.write(f"note: answers from --simulate are filed as simulated/{model}: name it so to export those\n")
    if done.unverifiable:
        sys.stderr.write(
            f"note: {_entries(done.unverifiable)} stored before llmbatch kept the request with the answer were "
            "left out: import could not check their keys (they stay in this cache and still serve hits)\n"
        )


@cache_app.command("import", short_help="File the answers of an export into this cache; every record checked.")
@_handles_errors(invalid="nothing was imported")
def cache_import(
    records: Annotated[
        str,
        typer.Argument(
            metavar="FILE", help="Records written by llmbatch cache export, or - to read stdin.", show_default=False
        ),
    ],
    cache_dir: CacheDirOption = None,
    cache_url: CacheUrlOption = None,
    cache_namespace: CacheNamespaceOption = None,
    shared_cache: SharedCacheOption = False,
) -> None:
    """Check every record of an export (its key against the request it answers, its digest, that it
    is an answer), then file them all, keeping when each was stored; where this cache already has
    the key, the newer answer stays. A bad record is named by its line and nothing is imported."""
    from llmbatch.app.transfer import import_entries

    place = _place(cache_dir, cache_url, cache_namespace, shared_cache)
    directory = place.describe()
    source = _open_input(records)
    try:
        done = import_entries(place.open, source.path, source=source.source)
    finally:
        source.cleanup()
    loaded = done.loaded
    parts = [f"{loaded.added} new"] + [
        text
        for count, text in (
            (loaded.replaced, f"{loaded.replaced} replaced an older answer"),
            (loaded.kept, f"{loaded.kept} left as they were: this cache's answer is as new or newer"),
            (done.expired, f"{done.expired} expired, not filed"),
        )
        if count
    ]
    records = f"{done.records} record{'s' if done.records != 1 else ''}"
    sys.stdout.write(f"imported {records} into the cache at {directory}: {'; '.join(parts)}\n")


def _place(cache_dir: Path | None, cache_url: str | None, namespace: str | None, shared: bool) -> Any:
    """Where the cache commands find the store (``StorePlace``)."""
    from llmbatch.store import StorePlace

    return StorePlace.of(cache_dir, cache_url, namespace, shared)


#: The longest --ttl: a hundred years. Longer is "never" (leave --ttl out), and a server refuses
#: an expiry past what it can count (Redis: a time in milliseconds that fits 64 bits).
MAX_TTL_S = 100 * 365 * 86_400


def _ttl(text: str | None) -> float | None:
    from llmbatch.units import parse_duration

    if not text:
        return None
    seconds = parse_duration(text, option="--ttl")
    if seconds > MAX_TTL_S:
        raise UsageError(f"--ttl {text}: at most 100 years; leave --ttl out for answers that never expire")
    return seconds


def _open_existing(place: Any) -> Any:
    """The store at ``place``, or None when there is none yet (a machine that never ran anything)."""
    return place.open(create=False) if place.exists() else None


def _stdout_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (a test runner)
        return False


# --- report ------------------------------------------------------------------------------------


@batches_app.command("list", short_help="The jobs this cache directory knows (nothing is sent).")
@_handles_errors
def batches_list(
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per job, one a line.")] = False,
) -> None:
    from llmbatch.app.batches import job_dict, jobs
    from llmbatch.display import print_jobs

    rows = [job_dict(record) for record in jobs(_place(cache_dir, None, None, False))]
    if as_json:
        import orjson

        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return
    print_jobs(rows)


@batches_app.command("status", short_help="Ask the provider how a job is doing (ID: ours or the batch id).")
@_handles_errors
def batches_status(
    job: Annotated[str, typer.Argument(metavar="ID", help="A job id (job_...) or the provider's batch id.")],
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    _batch_command(job, cache_dir, as_json, cancel=False)


@batches_app.command("cancel", short_help="Cancel a job; the next run keeps its finished answers.")
@_handles_errors
def batches_cancel(
    job: Annotated[str, typer.Argument(metavar="ID", help="A job id (job_...) or the provider's batch id.")],
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    _batch_command(job, cache_dir, as_json, cancel=True)


def _batch_command(job: str, cache_dir: Path | None, as_json: bool, *, cancel: bool) -> None:
    import asyncio

    from llmbatch.app import batches
    from llmbatch.display import print_jobs

    place = _place(cache_dir, None, None, False)
    record = asyncio.run((batches.cancel if cancel else batches.status)(place, job))
    row = batches.job_dict(record)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(row).decode() + "\n")
    else:
        print_jobs([row])


@app.command("report", short_help="Sum up a results file: status, errors, cost, tokens, latency.")
@_handles_errors(invalid="no report was made")
def report_command(
    results: Annotated[
        str,
        typer.Argument(
            metavar="RESULTS", help="A results file written by llmbatch run, or - to read stdin.", show_default=False
        ),
    ],
    html: Annotated[
        str | None,
        typer.Option(
            "--html",
            metavar="FILE",
            help="Also write the report as one self-contained HTML page (charts inline) to FILE (- for stdout).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Sum up a results file: counts by status, model and finish reason; errors by type and message;
    cost, tokens and latency percentiles; answers that were cut off."""
    from llmbatch.app.report import read_report, write_html

    if html == "-" and as_json:
        raise UsageError("--html - and --json both write to standard output: give the page a file name")
    summary = read_report(results)
    if html is not None:
        written = write_html(summary, None if html == "-" else Path(html), source=results)
        if written is None:
            return  # the page is standard output's
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from llmbatch.display import print_report

        print_report(summary)
    if html is not None:
        sys.stderr.write(f"llmbatch: report page written to {html}\n")  # stderr: stdout may be --json


# --- sim ---------------------------------------------------------------------------------------


@app.command(short_help="Serve the OpenAI-compatible simulator, to rehearse against.")
@_handles_errors
def sim(
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port to listen on (0 picks a free one).")] = 8000,
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on.")] = "127.0.0.1",
    latency: Annotated[
        str, typer.Option("--latency", metavar="DURATION", help="Median latency per call, e.g. 200ms.")
    ] = "0",
    latency_dist: Annotated[
        str, typer.Option("--latency-dist", metavar="fixed|lognormal", help="How latency varies.")
    ] = "fixed",
    latency_sigma: Annotated[
        float, typer.Option("--latency-sigma", metavar="SIGMA", help="Spread of lognormal latency.")
    ] = 0.5,
    p429: Annotated[
        float, typer.Option("--p429", metavar="FRACTION", min=0, max=1, help="Fraction of calls answered 429.")
    ] = 0.0,
    retry_after: Annotated[
        str, typer.Option("--retry-after", metavar="DURATION", help="Retry-After sent with injected 429s.")
    ] = "1s",
    p500: Annotated[
        float, typer.Option("--p500", metavar="FRACTION", min=0, max=1, help="Fraction answered 500.")
    ] = 0.0,
    p503: Annotated[
        float, typer.Option("--p503", metavar="FRACTION", min=0, max=1, help="Fraction answered 503.")
    ] = 0.0,
    phang: Annotated[
        float,
        typer.Option("--phang", metavar="FRACTION", min=0, max=1, help="Fraction that hang until the client gives up."),
    ] = 0.0,
    pdrop: Annotated[
        float,
        typer.Option("--pdrop", metavar="FRACTION", min=0, max=1, help="Fraction whose connection is dropped."),
    ] = 0.0,
    rpm: Annotated[
        int | None, typer.Option("--rpm", metavar="N", min=1, help="Enforce this many requests per minute.")
    ] = None,
    tpm: Annotated[
        int | None, typer.Option("--tpm", metavar="N", min=1, help="Enforce this many tokens per minute.")
    ] = None,
    limit_window: Annotated[
        str, typer.Option("--limit-window", metavar="DURATION", help="Window over which --rpm/--tpm are enforced.")
    ] = "60s",
    require_api_key: Annotated[
        str | None, typer.Option("--require-api-key", metavar="KEY", help="Answer 401 unless this key is sent.")
    ] = None,
    models: Annotated[
        str | None,
        typer.Option("--models", metavar="NAMES", help="Comma-separated model names; others get 404."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Seed for fault and latency draws.")] = None,
    batch_processing: Annotated[
        str,
        typer.Option("--batch-processing", metavar="DURATION", help="How long a batch job takes (0: at once)."),
    ] = "0",
    batch_fail_share: Annotated[
        float,
        typer.Option(
            "--batch-fail-share", metavar="FRACTION", min=0, max=1, help="Fraction of batch lines that fail (500)."
        ),
    ] = 0.0,
    batch_expire_after: Annotated[
        int | None,
        typer.Option(
            "--batch-expire-after", metavar="N", min=0, help="A batch job answers N lines, then ends expired."
        ),
    ] = None,
    batch_max_requests: Annotated[
        int | None,
        typer.Option("--batch-max-requests", metavar="N", min=1, help="Most lines in one batch job."),
    ] = None,
) -> None:
    """Run the OpenAI-compatible simulator (and Anthropic's Messages, and both Batch APIs), for
    rehearsals: point --api-base at it."""
    from llmbatch.sim import SimConfig, parse_duration_s, serve_forever

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
            batch_processing_s=seconds(batch_processing, "--batch-processing"),
            batch_fail_share=batch_fail_share,
            batch_expire_after=batch_expire_after,
            batch_max_requests=batch_max_requests,
        )
    except ValueError as exc:
        raise UsageError(f"sim: {exc}") from None

    def ready(url: str) -> None:
        sys.stderr.write(f"llmbatch simulator listening on {url} (Ctrl-C to stop)\n")
        sys.stderr.write(f"  try: llmbatch run FILE --api-base {url} --model openai:gpt-4o-mini\n")
        sys.stderr.flush()

    try:
        serve_forever(config, host=host, port=port, on_ready=ready)
    except OSError as exc:  # the port is taken, or not ours to listen on
        raise UsageError(f"sim: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def main() -> None:
    """The ``llmbatch`` command: run it, then leave at once.

    When a command returns, all it must keep is kept: the results file renamed into place (or
    written to stdout), every paid answer committed to the store, worker processes told to stop,
    files and the store closed. What the interpreter does after that is tear down a long run's
    objects one by one and run the modules' finalisers: 0.7-1 s after a cold run of 5,000 prompts
    (bench/peers.py), all of it between the last answer and the prompt coming back. So the
    exit code is handed straight to ``os._exit`` once stdout and stderr are flushed. An
    unexpected exception still ends the usual way, with its traceback. In-process callers (the
    tests' ``CliRunner``, notebooks) call ``app`` and keep the interpreter's ordinary exit."""
    try:
        app()
        code: int = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that descriptor closed: Python has no stream for it
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head) or stream: nothing more can reach it
            code = code or 1
    os._exit(code)


def _exit_code(code: object) -> int:
    """``SystemExit``'s code as the process's: None is 0, a message is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


if __name__ == "__main__":
    main()
