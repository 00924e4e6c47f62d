"""Looking inside the cache: ``cache explain`` (a line's key and why), ``cache show`` (one entry) and
``cache verify`` (every entry checked against itself).

Library functions over a :class:`~llmbatch.app.runconfig.RunConfig` and a
:class:`~llmbatch.store.base.ResponseStore`; they return values, and the CLI renders them. They go
through the store port only (``entries`` with its filters, ``remove``), so they work on any store.

- :func:`explain_line` reads one physical line of an input file and makes its key exactly as a run
  with the same options would (the same defaults, the same destination, the same parser), so
  "why was this a miss?" is answered by :func:`diff_material` on two lines' key material.
- :func:`find_entry` finds an entry by its key or a unique prefix of it (SQL on the key index in
  the disk store, never a walk of every value).
- :func:`verify` walks the whole store once, a page at a time (flat memory over millions), and
  sorts every entry into ok, cannot be checked (older versions), or one of :data:`KINDS`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from llmbatch.app.runconfig import RunConfig, effective_defaults
from llmbatch.errors import InputError, LineError, NotFound, UsageError
from llmbatch.input import InvalidLine, iter_raw_lines, parse_line
from llmbatch.keys import KEY_VERSION, key_from_material, key_material
from llmbatch.model.entry import entry_digest, servable
from llmbatch.store.base import GONE, ResponseStore, Stored

__all__ = [
    "BROKEN",
    "KINDS",
    "MIN_PREFIX",
    "Difference",
    "LineKey",
    "VerifyReport",
    "diff_material",
    "explain_line",
    "find_entry",
    "split_line_ref",
    "verify",
]

#: Hex digits a key prefix needs at least: with fewer, most prefixes would name several entries
#: of a big cache, and a typo could silently name another.
MIN_PREFIX = 8
#: What verify finds, in the order an entry is judged (the first that applies is its kind).
KINDS = ("undecodable", "key_mismatch", "digest_mismatch", "expired", "gone")
#: The kinds that make verify fail (exit 1). An expired entry is the TTL doing its job, and one
#: whose value a server dropped (its maxmemory policy) is a miss: neither is served, --repair
#: removes what is left of them, but neither is damage.
BROKEN = ("undecodable", "key_mismatch", "digest_mismatch")
#: Removed a transaction's worth at a time during --repair, so that memory stays flat.
_REMOVE_BATCH = 1000
_HEX_KEY = re.compile(r"[0-9a-f]+")


# --- explain -----------------------------------------------------------------------------------


def split_line_ref(text: str) -> tuple[str, int]:
    """``FILE:N`` as (FILE, N). Split on the last colon, so a file name may hold colons of its own
    (``runs/12:30.jsonl:4``); N is a physical line number from 1, as in the error messages."""
    name, colon, number = text.rpartition(":")
    if not colon or not name:
        raise UsageError(f"{text}: name a line as FILE:LINE, e.g. prompts.jsonl:12")
    if not (number.isascii() and number.isdigit()) or int(number) < 1:
        raise UsageError(f"{text}: the line number must be a whole number from 1, e.g. {name}:12")
    return name, int(number)


@dataclass(frozen=True, slots=True)
class LineKey:
    """One input line's key as a run would make it: the material hashed, and the key."""

    source: str
    line: int
    model_ref: str  # provider:model, as the line (or -m) names it
    material: dict[str, Any]
    key: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def explain_line(config: RunConfig, line: int) -> LineKey:
    """The key of physical line ``line`` of ``config.input``, made as ``run`` with the same options
    makes it. A bad line is the :class:`InputError` run would give for it; a line that is blank or
    past the end is a :class:`UsageError`."""
    source = config.input.source
    with open(config.input.path, "rb") as stream:
        for number, raw in iter_raw_lines(stream):
            if number < line:
                continue
            if number > line:
                break  # the line asked for was blank: iter_raw_lines skips those
            try:
                request = parse_line(raw, number, effective_defaults(config))
            except InvalidLine as exc:
                raise InputError([LineError(source, number, str(exc))]) from None
            material = key_material(request, config.destination.key_endpoint(request.provider))
            return LineKey(source, line, request.model_ref, material, key_from_material(material))
    total = _physical_lines(config)
    if line <= total:
        raise UsageError(f"{source}:{line} is a blank line: it asks for nothing (blank lines get no result)")
    have = f"only {total} line{'s' if total != 1 else ''}" if total else "no lines"
    raise UsageError(f"{source}:{line}: {source} has {have}")


def _physical_lines(config: RunConfig) -> int:
    count, last = 0, b"\n"
    with open(config.input.path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")  # a last line without its newline is a line too


@dataclass(frozen=True, slots=True)
class Difference:
    """One field of the key material that differs: its path (``params.temperature``,
    ``messages[0].content``) and its value on each side. ``missing``: the side (``"before"`` or
    ``"after"``) that has no such field at all, which is not the same as null."""

    path: str
    before: Any  # the line explained --against
    after: Any  # the line explained
    missing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        sides = {
            name: value for name, value in (("before", self.before), ("after", self.after)) if name != self.missing
        }
        return {"field": self.path, **sides}


#: Where a field is missing on one side, while the two are compared.
_ABSENT: Any = object()


def diff_material(before: Any, after: Any, path: str = "") -> list[Difference]:
    """Every leaf where two key materials differ, in a stable order. Objects are compared key by
    key and lists item by item, so a changed temperature reads ``params.temperature``, not "params
    differ". Compared as JSON values: ``0.7`` and ``0.7`` are equal, ``1`` and ``true`` are not."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[Difference] = []
        for name in sorted(before.keys() | after.keys()):
            inner = f"{path}.{name}" if path else name
            found += diff_material(before.get(name, _ABSENT), after.get(name, _ABSENT), inner)
        return found
    if isinstance(before, list) and isinstance(after, list):
        found = []
        for index in range(max(len(before), len(after))):
            found += diff_material(
                before[index] if index < len(before) else _ABSENT,
                after[index] if index < len(after) else _ABSENT,
                f"{path}[{index}]",
            )
        return found
    if before is _ABSENT or after is _ABSENT:
        if before is after:
            return []
        missing = "before" if before is _ABSENT else "after"
        return [Difference(path, None if before is _ABSENT else before, None if after is _ABSENT else after, missing)]
    if type(before) is not type(after) or before != after:
        return [Difference(path, before, after)]
    return []


def stored_under(store: ResponseStore | None, key: str) -> Stored | None:
    """What the store holds under exactly ``key`` (expired or unreadable too: explain says so)."""
    if store is None:
        return None
    return next(store.entries(key_prefix=key, broken=True), None)


# --- show --------------------------------------------------------------------------------------


def normalise_key(text: str) -> str:
    """A key or a key prefix as the user typed it, as ``v1:`` + lowercase hex; anything else is a
    :class:`UsageError` (so that ``cache show`` of a typo does not look like "not in the cache")."""
    body = text.strip().lower()
    body = body.removeprefix(f"{KEY_VERSION}:")
    if not _HEX_KEY.fullmatch(body) or len(body) > 64:
        raise UsageError(f"{text}: a key is {KEY_VERSION}: and 64 hex digits (as results and cache explain show it)")
    if len(body) < MIN_PREFIX:
        raise UsageError(f"{text}: give at least {MIN_PREFIX} hex digits of the key, so it names one entry")
    return f"{KEY_VERSION}:{body}"


def find_entry(store: ResponseStore | None, text: str) -> Stored:
    """The one entry whose key is ``text`` or starts with it (at least :data:`MIN_PREFIX` hex digits).
    None there is :class:`NotFound`; a prefix of several keys, a :class:`UsageError` listing some."""
    prefix = normalise_key(text)
    found = list(islice(store.entries(key_prefix=prefix, broken=True), 3)) if store is not None else []
    if not found:
        where = f" in the cache at {store.location}" if store is not None else " (there is no cache yet)"
        raise NotFound(f"no entry {text}{where}")
    if len(found) > 1:
        some = ", ".join(item.key for item in found[:2])
        raise UsageError(f"{text} starts more than one key ({some}, ...): give more of it")
    return found[0]


# --- verify ------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``found``: how many entries of each of :data:`KINDS`; ``examples``:
    the first few keys of each; ``unverifiable``: entries from before keys or digests were recorded
    (nothing to check them against: not counted as broken)."""

    checked: int = 0
    ok: int = 0
    unverifiable: int = 0
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    removed: int | None = None  # with repair: how many were taken out
    seconds: float = 0.0

    @property
    def broken(self) -> int:
        return sum(self.found[kind] for kind in BROKEN)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "ok": self.ok,
            "unverifiable": self.unverifiable,
            "found": self.found,
            "broken": self.broken,
            "examples": self.examples,
            "removed": self.removed,
            "seconds": round(self.seconds, 3),
        }


def verify(
    store: ResponseStore,
    *,
    repair: bool = False,
    examples: int = 5,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.perf_counter,
) -> VerifyReport:
    """Check every entry: it decodes, its key is the one its request material makes, its digest is
    its own, it has not expired. ``repair``: remove every entry found (each a miss from now on, so
    the next run pays for it again, and only for it)."""
    started = monotonic()
    report = VerifyReport()
    now = clock()
    doomed: list[str] = []
    for item in store.entries(broken=True):
        report.checked += 1
        kind = _judge(item, now, report)
        if kind is None:
            continue
        report.found[kind] += 1
        if len(report.examples[kind]) < examples:
            report.examples[kind].append(item.key)
        if repair:
            doomed.append(item.key)
            if len(doomed) >= _REMOVE_BATCH:
                # Between two of entries()' pages: it pages on (store_time, rowid), so what is
                # removed behind it changes nothing ahead.
                report.removed = (report.removed or 0) + store.remove(doomed)
                doomed = []
    if repair:
        report.removed = (report.removed or 0) + (store.remove(doomed) if doomed else 0)
    report.seconds = monotonic() - started
    return report


def _judge(item: Stored, now: float, report: VerifyReport) -> str | None:
    """The kind of trouble an entry is in, or None (counted as ok or unverifiable)."""
    entry = item.entry
    if item.expires_at is not None and item.expires_at < now:
        return "expired"  # a server drops an expired value itself: nothing to decode
    if entry is None:
        return "gone" if item.problem == GONE else "undecodable"
    if not servable(item.key, entry):
        return "undecodable"  # not an answer, or another key's: never served
    request = entry.get("request")
    digest = entry.get("digest")
    if request is not None and key_from_material(request) != item.key:
        return "key_mismatch"
    if digest is not None and entry_digest(entry) != digest:
        return "digest_mismatch"
    if request is None or digest is None:
        report.unverifiable += 1
    else:
        report.ok += 1
    return None


def iter_examples(report: VerifyReport) -> Iterator[tuple[str, int, list[str]]]:
    """(kind, count, example keys) for each kind found, in :data:`KINDS` order."""
    for kind in KINDS:
        if report.found[kind]:
            yield kind, report.found[kind], report.examples[kind]
