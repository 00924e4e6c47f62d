"""Opt-in prompt normalisation (``--normalize whitespace``, ``normalize = "whitespace"``).

Why: the same prompt often reaches a batch in several spellings that differ only in layout (a
template's trailing newline, indentation from a notebook, two spaces after a full stop). A
provider is paid for each spelling, and each gets its own cache key, so the "same" question is
answered and paid for several times. Normalising first makes those spellings one request: one
key, one call, and a shorter prompt sent.

Why it is off by default: whitespace can be the meaning (code, poetry, Markdown tables, a
``diff``, text the model is asked to reformat), and a model answers such text differently once
its layout is gone. Only the user knows whether layout matters in their prompts.

What ``whitespace`` does: every run of whitespace (spaces, tabs, newlines, any Unicode space) in
each message's text becomes one space, and the text is trimmed. It applies to every role
(a system prompt with a trailing newline is the commonest variant) and, in content that is a list
of parts, to the ``text`` of ``{"type": "text"}`` parts only: images, audio and files are left as
they are. Nothing but text content changes (roles, names, tool calls and their ids are kept).

Pure: values in, new values out; the input is never changed in place.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODES", "normalize_messages", "normalize_whitespace", "parse_mode"]

#: What ``--normalize`` and ``normalize =`` accept. ``none`` turns it off: in ``llmbatch.toml`` for
#: one model under a file-wide default, on the command line for every model of one run.
MODES = ("whitespace", "none")


def parse_mode(value: object) -> str | None:
    """``"whitespace"`` or None (off) from what a user wrote; ValueError saying what is accepted."""
    if value not in MODES:
        raise ValueError(f"must be one of {', '.join(MODES)}, got {value!r}")
    return None if value == "none" else str(value)


def normalize_whitespace(text: str) -> str:
    """Runs of whitespace to one space, ends trimmed: ``" a\\n\\n  b\\t"`` -> ``"a b"``."""
    return " ".join(text.split())


def normalize_messages(messages: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """``messages`` with each message's text content normalised by ``mode`` (only ``whitespace``
    exists); messages without text content come back as they were."""
    if mode != "whitespace":
        raise ValueError(f"unknown normalisation {mode!r}")
    return [_message(message) for message in messages]


def _message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": normalize_whitespace(content)}
    if isinstance(content, list):
        return {**message, "content": [_part(part) for part in content]}
    return message  # no content: an assistant turn that only calls tools


def _part(part: Any) -> Any:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return {**part, "text": normalize_whitespace(part["text"])}
    return part  # an image, audio, a file: bytes or a URL, never whitespace to tidy
