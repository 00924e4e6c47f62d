"""Duplicate ids in a file of any length, in flat memory: 8-byte hashes in sorted runs."""

from __future__ import annotations

import heapq
import tempfile
from array import array
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["IdHashes"]


class IdHashes:
    """Integers kept in sorted runs of 65,536, spilled to an unnamed temporary file once there
    is more than one: however long the input, memory holds one run and a small block of each
    other (the hashes of a million ids would otherwise be 8 MB, of a hundred million 800 MB).

    If the temporary file cannot be written (no room, no usable temporary directory), the runs
    stay in memory instead: 8 bytes an id, which no input is refused for. A context manager, so
    that the file is closed however the reading ends.

    Another process can add its share: it writes its runs into a file it was given (``spill``,
    then :meth:`spill_all`), and this one reads them from there (:meth:`include`). Python's
    ``hash`` of a string differs between interpreters, so that process must be a fork of this one."""

    RUN = 65_536
    BLOCK = 1_024  # read back from each spilled run at a time, while merging

    def __init__(self, spill: BinaryIO | None = None) -> None:
        self._current = array("q")
        self._spill = spill  # see spill_file
        self._owned = spill is None
        self._spill_end = 0
        self._spilled: list[tuple[BinaryIO, int, int]] = []  # (file, offset, count)
        self._kept: list[array[int]] = []  # runs that could not be spilled
        self._can_spill = True
        self._included: list[BinaryIO] = []

    def __enter__(self) -> IdHashes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._spill is not None and self._owned:
            self._spill.close()
            self._spill = None
        for file in self._included:
            file.close()

    def add(self, value: int) -> None:
        if len(self._current) >= self.RUN:
            self._flush()  # a full run moves out only when the next value needs room
        self._current.append(value)

    @staticmethod
    def spill_file() -> BinaryIO | None:
        """A new unnamed file for runs (unbuffered: a write that fails leaves nothing half-written
        behind in a buffer); None if none can be made."""
        try:
            return tempfile.TemporaryFile(prefix=".llmbatch-ids-", buffering=0)
        except OSError:
            return None

    def spill_all(self) -> list[tuple[int, int]]:
        """Write every run to the spill file; ``(offset, count)`` of each. OSError if it cannot."""
        if self._current:
            self._flush()
        if self._kept:
            raise OSError("the id hashes could not all be written to the temporary file")
        return [(offset, count) for _, offset, count in self._spilled]

    def include(self, file: BinaryIO, runs: list[tuple[int, int]]) -> None:
        """Count the runs another process wrote to ``file`` (:meth:`spill_all`) as this one's;
        the file is closed with this."""
        self._included.append(file)
        self._spilled.extend((file, offset, count) for offset, count in runs)

    def _flush(self) -> None:
        run = array("q", sorted(self._current))
        self._current = array("q")
        if self._can_spill:
            try:
                self._write(run)
                return
            except OSError:
                self._can_spill = False  # what is in the file so far stays readable
        self._kept.append(run)

    def _write(self, run: array[int]) -> None:
        if self._spill is None:
            self._spill = self.spill_file()
            if self._spill is None:
                raise OSError("no temporary file for the id hashes")
        view = memoryview(run.tobytes())
        self._spill.seek(self._spill_end)
        while view:
            written = self._spill.write(view) or 0
            view = view[written:]
        self._spilled.append((self._spill, self._spill_end, len(run)))
        self._spill_end += 8 * len(run)

    def _read(self, file: BinaryIO, offset: int, count: int) -> Iterator[int]:
        while count:
            block = array("q")
            file.seek(offset)  # the runs are read in turns, through one file
            block.fromfile(file, min(self.BLOCK, count))
            offset += 8 * len(block)
            count -= len(block)
            yield from block

    def repeated(self) -> set[int]:
        """Every value added more than once."""
        if not self._spilled and not self._kept:
            merged: Iterator[int] = iter(sorted(self._current))
        else:
            if self._current:
                self._flush()
            spilled = (self._read(file, offset, count) for file, offset, count in self._spilled)
            merged = heapq.merge(*spilled, *self._kept)
        repeated: set[int] = set()
        previous = None
        for value in merged:
            if value == previous:
                repeated.add(value)
            previous = value
        return repeated
