"""URLs given by people: checked once where they come in, and shown without their secrets.

Every URL llmbatch is handed (``--api-base``, a provider's base URL from its environment variable,
``--cache redis://...``) goes through :func:`checked_url` before anything is opened or sent. A URL
the HTTP client or redis-py cannot use would otherwise fail late: each line retried and written as
``Connection error`` (no scheme, another scheme), or a traceback from ``urlsplit`` (an IPv6 address
not closed). Pure: no I/O.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

from llmbatch.errors import LlmbatchError, UsageError

__all__ = ["HTTP", "REDIS", "SECRET_PARAM", "checked_url", "redact_url", "secret_name"]

HTTP = ("http", "https")
REDIS = ("redis", "rediss", "unix")


def checked_url(
    url: str, *, what: str, schemes: tuple[str, ...] = HTTP, error: type[LlmbatchError] = UsageError
) -> str:
    """``url`` if a client can connect to it: it parses, its scheme is one of ``schemes`` (when
    ``schemes`` is empty, a bare ``host:port`` is accepted too), it names a host (a socket path for
    ``unix://``) and its port is a number. Else ``error`` (exit 2), naming ``what`` (the option or
    variable it came from) and showing the URL without its password."""
    problem = _problem(url, schemes)
    if problem is None:
        return url
    raise error(f"{what} {redact_url(url)}: {problem}")


#: Query parameters whose value is masked when a URL is shown (``?api-key=``, ``?token=``, ``?sig=``,
#: redis-py's ``?password=``): generous, since masking too much in a message costs nothing.
SECRET_PARAM = re.compile(r"key|token|secret|passw|passphrase|passcode|sig|auth|credential|jwt", re.IGNORECASE)

#: The words of a header's or parameter's name that make its value a credential.
#: Plurals too (``X-Api-Keys``, ``client_secrets``), except "tokens": ``X-Max-Tokens`` counts them.
_SECRET_WORDS = frozenset(
    {"key", "keys", "apikey", "apikeys", "token", "secret", "secrets", "password", "passwords", "passwd", "pwd"}
    | {"passphrase", "passcode", "auth", "authn", "authorization", "authentication", "cookie", "cookies"}
    | {"credential", "credentials", "sig", "signature", "bearer", "jwt"}
)


def secret_name(name: str) -> bool:
    """Whether a header or query parameter called ``name`` carries a credential: one of the words of
    its name (split at punctuation and camelCase) is key, token, secret, password, auth, cookie...

    Words, not letters: what is left out of a cache key by this must not change the answer, so
    ``keywords``, ``X-Author-Style`` and ``X-Max-Tokens`` (which may) stay in it, while ``X-API-Key``,
    ``Helicone-Auth``, ``access_token``, ``apiKey``, ``Proxy-Authorization`` and ``?sig=`` are secrets."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return any(word in _SECRET_WORDS for word in re.findall(r"[a-z0-9]+", spaced.lower()))


@lru_cache(maxsize=64)  # a run checks the same few URLs once per key it makes
def _problem(url: str, schemes: tuple[str, ...]) -> str | None:
    if not schemes and "://" not in url:
        url = f"http://{url}"  # a bare host[:port], which some SDKs (Ollama's) take as it is
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed on access: "Port out of range", "could not be cast"
    except ValueError as exc:
        return f"not a URL ({exc})"
    allowed = schemes or HTTP
    if "://" not in url:
        if "unix" in allowed and parts.scheme.lower() == "unix":  # unix:/run/redis.sock: two slashes short
            return f"write unix://{parts.path} (three slashes before an absolute path)"
        return f"no scheme: write {allowed[0]}://{redact_url(url)}"
    if parts.scheme.lower() not in allowed:
        listed = ", ".join(f"{s}://" for s in allowed[:-1]) + f" or {allowed[-1]}://"
        return f"use {'an' if listed[0] in 'aehiou' else 'a'} {listed} URL"
    if parts.scheme.lower() == "unix":
        return None if parts.path else "no socket path, as in unix:///run/redis.sock"
    return None if parts.hostname else "no host"


def redact_url(url: str) -> str:
    """``url`` without its password, whether in the address (``redis://:***@host``, a lone user
    name as ``***@host``: a token often goes there) or in the query (``?password=***``, redis-py's
    form for unix sockets; ``?api-key=***``): what people and logs see. Without a scheme, it is
    shown without one."""
    if "://" not in url:
        return redact_url(f"http://{url}").removeprefix("http://")
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
        elif "@" in netloc:
            netloc = f"***@{netloc.rpartition('@')[2]}"
    except ValueError:  # not a URL at all: show nothing of it but its scheme
        return f"{url.partition(':')[0]}://…"
    query = "&".join(
        f"{name}=***" if SECRET_PARAM.search(name) else f"{name}={value}" if sep else name
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    # Joined by hand: urlunsplit drops the "//" of unix:///path, which is then no longer the URL given.
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )
