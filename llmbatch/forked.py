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
    """``job()`` running in a forked child; its JSON-able result comes back through a pipe."""

    def __init__(self, job: Callable[[], Any]) -> None:
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
            _child(job, read, write, old_mask)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(write)
        self._pid: int | None = pid
        self._read = read

    def result(self) -> Any | None:
        """Wait for the child to finish; what ``job()`` returned, or None if it did not succeed."""
        if self._pid is None:
            return None
        chunks = []
        with open(self._read, "rb", closefd=True) as stream:
            while chunk := stream.read(1 << 16):
                chunks.append(chunk)
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            return None
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            return None

    def cancel(self) -> None:
        """Stop the child if it is still there (after :meth:`result`, nothing to do)."""
        if self._pid is None:
            return
        pid, self._pid = self._pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(self._read)


def _child(job: Callable[[], Any], read: int, write: int, old_mask: Any) -> None:
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(read)
        payload = orjson.dumps(job())
        with open(write, "wb", closefd=True) as out:
            out.write(payload)
        status = 0
    except BaseException:  # noqa: BLE001 - any failure: the parent does this work itself
        pass
    finally:
        os._exit(status)
