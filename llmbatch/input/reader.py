"""Reading the input file: every line checked before anything is sent, then streamed lazily.

:func:`check_lines` reads a stretch of a file and collects every problem (``FILE:LINE: message``);
:func:`combine_parts` makes the file's :class:`ValidationReport` of its stretches (a big file is
checked in two at once); :func:`validate_file` does both for a whole file. :func:`read_requests`
then streams the validated requests, so memory does not grow with the file. Blank lines are skipped
(they produce no result line); a UTF-8 BOM, CRLF line endings and a missing final newline are fine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from llmbatch.errors import InputError, LineError
from llmbatch.input.ids import IdHashes
from llmbatch.input.shapes import _BOM, Defaults, InvalidLine, parse_line
from llmbatch.model.request import Request

__all__ = [
    "PartReport",
    "ValidationReport",
    "check_lines",
    "combine_parts",
    "count_lines_before",
    "iter_raw_lines",
    "line_start_near",
    "read_requests",
    "validate_file",
]

_NO_DEFAULTS = Defaults()  # a line's own model, or an error


# --- files -----------------------------------------------------------------------------------


def iter_raw_lines(stream: BinaryIO, *, first_line: int = 1, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(line_number, content)`` for every non-blank line, BOM and line endings removed.

    ``first_line``: the number of the line the stream is positioned at; ``end``: stop at this byte
    offset, which must be the start of a line (``line_start_near``)."""
    lines: Iterator[bytes] = iter(stream)
    if end is not None:
        lines = _until(lines, end - stream.tell())
    for number, raw in enumerate(lines, start=first_line):
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        raw = raw.rstrip(b"\r\n")
        if raw.strip():
            yield number, raw


def _until(lines: Iterator[bytes], left: int) -> Iterator[bytes]:
    for raw in lines:
        if left <= 0:
            return
        left -= len(raw)
        yield raw


def line_start_near(path: Path, offset: int) -> int:
    """The offset of the first line that starts at or after ``offset`` (the file's size if none)."""
    if offset <= 0:
        return 0
    with open(path, "rb") as stream:
        stream.seek(offset - 1)
        stream.readline()  # the rest of the line holding the byte before: just b"\n" if it ends there
        return stream.tell()


def count_lines_before(path: Path, offset: int) -> int:
    """How many lines end before ``offset``: the line starting there is this plus one."""
    count = 0
    with open(path, "rb") as stream:
        while offset > 0:
            chunk = stream.read(min(offset, 1 << 20))
            if not chunk:
                break
            count += chunk.count(b"\n")
            offset -= len(chunk)
    return count


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What the validation pass learned: how many requests, and every problem."""

    requests: int
    errors: list[LineError]
    total_errors: int
    models: set[str] = field(default_factory=set)  # every provider:model the file asks for


def validate_file(
    path: Path,
    defaults: Defaults = _NO_DEFAULTS,
    *,
    source: str | None = None,
    max_errors: int = 100,
    on_valid: Callable[[Request], bool] | None = None,
) -> ValidationReport:
    """Read the whole file once and collect every invalid line (up to ``max_errors`` listed).

    ``on_valid`` sees each valid request in order, until it returns False or a line is invalid
    (``runner.HitPrefix`` answers a cached rerun's leading hits this way, in the same pass)."""
    source = source or str(path)
    with IdHashes() as ids:
        part = check_lines(path, defaults, ids, source=source, max_errors=max_errors, on_valid=on_valid)
        return combine_parts(path, defaults, [part], ids, source=source, max_errors=max_errors)


@dataclass(slots=True)
class PartReport:
    """What :func:`check_lines` found in one stretch of a file; :func:`combine_parts` makes the
    file's :class:`ValidationReport` of its parts (``runner`` checks a big file in two at once)."""

    requests: int = 0
    errors: list[LineError] = field(default_factory=list)  # the first max_errors of the part
    total_errors: int = 0
    models: set[str] = field(default_factory=set)


def check_lines(
    path: Path,
    defaults: Defaults,
    ids: IdHashes,
    *,
    source: str,
    start: int = 0,
    end: int | None = None,
    first_line: int = 1,
    max_errors: int = 100,
    on_valid: Callable[[Request], bool] | None = None,
) -> PartReport:
    """Check the lines from byte ``start`` (line number ``first_line``) to ``end``, adding each
    valid request's id hash to ``ids``; ``on_valid`` as in :func:`validate_file`."""
    feeding = on_valid is not None
    part = PartReport()
    found = part.errors
    models = part.models
    count = total_errors = 0
    with open(path, "rb") as stream:
        stream.seek(start)
        for number, raw in iter_raw_lines(stream, first_line=first_line, end=end):
            try:
                request = parse_line(raw, number, defaults)
            except InvalidLine as exc:
                total_errors += 1
                feeding = False
                if len(found) < max_errors:
                    found.append(LineError(source, number, str(exc)))
                continue
            if feeding:
                feeding = on_valid(request)  # type: ignore[misc]
            count += 1
            models.add(request.model_ref)
            if request.fallback:  # a fallback may be asked too: its provider is prepared, its price checked
                models.update(request.fallback)
            if request.escalate_to is not None:  # and so may the cascade's model
                models.add(request.escalate_to)
            # Ids are checked for duplicates through 8-byte hashes, not a dict of strings (a million
            # ids would cost 120 MB); equal hashes are confirmed on the text afterwards.
            ids.add(hash(str(request.id)))
    part.requests, part.total_errors = count, total_errors
    return part


def combine_parts(
    path: Path, defaults: Defaults, parts: list[PartReport], ids: IdHashes, *, source: str, max_errors: int = 100
) -> ValidationReport:
    """The file's report: its parts' findings, and every id used twice anywhere in it."""
    duplicates = _duplicate_ids(path, defaults, ids.repeated(), source)
    found = [error for part in parts for error in part.errors]
    return ValidationReport(
        requests=sum(part.requests for part in parts),
        errors=sorted(found + duplicates, key=lambda e: e.line)[:max_errors],
        total_errors=sum(part.total_errors for part in parts) + len(duplicates),
        models=set().union(*(part.models for part in parts)),
    )


def _duplicate_ids(path: Path, defaults: Defaults, suspects: set[int], source: str) -> list[LineError]:
    """Every line whose id (compared as text: 3 and "3" look alike in results) was used before;
    ``suspects``: the hashes of ids seen more than once (equal hashes may be a collision)."""
    if not suspects:
        return []
    # Rare: read the file again, looking only at the lines whose id hash is suspect.
    first_line: dict[str, int] = {}
    errors: list[LineError] = []
    with open(path, "rb") as stream:
        for number, raw in iter_raw_lines(stream):
            try:
                request = parse_line(raw, number, defaults)
            except InvalidLine:
                continue
            ident = str(request.id)
            if hash(ident) not in suspects:
                continue
            first = first_line.setdefault(ident, number)
            if first != number:
                errors.append(LineError(source, number, f"duplicate id {request.id!r} (first used on line {first})"))
    return errors


def read_requests(
    path: Path, defaults: Defaults = _NO_DEFAULTS, *, source: str | None = None, start_line: int = 1
) -> Iterator[Request]:
    """Stream the requests of an already validated file, one at a time, from ``start_line`` on.

    A line that fails now passed validation a moment ago: the file changed under us, which
    is reported rather than guessed around.
    """
    source = source or str(path)
    with open(path, "rb") as stream:
        for number, raw in iter_raw_lines(stream):
            if number < start_line:
                continue  # answered already (runner.HitPrefix)
            try:
                yield parse_line(raw, number, defaults)
            except InvalidLine as exc:
                raise InputError([LineError(source, number, f"{exc} (the file changed during the run)")]) from None
