"""Some pure work done at once by a forked copy of this process, to use a second core.

``runner.validate`` hands the second half of a big input to one: a cached rerun of 100,000 lines
spends nearly all its time parsing lines, computing keys and looking them up, work that splits
cleanly in two. Fork rather than a fresh interpreter: the child starts in milliseconds with
everything imported, and shares the interpreter's string-hash secret (``prompts.IdHashes``
compares the two halves' id hashes).

The child is only ever a shortcut. Whatever happens to it (an exception, a crash, the OOM killer,
a result that does not arrive), :meth:`Forked.result` returns None and the caller does that work
itself; nothing the child did is trusted unless it reported success.

What makes forking safe here: it happens before this process has started threads or opened the
cache's SQLite database (a connection must never cross a fork); the child never returns into the
caller's code (it always leaves through ``os._exit``, so no ``finally``, ``atexit`` or buffered
output of the parent runs twice); and SIGINT is blocked across the fork and ignored in the child,
so a Ctrl-C meant for the parent cannot raise inside the child before it is set up. The parent
kills the child when it stops waiting for it (:meth:`Forked.cancel`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["Forked", "can_fork"]


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
