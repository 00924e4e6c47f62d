"""What every provider shares: where calls go, what a failure means, and the Provider protocol.

Pure values and functions, no SDK: a fully cached rerun builds keys from a :class:`Destination`
without importing any-llm. The provider that really calls is :mod:`llmbatch.providers.anyllm` (the
only module that imports ``any_llm``); :mod:`llmbatch.providers.workers` runs it in child processes.

Every failure is mapped to a :class:`CallError` that says whether it is worth retrying (429, 408,
409, 5xx, timeouts, dropped connections), permanent for this line (other 4xx, and a 429 for a request
that alone needs more tokens than the tokens-per-minute limit) or fatal for the whole
run (bad key, unknown model, no credit): every other line would fail the same way, so the run stops
instead of filling the output with copies. Any text that came back from a provider is passed through
:func:`redact` before it is put in an error: API keys never leave.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import ipaddress
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from llmbatch.errors import did_you_mean
from llmbatch.keys import SIMULATED_AT, SIMULATOR_HEADER
from llmbatch.model.request import Request
from llmbatch.urls import HTTP, checked_url, secret_name

__all__ = [
    "ENV_API_BASE",
    "PLACEHOLDER_KEYS",
    "REQUEST_TOO_LARGE",
    "SIMULATOR_KEY",
    "CallError",
    "Destination",
    "Provider",
    "Reply",
    "classify",
    "env_endpoints",
    "model_failed",
    "parse_retry_after",
    "redact",
    "unknown_provider",
]

Kind = Literal["retryable", "permanent", "fatal"]

_RETRYABLE_STATUS = frozenset({408, 409, 429})
# Every other line would fail the same way: bad key, no permission, no credit, no such model.
_FATAL_STATUS = frozenset({401, 402, 403, 404})
_FATAL_TYPES = frozenset(
    {
        "AuthenticationError",
        "MissingApiKeyError",
        "InsufficientFundsError",
        "UnsupportedProviderError",
        "ModelNotFoundError",
    }
)
#: The key sent to local servers that need none (the SDK insists on one), and the simulator's:
#: not secrets, so never redacted (an answer may well say "not-needed").
PLACEHOLDER_KEY = "not-needed"
SIMULATOR_KEY = "llmbatch-simulator"
PLACEHOLDER_KEYS = frozenset({PLACEHOLDER_KEY, SIMULATOR_KEY})
# Things that look like secret keys, in case a provider echoes one we did not send ourselves.
_KEYLIKE = re.compile(r"\b(sk|pk|rk|key|api)[-_][A-Za-z0-9_\-*]{8,}\b", re.IGNORECASE)


#: Every provider any-llm knows, with the environment variable it reads its base URL from (its
#: ``ENV_API_BASE_NAME``). Copied here so that building cache keys, and telling a misspelt provider
#: on an input line, never import any-llm (a fully cached rerun or a plan must not pay for the
#: SDKs); ``tests/test_provider.py`` checks it against the installed any-llm, so an upgrade that
#: adds or renames one fails CI instead of a key going wrong or a provider being refused.
ENV_API_BASE: dict[str, str] = {
    "anthropic": "ANTHROPIC_BASE_URL",
    "atlascloud": "ATLASCLOUD_API_BASE",
    "azure": "AZURE_AI_CHAT_ENDPOINT",
    "azureanthropic": "AZURE_ANTHROPIC_API_BASE",
    "azureopenai": "AZURE_OPENAI_ENDPOINT",
    "bedrock": "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "cascadia": "CASCADIA_API_BASE",
    "cerebras": "CEREBRAS_API_BASE",
    "cohere": "COHERE_BASE_URL",
    "dashscope": "DASHSCOPE_API_BASE",
    "databricks": "DATABRICKS_HOST",
    "deepinfra": "DEEPINFRA_API_BASE",
    "deepseek": "DEEPSEEK_API_BASE",
    "edenai": "EDENAI_API_BASE",
    "fireworks": "FIREWORKS_API_BASE",
    "gemini": "GOOGLE_GEMINI_BASE_URL",
    "github": "GITHUB_MODELS_API_BASE",
    "gmi": "GMI_API_BASE",
    "groq": "GROQ_BASE_URL",
    "huggingface": "HUGGINGFACE_API_BASE",
    "inception": "INCEPTION_API_BASE",
    "kenari": "KENARI_API_BASE",
    "liner": "LINER_API_BASE",
    "llama": "LLAMA_API_BASE",
    "llamacpp": "LLAMACPP_API_BASE",
    "llamafile": "LLAMAFILE_API_BASE",
    "lmstudio": "LM_STUDIO_API_BASE",
    "meta": "META_API_BASE",
    "minimax": "MINIMAX_API_BASE",
    "mistral": "MISTRAL_API_BASE",
    "moonshot": "MOONSHOT_API_BASE",
    "mzai": "ANY_LLM_PLATFORM_URL",
    "nebius": "NEBIUS_API_BASE",
    "neosantara": "NEOSANTARA_API_BASE",
    "ollama": "OLLAMA_HOST",
    "openai": "OPENAI_BASE_URL",
    "openrouter": "OPENROUTER_API_BASE",
    "otari": "OTARI_API_BASE",
    "perplexity": "PERPLEXITY_BASE_URL",
    "portkey": "PORTKEY_API_BASE",
    "qiniu": "QINIU_API_BASE",
    "requesty": "REQUESTY_API_BASE",
    "sagemaker": "SAGEMAKER_ENDPOINT_URL",
    "sambanova": "SAMBANOVA_API_BASE",
    "telnyx": "TELNYX_API_BASE",
    "together": "TOGETHER_API_BASE",
    "typesafe": "TYPESAFE_BASE_URL",
    "vertexai": "VERTEXAI_API_BASE",
    "vertexaianthropic": "VERTEXAI_ANTHROPIC_API_BASE",
    "vllm": "VLLM_API_BASE",
    "voyage": "VOYAGE_API_BASE",
    "watsonx": "WATSONX_URL",
    "xai": "XAI_API_BASE",
    "zai": "ZAI_BASE_URL",
}


#: Providers whose SDK takes a bare ``host:port`` as well as a URL (Ollama's client adds the scheme;
#: ``OLLAMA_HOST=0.0.0.0`` is a common setting, left for ``ollama serve``).
_BARE_HOST_OK = frozenset({"ollama"})


def unknown_provider(name: str) -> str | None:
    """What is wrong with ``name`` when it is no provider any-llm knows (with the closest one that
    is: any-llm's own message lists all of them), else None. Pure, so that a typo is caught while
    the file is checked, by ``plan`` and ``--simulate`` too, before any SDK is imported."""
    return None if name in ENV_API_BASE else f"unknown provider {name!r}{did_you_mean(name, ENV_API_BASE)}"


def env_endpoints(environ: Mapping[str, str]) -> dict[str, str]:
    """Per provider, the base URL its calls will go to when the environment redirects them.

    Without this, answers from a local server reached through ``OPENAI_BASE_URL`` would share
    keys with the real OpenAI's: the wrong cache hit users fear most.
    """
    return {provider: environ[name] for provider, name in ENV_API_BASE.items() if environ.get(name)}


class CallError(Exception):
    """One failed attempt, classified. ``message`` is safe to show and store; ``headers`` are the
    rate-limit headers of the refusal, when there was an HTTP answer."""

    def __init__(
        self,
        kind: Kind,
        type_: str,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.type = type_
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.headers = headers

    @property
    def retryable(self) -> bool:
        return self.kind == "retryable"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "status_code": self.status_code}


_CONTEXT_LENGTH = re.compile(r"context[ _-]?(length|window)|maximum context|too many tokens|prompt is too long", re.I)


def model_failed(error: Mapping[str, Any]) -> bool:
    """A failure (``CallError.to_dict()``, after its retries) that another model may not share: the model
    does not exist (404), it stayed overloaded past every retry (5xx, Anthropic's 529), or the prompt is
    longer than its context (a 400 that says so). A route's ``fallback`` moves on after these. A bad key
    (401/403), no credit (402) or a request no model takes (another 400) would fail there too."""
    status, type_ = error.get("status_code"), error.get("type")
    if status == 404 or type_ == "ModelNotFoundError":
        return True
    if isinstance(status, int) and status >= 500:
        return True
    if type_ == "ContextLengthExceededError":
        return True
    return status == 400 and _CONTEXT_LENGTH.search(str(error.get("message") or "")) is not None


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove every known secret and anything shaped like an API key from ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: a number of seconds or an HTTP date."""
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _header(exc: BaseException, *names: str) -> str | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name in names:
        value = headers.get(name)
        if value is not None:
            return str(value)
    return None


def _kind(type_: str, status: int | None, code: Any) -> Kind:
    """The decision itself. The HTTP status, when there is one, decides: it is what the server
    said, while any-llm picks its exception type from the message text (a 400 whose message
    mentions "auth" arrives as an AuthenticationError, and must not stop the run)."""
    if code == "insufficient_quota":
        return "fatal"  # OpenAI's 429 for an account out of credit: waiting will not help
    if status is not None:
        if status in _FATAL_STATUS:
            return "fatal"
        if status in _RETRYABLE_STATUS or status >= 500:
            return "retryable"
        return "permanent"
    if type_ in _FATAL_TYPES:
        return "fatal"
    if type_ in ("RateLimitError", "ProviderError", "UpstreamProviderError", "GatewayTimeoutError"):
        return "retryable"  # no status: the connection failed or timed out before an answer came
    return "permanent"


#: The type of a request that needs more tokens than the tokens-per-minute limit allows: no wait
#: helps, so it fails for good at once (refused by the provider, or before it is sent when its
#: estimate is already over the limit the run knows).
REQUEST_TOO_LARGE = "RequestTooLarge"
#: How providers say it. OpenAI: "Request too large for gpt-4o-mini in organization org-… on tokens
#: per min (TPM): Limit 30000, Requested 50000. The input or output tokens must be reduced in order
#: to run successfully."; the simulator: "Request too large: it needs 70 tokens, the limit is 60".
#: Both come as a 429 without Retry-After, which would otherwise be retried (and paced) in vain.
_TOO_LARGE = re.compile(r"request too large", re.IGNORECASE)


def _too_large(status: int | None, message: str) -> bool:
    return status == 429 and _TOO_LARGE.search(message) is not None


_CONNECT_FAILURES = frozenset({"ConnectError", "ConnectTimeout", "ClientConnectorError"})


def _never_connected(exc: BaseException) -> bool:
    """The request never reached a server. httpx says APIConnectionError <- ConnectError; the
    aiohttp transport says APITimeoutError <- ConnectTimeout, even for a refused connection."""
    seen: BaseException | None = exc
    for _ in range(5):  # the cause chain is short; never loop on a cyclic one
        if seen is None:
            return False
        if type(seen).__name__ in _CONNECT_FAILURES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def classify(exc: BaseException, secrets: tuple[str, ...] = ()) -> CallError:
    """Map anything a call raised to a :class:`CallError` (pure: reads attributes only)."""
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return CallError("retryable", "Timeout", "the request timed out")
    type_ = type(exc).__name__
    message = redact(str(getattr(exc, "message", None) or exc) or type_, secrets)
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    original = getattr(exc, "original_exception", None) or exc
    retry_after = parse_retry_after(getattr(exc, "retry_after", None) or _header(original, "retry-after"))
    if retry_after is None:
        ms = _header(original, "retry-after-ms")
        retry_after = float(ms) / 1000 if ms and ms.replace(".", "", 1).isdigit() else None

    kind = _kind(type_, status, getattr(exc, "code", None))
    if status is None and _never_connected(original):
        type_ = "ConnectionError"  # nothing answered at all (refused, unknown host)
    if kind == "retryable" and _too_large(status, message):
        kind, type_ = "permanent", REQUEST_TOO_LARGE
        message = (
            "the request alone needs more tokens than the provider's tokens-per-minute limit, so no wait "
            f"can help: lower max_tokens or split the prompt (the provider said: {message})"
        )
    return CallError(kind, type_, message, status_code=status, retry_after_s=retry_after)


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful call: the provider's response as JSON-ready data, how long the call took
    (measured around the request itself, not the one-off client set-up), and the rate-limit
    headers that came with it."""

    response: dict[str, Any]
    latency_s: float
    headers: dict[str, str] | None = None


def without_credentials(url: str) -> str:
    """``url`` with no user, password or secret-bearing query parameter: a base URL such as
    ``https://user:token@proxy/v1`` or ``https://proxy/v1?api-key=...`` authenticates the calls, and
    those credentials must never be written where answers are kept. The same server with other
    credentials gives the same answers, so nothing the key must tell apart is lost."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        item for item in parts.query.split("&") if item and not secret_name(item.partition("=")[0])
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as given: keys of URLs without credentials never move
    return urlunsplit(parts._replace(netloc=netloc, query=query))


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def simulator_at(url: str) -> bool:
    """Whether ``llmbatch sim`` is what answers at ``url``, asked (once per run and address, by
    :meth:`Destination.key_endpoint`) only of a loopback address, where a rehearsal runs and nothing
    leaves the machine, by a plain GET of its model list, which the simulator does not count.

    Without this, answers rehearsed on ``llmbatch sim --port 8000`` were filed under the same keys
    as those of the vLLM later started on port 8000, and served as its answers: the wrong hit users
    fear most. A server that cannot be reached is taken for a real one (its keys stay as they
    were), so a simulated answer is only ever served while the simulator itself is there."""
    try:
        host = urlsplit(url).hostname or ""
        loopback = host.lower() in _LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return False
    # No proxy: a loopback address is never reached through one (HTTP_PROXY may be set).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/models", timeout=2) as response:
            headers = response.headers
    except urllib.error.HTTPError as exc:
        headers = exc.headers
    except (OSError, ValueError):  # refused, timed out, not HTTP
        return False
    return headers is not None and headers.get(SIMULATOR_HEADER) is not None


@dataclass(frozen=True, slots=True)
class Destination:
    """Where calls go, and so the endpoint their keys record.

    One value, handed to the provider that sends the calls (:class:`AnyLLMProvider`,
    ``workers.WorkerPool``) and read back from it by whatever computes keys: the base URL that
    enters a key is the one the calls really go to, so a local server's answers can never be filed
    under a real provider's keys. ``api_base``: every call goes there. ``namespace``: recorded
    instead of any URL (the simulator's answers get their own, whatever port it has). ``env``: per
    provider, the base URL its environment variable sends calls to (``OPENAI_BASE_URL``, ...).
    """

    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed
    force_provider: str | None = None
    namespace: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    #: Base URL -> whether the simulator answers there: asked once per destination (a run), never
    #: per process, since a long-lived process may meet a real server where the simulator was.
    _simulated: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        force_provider: str | None = None,
        namespace: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Destination:
        """A destination, with the environment's base URLs read now (they are read once per run)."""
        if api_base is not None:
            checked_url(api_base, what="--api-base")
        env = env_endpoints(os.environ if environ is None else environ) if api_base is None else {}
        return cls(api_base, api_key, force_provider, namespace, env)

    def key_endpoint(self, provider: str) -> str | None:
        """The endpoint recorded in the key of a request to ``provider`` (and so in every cache
        entry, export and job record): the base URL without any credentials it carries, marked
        when llmbatch's own simulator answers there (:func:`simulator_at`).

        The environment's URL is checked here, the first time a line needs it (while the input is
        checked, before anything is sent), not when it is read: a broken variable of a provider
        the run does not use must not stop it."""
        if self.namespace is not None:
            return self.namespace
        endpoint = self.api_base
        if endpoint is None and (endpoint := self.env.get(provider)) is not None:
            bare = provider in _BARE_HOST_OK
            checked_url(endpoint, what=ENV_API_BASE[provider], schemes=() if bare else HTTP)
        if endpoint is None:
            return None
        endpoint = without_credentials(endpoint)
        simulated = self._simulated.get(endpoint)
        if simulated is None:
            simulated = self._simulated[endpoint] = simulator_at(endpoint)
        return f"{SIMULATED_AT}{endpoint}" if simulated else endpoint

    def budget_identity(self, provider: str, environ: Mapping[str, str] | None = None) -> str:
        """Whose rate limits the calls to ``provider`` spend, without saying who: a fingerprint of
        the API key in use (the simulator's, or ``{PROVIDER}_API_KEY``) and the endpoint. Runs on
        any machine with the same key and endpoint share one pace; the key itself never leaves."""
        environ = os.environ if environ is None else environ
        key = self.api_key or environ.get(f"{provider.upper()}_API_KEY") or ""
        material = "\0".join((provider, key, self.api_base or self.env.get(provider) or self.namespace or ""))
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    @property
    def tag_prefix(self) -> str:
        """Prefix of each entry's ``provider:model`` tag: simulated answers are listed apart."""
        return "simulated/" if self.namespace is not None else ""


class Provider(Protocol):
    """What the engine needs from a provider: :class:`~llmbatch.providers.anyllm.AnyLLMProvider`,
    or :class:`~llmbatch.providers.workers.WorkerPool` for calls made by child processes."""

    #: Where the calls go; the keys record its endpoint.
    destination: Destination

    def prepare(self, request: Request) -> Awaitable[None] | None:
        """Get ready to send ``request`` (create the client); raise CallError if it cannot be
        sent at all (no API key, unknown provider). Nothing is sent, so nothing is counted.
        May be a coroutine (``WorkerPool`` asks its children) or a plain function."""

    async def complete(self, request: Request, *, timeout_s: float) -> Reply: ...

    @property
    def secrets(self) -> tuple[str, ...]:
        """The API keys in use: redacted from anything stored or written."""

    @property
    def lost(self) -> int:
        """Worker processes that died during the run (0 for a provider in this process)."""

    async def aclose(self) -> None: ...
