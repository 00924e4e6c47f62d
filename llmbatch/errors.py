"""Errors written for people.

Every exception llmbatch raises on purpose is an :class:`LlmbatchError` carrying a message a
user can act on and the exit code the CLI should end with. The CLI is the one place that turns
them into output; library users catch them like any other exception. Anything that is not an
``LlmbatchError`` is a bug and is allowed to raise.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "EXIT_BUDGET",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_SOME_ERRORS",
    "EXIT_USAGE",
    "CacheError",
    "InputError",
    "LineError",
    "LlmbatchError",
    "NotFound",
    "OutputError",
    "UsageError",
    "did_you_mean",
    "printable",
]

EXIT_OK = 0
EXIT_SOME_ERRORS = 1  # the run finished, some lines ended in error (they are in the results)
EXIT_USAGE = 2  # bad options or input; nothing was sent
EXIT_BUDGET = 3  # --max-cost reached: the run stopped before spending more (rerun to go on)
EXIT_PENDING = 75  # --batch-api --no-wait: jobs are running (EX_TEMPFAIL: try again later)
EXIT_INTERRUPTED = 130  # Ctrl-C, after writing every completed line


class LlmbatchError(Exception):
    """Base of every error meant for a user: ``str(error)`` is the whole message."""

    exit_code: int = EXIT_SOME_ERRORS


class UsageError(LlmbatchError):
    """Bad options or environment, found before anything was sent."""

    exit_code = EXIT_USAGE


class OutputError(LlmbatchError):
    """The results could not be written once calls had been made: the run stops early (exit 1),
    and what was answered is in the cache for the rerun."""


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem with one input line, reported as ``FILE:LINE: message``."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


class InputError(LlmbatchError):
    """The input file has invalid lines; all of them are listed, none was sent."""

    exit_code = EXIT_USAGE

    def __init__(self, errors: list[LineError], total_errors: int | None = None) -> None:
        self.errors = errors
        self.total_errors = total_errors if total_errors is not None else len(errors)
        super().__init__("\n".join(str(e) for e in errors))


class NotFound(LlmbatchError):
    """What was asked for by name is not there (``cache show`` of a key the cache does not hold).
    Exit 1, as grep's "no match": a script can tell it from a malformed request (2)."""


class CacheError(LlmbatchError):
    """The cache directory cannot be created, opened or written."""

    exit_code = EXIT_USAGE


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the known name closest to a misspelt ``name``, or nothing."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


# C0 and C1 control characters, DEL, line/paragraph separators and the bidirectional overrides
# (which can make a terminal or a page show text in another order than it is).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """``text`` safe to print on a terminal, on one line: control characters (escape sequences,
    carriage returns, newlines, bidirectional overrides) from input files or providers' messages
    are shown as escapes (``\\x1b``, ``\\n``, ``\\u202e``) instead of being obeyed, so they can
    neither retitle the window, clear the screen nor reorder what is shown. rich keeps ESC as it is."""
    text = text if isinstance(text, str) else str(text)
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape_control, text)


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
