"""``llmbatch.toml``: defaults per ``provider:model`` (rpm, tpm, concurrency, normalize, prices).

Read from ``--config FILE``, else ``llmbatch.toml`` in the working directory if there is one.
Command-line options win over the file::

    normalize = "whitespace"        # prompt normalisation for every model not named below

    [models."openai:gpt-4o-mini"]
    rpm = 500
    tpm = 200000
    concurrency = 32

    [models."anthropic:claude-sonnet-4-5"]
    rpm = 50
    normalize = "none"              # this one's prompts are code: keep their layout

    [models."vllm:llama-3.1-8b"]     # a model genai-prices has no price for
    input_per_million = 0.10        # USD per million input tokens
    output_per_million = 0.40       # USD per million output tokens

    [[route]]                       # routing rules: see llmbatch.input.routes
    when  = { metadata = { task = "extract" } }
    model = "openai:gpt-4o-mini"

Pure parsing (:func:`parse_config`) is separate from reading the file, so every rule is tested
on strings.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbatch.errors import UsageError, did_you_mean
from llmbatch.input.normalize import parse_mode
from llmbatch.input.routes import Route, RouteError, parse_routes
from llmbatch.limits import LimitSettings
from llmbatch.pricing import ModelPrice

__all__ = ["CONFIG_NAME", "Config", "load_config", "merge_limits", "merge_normalize", "parse_config"]

CONFIG_NAME = "llmbatch.toml"
_LIMIT_KEYS = ("rpm", "tpm", "concurrency")
_PRICE_KEYS = ("input_per_million", "output_per_million")
_MODEL_KEYS = (*_LIMIT_KEYS, "normalize", *_PRICE_KEYS)
_TOP_KEYS = ("models", "normalize", "route")


@dataclass(frozen=True, slots=True)
class Config:
    source: str | None = None
    #: Limits per provider:model (only the models whose table sets one, or sets nothing at all).
    models: dict[str, LimitSettings] = field(default_factory=dict)
    #: Prompt normalisation per provider:model ("whitespace", or None where "none" turns it off).
    normalize_models: dict[str, str | None] = field(default_factory=dict)
    #: The top-level ``normalize``: for every model without its own.
    normalize: str | None = None
    #: ``[[route]]`` rules, in file order: which model a line without its own goes to.
    routes: tuple[Route, ...] = ()
    #: Prices per provider:model, used where genai-prices has none.
    prices: dict[str, ModelPrice] = field(default_factory=dict)


def _problem(source: str, text: str) -> UsageError:
    return UsageError(f"{source}: {text}")


def _positive_int(source: str, where: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _problem(source, f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def parse_config(text: str, source: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _problem(source, f"not valid TOML: {exc}") from None
    for name in data:
        if name not in _TOP_KEYS:
            raise _problem(
                source, f'unknown table "{name}" (llmbatch reads [models."provider:model"], [[route]] and normalize)'
            )
    try:
        routes = parse_routes(data["route"]) if "route" in data else ()
    except RouteError as exc:
        raise _problem(source, str(exc)) from None
    default = _normalize(source, "", data["normalize"]) if "normalize" in data else None
    models: dict[str, LimitSettings] = {}
    normalize_models: dict[str, str | None] = {}
    prices: dict[str, ModelPrice] = {}
    table = data.get("models", {})
    if not isinstance(table, dict):
        raise _problem(source, 'models must be a table: [models."provider:model"]')
    for model, values in table.items():
        where = f'[models."{model}"]'
        if ":" not in model:
            raise _problem(source, f'{where}: name models as provider:model, like "openai:gpt-4o-mini"')
        if not isinstance(values, dict):
            raise _problem(source, f"{where} must be a table")
        for key in values:
            if key not in _MODEL_KEYS:
                raise _problem(source, f'{where}: unknown setting "{key}"{did_you_mean(key, _MODEL_KEYS)}')
        name = model.split(":", 1)[0].lower() + ":" + model.split(":", 1)[1]
        if "normalize" in values:
            normalize_models[name] = _normalize(source, f"{where}: ", values["normalize"])
        if any(k in values for k in _PRICE_KEYS):
            prices[name] = _price(source, where, values)
        settings = {k: _positive_int(source, where, k, v) for k, v in values.items() if k in _LIMIT_KEYS}
        # A table that only sets normalize or prices sets no limits: the run must not announce "limits from".
        if settings or not any(k in values for k in ("normalize", *_PRICE_KEYS)):
            models[name] = LimitSettings(**settings)
    return Config(
        source=source,
        models=models,
        normalize_models=normalize_models,
        normalize=default,
        routes=routes,
        prices=prices,
    )


def _price(source: str, where: str, values: dict[str, Any]) -> ModelPrice:
    """Both prices, or neither: a model priced for input alone would look cheaper than it is."""
    missing = [k for k in _PRICE_KEYS if k not in values]
    if missing:
        raise _problem(source, f"{where}: {missing[0]} is missing (give both input_per_million and output_per_million)")
    amounts = []
    for key in _PRICE_KEYS:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
            raise _problem(source, f"{where}: {key} must be USD per million tokens, like 0.15, got {value!r}")
        amounts.append(float(value))
    return ModelPrice(input_per_million=amounts[0], output_per_million=amounts[1])


def _normalize(source: str, where: str, value: Any) -> str | None:
    try:
        return parse_mode(value)
    except ValueError as exc:
        raise _problem(source, f"{where}normalize {exc}") from None


def load_config(path: Path | None, cwd: Path | None = None) -> Config:
    """The file named, or ``llmbatch.toml`` in ``cwd`` when it exists, or no settings at all."""
    if path is None:
        candidate = (cwd or Path.cwd()) / CONFIG_NAME
        if not candidate.is_file():
            return Config()
        path = candidate
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise _problem(str(path), f"not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, str(path))


def merge_limits(config: Config, *, rpm: int | None, tpm: int | None) -> tuple[dict[str, LimitSettings], LimitSettings]:
    """Per-model settings and the default for other models; ``--rpm``/``--tpm`` win everywhere."""
    models = {
        model: LimitSettings(rpm=rpm or s.rpm, tpm=tpm or s.tpm, concurrency=s.concurrency)
        for model, s in config.models.items()
    }
    return models, LimitSettings(rpm=rpm, tpm=tpm)


def merge_normalize(config: Config, flag: str | None) -> tuple[dict[str, str | None], str | None]:
    """Normalisation per model and for other models. ``flag`` is ``--normalize`` as typed (None:
    not given); given, it applies to every model, whatever the file says, so ``--normalize none``
    turns the file's normalisation off for one run. An unknown value is a :class:`UsageError`."""
    if flag is None:
        return dict(config.normalize_models), config.normalize
    try:
        return {}, parse_mode(flag)
    except ValueError as exc:
        raise UsageError(f"--normalize {exc}") from None
