"""A cached rerun's leading hits, answered in the validation pass (each line parsed once)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from llmbatch.app.runconfig import RunConfig, open_run_store
from llmbatch.engine import LOOKUP_CHUNK, Resolver, RunStats
from llmbatch.errors import CacheError, LlmbatchError, UsageError
from llmbatch.input import (
    Request,
)
from llmbatch.model.stats import Lookups
from llmbatch.results import Result, ResultWriter, append_or_undo, classify_output, encode
from llmbatch.store import ResponseStore

__all__ = ["HitPrefix"]


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
        open_cache: Callable[[], ResponseStore] | None = None,
    ) -> None:
        """``spool``, ``first_line``, ``open_cache``: for the second half of a big input, answered
        by a forked child (:func:`validate`): its hits go to ``spool``."""
        self._config = config
        self._stats = stats
        self._opener = open_cache or (lambda: open_run_store(config))
        #: Told whether the cache could be opened, once that has been tried (validate's child waits for it).
        self.after_open: Callable[[bool], None] | None = None
        # Opened by the first lookup, so that a file that is bad from its first lines touches
        # nothing (and a cache that cannot be opened is reported by the run, after validation).
        self.cache: ResponseStore | None = None
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
            if self.writer is not None and self.writer.identity is not None and self.writer.token is not None:
                with contextlib.suppress(CacheError):  # without the note, only recovery is lost
                    self.cache.note_partial(self.writer.identity, self.writer.token)
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
            "lookups": {ref: [n.hits, n.misses, n.saved_usd] for ref, n in self._stats.lookups.items()},
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
        for ref, (hits, misses, saved_usd) in handed.get("lookups", {}).items():
            self._stats.lookups.setdefault(ref, Lookups()).add(Lookups(hits, misses, saved_usd))
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
