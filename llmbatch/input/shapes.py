"""One input line to a :class:`~llmbatch.model.request.Request`: the three line shapes, the
parameter rules, and the limits on what can be paid for and then kept. Pure: :func:`parse_line`
turns one line into a Request or raises :class:`InvalidLine` with a message for people.

Accepted shapes, freely mixed in one file:

1. ``{"id": "q1", "prompt": "...", "system": "...", "model": "openai:gpt-4o-mini", ...}``
2. ``{"id": "q2", "messages": [{"role": "user", "content": "..."}], ...}``
3. an OpenAI Batch API line: ``{"custom_id": "r1", "method": "POST",
   "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [...]}}``
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmbatch.errors import did_you_mean
from llmbatch.input.normalize import normalize_messages
from llmbatch.input.routes import Route, choose_route
from llmbatch.model.request import Request
from llmbatch.providers.base import unknown_provider

__all__ = ["MAX_DEPTH", "MAX_LINE_BYTES", "MAX_MESSAGES", "PARAMS", "Defaults", "InvalidLine", "parse_line"]

_BOM = b"\xef\xbb\xbf"


#: A line larger than this is refused by default (``--max-line-size``): what no provider takes in one
#: request is almost surely a mistake, and a huge line can hold the run up while it is prepared.
MAX_LINE_BYTES = 50 * 1000 * 1000
#: More messages than this in one line is refused by default (``--max-messages``): the SDKs build a
#: request message by message, without yielding, and 300,000 messages held a run for a minute.
MAX_MESSAGES = 10_000
#: Objects and arrays a line may hold, for each message it may have (--max-messages): content
#: parts and tools count as much as messages when the SDKs build a request.
CONTAINERS_PER_MESSAGE = 5
#: How deeply a line may nest. Results and keys wrap a line's values in a few more levels, and JSON
#: writers stop at 255: a deeper line would be paid for and then fail to be written.
MAX_DEPTH = 100


@dataclass(frozen=True, slots=True)
class Defaults:
    """File-wide defaults from the command line: a line's own ``model`` wins."""

    model: str | None = None
    provider: str | None = None
    max_line_bytes: int = MAX_LINE_BYTES
    max_messages: int = MAX_MESSAGES
    #: Prompt normalisation (``"whitespace"``) for models not in ``normalize_models``, or None: off.
    normalize: str | None = None
    #: Per ``provider:model`` (``llmbatch.toml``), None for a model it is off for.
    normalize_models: Mapping[str, str | None] = field(default_factory=dict)
    #: ``[[route]]`` rules (``llmbatch.toml``): for a line without its own model, before ``model``.
    routes: tuple[Route, ...] = ()

    def normalize_for(self, model_ref: str) -> str | None:
        """The normalisation the requests of ``provider:model`` get, if any."""
        return self.normalize_models.get(model_ref, self.normalize) if self.normalize_models else self.normalize


class InvalidLine(ValueError):
    """One line is wrong; the message says what and, where it can, how to fix it."""


# --- parameter rules -------------------------------------------------------------------------

Check = Callable[[str, Any], Any]  # returns the normalised value or raises InvalidLine


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number(minimum: float | None = None, maximum: float | None = None) -> Check:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidLine(f'"{name}" must be a number, got {_type_name(value)}')
        if minimum is not None and value < minimum:
            raise InvalidLine(f'"{name}" must be at least {minimum:g}, got {value}')
        if maximum is not None and value > maximum:
            raise InvalidLine(f'"{name}" must be at most {maximum:g}, got {value}')
        # 0 and 0.0 ask for the same thing; store one spelling so they share a key.
        return float(value)

    return check


def _integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidLine(f'"{name}" must be an integer, got {_type_name(value)}')
        if minimum is not None and value < minimum:
            raise InvalidLine(f'"{name}" must be at least {minimum}, got {value}')
        if maximum is not None and value > maximum:
            raise InvalidLine(f'"{name}" must be at most {maximum}, got {value}')
        return value

    return check


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidLine(f'"{name}" must be true or false, got {_type_name(value)}')
    return value


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidLine(f'"{name}" must be a string, got {_type_name(value)}')
    return value


def _object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidLine(f'"{name}" must be an object, got {_type_name(value)}')
    return value


def _string_or_object(name: str, value: Any) -> str | dict[str, Any]:
    if not isinstance(value, (str, dict)):
        raise InvalidLine(f'"{name}" must be a string or an object, got {_type_name(value)}')
    return value


def _stop(name: str, value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidLine(f'"{name}" must be a string or an array of strings, got {_type_name(value)}')


def _tools(name: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidLine(f'"{name}" must be an array of objects, got {_type_name(value)}')
    return value


def _logit_bias(name: str, value: Any) -> dict[str, float]:
    obj = _object(name, value)
    out: dict[str, float] = {}
    for token, bias in obj.items():
        if isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise InvalidLine(f'"{name}" values must be numbers, got {_type_name(bias)} for "{token}"')
        if not -100 <= bias <= 100:
            raise InvalidLine(f'"{name}" values must be from -100 to 100, got {bias} for "{token}"')
        out[token] = float(bias)
    return out


_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max", "auto")


def _reasoning_effort(name: str, value: Any) -> str:
    if value not in _REASONING_EFFORTS:
        raise InvalidLine(f'"{name}" must be one of {", ".join(_REASONING_EFFORTS)}, got {value!r}')
    return str(value)


#: Every chat-completion parameter any-llm's ``acompletion`` takes by name, with its rule. Ranges
#: are OpenAI's documented ones (the openai SDK's ``completion_create_params``); a provider with a
#: narrower one (Anthropic's temperature is 0-1) answers such a line with a 400.
PARAMS: dict[str, Check] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_tokens": _integer(1),
    "max_completion_tokens": _integer(1),
    "stop": _stop,
    "seed": _integer(),
    "n": _integer(1),
    "response_format": _object,
    "tools": _tools,
    "tool_choice": _string_or_object,
    "parallel_tool_calls": _boolean,
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "logit_bias": _logit_bias,
    "logprobs": _boolean,
    "top_logprobs": _integer(0, 20),
    "reasoning_effort": _reasoning_effort,
    "user": _string,
    "service_tier": _string,
    "prompt_cache_key": _string,
}

#: Fields of an OpenAI request body that are real OpenAI parameters but not named in
#: any-llm's signature: they travel as provider keyword arguments (and are in the key).
_OPENAI_BODY_EXTRAS = frozenset(
    {
        "store",
        "metadata",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "verbosity",
        "safety_identifier",
        "functions",
        "function_call",
    }
)

_LINE_FIELDS = frozenset({"id", "prompt", "system", "messages", "model", "metadata", "sample", "extra"})
_BATCH_FIELDS = frozenset({"custom_id", "method", "url", "body"})
_REFUSED = {
    "stream": 'streaming is not supported: llmbatch stores whole answers (remove "stream")',
    "stream_options": 'streaming is not supported: llmbatch stores whole answers (remove "stream_options")',
    "timeout": 'a per-line "timeout" is not supported: use --timeout',
}
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: What "extra" must not pass to the client: where calls go and with which key is the run's (it is
#: part of the keys as the endpoint, and a key on a line would sit in the input and the cache).
_EXTRA_REFUSED = {
    "api_key": '"extra" must not contain "api_key": set the provider\'s key in the environment (e.g. OPENAI_API_KEY)',
    "api_base": '"extra" must not contain "api_base": use --api-base or the provider\'s base URL variable',
    "client_args": '"extra" must not contain "client_args": the run makes one client per provider and base URL',
}


def _unknown_field(name: str, known: frozenset[str] | set[str]) -> InvalidLine:
    return InvalidLine(f'unknown field "{name}"{did_you_mean(name, known)}')


# --- shapes ----------------------------------------------------------------------------------


def _check_id(name: str, value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidLine(f'"{name}" must be a string or an integer, got {_type_name(value)}')
    if isinstance(value, str) and not value.strip():
        raise InvalidLine(f'"{name}" must not be empty')
    return value


def _check_shape(raw: bytes | str) -> int:
    """Refuse a line nested deeper than :data:`MAX_DEPTH`, or made of more than ``max_containers``
    objects and arrays (300,000 content parts or 100,000 tools hold a run up while the SDK builds the
    request, as 300,000 messages do). Counting the brackets is nearly free and settles it for almost
    every line: fewer openers than the limits cannot break them; only then are strings skipped.
    The number of objects and arrays (0 when it is small), checked once the line is read, so that a
    line of too many messages hears about its messages."""
    data = raw.encode() if isinstance(raw, str) else raw
    openers = data.count(b"{") + data.count(b"[")
    if openers <= MAX_DEPTH:
        return 0
    depth = deepest = containers = 0
    for token in _STRING_OR_BRACKET.findall(data):  # strings are skipped whole, brackets counted
        if token in (b"{", b"["):
            depth += 1
            containers += 1
            deepest = max(deepest, depth)
        elif token in (b"}", b"]"):
            depth -= 1
    if deepest > MAX_DEPTH:
        raise InvalidLine(f"the line nests {deepest} levels deep; at most {MAX_DEPTH} can be stored and written")
    return containers


def _check_containers(containers: int, defaults: Defaults) -> None:
    limit = CONTAINERS_PER_MESSAGE * defaults.max_messages
    if containers > limit:
        raise InvalidLine(
            f"the line holds {containers:,} objects and arrays, over the limit of {limit:,} "
            "(five for each message --max-messages allows)"
        )


_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _check_messages(value: Any, limit: int = MAX_MESSAGES) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidLine(f'"messages" must be an array, got {_type_name(value)}')
    if not value:
        raise InvalidLine('"messages" must not be empty')
    if len(value) > limit:
        raise InvalidLine(f'"messages" has {len(value):,} messages, over the limit of {limit:,} (--max-messages)')
    for i, message in enumerate(value):
        where = f'"messages"[{i}]'
        if not isinstance(message, dict):
            raise InvalidLine(f"{where} must be an object, got {_type_name(message)}")
        role = message.get("role")
        if role not in _ROLES:
            if role is None:
                raise InvalidLine(f'{where} has no "role"')
            raise InvalidLine(f"{where} has unknown role {role!r} (expected one of {', '.join(sorted(_ROLES))})")
        content = message.get("content")
        if content is None:
            # An assistant turn that only calls tools has no content; nothing else may omit it.
            if not (role == "assistant" and message.get("tool_calls")):
                raise InvalidLine(f'{where} has no "content"')
        elif not isinstance(content, (str, list)):
            raise InvalidLine(f'{where} "content" must be a string or an array, got {_type_name(content)}')
        elif role == "user" and isinstance(content, str) and not content.strip():
            raise InvalidLine(f"{where} has empty content")
    return value


@dataclass(frozen=True, slots=True)
class _Chosen:
    provider: str
    model: str
    route: str = "line"
    fallback: tuple[str, ...] = ()
    escalate_on: tuple[str, ...] = ()
    escalate_to: str | None = None


def _choose_model(
    model: Any,
    defaults: Defaults,
    metadata: Any,
    messages: list[dict[str, Any]],
    *,
    implied_provider: str | None = None,
) -> _Chosen:
    """The line's own ``model``, else the first route it matches, else ``--model``."""
    if model is None and defaults.routes:
        route = choose_route(defaults.routes, metadata, messages)
        if route is not None:
            provider, name = route.model.split(":", 1)
            return _Chosen(provider, name, route.label, route.fallback, route.escalate_on, route.escalate_to)
    if model is None and defaults.model is not None:
        return _Chosen(*_resolve_model(None, defaults, implied_provider=implied_provider), route="--model")
    if model is None and defaults.routes:
        raise InvalidLine('no model: no route matched this line; add "model" to it, a default route, or --model')
    return _Chosen(*_resolve_model(model, defaults, implied_provider=implied_provider))


def _resolve_model(model: Any, defaults: Defaults, *, implied_provider: str | None = None) -> tuple[str, str]:
    """``provider:model`` from the line, else from ``--model``; a bare name needs ``--provider``."""
    if model is None:
        model = defaults.model
    if model is None:
        raise InvalidLine('no model: add "model" to the line or pass --model (for example --model openai:gpt-4o-mini)')
    if not isinstance(model, str):
        raise InvalidLine(f'"model" must be a string, got {_type_name(model)}')
    model = model.strip()
    if not model:
        raise InvalidLine('"model" must not be empty')
    if ":" in model:
        provider, name = model.split(":", 1)
        if not provider or not name:
            raise InvalidLine(f'model {model!r} must look like "provider:model" (for example "openai:gpt-4o-mini")')
    else:
        provider, name = defaults.provider or implied_provider, model
        if provider is None:
            raise InvalidLine(
                f'model {model!r} has no provider: write "openai:{model}" (or another provider) or pass --provider'
            )
    why = unknown_provider(provider.lower())
    if why is not None:
        raise InvalidLine(why)
    return provider.lower(), name


def _take_params(
    obj: dict[str, Any], skip: frozenset[str], known: frozenset[str] | set[str], *, where_body: bool = False
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in obj.items():
        if name in skip:
            continue
        if name == "stream" and value is False:
            continue  # asking for no streaming is asking for what llmbatch does anyway
        if name in _REFUSED:
            raise InvalidLine(_REFUSED[name])
        check = PARAMS.get(name)
        if check is None:
            error = _unknown_field(name, known)
            raise InvalidLine(f'{error} in "body"') if where_body else error
        if value is None:
            continue  # null means "the provider's default", the same as leaving it out
        params[name] = check(name, value)
    return params


_LINE_KNOWN = _LINE_FIELDS | set(PARAMS)


def _parse_simple(obj: dict[str, Any], line: int, defaults: Defaults) -> Request:
    has_prompt = "prompt" in obj
    has_messages = "messages" in obj
    if has_prompt and has_messages:
        raise InvalidLine('give either "prompt" or "messages", not both')
    if not has_prompt and not has_messages:
        raise InvalidLine('missing "prompt" (a string) or "messages" (an array)')

    if has_prompt:
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            raise InvalidLine(f'"prompt" must be a string, got {_type_name(prompt)}')
        if not prompt.strip():
            raise InvalidLine('"prompt" is empty')
        messages: list[dict[str, Any]] = []
        system = obj.get("system")
        if system is not None:
            if not isinstance(system, str):
                raise InvalidLine(f'"system" must be a string, got {_type_name(system)}')
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
    else:
        if "system" in obj:
            raise InvalidLine('"system" goes with "prompt"; with "messages", add a {"role": "system"} message')
        messages = _check_messages(obj["messages"], defaults.max_messages)

    chosen = _choose_model(obj.get("model"), defaults, obj.get("metadata"), messages)
    params = _take_params(obj, _LINE_FIELDS, _LINE_KNOWN)

    sample = obj.get("sample", 0)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        shown = sample if isinstance(sample, int) and not isinstance(sample, bool) else _type_name(sample)
        raise InvalidLine(f'"sample" must be a non-negative integer, got {shown}')
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        raise InvalidLine(f'"extra" must be an object, got {_type_name(extra)}')
    # extra goes to acompletion as keyword arguments: it must not smuggle in a refused option,
    # nor a parameter or field that is passed by name already (unchecked, or a TypeError).
    for name in extra:
        if name in _REFUSED or name in _EXTRA_REFUSED:
            raise InvalidLine(_REFUSED.get(name) or _EXTRA_REFUSED[name])
        if name in PARAMS or name in _BODY_STRUCTURAL:
            raise InvalidLine(f'"extra" must not contain "{name}": give it as a field of the line')

    return Request(
        line=line,
        id=_check_id("id", obj["id"]) if "id" in obj else line,
        provider=chosen.provider,
        model=chosen.model,
        messages=messages,
        params=params,
        extra=extra,
        sample=sample,
        metadata=obj.get("metadata"),
        route=chosen.route,
        fallback=chosen.fallback,
        escalate_on=chosen.escalate_on,
        escalate_to=chosen.escalate_to,
    )


_BODY_STRUCTURAL = frozenset({"model", "messages"})
_BODY_KNOWN = _BODY_STRUCTURAL | set(PARAMS) | _OPENAI_BODY_EXTRAS


def _parse_batch(obj: dict[str, Any], line: int, defaults: Defaults) -> Request:
    for name in obj:
        if name not in _BATCH_FIELDS:
            raise _unknown_field(name, _BATCH_FIELDS)
    method = obj.get("method", "POST")
    if method != "POST":
        raise InvalidLine(f'"method" must be "POST", got {method!r}')
    url = obj.get("url", "/v1/chat/completions")
    if url not in ("/v1/chat/completions", "/chat/completions"):
        raise InvalidLine(f'"url" {url!r} is not supported: llmbatch runs "/v1/chat/completions" requests')
    body = obj.get("body")
    if not isinstance(body, dict):
        raise InvalidLine(f'"body" must be an object, got {_type_name(body)}')
    if "messages" not in body:
        raise InvalidLine('"body" has no "messages"')
    messages = _check_messages(body["messages"], defaults.max_messages)
    # A Batch API file is an OpenAI file: a bare model name means OpenAI unless --provider says otherwise.
    chosen = _choose_model(body.get("model"), defaults, None, messages, implied_provider="openai")
    params = _take_params(body, _BODY_STRUCTURAL | _OPENAI_BODY_EXTRAS, _BODY_KNOWN, where_body=True)
    extra = {k: v for k, v in body.items() if k in _OPENAI_BODY_EXTRAS and v is not None}
    return Request(
        line=line,
        id=_check_id("custom_id", obj["custom_id"]) if "custom_id" in obj else line,
        provider=chosen.provider,
        model=chosen.model,
        messages=messages,
        params=params,
        extra=extra,
        sample=0,
        metadata=None,
        route=chosen.route,
        fallback=chosen.fallback,
        escalate_on=chosen.escalate_on,
        escalate_to=chosen.escalate_to,
    )


#: A run of digits that may be an integer beyond 64 bits, which orjson reads as a float.
_LONG_NUMBER = re.compile(rb"\d{19,}")


def _keep_big_integers(obj: dict[str, Any], raw: bytes | str) -> None:
    """What a line's ``metadata`` and ``id`` hold comes back in its result line exactly as written: an
    integer beyond 64 bits (an order number, a snowflake id), which orjson would read as a float and
    round, is read again by the standard library, which keeps it whole. Only those two fields: the
    rest is sent and keyed, where such a number can mean nothing to a provider."""
    exact = json.loads(raw)
    for name in ("metadata", "id"):
        if name in exact:
            obj[name] = exact[name]


def parse_line(raw: bytes | str, line: int, defaults: Defaults = Defaults()) -> Request:
    """One JSONL line to a Request, or :class:`InvalidLine` saying what is wrong."""
    if len(raw) > defaults.max_line_bytes:
        raise InvalidLine(
            f"the line is {len(raw):,} bytes, over the limit of {defaults.max_line_bytes:,} (--max-line-size)"
        )
    containers = _check_shape(raw)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if isinstance(raw, bytes):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise InvalidLine(f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1})") from None
        raise InvalidLine(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidLine(f"expected a JSON object, got {_type_name(obj)}")
    if _LONG_NUMBER.search(raw if isinstance(raw, bytes) else raw.encode()):
        _keep_big_integers(obj, raw)
    if _BATCH_FIELDS.intersection(obj) and not {"prompt", "messages"}.intersection(obj):
        request = _parse_batch(obj, line, defaults)
    else:
        for name in obj:
            if name not in _LINE_KNOWN and name not in _REFUSED:
                raise _unknown_field(name, _LINE_KNOWN)
        request = _parse_simple(obj, line, defaults)
    if containers:
        _check_containers(containers, defaults)
    # Here, on the checked request and before any key is made of it, so that the key, the cache entry
    # and the call all see the same normalised text (the model is only known once the line is read).
    mode = defaults.normalize_for(request.model_ref)
    if mode is not None:
        request.messages = normalize_messages(request.messages, mode)
        request.normalize = mode
    return request
