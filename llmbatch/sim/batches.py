"""Batch jobs on the simulator's clock: OpenAI Files and Batches, Anthropic Message Batches.

No I/O and no aiohttp: :mod:`llmbatch.sim.server` owns the HTTP side and hands each job the function
that answers one line (the same one the live endpoints use) and the time. The contract is in the
server's module docstring; what is here is how a job moves along.

A job is lazy: nothing runs in the background. Whenever it is looked at (retrieve, list, cancel,
results, ``/stats``) it is advanced to the simulator's ``now``, answering the lines whose time has
come, in input order. With ``processing_s`` P the phases are: validating for the first 10% of P,
in progress until 90% (lines answered evenly over that span), finalizing until P, then ended. P = 0
ends a job on the first look after its creation.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = [
    "ANTHROPIC_MAX_REQUESTS",
    "COMPLETION_WINDOW_S",
    "OPENAI_ENDPOINT",
    "OPENAI_MAX_FILE_BYTES",
    "OPENAI_MAX_REQUESTS",
    "Api",
    "BatchFile",
    "Job",
    "LineAnswer",
    "anthropic_custom_id_error",
    "new_id",
    "parse_openai_input",
]

Api = Literal["openai", "anthropic"]
#: One line's answer, as the live endpoint would send it: (HTTP status, body bytes), and the prompt
#: and completion tokens it was paid for (0 and 0 unless the status is 200).
LineAnswer = tuple[int, bytes, int, int]
Answer = Callable[[Api, Any, str], LineAnswer]  # (api, request body, API key sent) -> answer

COMPLETION_WINDOW_S = 24 * 3600.0
OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_FILE_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
OPENAI_ENDPOINT = "/v1/chat/completions"
_CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_REPORTED_ERRORS = 100
_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."

Outcome = Literal["ok", "error", "expired", "cancelled"]


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class BatchFile:
    """An uploaded (``purpose="batch"``) or produced (``"batch_output"``) file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: float

    def as_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": int(self.created_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


def _input_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_openai_input(
    data: bytes, endpoint: str, max_requests: int, known_model: Callable[[str], bool]
) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """An input file's requests as (custom_id, body), and what is wrong with it, as OpenAI reports
    it in a failed batch's ``errors.data`` (``code``, ``message``, ``param``, ``line`` from 1)."""
    lines: list[tuple[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    text_lines = data.decode("utf-8", errors="replace").splitlines()
    for number, text in enumerate(text_lines, 1):
        if len(errors) >= _MAX_REPORTED_ERRORS:
            break
        if not text.strip():
            continue
        try:
            entry = orjson.loads(text)
        except orjson.JSONDecodeError:
            errors.append(_input_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        if not isinstance(entry, dict):
            errors.append(_input_error("invalid_json_line", "This line is not a JSON object.", number))
            continue
        missing = next((name for name in ("custom_id", "method", "url", "body") if name not in entry), None)
        if missing is not None:
            msg = f"Missing required parameter: '{missing}'."
            errors.append(_input_error("missing_required_parameter", msg, number, missing))
            continue
        custom_id, body = entry["custom_id"], entry["body"]
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(_input_error("invalid_value", "'custom_id' must be a non-empty string.", number, "custom_id"))
            continue
        if entry["method"] != "POST":
            msg = f"Invalid value: '{entry['method']}'. Supported values are: 'POST'."
            errors.append(_input_error("invalid_value", msg, number, "method"))
            continue
        if entry["url"] != endpoint:
            msg = f"The URL provided for this request does not match the batch endpoint: {endpoint}."
            errors.append(_input_error("url_mismatch", msg, number, "url"))
            continue
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            msg = "Missing required parameter: 'body.model'."
            errors.append(_input_error("missing_required_parameter", msg, number, "body.model"))
            continue
        if custom_id in seen:
            msg = (
                "The custom_id for this request is a duplicate of another request. "
                "The custom_id parameter must be unique for each request in a batch."
            )
            errors.append(_input_error("duplicate_custom_id", msg, number, "custom_id"))
            continue
        seen.add(custom_id)
        if model is None:
            model = body["model"]
            if not known_model(model):
                msg = f"The model `{model}` does not exist or you do not have access to it."
                errors.append(_input_error("model_not_found", msg, number, "body.model"))
        elif body["model"] != model:
            msg = (
                f"The provided model '{body['model']}' does not match the rest of the batch "
                f"('{model}'). A batch must use a single model."
            )
            errors.append(_input_error("mismatched_model", msg, number, "body.model"))
            continue
        lines.append((custom_id, body))
    if not errors and not lines:
        errors.append(_input_error("empty_file", "The batch input file is empty."))
    if not errors and len(lines) > max_requests:
        msg = f"The batch input file has {len(lines)} requests; the maximum is {max_requests}."
        errors.append(_input_error("too_many_tasks", msg))
    return lines, errors


def anthropic_custom_id_error(requests: Any, max_requests: int) -> str | None:
    """Why Anthropic answers 400 to these ``requests`` at once, or None."""
    if not isinstance(requests, list) or not requests:
        return "requests: List should have at least 1 item"
    if len(requests) > max_requests:
        return f"requests: List should have at most {max_requests} items, not {len(requests)}"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or "custom_id" not in item or "params" not in item:
            return f"requests.{i}: each request needs a custom_id and params"
        custom_id = item["custom_id"]
        if not isinstance(custom_id, str) or not _CUSTOM_ID_RE.match(custom_id):
            return f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if custom_id in seen:
            return f"requests.{i}.custom_id: Duplicate custom_id '{custom_id}': each must be unique within a batch"
        seen.add(custom_id)
        if not isinstance(item["params"], dict):
            return f"requests.{i}.params: Input should be a valid dictionary"
    return None


@dataclass(slots=True)
class Job:
    """One batch, of either API, advanced on demand (see the module docstring)."""

    api: Api
    id: str
    created: float
    requests: list[tuple[str, Any]]  # (custom_id, request body)
    processing_s: float
    expire_after: int | None  # answer at most this many lines, then end expired
    api_key: str  # the key that created it, for [[sim:quirk=echo_key]]
    window_s: float = COMPLETION_WINDOW_S
    # OpenAI's own fields
    endpoint: str = OPENAI_ENDPOINT
    input_file_id: str = ""
    metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] | None = None  # validation failed: the batch ends "failed"
    # progress
    outcomes: list[tuple[Outcome, int, bytes]] = field(default_factory=list)  # (how, status, body) per line
    succeeded: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cancel_at: float | None = None
    ended_at: float | None = None
    ended_as: str | None = None  # completed | expired | cancelled | failed
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: bytes | None = None  # Anthropic's results JSONL, once ended

    @property
    def total(self) -> int:
        return len(self.requests)

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def _phase(self, fraction: float) -> float:
        return self.created + fraction * self.processing_s

    def _lines_by(self, t: float) -> int:
        if self.processing_s <= 0:
            return self.total
        start, span = self._phase(0.1), 0.8 * self.processing_s
        share = min(1.0, max(0.0, (t - start) / span))
        return math.floor(self.total * share + 1e-9)

    def advance(self, now: float, answer: Answer) -> list[BatchFile]:
        """Answer what is due by ``now``; the files made if the job ended (OpenAI's)."""
        if self.ended:
            return []
        if self.errors is not None:
            self.ended_at, self.ended_as = self.created, "failed"
            return []
        cap = self.total if self.expire_after is None else min(self.total, self.expire_after)
        expires_at = self.created + self.window_s
        stop = min(now, expires_at)
        if self.cancel_at is not None:
            stop = min(stop, self.cancel_at)
        target = min(self._lines_by(stop), cap)
        for _, body in self.requests[len(self.outcomes) : target]:
            status, payload, prompt_tokens, completion_tokens = answer(self.api, body, self.api_key)
            self.outcomes.append(("ok" if status == 200 else "error", status, payload))
            self.input_tokens += prompt_tokens
            self.output_tokens += completion_tokens
            if status == 200:
                self.succeeded += 1
            else:
                self.failed += 1
        finish_at = self._phase(1.0)
        if self.cancel_at is not None:
            cancelled_at = self.cancel_at + 0.1 * self.processing_s
            if now >= cancelled_at:
                return self._end(cancelled_at, "cancelled")
            return []
        if finish_at > expires_at and now >= expires_at:
            return self._end(expires_at, "expired")
        if now >= finish_at:
            return self._end(finish_at, "completed" if cap == self.total else "expired")
        return []

    def cancel(self, now: float, answer: Answer) -> list[BatchFile]:
        """Ask to cancel: the lines answered so far are kept, the rest are cancelled."""
        files = self.advance(now, answer)
        if not self.ended and self.cancel_at is None:
            self.cancel_at = now
            files += self.advance(now, answer)
        return files

    def _end(self, at: float, how: str) -> list[BatchFile]:
        self.ended_at, self.ended_as = at, how
        left: Outcome = "cancelled" if how == "cancelled" else "expired"
        self.outcomes += [(left, 0, b"")] * (self.total - len(self.outcomes))
        if self.api == "anthropic":
            self.results = b"".join(self._anthropic_line(i) + b"\n" for i in range(self.total))
            return []
        ok = [self._openai_line(i) for i, outcome in enumerate(self.outcomes) if outcome[0] == "ok"]
        bad = [self._openai_line(i) for i, outcome in enumerate(self.outcomes) if outcome[0] != "ok"]
        files = []
        if ok:
            out = BatchFile(new_id("file-"), f"batch_{self.id}_output.jsonl", "batch_output", _jsonl(ok), at)
            self.output_file_id = out.id
            files.append(out)
        if bad:
            err = BatchFile(new_id("file-"), f"batch_{self.id}_error.jsonl", "batch_output", _jsonl(bad), at)
            self.error_file_id = err.id
            files.append(err)
        return files

    def _openai_line(self, i: int) -> bytes:
        """A line of the output or error file, in OpenAI's shape."""
        custom_id = self.requests[i][0]
        kind, status, body = self.outcomes[i]
        head = b'{"id":' + orjson.dumps(new_id("batch_req_")) + b',"custom_id":' + orjson.dumps(custom_id)
        if kind == "expired":
            error = orjson.dumps({"code": "batch_expired", "message": _EXPIRED_MESSAGE})
            return head + b',"response":null,"error":' + error + b"}"
        if kind == "cancelled":
            error = orjson.dumps({"code": "batch_cancelled", "message": _CANCELLED_MESSAGE})
            return head + b',"response":null,"error":' + error + b"}"
        # An answered line, 200 or not: the HTTP answer it got, with "error" null (OpenAI keeps the
        # top-level error for requests that were never executed).
        request_id = orjson.dumps(new_id("req_"))
        response = b'{"status_code":' + str(status).encode() + b',"request_id":' + request_id + b',"body":' + body
        return head + b',"response":' + response + b'},"error":null}'

    def _anthropic_line(self, i: int) -> bytes:
        """A line of the results file, in Anthropic's shape."""
        custom_id = self.requests[i][0]
        kind, _, body = self.outcomes[i]
        head = b'{"custom_id":' + orjson.dumps(custom_id) + b',"result":'
        if kind == "ok":
            return head + b'{"type":"succeeded","message":' + body + b"}}"
        if kind == "error":
            return head + b'{"type":"errored","error":' + body + b"}}"
        return head + (b'{"type":"expired"}}' if kind == "expired" else b'{"type":"canceled"}}')

    # --- what a retrieve shows ---

    def openai_status(self, now: float) -> str:
        if self.ended_as is not None:
            return self.ended_as
        if self.cancel_at is not None:
            return "cancelling"
        if now < self._phase(0.1):
            return "validating"
        cap = self.total if self.expire_after is None else min(self.total, self.expire_after)
        if now < self._phase(0.9) or cap < self.total:
            return "in_progress"
        return "finalizing"

    def openai_object(self, now: float, *, just_created: bool = False) -> dict[str, Any]:
        status = "validating" if just_created else self.openai_status(now)
        started = not just_created and self.errors is None and now >= self._phase(0.1)
        if self.cancel_at is not None and self.cancel_at < self._phase(0.1):
            started = False
        ended, how = self.ended_at, self.ended_as
        validated = not just_created and status != "validating" and self.errors is None
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors is not None and not just_created else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "in_progress_at": int(self._phase(0.1)) if started else None,
            "expires_at": int(self.created + self.window_s),
            "finalizing_at": int(self._phase(0.9)) if how == "completed" else None,
            "completed_at": int(ended) if ended is not None and how == "completed" else None,
            "failed_at": int(ended) if ended is not None and how == "failed" else None,
            "expired_at": int(ended) if ended is not None and how == "expired" else None,
            "cancelling_at": int(self.cancel_at) if self.cancel_at is not None else None,
            "cancelled_at": int(ended) if ended is not None and how == "cancelled" else None,
            "request_counts": {
                "total": self.total if validated else 0,
                "completed": self.succeeded,
                "failed": self.failed,
            },
            "metadata": self.metadata,
            "model": self.requests[0][1].get("model") if self.requests else None,
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
        }

    def anthropic_object(self, base_url: str) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if self.ended:
            kinds = [outcome[0] for outcome in self.outcomes]
            counts["succeeded"] = kinds.count("ok")
            counts["errored"] = kinds.count("error")
            counts["canceled"] = kinds.count("cancelled")
            counts["expired"] = kinds.count("expired")
            status = "ended"
        else:
            counts["processing"] = self.total  # the others stay 0 until the batch ends, as documented
            status = "canceling" if self.cancel_at is not None else "in_progress"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": _rfc3339(self.ended_at),
            "created_at": _rfc3339(self.created),
            "expires_at": _rfc3339(self.created + self.window_s),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(self.cancel_at),
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if self.ended else None,
        }


def _jsonl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)
