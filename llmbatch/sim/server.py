"""An OpenAI-compatible server (with Anthropic's Messages and both providers' Batch APIs) for tests,
benchmarks and ``llmbatch run --simulate``.

The contract, which the openai SDK (and so any-llm's OpenAI provider) cannot tell from the real API:

* ``POST /v1/chat/completions`` answers a ChatCompletion whose content is a pure function of the
  request: ``digest`` is the sha256 of the request body (keys sorted, ``stream``/``stream_options``
  left out, a whole float written as an integer: ``0.0`` and ``0`` are one value) and the content
  is ``"Simulated answer {digest[:8]} to: {last user text}"``, plus ``" (choice i)"`` for choice
  ``i > 0``, wrapped as ``{"answer": ...}`` when a JSON ``response_format`` is asked for. Tokens
  are whitespace-separated words; ``max_tokens`` / ``max_completion_tokens`` truncate the content
  (``finish_reason`` ``"length"``).
* Checks run in the order a real server runs them, and the first that fails answers:
  API key (401) -> request shape (400) -> model (404) -> rpm/tpm limits (429) -> directives in the
  last user message -> random faults drawn from the seeded RNG -> latency -> success.
  Failures answer at once; only successes wait for the configured latency.
* Directives, for deterministic per-line tests: ``[[sim:status=400]]`` answers that status,
  ``[[sim:finish=content_filter]]`` (or ``stop``/``length``) sets the finish reason,
  ``[[sim:fail_first=N]]`` answers 503 to the first N attempts of the exact same body,
  ``[[sim:latency=0.5]]`` (any :func:`parse_duration_s` text) sets this request's latency.
  ``[[sim:quirk=NAME]]`` answers 200 with a body that real providers send now and then:
  ``no_choices`` (``"choices": []``), ``choice_error`` (OpenRouter's ``finish_reason: "error"``
  with an ``error`` object, code 502, and no content), ``bigint`` (an integer over 64 bits in the
  body), ``deep`` (an object nested 300 deep in the body) or ``echo_key`` (the API key the client
  sent, quoted in the content: the one exception to never echoing it, asked for by the prompt) or
  ``not_json`` (the content prefixed with chatter, so that a JSON answer no longer parses);
  ``[[sim:quirk_first=N]]`` applies the quirk to the first N attempts of the same body only.
  ``[[sim:trickle=0.5]]`` sends the headers at once and then the body one byte per interval (a
  stalled upstream that keeps the connection alive: per-read timeouts never fire).
  ``[[sim:only_model=NAME]]`` makes the other directives of the message apply only to requests for
  model ``NAME`` (one model of a fallback chain down, the next one answering).
  The directive text stays in the echoed content.
* Faults: ``429`` (``Retry-After: retry_after_s``), ``500``, ``503``, ``hang`` (the handler sleeps
  ``hang_s``; it is cancelled when the client disconnects) and ``drop`` (the connection is closed
  before any byte of a response is written).
* Rate limits: sliding-window logs over ``limit_window_s``. The allowance per window is
  ``rpm * window / 60`` requests and ``tpm * window / 60`` tokens, floored, at least 1. A request
  costs its prompt tokens plus ``max_tokens * n`` if a maximum is set, else its completion tokens.
  Refusals are 429 ``rate_limit_exceeded`` with ``Retry-After`` in seconds, rounded up to 0.1 s
  (e.g. ``"0.3"``, ``"2"``); a request larger than the whole token allowance can never fit and
  gets a 429 without ``Retry-After``, as OpenAI answers "Request too large". Every response from
  the limit check on carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
  limits that are set. As with OpenAI, ``limit`` is the per-minute figure (rpm/tpm) whatever window
  enforces it, ``remaining`` is that figure scaled by the room left in the window, and ``reset``
  is OpenAI's Go-style duration (``"250ms"``, ``"1.5s"``, ``"6m0s"``) until the window is empty.
* ``GET /stats`` (and :meth:`Simulator.stats`) report counters; ``POST /stats/reset`` zeroes
  them. ``faults`` counts injected faults and directive ones (``fail_first`` 503s under ``"503"``,
  ``[[sim:status=N]]`` under ``str(N)``, added on first use). Resetting keeps the rate-limit logs
  and the ``fail_first`` attempt counts, which are server state rather than statistics, and keeps
  ``in_flight`` (requests still running). ``serving_s`` is the time from the first request received
  to the last completion served since the last reset: a client's throughput while running;
  ``first_request_at`` and ``last_completion_at`` are those two moments on ``time.monotonic()``.
* The API key a client sends is never echoed in a response or a log.

Anthropic Messages, for the Anthropic SDK (``base_url`` is the server's root, the URL without
``/v1``; the key goes in ``x-api-key`` or as a Bearer token):

* ``POST /v1/messages`` answers a Message built from the same content function: ``digest`` is the
  sha256 of the Anthropic body (same canonical form), the text is ``"Simulated answer {digest[:8]}
  to: {last user text}"`` in one text block, ``stop_reason`` is ``end_turn``, ``max_tokens`` (cut by
  ``max_tokens``, which is required) or ``refusal`` (``finish=content_filter``: no content); usage
  counts words, the ``system`` prompt included. Errors are Anthropic's ``{"type": "error", "error":
  {"type", "message"}}``, the type following the status. The directives, limits and faults above
  apply as to chat completions (except ``quirk=choice_error``); rate-limit headers stay OpenAI's
  ``x-ratelimit-*``, with ``Retry-After``.

Batch APIs (server state, kept by a stats reset; injected faults, latency and rate limits apply only
to the live endpoints):

* Time is the simulator's clock: the wall clock plus what :meth:`Simulator.advance_clock` (or
  ``POST /clock/advance {"seconds": N}``) added, so tests never wait. A job is advanced whenever it is
  looked at (and by ``/stats``). With ``batch_processing_s`` P, a job validates for the first 10% of
  P, answers its lines evenly and in input order until 90%, finalizes until P, then ends. P = 0 (the
  default) ends it on the first look after its creation.
* Each line is answered by the same function as the live endpoint for its body (so a batch answer
  equals the live answer for the same body, ``id`` and ``created`` aside), at once and without
  random faults. Directives act as they do live: ``status=N`` fails the line with that status,
  ``fail_first=N`` shares its attempt count with live calls of the same body (503), ``finish`` and
  ``quirk`` shape the answer; ``latency`` and ``trickle`` are ignored. ``[[sim:batch_fail=N]]``
  fails the line (500) in the first N batches that carry its body, and leaves live calls alone.
  ``batch_fail_share`` fails that share of lines (500), drawn from an RNG seeded by ``seed``.
* ``batch_expire_after`` N: a job of more than N lines answers N and ends ``expired`` at P, the rest
  reported expired. A job whose P passes its 24 h window ends ``expired`` at the window's end with
  the lines answered by then. A cancel keeps the lines answered so far and cancels the rest; the
  job is cancelling for 10% of P, then cancelled.
* OpenAI Files: ``POST /v1/files`` (multipart, ``purpose=batch`` only; a name not ending in
  ``.jsonl`` or more than 200 MB is a 400), ``GET /v1/files``, ``GET``/``DELETE /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (the bytes).
* OpenAI Batches: ``POST /v1/batches`` (``endpoint`` must be ``/v1/chat/completions`` and
  ``completion_window`` ``24h``; a missing input file is a 400) answers ``validating`` with
  ``request_counts`` all 0, as OpenAI does. As with OpenAI, a bad input file is not a 400: the batch
  is created and shows ``failed`` on the next look, with ``errors.data`` items ``{code, message,
  param, line}``: ``invalid_json_line``, ``missing_required_parameter`` (custom_id, method, url,
  body, body.model), ``invalid_value`` (method not POST), ``url_mismatch``, ``duplicate_custom_id``,
  ``mismatched_model`` (one model per file), ``model_not_found``, ``empty_file``, ``too_many_tasks``
  (over ``batch_max_requests``, default 50,000). ``GET /v1/batches/{id}``, ``POST .../cancel``
  (``cancelling``; a 400 once completed, failed or expired), ``GET /v1/batches?limit=&after=``
  (newest first, ``has_more``, ``first_id``, ``last_id``). Statuses: validating -> in_progress ->
  finalizing -> completed, or -> expired, or cancelling -> cancelled, or failed. ``request_counts``:
  ``total`` (0 while validating), ``completed`` (lines answered 200), ``failed`` (lines answered an
  error); expired and cancelled lines are in neither. ``usage`` sums the tokens of the lines answered
  200 so far. At the end ``output_file_id`` holds the 200
  lines, ``{"id": "batch_req_...", "custom_id", "response": {"status_code": 200, "request_id",
  "body": <ChatCompletion>}, "error": null}``, and ``error_file_id`` the rest: a failed line as
  ``{"id", "custom_id", "response": {"status_code": N, "request_id", "body": {"error": {...}}},
  "error": null}``, an expired or cancelled one as ``{"id", "custom_id", "response": null, "error":
  {"code": "batch_expired" | "batch_cancelled", "message"}}``. Each is null when it would be empty.
  Lines are in input order (OpenAI promises no order).
* Anthropic Message Batches: ``POST /v1/messages/batches`` ``{"requests": [{"custom_id",
  "params"}]}`` is a 400 at once for no requests, more than ``batch_max_requests`` (default
  100,000), a custom_id not matching ``^[a-zA-Z0-9_-]{1,64}$``, or a duplicate one; a bad ``params``
  is an ``errored`` result, as with Anthropic. ``GET .../{id}``, ``POST .../{id}/cancel``
  (``canceling``), ``DELETE .../{id}`` (once ended), ``GET /v1/messages/batches?limit=&after_id=
  &before_id=`` (newest first). ``processing_status`` is in_progress, canceling or ended;
  ``request_counts`` has ``processing`` = all lines until the end and then ``succeeded``,
  ``errored``, ``canceled``, ``expired``; ``results_url`` (absolute, as the client reached the
  server) is set once ended, and ``GET .../{id}/results`` (404 before) is JSONL of ``{"custom_id",
  "result": {"type": "succeeded", "message"} | {"type": "errored", "error": {"type": "error",
  "error": {"type", "message"}}} | {"type": "expired"} | {"type": "canceled"}}``, in input order.
* Counters in ``/stats``: ``files_uploaded``, ``batches_created`` (both APIs, failed ones too),
  ``batch_requests_submitted`` (lines of accepted batches), ``batch_lines_answered`` (answered 200:
  what is paid, apart from the live ``completions_served``), ``batch_lines_failed``,
  ``batch_lines_expired``, ``batch_lines_cancelled``, ``batch_prompt_tokens``,
  ``batch_completion_tokens``, ``batch_distinct_requests_answered``,
  ``max_batch_answers_per_request``, and ``max_answers_per_request``: live and batch answers of one
  body together (more than 1: paid twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import random
import re
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import orjson
from aiohttp import web

from llmbatch.keys import SIMULATOR_HEADER
from llmbatch.sim.batches import (
    ANTHROPIC_MAX_REQUESTS,
    OPENAI_ENDPOINT,
    OPENAI_MAX_FILE_BYTES,
    OPENAI_MAX_REQUESTS,
    Api,
    BatchFile,
    Job,
    LineAnswer,
    anthropic_custom_id_error,
    new_id,
    parse_openai_input,
)

__all__ = ["SimConfig", "Simulator", "SimulatorThread", "parse_duration_s", "serve_forever"]

_T = TypeVar("_T")

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "sim-1")
_MODELS_CREATED = 1_700_000_000  # a fixed date, so /v1/models is deterministic
# Real prompts can be large (aiohttp's default is 1 MiB), and a batch is larger still: OpenAI takes
# input files up to 200 MB, Anthropic batch requests up to 256 MB.
_MAX_BODY_BYTES = 257 * 1024 * 1024
_MAX_N = 128
_DIRECTIVE_RE = re.compile(r"\[\[sim:([a-z_]+)=([^\]]*)\]\]")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_FINISH_REASONS = ("stop", "length", "content_filter")
_QUIRKS = ("no_choices", "choice_error", "bigint", "deep", "echo_key", "not_json")
_FAULTS = ("429", "500", "503", "hang", "drop")


@dataclass(frozen=True)
class SimConfig:
    latency_s: float = 0.0  # median latency per completion
    latency_dist: str = "fixed"  # "fixed" | "lognormal" (median latency_s, sigma latency_sigma)
    latency_sigma: float = 0.5
    p429: float = 0.0  # fraction of requests answered 429 with Retry-After
    retry_after_s: float = 1.0  # Retry-After on injected 429s, in seconds
    p500: float = 0.0
    p503: float = 0.0
    phang: float = 0.0  # fraction that hang (sleep hang_s, i.e. until the client gives up)
    hang_s: float = 3600.0
    pdrop: float = 0.0  # fraction whose connection is closed with no response
    rpm: int | None = None  # server-side request limit ...
    tpm: int | None = None  # ... and token limit
    limit_window_s: float = 60.0  # sliding window; allowance = rpm * window / 60
    require_api_key: str | None = None  # when set, any other Bearer token gets 401
    models: tuple[str, ...] | None = None  # when set, other models get 404 model_not_found
    seed: int | None = None  # seeds the RNG that draws faults and latency
    # Batch APIs (OpenAI Batches, Anthropic Message Batches):
    batch_processing_s: float = 0.0  # how long a job takes from creation to its end
    batch_fail_share: float = 0.0  # fraction of batch lines answered 500 (seeded draw per line)
    batch_expire_after: int | None = None  # a job answers at most N lines, then ends expired
    batch_max_requests: int | None = None  # lines per job; None: OpenAI's 50,000, Anthropic's 100,000

    def __post_init__(self) -> None:
        # Fail at construction, where the CLI can report the bad option, not on the first request.
        if self.latency_dist not in ("fixed", "lognormal"):
            raise ValueError(f"latency_dist must be 'fixed' or 'lognormal', not {self.latency_dist!r}")
        for name in ("latency_s", "latency_sigma", "retry_after_s", "hang_s", "batch_processing_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("p429", "p500", "p503", "phang", "pdrop", "batch_fail_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self._fault_total() > 1.0 + 1e-9:
            raise ValueError("p429 + p500 + p503 + phang + pdrop must not exceed 1")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer")
        if self.limit_window_s <= 0:
            raise ValueError("limit_window_s must be > 0")
        if self.batch_expire_after is not None and self.batch_expire_after < 0:
            raise ValueError("batch_expire_after must be >= 0")
        if self.batch_max_requests is not None and self.batch_max_requests <= 0:
            raise ValueError("batch_max_requests must be a positive integer")

    def _fault_total(self) -> float:
        return self.p429 + self.p500 + self.p503 + self.phang + self.pdrop


def parse_duration_s(text: str) -> float:
    """``"200ms"``, ``"1.5s"``, ``"2"`` (seconds), ``"1m"``, ``"1h"`` -> seconds."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a number of seconds with an optional unit "
            "ms, s, m or h, e.g. 200ms, 1.5s, 2, 1m"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


# --- formatting ------------------------------------------------------------------------------


def _fmt_seconds(seconds: float) -> str:
    """Seconds without float noise: 1.0 -> "1", 0.25 -> "0.25" (for Retry-After)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _go_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format (Go durations): "0s", "250ms", "1.5s", "6m0s"."""
    ms = math.ceil(seconds * 1000 - 1e-6)  # tolerate float noise just above a whole millisecond
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = _fmt_seconds(rest / 1000) + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


async def _mark_simulated(request: web.Request, response: web.StreamResponse) -> None:
    # Every response says it is the simulator's, so that a run keys its answers apart from those
    # of a real server later started at this address (providers.base.simulator_at).
    response.headers[SIMULATOR_HEADER] = "1"


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, headers=headers, content_type="application/json")


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _error_body(api: str, status: int, message: str, type_: str, code: str | None, param: str | None) -> dict:
    """An error as the API words it: OpenAI's ``{"error": {message, type, param, code}}`` or
    Anthropic's ``{"type": "error", "error": {type, message}}`` (its type follows the status)."""
    if api == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    api: str = "openai",
) -> web.Response:
    return _json(_error_body(api, status, message, type_, code, param), status, headers)


def _status_error_body(status: int, api: str = "openai") -> dict:
    """An error as the API words it for this status (faults, ``[[sim:status=N]]``, batch lines)."""
    if status == 429:
        msg = "Rate limit reached (simulated). Please try again later."
        return _error_body(api, 429, msg, "requests", "rate_limit_exceeded", None)
    if status == 500:
        msg = "The server had an error while processing your request. Sorry about that! (simulated)"
        return _error_body(api, 500, msg, "server_error", None, None)
    if status == 503:
        msg = "The server is overloaded or not ready yet. (simulated)"
        return _error_body(api, 503, msg, "server_error", None, None)
    if status == 400:
        return _error_body(api, 400, "simulated bad request", "invalid_request_error", None, None)
    if status == 401:
        return _error_body(api, 401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key", None)
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return _error_body(api, status, f"simulated error {status}", type_, None, None)


def _status_error(status: int, headers: dict[str, str], retry_after_s: float, api: str = "openai") -> web.Response:
    if status == 429:
        headers["Retry-After"] = _fmt_seconds(retry_after_s)
    return _json(_status_error_body(status, api), status, headers)


# --- the pure part: what a request should be answered ----------------------------------------


class _InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class _Directives:
    status: int | None = None
    finish: str | None = None
    fail_first: int = 0
    latency_s: float | None = None
    quirk: str | None = None
    quirk_first: int = 0  # 0: every attempt
    trickle_s: float | None = None
    only_model: str | None = None  # the directives apply to this model's requests only
    batch_fail: int = 0  # batch lines only: fail in the first N batches that carry this body


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything about the answer that follows from the request body alone."""

    digest: str
    directives: _Directives
    choices: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    limit_tokens: int  # what the request costs against tpm


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _parse_directives(text: str) -> _Directives:
    found = dict(_DIRECTIVE_RE.findall(text))
    if not found:
        return _Directives()
    try:
        status = int(found.pop("status")) if "status" in found else None
        finish = found.pop("finish", None)
        fail_first = int(found.pop("fail_first", "0"))
        latency = parse_duration_s(found.pop("latency")) if "latency" in found else None
        quirk = found.pop("quirk", None)
        quirk_first = int(found.pop("quirk_first", "0"))
        trickle = parse_duration_s(found.pop("trickle")) if "trickle" in found else None
        only_model = found.pop("only_model", None)
        batch_fail = int(found.pop("batch_fail", "0"))
    except ValueError as exc:
        raise _InvalidRequest(f"bad sim directive: {exc}", "messages") from None
    if found:
        raise _InvalidRequest(f"unknown sim directive(s): {', '.join(sorted(found))}", "messages")
    if status is not None and not 400 <= status <= 599:
        raise _InvalidRequest("sim directive status must be between 400 and 599", "messages")
    if finish is not None and finish not in _FINISH_REASONS:
        raise _InvalidRequest(f"sim directive finish must be one of {', '.join(_FINISH_REASONS)}", "messages")
    if quirk is not None and quirk not in _QUIRKS:
        raise _InvalidRequest(f"sim directive quirk must be one of {', '.join(_QUIRKS)}", "messages")
    return _Directives(
        status, finish, max(fail_first, 0), latency, quirk, max(quirk_first, 0), trickle, only_model, max(batch_fail, 0)
    )


def _positive_int(body: dict[str, Any], name: str, upper: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (upper and value > upper):
        limit = f" and at most {upper}" if upper else ""
        raise _InvalidRequest(f"'{name}' must be an integer of at least 1{limit}", name)
    return value


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise _InvalidRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _InvalidRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _InvalidRequest("'messages' must be a non-empty array of message objects", "messages")
    if body.get("stream"):
        raise _InvalidRequest("stream=true is not supported by the simulator", "stream")


def _validate_message(body: Any) -> None:
    """An Anthropic Messages body, checked as Anthropic does (model, max_tokens, messages)."""
    if not isinstance(body, dict):
        raise _InvalidRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _InvalidRequest("model: Field required", "model")
    if "max_tokens" not in body:
        raise _InvalidRequest("max_tokens: Field required", "max_tokens")
    _positive_int(body, "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _InvalidRequest("messages: at least one message is required", "messages")
    if any(m.get("role") not in ("user", "assistant") for m in messages):
        raise _InvalidRequest("messages: roles must be 'user' or 'assistant' (the system prompt is 'system')")
    if body.get("stream"):
        raise _InvalidRequest("stream=true is not supported by the simulator", "stream")


def _by_value(value: Any) -> Any:
    """Numbers by value: ``0.0`` as ``0``, as any provider reads them (clients differ in which they send)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    return value


def _digest(body: dict[str, Any]) -> str:
    canonical = {k: _by_value(v) for k, v in body.items() if k not in ("stream", "stream_options")}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _plan_completion(body: dict[str, Any]) -> _Plan:
    """Work out the answer to a validated chat-completions body (deterministic, no I/O)."""
    messages: list[dict[str, Any]] = body["messages"]
    n = _positive_int(body, "n", _MAX_N) or 1
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    fmt = body.get("response_format")
    as_json = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    texts = [_text_of(m.get("content")) for m in messages]
    return _plan(_digest(body), body["model"], messages, texts, n, max_tokens, as_json)


def _plan_message(body: dict[str, Any]) -> _Plan:
    """The same answer for a validated Anthropic Messages body: the system prompt counts as prompt."""
    messages: list[dict[str, Any]] = body["messages"]
    max_tokens = _positive_int(body, "max_tokens")
    texts = [_text_of(body.get("system")), *(_text_of(m.get("content")) for m in messages)]
    return _plan(_digest(body), body["model"], messages, texts, 1, max_tokens, False)


def _plan(
    digest: str,
    model: str,
    messages: list[dict[str, Any]],
    prompt_texts: list[str],
    n: int,
    max_tokens: int | None,
    as_json: bool,
) -> _Plan:
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    directives = _parse_directives(last_user)
    if directives.only_model is not None and directives.only_model != model:
        directives = _Directives()

    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for i in range(n):
        text = f"Simulated answer {digest[:8]} to: {last_user}" + (f" (choice {i})" if i > 0 else "")
        if as_json:
            text = orjson.dumps({"answer": text}).decode()
        finish = "stop"
        words = text.split()
        if max_tokens is not None and len(words) > max_tokens:
            words = words[:max_tokens]
            text = " ".join(words)
            finish = "length"
        finish = directives.finish or finish
        if finish == "content_filter":
            words = []  # a filtered answer has no content and costs no completion tokens
        completion_tokens += len(words)
        message = {
            "role": "assistant",
            "content": None if finish == "content_filter" else text,
            "refusal": None,
        }
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})

    prompt_tokens = max(1, sum(len(text.split()) for text in prompt_texts))
    limit_tokens = prompt_tokens + (max_tokens * n if max_tokens is not None else completion_tokens)
    return _Plan(digest, directives, choices, prompt_tokens, completion_tokens, limit_tokens)


# --- rate limits -----------------------------------------------------------------------------


class _SlidingWindow:
    """Amounts admitted over the last ``window_s`` seconds, as a log of (time, amount)."""

    def __init__(self, allowance: int, window_s: float, per_minute: int) -> None:
        self.allowance = allowance
        self.window_s = window_s
        self.per_minute = per_minute
        self._log: deque[tuple[float, int]] = deque()
        self._used = 0

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        log = self._log
        while log and log[0][0] <= horizon:
            self._used -= log.popleft()[1]

    def wait_s(self, now: float, amount: int) -> float:
        """Seconds until ``amount`` fits (0: it fits now; inf: it never will)."""
        self._prune(now)
        if amount > self.allowance:
            return math.inf
        excess = self._used + amount - self.allowance
        if excess <= 0:
            return 0.0
        # Entries leave oldest first; the wait ends when the one that frees enough room leaves.
        for stamp, spent in self._log:
            excess -= spent
            if excess <= 0:
                return stamp + self.window_s - now
        return self.window_s  # unreachable while allowance >= amount; kept as a safe bound

    def admit(self, now: float, amount: int) -> None:
        self._log.append((now, amount))
        self._used += amount

    def headers(self, now: float, kind: str, out: dict[str, str]) -> None:
        self._prune(now)
        reset = self._log[-1][0] + self.window_s - now if self._log else 0.0
        # As OpenAI does: the limit is stated per minute, whatever window enforces it, and
        # "remaining" is that minute's budget scaled from what is left in the window.
        remaining = max(0, self.allowance - self._used) * self.per_minute // self.allowance
        out[f"x-ratelimit-limit-{kind}"] = str(self.per_minute)
        out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        out[f"x-ratelimit-reset-{kind}"] = _go_duration(reset)


def _window(per_minute: int | None, window_s: float) -> _SlidingWindow | None:
    if per_minute is None:
        return None
    return _SlidingWindow(max(1, math.floor(per_minute * window_s / 60.0 + 1e-9)), window_s, per_minute)


# --- statistics ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stats:
    requests_received: int = 0
    completions_served: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_FAULTS, 0))
    rate_limited: int = 0
    auth_failures: int = 0
    unknown_model: int = 0
    bad_requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_serves_per_request: int = 0
    serves: dict[str, int] = field(default_factory=dict)  # digest -> successful serves
    first_request_at: float | None = None  # time.monotonic() of the first request received
    last_completion_at: float | None = None  # ... and of the last completion served
    # Batch APIs: what was uploaded and submitted, and what batch lines were answered (paid).
    files_uploaded: int = 0
    batches_created: int = 0
    batch_requests_submitted: int = 0
    batch_lines_answered: int = 0
    batch_lines_failed: int = 0
    batch_lines_expired: int = 0
    batch_lines_cancelled: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    batch_serves: dict[str, int] = field(default_factory=dict)  # digest -> batch lines answered

    def as_dict(self) -> dict[str, Any]:
        batch_serves = self.batch_serves
        return {
            "requests_received": self.requests_received,
            "completions_served": self.completions_served,
            "distinct_requests_served": len(self.serves),
            "max_serves_per_request": self.max_serves_per_request,
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "auth_failures": self.auth_failures,
            "unknown_model": self.unknown_model,
            "bad_requests": self.bad_requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            # From the first request in to the last completion out: a client's throughput while it
            # runs, its start-up excluded, measured the same way for every client.
            "serving_s": (
                round(self.last_completion_at - self.first_request_at, 6)
                if self.first_request_at is not None and self.last_completion_at is not None
                else None
            ),
            "files_uploaded": self.files_uploaded,
            "batches_created": self.batches_created,
            "batch_requests_submitted": self.batch_requests_submitted,
            "batch_lines_answered": self.batch_lines_answered,
            "batch_lines_failed": self.batch_lines_failed,
            "batch_lines_expired": self.batch_lines_expired,
            "batch_lines_cancelled": self.batch_lines_cancelled,
            "batch_prompt_tokens": self.batch_prompt_tokens,
            "batch_completion_tokens": self.batch_completion_tokens,
            "batch_distinct_requests_answered": len(batch_serves),
            "max_batch_answers_per_request": max(batch_serves.values(), default=0),
            # Live and batch together: more than 1 means some request was paid for twice.
            "max_answers_per_request": max(
                (self.serves.get(d, 0) + batch_serves.get(d, 0) for d in self.serves.keys() | batch_serves.keys()),
                default=0,
            ),
            # The same two moments on this machine's monotonic clock (CLOCK_MONOTONIC, shared by
            # every process), so that a benchmark can tell a client's start-up (its start to the first
            # request) and shutdown (the last answer to its exit) from its run.
            "first_request_at": self.first_request_at,
            "last_completion_at": self.last_completion_at,
        }


# --- the server ------------------------------------------------------------------------------


class Simulator:
    """The aiohttp application and its state; :meth:`start` serves it on the running loop."""

    def __init__(self, config: SimConfig = SimConfig()) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._fault_total = config._fault_total()
        self._fault_table = tuple(
            zip(_FAULTS, (config.p429, config.p500, config.p503, config.phang, config.pdrop), strict=True)
        )
        self._requests = _window(config.rpm, config.limit_window_s)
        self._tokens = _window(config.tpm, config.limit_window_s)
        self._models = frozenset(config.models) if config.models is not None else None
        self._expected_key = config.require_api_key.encode() if config.require_api_key is not None else None
        self._attempts: dict[str, int] = {}  # digest -> attempts, for [[sim:fail_first=N]] and quirk_first
        self._stats = _Stats()
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        # Batch APIs: server state, kept by a stats reset.
        self._clock_offset = 0.0  # seconds added to the wall clock (advance_clock)
        self._batch_rng = random.Random(None if config.seed is None else f"batch:{config.seed}")
        self._batch_attempts: dict[str, int] = {}  # digest -> batches that carried it, for batch_fail
        self._files: dict[str, BatchFile] = {}
        self._jobs: dict[str, Job] = {}  # both APIs, oldest first
        self.app = web.Application(client_max_size=_MAX_BODY_BYTES)
        self.app.on_response_prepare.append(_mark_simulated)
        router = self.app.router
        router.add_post("/v1/chat/completions", self._chat_completions)
        router.add_post("/v1/messages", self._messages)
        router.add_get("/v1/models", self._list_models)
        router.add_post("/v1/files", self._upload_file)
        router.add_get("/v1/files", self._list_files)
        router.add_get("/v1/files/{file_id}", self._get_file)
        router.add_delete("/v1/files/{file_id}", self._delete_file)
        router.add_get("/v1/files/{file_id}/content", self._get_file_content)
        router.add_post("/v1/batches", self._create_batch)
        router.add_get("/v1/batches", self._list_batches)
        router.add_get("/v1/batches/{batch_id}", self._get_batch)
        router.add_post("/v1/batches/{batch_id}/cancel", self._cancel_batch)
        router.add_post("/v1/messages/batches", self._create_message_batch)
        router.add_get("/v1/messages/batches", self._list_message_batches)
        router.add_get("/v1/messages/batches/{batch_id}", self._get_message_batch)
        router.add_delete("/v1/messages/batches/{batch_id}", self._delete_message_batch)
        router.add_post("/v1/messages/batches/{batch_id}/cancel", self._cancel_message_batch)
        router.add_get("/v1/messages/batches/{batch_id}/results", self._message_batch_results)
        router.add_get("/stats", self._get_stats)
        router.add_post("/stats/reset", self._post_stats_reset)
        router.add_post("/clock/advance", self._post_clock_advance)

    def stats(self) -> dict[str, Any]:
        self._advance_jobs()  # a job's lines are answered when their time comes, looked at or not
        return self._stats.as_dict()

    def now(self) -> float:
        """The simulator's clock (Unix seconds): the wall clock plus whatever advance_clock added."""
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> float:
        """Move the simulator's clock forward, so batch jobs progress without waiting; returns now."""
        if not seconds >= 0:
            raise ValueError("the clock only moves forward")
        self._clock_offset += seconds
        return self.now()

    def reset_stats(self) -> None:
        in_flight = self._stats.in_flight  # still running; they will decrement it when done
        self._stats = _Stats(in_flight=in_flight, max_in_flight=in_flight)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port) and return the base URL ending in ``/v1``."""
        self._closing = asyncio.Event()
        # handler_cancellation: a client that gives up on a hang must free the handler.
        # access_log=None: no per-request logging, it costs more than the handler itself.
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{shown}:{bound_port}/v1"

    async def stop(self) -> None:
        if self._closing is not None:
            self._closing.set()  # wakes hangs and latency sleeps so shutdown does not wait for them
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # --- handlers ---

    async def _list_models(self, request: web.Request) -> web.Response:
        models = self.config.models if self.config.models is not None else DEFAULT_MODELS
        data = [{"id": m, "object": "model", "created": _MODELS_CREATED, "owned_by": "llmbatch-sim"} for m in models]
        return _json({"object": "list", "data": data})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return _json(self.stats())

    async def _post_stats_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return _json(self.stats())

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._live(request, "openai")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._live(request, "anthropic")

    async def _live(self, request: web.Request, api: Api) -> web.StreamResponse:
        stats = self._stats
        stats.requests_received += 1
        if stats.first_request_at is None:
            stats.first_request_at = time.monotonic()
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._complete(request, api)
        finally:
            # self._stats, not stats: a reset while this request ran carried in_flight over.
            self._stats.in_flight -= 1

    def _read_plan(self, api: Api, body: Any) -> tuple[str, _Plan]:
        """Validate a request body of ``api`` and plan its answer; raises _InvalidRequest or
        _UnknownModel."""
        if api == "anthropic":
            _validate_message(body)
        else:
            _validate(body)
        model: str = body["model"]
        if self._models is not None and model not in self._models:
            raise _UnknownModel(model)
        plan = _plan_message(body) if api == "anthropic" else _plan_completion(body)
        if api == "anthropic" and plan.directives.quirk == "choice_error":
            raise _InvalidRequest("sim directive quirk choice_error is for chat completions only", "messages")
        return model, plan

    async def _complete(self, request: web.Request, api: Api) -> web.StreamResponse:
        stats = self._stats
        if self._expected_key is not None and not self._authorized(request, api):
            stats.auth_failures += 1
            # Never echo the key the client sent: it may be a real one sent to the wrong place.
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key", api=api)
        try:
            model, plan = self._read_plan(api, orjson.loads(await request.read()))
        except orjson.JSONDecodeError:
            stats.bad_requests += 1
            return _error(400, "The request body is not valid JSON.", "invalid_request_error", api=api)
        except _InvalidRequest as exc:
            stats.bad_requests += 1
            return _error(400, str(exc), "invalid_request_error", param=exc.param, api=api)
        except _UnknownModel as exc:
            stats.unknown_model += 1
            return _error(404, str(exc), "invalid_request_error", "model_not_found", api=api)

        headers: dict[str, str] = {}
        limited = self._check_limits(plan.limit_tokens, headers, api)
        if limited is not None:
            stats.rate_limited += 1
            return limited

        fault = self._directive_fault(plan) or self._draw_fault()
        if fault is not None:
            stats.faults[fault] = stats.faults.get(fault, 0) + 1
            if fault == "drop":
                return self._drop(request)
            if fault == "hang":
                await self._sleep(self.config.hang_s)
                return self._drop(request)  # only reached at shutdown or after hang_s
            return _status_error(int(fault), headers, self.config.retry_after_s, api)

        delay = plan.directives.latency_s
        if delay is None:
            delay = self._draw_latency()
        if delay > 0 and await self._sleep(delay):
            return self._drop(request)  # shutting down: an answer now would be a lie about latency
        self._record(plan, batch=False)
        body = _render(api, model, plan, self._quirk(plan, _sent_key(request, api)))
        response = web.Response(body=body, headers=headers, content_type="application/json")
        if plan.directives.trickle_s is not None:
            return await self._trickle(request, response, plan.directives.trickle_s)
        return response

    def _answer_line(self, api: Api, body: Any, key: str) -> LineAnswer:
        """A batch line's answer: what the live endpoint answers this body, but at once (no
        latency, rate limits or random faults), with ``batch_fail`` and ``batch_fail_share``."""
        stats = self._stats
        try:
            model, plan = self._read_plan(api, body)
        except _InvalidRequest as exc:
            stats.batch_lines_failed += 1
            return 400, orjson.dumps(_error_body(api, 400, str(exc), "invalid_request_error", None, exc.param)), 0, 0
        except _UnknownModel as exc:
            stats.batch_lines_failed += 1
            error = _error_body(api, 404, str(exc), "invalid_request_error", "model_not_found", None)
            return 404, orjson.dumps(error), 0, 0
        fault = self._directive_fault(plan)
        if fault is None and plan.directives.batch_fail:
            carried = self._batch_attempts.get(plan.digest, 0) + 1
            self._batch_attempts[plan.digest] = carried
            if carried <= plan.directives.batch_fail:
                fault = "500"
        share = self.config.batch_fail_share
        if fault is None and share > 0 and self._batch_rng.random() < share:
            fault = "500"
        if fault is not None:
            stats.batch_lines_failed += 1
            return int(fault), orjson.dumps(_status_error_body(int(fault), api)), 0, 0
        self._record(plan, batch=True)
        return 200, _render(api, model, plan, self._quirk(plan, key)), plan.prompt_tokens, plan.completion_tokens

    async def _trickle(self, request: web.Request, response: web.Response, every_s: float) -> web.StreamResponse:
        body = response.body
        assert isinstance(body, bytes)
        stream = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        stream.content_length = len(body)
        await stream.prepare(request)
        for i in range(len(body)):
            await stream.write(body[i : i + 1])
            if await self._sleep(every_s):
                break
        await stream.write_eof()
        return stream

    def _quirk(self, plan: _Plan, token: str) -> tuple[str, str] | None:
        """The directive's quirk for this attempt, with the key the client sent (for echo_key)."""
        directives = plan.directives
        if directives.quirk is None:
            return None
        if directives.quirk_first:
            attempt = self._attempts.get(plan.digest, 0) + 1
            self._attempts[plan.digest] = attempt
            if attempt > directives.quirk_first:
                return None
        return directives.quirk, token

    def _authorized(self, request: web.Request, api: Api = "openai") -> bool:
        assert self._expected_key is not None
        if api == "anthropic" and "x-api-key" in request.headers:
            token = request.headers["x-api-key"]
        else:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer":
                return False
        # compare_digest: constant time, so the key cannot be guessed byte by byte from timings.
        return hmac.compare_digest(token.strip().encode(), self._expected_key)

    def _check_limits(self, tokens: int, headers: dict[str, str], api: Api = "openai") -> web.Response | None:
        """Admit the request against rpm/tpm, filling ``headers``; a 429 response if it does not fit."""
        if self._requests is None and self._tokens is None:
            return None
        now = time.monotonic()
        wait = 0.0
        if self._requests is not None:
            wait = self._requests.wait_s(now, 1)
        if self._tokens is not None:
            wait = max(wait, self._tokens.wait_s(now, tokens))
        if wait <= 0:
            if self._requests is not None:
                self._requests.admit(now, 1)
            if self._tokens is not None:
                self._tokens.admit(now, tokens)
        if self._requests is not None:
            self._requests.headers(now, "requests", headers)
        if self._tokens is not None:
            self._tokens.headers(now, "tokens", headers)
        if wait <= 0:
            return None
        if math.isinf(wait):
            allowance = self._tokens.allowance if self._tokens is not None else 0
            msg = f"Request too large: it needs {tokens} tokens, the limit is {allowance} per window."
            return _error(429, msg, "tokens", "rate_limit_exceeded", headers=headers, api=api)
        headers["Retry-After"] = _fmt_seconds(max(0.1, math.ceil(wait * 10 - 1e-9) / 10))
        msg = "Rate limit reached (simulated rpm/tpm). Please try again later."
        return _error(429, msg, "requests", "rate_limit_exceeded", headers=headers, api=api)

    def _directive_fault(self, plan: _Plan) -> str | None:
        directives = plan.directives
        if directives.status is not None:
            return str(directives.status)
        if directives.fail_first:
            attempt = self._attempts.get(plan.digest, 0) + 1
            self._attempts[plan.digest] = attempt
            if attempt <= directives.fail_first:
                return "503"
        return None

    def _draw_fault(self) -> str | None:
        if self._fault_total <= 0:
            return None  # no draw when faults are off, so seeded latencies do not depend on them
        r = self._rng.random()
        for name, p in self._fault_table:
            if r < p:
                return name
            r -= p
        return None

    def _draw_latency(self) -> float:
        c = self.config
        if c.latency_s <= 0:
            return 0.0
        if c.latency_dist == "lognormal":
            return self._rng.lognormvariate(math.log(c.latency_s), c.latency_sigma)
        return c.latency_s

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early at shutdown; True if shutting down. Cancelled if the client leaves."""
        closing = self._closing
        if closing is None:
            await asyncio.sleep(seconds)
            return False
        try:
            await asyncio.wait_for(closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        transport = request.transport
        if transport is not None:
            transport.close()
        # aiohttp fails to write this response to the closed transport and treats that as the
        # client disconnecting: no byte is sent and nothing is logged.
        return web.Response(status=499)

    def _record(self, plan: _Plan, *, batch: bool) -> None:
        """Count an answer given (and so paid for): live, or a batch line."""
        stats = self._stats
        if batch:
            stats.batch_lines_answered += 1
            stats.batch_prompt_tokens += plan.prompt_tokens
            stats.batch_completion_tokens += plan.completion_tokens
            stats.batch_serves[plan.digest] = stats.batch_serves.get(plan.digest, 0) + 1
            return
        stats.completions_served += 1
        stats.last_completion_at = time.monotonic()
        stats.prompt_tokens += plan.prompt_tokens
        stats.completion_tokens += plan.completion_tokens
        serves = stats.serves.get(plan.digest, 0) + 1
        stats.serves[plan.digest] = serves
        stats.max_serves_per_request = max(stats.max_serves_per_request, serves)

    # --- batch APIs ---

    def _advance_jobs(self) -> None:
        now = self.now()
        for job in self._jobs.values():
            self._advance(job, now)

    def _advance(self, job: Job, now: float, *, cancel: bool = False) -> Job:
        """Bring ``job`` up to ``now`` (or ask it to cancel): answers its due lines, files its files."""
        was_ended = job.ended
        files = job.cancel(now, self._answer_line) if cancel else job.advance(now, self._answer_line)
        for produced in files:
            self._files[produced.id] = produced
        if job.ended and not was_ended:
            kinds = [outcome[0] for outcome in job.outcomes]
            self._stats.batch_lines_expired += kinds.count("expired")
            self._stats.batch_lines_cancelled += kinds.count("cancelled")
        return job

    def _deny(self, request: web.Request, api: Api) -> web.Response | None:
        """The 401 for a request without the required key (batch and file endpoints), or None."""
        if self._expected_key is None or self._authorized(request, api):
            return None
        self._stats.auth_failures += 1
        return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key", api=api)

    async def _json_body(self, request: web.Request, api: Api) -> dict[str, Any] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "The request body is not valid JSON.", "invalid_request_error", api=api)
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error", api=api)
        return body

    def _known_model(self, model: str) -> bool:
        return self._models is None or model in self._models

    def _new_job(self, api: Api, requests: list[tuple[str, Any]], key: str, **fields: Any) -> Job:
        prefix = "msgbatch_sim" if api == "anthropic" else "batch_"
        c = self.config
        job = Job(api, new_id(prefix), self.now(), requests, c.batch_processing_s, c.batch_expire_after, key, **fields)
        self._jobs[job.id] = job
        self._stats.batches_created += 1
        if job.errors is None:
            self._stats.batch_requests_submitted += len(requests)
        return job

    def _job(self, request: web.Request, api: Api) -> Job | web.Response:
        batch_id = request.match_info["batch_id"]
        job = self._jobs.get(batch_id)
        if job is None or job.api != api:
            if api == "anthropic":
                return _error(404, f"Message batch {batch_id!r} not found.", "", api=api)
            return _error(404, f"No batch found with id '{batch_id}'.", "invalid_request_error", param="batch_id")
        return self._advance(job, self.now())

    def _listed(self, request: web.Request, api: Api, default: int, most: int) -> tuple[list[Job], bool] | web.Response:
        """A page of ``api``'s jobs, newest first, from ``after``/``after_id`` or up to ``before_id``."""
        query = request.query
        try:
            limit = int(query.get("limit", default))
        except ValueError:
            limit = 0
        if not 1 <= limit <= most:
            return _error(400, f"limit must be an integer from 1 to {most}", "invalid_request_error", api=api)
        jobs = [job for job in reversed(self._jobs.values()) if job.api == api]
        ids = [job.id for job in jobs]
        after = query.get("after_id" if api == "anthropic" else "after")
        before = query.get("before_id") if api == "anthropic" else None
        if before is not None:
            end = ids.index(before) if before in ids else 0
            page = jobs[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            start = ids.index(after) + 1 if after in ids else 0
            page = jobs[start : start + limit]
            has_more = start + limit < len(jobs)
        now = self.now()
        return [self._advance(job, now) for job in page], has_more

    async def _upload_file(self, request: web.Request) -> web.Response:
        denied = self._deny(request, "openai")
        if denied is not None:
            return denied
        try:
            form = await request.post()
        except ValueError:
            return _error(400, "The request is not a valid multipart form.", "invalid_request_error")
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _error(400, "Missing required parameter: 'file'.", "invalid_request_error", param="file")
        if form.get("purpose") != "batch":
            msg = "Invalid value for 'purpose': the simulator stores files for the Batch API only ('batch')."
            return _error(400, msg, "invalid_request_error", param="purpose")
        filename = upload.filename or "upload"
        if not filename.endswith(".jsonl"):
            return _error(400, "Invalid file format for Batch API. Must be .jsonl", "invalid_request_error")
        data = upload.file.read()
        if len(data) > OPENAI_MAX_FILE_BYTES:
            msg = f"File is too large: {len(data)} bytes; the Batch API accepts {OPENAI_MAX_FILE_BYTES}."
            return _error(400, msg, "invalid_request_error", param="file")
        stored = BatchFile(new_id("file-"), filename, "batch", data, self.now())
        self._files[stored.id] = stored
        self._stats.files_uploaded += 1
        return _json(stored.as_object())

    def _file(self, request: web.Request) -> BatchFile | web.Response:
        self._advance_jobs()  # an output file exists once its job has ended
        file_id = request.match_info["file_id"]
        found = self._files.get(file_id)
        if found is None:
            return _error(404, f"No such File object: {file_id}", "invalid_request_error", param="id")
        return found

    async def _list_files(self, request: web.Request) -> web.Response:
        denied = self._deny(request, "openai")
        if denied is not None:
            return denied
        self._advance_jobs()
        purpose = request.query.get("purpose")
        data = [f.as_object() for f in reversed(self._files.values()) if purpose is None or f.purpose == purpose]
        return _json({"object": "list", "data": data, "has_more": False})

    async def _get_file(self, request: web.Request) -> web.Response:
        found = self._deny(request, "openai") or self._file(request)
        return found if isinstance(found, web.Response) else _json(found.as_object())

    async def _get_file_content(self, request: web.Request) -> web.Response:
        found = self._deny(request, "openai") or self._file(request)
        if isinstance(found, web.Response):
            return found
        return web.Response(body=found.data, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.Response:
        found = self._deny(request, "openai") or self._file(request)
        if isinstance(found, web.Response):
            return found
        del self._files[found.id]
        return _json({"id": found.id, "object": "file", "deleted": True})

    async def _create_batch(self, request: web.Request) -> web.Response:
        body = self._deny(request, "openai") or await self._json_body(request, "openai")
        if isinstance(body, web.Response):
            return body
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in body:
                return _error(400, f"Missing required parameter: '{name}'.", "invalid_request_error", param=name)
        if body["endpoint"] != OPENAI_ENDPOINT:
            msg = f"Invalid value for 'endpoint': the simulator runs batches of {OPENAI_ENDPOINT} only."
            return _error(400, msg, "invalid_request_error", "invalid_value", "endpoint")
        if body["completion_window"] != "24h":
            msg = "Invalid value for 'completion_window': supported values are: '24h'."
            return _error(400, msg, "invalid_request_error", "invalid_value", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and len(metadata) <= 16
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            msg = "Invalid 'metadata': at most 16 pairs of strings."
            return _error(400, msg, "invalid_request_error", "invalid_value", "metadata")
        input_file = self._files.get(body["input_file_id"])
        if input_file is None or input_file.purpose != "batch":
            msg = f"Invalid 'input_file_id': no file {body['input_file_id']!r} uploaded with purpose 'batch'."
            return _error(400, msg, "invalid_request_error", "invalid_value", "input_file_id")
        most = self.config.batch_max_requests or OPENAI_MAX_REQUESTS
        requests, errors = parse_openai_input(input_file.data, OPENAI_ENDPOINT, most, self._known_model)
        job = self._new_job(
            "openai",
            requests,
            _sent_key(request, "openai"),
            input_file_id=input_file.id,
            metadata=metadata,
            errors=errors or None,
        )
        return _json(job.openai_object(job.created, just_created=True))

    async def _get_batch(self, request: web.Request) -> web.Response:
        job = self._deny(request, "openai") or self._job(request, "openai")
        return job if isinstance(job, web.Response) else _json(job.openai_object(self.now()))

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        job = self._deny(request, "openai") or self._job(request, "openai")
        if isinstance(job, web.Response):
            return job
        if job.ended_as in ("completed", "failed", "expired"):
            msg = f"Cannot cancel a batch with status '{job.ended_as}'."
            return _error(400, msg, "invalid_request_error", "invalid_state", "batch_id")
        now = self.now()
        return _json(self._advance(job, now, cancel=True).openai_object(now))

    async def _list_batches(self, request: web.Request) -> web.Response:
        listed = self._deny(request, "openai") or self._listed(request, "openai", 20, 100)
        if isinstance(listed, web.Response):
            return listed
        page, has_more = listed
        now = self.now()
        data = [job.openai_object(now) for job in page]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return _json({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more})

    async def _create_message_batch(self, request: web.Request) -> web.Response:
        body = self._deny(request, "anthropic") or await self._json_body(request, "anthropic")
        if isinstance(body, web.Response):
            return body
        requests = body.get("requests")
        most = self.config.batch_max_requests or ANTHROPIC_MAX_REQUESTS
        refused = anthropic_custom_id_error(requests, most)
        if refused is not None:
            return _error(400, refused, "", api="anthropic")
        assert isinstance(requests, list)  # checked by anthropic_custom_id_error
        pairs = [(item["custom_id"], item["params"]) for item in requests]
        job = self._new_job("anthropic", pairs, _sent_key(request, "anthropic"))
        return _json(job.anthropic_object(_origin(request)))

    async def _get_message_batch(self, request: web.Request) -> web.Response:
        job = self._deny(request, "anthropic") or self._job(request, "anthropic")
        return job if isinstance(job, web.Response) else _json(job.anthropic_object(_origin(request)))

    async def _cancel_message_batch(self, request: web.Request) -> web.Response:
        job = self._deny(request, "anthropic") or self._job(request, "anthropic")
        if isinstance(job, web.Response):
            return job
        return _json(self._advance(job, self.now(), cancel=True).anthropic_object(_origin(request)))

    async def _delete_message_batch(self, request: web.Request) -> web.Response:
        job = self._deny(request, "anthropic") or self._job(request, "anthropic")
        if isinstance(job, web.Response):
            return job
        if not job.ended:
            msg = "Message batches that are still processing cannot be deleted; cancel it first."
            return _error(400, msg, "", api="anthropic")
        del self._jobs[job.id]
        return _json({"id": job.id, "type": "message_batch_deleted"})

    async def _message_batch_results(self, request: web.Request) -> web.Response:
        job = self._deny(request, "anthropic") or self._job(request, "anthropic")
        if isinstance(job, web.Response):
            return job
        if job.results is None:
            msg = f"Results of message batch {job.id!r} are not available until it has ended."
            return _error(404, msg, "", api="anthropic")
        return web.Response(body=job.results, content_type="application/x-jsonl")

    async def _list_message_batches(self, request: web.Request) -> web.Response:
        listed = self._deny(request, "anthropic") or self._listed(request, "anthropic", 20, 1000)
        if isinstance(listed, web.Response):
            return listed
        page, has_more = listed
        origin = _origin(request)
        data = [job.anthropic_object(origin) for job in page]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return _json({"data": data, "has_more": has_more, "first_id": first, "last_id": last})

    async def _post_clock_advance(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, "openai")
        if isinstance(body, web.Response):
            return body
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            return _error(400, "'seconds' must be a number >= 0", "invalid_request_error", param="seconds")
        return _json({"now": self.advance_clock(float(seconds))})


class _UnknownModel(Exception):
    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")


def _origin(request: web.Request) -> str:
    """The server's root URL as this client reached it (for Anthropic's ``results_url``)."""
    return str(request.url.origin())


def _sent_key(request: web.Request, api: Api) -> str:
    """The API key the client sent (only ever quoted back by [[sim:quirk=echo_key]])."""
    if api == "anthropic" and "x-api-key" in request.headers:
        return request.headers["x-api-key"].strip()
    return request.headers.get("Authorization", "").partition(" ")[2].strip()


def _render(api: Api, model: str, plan: _Plan, quirk: tuple[str, str] | None) -> bytes:
    """The body of a successful answer: a ChatCompletion, or an Anthropic Message."""
    if api == "anthropic":
        return _render_message(model, plan, quirk)
    completion = {
        "id": f"chatcmpl-sim-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": plan.choices,
        "usage": {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        },
        "system_fingerprint": "llmbatch-sim",
    }
    if quirk is not None:
        return _quirky(completion, *quirk)
    return orjson.dumps(completion)


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}


def _render_message(model: str, plan: _Plan, quirk: tuple[str, str] | None) -> bytes:
    """The Anthropic Message for a plan: its one choice's text as a text block."""
    choice = plan.choices[0]
    text: str | None = choice["message"]["content"]
    name, token = quirk if quirk is not None else (None, "")
    if text is not None and name == "not_json":
        text = "Sure! Here it is: " + text
    elif text is not None and name == "echo_key":
        text += f" (you sent the key {token})"
    message = {
        "id": f"msg_sim{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [] if text is None or name == "no_choices" else [{"type": "text", "text": text}],
        "stop_reason": _STOP_REASONS[choice["finish_reason"]],
        "stop_sequence": None,
        "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": plan.completion_tokens},
    }
    if name == "bigint":
        return orjson.dumps({**message, "big": 0}).replace(b'"big":0', b'"big":123456789012345678901234567890')
    if name == "deep":
        return orjson.dumps(message)[:-1] + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}"
    return orjson.dumps(message)


def _quirky(completion: dict[str, Any], quirk: str, token: str) -> bytes:
    """A 200 body as some real providers send it now and then (``[[sim:quirk=NAME]]``)."""
    if quirk == "no_choices":
        completion["choices"] = []
    elif quirk == "choice_error":
        for choice in completion["choices"]:
            choice["finish_reason"] = "error"
            choice["message"]["content"] = None
            choice["error"] = {"code": 502, "message": "Upstream provider error (simulated)"}
    elif quirk == "not_json":
        for choice in completion["choices"]:
            choice["message"]["content"] = "Sure! Here it is: " + (choice["message"]["content"] or "")
    elif quirk == "echo_key":
        for choice in completion["choices"]:
            choice["message"]["content"] += f" (you sent the key {token})"
    elif quirk == "bigint":
        # orjson cannot write an integer over 64 bits: spliced into the text by hand.
        body = orjson.dumps({**completion, "big": 0})
        return body.replace(b'"big":0', b'"big":123456789012345678901234567890')
    elif quirk == "deep":
        return orjson.dumps(completion)[:-1] + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}"
    return orjson.dumps(completion)


# --- running it --------------------------------------------------------------------------------


class SimulatorThread:
    """A :class:`Simulator` on its own event loop in a daemon thread, for sync code and tests."""

    def __init__(self, config: SimConfig = SimConfig(), port: int = 0) -> None:
        self.config = config
        self.port = port
        self.url = ""  # set by start()
        self._sim = Simulator(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run, args=(loop,), name="llmbatch-simulator", daemon=True)
        thread.start()
        try:
            started = asyncio.run_coroutine_threadsafe(self._sim.start("127.0.0.1", self.port), loop)
            self.url = started.result(timeout=30)
        except BaseException:  # e.g. the port is taken: stop the loop, then let the caller see it
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            raise
        self._loop, self._thread = loop, thread
        return self

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def close(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = self._loop = None
        # stop() first, on the loop, so hanging handlers are woken before the loop stops.
        asyncio.run_coroutine_threadsafe(self._sim.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        return self._call(self._sim.stats)

    def reset_stats(self) -> None:
        self._call(self._sim.reset_stats)

    def advance_clock(self, seconds: float) -> float:
        """Move the simulator's clock forward (batch jobs progress); returns its new now."""
        return self._call(lambda: self._sim.advance_clock(seconds))

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the simulator's loop, so it never sees a request half-counted."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn()

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)


def serve_forever(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM, then stop cleanly and return (for ``llmbatch sim``)."""

    async def main() -> None:
        sim = Simulator(config)
        url = await sim.start(host, port)
        stop = asyncio.Event()
        # Windows, or not the main thread: Ctrl-C still works.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            if on_ready is not None:
                on_ready(url)
            await stop.wait()
        finally:
            await sim.stop()

    # On Ctrl-C asyncio.run has already cancelled main(), which stopped the server.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
