"""Result lines: the value the engine produces for each input line, and the file they go to.

One JSON object per input line, in input order. The file is written under a temporary name
(``results.jsonl.partial``, locked so two runs cannot write it at once) and renamed into place
only when every line is in it, so a file at the final name is always complete: a run that was
killed or stopped early can never be mistaken for finished output (an earlier complete file stays
until a new one replaces it). Rerunning the same command rebuilds it, paying only for lines that
were never answered (the rest are cache hits).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from llmbatch.errors import OutputError, UsageError

__all__ = ["Result", "ResultWriter", "first_choice"]


def first_choice(response: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """``(content, finish_reason)`` of the first choice, or ``(None, None)``."""
    if not response:
        return None, None
    choices = response.get("choices") or []
    if not choices:
        return None, None
    choice = choices[0]
    message = choice.get("message") or {}
    content = message.get("content")
    return (content if isinstance(content, str) else None), choice.get("finish_reason")


@dataclass(slots=True)  # not frozen: a frozen __init__ costs an object.__setattr__ call per field
class Result:
    """What happened to one input line."""

    line: int
    id: str | int
    key: str
    status: str  # "ok" | "error"
    cached: bool  # True when this line cost no call in this run
    model: str
    metadata: Any
    response: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    latency_ms: float | None = None
    attempts: int = 0
    error: dict[str, Any] | None = None
    cost_usd: float | None = None  # what the answer cost (for a hit: when it was first paid)
    hit: str | None = None  # "exact" (from the cache), "duplicate" (shared a call in flight), or None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def content(self) -> str | None:
        """The first choice's text, or None."""
        return first_choice(self.response)[0]

    @property
    def truncated(self) -> bool:
        """The answer was cut off at ``max_tokens`` (some choice ended with ``length``)."""
        choices = (self.response or {}).get("choices") or []
        return any(isinstance(c, dict) and c.get("finish_reason") == "length" for c in choices)

    def to_dict(self) -> dict[str, Any]:
        content, finish_reason = first_choice(self.response)
        return {
            "id": self.id,
            "line": self.line,
            "status": self.status,
            "cached": self.cached,
            "hit": self.hit,
            "content": content,
            "finish_reason": finish_reason,
            "truncated": self.truncated,
            "model": self.model,
            "usage": self.usage,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "cost_usd": self.cost_usd,
            "key": self.key,
            "metadata": self.metadata,
            "error": self.error,
            "response": self.response,
        }


def encode(result: Result) -> bytes:
    """One result line, newline included."""
    return orjson.dumps(result.to_dict(), option=orjson.OPT_APPEND_NEWLINE)


class ResultWriter:
    """Appends result lines to ``<path>.partial`` and renames it to ``path`` once complete.

    ``path=None`` writes to standard output, line by line.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.partial_path = path.with_name(path.name + ".partial") if path is not None else None
        self._stream: IO[bytes] | None = None
        self.lines = 0

    def open(self) -> ResultWriter:
        if self.partial_path is None:
            self._stream = sys.stdout.buffer
            return self
        if self.path is not None and self.path.is_dir():
            raise UsageError(f"cannot write results to {self.path}: it is a directory")
        try:
            self.partial_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.partial_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot write results to {self.path}: {exc.strerror or exc}") from None
        try:
            # Two runs writing one results file would interleave their lines: the second refuses.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(
                f"another llmbatch run is writing {self.path}; wait for it, or choose another file with -o"
            ) from None
        os.ftruncate(fd, 0)
        self._stream = os.fdopen(fd, "wb")
        return self

    def write(self, result: Result) -> None:
        assert self._stream is not None, "open() first"
        try:
            self._stream.write(encode(result))
            if self.partial_path is None:
                self._stream.flush()  # on stdout, each line goes out as soon as it is known
        except OSError as exc:
            raise self._failed(exc) from None
        self.lines += 1

    def _failed(self, exc: OSError) -> Exception:
        if self.partial_path is None:
            return exc  # stdout's own trouble (a reader that went away) is not ours to word
        # Every line written here was answered (and stored) first: nothing paid for is lost.
        return OutputError(
            f"cannot write results to {self.partial_path}: {exc.strerror or exc}; "
            "the answers are in the cache, so a rerun writes them without paying again"
        )

    def discard(self) -> None:
        """Remove the ``.partial`` file this writer created and holds (a run that never started)."""
        if self._stream is None or self.partial_path is None:
            return
        self.partial_path.unlink(missing_ok=True)  # while still holding the lock
        self._stream.close()
        self._stream = None
        self.lines = 0

    def adopt(self, spool: IO[bytes], lines: int) -> None:
        """Append ``lines`` result lines already encoded in ``spool`` (``runner.HitPrefix``)."""
        assert self._stream is not None, "open() first"
        try:
            spool.flush()
            spool.seek(0)
            shutil.copyfileobj(spool, self._stream, 1 << 20)
        except OSError as exc:
            raise self._failed(exc) from None
        self.lines += lines

    def take_over(self, spool: IO[bytes], lines: int) -> bool:
        """As :meth:`adopt`, for a file, but if the copy fails the file is cut back to where it
        was and False returned: the caller can produce those lines another way."""
        assert self._stream is not None and self.partial_path is not None
        try:
            append_or_undo(spool, self._stream)
        except OSError:
            return False
        self.lines += lines
        return True

    def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def finish(self, complete: bool) -> Path | None:
        """Close; rename into place if ``complete``. Returns where the lines are."""
        if self._stream is None:
            return None
        if self.partial_path is None:
            self._stream.flush()
            self._stream = None
            return None
        try:
            try:
                self._stream.flush()
                os.fsync(self._stream.fileno())
            except OSError as exc:
                raise self._failed(exc) from None
            if complete:
                assert self.path is not None
                try:
                    os.replace(self.partial_path, self.path)  # while still holding the lock
                except OSError as exc:
                    raise OutputError(
                        f"cannot write results to {self.path}: {exc.strerror or exc}; they are in {self.partial_path}"
                    ) from None
                return self.path
            return self.partial_path
        finally:
            with contextlib.suppress(OSError):  # what could not be flushed was reported above
                self._stream.close()
            self._stream = None


def append_or_undo(source: IO[bytes], target: IO[bytes]) -> None:
    """Append the whole of file ``source`` to file ``target``. If that fails (a full disk),
    ``target`` is cut back to its length before, and the OSError raised.

    The copy goes from descriptor to descriptor: a buffered write that failed would keep its
    bytes in the buffer and try them again on the next flush."""
    target.flush()  # what is already there is target's own: a failure here is not undone
    source.flush()
    out, src = target.fileno(), source.fileno()
    start = os.lseek(out, 0, os.SEEK_END)
    offset = 0
    try:
        while chunk := os.pread(src, 1 << 20, offset):
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
            offset += len(chunk)
    except OSError:
        os.ftruncate(out, start)
        target.seek(start)
        raise
    target.seek(0, os.SEEK_END)  # the buffered object learns where the descriptor is now
