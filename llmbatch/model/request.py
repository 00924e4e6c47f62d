"""One validated request: what a line of the input asks for, normalised."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Request", "content_text", "output_cap", "prompt_estimate"]


@dataclass(slots=True)  # not frozen: a frozen __init__ costs an object.__setattr__ call per field
class Request:
    """One validated request. ``messages`` is normalised: a prompt/system line and the
    equivalent messages line give equal values, and so equal keys."""

    line: int
    id: str | int
    provider: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)  # generation parameters for acompletion
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific keyword arguments
    sample: int = 0
    metadata: Any = None
    #: How ``messages`` were normalised before they were keyed and sent (``"whitespace"``), or
    #: None: as the line wrote them. Part of the key only when set (see ``llmbatch.keys``).
    normalize: str | None = None
    #: How the model was chosen: ``"line"`` (its own ``model``), ``"route N"`` (a rule of
    #: ``llmbatch.toml``) or ``"--model"``. Not in the key, nor in equality: the model itself is.
    route: str = field(default="line", compare=False)
    #: Models to ask, in order, when ``model`` fails for good (the route's ``fallback``). Not in the key.
    fallback: tuple[str, ...] = ()
    #: The cascade (the route's ``escalate``): an answer that fails one of these checks
    #: (``answers.failed_check``) is asked again of ``escalate_to``. Not in the key.
    escalate_on: tuple[str, ...] = ()
    escalate_to: str | None = None

    @property
    def model_ref(self) -> str:
        """``provider:model``, as the user writes it."""
        return f"{self.provider}:{self.model}"

    @property
    def output_cap(self) -> int | None:
        """The most output tokens the answer can have, or None when the request sets no cap."""
        return output_cap(self.params)

    def ask_instead(self, at: int) -> Request:
        """The same request for fallback model ``at``, with the rest of the chain after it (a model
        failure of the last one is then as final as for a line with no fallback)."""
        provider, model = self.fallback[at].split(":", 1)
        return replace(self, provider=provider, model=model, fallback=self.fallback[at + 1 :])


def output_cap(params: Mapping[str, Any]) -> int | None:
    """``max_completion_tokens`` (else ``max_tokens``) times ``n``; None when neither is set."""
    cap = params.get("max_completion_tokens") or params.get("max_tokens")
    return None if cap is None else int(cap) * int(params.get("n") or 1)


def content_text(content: Any) -> str:
    """The text of a message's content: a string as it is; of a list of parts, the text parts'
    text (images, audio and files have none)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_estimate(messages: Sequence[Mapping[str, Any]]) -> int:
    """A prompt's tokens before any tokenizer has seen it: about 4 characters a token, plus 4 a
    message. The pacer, ``plan`` and routing all go by this one estimate."""
    return sum(len(content_text(m.get("content"))) for m in messages) // 4 + 4 * len(messages)
