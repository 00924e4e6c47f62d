"""Paid answers an earlier run could not store, taken back from its ``.partial`` file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson

from llmbatch.app.runconfig import RunConfig, effective_defaults
from llmbatch.engine import LOOKUP_CHUNK
from llmbatch.input import (
    Request,
    read_requests,
)
from llmbatch.model.entry import CacheEntry, make_entry
from llmbatch.results import partial_mark
from llmbatch.store import ResponseStore

__all__ = []


def _recovery(config: RunConfig, cache: ResponseStore, recovered: list[int]) -> Callable[[BinaryIO], None]:
    """What to do with an earlier run's ``.partial`` before it is emptied: take the answers it paid
    for back into the cache, so that an answer that could not be stored then (a full disk) is not
    paid for again. Only from a ``.partial`` a run of this cache wrote (a file shipped in a cloned
    repository must never plant answers), and only lines that still match: same line number, same
    key as the input gives now, an answer that counts as one (``answers.problem``), and not already
    stored. The file is read in step with the input, so memory stays flat."""

    def recover(earlier: BinaryIO) -> None:
        found = os.fstat(earlier.fileno())
        token = partial_mark(earlier.fileno())
        if token is None or not cache.knows_partial((found.st_dev, found.st_ino), token):
            return
        requests = read_requests(config.input.path, effective_defaults(config), source=config.input.source)
        request: Request | None = None
        batch: list[tuple[str, CacheEntry, str]] = []
        for raw in earlier:
            row = _paid_line(raw)
            if row is None:
                continue
            while request is None or request.line < row["line"]:
                request = next(requests, None)
                if request is None:
                    break
            if request is None:
                break  # the input got shorter: nothing further can be matched
            entry = _recovered_entry(config, request, row)
            if entry is not None:
                batch.append((row["key"], entry, config.destination.tag_prefix + request.model_ref))
            if len(batch) >= LOOKUP_CHUNK:
                recovered.append(_store_missing(cache, batch, config.options.ttl_s))
                batch = []
        if batch:
            recovered.append(_store_missing(cache, batch, config.options.ttl_s))

    return recover


def _paid_line(raw: bytes) -> dict[str, Any] | None:
    """A whole result line of an answer paid for in that run, or None."""
    if not raw.endswith(b"\n"):
        return None  # cut off mid-line: the run was killed while writing it
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(row, dict) or row.get("status") != "ok" or row.get("cached") is not False:
        return None
    if not isinstance(row.get("line"), int) or not isinstance(row.get("key"), str):
        return None
    return row if isinstance(row.get("response"), dict) else None


def _recovered_entry(config: RunConfig, request: Request, row: dict[str, Any]) -> CacheEntry | None:
    from llmbatch import answers
    from llmbatch.keys import key_material, request_key

    if request.line != row["line"]:
        return None
    endpoint = config.destination.key_endpoint(request.provider)
    response = row["response"]
    if request_key(request, endpoint) != row["key"] or answers.problem(response) or not answers.cacheable(response):
        return None
    return make_entry(
        key=row["key"],
        request=key_material(request, endpoint),
        response=response,
        stored_at=time.time(),
        usage=row.get("usage"),
        latency_ms=row.get("latency_ms"),
        cost_usd=row.get("cost_usd"),
        via=row.get("via") or "live",
    )


def _store_missing(cache: ResponseStore, batch: list[tuple[str, CacheEntry, str]], ttl_s: float | None) -> int:
    stored = cache.get_many([key for key, _, _ in batch])
    missing = [item for item in batch if item[0] not in stored]
    if missing:
        cache.put_many(missing, ttl_s=ttl_s)
    return len(missing)
