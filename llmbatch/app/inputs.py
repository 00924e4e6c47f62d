"""The input as a re-readable file (stdin is copied first), and where the results go: never over
the input, through a link we did not make, or over something that is not a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from llmbatch.errors import UsageError
from llmbatch.results import classify_output

if TYPE_CHECKING:
    from llmbatch.app.runconfig import RunConfig

__all__ = ["Input", "check_output", "default_output", "open_input"]


@dataclass
class Input:
    """The input as a re-readable file: stdin, or a pipe given by name (``<(…)``, a FIFO), is
    spooled to a temporary file first, because the file is read twice (validate everything, then
    stream the requests)."""

    path: Path
    source: str  # the name used in FILE:LINE messages
    temporary: bool = False
    #: For stdin: the file standard input was (a results file on standard output must not be it).
    origin: os.stat_result | None = None
    #: For stdin: the descriptor that keeps the copy, which has no name (``path`` reaches it).
    fd: int | None = None

    def cleanup(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        elif self.temporary:
            self.path.unlink(missing_ok=True)


def open_input(name: str) -> Input:
    if name == "-":
        origin = None
        with contextlib.suppress(AttributeError, OSError, ValueError):  # no descriptor (a test runner)
            origin = os.fstat(sys.stdin.fileno())
        path, fd = _copy_of(sys.stdin.buffer, "stdin")
        return Input(path, "<stdin>", temporary=True, origin=origin, fd=fd)
    path = Path(name)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"input file not found: {name}") from None
    except OSError as exc:
        raise UsageError(f"cannot read the input {name}: {exc.strerror or exc}") from None
    if stat.S_ISFIFO(mode):
        # A pipe (<(…), a FIFO) cannot be read twice: it is copied first, as standard input is.
        with open(path, "rb") as pipe:
            path, fd = _copy_of(pipe, name)
        return Input(path, name, temporary=True, fd=fd)
    if not stat.S_ISREG(mode):
        raise UsageError(f"input is not a file: {name}")
    return Input(path, name)


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
    output, source = config.output, config.input.origin
    if not config.input.temporary:
        with contextlib.suppress(OSError):  # it was there a moment ago; reading it will say what went wrong
            source = os.stat(config.input.path)
    if source is not None and not stat.S_ISREG(source.st_mode):
        source = None  # a pipe or a terminal: nothing a results file could overwrite
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
    if output is not None and config.store_place.holds(output):
        raise UsageError(
            f"cannot write results to {output}: it is inside the cache directory; choose another file with -o"
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


def _copy_of(stream: BinaryIO, name: str) -> tuple[Path, int | None]:
    """A private copy of ``stream`` (0600, in $TMPDIR): where to read it, and the descriptor
    that keeps it. On Linux the copy loses its name as soon as it is written, and is read through
    ``/proc/self/fd``: nothing of the prompts is left in $TMPDIR however the run ends, even
    ``kill -9``. Elsewhere it keeps its name until :meth:`Input.cleanup`. Removed here if the copy
    fails or is interrupted (Ctrl-C, SIGTERM while a producer is still writing)."""
    spool = None
    try:
        with tempfile.NamedTemporaryFile(prefix="llmbatch-stdin-", suffix=".jsonl", delete=False) as spool:
            shutil.copyfileobj(stream, spool)
        fd = os.open(spool.name, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException as exc:
        if spool is not None:
            Path(spool.name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UsageError(
                f"cannot keep a copy of {name} in a temporary file ({exc.strerror or exc}): "
                "set TMPDIR to a directory with room, or give the input as a file"
            ) from None
        raise
    unnamed = Path(f"/proc/self/fd/{fd}")
    if not unnamed.exists():
        os.close(fd)
        return Path(spool.name), None
    Path(spool.name).unlink(missing_ok=True)
    return unnamed, fd
