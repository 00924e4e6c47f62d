"""Calling providers through any-llm: the only module that imports ``any_llm``.

It does so lazily: a rerun whose every line is a cache hit never pays the ~2 s it takes to import
the SDKs. Rules from the project guide, and why:
- one any-llm client per (provider, base URL), reused for every call: a client per call costs
  ~15x the CPU and leaks connections;
- ``max_retries=0``: the SDK's own retries would hide attempts from us and multiply with ours,
  so tenacity alone retries (``retry.py``);
- unified exceptions on, and every failure mapped to a :class:`~llmbatch.providers.base.CallError`
  (``providers.base.classify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import time
from dataclasses import dataclass
from typing import Any

from llmbatch.model.request import Request
from llmbatch.providers.base import (
    PLACEHOLDER_KEY,
    PLACEHOLDER_KEYS,
    CallError,
    Destination,
    Reply,
    classify,
    redact,
)

__all__ = ["AnyLLMProvider", "preload"]

#: Providers whose SDK llmbatch's own extras install (pyproject: ``pip install 'llmbatch[gemini]'``).
_OUR_EXTRAS = frozenset({"mistral", "gemini", "ollama"})


# any-llm returns parsed responses without their HTTP headers, but the limits live there. Each
# SDK client gets a response hook (httpx and httpx2 both have event hooks) that copies the
# rate-limit headers into a box owned by the call in progress: a context variable, because the
# hook runs inside that call's own task.
_HEADER_BOX: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("llmbatch_headers", default=None)
_KEPT_HEADERS = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")


async def _capture_headers(response: Any) -> None:
    box = _HEADER_BOX.get()
    if box is None:
        return
    for name, value in response.headers.items():
        lower = name.lower()
        if lower.startswith(_KEPT_HEADERS):
            box[lower] = value


def _fast_transport(provider: str) -> dict[str, Any]:
    """For providers built on the openai SDK: its aiohttp transport instead of httpx's own.

    Measured on 2 cores against the simulator (bench/run.py): the same calls cost 1.1 ms of CPU
    instead of 1.9 ms, and a cold run at concurrency 100 went from ~500 to ~660 calls/s.
    The SDK ships it (``DefaultAioHttpClient``); aiohttp is already a dependency of llmbatch.
    """
    try:
        from any_llm import AnyLLM
        from any_llm.providers.openai.base import BaseOpenAIProvider

        if not issubclass(AnyLLM.get_provider_class(provider), BaseOpenAIProvider):
            return {}
        from openai import DefaultAioHttpClient
    except Exception:  # noqa: BLE001 - an unknown provider is reported by create(); no fast path then
        return {}
    return {"http_client": DefaultAioHttpClient()}


def preload(provider: str) -> None:
    """Import what a client for ``provider`` will need (any-llm, the provider's module and SDK, the
    fast transport's HTTP and TLS stack), leaving no client, event loop, socket or thread behind.
    Worker processes are forked from a process that did this once (``providers.workers``). A
    failure is left for the client's creation to report, in its own words."""
    with contextlib.suppress(Exception):
        from any_llm import AnyLLM
        from any_llm.providers.openai.base import BaseOpenAIProvider

        if issubclass(AnyLLM.get_provider_class(provider), BaseOpenAIProvider):
            from openai import DefaultAioHttpClient

            # Built and dropped: building one imports the rest (~50 ms), which each worker would
            # otherwise do again for itself. It opens nothing until its first request.
            DefaultAioHttpClient()


def _attach_header_hook(client: Any) -> bool:
    """Add the hook to the SDK's HTTP client; False where there is none we know how to reach."""
    http = getattr(getattr(client, "client", None), "_client", None)
    hooks = getattr(http, "event_hooks", None)
    if not isinstance(hooks, dict):
        return False
    hooks.setdefault("response", []).append(_capture_headers)  # the client's own dict: it sees this
    return True


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: the any-llm provider name and base URL actually used."""

    provider: str
    api_base: str | None


class AnyLLMProvider:
    """Completes requests through any-llm, one client per (provider, base URL).

    Built from a :class:`Destination` (or its parts as keywords): ``force_provider``/``api_base``/
    ``api_key`` redirect every call (``--simulate`` sends all of them to the simulator through the
    OpenAI provider, whatever provider the line names). ``destination`` says what keys record.
    """

    def __init__(
        self,
        destination: Destination | None = None,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        force_provider: str | None = None,
    ) -> None:
        if destination is None:
            destination = Destination.of(api_base=api_base, api_key=api_key, force_provider=force_provider)
        elif api_base is not None or api_key is not None or force_provider is not None:
            raise TypeError("give a Destination or its parts, not both")
        self.destination = destination
        self.lost = 0  # no worker processes here to lose (the Provider protocol asks)
        self._clients: dict[Route, Any] = {}
        key = destination.api_key
        self._secrets: tuple[str, ...] = (key,) if key and key not in PLACEHOLDER_KEYS else ()

    def route(self, request: Request) -> Route:
        return Route(self.destination.force_provider or request.provider, self.destination.api_base)

    def _client(self, route: Route) -> Any:
        client = self._clients.get(route)
        if client is not None:
            return client
        from any_llm import AnyLLM
        from any_llm.exceptions import AnyLLMError, UnsupportedParameterError

        api_key = self.destination.api_key
        if api_key is None and route.api_base is not None:
            # Local OpenAI-compatible servers (vLLM, LM Studio, Ollama) usually need no key, but
            # the SDK insists on one: give a placeholder unless the environment has a real key.
            env = f"{route.provider.upper()}_API_KEY"
            api_key = os.environ.get(env) or PLACEHOLDER_KEY
        options: dict[str, Any] = {"api_key": api_key, "api_base": route.api_base, "unified_exceptions": True}
        options.update(_fast_transport(route.provider))
        try:
            try:
                client = AnyLLM.create(route.provider, max_retries=0, **options)
            except UnsupportedParameterError:
                # This provider's SDK has no retry count to set (so it does not retry on its own).
                client = AnyLLM.create(route.provider, **options)
        except (AnyLLMError, ImportError, ValueError) as exc:
            raise self._setup_error(route, exc) from None
        self._remember_secret(client)
        _attach_header_hook(client)
        self._clients[route] = client
        return client

    def _remember_secret(self, client: Any) -> None:
        # Whatever key the SDK resolved (argument or environment) must never be echoed back.
        inner = getattr(client, "client", None)
        key = getattr(inner, "api_key", None)
        if isinstance(key, str) and key and key not in self._secrets and key not in PLACEHOLDER_KEYS:
            self._secrets = (*self._secrets, key)

    def _setup_error(self, route: Route, exc: BaseException) -> CallError:
        type_ = type(exc).__name__
        if type_ == "MissingApiKeyError":
            env = getattr(exc, "env_var_name", f"{route.provider.upper()}_API_KEY")
            return CallError("fatal", type_, f"no API key for {route.provider}: set {env}")
        if isinstance(exc, ImportError):
            # any-llm knows the provider, but its SDK is not installed: say how to install it
            # (any-llm's own words point at get_supported_providers(), or at any-llm-sdk's extras).
            missing = getattr(exc.__cause__, "name", None) or "its SDK"
            extra = route.provider if route.provider in _OUR_EXTRAS else None
            how = f"pip install 'llmbatch[{extra}]'" if extra else f"pip install 'any-llm-sdk[{route.provider}]'"
            return CallError(
                "fatal", type_, f"cannot use provider {route.provider!r}: {missing} is not installed; {how}"
            )
        if type_ == "UnsupportedProviderError":
            detail = redact(str(exc), self._secrets)
            return CallError("fatal", type_, f"cannot use provider {route.provider!r}: {detail}")
        return CallError("fatal", type_, redact(str(exc), self._secrets))

    def client_for(self, provider: str) -> Any:
        """The any-llm client calls to ``provider`` use (created once): the Batch-API side
        (``providers.batch``) shares it, so there is one client per provider and base URL."""
        return self._client(Route(self.destination.force_provider or provider, self.destination.api_base))

    def prepare(self, request: Request) -> None:
        """Create (once) the client this request needs; a :class:`CallError` if there can be none."""
        self._client(self.route(request))

    async def complete(self, request: Request, *, timeout_s: float) -> Reply:
        """One attempt: the provider's response, or a :class:`CallError` saying what went wrong."""
        route = self.route(request)
        client = self._client(route)
        timeout_argument = self._timeout_argument(client, timeout_s)
        box: dict[str, str] = {}
        token = _HEADER_BOX.set(box)
        started = time.monotonic()
        try:
            # The SDK's timeout is per read: a server trickling a byte every half second never
            # trips it. wait_for bounds the whole attempt, headers and body, at exactly the timeout.
            response = await asyncio.wait_for(
                client.acompletion(
                    model=request.model,
                    messages=request.messages,
                    **timeout_argument,
                    **request.params,
                    **request.extra,
                ),
                timeout=timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - every failure is classified; CancelledError is not one
            error = classify(exc, self._secrets)
            error.headers = box or None
            raise error from None
        finally:
            _HEADER_BOX.reset(token)
        dump = getattr(response, "model_dump", None)
        if dump is None:
            raise CallError("permanent", "UnexpectedResponse", f"unexpected response type {type(response).__name__}")
        latency_s = time.monotonic() - started
        try:
            data = dump(mode="json", exclude_none=True)
        except ValueError as exc:  # pydantic's "Maximum serialization depth exceeded", and kin
            raise CallError("permanent", "UnstorableAnswer", f"the answer cannot be read as JSON: {exc}") from None
        return Reply(data, latency_s, box or None)

    @staticmethod
    def _timeout_argument(client: Any, timeout_s: float) -> dict[str, float]:
        # Some providers (ollama, lmstudio, xai, ...) refuse a per-request timeout; for them the
        # asyncio backstop in complete() is the timeout.
        if getattr(client, "TIMEOUT_SUPPORT", "native") == "unsupported":
            return {}
        return {"timeout": timeout_s}

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    async def aclose(self) -> None:
        for client in self._clients.values():
            inner = getattr(client, "client", None)
            close = getattr(inner, "close", None)
            if close is not None:
                try:
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:  # noqa: BLE001 - closing is best effort at shutdown
                    pass
        self._clients.clear()
