"""``cache export`` and ``cache import``: a store's answers as a JSONL file, and back.

An export record is one JSON object per line::

    {"llmbatch_cache": 1, "key": "v1:…", "tag": "openai:gpt-4o-mini",
     "stored_at": 1764000000.0, "expires_at": null, "entry": {…the stored entry, v3…}}

``llmbatch_cache`` is the format's version. ``entry`` is the record the store keeps, with the
request material its key was made from and a digest of itself. ``stored_at`` and ``expires_at``
are the store's own times, so an imported answer ages (purge by age, TTL) as it would have where
it came from.

Import trusts nothing in the file. It reads the whole file once and checks every record before
it files any: the format, the key re-derived from the request material (an answer filed under
another request is refused), the digest (damaged bytes are refused), and the answer itself (a
refusal or an empty answer is never cached). One bad record and nothing is imported: each bad one
is named by its line, so the file can be fixed or re-exported. What it does not protect against
is someone who fabricates an answer and computes its digest: import only files you would trust.

Both run in flat memory: export pages through the store, import reads the file twice (check,
then file) instead of holding it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmbatch import answers
from llmbatch.errors import InputError, LineError, UsageError
from llmbatch.keys import SIMULATOR_ENDPOINT, key_from_material
from llmbatch.model.entry import CacheEntry, entry_digest, servable
from llmbatch.results import ResultWriter
from llmbatch.store.base import Loaded, ResponseStore, Stored

__all__ = ["EXPORT_FORMAT", "Exported", "Imported", "check_record", "export_entries", "import_entries"]

EXPORT_FORMAT = 1

#: How many bad records are listed by line (all are counted), as for an input file.
MAX_LISTED = 100


@dataclass(slots=True)
class Exported:
    written: int = 0
    #: Entries from before llmbatch kept the request with the answer: their key cannot be checked
    #: on import, so they are not exported (they stay in the store and still serve hits).
    unverifiable: int = 0
    where: Path | None = None  # None: standard output


def export_entries(
    store: ResponseStore,
    output: Path | None,
    *,
    tag: str | None = None,
    stored_before: float | None = None,
    stored_after: float | None = None,
) -> Exported:
    """Write every live entry that passes the filters to ``output`` (None: standard output),
    oldest first. A file is written whole and renamed into place, by the rules results follow."""
    done = Exported()
    writer = ResultWriter(output).open()
    try:
        chunk: list[bytes] = []
        for item in store.entries(tag=tag, stored_before=stored_before, stored_after=stored_after):
            record = export_record(item)
            if record is None:
                done.unverifiable += 1
                continue
            chunk.append(orjson.dumps(record) + b"\n")
            done.written += 1
            if len(chunk) >= 1000:
                writer.write_bytes(b"".join(chunk))
                chunk = []
        writer.write_bytes(b"".join(chunk))
    except BaseException:
        writer.discard()
        raise
    done.where = writer.finish(True)
    return done


def export_record(item: Stored) -> dict[str, Any] | None:
    """The export record of a stored entry; None for one whose key cannot be re-derived."""
    entry = item.entry
    if entry is None or not isinstance(entry.get("request"), dict):
        return None
    if "digest" not in entry:
        # Stored before entries carried a digest (v2): give it one now, so that the file at
        # least is protected on its way to the other store.
        entry = {**entry, "digest": entry_digest(entry)}  # type: ignore[assignment]
    return {
        "llmbatch_cache": EXPORT_FORMAT,
        "key": item.key,
        "tag": item.tag if item.tag is not None else _tag_of(entry["request"]),
        "stored_at": item.stored_at,
        "expires_at": item.expires_at,
        "entry": entry,
    }


def check_record(line: bytes) -> Stored:
    """The stored item a record line describes; raises ValueError saying what is wrong with it."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    version = record.get("llmbatch_cache")
    if type(version) is not int or version != EXPORT_FORMAT:
        what = "no llmbatch_cache field" if version is None else f"llmbatch_cache format {version!r}"
        raise ValueError(f"not an llmbatch cache export record ({what}; this llmbatch reads format {EXPORT_FORMAT})")
    key, tag, entry = record.get("key"), record.get("tag"), record.get("entry")
    stored_at, expires_at = record.get("stored_at"), record.get("expires_at")
    if not isinstance(key, str):
        raise ValueError('"key" must be a string')
    if tag is not None and not isinstance(tag, str):
        raise ValueError('"tag" must be a string or null')
    if not _time(stored_at) or (expires_at is not None and not _time(expires_at)):
        raise ValueError('"stored_at" and "expires_at" must be times (Unix seconds, up to the year 9999), or null')
    if not isinstance(entry, dict):
        raise ValueError('"entry" must be a JSON object')
    request, response = entry.get("request"), entry.get("response")
    if not isinstance(request, dict):
        raise ValueError("the entry has no request: its key cannot be checked")
    if key_from_material(request) != key or entry.get("key", key) != key:
        raise ValueError(f"the key does not match the request stored with it: refused ({key})")
    if entry.get("digest") != entry_digest(entry):
        raise ValueError(f"the entry's digest does not match its contents: damaged ({key})")
    if not isinstance(response, dict):
        raise ValueError("the entry has no response")
    refused = answers.problem(response)
    if refused is not None or not answers.cacheable(response):
        why = refused.message if refused is not None else "a content filter's refusal"
        raise ValueError(f"the response is not an answer to keep: {why}")
    for name, kinds in _FIELDS.items():
        if name in entry and not isinstance(entry[name], kinds):
            raise ValueError(f'the entry\'s "{name}" is not what llmbatch stores there')
    if not servable(key, entry):
        raise ValueError("the entry is not one llmbatch would serve")
    expected = _tag_of(request)
    if tag != expected:
        raise ValueError(f'"tag" {tag!r} does not match the request ({expected!r})')
    typed: CacheEntry = entry  # type: ignore[assignment]  # checked above, field by field that matters
    return Stored(key, typed, tag, float(record["stored_at"]), float(expires_at) if expires_at is not None else None)


#: Fields of an entry and the JSON types llmbatch writes there: anything else would break a run
#: that reads it (a cost that is text cannot be added up).
_FIELDS: dict[str, Any] = {
    "v": int,
    "stored_at": int | float,
    "provider": str,
    "model": str,
    "endpoint": str | None,
    "usage": dict | None,
    "latency_ms": int | float | None,
    "cost_usd": int | float | None,
    "digest": str,
    "via": str,
}
#: The last second of the year 9999: later is not a time a store can keep.
_LAST = 253_402_300_799


def _time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= _LAST


def _tag_of(request: dict[str, Any]) -> str:
    """The ``provider:model`` tag a run files this request's answer under (simulated answers apart)."""
    simulated = "simulated/" if request.get("endpoint") == SIMULATOR_ENDPOINT else ""
    return f"{simulated}{request.get('provider')}:{request.get('model')}"


def read_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of each non-blank line, a line at a time."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM, as editors on Windows write one
            if line.strip():
                yield number, line


@dataclass(slots=True)
class Imported:
    loaded: Loaded
    records: int = 0
    expired: int = 0  # records whose expiry had passed: not filed


def import_entries(
    store_for: Callable[[], ResponseStore], path: Path, *, source: str, now: float | None = None
) -> Imported:
    """Check every record of ``path``, then, if all are good, file them into the store that
    ``store_for()`` opens (opened only then: a bad file leaves no new cache behind). Raises
    :class:`InputError` naming each bad record's line, having imported nothing."""
    errors: list[LineError] = []
    total_errors = records = 0
    for number, line in read_records(path):
        records += 1
        try:
            check_record(line)
        except ValueError as exc:
            total_errors += 1
            if len(errors) < MAX_LISTED:
                errors.append(LineError(source, number, str(exc)))
    if total_errors:
        raise InputError(errors, total_errors)
    now = time.time() if now is None else now
    done = Imported(Loaded(), records=records)

    def live() -> Iterator[Stored]:
        for number, line in read_records(path):
            try:
                item = check_record(line)  # again: the file is read twice, never held
            except ValueError as exc:
                # Only if the file changed between the two readings.
                raise UsageError(
                    f"{source}:{number}: {exc}; the file changed while it was imported: records before "
                    "this line may have been filed (they were checked); import it again once it is whole"
                ) from None
            if item.expires_at is not None and item.expires_at <= now:
                done.expired += 1
                continue
            yield item

    store = store_for()
    try:
        done.loaded = store.load(live())
    finally:
        store.close()
    return done
