"""A whole ``llmbatch run``, as a library: validate, open the cache, run, finish the file.

The CLI parses options into a :class:`RunConfig`, calls :func:`validate` (so that a bad line
is reported before anything else happens) and then :func:`execute` inside its display. Nothing
here knows typer or rich; a notebook or a script can drive the same steps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson

from llmbatch.engine import LOOKUP_CHUNK, Resolver, RunOptions, RunStats, live_resolver
from llmbatch.errors import CacheError, InputError, LineError, LlmbatchError, UsageError
from llmbatch.keys import SIMULATOR_ENDPOINT
from llmbatch.model.entry import CacheEntry, make_entry
from llmbatch.prompts import (
    Defaults,
    IdHashes,
    PartReport,
    Request,
    ValidationReport,
    check_lines,
    combine_parts,
    count_lines_before,
    line_start_near,
    read_requests,
)
from llmbatch.providers.base import SIMULATOR_KEY, CallError, Destination
from llmbatch.results import Result, ResultWriter, append_or_undo, classify_output, encode
from llmbatch.store import DiskStore, ResponseStore, default_cache_dir

__all__ = [
    "HitPrefix",
    "Input",
    "Plan",
    "RunConfig",
    "RunOutcome",
    "check_output",
    "execute",
    "open_input",
    "plan",
    "start",
    "validate",
]

#: With --simulate and no model anywhere, lines get this one: a real model name, so that
#: everything downstream (keys, tags, later prices) behaves as it will for real.
SIMULATE_DEFAULT_MODEL = "openai:gpt-4o-mini"


@dataclass
class Input:
    """The input as a re-readable file: stdin is spooled to a temporary file first, because
    the file is read twice (validate everything, then stream the requests)."""

    path: Path
    source: str  # the name used in FILE:LINE messages
    temporary: bool = False

    def cleanup(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def open_input(name: str) -> Input:
    if name == "-":
        return Input(_copy_of_stdin(), "<stdin>", temporary=True)
    path = Path(name)
    if not path.exists():
        raise UsageError(f"input file not found: {name}")
    if not path.is_file():
        raise UsageError(f"input is not a file: {name}")
    return Input(path, name)


@dataclass
class RunConfig:
    input: Input
    output: Path | None  # None: standard output
    defaults: Defaults = field(default_factory=Defaults)
    options: RunOptions = field(default_factory=RunOptions)
    api_base: str | None = None
    simulate: bool = False
    sim_config: Any = None  # simulator.SimConfig when simulate is set
    cache_dir: Path | None = None
    cache_size_limit: int | None = None
    cache_eviction: str | None = None
    shared_cache: bool = False  # --shared-cache: a cache directory others may own or write, on purpose
    workers: int | None = None  # processes making the calls; None: auto_workers decides, 0: this one
    split: bool = False  # check a big input in two halves at once, by forking (not with workers=0)
    #: Where the calls go, and so what the keys record; made from the fields above when not given.
    destination: Destination = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.destination is None:
            # Once per run: the environment's base URLs are read now, for every key of the run.
            if self.simulate:
                self.destination = Destination.of(
                    api_key=SIMULATOR_KEY, force_provider="openai", namespace=SIMULATOR_ENDPOINT
                )
            else:
                self.destination = Destination.of(api_base=self.api_base)


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


def default_output(input: Input) -> Path | None:
    """``<stem>.results.jsonl`` beside the input; stdout when the input is stdin."""
    if input.temporary:
        return None
    return input.path.with_name(f"{input.path.stem}.results.jsonl")


def check_output(config: RunConfig) -> None:
    """Refuse, before anything is read or sent, results that would destroy something: a
    :class:`UsageError` (exit 2) naming the file and what to do.

    The results must not be the input file by any of its names: the same path spelled another
    way, a symbolic or hard link to it (``-o``, or a link planted at the default output's name),
    the output's ``.partial`` (it is truncated first), or standard output opened on it (``-o - >>
    p.jsonl``). Then whatever :func:`llmbatch.results.classify_output` refuses (a link we did not
    make, a device or socket, a read-only results file). A dry run writes nothing: not needed."""
    output, source = config.output, None
    if not config.input.temporary:
        with contextlib.suppress(OSError):  # it was there a moment ago; reading it will say what went wrong
            source = os.stat(config.input.path)
    if source is not None and output is not None and output.name:  # no name ("."): a directory, refused below
        partial = output.with_name(output.name + ".partial")
        if _same_file(_stat(output), source):
            raise UsageError(
                f"cannot write results to {output}: it is {_which_name(output, config.input)}; "
                "choose another file with -o"
            )
        if _same_file(_stat(partial), source):
            raise UsageError(
                f"cannot write results to {output}: its temporary file {partial} is the input file; "
                "choose another file with -o"
            )
    target = classify_output(output)
    if source is not None and target.kind == "stdout" and _same_file(_stdout_stat(), source):
        raise UsageError(
            f"cannot write results to standard output: it is the input file {config.input.source}; "
            "choose another file with -o"
        )


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _stdout_stat() -> os.stat_result | None:
    """What the results written to standard output land in (None: not a descriptor, as in tests)."""
    try:
        return os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _same_file(a: os.stat_result | None, b: os.stat_result) -> bool:
    return a is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _which_name(output: Path, input: Input) -> str:
    """How ``output`` names the input file, for the message."""
    if output.is_symlink():
        return f"a symbolic link to the input file {input.source}"
    if os.path.realpath(output) == os.path.realpath(input.path):
        return "the input file"
    return f"a hard link to the input file {input.source}"


def effective_defaults(config: RunConfig) -> Defaults:
    if config.simulate and config.defaults.model is None:
        return Defaults(model=SIMULATE_DEFAULT_MODEL, provider=config.defaults.provider)
    return config.defaults


class HitPrefix:
    """The leading cache hits of a run, answered in the validation pass.

    A cached rerun would otherwise parse every line twice: once to validate the whole file, once
    to run it. While validating, each valid request is looked up (a chunk at a time); the leading
    hits become result lines, and the run later resumes at the first line that was not a hit.
    Nothing is sent from here, and a bad line anywhere still means exit code 2 and no results file.

    Where the lines go meanwhile: when no ``.partial`` results file exists (the usual rerun), one
    is created and locked now and written directly, and removed again if the input turns out bad.
    Otherwise (an interrupted run's ``.partial`` is there, or the results go to stdout) they go to
    a private, unnamed spool file, copied into the results only once the whole input is valid, so
    that a bad line leaves the earlier file as it was.
    """

    def __init__(
        self,
        config: RunConfig,
        stats: RunStats,
        *,
        spool: IO[bytes] | None = None,
        first_line: int = 1,
        open_cache: Callable[[], DiskStore] | None = None,
    ) -> None:
        """``spool``, ``first_line``, ``open_cache``: for the second half of a big input, answered
        by a forked child (:func:`validate`): its hits go to ``spool``."""
        self._config = config
        self._stats = stats
        self._opener = open_cache or (lambda: _open_cache(config))
        #: Told whether the cache could be opened, once that has been tried (validate's child waits for it).
        self.after_open: Callable[[bool], None] | None = None
        # Opened by the first lookup, so that a file that is bad from its first lines touches
        # nothing (and a cache that cannot be opened is reported by the run, after validation).
        self.cache: DiskStore | None = None
        self.writer: ResultWriter | None = None
        self.spool: IO[bytes] | None = spool
        self._engine: Resolver | None = None
        self.lines = 0
        self.resume_line = first_line  # the first line not answered here
        self._pending: list[Request] = []
        self._open = True

    def _begin(self) -> Resolver | None:
        config = self._config
        try:
            self.cache = self._opener()
        except LlmbatchError:
            self._open = False
        if self.after_open is not None:
            self.after_open(self.cache is not None)
        if self.cache is None:
            return None
        if self.spool is None:
            self.writer = _early_writer(config.output)
            if self.writer is not None and self.writer.identity is not None:
                with contextlib.suppress(CacheError):  # without the note, only recovery is lost
                    self.cache.note_partial(self.writer.identity)
            if self.writer is None:
                self.spool = _hits_spool(config.output)
                if self.spool is None:
                    self._open = False  # nowhere to keep them: the run answers these lines itself
                    return None
        engine = Resolver(
            executor=None,
            store=self.cache,
            options=config.options,
            sink=self._write,
            stats=self._stats,
            destination=config.destination,
        )
        self._stats.started_at = engine.clock()
        return engine

    def _write(self, result: Result) -> None:
        if self.writer is not None:
            self.writer.write(result)
        else:
            assert self.spool is not None
            try:
                self.spool.write(encode(result))
            except OSError as exc:
                raise _spool_failed(exc) from None
        self.lines += 1

    def results_writer(self, output: Path | None, recover: Callable[[BinaryIO], None] | None = None) -> ResultWriter:
        """The results file, holding every line answered so far (the input is valid by now);
        ``recover`` sees an earlier ``.partial`` first (see :func:`start`)."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            return writer
        writer = ResultWriter(output, recover=recover).open()
        if self.spool is not None:
            writer.adopt(self.spool, self.lines)
            self.spool.close()
        return writer

    def feed(self, request: Request) -> bool:
        """Take the next valid request; False once a miss has been seen (feed no more)."""
        self._pending.append(request)
        if len(self._pending) >= LOOKUP_CHUNK:
            self.drain()
        return self._open

    def drain(self) -> None:
        pending, self._pending = self._pending, []
        if not self._open or not pending:
            return
        if self._engine is None:
            self._engine = self._begin()
            if self._engine is None:
                return
        answered = self._engine.answer_from_cache(pending)
        if answered < len(pending):
            self._open = False
            self.resume_line = pending[answered].line
        else:
            self.resume_line = pending[-1].line + 1

    @property
    def open(self) -> bool:
        """Still answering: every request fed so far was a hit."""
        return self._open

    def stop(self) -> None:
        """Answer no more here: the run resumes at :attr:`resume_line`."""
        self._open = False

    # -- a big input's second half, answered by a forked child (see validate) ------------------

    _COUNTERS = ("done", "ok", "written", "hits", "saved_usd")  # what answering a hit changes

    def handed_back(self) -> dict[str, Any]:
        """In the child, at the end: what the parent needs to take its hits over."""
        assert self.spool is not None
        self.spool.flush()
        return {
            "lines": self.lines,
            "resume_line": self.resume_line,
            "open": self._open,
            "counters": {name: getattr(self._stats, name) for name in self._COUNTERS},
        }

    def take_over(self, spool: IO[bytes], handed: dict[str, Any]) -> bool:
        """Append the child's hits (the lines straight after this half's, all answered). Only
        called when every request of this half was answered here (:attr:`open`). False if there
        is no room for them (they were beside the results until now): nothing has changed, and
        the caller answers those lines here instead."""
        if self._engine is None:  # this half held no request
            self._engine = self._begin()
            if self._engine is None:
                return True  # nothing can be answered here: the run does it all
        lines = handed["lines"]
        if self.writer is not None:
            if not self.writer.take_over(spool, lines):
                return False
        else:
            assert self.spool is not None
            try:
                append_or_undo(spool, self.spool)
            except OSError:
                return False
        self.lines += lines
        for name, value in handed["counters"].items():
            setattr(self._stats, name, getattr(self._stats, name) + value)
        self.resume_line = handed["resume_line"]
        self._open = handed["open"]
        return True

    def close(self) -> None:
        """Release what the run did not take over (after a bad input, nothing is left behind)."""
        if self.writer is not None:
            identity = self.writer.identity
            self.writer.discard()
            if identity is not None and self.cache is not None:
                with contextlib.suppress(CacheError):
                    self.cache.forget_partial(identity)
        if self.spool is not None:
            self.spool.close()
        if self.cache is not None:
            self.cache.close()


def _spool_failed(exc: OSError) -> UsageError:
    return UsageError(
        f"cannot keep the answers found in the cache in a temporary file ({exc.strerror or exc}): "
        "free some space, or set TMPDIR"
    )


def _hits_spool(output: Path | None) -> IO[bytes] | None:
    """A private, unnamed file for result lines that cannot go to the results yet; None if there
    is nowhere to keep one. Beside a results file (a million result lines is ~1 GB and /tmp may be
    small), or in $TMPDIR when the results go to a stream (stdout, a FIFO, ``/dev/null``: /dev is
    no place for files)."""
    where = None
    if output is not None and output.parent.is_dir():
        with contextlib.suppress(UsageError):  # an output that is refused: the run says so later
            where = None if classify_output(output).stream else output.parent
    try:
        return tempfile.TemporaryFile(prefix=".llmbatch-hits-", dir=where)
    except OSError:
        return None


def _copy_of_stdin() -> Path:
    """A private copy of standard input (0600, in $TMPDIR), removed again on every way out: here if
    the copy fails or is interrupted (Ctrl-C, SIGTERM while a producer is still writing), else by
    :meth:`Input.cleanup`, which the CLI runs however the run ends."""
    spool = None
    try:
        with tempfile.NamedTemporaryFile(prefix="llmbatch-stdin-", suffix=".jsonl", delete=False) as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
    except BaseException as exc:
        if spool is not None:
            Path(spool.name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UsageError(
                f"cannot keep a copy of stdin in a temporary file ({exc.strerror or exc}): "
                "set TMPDIR to a directory with room, or give the input as a file"
            ) from None
        raise
    return Path(spool.name)


def _early_writer(output: Path | None) -> ResultWriter | None:
    """The results writer opened now, if that cannot spoil anything: a file output with nothing at
    its ``.partial`` name yet (not even a dangling link). Not a stream: what it has been given
    cannot be taken back if a later line is bad. Any trouble is left for the run to report after
    validation."""
    if output is None or not output.parent.is_dir():
        return None
    try:
        target = classify_output(output)
        if target.stream or target.earlier_partial:
            return None
        return ResultWriter(output).open()
    except UsageError:
        return None


#: Inputs from this size on are checked in two halves at once, the second by a forked child
#: (~40,000 typical lines; below, the gain is a few hundredths of a second).
SPLIT_MIN_BYTES = 4 << 20


def validate(config: RunConfig, prefix: HitPrefix | None = None) -> ValidationReport:
    """Check every line; raise :class:`InputError` listing each bad one. Nothing is sent.

    A big input (``config.split``, :data:`SPLIT_MIN_BYTES`) is checked in two halves at once: the
    second by a forked child (:mod:`llmbatch.forked`), which also answers its leading hits into
    a spool. They are taken over only if every line of the first half was answered here, so the
    results are exactly those of one pass; if the child fails in any way, its half is done here.
    """
    path, defaults, source = config.input.path, effective_defaults(config), config.input.source
    feed = prefix.feed if prefix is not None else None
    with IdHashes() as ids:
        split = _split_at(config)
        if split is None:
            parts = [check_lines(path, defaults, ids, source=source, on_valid=feed)]
        else:
            parts = _check_in_two(config, prefix, ids, split)
        report = combine_parts(path, defaults, parts, ids, source=source)
    if prefix is not None and not report.errors:
        prefix.drain()
    if report.errors:
        raise InputError(report.errors, report.total_errors)
    if report.requests == 0:
        raise UsageError(f"{config.input.source}: no requests (the file is empty or only blank lines)")
    return report


def _split_at(config: RunConfig) -> int | None:
    """Where the second half starts (a line's first byte), or None: one pass, in this process."""
    if not config.split or config.workers == 0:
        return None
    from llmbatch.forked import can_fork

    if _cpus() < 2 or not can_fork():
        return None
    size = config.input.path.stat().st_size
    if size < SPLIT_MIN_BYTES:
        return None
    split = line_start_near(config.input.path, size // 2)
    return split if split < size else None  # one huge line: nothing to split


def _check_in_two(config: RunConfig, prefix: HitPrefix | None, ids: IdHashes, split: int) -> list[PartReport]:
    """The first half here while a forked child checks the second (see :func:`validate`)."""
    from llmbatch.forked import Forked

    path, defaults, source = config.input.path, effective_defaults(config), config.input.source
    # Made before the fork, so that both processes hold them: the child writes, this one reads.
    spool = _hits_spool(config.output) if prefix is not None else None
    gate = _CacheGate() if spool is not None else None
    id_runs = IdHashes.spill_file()
    feed = prefix.feed if prefix is not None else None
    child = None
    try:
        if id_runs is not None:
            runs_file = id_runs
            child = Forked(lambda: _second_half(config, split, spool, runs_file, gate))
            try:
                child.start()
            except OSError:
                child = None  # no process to spare: all of it here
        if gate is not None and child is None:
            gate.close()
            gate = None
        if gate is not None:
            gate.opened_in_parent()
            if prefix is not None:
                prefix.after_open = gate.release
        first = check_lines(path, defaults, ids, source=source, end=split, on_valid=feed)
        if gate is not None:
            gate.release(False)  # this half never opened the cache: the child must not either
        # The child's hits can follow only if every request of this half was answered here.
        answered_all = False
        if prefix is not None and first.total_errors == 0:
            prefix.drain()
            answered_all = prefix.open
        handed = child.result() if child is not None else None
        if handed is not None and prefix is not None:
            if not (answered_all and spool is not None and handed["hits"] is not None):
                prefix.stop()
            elif not prefix.take_over(spool, handed["hits"]):
                handed = None  # no room to take its hits over (freed now): its half is answered here
        if spool is not None:
            spool.close()
            spool = None
        if handed is None:  # no child, or it failed: its half is checked here, as in one pass
            second = check_lines(
                path,
                defaults,
                ids,
                source=source,
                start=split,
                first_line=count_lines_before(path, split) + 1,
                on_valid=feed if answered_all else None,
            )
            return [first, second]
        ids.include(runs_file, [(offset, count) for offset, count in handed["runs"]])
        id_runs = None  # ids closes it now
        errors = [LineError(source, line, message) for line, message in handed["errors"]]
        return [first, PartReport(handed["requests"], errors, handed["total_errors"], set(handed["models"]))]
    finally:
        if child is not None:
            child.cancel()  # still running only after an exception here (Ctrl-C, say)
        if gate is not None:
            gate.close()
        if spool is not None:
            spool.close()
        if id_runs is not None:
            id_runs.close()


class _CacheGate:
    """The child opens the cache only once this process has opened it, and only if it could.

    diskcache writes every setting back on each open: a child opening a new cache while this
    process is creating it can find no settings yet and store diskcache's defaults (a 1 GB size
    limit), and one opening an existing cache alongside can undo ``--cache-eviction`` or
    ``--cache-size-limit``. A pipe: one byte means "opened"; closed without one, "do not"."""

    def __init__(self) -> None:
        self._read: int | None
        self._write: int | None
        self._read, self._write = os.pipe()

    def opened_in_parent(self) -> None:
        self._close("_read")

    def release(self, opened: bool) -> None:
        """In the parent: the cache was opened (True) or will not be (False). Only the first call counts."""
        if self._write is not None:
            if opened:
                with contextlib.suppress(OSError):  # the child is gone already: it does not matter
                    os.write(self._write, b"1")
            self._close("_write")

    def wait(self) -> bool:
        """In the child: whether it may open the cache (blocks until the parent knows)."""
        self._close("_write")
        assert self._read is not None
        return os.read(self._read, 1) == b"1"

    def close(self) -> None:
        self._close("_read")
        self._close("_write")

    def _close(self, end: str) -> None:
        fd = getattr(self, end)
        if fd is not None:
            setattr(self, end, None)
            os.close(fd)


def _second_half(
    config: RunConfig, start: int, spool: IO[bytes] | None, id_runs: BinaryIO, gate: _CacheGate | None
) -> dict[str, Any]:
    """In the forked child: check the lines from byte ``start`` on and answer their leading hits
    into ``spool``; what the parent needs back, as JSON-able values."""
    path, defaults, source = config.input.path, effective_defaults(config), config.input.source
    first_line = count_lines_before(path, start) + 1

    def open_cache() -> DiskStore:
        if gate is None or not gate.wait():
            raise CacheError("the first half did not open the cache")
        return DiskStore(config.cache_dir or default_cache_dir(), create=False, shared=config.shared_cache)

    prefix = None
    if spool is not None:
        prefix = HitPrefix(config, RunStats(), spool=spool, first_line=first_line, open_cache=open_cache)
    try:
        ids = IdHashes(spill=id_runs)
        feed = prefix.feed if prefix is not None else None
        part = check_lines(path, defaults, ids, source=source, start=start, first_line=first_line, on_valid=feed)
        if prefix is not None and part.total_errors == 0:
            prefix.drain()
        return {
            "requests": part.requests,
            "errors": [(error.line, error.message) for error in part.errors],
            "total_errors": part.total_errors,
            "models": sorted(part.models),
            "runs": ids.spill_all(),
            "hits": prefix.handed_back() if prefix is not None else None,
        }
    finally:
        if prefix is not None:
            prefix.close()


@dataclass
class Started:
    """What a run holds once :func:`start` has prepared it: close it with :meth:`close` (or let
    :func:`execute` do it)."""

    provider: Any
    cache: DiskStore | None
    writer: ResultWriter
    simulator: Any = None
    recovered: int = 0  # answers an earlier run paid for, taken back into the cache from its .partial

    async def close(self, complete: bool = False) -> Path | None:
        """Finish the results file (renamed into place if ``complete``), close everything."""
        try:
            await self.provider.aclose()
        finally:
            identity = self.writer.identity
            where = self.writer.finish(complete)
            if self.simulator is not None:
                await self.simulator.stop()
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
    try:
        if cache is None and options.cache_mode != "off":
            cache = _open_cache(config)
        destination = config.destination
        if config.simulate:
            from llmbatch.sim import SimConfig, Simulator

            simulator = Simulator(config.sim_config or SimConfig())
            destination = replace(destination, api_base=await simulator.start())
        provider = _provider(_workers(config, _left(stats, prefix)), destination)
        if options.cache_mode != "only" and _left(stats, prefix) > 0:
            await _prepare_providers(provider, models)
        recovered: list[int] = []
        recover = _recovery(config, cache, recovered) if cache is not None else None
        if prefix is not None:
            writer = prefix.results_writer(config.output, recover)
        else:
            writer = ResultWriter(config.output, recover=recover).open()
        if cache is not None and writer.identity is not None:
            cache.note_partial(writer.identity)  # a later run may take back what this one pays for
    except BaseException:
        if provider is not None:
            await provider.aclose()
        if simulator is not None:
            await simulator.stop()
        if cache is not None and (prefix is None or cache is not prefix.cache):
            cache.close()
        raise
    if prefix is not None:
        prefix.cache = None  # the run owns it now
    return Started(provider, cache, writer, simulator, sum(recovered))


def _recovery(config: RunConfig, cache: DiskStore, recovered: list[int]) -> Callable[[BinaryIO], None]:
    """What to do with an earlier run's ``.partial`` before it is emptied: take the answers it paid
    for back into the cache, so that an answer that could not be stored then (a full disk) is not
    paid for again. Only from a ``.partial`` a run of this cache wrote (a file shipped in a cloned
    repository must never plant answers), and only lines that still match: same line number, same
    key as the input gives now, an answer that counts as one (``answers.problem``), and not already
    stored. The file is read in step with the input, so memory stays flat."""

    def recover(earlier: BinaryIO) -> None:
        found = os.fstat(earlier.fileno())
        if not cache.knows_partial((found.st_dev, found.st_ino)):
            return
        requests = read_requests(config.input.path, effective_defaults(config), source=config.input.source)
        request: Request | None = None
        batch: list[tuple[str, CacheEntry, str]] = []
        for raw in earlier:
            row = _paid_line(raw)
            if row is None:
                continue
            while request is None or request.line < row["line"]:
                request = next(requests, None)
                if request is None:
                    break
            if request is None:
                break  # the input got shorter: nothing further can be matched
            entry = _recovered_entry(config, request, row)
            if entry is not None:
                batch.append((row["key"], entry, config.destination.tag_prefix + request.model_ref))
            if len(batch) >= LOOKUP_CHUNK:
                recovered.append(_store_missing(cache, batch, config.options.ttl_s))
                batch = []
        if batch:
            recovered.append(_store_missing(cache, batch, config.options.ttl_s))

    return recover


def _paid_line(raw: bytes) -> dict[str, Any] | None:
    """A whole result line of an answer paid for in that run, or None."""
    if not raw.endswith(b"\n"):
        return None  # cut off mid-line: the run was killed while writing it
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(row, dict) or row.get("status") != "ok" or row.get("cached") is not False:
        return None
    if not isinstance(row.get("line"), int) or not isinstance(row.get("key"), str):
        return None
    return row if isinstance(row.get("response"), dict) else None


def _recovered_entry(config: RunConfig, request: Request, row: dict[str, Any]) -> CacheEntry | None:
    from llmbatch import answers
    from llmbatch.keys import key_material, request_key

    if request.line != row["line"]:
        return None
    endpoint = config.destination.key_endpoint(request.provider)
    response = row["response"]
    if request_key(request, endpoint) != row["key"] or answers.problem(response) or not answers.cacheable(response):
        return None
    return make_entry(
        key=row["key"],
        request=key_material(request, endpoint),
        response=response,
        stored_at=time.time(),
        usage=row.get("usage"),
        latency_ms=row.get("latency_ms"),
        cost_usd=row.get("cost_usd"),
    )


def _store_missing(cache: ResponseStore, batch: list[tuple[str, CacheEntry, str]], ttl_s: float | None) -> int:
    stored = cache.get_many([key for key, _, _ in batch])
    missing = [item for item in batch if item[0] not in stored]
    if missing:
        cache.put_many(missing, ttl_s=ttl_s)
    return len(missing)


async def _prepare_providers(provider: Any, models: set[str]) -> None:
    """A client for each provider (nothing is sent): its failure is the run's usage error."""
    for name in sorted({model.split(":", 1)[0] for model in models}):
        probe = Request(line=0, id=0, provider=name, model=models_of(models, name), messages=[])
        try:
            ready = provider.prepare(probe)
            if ready is not None:
                await ready
        except CallError as exc:
            raise UsageError(exc.message) from None


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
    try:
        engine = live_resolver(
            provider,
            store=started.cache,
            options=config.options,
            sink=writer.write,
            flush=writer.flush,
            stats=stats,
            on_event=on_event,
        )
        if on_engine is not None:
            on_engine(engine)
        requests = read_requests(
            config.input.path,
            effective_defaults(config),
            source=config.input.source,
            start_line=prefix.resume_line if prefix is not None else 1,
        )
        await engine.run(requests)
    finally:
        stats.workers_lost = provider.lost
        recreated = started.cache is not None and started.cache.recreated
        where = await started.close(stats.complete)
    return RunOutcome(
        stats=stats,
        results_at=str(where) if where is not None else "stdout",
        complete=stats.complete,
        cache_recreated=str(started.cache.directory) if recreated and started.cache is not None else None,
        recovered=started.recovered,
    )


def _open_cache(config: RunConfig) -> DiskStore:
    return DiskStore(
        config.cache_dir or default_cache_dir(),
        size_limit=config.cache_size_limit,
        eviction_policy=config.cache_eviction,
        shared=config.shared_cache,
    )


def _provider(workers: int, destination: Destination) -> Any:
    if workers > 0:
        from llmbatch.providers.workers import WorkerPool

        return WorkerPool(workers, destination)
    from llmbatch.providers.anyllm import AnyLLMProvider

    return AnyLLMProvider(destination)


def _left(stats: RunStats, prefix: HitPrefix | None) -> int:
    """Requests not yet answered: what worker processes could be needed for."""
    return (stats.total or 0) - (prefix.lines if prefix is not None else 0)


def _workers(config: RunConfig, requests: int) -> int:
    if config.workers is not None:
        return config.workers
    from llmbatch.providers.workers import auto_workers

    return auto_workers(config.options.concurrency, _cpus(), requests)


def _cpus() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Plan:
    """What a run would do, from the cache alone: ``llmbatch run --dry-run``."""

    prompts: int = 0
    hits: int = 0
    duplicates: int = 0
    calls: int = 0
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0
    estimated_cost_usd: float | None = 0.0
    unpriced_models: list[str] = field(default_factory=list)
    by_model: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "hits": self.hits,
            "duplicates": self.duplicates,
            "calls": self.calls,
            "estimated_input_tokens": self.estimated_input_tokens,
            "estimated_output_tokens": self.estimated_output_tokens,
            "estimated_cost_usd": None if self.estimated_cost_usd is None else round(self.estimated_cost_usd, 10),
            "unpriced_models": self.unpriced_models,
            "by_model": self.by_model,
        }


def plan(config: RunConfig) -> Plan:
    """Count hits, duplicates and the calls a run would make, and estimate their tokens and cost,
    without calling anyone. Output tokens: ``max_tokens`` where set, else the average completion
    of the cached answers of that model (or of all cached answers, or 256)."""
    from itertools import islice

    from llmbatch.keys import request_key
    from llmbatch.limits import DEFAULT_COMPLETION_TOKENS, estimate_split
    from llmbatch.pricing import estimate_cost, usage_tokens

    options = config.options
    destination = config.destination

    cache = None
    directory = config.cache_dir or default_cache_dir()
    if options.cache_mode in ("normal", "only") and (directory / "cache.db").exists():
        cache = DiskStore(directory, create=False, shared=config.shared_cache)
    result = Plan()
    pending: set[str] = set()
    # per model: [input tokens, output tokens with a cap, calls without a cap (times n), completion
    # tokens of hits, hits with usage]
    models: dict[str, list[int]] = {}
    try:
        requests = read_requests(config.input.path, effective_defaults(config), source=config.input.source)
        while chunk := list(islice(requests, LOOKUP_CHUNK)):
            keyed = [(r, request_key(r, destination.key_endpoint(r.provider))) for r in chunk]
            found = cache.get_many([k for _, k in keyed]) if cache is not None else {}
            for request, key in keyed:
                result.prompts += 1
                acc = models.setdefault(request.model_ref, [0, 0, 0, 0, 0])
                entry = found.get(key)
                if entry is not None:
                    result.hits += 1
                    _, completion, _ = usage_tokens(entry.get("usage"))
                    acc[3] += completion
                    acc[4] += 1
                    continue
                if key in pending:
                    result.duplicates += 1
                    continue
                pending.add(key)
                result.calls += 1
                prompt, _ = estimate_split(request.messages, request.params, None)
                acc[0] += prompt
                cap = request.output_cap
                if cap is not None:
                    acc[1] += cap
                else:
                    acc[2] += int(request.params.get("n") or 1)
    finally:
        if cache is not None:
            cache.close()
    all_hits = sum(a[4] for a in models.values())
    overall = sum(a[3] for a in models.values()) / all_hits if all_hits else DEFAULT_COMPLETION_TOKENS
    total_cost: float | None = 0.0
    for model_ref, (prompt, capped, uncapped, hit_tokens, hit_count) in models.items():
        average = hit_tokens / hit_count if hit_count else overall
        output = capped + int(uncapped * average)
        result.estimated_input_tokens += prompt
        result.estimated_output_tokens += output
        provider, model = model_ref.split(":", 1)
        cost = estimate_cost(provider, model, prompt, output) if (prompt or output) else 0.0
        if cost is None:
            result.unpriced_models.append(model_ref)
        elif total_cost is not None:
            total_cost += cost
        result.by_model[model_ref] = {"input_tokens": prompt, "output_tokens": output, "cost_usd": cost}
    result.estimated_cost_usd = None if result.unpriced_models else total_cost
    return result
