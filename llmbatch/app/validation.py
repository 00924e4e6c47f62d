"""Checking the whole input before anything is sent, and a big input in two halves at once.

:func:`validate` checks every line (every error, ``FILE:LINE``) and, for a cached rerun, answers the
leading hits in the same pass (:class:`~llmbatch.app.prefix.HitPrefix`). An input of
:data:`SPLIT_MIN_BYTES` or more is checked by two processes at once: a forked copy of this process
(:class:`Forked`) checks the second half and answers its leading hits into a spool; they are taken
over only if every line of the first half was answered here, so the results are exactly those of
one pass. The child is only a shortcut: whatever happens to it, this process does that half itself.

Why fork, and what makes it safe: the child starts in milliseconds with everything imported, and
shares the interpreter's string-hash secret (``input.ids.IdHashes`` compares the two halves' id
hashes). The fork happens before this process has started threads or opened the store's database;
the child never returns into the caller's code (it leaves through ``os._exit``); SIGINT is blocked
across the fork and ignored in the child; the child opens the store only once the parent has
(:class:`_CacheGate`), and dies with its parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, BinaryIO

import orjson

from llmbatch.app.prefix import HitPrefix, _hits_spool
from llmbatch.app.runconfig import RunConfig, cpus, effective_defaults
from llmbatch.engine import RunStats
from llmbatch.errors import CacheError, InputError, LineError, UsageError
from llmbatch.input import (
    IdHashes,
    PartReport,
    ValidationReport,
    check_lines,
    combine_parts,
    count_lines_before,
    line_start_near,
)
from llmbatch.store import ResponseStore

__all__ = ["SPLIT_MIN_BYTES", "Forked", "can_fork", "validate"]


#: Inputs from this size on are checked in two halves at once, the second by a forked child
#: (~40,000 typical lines; below, the gain is a few hundredths of a second).
SPLIT_MIN_BYTES = 4 << 20


def validate(config: RunConfig, prefix: HitPrefix | None = None) -> ValidationReport:
    """Check every line; raise :class:`InputError` listing each bad one. Nothing is sent.

    A big input (``config.split``, :data:`SPLIT_MIN_BYTES`) is checked in two halves at once: the
    second by a forked child (:class:`Forked`), which also answers its leading hits into
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

    if cpus() < 2 or not can_fork():
        return None
    size = config.input.path.stat().st_size
    if size < SPLIT_MIN_BYTES:
        return None
    split = line_start_near(config.input.path, size // 2)
    return split if split < size else None  # one huge line: nothing to split


def _check_in_two(config: RunConfig, prefix: HitPrefix | None, ids: IdHashes, split: int) -> list[PartReport]:
    """The first half here while a forked child checks the second (see :func:`validate`)."""

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

    def open_cache() -> ResponseStore:
        if gate is None or not gate.wait():
            raise CacheError("the first half did not open the cache")
        return config.store_place.open(create=False)

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


# --- the forked child -----------------------------------------------------------------


def can_fork() -> bool:
    """Forking is supported and safe from here: Linux (macOS's system libraries are not
    fork-safe), the main thread (signal handling), and no other thread running (a lock it holds
    would stay locked in the child forever)."""
    return (
        sys.platform == "linux"
        and threading.current_thread() is threading.main_thread()
        and threading.active_count() == 1
    )


class Forked:
    """``job()`` run by a forked child (:meth:`start`); its JSON-able result comes back through a pipe."""

    def __init__(self, job: Callable[[], Any]) -> None:
        self._job = job
        self._pid: int | None = None
        self._read: int | None = None

    def start(self) -> None:
        """Fork. OSError if the system refuses (a process limit): the caller does the work itself."""
        parent = os.getpid()
        read, write = os.pipe()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(read)
            os.close(write)
            raise
        if pid == 0:
            _child(self._job, parent, read, write, old_mask)  # never returns
        # Recorded before a pending Ctrl-C can be raised here, so that cancel() always finds the child.
        self._pid, self._read = pid, read
        os.close(write)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def result(self) -> Any | None:
        """Wait for the child to finish; what ``job()`` returned, or None if it did not succeed."""
        if self._pid is None or self._read is None:
            return None
        chunks = []
        while chunk := os.read(self._read, 1 << 16):
            chunks.append(chunk)
        os.close(self._read)
        self._read = None
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            return None
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            return None

    def cancel(self) -> None:
        """Stop and reap the child if it is still there; nothing to do after :meth:`result`."""
        if self._pid is not None:
            pid, self._pid = self._pid, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if self._read is not None:
            read, self._read = self._read, None
            os.close(read)


def _child(job: Callable[[], Any], parent: int, read: int, write: int, old_mask: Any) -> None:
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        _die_with(parent)
        os.close(read)
        payload = orjson.dumps(job())
        with open(write, "wb", closefd=True) as out:
            out.write(payload)
        status = 0
    except BaseException:  # noqa: BLE001 - any failure: the parent does this work itself
        pass
    finally:
        os._exit(status)


def _die_with(parent: int) -> None:
    """Be killed if the parent is (kill -9): the work would be for nobody, and under some cache
    eviction policies reading the cache writes to it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # without it, the child finishes its share and exits: bounded work
    if os.getppid() != parent:  # the parent was gone before the request took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
