"""What a results file says, summed up: the numbers behind ``llmbatch report``, and its HTML page.

The contract:

- :func:`read_report` reads a results file (or a stream of its lines) **once**, line by line, and
  keeps only counters: by status, by model, by finish reason, by how each line was answered; tokens
  and cost; errors grouped by ``(type, message)`` with the first line of each (at most
  :data:`MAX_ERROR_GROUPS` groups, the rest counted); the first :data:`MAX_LISTED` cut-off lines;
  and one float per **call made** for the latency percentiles (a cache hit's ``latency_ms`` is that
  of the call first paid for it, so hits would count one call many times). A million-line file
  costs a few megabytes.
- A line that is not JSON, or not a result object, is an :class:`~llmbatch.errors.InputError`
  listing ``FILE:LINE: what is wrong`` (up to 100 lines, then a count), never a traceback. A
  missing file is a :class:`~llmbatch.errors.UsageError`.
- Fields that newer runs write are used when present, older files fall back: ``hit``
  (``"exact"``/``"duplicate"``/``null``) else ``cached``; ``truncated`` else
  ``finish_reason == "length"``.
- A ``null`` ``cost_usd`` on an answer means an **unknown** price, never 0: it is counted apart
  (``unpriced``) and shown as "unknown", so a total is never silently too low.
- :meth:`Report.to_dict` is the ``--json`` object (its keys are listed in the README);
  :func:`render_html` returns the whole HTML page as a string: inline CSS and SVG, no script, no
  URL of any kind, every string from the data escaped. ``pricing.format_usd`` and ``errors.printable``
  are shared with the terminal output (``display.print_report``).
"""

from __future__ import annotations

import html
import math
import os
import sys
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmbatch.errors import InputError, LineError, UsageError, printable
from llmbatch.pricing import format_usd
from llmbatch.results import ResultWriter
from llmbatch.units import format_ms

__all__ = [
    "MAX_ERROR_GROUPS",
    "MAX_LISTED",
    "Bucket",
    "ErrorGroup",
    "ModelTally",
    "Report",
    "aggregate",
    "latency_histogram",
    "percentile",
    "read_report",
    "render_html",
    "write_html",
]

#: Distinct (type, message) error groups kept. Messages that embed a request id never group, and a
#: million of them must not all be held: past this, errors are only counted (``other_errors``).
MAX_ERROR_GROUPS = 1000
#: Cut-off lines listed by line number and id; the rest are counted.
MAX_LISTED = 20
#: Invalid lines listed before the rest are only counted (as ``llmbatch run`` does for its input).
MAX_LINE_ERRORS = 100

_HIT_KINDS = {"exact": "cache", "duplicate": "duplicate"}
NO_FINISH_REASON = "(none)"  # the finish_reason key for an answer that has none


# --- text for people ----------------------------------------------------------------------------


# --- the numbers --------------------------------------------------------------------------------


@dataclass(slots=True)
class ModelTally:
    lines: int = 0
    ok: int = 0
    errors: int = 0
    calls: int = 0  # lines answered by a call made in the run that wrote the file
    truncated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # of the priced answers, hits at what they cost when first paid
    spent_usd: float = 0.0  # the part of cost_usd paid by calls made (not from the cache)
    priced: int = 0  # answers with a known cost
    unpriced: int = 0  # answers whose cost_usd is null: unknown, not 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "ok": self.ok,
            "errors": self.errors,
            "calls": self.calls,
            "truncated": self.truncated,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": _money(self.cost_usd) if self.priced or not self.unpriced else None,
            "spent_usd": _money(self.spent_usd) if self.priced or not self.unpriced else None,
            "unpriced": self.unpriced,
        }


@dataclass(slots=True)
class ErrorGroup:
    type: str
    message: str
    status_code: int | None
    count: int
    first_line: int
    first_id: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "status_code": self.status_code,
            "count": self.count,
            "first_line": self.first_line,
            "first_id": self.first_id,
        }


@dataclass(frozen=True, slots=True)
class Bucket:
    """Latencies in ``[from_ms, to_ms)`` (the last bucket includes ``to_ms``); ``overflow`` marks
    the bucket of the slow tail past the 99th percentile, drawn apart so it does not squash the rest."""

    from_ms: float
    to_ms: float
    count: int
    overflow: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"from_ms": self.from_ms, "to_ms": self.to_ms, "count": self.count, "overflow": self.overflow}


@dataclass
class Report:
    source: str
    lines: int = 0
    status: Counter[str] = field(default_factory=Counter)
    answered_by: Counter[str] = field(default_factory=Counter)  # call, cache, duplicate, no_call
    finish_reasons: Counter[str] = field(default_factory=Counter)
    models: dict[str, ModelTally] = field(default_factory=dict)
    retries: int = 0
    error_groups: dict[tuple[str, str], ErrorGroup] = field(default_factory=dict)
    other_errors: int = 0  # errors past MAX_ERROR_GROUPS distinct groups, counted only
    truncated: int = 0
    truncated_first: list[tuple[int, Any]] = field(default_factory=list)
    latencies: array[float] = field(default_factory=lambda: array("d"))  # calls made; sorted by finish()

    # Totals over the models, so that every reader agrees with the per-model table.
    @property
    def prompt_tokens(self) -> int:
        return sum(m.prompt_tokens for m in self.models.values())

    @property
    def completion_tokens(self) -> int:
        return sum(m.completion_tokens for m in self.models.values())

    @property
    def cost_usd(self) -> float | None:
        priced = [m for m in self.models.values() if m.priced]
        return sum(m.cost_usd for m in priced) if priced or not self.unpriced else None

    @property
    def spent_usd(self) -> float | None:
        priced = [m for m in self.models.values() if m.priced]
        return sum(m.spent_usd for m in priced) if priced or not self.unpriced else None

    @property
    def unpriced(self) -> int:
        return sum(m.unpriced for m in self.models.values())

    @property
    def unpriced_models(self) -> list[str]:
        return sorted(name for name, m in self.models.items() if m.unpriced)

    @property
    def errors(self) -> list[ErrorGroup]:
        """Most frequent first; ties in the order they first appeared."""
        return sorted(self.error_groups.values(), key=lambda g: (-g.count, g.first_line))

    def percentile(self, p: float) -> float | None:
        return percentile(self.latencies, p)

    def histogram(self) -> list[Bucket]:
        return latency_histogram(self.latencies)

    def unpriced_note(self) -> str | None:
        """Which models have answers of unknown price, and how many: said wherever a total is shown."""
        models = [(name, m.unpriced) for name, m in sorted(self.models.items()) if m.unpriced]
        if not models:
            return None
        each = ", ".join(f"{printable(name)}: {n:,} answer{'s' if n != 1 else ''}" for name, n in models)
        which = "1 model has" if len(models) == 1 else f"{len(models)} models have"
        return f"{which} no known price ({each}): that cost is unknown, not 0, and is left out of the totals"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "lines": self.lines,
            "status": {"ok": self.status["ok"], "error": self.status["error"]},
            "answered_by": {k: self.answered_by[k] for k in ("call", "cache", "duplicate", "no_call")},
            "finish_reasons": dict(self.finish_reasons.most_common()),
            "models": {name: tally.to_dict() for name, tally in sorted(self.models.items())},
            "tokens": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "total": self.prompt_tokens + self.completion_tokens,
            },
            "cost": {
                "total_usd": _money(self.cost_usd),
                "spent_usd": _money(self.spent_usd),
                "from_cache_usd": _money(_minus(self.cost_usd, self.spent_usd)),
                "unpriced": self.unpriced,
                "unpriced_models": self.unpriced_models,
            },
            "retries": self.retries,
            "latency_ms": {
                "calls": len(self.latencies),
                "p50": self.percentile(50),
                "p90": self.percentile(90),
                "p99": self.percentile(99),
                "max": self.latencies[-1] if self.latencies else None,
                "histogram": [b.to_dict() for b in self.histogram()],
            },
            "errors": [g.to_dict() for g in self.errors],
            "other_errors": self.other_errors,
            "truncated": {
                "count": self.truncated,
                "first": [{"line": line, "id": id_} for line, id_ in self.truncated_first],
                "more": self.truncated - len(self.truncated_first),
            },
        }


def _money(amount: float | None) -> float | None:
    """Sums of floats drift (0.1 + 0.2); twelve decimals keep every real price and drop the drift."""
    return None if amount is None else round(amount, 12)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, a - b)


def percentile(ordered: array[float] | list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence: a latency some call really had."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= raw: bucket edges people can read."""
    exponent = math.floor(math.log10(raw))
    for mantissa in (1, 2, 2.5, 5, 10):
        step = mantissa * 10.0**exponent
        if step >= raw * (1 - 1e-9):
            return step
    return 10.0 ** (exponent + 1)  # pragma: no cover - the loop ends at 10


def latency_histogram(ordered: array[float] | list[float], target: int = 24) -> list[Bucket]:
    """About ``target`` equal buckets with round edges over an ascending sequence of latencies.

    A slow tail (a maximum more than three times the 99th percentile: a few hung calls) would put
    nearly every call in the first bar, so past p99 everything goes into one last overflow bucket."""
    if not ordered:
        return []
    low, high = ordered[0], ordered[-1]
    p99 = percentile(ordered, 99)
    assert p99 is not None
    top = p99 if high > 3 * p99 else high
    step = _nice_step(max((top - low) / target, 0.1))
    start = math.floor(low / step) * step
    n = max(1, math.ceil((top - start) / step - 1e-9))
    edges = [round(start + i * step, 6) for i in range(n + 1)]
    buckets = []
    for i in range(n):
        lo_index = bisect_left(ordered, edges[i])
        hi_index = bisect_left(ordered, edges[i + 1]) if i < n - 1 or top != high else len(ordered)
        buckets.append(Bucket(edges[i], edges[i + 1], hi_index - lo_index))
    counted = sum(b.count for b in buckets)
    if counted < len(ordered):
        buckets.append(Bucket(edges[-1], high, len(ordered) - counted, overflow=True))
    return buckets


# --- reading ------------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _problem(row: Any) -> str | None:
    """Why ``row`` is not a result line, or None. Only what the report relies on is checked."""
    if not isinstance(row, dict):
        return f"not a result line: a JSON object was expected, not {_json_kind(row)}"
    status = row.get("status")
    if status not in ("ok", "error"):
        if "status" not in row and ("prompt" in row or "messages" in row or "body" in row):
            return "not a result line: this looks like a prompt line (llmbatch run writes the results file)"
        return f'not a result line: "status" must be "ok" or "error", not {_shown(status)}'
    if not isinstance(row.get("model"), str):
        return f'"model" must be a string, not {_shown(row.get("model"))}'
    for name in ("latency_ms", "cost_usd"):
        if row.get(name) is not None and not _number(row[name]):
            return f'"{name}" must be a number or null, not {_shown(row[name])}'
    for name in ("cached", "truncated"):
        if row.get(name) is not None and not isinstance(row[name], bool):
            return f'"{name}" must be true or false, not {_shown(row[name])}'
    if row.get("hit") is not None and row["hit"] not in _HIT_KINDS:
        return f'"hit" must be "exact", "duplicate" or null, not {_shown(row["hit"])}'
    for name in ("usage", "error"):
        if row.get(name) is not None and not isinstance(row[name], dict):
            return f'"{name}" must be an object or null, not {_shown(row[name])}'
    if row.get("attempts") is not None and not _number(row["attempts"]):
        return f'"attempts" must be a number, not {_shown(row["attempts"])}'
    return None


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "true/false", type(None): "null"}.get(type(value), "a number")


def _shown(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _tokens(usage: dict[str, Any] | None, name: str) -> int:
    value = usage.get(name) if usage else None
    return int(value) if value is not None and _number(value) else 0


def aggregate(rows: Iterable[tuple[int, dict[str, Any]]], source: str) -> Report:
    """Sum up ``(line number, result line)`` pairs already checked by :func:`_problem`."""
    report = Report(source)
    for number, row in rows:
        _add(report, number, row)
    return _finish(report)


def _add(report: Report, number: int, row: dict[str, Any]) -> None:
    report.lines += 1
    ok = row["status"] == "ok"
    report.status[row["status"]] += 1
    model = row["model"]
    tally = report.models.get(model)
    if tally is None:
        tally = report.models[model] = ModelTally()
    tally.lines += 1

    if "hit" in row:
        how = _HIT_KINDS.get(row["hit"], "call")
    else:
        how = "cache" if row.get("cached") else "call"
    attempts = row.get("attempts") or 0
    if how == "call" and not attempts:
        how = "no_call"  # e.g. a --cache-only miss: an error line that cost nothing
    report.answered_by[how] += 1
    if how == "call":
        tally.calls += 1
        report.retries += max(0, int(attempts) - 1)
        latency = row.get("latency_ms")
        if latency is not None:
            report.latencies.append(float(latency))

    if ok:
        tally.ok += 1
        report.finish_reasons[str(row.get("finish_reason") or NO_FINISH_REASON)] += 1
        usage = row.get("usage")
        tally.prompt_tokens += _tokens(usage, "prompt_tokens")
        tally.completion_tokens += _tokens(usage, "completion_tokens")
        cost = row.get("cost_usd")
        if cost is None:
            tally.unpriced += 1
        else:
            tally.priced += 1
            tally.cost_usd += cost
            if how == "call":
                tally.spent_usd += cost
        truncated = row["truncated"] if row.get("truncated") is not None else row.get("finish_reason") == "length"
        if truncated:
            tally.truncated += 1
            report.truncated += 1
            if len(report.truncated_first) < MAX_LISTED:
                report.truncated_first.append((_line_of(row, number), row.get("id")))
    else:
        tally.errors += 1
        error = row.get("error") or {}
        kind = str(error.get("type") or "unknown")
        message = str(error.get("message") or "")
        group = report.error_groups.get((kind, message))
        if group is not None:
            group.count += 1
        elif len(report.error_groups) < MAX_ERROR_GROUPS:
            code = error.get("status_code")
            report.error_groups[(kind, message)] = ErrorGroup(
                kind, message, code if _number(code) else None, 1, _line_of(row, number), row.get("id")
            )
        else:
            report.other_errors += 1


def _line_of(row: dict[str, Any], number: int) -> int:
    """The input line a result answers (what a user looks up); its place in the results file if absent."""
    line = row.get("line")
    return line if isinstance(line, int) and not isinstance(line, bool) else number


def _finish(report: Report) -> Report:
    report.latencies = array("d", sorted(report.latencies))
    return report


def read_report(name: str) -> Report:
    """Read and sum up the results file ``name`` (``-``: standard input), streaming."""
    if name == "-":
        return _read(sys.stdin.buffer, "<stdin>")
    path = Path(name)
    if not path.exists():
        raise UsageError(f"results file not found: {name}")
    if not path.is_file():
        raise UsageError(f"not a file: {name}")
    try:
        with path.open("rb") as stream:
            return _read(stream, name)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None


def _read(stream: Iterable[bytes], source: str) -> Report:
    report = Report(source)
    errors: list[LineError] = []
    bad = 0
    for number, raw in enumerate(stream, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if raw.endswith(b"\n"):
                message = f"not valid JSON ({exc})"
            else:  # the last line, with no newline: a run still writing, or killed mid-line
                message = "the file ends in the middle of a line (is a run still writing it?)"
            problem: str | None = message
        else:
            problem = _problem(row)
        if problem is not None:
            bad += 1
            if len(errors) < MAX_LINE_ERRORS:
                errors.append(LineError(source, number, problem))
            continue
        if not bad:  # once a line is bad the report is not printed: only look for more bad lines
            _add(report, number, row)
    if bad:
        raise InputError(errors, bad)
    return _finish(report)


# --- the page -----------------------------------------------------------------------------------


def _h(value: object) -> str:
    """Any value from the data, made safe as HTML text or attribute value."""
    return html.escape(printable(value), quote=True)


def write_html(report: Report, path: Path | None, *, source: str | None = None) -> Path | None:
    """Write the page where ``path`` says, by the same rules as results (:func:`llmbatch.results.
    classify_output`): a file written whole, then renamed into place, keeping an existing file's
    mode; a FIFO or a device written in place; None (``-``) standard output. A link we did not
    make, a read-only file, or the results file being read (``source``) is refused. Returns the
    page's path (None: standard output)."""
    if path is not None and source not in (None, "-"):
        same = _same_file(path, Path(source)) or _same_file(path.with_name(path.name + ".partial"), Path(source))
        if same:
            raise UsageError(f"cannot write the page to {path}: it is the results file being read; choose another")
    writer = ResultWriter(path).open()
    try:
        writer.write_bytes(render_html(report).encode("utf-8"))
    except BaseException:
        writer.discard()
        raise
    return writer.finish(True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


_CSS = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5d6675; --line: #e3e6ec; --accent: #3d5afe;
  --accent-soft: #a9b6ff; --bad: #c62828; --warn: #b26a00; --good: #2e7d32; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f6f8; color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 12px; }
.sub { color: var(--muted); margin: 0 0 20px; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 12px; margin-bottom: 18px; }
.card, section { background: #fff; border: 1px solid var(--line); border-radius: 10px; }
.card { padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 13px; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .value.bad { color: var(--bad); } .card .value.warn { color: var(--warn); }
.card .value.good { color: var(--good); }
section { padding: 18px 20px; margin-bottom: 18px; }
.row { display: grid; grid-template-columns: repeat(auto-fit, minmax(240px, 1fr)); gap: 18px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 13px; }
td.n, th.n { text-align: right; white-space: nowrap; }
td.msg { overflow-wrap: anywhere; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; }
td.code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  overflow-wrap: anywhere; }
.note { color: var(--muted); font-size: 14px; margin: 10px 0 0; }
table.truncated { width: auto; min-width: 260px; }
.unknown { color: var(--warn); }
svg { display: block; width: 100%; height: auto; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: var(--muted); }
svg .bar { fill: var(--accent); } svg .bar.overflow { fill: var(--warn); }
svg .spent { fill: var(--accent); } svg .cached { fill: var(--accent-soft); }
svg .grid { stroke: var(--line); } svg .axis { stroke: #aab1bd; }
svg text.label { fill: var(--ink); } svg text.unknown { fill: var(--warn); font-style: italic; }
.legend { display: flex; gap: 16px; color: var(--muted); font-size: 13px; margin: 0 0 8px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px;
  margin-right: 5px; }
.swatch.spent { background: var(--accent); } .swatch.cached { background: var(--accent-soft); }
"""


def _card(label: str, value: str, tone: str = "") -> str:
    return f'<div class="card"><div class="label">{_h(label)}</div><div class="value {tone}">{_h(value)}</div></div>'


def _count_table(title: str, counts: list[tuple[str, int]]) -> str:
    rows = "".join(f'<tr><td>{_h(name)}</td><td class="n">{n:,}</td></tr>' for name, n in counts)
    if not rows:
        rows = '<tr><td colspan="2" class="note">none</td></tr>'
    return f'<div><table><tr><th>{_h(title)}</th><th class="n">lines</th></tr>{rows}</table></div>'


def _count_ticks(peak: int, ticks: int = 4) -> int:
    """A whole-number step of 1, 2 or 5 x 10^k such that ``ticks`` steps reach ``peak``: the
    y axis of a count never shows 0.25 of a call."""
    raw = max(1.0, peak / ticks)
    exponent = math.floor(math.log10(raw))
    for mantissa in (1, 2, 5, 10):
        step = int(mantissa * 10**exponent)
        if step * ticks >= peak:
            return max(step, 1)
    return int(10 ** (exponent + 1))  # pragma: no cover - the loop ends at 10


def _histogram_svg(buckets: list[Bucket]) -> str:
    width, height = 1000, 300
    left, right, top, bottom = 56, 16, 14, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    tick = _count_ticks(max(b.count for b in buckets))
    peak = tick * 4
    slot = plot_w / len(buckets)
    parts = [
        f'<svg class="histogram" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="histogram of the latency of calls made">'
    ]
    for i in range(5):  # horizontal grid with count labels
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{tick * i:,}</text>')
    label_every = max(1, math.ceil(len(buckets) / 10))  # at most ~10 edge labels: no overlaps
    overflow = buckets[-1].overflow
    for i, bucket in enumerate(buckets):
        x = left + i * slot
        h = plot_h * bucket.count / peak
        cls = "bar overflow" if bucket.overflow else "bar"
        span = (
            f"over {format_ms(bucket.from_ms)}"
            if bucket.overflow
            else (f"{format_ms(bucket.from_ms)} to {format_ms(bucket.to_ms)}")
        )
        parts.append(
            f'<rect class="{cls}" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(slot - 2, 1):.1f}" '
            f'height="{h:.1f}"><title>{_h(span)}: {bucket.count:,} calls</title></rect>'
        )
        # An edge label right before the overflow bar's would overlap it.
        crowded = overflow and i > len(buckets) - 1 - label_every and not bucket.overflow
        if (i % label_every == 0 and not crowded) or bucket.overflow:
            text = f"&gt; {_h(format_ms(bucket.from_ms))}" if bucket.overflow else _h(format_ms(bucket.from_ms))
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="{"middle" if i else "start"}">{text}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"/>'
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">latency of a call</text>'
        "</svg>"
    )
    return "".join(parts)


def _short(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _cost_svg(report: Report) -> str:
    models = sorted(
        report.models.items(),
        key=lambda item: (not item[1].priced, -(item[1].cost_usd if item[1].priced else 0), item[0]),
    )
    models = [(name, m) for name, m in models if m.ok]
    row_h, left, width, value_w = 34, 290, 1000, 190
    height = row_h * len(models) + 8
    bar_w = width - left - value_w
    peak = max((m.cost_usd for _, m in models if m.priced), default=0.0)
    parts = [f'<svg class="costs" viewBox="0 0 {width} {height}" role="img" aria-label="cost by model">']
    for i, (name, m) in enumerate(models):
        y = 4 + i * row_h
        parts.append(
            f'<text class="label" x="{left - 12}" y="{y + 21}" text-anchor="end">'
            f"<title>{_h(name)}</title>{_h(_short(name))}</text>"
        )
        if not m.priced:
            calls = f"{m.unpriced:,} answer{'s' if m.unpriced != 1 else ''}"
            parts.append(f'<text class="unknown" x="{left}" y="{y + 21}">unknown price ({calls})</text>')
            continue
        spent_w = bar_w * m.spent_usd / peak if peak else 0
        cached_w = bar_w * (m.cost_usd - m.spent_usd) / peak if peak else 0
        parts.append(
            f'<rect class="spent" x="{left}" y="{y + 6}" width="{spent_w:.1f}" height="20">'
            f"<title>{_h(name)}: {_h(format_usd(m.spent_usd))} spent on calls</title></rect>"
            f'<rect class="cached" x="{left + spent_w:.1f}" y="{y + 6}" width="{cached_w:.1f}" height="20">'
            f"<title>{_h(name)}: {_h(format_usd(m.cost_usd - m.spent_usd))} of answers from the cache</title></rect>"
        )
        extra = f" + {m.unpriced:,} unknown" if m.unpriced else ""
        parts.append(
            f'<text class="label" x="{left + spent_w + cached_w + 8:.1f}" y="{y + 21}">'
            f"{_h(format_usd(m.cost_usd))}{_h(extra)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _cost_text(m: ModelTally, *, spent: bool = False) -> str:
    if not m.priced and m.unpriced:
        return "unknown" if spent else f"unknown ({m.unpriced:,} answer{'s' if m.unpriced != 1 else ''})"
    text = format_usd(m.spent_usd if spent else m.cost_usd)
    return text + (f" + {m.unpriced:,} unknown" if m.unpriced and not spent else "")


def render_html(report: Report) -> str:
    """The whole report as one HTML page: no script, no URL, nothing fetched to view it."""
    data = report.to_dict()
    lat = data["latency_ms"]
    cut = report.truncated
    errors = report.status["error"]
    cards = [
        _card("result lines", f"{report.lines:,}"),
        _card("ok", f"{report.status['ok']:,}", "good" if report.status["ok"] else ""),
        _card("errors", f"{errors:,}", "bad" if errors else ""),
        _card("cut off", f"{cut:,}", "warn" if cut else ""),
        _card("calls made", f"{report.answered_by['call']:,}"),
        _card("cost of all answers", format_usd(report.cost_usd), "warn" if report.cost_usd is None else ""),
        _card("latency p50", format_ms(lat["p50"])),
        _card("latency p99", format_ms(lat["p99"])),
    ]
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light">',
        # Nothing may load: not a font, an image or a script, even if a string slipped through.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>llmbatch report: {_h(report.source)}</title><style>{_CSS}</style></head><body><main>",
        "<h1>llmbatch report</h1>",
        f'<p class="sub">{_h(report.source)}: {report.lines:,} result lines, {len(report.models):,} '
        f"model{'s' if len(report.models) != 1 else ''}</p>",
        f'<div class="cards">{"".join(cards)}</div>',
    ]

    # Latency
    out.append("<section><h2>Latency of the calls made</h2>")
    if report.latencies:
        out.append(_histogram_svg(report.histogram()))
        out.append(
            '<table class="percentiles"><tr><th>answered calls</th><th>p50</th><th>p90</th><th>p99</th>'
            "<th>max</th></tr>"
            f"<tr><td>{lat['calls']:,}</td><td>{format_ms(lat['p50'])}</td><td>{format_ms(lat['p90'])}</td>"
            f"<td>{format_ms(lat['p99'])}</td><td>{format_ms(lat['max'])}</td></tr></table>"
        )
        buckets = report.histogram()
        if buckets[-1].overflow:
            tail = buckets[-1]
            out.append(
                f'<p class="note">The last bar holds the {tail.count:,} slowest call{"s" if tail.count != 1 else ""}, '
                f"from {_h(format_ms(tail.from_ms))} to {_h(format_ms(tail.to_ms))}, past the 99th percentile.</p>"
            )
        out.append(
            '<p class="note">Only answers from calls made are timed: an error line has no latency, and a cache hit '
            "or duplicate keeps the latency of the call first paid for it.</p>"
        )
    else:
        out.append(
            '<p class="note">No answer in this file came from a call made by the run that wrote it (they came from '
            "the cache, and a hit keeps the latency of the call first paid for it).</p>"
        )
    out.append("</section>")

    # Cost
    out.append("<section><h2>Cost by model</h2>")
    if any(m.ok for m in report.models.values()):
        out.append(
            '<div class="legend"><span><span class="swatch spent"></span>spent on calls made'
            '</span><span><span class="swatch cached"></span>answers from the cache (what they '
            "cost when first paid)</span></div>"
        )
        out.append(_cost_svg(report))
    model_rows = "".join(
        f'<tr><td class="code">{_h(name)}</td><td class="n">{m.lines:,}</td><td class="n">{m.ok:,}</td>'
        f'<td class="n">{m.errors:,}</td><td class="n">{m.truncated:,}</td><td class="n">{m.calls:,}</td>'
        f'<td class="n">{m.prompt_tokens:,}</td><td class="n">{m.completion_tokens:,}</td>'
        f'<td class="n{" unknown" if not m.priced and m.unpriced else ""}">{_h(_cost_text(m))}</td>'
        f'<td class="n{" unknown" if not m.priced and m.unpriced else ""}">{_h(_cost_text(m, spent=True))}</td></tr>'
        for name, m in sorted(report.models.items())
    )
    out.append(
        '<table class="models"><tr><th>model</th><th class="n">lines</th><th class="n">ok</th><th class="n">errors'
        '</th><th class="n">cut off</th><th class="n">calls</th><th class="n">tokens in</th><th class="n">tokens out'
        f'</th><th class="n">cost</th><th class="n">spent</th></tr>{model_rows}'
        f'<tr><th>all</th><th class="n">{report.lines:,}</th><th class="n">{report.status["ok"]:,}</th>'
        f'<th class="n">{errors:,}</th><th class="n">{cut:,}</th><th class="n">{report.answered_by["call"]:,}</th>'
        f'<th class="n">{report.prompt_tokens:,}</th><th class="n">{report.completion_tokens:,}</th>'
        f'<th class="n">{_h(format_usd(report.cost_usd))}</th><th class="n">{_h(format_usd(report.spent_usd))}</th>'
        "</tr></table>"
    )
    if report.unpriced:
        out.append(f'<p class="note">{_h(report.unpriced_note())}.</p>')
    out.append("</section>")

    # Counts
    answered = [
        ("a call", report.answered_by["call"]),
        ("the cache", report.answered_by["cache"]),
        ("a duplicate in the file", report.answered_by["duplicate"]),
    ]
    if report.answered_by["no_call"]:
        answered.append(("no call (not answered)", report.answered_by["no_call"]))
    out.append('<section><h2>Counts</h2><div class="row">')
    out.append(_count_table("status", [("ok", report.status["ok"]), ("error", errors)]))
    out.append(_count_table("answered by", answered))
    out.append(_count_table("finish reason (answers)", report.finish_reasons.most_common()))
    out.append("</div>")
    if report.retries:
        out.append(f'<p class="note">{report.retries:,} retries were needed by the calls made.</p>')
    out.append("</section>")

    # Errors
    out.append("<section><h2>Errors</h2>")
    if report.error_groups:
        rows = "".join(
            f'<tr><td class="n">{g.count:,}</td><td class="code">{_h(g.type)}</td>'
            f'<td class="n">{"" if g.status_code is None else _h(g.status_code)}</td>'
            f'<td class="n">{g.first_line:,}</td><td class="code">{_h(g.first_id)}</td>'
            f'<td class="msg">{_h(g.message)}</td></tr>'
            for g in report.errors
        )
        out.append(
            '<table class="errors"><tr><th class="n">count</th><th>type</th><th class="n">status</th>'
            f'<th class="n">first line</th><th>id</th><th>message</th></tr>{rows}</table>'
        )
        if report.other_errors:
            out.append(
                f'<p class="note">and {report.other_errors:,} more errors in other groups (only the first '
                f"{MAX_ERROR_GROUPS:,} distinct messages are kept).</p>"
            )
    else:
        out.append('<p class="note">No line ended in error.</p>')
    out.append("</section>")

    # Cut off
    out.append("<section><h2>Cut-off answers</h2>")
    if cut:
        rows = "".join(
            f'<tr><td class="n">{line:,}</td><td class="code">{_h(id_)}</td></tr>'
            for line, id_ in report.truncated_first
        )
        out.append(
            f"<p>{cut:,} answer{'s were' if cut != 1 else ' was'} cut off at the token limit "
            "(finish reason <code>length</code>).</p>"
            f'<table class="truncated"><tr><th class="n">line</th><th>id</th></tr>{rows}</table>'
        )
        more = cut - len(report.truncated_first)
        if more:
            out.append(f'<p class="note">and {more:,} more.</p>')
    else:
        out.append('<p class="note">No answer was cut off.</p>')
    out.append("</section></main></body></html>\n")
    return "".join(out)
