"""Routing rules: which model a line without its own ``model`` goes to. Pure: :func:`parse_routes`
turns the ``[[route]]`` tables of ``llmbatch.toml`` into :class:`Route` values (or raises
:class:`RouteError` naming the rule), and :func:`choose_route` picks the first rule a line matches.

::

    [[route]]
    when  = { metadata = { task = "extract" } }   # and/or prompt_tokens_below = 400, match = "regex"
    model = "openai:gpt-4o-mini"

    [[route]]                                      # no `when`: the default route, matches every line
    model    = "openai:gpt-4o"
    fallback = ["anthropic:claude-sonnet-4-5"]     # when the model fails for good
    escalate = { on = ["length", "invalid_json"], to = "openai:gpt-4o" }   # the cascade

Precedence (decided in :mod:`llmbatch.input.shapes`): a line's own ``model``, then the first route
whose every condition holds, then ``--model``. The conditions of one ``when`` must all hold:

* ``metadata``: each key is in the line's ``metadata`` object with an equal value;
* ``prompt_tokens_below``: the prompt's estimated tokens (characters / 4 plus 4 a message, as the
  pacer and ``plan`` estimate them) are fewer than N;
* ``match``: the regular expression is found (``re.search``) in the messages' text, joined by newlines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmbatch.errors import did_you_mean
from llmbatch.model.request import content_text, prompt_estimate
from llmbatch.providers.base import unknown_provider

__all__ = [
    "CHECKS",
    "CONDITIONS",
    "Route",
    "RouteError",
    "choose_route",
    "parse_routes",
    "route_order",
]

#: What a ``when`` may test.
CONDITIONS = ("metadata", "prompt_tokens_below", "match")
_ROUTE_KEYS = ("when", "model", "fallback", "escalate")
#: What an answer can fail, to be asked again of ``escalate.to`` (``llmbatch.answers.failed_check``).
CHECKS = ("length", "invalid_json")


class RouteError(ValueError):
    """A rule is wrong; the message starts with ``route N:`` (rules count from 1, as in the file)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One rule. ``number`` counts from 1 in file order; a route without conditions matches every line."""

    number: int
    model: str  # provider:model, provider lower-cased
    metadata: Mapping[str, Any] | None = None
    prompt_tokens_below: int | None = None
    match: re.Pattern[str] | None = None
    #: Models to ask, in order, when ``model`` fails for good.
    fallback: tuple[str, ...] = field(default=())
    #: The checks (:data:`CHECKS`) whose failure sends the line to ``escalate_to``; empty: no cascade.
    escalate_on: tuple[str, ...] = field(default=())
    escalate_to: str | None = None

    @property
    def label(self) -> str:
        return f"route {self.number}"

    def matches(self, metadata: Any, messages: Sequence[Mapping[str, Any]]) -> bool:
        if self.metadata is not None:
            if not isinstance(metadata, dict):
                return False
            if any(name not in metadata or metadata[name] != value for name, value in self.metadata.items()):
                return False
        if self.prompt_tokens_below is not None and prompt_estimate(messages) >= self.prompt_tokens_below:
            return False
        return self.match is None or self.match.search(_text(messages)) is not None


def choose_route(routes: Sequence[Route], metadata: Any, messages: Sequence[Mapping[str, Any]]) -> Route | None:
    """The first route the line matches, or None."""
    for route in routes:
        if route.matches(metadata, messages):
            return route
    return None


def route_order(label: str) -> tuple[int, int]:
    """How ``Request.route`` labels sort for people: routes in file order, then the lines' own
    models, then ``--model``."""
    if label.startswith("route "):
        return 0, int(label.split()[1])
    return (1, 0) if label == "line" else (2, 0)


def _text(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(content_text(m.get("content")) for m in messages)


# --- parsing ---------------------------------------------------------------------------------


def parse_routes(value: Any) -> tuple[Route, ...]:
    """The ``route`` array of tables, checked: every problem is a :class:`RouteError`."""
    if not isinstance(value, list):
        raise RouteError("route must be an array of tables: write each rule as [[route]]")
    return tuple(_parse_route(number, table) for number, table in enumerate(value, 1))


def _parse_route(number: int, table: Any) -> Route:
    where = f"route {number}"
    if not isinstance(table, dict):
        raise RouteError(f"{where} must be a table: write it as [[route]]")
    for key in table:
        if key not in _ROUTE_KEYS:
            raise RouteError(f'{where}: unknown setting "{key}"{did_you_mean(key, _ROUTE_KEYS)}')
    if "model" not in table:
        raise RouteError(f'{where}: no model (add model = "provider:model")')
    model = _model_ref(where, "model", table["model"])
    fallback = table.get("fallback", [])
    if not isinstance(fallback, list):
        raise RouteError(f'{where}: fallback must be an array of models, like ["anthropic:claude-sonnet-4-5"]')
    chain = tuple(_model_ref(where, "fallback", m) for m in fallback)
    escalate_on, escalate_to = _escalate(where, table["escalate"]) if "escalate" in table else ((), None)
    when = table.get("when", {})
    if not isinstance(when, dict):
        raise RouteError(f'{where}: when must be a table, like when = {{ metadata = {{ task = "extract" }} }}')
    for name in when:
        if name not in CONDITIONS:
            known, hint = ", ".join(CONDITIONS), did_you_mean(name, CONDITIONS)
            raise RouteError(f'{where}: unknown condition "{name}"{hint} (llmbatch reads {known})')
    return Route(
        number=number,
        model=model,
        metadata=_metadata(where, when["metadata"]) if "metadata" in when else None,
        prompt_tokens_below=_below(where, when["prompt_tokens_below"]) if "prompt_tokens_below" in when else None,
        match=_regex(where, when["match"]) if "match" in when else None,
        fallback=chain,
        escalate_on=escalate_on,
        escalate_to=escalate_to,
    )


def _model_ref(where: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RouteError(f'{where}: {name} must be a "provider:model" string, got {value!r}')
    provider, _, model = value.strip().partition(":")
    if not provider or not model:
        raise RouteError(
            f'{where}: {name} {value!r} has no provider: write it as "provider:model" (for example "openai:{value}")'
        )
    why = unknown_provider(provider.lower())
    if why is not None:
        raise RouteError(f"{where}: {name} {value!r}: {why}")
    return f"{provider.lower()}:{model}"


def _escalate(where: str, value: Any) -> tuple[tuple[str, ...], str]:
    example = 'escalate = { on = ["length", "invalid_json"], to = "openai:gpt-4o" }'
    if not isinstance(value, dict):
        raise RouteError(f"{where}: escalate must be a table, like {example}")
    for key in value:
        if key not in ("on", "to"):
            raise RouteError(f'{where}: unknown escalate setting "{key}" (llmbatch reads on and to)')
    if "to" not in value:
        raise RouteError(f"{where}: escalate has no to, like {example}")
    on = value.get("on", list(CHECKS))
    if not isinstance(on, list) or not on:
        raise RouteError(f"{where}: escalate.on must be a non-empty array of {', '.join(CHECKS)}")
    for check in on:
        if check not in CHECKS:
            known, hint = ", ".join(CHECKS), did_you_mean(str(check), CHECKS)
            raise RouteError(f"{where}: escalate.on: unknown check {check!r}{hint} ({known})")
    return tuple(dict.fromkeys(on)), _model_ref(where, "escalate.to", value["to"])


def _metadata(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not value:
        raise RouteError(f'{where}: metadata must be a table of values to match, like {{ task = "extract" }}')
    return dict(value)


def _below(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RouteError(f"{where}: prompt_tokens_below must be a positive integer, got {value!r}")
    return value


def _regex(where: str, value: Any) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise RouteError(f"{where}: match must be a regular expression in a string, got {value!r}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise RouteError(f"{where}: match {value!r} is not a valid regular expression: {exc}") from None
