"""An OpenAI-compatible chat-completions server for tests, benchmarks and ``llmbatch run --simulate``.

The contract, which the openai SDK (and so any-llm's OpenAI provider) cannot tell from the real API:

* ``POST /v1/chat/completions`` answers a ChatCompletion whose content is a pure function of the
  request: ``digest`` is the sha256 of the request body (keys sorted, ``stream``/``stream_options``
  left out) and the content is ``"Simulated answer {digest[:8]} to: {last user text}"``, plus
  ``" (choice i)"`` for choice ``i > 0``, wrapped as ``{"answer": ...}`` when a JSON
  ``response_format`` is asked for. Tokens are whitespace-separated words; ``max_tokens`` /
  ``max_completion_tokens`` truncate the content (``finish_reason`` ``"length"``).
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

__all__ = ["SimConfig", "Simulator", "SimulatorThread", "parse_duration_s", "serve_forever"]

_T = TypeVar("_T")

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "sim-1")
_MODELS_CREATED = 1_700_000_000  # a fixed date, so /v1/models is deterministic
_MAX_BODY_BYTES = 64 * 1024 * 1024  # real prompts can be large; aiohttp's default is 1 MiB
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

    def __post_init__(self) -> None:
        # Fail at construction, where the CLI can report the bad option, not on the first request.
        if self.latency_dist not in ("fixed", "lognormal"):
            raise ValueError(f"latency_dist must be 'fixed' or 'lognormal', not {self.latency_dist!r}")
        for name in ("latency_s", "latency_sigma", "retry_after_s", "hang_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("p429", "p500", "p503", "phang", "pdrop"):
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


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, headers=headers, content_type="application/json")


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return _json(body, status, headers)


def _status_error(status: int, headers: dict[str, str], retry_after_s: float) -> web.Response:
    """An error as OpenAI words it for this status (used by faults and ``[[sim:status=N]]``)."""
    if status == 429:
        headers["Retry-After"] = _fmt_seconds(retry_after_s)
        msg = "Rate limit reached (simulated). Please try again later."
        return _error(429, msg, "requests", "rate_limit_exceeded", headers=headers)
    if status == 500:
        msg = "The server had an error while processing your request. Sorry about that! (simulated)"
        return _error(500, msg, "server_error", headers=headers)
    if status == 503:
        msg = "The server is overloaded or not ready yet. (simulated)"
        return _error(503, msg, "server_error", headers=headers)
    if status == 400:
        return _error(400, "simulated bad request", "invalid_request_error", headers=headers)
    if status == 401:
        return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key", headers=headers)
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return _error(status, f"simulated error {status}", type_, headers=headers)


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
    return _Directives(status, finish, max(fail_first, 0), latency, quirk, max(quirk_first, 0), trickle, only_model)


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


def _plan_completion(body: dict[str, Any]) -> _Plan:
    """Work out the answer to a validated request body (deterministic, no I/O)."""
    canonical = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    digest = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()
    messages: list[dict[str, Any]] = body["messages"]
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    directives = _parse_directives(last_user)
    if directives.only_model is not None and directives.only_model != body["model"]:
        directives = _Directives()
    n = _positive_int(body, "n", _MAX_N) or 1
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    fmt = body.get("response_format")
    as_json = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")

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

    prompt_tokens = max(1, sum(len(_text_of(m.get("content")).split()) for m in messages))
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

    def as_dict(self) -> dict[str, Any]:
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
        self.app = web.Application(client_max_size=_MAX_BODY_BYTES)
        self.app.router.add_post("/v1/chat/completions", self._chat_completions)
        self.app.router.add_get("/v1/models", self._list_models)
        self.app.router.add_get("/stats", self._get_stats)
        self.app.router.add_post("/stats/reset", self._post_stats_reset)

    def stats(self) -> dict[str, Any]:
        return self._stats.as_dict()

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
        stats = self._stats
        stats.requests_received += 1
        if stats.first_request_at is None:
            stats.first_request_at = time.monotonic()
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._complete(request)
        finally:
            # self._stats, not stats: a reset while this request ran carried in_flight over.
            self._stats.in_flight -= 1

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        stats = self._stats
        if self._expected_key is not None and not self._authorized(request):
            stats.auth_failures += 1
            # Never echo the key the client sent: it may be a real one sent to the wrong place.
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        try:
            body = orjson.loads(await request.read())
            _validate(body)
            model: str = body["model"]
            if self._models is not None and model not in self._models:
                stats.unknown_model += 1
                msg = f"The model `{model}` does not exist or you do not have access to it."
                return _error(404, msg, "invalid_request_error", "model_not_found")
            plan = _plan_completion(body)
        except orjson.JSONDecodeError:
            stats.bad_requests += 1
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        except _InvalidRequest as exc:
            stats.bad_requests += 1
            return _error(400, str(exc), "invalid_request_error", param=exc.param)

        headers: dict[str, str] = {}
        limited = self._check_limits(plan.limit_tokens, headers)
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
            return _status_error(int(fault), headers, self.config.retry_after_s)

        delay = plan.directives.latency_s
        if delay is None:
            delay = self._draw_latency()
        if delay > 0 and await self._sleep(delay):
            return self._drop(request)  # shutting down: an answer now would be a lie about latency
        response = self._success(model, plan, headers, self._quirk(plan, request))
        if plan.directives.trickle_s is not None:
            return await self._trickle(request, response, plan.directives.trickle_s)
        return response

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

    def _quirk(self, plan: _Plan, request: web.Request) -> tuple[str, str] | None:
        """The directive's quirk for this attempt, with the key the client sent (for echo_key)."""
        directives = plan.directives
        if directives.quirk is None:
            return None
        if directives.quirk_first:
            attempt = self._attempts.get(plan.digest, 0) + 1
            self._attempts[plan.digest] = attempt
            if attempt > directives.quirk_first:
                return None
        token = request.headers.get("Authorization", "").partition(" ")[2].strip()
        return directives.quirk, token

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        assert self._expected_key is not None
        # compare_digest: constant time, so the key cannot be guessed byte by byte from timings.
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._expected_key)

    def _check_limits(self, tokens: int, headers: dict[str, str]) -> web.Response | None:
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
            return _error(429, msg, "tokens", "rate_limit_exceeded", headers=headers)
        headers["Retry-After"] = _fmt_seconds(max(0.1, math.ceil(wait * 10 - 1e-9) / 10))
        msg = "Rate limit reached (simulated rpm/tpm). Please try again later."
        return _error(429, msg, "requests", "rate_limit_exceeded", headers=headers)

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

    def _success(
        self, model: str, plan: _Plan, headers: dict[str, str], quirk: tuple[str, str] | None = None
    ) -> web.Response:
        stats = self._stats
        stats.completions_served += 1
        stats.last_completion_at = time.monotonic()
        stats.prompt_tokens += plan.prompt_tokens
        stats.completion_tokens += plan.completion_tokens
        serves = stats.serves.get(plan.digest, 0) + 1
        stats.serves[plan.digest] = serves
        stats.max_serves_per_request = max(stats.max_serves_per_request, serves)
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
            return web.Response(body=_quirky(completion, *quirk), headers=headers, content_type="application/json")
        return _json(completion, headers=headers)


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
