"""Batch-API job records: what was submitted, kept durably on this machine.

A job costs money the moment it is created, and its answers come back hours later. So before the
first poll, its record is on disk: the provider, the endpoint its keys record, the batch id, the
input file id, when it was submitted, and which request key each ``custom_id`` stands for. A run
that was killed (kill -9, Ctrl-C, a crash) finds its pending jobs here and attaches to them instead
of submitting again.

One JSON file per job in ``<cache dir>/batches/`` (:attr:`StorePlace.jobs_directory`), written to a
temporary file, fsynced and renamed into place (then the directory fsynced): a record is either the
old one or the new one, never half of each. The directory is private (0700, files 0600), as the
cache is. No secret is ever in a record: the destination is recorded by its endpoint, not its key.

With ``--cache redis://`` the records stay in this machine's ``--cache-dir`` too: a job is attached
to by the machine that submitted it (the answers, once read, go to the shared store).

States: ``submitting`` (written before the provider is asked: if the run dies before the batch id
comes back, a later run can tell that a batch may exist), ``submitted`` (the batch id is known: the
job is pending), ``collected`` (every line's outcome was handed to a run that then ended normally).

Beside each record, ``<id>.requests.jsonl`` holds the key material of every line, written with the
``submitting`` record: a job's answers are paid for even when the file that asked for them has
changed by the time they come back, and a later run stores those answers under their own keys
(which needs the request each key was made from, not only the key).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmbatch.errors import CacheError

__all__ = ["KEEP_COLLECTED_S", "JobBook", "JobRecord"]

_SUFFIX = ".json"
_REQUESTS = ".requests.jsonl"
#: How long the record of a finished job is kept for ``llmbatch batches list`` (its answers are in
#: the cache; the provider keeps its files about as long).
KEEP_COLLECTED_S = 30 * 86_400


@dataclass
class JobRecord:
    """One Batch-API job. ``ids`` maps each ``custom_id`` to the request key it answers."""

    id: str
    provider: str
    model: str
    endpoint: str  # what the keys record as the endpoint (the destination), never a key
    ids: dict[str, str]
    submitted_at: float
    state: str = "submitting"
    batch_id: str | None = None
    input_file_id: str | None = None
    status: str | None = None  # the provider's last status seen
    done: int = 0
    failed: int = 0
    estimate_usd: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.ids)

    @property
    def pending(self) -> bool:
        return self.state == "submitted"

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        raw = orjson.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class JobBook:
    """The job records of one cache directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def new_id() -> str:
        # Short, sortable by nothing in particular, and safe as a file name and as batch metadata.
        return "job_" + secrets.token_hex(8)

    def _path(self, job_id: str) -> Path:
        if not job_id.replace("_", "").isalnum():
            raise CacheError(f"not a job id: {job_id!r}")
        return self.directory / f"{job_id}{_SUFFIX}"

    def write(self, record: JobRecord) -> None:
        """Durably: the record is on disk when this returns."""
        self._write_file(self._path(record.id), record.to_json())

    def write_requests(self, job_id: str, requests: dict[str, dict[str, Any]]) -> None:
        """The key material of each ``custom_id`` of a job, durably (before the job is created)."""
        lines = b"".join(orjson.dumps({"custom_id": cid, "request": m}) + b"\n" for cid, m in requests.items())
        self._write_file(self._requests_path(job_id), lines)

    def read_requests(self, job_id: str) -> dict[str, dict[str, Any]]:
        """What :meth:`write_requests` kept; empty for a job recorded before it existed (or damaged)."""
        found: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError):
            path = self._requests_path(job_id)
            if path.lstat().st_uid != os.getuid():  # as for records: never another user's file
                return found
            for line in path.read_bytes().splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    row = orjson.loads(line)
                    if isinstance(row["request"], dict):
                        found[str(row["custom_id"])] = row["request"]
        return found

    def _requests_path(self, job_id: str) -> Path:
        return self._path(job_id).with_name(f"{job_id}{_REQUESTS}")

    def _write_file(self, path: Path, data: bytes) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=_SUFFIX)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise CacheError(f"cannot write the batch job record in {self.directory}: {exc.strerror or exc}") from None

    def read(self, job_id: str) -> JobRecord | None:
        try:
            return JobRecord.from_json(self._path(job_id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise CacheError(f"cannot read the batch job record {job_id}: {exc}") from None

    def find(self, id_or_batch: str) -> JobRecord | None:
        """A record by its own id or by the provider's batch id."""
        if id_or_batch.startswith("job_"):
            return self.read(id_or_batch)
        return next((r for r in self.all() if r.batch_id == id_or_batch), None)

    def all(self, skip: frozenset[str] | set[str] = frozenset()) -> Iterator[JobRecord]:
        """Every readable record, oldest first (a damaged one is skipped, not fatal), but those
        whose id is in ``skip`` (not even read)."""
        if not self.directory.is_dir():
            return iter(())
        records = []
        for path in self.directory.glob(f"job_*{_SUFFIX}"):
            if path.name.removesuffix(_SUFFIX) in skip:
                continue
            with contextlib.suppress(OSError, ValueError, TypeError):
                # Only our own records: one planted by another user could file a batch's answers
                # under this cache's keys (the cache refuses others' files for the same reason).
                if path.lstat().st_uid == os.getuid() and path.is_file():
                    records.append(JobRecord.from_json(path.read_bytes()))
        return iter(sorted(records, key=lambda r: r.submitted_at))

    def held_keys(self) -> dict[str, str]:
        """The request keys of every job that may still answer (``submitted``, or ``submitting``: a
        batch may exist), each to its record id: lines a run must not pay for again."""
        return {key: r.id for r in self.all() if r.state in ("submitted", "submitting") for key in r.ids.values()}

    def pending(self, endpoint: str, skip: frozenset[str] | set[str] = frozenset()) -> list[JobRecord]:
        """Jobs submitted to ``endpoint`` whose answers no run has collected yet (``submitting``
        ones too: a batch may exist for them); ``skip``: ids not to read."""
        return [r for r in self.all(skip) if r.endpoint == endpoint and r.state in ("submitted", "submitting")]

    def prune(self, *, now: float, keep_s: float = KEEP_COLLECTED_S) -> int:
        """Remove the records of jobs collected (or refused) more than ``keep_s`` ago; how many went.
        Pending ones always stay: they are what a later run attaches to."""
        removed = 0
        for record in self.all():
            if record.state in ("collected", "refused") and now - record.submitted_at > keep_s:
                with contextlib.suppress(FileNotFoundError):
                    self._requests_path(record.id).unlink()
                with contextlib.suppress(FileNotFoundError):
                    self._path(record.id).unlink()
                    removed += 1
        return removed

