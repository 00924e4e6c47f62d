"""Result lines: the value the engine produces for each input line, and where they go.

One JSON object per input line, in input order. Where they go is decided once, by
:func:`classify_output`, and the writer and the run's early checks both ask it:

- **a file** (the usual case, and any name that does not exist yet) is written under a temporary
  name, ``<file>.partial``, locked so two runs cannot write it at once, and renamed into place only
  when every line is in it. A file at the final name is therefore always complete: a run that was
  killed or stopped early can never be mistaken for finished output (an earlier complete file stays
  until a new one replaces it). Rerunning the same command rebuilds it, paying only for lines that
  were never answered (the rest are cache hits).
- **a stream**: standard output (``-o -``, or any name for this process's standard output such as
  ``/dev/stdout``), a FIFO or a character device (after following links: ``/dev/null``, a terminal,
  the pipe of ``-o >(gzip > x.gz)``). It is written in place, line by line, as the shell's ``>``
  would: no ``.partial``, no rename, no lock, no truncation. A node that is not ours is never
  replaced by a regular file.

What is refused (a :class:`UsageError` before anything is sent, naming the file and what to do):

- a ``.partial`` we did not make: a symbolic link (even a dangling one; it is never followed), a
  FIFO, a device or anything not a regular file (never opened), a file owned by another user, or
  one with other hard links (truncating it would truncate the other names too). The name is opened
  with ``O_NOFOLLOW`` and the open descriptor checked again before it is locked and truncated, so a
  swap between the check and the open changes nothing;
- an output name that is a symbolic link to a regular file, or to nothing: the message gives the
  target, to be named with ``-o`` on purpose. Links to streams (and into ``/dev/fd`` or
  ``/proc/*/fd``, as process substitution gives) are streams;
- a block device, a socket, a directory, or anything else that is neither a file nor a stream;
- a results file with no write bit at all (``0444``): someone made it read-only on purpose.

A results file keeps the permissions its owner gave it: the ``.partial`` gets the existing file's
mode before anything is written into it. A new one is created with ``0o666`` less the umask, as
any new file is (results hold model answers, so people set the mode they need).

That the output is not the input file itself is checked by :func:`llmbatch.app.inputs.check_output`,
which knows the input.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import signal
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal

from llmbatch.errors import OutputError, UsageError
from llmbatch.model.result import Result, encode, first_choice

__all__ = ["OutputTarget", "Result", "ResultWriter", "classify_output", "first_choice"]


# --- where the lines go -------------------------------------------------------------------------

#: A process's descriptor directory: /dev/fd, /dev/stdout and /proc/self/fd lead into it.
_DESCRIPTOR_DIR = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd")

_TO_CHOOSE = "-o takes a regular file, a FIFO or a character device (- for standard output)"
_REMOVE = "remove it and run again"


@dataclass(frozen=True, slots=True)
class OutputTarget:
    """Where result lines go, as :func:`classify_output` found it."""

    path: Path | None  # the name given; None: standard output
    kind: Literal["stdout", "stream", "file"]
    partial_path: Path | None = None  # a file: where its lines go until every one is in
    earlier_partial: bool = False  # a file: an earlier run's .partial is there (and passed the checks)
    mode: int | None = None  # a file: the permission bits of the results file there now, carried over

    @property
    def stream(self) -> bool:
        """Written in place as lines come: no ``.partial``, no rename, no lock, no truncation."""
        return self.kind != "file"


def classify_output(path: Path | None) -> OutputTarget:
    """Decide how results go to ``path`` (None: standard output), or raise :class:`UsageError`
    saying why they cannot and what to do. Looks only (``lstat``, ``stat``, ``readlink``): opens
    nothing, creates nothing. The rules are in this module's docstring."""
    if path is None:
        return OutputTarget(None, "stdout")
    found = _lstat(path)
    if found is not None and stat.S_ISLNK(found.st_mode):
        return _through_link(path)
    mode = None
    if found is None:
        if _descriptor(path) is not None:  # /dev/fd/9 with no descriptor 9: there is nothing to create
            raise UsageError(f"cannot write results to {path}: no such descriptor is open")
    elif stat.S_ISREG(found.st_mode):
        if not found.st_mode & 0o222:
            # Nobody may write it: its owner made it so on purpose, and a rename would not ask.
            raise UsageError(
                f"cannot write results to {path}: it is read-only (mode {stat.S_IMODE(found.st_mode):04o}); "
                "make it writable (chmod u+w) or choose another file with -o"
            )
        mode = stat.S_IMODE(found.st_mode) & 0o777  # never a set-id bit someone left on a results file
    elif stat.S_ISFIFO(found.st_mode) or stat.S_ISCHR(found.st_mode):
        return OutputTarget(path, "stream")
    else:
        raise _cannot_write(path, found.st_mode)
    partial_path = path.with_name(path.name + ".partial")
    earlier = _lstat(partial_path)
    if earlier is not None:
        refusal = _partial_refusal(partial_path, earlier)
        if refusal is not None:
            raise UsageError(refusal)
    return OutputTarget(path, "file", partial_path, earlier is not None, mode)


def _through_link(path: Path) -> OutputTarget:
    """An output name that is a symbolic link. Results go through it only to a stream (``out ->
    /dev/null``, ``/dev/fd/63``). To a regular file, the rename at the end would replace the link
    and leave its target as it was, and writing the target instead would overwrite a file the
    user never named: neither is ours to choose, so the message names the target."""
    descriptor = _descriptor(path)
    if descriptor is not None and descriptor[:2] == (os.getpid(), 1):
        return OutputTarget(path, "stdout")  # /dev/stdout and its aliases mean what -o - means
    try:
        target = os.stat(path)
    except OSError:
        target = None  # it leads nowhere (or round in a loop)
    if target is not None and (stat.S_ISFIFO(target.st_mode) or stat.S_ISCHR(target.st_mode)):
        return OutputTarget(path, "stream")
    if target is not None and not stat.S_ISREG(target.st_mode):
        raise _cannot_write(path, target.st_mode)
    if descriptor is not None:
        name = _readlink(descriptor[2])
        raise UsageError(f"{path} is a descriptor open on the regular file {name}; give -o {name} to write there")
    name = os.path.realpath(path)
    raise UsageError(f"{path} is a symbolic link to {name}; give -o {name} to write there")


def _descriptor(path: Path) -> tuple[int, int, Path] | None:
    """``(pid, fd, entry)`` when ``path``, through ordinary links, is an entry of a process's
    descriptor directory (``/dev/stdout``, ``/dev/fd/63``, ``/proc/self/fd/3``); else None. Such
    an entry is not an ordinary link: opening it opens what the descriptor is open on."""
    hop = path
    for _ in range(40):  # the kernel's own limit on links in one path
        where = _DESCRIPTOR_DIR.fullmatch(os.path.realpath(hop.parent))
        if where is not None and hop.name.isdigit():
            return int(where[1]), int(hop.name), hop
        try:
            hop = hop.parent / os.readlink(hop)
        except OSError:
            return None  # not a link, or gone
    return None


def _partial_refusal(partial: Path, found: os.stat_result) -> str | None:
    """Why ``found`` (an ``lstat`` of, or an ``fstat`` on, ``partial``) must not be truncated and
    written as this run's ``.partial``; None when it may. Only a regular file of this user with no
    other name is ours to reuse: a link was planted (a cloned repository can ship one to
    ~/.bashrc), a FIFO or device must not even be opened, another user's file is theirs, and
    truncating a file with other hard links truncates them all."""
    if stat.S_ISLNK(found.st_mode):
        return f"{partial} is a symbolic link to {_readlink(partial)}, not a file llmbatch made; {_REMOVE}"
    if not stat.S_ISREG(found.st_mode):
        return f"{partial} is {_kind(found.st_mode)}, not a file llmbatch made; {_REMOVE}"
    if found.st_uid != os.geteuid():
        return f"{partial} belongs to another user (uid {found.st_uid}), so llmbatch will not truncate it; {_REMOVE}"
    if found.st_nlink > 1:
        return (
            f"{partial} has {found.st_nlink} hard links (other names for the same file), "
            f"so llmbatch will not truncate it; {_REMOVE}"
        )
    return None


def _cannot_write(path: Path, mode: int) -> UsageError:
    if stat.S_ISDIR(mode):
        return UsageError(f"cannot write results to {path}: it is a directory; give a file name with -o")
    return UsageError(f"cannot write results to {path}: it is {_kind(mode)}; {_TO_CHOOSE}")


def _kind(mode: int) -> str:
    """What a node is, for messages."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _lstat(path: Path) -> os.stat_result | None:
    """``lstat``, None when nothing is there; another failure (a parent that is a file, no
    permission) is a usage error."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot write results to {path}: {exc.strerror or exc}") from None


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "(unreadable)"


def _open_stream(path: Path) -> int:
    """Open a FIFO or a character device for writing where it is. No ``O_CREAT`` (it exists and
    stays what it is), no ``O_TRUNC``; ``O_NOCTTY`` so a terminal never becomes ours."""
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            fd = _wait_for_reader(path, flags)  # a FIFO nobody reads yet
        else:
            os.set_blocking(fd, True)
    except OSError as exc:
        raise UsageError(f"cannot write results to {path}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):  # replaced since it was looked at: write nothing
        os.close(fd)
        raise UsageError(f"cannot write results to {path}: it changed while llmbatch was starting; run again")
    return fd


def _wait_for_reader(path: Path, flags: int) -> int:
    """Wait in ``open(2)`` for a reader of the FIFO, as the shell's ``>`` does, with Ctrl-C still
    working. Under asyncio, SIGINT's Python handler only wakes the event loop, which cannot run
    while this thread waits here, so the open would be retried for ever (PEP 475). For the wait,
    the default handler raises KeyboardInterrupt instead; the caller's is put back afterwards."""
    swapped = None
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:  # never undo an ignored SIGINT
        with contextlib.suppress(ValueError):  # not the main thread: signals are not ours to change
            swapped = signal.signal(signal.SIGINT, signal.default_int_handler)
    # Said, or a run writing to a FIFO nobody has opened yet looks hung.
    sys.stderr.write(f"llmbatch: waiting for a reader of {path} (results are written to it as a stream)\n")
    sys.stderr.flush()
    try:
        return os.open(path, flags)
    finally:
        if swapped is not None:
            signal.signal(signal.SIGINT, swapped)


class ResultWriter:
    """Writes result lines where :func:`classify_output` says: to ``<path>.partial``, renamed to
    ``path`` once complete; or, for a stream, in place, line by line. ``path=None`` writes to
    standard output.

    ``recover`` (for recovering what an earlier, interrupted run left): when an earlier
    ``.partial`` is there and passes every check, :meth:`open` calls ``recover(file)`` with it
    opened for reading at its start, on the checked descriptor, while holding the lock and before
    anything in it changes; the file is closed afterwards. If ``recover`` raises, the exception
    propagates, the writer is not opened and the ``.partial`` is as it was.
    """

    def __init__(self, path: Path | None, recover: Callable[[BinaryIO], None] | None = None) -> None:
        self.path = path
        # Where a file's lines go until complete; None for standard output and, once open, for a stream.
        self.partial_path = path.with_name(path.name + ".partial") if path is not None and path.name else None
        self._recover = recover
        self._kind: Literal["stdout", "stream", "file"] = "stdout"
        self._stream: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None
        #: A random mark set on the ``.partial`` (an extended attribute, which a copy or a git clone
        #: does not carry), so that a later run can tell a file this run wrote from one put at its
        #: name; None where the filesystem keeps no such attributes.
        self.token: str | None = None
        self.lines = 0

    @property
    def identity(self) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of the ``.partial`` this writer holds; None for a stream or stdout."""
        return self._identity

    def open(self) -> ResultWriter:
        target = classify_output(self.path)
        self._kind = target.kind
        if target.kind == "stdout":
            self.partial_path = None
            if sys.stdout is None:  # started with stdout closed (>&-)
                raise UsageError("standard output is closed: write the results to a file with -o FILE")
            self._stream = sys.stdout.buffer
        elif target.kind == "stream":
            assert target.path is not None
            self.partial_path = None
            self._stream = os.fdopen(_open_stream(target.path), "wb")
        else:
            self.partial_path = target.partial_path
            self._stream = os.fdopen(self._open_partial(target), "wb")
        return self

    def _open_partial(self, target: OutputTarget) -> int:
        """The ``.partial``, checked on its open descriptor, locked, given the results file's mode,
        offered to ``recover`` and emptied: its descriptor."""
        partial = target.partial_path
        assert partial is not None
        # O_NOFOLLOW: a link at this name fails (ELOOP), even a dangling one, instead of being
        # followed. O_NONBLOCK and O_NOCTTY: a FIFO or a terminal put here since it was looked at
        # neither blocks nor becomes ours (the descriptor is checked next). 0o666: the umask
        # decides, as for any new file.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, flags, 0o666)
        except OSError as exc:
            refusal = None
            if exc.errno == errno.ELOOP:
                with contextlib.suppress(OSError):
                    refusal = _partial_refusal(partial, os.lstat(partial))
            raise UsageError(refusal or f"cannot write results to {self.path}: {exc.strerror or exc}") from None
        try:
            found = os.fstat(fd)
            refusal = _partial_refusal(partial, found)
            if refusal is not None:
                raise UsageError(refusal)
            try:
                os.set_blocking(fd, True)
                # Two runs writing one results file would interleave their lines: the second refuses.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UsageError(
                    f"another llmbatch run is writing {self.path}; wait for it, or choose another file with -o"
                ) from None
            try:
                if target.mode is not None:
                    os.fchmod(fd, target.mode)  # before any line is in it: a 0600 file stays 0600
            except OSError as exc:
                raise UsageError(f"cannot write results to {self.path}: {exc.strerror or exc}") from None
            if target.earlier_partial and self._recover is not None:
                with os.fdopen(os.dup(fd), "rb") as earlier:
                    self._recover(earlier)
                os.lseek(fd, 0, os.SEEK_SET)  # the duplicate shared the offset: write from the start
            os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        self._identity = (found.st_dev, found.st_ino)
        self.token = _mark(fd)
        return fd

    def write(self, result: Result) -> None:
        self.write_bytes(encode(result))
        self.lines += 1

    def write_bytes(self, data: bytes) -> None:
        """Write ``data`` (a result line; or a whole page, for ``report --html``)."""
        assert self._stream is not None, "open() first"
        try:
            _write_all(self._stream, data)
            if self._kind != "file":
                self._stream.flush()  # a stream gets each line as soon as it is known
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> Exception:
        where = "standard output" if self._kind == "stdout" else self.partial_path or self.path
        # Every line written here was answered (and stored) first: nothing paid for is lost.
        return OutputError(
            f"cannot write results to {where}: {exc.strerror or exc}; "
            "the answers are in the cache, so a rerun writes them without paying again"
        )

    def _holds(self, name: Path) -> bool:
        """Whether ``name`` is still the ``.partial`` this writer opened (nobody swapped it)."""
        try:
            found = os.lstat(name)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == self._identity

    def discard(self) -> None:
        """Remove the ``.partial`` file this writer created and holds (a run that never started)."""
        if self._stream is None or self.partial_path is None:
            return
        if self._holds(self.partial_path):  # only our own file, while still holding the lock
            self.partial_path.unlink(missing_ok=True)
        self._stream.close()
        self._stream = None
        self.lines = 0

    def adopt(self, spool: IO[bytes], lines: int) -> None:
        """Append ``lines`` result lines already encoded in ``spool`` (``runner.HitPrefix``)."""
        assert self._stream is not None, "open() first"
        try:
            spool.flush()
            spool.seek(0)
            while chunk := spool.read(1 << 20):
                _write_all(self._stream, chunk)
            if self._kind != "file":
                self._stream.flush()
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
        """Close; rename into place if ``complete``. Returns where the lines are (None: stdout)."""
        if self._stream is None:
            return None
        if self._kind == "stdout":
            self._stream.flush()
            self._stream = None
            return None
        try:
            try:
                self._stream.flush()
                if self._kind == "file":
                    os.fsync(self._stream.fileno())
            except OSError as exc:
                raise self._failed(exc) from None
            if self._kind == "stream":
                return self.path
            assert self.path is not None and self.partial_path is not None
            if complete:
                self._rename_into_place(self.path, self.partial_path)
                return self.path
            return self.partial_path
        finally:
            with contextlib.suppress(OSError):  # what could not be flushed was reported above
                self._stream.close()
            self._stream = None

    def _rename_into_place(self, path: Path, partial: Path) -> None:
        """Rename the ``.partial`` to ``path`` (while still holding the lock), unless something
        that is not a regular file appeared at ``path`` since the start (a rename never follows a
        link, it replaces it: a node that is not ours stays), or the ``.partial`` is no longer ours."""
        try:
            there = os.lstat(path)
        except FileNotFoundError:
            there = None
        except OSError as exc:
            raise OutputError(f"cannot write results to {path}: {exc.strerror or exc}; they are in {partial}") from None
        if there is not None and not stat.S_ISREG(there.st_mode):
            raise OutputError(
                f"cannot write results to {path}: it is now {_kind(there.st_mode)}, so llmbatch will not replace it; "
                f"the results are in {partial}"
            )
        if not self._holds(partial):
            raise OutputError(
                f"cannot write results to {path}: {partial} was replaced while this run wrote it; "
                "run the same command again (the answers are in the cache)"
            )
        try:
            os.replace(partial, path)
        except OSError as exc:
            raise OutputError(f"cannot write results to {path}: {exc.strerror or exc}; they are in {partial}") from None


def _write_all(stream: IO[bytes], data: bytes) -> None:
    """Write all of ``data``, or raise. A buffered stream's ``write`` can return a short count
    without raising: a pipe whose reader goes away in the middle of a large write takes part of it,
    and only the next write says EPIPE (``shutil.copyfileobj`` never looks, so a cached rerun's
    leading hits to ``| head`` were lost and the run said it succeeded)."""
    written = stream.write(data)
    if written is not None and written < len(data):  # rare: checked, not looped, on the common path
        view = memoryview(data)[written:]
        while view:
            view = view[stream.write(view) :]


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


#: The extended attribute that marks a ``.partial`` file as written by a run (see ResultWriter.token).
PARTIAL_MARK = "user.llmbatch.partial"


def _mark(fd: int) -> str | None:
    token = secrets.token_hex(16)
    try:
        os.setxattr(fd, PARTIAL_MARK, token.encode())
    except (OSError, AttributeError):  # no extended attributes here (or not on this system)
        return None
    return token


def partial_mark(fd: int) -> str | None:
    """The mark of the ``.partial`` open on ``fd``, or None (no mark: not written by a run)."""
    try:
        return os.getxattr(fd, PARTIAL_MARK).decode("ascii", "replace")
    except (OSError, AttributeError):
        return None
