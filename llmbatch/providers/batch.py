"""The providers' Batch APIs, through any-llm, with its gaps covered here.

Used by :mod:`llmbatch.engine.batch`. It reaches any-llm only through the clients of an
:class:`~llmbatch.providers.anyllm.AnyLLMProvider` (one client per provider and base URL, shared
with the live calls, ``max_retries=0``, unified exceptions), and maps every failure to a
:class:`~llmbatch.providers.base.CallError` with secrets redacted.

any-llm 1.40's batch functions (``acreate_batch``, ``aretrieve_batch``, ``acancel_batch``,
``alist_batches``, ``aretrieve_batch_results``) are used where they do the job. Their gaps, and
how each is covered:

- ``aretrieve_batch_results`` raises ``BatchNotCompleteError`` unless the batch is ``completed``,
  and for OpenAI it never reads ``error_file_id`` (failed lines vanish; when every line failed the
  results are empty). For OpenAI we read both files ourselves (the SDK's ``files.content`` on the
  same client), for any finished batch: completed, expired, cancelled.
- Its Anthropic translation keeps only model, max_tokens, messages, temperature, top_p and system
  and silently drops the rest (tools, stop, response_format, ...); it also passes OpenAI-style
  system messages through as messages, which Anthropic refuses. :func:`cannot_carry` refuses any
  line with something it would drop, before anything is submitted, and :func:`batch_line` moves
  system messages into ``system``.
- Its Anthropic batch path sends ``max_tokens`` 1024 when a line sets none, where its live calls
  send 8192: a job line sets the live default itself.
- Its Anthropic conversion calls an ended batch "completed" whatever happened to its lines; the
  lines themselves say ``canceled`` or ``expired``, and those come back as unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from llmbatch.model.request import Request
from llmbatch.providers.base import CallError, classify, redact

__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "BatchClient",
    "JobLimits",
    "JobState",
    "LineOutcome",
    "Submitted",
    "batch_line",
    "cannot_carry",
    "line_error",
]

#: The endpoint every job's lines are sent to.
ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class JobLimits:
    """How big one job may be: requests and bytes of its input file."""

    requests: int
    bytes: int


#: The providers' documented limits (OpenAI: 50,000 requests or 200 MB per input file; Anthropic:
#: 100,000 requests or 256 MB per batch). Both take one model per job here.
OPENAI = JobLimits(50_000, 200 * 1024 * 1024)
ANTHROPIC = JobLimits(100_000, 256 * 1024 * 1024)
LIMITS = {"openai": OPENAI, "anthropic": ANTHROPIC}

#: What any-llm's Anthropic batch path carries (everything else it drops without a word).
_ANTHROPIC_PARAMS = frozenset({"max_tokens", "temperature", "top_p"})
#: any-llm's live Anthropic calls send max_tokens=8192 when a line sets none
#: (``any_llm.providers.anthropic.utils.DEFAULT_MAX_TOKENS``), its batch path 1024: a job line says
#: 8192 itself, so that a batch answer is the one a live call under the same key would give
#: (``tests/test_batch_units.py`` checks the number against the installed any-llm).
ANTHROPIC_DEFAULT_MAX_TOKENS = 8192
#: Finished: the provider will do nothing more with the job.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def supports_batch(provider: str) -> bool:
    return provider in LIMITS


def cannot_carry(request: Request, provider: str) -> str | None:
    """Why ``request`` cannot go through ``provider``'s batch path as it is (None: it can). Pure."""
    if provider not in LIMITS:
        return f"{provider} has no Batch API llmbatch can use (openai and anthropic do); run without --batch-api"
    if provider == "openai":
        extra = set(request.extra) - {"extra_body"}
        if extra:
            first = sorted(extra)[0]
            return f'"extra" argument {first!r} cannot go into a Batch API request line; run without --batch-api'
        return None
    dropped = sorted(set(request.params) - _ANTHROPIC_PARAMS)
    if dropped:
        return f'anthropic\'s batch path (any-llm) would drop "{dropped[0]}"; remove it or run without --batch-api'
    if request.extra:
        first = sorted(request.extra)[0]
        return f'anthropic\'s batch path (any-llm) would drop "extra" {first!r}; run without --batch-api'
    for message in request.messages:
        if message.get("role") not in ("system", "user", "assistant") or not isinstance(message.get("content"), str):
            return "anthropic's batch path (any-llm) carries only text messages (system, user, assistant)"
        if set(message) - {"role", "content"}:
            return "anthropic's batch path (any-llm) carries only a message's role and content"
    return None


def batch_line(custom_id: str, request: Request, provider: str) -> dict[str, Any]:
    """One line of a job's input file (OpenAI's batch JSONL shape, which any-llm reads for both)."""
    body: dict[str, Any] = {"model": request.model, **request.params}
    if provider == "anthropic":
        body.setdefault("max_tokens", ANTHROPIC_DEFAULT_MAX_TOKENS)
        # The live path's own conversion (any-llm joins system messages with one newline), so that a
        # batch answer is the one a live call under the same key gets: the key cannot tell them apart.
        from any_llm.providers.anthropic.utils import _convert_messages_for_anthropic

        system, body["messages"] = _convert_messages_for_anthropic(request.messages)
        if system:  # as the live path: an empty system text is left out
            body["system"] = system
    else:
        body["messages"] = request.messages
        body.update(request.extra.get("extra_body") or {})
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def line_error(status: int | None, code: str | None, message: str, secrets: tuple[str, ...] = ()) -> CallError:
    """A failed line of a job, classified as a live call's failure would be: a 429 or 5xx is worth
    another try, another 4xx is this line's for good. Pure."""
    text = redact(message or code or "failed in the batch", secrets)
    kind: Literal["retryable", "permanent"]
    if status is not None:
        kind = "retryable" if status in (408, 409, 429) or status >= 500 else "permanent"
    else:
        kind = "permanent" if code in ("invalid_request_error", "invalid_request") else "retryable"
    return CallError(kind, code or "BatchLineError", text, status_code=status)


@dataclass(frozen=True, slots=True)
class JobState:
    """What the provider says of a job now."""

    status: str
    total: int
    done: int
    failed: int
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: str | None = None  # why the whole job failed (OpenAI's validation)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """One line of a finished job: its answer, its error, or neither (not done: expired, cancelled)."""

    custom_id: str
    response: dict[str, Any] | None = None
    error: CallError | None = None

    @property
    def unfinished(self) -> bool:
        return self.response is None and self.error is None


@dataclass(frozen=True, slots=True)
class Submitted:
    batch_id: str
    input_file_id: str | None
    status: str


class BatchClient:
    """Batch jobs through the clients of ``provider`` (an ``AnyLLMProvider``)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self.provider.secrets)

    def _client(self, provider: str) -> Any:
        return self.provider.client_for(provider)

    def route_of(self, provider: str) -> str:
        """The any-llm provider a job for ``provider``'s lines goes to (``--simulate``: openai)."""
        return self.provider.destination.force_provider or provider

    async def submit(self, provider: str, lines: list[dict[str, Any]], metadata: dict[str, str]) -> Submitted:
        """Upload the lines and create the job (any-llm's ``acreate_batch`` reads them from a file)."""
        client = self._client(provider)
        fd, path = tempfile.mkstemp(prefix="llmbatch-job-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "wb") as handle:
                for line in lines:
                    handle.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            batch = await self._sdk(client.acreate_batch(input_file_path=path, endpoint=ENDPOINT, metadata=metadata))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return Submitted(batch.id, getattr(batch, "input_file_id", None) or None, str(batch.status))

    async def state(self, provider: str, batch_id: str) -> JobState:
        batch = await self._sdk(self._client(provider).aretrieve_batch(batch_id))
        return _state(batch)

    async def cancel(self, provider: str, batch_id: str) -> JobState:
        batch = await self._sdk(self._client(provider).acancel_batch(batch_id))
        return _state(batch)

    async def results(self, provider: str, batch_id: str, state: JobState) -> list[LineOutcome]:
        """Every line of a finished job that the provider reports on."""
        if self.route_of(provider) == "anthropic":
            return await self._anthropic_results(provider, batch_id)
        # any-llm's aretrieve_batch_results reads only a completed batch's output file: read the
        # output and the error files ourselves, for completed, expired and cancelled jobs alike.
        client = self._client(provider).client
        outcomes: list[LineOutcome] = []
        for file_id in (state.output_file_id, state.error_file_id):
            if not file_id:
                continue
            content = await self._sdk(client.files.content(file_id))
            outcomes.extend(self._openai_lines(content.text))
        return outcomes

    def _openai_lines(self, text: str) -> list[LineOutcome]:
        outcomes = []
        for raw in text.splitlines():
            if not raw.strip():
                continue
            try:
                entry = orjson.loads(raw)
                custom_id = entry["custom_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # not a line of ours: nothing to map it to
            response = entry.get("response") or {}
            status = response.get("status_code")
            body = response.get("body")
            if status == 200 and isinstance(body, dict):
                outcomes.append(LineOutcome(custom_id, response=body))
                continue
            error = entry.get("error") or (body or {}).get("error") or {}
            if not isinstance(error, dict):
                error = {"message": str(error)}
            code = error.get("code") or error.get("type")
            if code in ("batch_expired", "batch_cancelled"):
                outcomes.append(LineOutcome(custom_id))  # never done: goes out again
                continue
            message = str(error.get("message") or "")
            outcomes.append(LineOutcome(custom_id, error=line_error(status, code, message, self.secrets)))
        return outcomes

    async def _anthropic_results(self, provider: str, batch_id: str) -> list[LineOutcome]:
        results = await self._sdk(self._client(provider).aretrieve_batch_results(batch_id))
        outcomes = []
        for item in results.results:
            if item.result is not None:
                outcomes.append(
                    LineOutcome(item.custom_id, response=item.result.model_dump(mode="json", exclude_none=True))
                )
            elif item.error is not None and item.error.code in ("canceled", "expired"):
                outcomes.append(LineOutcome(item.custom_id))
            else:
                code = item.error.code if item.error else None
                message = item.error.message if item.error else ""
                outcomes.append(LineOutcome(item.custom_id, error=line_error(None, code, message, self.secrets)))
        return outcomes

    async def find(self, provider: str, job_id: str) -> str | None:
        """The batch id of the job we tagged ``job_id`` in its metadata, among the latest 100 (OpenAI
        keeps metadata; any-llm's Anthropic conversion drops it, so there: None)."""
        if self.route_of(provider) == "anthropic":
            return None
        batches = await self._sdk(self._client(provider).alist_batches(limit=100))
        return next((b.id for b in batches if (getattr(b, "metadata", None) or {}).get("llmbatch_job") == job_id), None)

    async def list(self, provider: str, limit: int = 20) -> list[JobState]:
        batches = await self._sdk(self._client(provider).alist_batches(limit=limit))
        return [_state(b) for b in batches]

    async def _sdk(self, call: Any) -> Any:
        try:
            return await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified, secrets redacted
            raise classify(exc, self.secrets) from None


def _state(batch: Any) -> JobState:
    counts = getattr(batch, "request_counts", None)
    errors = getattr(batch, "errors", None)
    reasons = None
    if errors is not None and getattr(errors, "data", None):
        reasons = "; ".join(str(getattr(e, "message", e)) for e in errors.data)
    return JobState(
        status=str(batch.status),
        total=int(getattr(counts, "total", 0) or 0),
        done=int(getattr(counts, "completed", 0) or 0),
        failed=int(getattr(counts, "failed", 0) or 0),
        output_file_id=getattr(batch, "output_file_id", None),
        error_file_id=getattr(batch, "error_file_id", None),
        errors=reasons,
    )
