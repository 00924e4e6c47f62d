"""``llmbatch batches list | status ID | cancel ID``: the Batch-API jobs this cache directory knows.

``list`` reads the job records alone (nothing is sent). ``status`` and ``cancel`` ask the provider,
at the endpoint the record says the job went to, with the key from the environment, and write what
they learn back into the record. A cancelled job's finished answers are not lost: the next run of
the same command attaches to it, keeps what was done and submits only the rest.
"""

from __future__ import annotations

from typing import Any

from llmbatch.errors import NotFound, UsageError
from llmbatch.keys import SIMULATOR_ENDPOINT
from llmbatch.providers.base import CallError, Destination
from llmbatch.store import StorePlace
from llmbatch.store.jobs import JobBook, JobRecord

__all__ = ["cancel", "held_by_jobs", "job_dict", "jobs", "status"]


def held_by_jobs(place: StorePlace) -> dict[str, str]:
    """The keys that Batch-API jobs submitted from this machine hold and no run has collected, each
    to its job: a run without ``--batch-api`` must not pay for them again (it stops at the first,
    saying how to collect them), and the plan counts them apart."""
    try:
        return JobBook(place.jobs_directory).held_keys()
    except OSError:  # no records to read: nothing is held
        return {}


def jobs(place: StorePlace) -> list[JobRecord]:
    """Every job record, oldest first."""
    return list(JobBook(place.jobs_directory).all())


def job_dict(record: JobRecord) -> dict[str, Any]:
    """A record as the commands print it (no mapping of ids: it is long and only for the runs)."""
    return {
        "id": record.id,
        "batch_id": record.batch_id,
        "model": f"{record.provider}:{record.model}",
        "endpoint": record.endpoint,
        "state": record.state,
        "status": record.status,
        "total": record.total,
        "done": record.done,
        "failed": record.failed,
        "submitted_at": record.submitted_at,
        "estimate_usd": record.estimate_usd,
        "input_file_id": record.input_file_id,
    }


def _find(place: StorePlace, job: str) -> tuple[JobBook, JobRecord]:
    book = JobBook(place.jobs_directory)
    record = book.find(job)
    if record is None:
        raise NotFound(f"no batch job {job!r} in {place.jobs_directory} (see `llmbatch batches list`)")
    if record.batch_id is None:
        raise UsageError(f"batch job {record.id} has no batch id (its submission never finished): nothing to ask")
    if record.endpoint == SIMULATOR_ENDPOINT:
        raise UsageError(f"batch job {record.id} went to the simulator of a --simulate run, which is gone")
    return book, record


def _client(record: JobRecord) -> Any:
    from llmbatch.providers.anyllm import AnyLLMProvider
    from llmbatch.providers.batch import BatchClient

    api_base = record.endpoint if record.endpoint.startswith(("http://", "https://")) else None
    return BatchClient(AnyLLMProvider(Destination.of(api_base=api_base)))


async def status(place: StorePlace, job: str) -> JobRecord:
    """The provider's word on ``job`` (our id or the batch id), written into its record."""
    return await _ask(place, job, cancel=False)


async def cancel(place: StorePlace, job: str) -> JobRecord:
    """Ask the provider to cancel ``job``; its finished lines stay readable for the next run."""
    return await _ask(place, job, cancel=True)


async def _ask(place: StorePlace, job: str, *, cancel: bool) -> JobRecord:
    book, record = _find(place, job)
    client = _client(record)
    assert record.batch_id is not None
    try:
        ask = client.cancel if cancel else client.state
        state = await ask(record.provider, record.batch_id)
    except CallError as exc:
        raise UsageError(f"batch job {record.id} ({record.batch_id}): {exc.message}") from None
    finally:
        await client.provider.aclose()
    record.status, record.done, record.failed = state.status, state.done, state.failed
    book.write(record)
    return record
