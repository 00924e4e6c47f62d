"""What the user sees on stderr while a run goes and when it ends. The only module that imports rich.

Three modes:
- ``live``: on a terminal, a rich display redrawn a few times a second: bar, done/total, cache
  hits, calls (misses), coalesced duplicates, errors, retries, in flight, rate, tokens, elapsed
  and ETA;
- ``plain``: when stderr is not a terminal (CI logs, ``2> log``), one plain line every few
  seconds, no escape codes;
- ``quiet``: nothing until the summary.

The display reads :class:`~llmbatch.engine.RunStats` on its own timer instead of listening to
an event per line: a 100,000-line rerun should not pay for 100,000 redraw requests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, Literal

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from llmbatch.engine import RunStats, StopReason
from llmbatch.errors import printable
from llmbatch.pricing import format_usd

__all__ = [
    "Display",
    "Mode",
    "Summary",
    "choose_mode",
    "describe_stored",
    "format_duration",
    "print_against",
    "print_cache_stats",
    "print_entry",
    "print_explain",
    "print_plan",
    "print_verify",
]

Mode = Literal["live", "plain", "quiet"]

#: When stderr is not a terminal: the first plain progress line after this many seconds (so that a
#: run that waits, for its pace or a slow provider, says so at once), then one every PLAIN_EVERY_S.
PLAIN_FIRST_S = 1.0
PLAIN_EVERY_S = 5.0


def choose_mode(stream: IO[str], *, quiet: bool) -> Mode:
    if quiet:
        return "quiet"
    return "live" if stream.isatty() else "plain"


def format_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "--"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _count(n: int) -> str:
    return f"{n:,}"


def _unpriced_note(models: Iterable[str]) -> str:
    """Said once per run or plan, for every model with no price: what it means and what to do."""
    names = sorted(set(models))
    example = f'[models."{names[0]}"] input_per_million = ..., output_per_million = ... (USD)'
    return f"note: no price known for {', '.join(names)}; cost shown as unknown; set prices in llmbatch.toml: {example}"


class _Rate:
    """Lines, calls and answered calls per second over the last few seconds (steadier than
    instantaneous)."""

    def __init__(self, horizon_s: float = 5.0) -> None:
        self.horizon_s = horizon_s
        self.samples: deque[tuple[float, int, int, int]] = deque()

    def update(self, now: float, done: int, calls: int, answered: int) -> tuple[float, float, float]:
        self.samples.append((now, done, calls, answered))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.horizon_s:
            self.samples.popleft()
        t0, d0, c0, a0 = self.samples[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0, 0.0
        return (done - d0) / dt, (calls - c0) / dt, (answered - a0) / dt


def calls_left(stats: RunStats) -> float | None:
    """Lines still waiting for a call: those read and not answered yet (each waits for a call, or
    for a duplicate's), plus the unread rest at the share of read lines that were not hits."""
    if stats.total is None:
        return None
    waiting = stats.read - stats.done
    unread = stats.total - stats.read
    misses = (stats.read - stats.hits) / stats.read if stats.read else 1.0
    return max(0.0, waiting + unread * misses)


def _snapshot(stats: RunStats, rate: _Rate, now: float) -> dict[str, Any]:
    elapsed = stats.elapsed(now) if stats.started_at else 0.0
    answered_by_calls = stats.done - stats.hits
    lines_per_s, calls_per_s, answers_per_s = rate.update(now, stats.done, stats.calls, answered_by_calls)
    # The ETA counts what is left to call at the rate calls are being answered: cache hits come
    # at once and say nothing about how long the calls will take.
    left = calls_left(stats)
    if left is not None and left <= 0:
        eta: float | None = 0.0
    elif left is not None and answers_per_s > 0:
        eta = left / answers_per_s
    else:
        eta = None
    return {"elapsed": elapsed, "lines_per_s": lines_per_s, "calls_per_s": calls_per_s, "eta": eta}


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{_count(n)} {word if n == 1 else many or word + 's'}"


def _stopping_text(stats: RunStats) -> str:
    """While the run stops: why, and (after a signal) what it is still waiting for. Only shown
    while calls are in flight: the summary says that the run stopped, never that it is finishing."""
    text = f"stopping: {printable(stats.stopped or '')}"
    if stats.stop_reason is StopReason.INTERRUPTED and stats.in_flight:
        text += f"; finishing {_plural(stats.in_flight, 'call')} in flight (a second signal quits now)"
    return text


class _LiveView:
    def __init__(self, stats: RunStats, clock: Callable[[], float], simulated: bool = False) -> None:
        self.stats = stats
        self.clock = clock
        self.simulated = simulated
        self.rate = _Rate()

    def __rich__(self) -> Group:
        s = self.stats
        snap = _snapshot(s, self.rate, self.clock())
        total = s.total or 0
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=max(total, 1), completed=s.done, width=40),
            Text(f"{_count(s.done)}/{_count(total)}", style="bold"),
            Text(f"{(100 * s.done / total) if total else 0:.0f}%"),
            *_written_parts(s),
            Text(f"elapsed {format_duration(snap['elapsed'])}", style="dim"),
            Text(f"ETA {format_duration(snap['eta'])}", style="dim"),
        )
        counters = Text.assemble(
            ("hits ", "dim"),
            (_count(s.hits), "green"),
            *((("  semantic ", "dim"), (_count(s.semantic_hits), "magenta")) if s.semantic_hits else ()),
            ("  calls ", "dim"),
            (_count(s.calls), "cyan"),
            ("  coalesced ", "dim"),
            (_count(s.coalesced), ""),
            ("  errors ", "dim"),
            (_count(s.errors), "red" if s.errors else ""),
            ("  retries ", "dim"),
            (_count(s.retries), "yellow" if s.retries else ""),
            ("  in flight ", "dim"),
            (_count(s.in_flight), ""),
        )
        money = Text.assemble(
            (_spent_label(self.simulated) + " ", "dim"),
            (_usd(s.spent_usd), "bold"),
            ("  saved by the cache ", "dim"),
            (_usd(s.saved_usd), "green"),
            *((("  saved by duplicates ", "dim"), (_usd(s.deduplicated_usd), "green")) if s.deduplicated_usd else ()),
        )
        pace = Text.assemble(
            ("rate ", "dim"),
            (f"{snap['lines_per_s']:.1f} lines/s, {snap['calls_per_s']:.1f} calls/s", ""),
            ("  tokens ", "dim"),
            (f"{_count(s.prompt_tokens)} in / {_count(s.completion_tokens)} out", ""),
            ("  ", ""),
            *_pace_parts(s),
        )
        parts: list[Any] = [head, counters, money, pace]
        jobs = job_lines(s, time.time())
        parts.extend(Text(line, style="dim") for line in jobs[:_JOBS_SHOWN])
        if len(jobs) > _JOBS_SHOWN:  # the screen is for the run, not for a list of 200 jobs
            parts.append(Text(f"... and {len(jobs) - _JOBS_SHOWN} more jobs (llmbatch batches list)", style="dim"))
        if s.stopped:
            parts.append(Text(_stopping_text(s), style="bold red"))
        return Group(*parts)


def _written_parts(stats: RunStats) -> tuple[Text, ...]:
    """Lines wait to be written until every line before them is answered: say so when some do."""
    if stats.written >= stats.done:
        return ()
    return (Text(f"({_count(stats.written)} written in order)", style="dim"),)


def _spent_label(simulated: bool) -> str:
    # Simulated calls cost nothing: the figure is what they would have cost.
    return "would have cost" if simulated else "spent"


_usd = format_usd


def _pace_text(stats: RunStats) -> str:
    """The pace really kept: the limits paced at (from the options, the config file or the
    provider's headers), else "unlimited", and the calls allowed in flight."""
    parts = []
    if stats.pace_rpm:
        parts.append(f"{_count(stats.pace_rpm)} req/min")
    if stats.pace_tpm:
        parts.append(f"{_count(stats.pace_tpm)} tokens/min")
    if not parts:
        parts.append("unlimited")
    if stats.concurrency_limit is not None:
        parts.append(f"{_count(stats.concurrency_limit)} allowed in flight")
    return "pace " + ", ".join(parts)


def _pace_parts(stats: RunStats) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = [(_pace_text(stats), "dim")]
    if stats.throttled:
        parts.append(("  THROTTLED (backing off)", "bold yellow"))
    if stats.rate_limited:
        parts.append((f"  429s {_count(stats.rate_limited)}", "yellow"))
    if stats.waiting:
        parts.append((f"  {_waiting_text(stats)}", "yellow"))
    return parts


def _waiting_text(stats: RunStats) -> str:
    """Lines whose answers another run sharing the cache is making: they are not paid twice."""
    return f"waiting for {_count(stats.waiting)} answer{'s' if stats.waiting != 1 else ''} another run is making"


#: Batch-API jobs the live view lists; the rest are counted.
_JOBS_SHOWN = 8


def job_lines(stats: RunStats, wall_now: float) -> list[str]:
    """One line per Batch-API job the run waits on: status, done/failed/total, elapsed, next poll."""
    lines = []
    for view in stats.batch_jobs.values():
        elapsed = format_duration(max(0.0, wall_now - view.submitted_at))
        poll = view.next_poll_at
        when = f", next poll in {format_duration(max(0.0, poll - wall_now))}" if poll is not None else ""
        lines.append(
            f"job {view.batch_id or view.id} ({view.model}): {view.status}, "
            f"{view.done}/{view.failed}/{view.total} done/failed/total, elapsed {elapsed}{when}"
        )
    return lines


def audit_note(report: Any) -> str:
    """``--semantic-audit``'s finding, for the summary's notes."""
    asked = report.asked
    failed = f"; {report.failed} could not be asked again" if report.failed else ""
    return (
        f"semantic audit: {report.agree} of {asked} semantic hit{'s' if asked != 1 else ''} asked again agree "
        f"({report.identical} identical, {report.similar} similar){failed}; the fresh answers are stored under "
        f"their own keys ({_usd(report.spent_usd)})"
    )


def _semantic_part(stats: RunStats) -> str:
    """Semantic hits apart from exact ones, when a run had any (``--semantic``)."""
    return f" ({_count(stats.semantic_hits)} semantic)" if stats.semantic_hits else ""


def _plain_line(stats: RunStats, rate: _Rate, now: float, *, simulated: bool = False) -> str:
    snap = _snapshot(stats, rate, now)
    total = stats.total if stats.total is not None else "?"
    written = f" ({stats.written} written in order)" if stats.written < stats.done else ""
    return (
        f"llmbatch: {stats.done}/{total} done{written}, {stats.hits} hits{_semantic_part(stats)}, {stats.calls} calls, "
        f"{stats.errors} errors, {stats.retries} retries, {stats.in_flight} in flight, "
        f"{snap['lines_per_s']:.1f} lines/s, elapsed {format_duration(snap['elapsed'])}, "
        f"ETA {format_duration(snap['eta'])}, {_spent_label(simulated)} {_usd(stats.spent_usd)}, "
        f"saved {_usd(stats.saved_usd)}, {_pace_text(stats)}"
        + (", throttled" if stats.throttled else "")
        + (f", {stats.rate_limited} rate-limited" if stats.rate_limited else "")
        + (f", {_waiting_text(stats)}" if stats.waiting else "")
        + (f"; {_stopping_text(stats)}" if stats.stopped else "")
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """What the end-of-run table reports besides the counters."""

    results: str  # where the result lines went
    complete: bool
    note: str | None = None  # e.g. how to resume
    config: str | None = None  # the config file whose limits applied (``llmbatch.toml``)


class Display:
    """Context manager around a run: shows progress while inside, ``summary()`` after."""

    def __init__(
        self,
        stats: RunStats,
        *,
        mode: Mode,
        stream: IO[str],
        plain_every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        simulated: bool = False,
        plain_first_s: float | None = None,
    ) -> None:
        """``simulated``: the calls go to the simulator, so money is what they would have cost.
        ``plain_first_s``, ``plain_every_s``: when the plain progress lines come (default
        :data:`PLAIN_FIRST_S`, :data:`PLAIN_EVERY_S`)."""
        self.stats = stats
        self.mode = mode
        self.simulated = simulated
        self.clock = clock
        self.stream = stream
        self.console = Console(file=stream, highlight=False, soft_wrap=False)
        self.plain_every_s = PLAIN_EVERY_S if plain_every_s is None else plain_every_s
        self.plain_first_s = min(PLAIN_FIRST_S, self.plain_every_s) if plain_first_s is None else plain_first_s
        self._live: Live | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Progress lines come from their own thread, messages (-v) from the run's: one line at a time.
        self._lock = threading.Lock()

    def _live_view(self) -> _LiveView:
        return _LiveView(self.stats, self.clock, self.simulated)

    def __enter__(self) -> Display:
        if self.mode == "live":
            self._live = Live(self._live_view(), console=self.console, refresh_per_second=8, transient=True)
            self._live.__enter__()
        elif self.mode == "plain":
            self._thread = threading.Thread(target=self._plain_loop, name="llmbatch-progress", daemon=True)
            self._thread.start()
        return self

    def _plain_loop(self) -> None:
        rate = _Rate(horizon_s=max(self.plain_every_s * 2, 5.0))
        s = self.stats
        rate.update(self.clock(), s.done, s.calls, s.done - s.hits)  # so that the first line has a rate
        wait = self.plain_first_s
        while not self._stop.wait(wait):
            wait = self.plain_every_s
            # Straight to the stream: a log line must not be wrapped or styled.
            line = _plain_line(self.stats, rate, self.clock(), simulated=self.simulated)
            line = "\n".join([line, *(f"llmbatch: {job}" for job in job_lines(self.stats, time.time()))])
            with self._lock:
                self.stream.write(line + "\n")
                self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def message(self, text: str, *, style: str = "") -> None:
        """One line above the live view (or between the plain progress lines), control characters
        shown, not obeyed."""
        with self._lock:
            self.console.print(Text(printable(text), style=style), soft_wrap=True)

    def summary(self, summary: Summary) -> None:
        s = self.stats
        if self.mode == "quiet":
            self.stream.write(self._summary_line(summary) + "\n")
            self.stream.flush()
            return
        wall = s.elapsed(self.clock())
        table = Table(title="llmbatch run", show_header=False, title_justify="left", box=None, padding=(0, 2))
        table.add_column(style="dim")
        table.add_column(justify="right")
        rows = [
            ("prompts", _count(s.total or s.done)),
            ("answered from cache", _count(s.hits)),
            *((("  of which semantic", _count(s.semantic_hits)),) if s.semantic_hits else ()),
            ("calls made", _count(s.calls)),
            *((("batch jobs submitted (half price)", _count(s.batch_submitted)),) if s.batch_jobs else ()),
            *(
                (("batch answers to lines not in this file (stored)", _count(s.unclaimed_kept)),)
                if s.unclaimed_kept
                else ()
            ),
            ("duplicates coalesced", _count(s.coalesced)),
            ("errors", _count(s.errors)),
            *((("cut off at max_tokens", _count(s.truncated)),) if s.truncated else ()),
            ("retries", _count(s.retries)),
            ("rate-limited (429)", _count(s.rate_limited)),
            ("tokens in / out", f"{_count(s.prompt_tokens)} / {_count(s.completion_tokens)}"),
            (
                _spent_label(self.simulated) + (" (simulated)" if self.simulated else " this run"),
                _usd(s.spent_usd) + (" (+ unpriced calls)" if s.unpriced_calls else ""),
            ),
            ("saved by the cache", _usd(s.saved_usd)),
            *((("saved by duplicates", _usd(s.deduplicated_usd)),) if s.deduplicated_usd else ()),
            ("wall time", f"{wall:.1f}s"),
        ]
        # Paths go under the table, whole: a table cuts what does not fit ("/tmp/pytest-of-…").
        paths = [*((("limits from", summary.config),) if summary.config else ()), ("results", summary.results)]
        width = max(len(name) for name, _ in rows + paths)
        for name, value in rows:
            table.add_row(name, Text(printable(value)))
        self.console.print(table)
        for name, value in paths:  # where the table's second column starts
            self.console.print(
                Text.assemble("  ", (name.ljust(width), "dim"), "    ", printable(value)), soft_wrap=True
            )
        if any(label.startswith("route ") for label in s.spent_by_route):
            self._spent_by_route()
        for note in self._notes(summary):
            style = "yellow" if note is summary.note else ""
            for line in note.split("\n"):  # a note of several lines (ours), each line's controls shown
                self.console.print(Text(printable(line), style=style), soft_wrap=True)

    def _spent_by_route(self) -> None:
        """Routing rules in use: what each route's calls cost, per model that answered (fallbacks and
        escalations under the route of their line)."""
        table = Table(title="spent by route", title_justify="left", box=None, padding=(0, 1))
        for name in ("route", "model", "spent"):
            table.add_column(name, justify="right" if name == "spent" else "left")
        from llmbatch.input.routes import route_order

        for label in sorted(self.stats.spent_by_route, key=route_order):
            for model_ref, usd in sorted(self.stats.spent_by_route[label].items()):
                table.add_row(Text(_ROUTE_NAMES.get(label, label)), Text(printable(model_ref)), _usd(usd))
        self.console.print(table)

    def _notes(self, summary: Summary) -> list[str]:
        s = self.stats
        notes = []
        if s.stopped and not s.fatal:  # a fatal stop is reported once, as the command's error
            notes.append(f"stopped early: {s.stopped}")
        if s.truncated:
            notes.append(
                f"note: {s.truncated} answer{'s were' if s.truncated != 1 else ' was'} cut off at max_tokens "
                '(finish_reason "length", marked "truncated" in the results); a larger max_tokens asks again'
            )
        if s.unpriced_calls:
            notes.append(_unpriced_note(s.unpriced_models))
        if s.one_cpu:
            notes.append(
                "note: one CPU is available to this run, so --workers auto made every call in this process: "
                "worker processes would share that CPU and add only start-up time, memory and a pipe per call"
            )
        if s.workers_lost and not s.fatal:
            many = s.workers_lost > 1
            lost = f"{s.workers_lost} worker process{'es' if many else ''}"
            they = "they" if many else "it"
            notes.append(f"note: {lost} stopped unexpectedly during the run; the others made the calls {they} had")
        if summary.note:
            notes.append(summary.note)
        return notes

    def _summary_line(self, summary: Summary) -> str:
        """``-q``: the whole summary on one line."""
        s = self.stats
        parts = [
            _plural(s.total or s.done, "prompt"),
            f"{_count(s.ok)} ok",
            _plural(s.errors, "error"),
            f"{_count(s.hits)} from cache{_semantic_part(s)}",
            *((_plural(s.coalesced, "duplicate"),) if s.coalesced else ()),
            _plural(s.calls, "call"),
            f"{_spent_label(self.simulated)} {_usd(s.spent_usd)}"
            + (f" + {_count(s.unpriced_calls)} calls of unknown price" if s.unpriced_calls else ""),
            f"{s.elapsed(self.clock()):.1f}s",
            *((f"limits from {summary.config}",) if summary.config else ()),
            f"results: {summary.results}" + ("" if summary.complete else " (incomplete)"),
        ]
        if s.truncated:
            parts.insert(3, f"{_count(s.truncated)} cut off")
        if s.stopped and not s.fatal:
            parts.append(f"stopped early: {s.stopped}")
        return printable("llmbatch: " + ", ".join(parts))


def _eviction(policy: str) -> str:
    if policy == "noeviction":
        return "noeviction (a full server refuses new answers; none is dropped)"
    return f"{policy} (the server may drop answers when full: a later miss, never a wrong answer)"


def print_cache_stats(stats: Any, *, directory: str, stream: IO[str] | None = None) -> None:
    """``llmbatch cache stats`` for people (``--json`` is printed by the CLI itself)."""
    import sys
    from datetime import datetime

    from llmbatch.units import format_size

    console = Console(file=stream or sys.stdout, highlight=False)
    if stats is None:
        console.print(Text(f"no cache yet at {directory}"))
        return

    def when(ts: float | None) -> str:
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "--"

    table = Table(show_header=False, box=None, padding=(0, 2), title=f"cache at {directory}", title_justify="left")
    table.add_column(style="dim")
    table.add_column()
    lookups = stats.hits + stats.misses
    rows = [
        ("entries", _count(stats.entries)),
        *(
            (
                ("size on disk", format_size(stats.size_bytes)),
                ("size limit", f"{format_size(stats.details['size_limit'])} ({stats.details['eviction_policy']})"),
            )
            if "size_limit" in stats.details
            else ()
        ),
        *(
            (
                ("server memory", f"{format_size(stats.size_bytes)} (the whole server's)"),
                ("server eviction", _eviction(stats.details["maxmemory_policy"])),
            )
            if "maxmemory_policy" in stats.details
            else ()
        ),
        ("oldest entry", when(stats.oldest)),
        ("newest entry", when(stats.newest)),
        ("value of stored answers", _usd(stats.stored_value_usd)),
        ("lifetime saved by hits", _usd(stats.saved_usd)),
        (
            "lifetime hits / misses",
            f"{_count(stats.hits)} / {_count(stats.misses)}"
            + (f" ({100 * stats.hits / lookups:.0f}% hits)" if lookups else ""),
        ),
        *(
            (
                (
                    "of the hits, semantic",
                    f"{_count(semantic['semantic_hits'])} (saved {_usd(semantic['semantic_saved_usd'])}; "
                    f"{_count(semantic['prompts_embedded'])} prompts embedded)",
                ),
            )
            if (semantic := stats.details.get("semantic"))
            else ()
        ),
    ]
    for name, value in rows:
        table.add_row(name, Text(value))
    console.print(table)
    models = stats.models()
    if models:
        by_model = Table(title="by model", title_justify="left", box=None, padding=(0, 1))
        # The names whole, even on a narrow terminal: they are what purge --model wants.
        by_model.add_column("provider:model", min_width=max(len(tag) for tag in models))
        for name in ("entries", "hits", "misses", "hit rate", "saved"):
            by_model.add_column(name, justify="right")

        def rate(hits: int, misses: int) -> str:
            return f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "--"

        for tag, row in models.items():
            by_model.add_row(
                Text(tag),
                _count(row["entries"]),
                _count(row["hits"]),
                _count(row["misses"]),
                rate(row["hits"], row["misses"]),
                _usd(row["saved_usd"]),
            )
        # A cache older than the per-model counters holds lookups that no model can be given.
        earlier_hits = stats.hits - sum(row["hits"] for row in models.values())
        earlier_misses = stats.misses - sum(row["misses"] for row in models.values())
        if earlier_hits > 0 or earlier_misses > 0:
            earlier_saved = stats.saved_usd - sum(row["saved_usd"] for row in models.values())
            by_model.add_row(
                Text("(counted before per model)", style="dim"),
                "",
                _count(earlier_hits),
                _count(earlier_misses),
                rate(earlier_hits, earlier_misses),
                _usd(max(0.0, earlier_saved)),
            )
        console.print(by_model)


# --- llmbatch cache explain, show, verify -------------------------------------------------------


def _when(ts: float | None) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "--"


def _lines(text: str) -> str:
    """Text from a prompt or an answer, safe for a terminal, its line breaks kept: each line goes
    through ``printable`` (escape sequences shown, never obeyed)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _json_text(value: Any, *, limit: int | None = None) -> str:
    import orjson

    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return printable(text)


def describe_stored(stored: Any, *, now: float | None = None) -> str:
    """One line: whether a key is stored, when, at what cost, and if it would be served."""
    if stored is None:
        return "not stored: a run would call for it"
    if stored.entry is None:
        problem = printable(stored.problem)
        return f"stored but unreadable ({problem}): a run would call again; cache verify --repair removes it"
    entry = stored.entry
    parts = [f"stored {_when(stored.stored_at)}", f"cost {_usd(entry.get('cost_usd'))}"]
    if stored.tag:
        parts.append(printable(stored.tag))
    if stored.expires_at is not None:
        expired = stored.expires_at < (time.time() if now is None else now)
        parts.append(f"{'expired' if expired else 'expires'} {_when(stored.expires_at)}")
        if expired:
            return ", ".join(parts) + ": a run would call again"
    return ", ".join(parts)


def print_explain(explained: Any, stored: Any, stream: IO[str] | None = None) -> None:
    """``llmbatch cache explain FILE:LINE``: the key, whether it is stored, and its material."""
    import sys

    import orjson

    console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
    console.print(Text.assemble((printable(explained.where), "bold"), "  ", explained.key))
    console.print(Text(describe_stored(stored)))
    console.print(Text("key material (hashed as canonical JSON: keys sorted, no spaces, UTF-8):", style="dim"))
    pretty = orjson.dumps(explained.material, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode()
    console.print(Text(_lines(pretty)))


def print_against(pair: Any, differences: Any, stored: Any, stream: IO[str] | None = None) -> None:
    """``cache explain A --against B``: both keys, and each field of B's material that A changes."""
    import sys

    console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
    width = max(len(printable(line.where)) for line in pair)
    for line, found in zip(pair, stored, strict=True):
        console.print(
            Text.assemble((printable(line.where).ljust(width), "bold"), "  ", line.key, "  ", describe_stored(found))
        )
    this, against = pair
    if this.key == against.key:
        console.print(Text("the keys are equal: either line is answered from the other's cache entry"))
        return
    count = len(differences)
    console.print(Text(f"the keys differ: {count} field{'s' if count != 1 else ''} of the key material"))
    for difference in differences:
        console.print(
            Text.assemble(
                f"  {printable(difference.path)}: ",
                (_side(difference, "before"), "red"),
                " → ",
                (_side(difference, "after"), "green"),
            )
        )


def _side(difference: Any, side: str) -> str:
    return "(absent)" if difference.missing == side else _json_text(getattr(difference, side), limit=120)


def _content_text(content: Any) -> str:
    """A message's content for people: text as it is; parts (text, images, ...) one per line."""
    if isinstance(content, str):
        return _lines(content)
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(_lines(part["text"]))
            else:
                parts.append(_json_text(part, limit=200))
        return "\n".join(parts)
    return _json_text(content, limit=500)


def print_entry(stored: Any, stream: IO[str] | None = None, *, now: float | None = None) -> None:
    """``llmbatch cache show KEY``: an entry as a person reads it (``--json`` prints the record)."""
    import sys

    from rich.panel import Panel

    console = Console(file=stream or sys.stdout, highlight=False)
    entry = stored.entry
    now = time.time() if now is None else now
    about = Table(show_header=False, box=None, padding=(0, 2))
    about.add_column(style="dim")
    about.add_column(overflow="fold")  # a key is copied from here: whole, never cut with an ellipsis
    usage = entry.get("usage") or {}
    tokens = (
        f"{_count(int(usage.get('prompt_tokens') or 0))} in / {_count(int(usage.get('completion_tokens') or 0))} out"
        if usage
        else "--"
    )
    expiry = "never"
    if stored.expires_at is not None:
        expiry = _when(stored.expires_at) + (" (expired: no longer served)" if stored.expires_at < now else "")
    latency = entry.get("latency_ms")
    rows = [
        ("key", stored.key),
        ("model", f"{entry.get('provider', '?')}:{entry.get('model', '?')}"),
        ("tag", stored.tag or "--"),
        ("endpoint", str(entry.get("endpoint") or "--")),
        ("stored", _when(stored.stored_at)),
        ("expires", expiry),
        ("cost", _usd(entry.get("cost_usd"))),
        ("usage", tokens),
        ("latency", f"{latency:,.0f} ms" if isinstance(latency, (int, float)) else "--"),
        ("version", str(entry.get("v", 1))),
    ]
    for name, value in rows:
        about.add_row(name, Text(printable(value)))
    console.print(about)
    request = entry.get("request") or {}
    messages = request.get("messages")
    if isinstance(messages, list):
        prompt = Text()
        for number, message in enumerate(messages):
            if number:
                prompt.append("\n")
            role = message.get("role", "?") if isinstance(message, dict) else "?"
            prompt.append(f"{printable(role)}: ", style="bold")
            prompt.append(_content_text(message.get("content") if isinstance(message, dict) else message))
        if request.get("params"):
            prompt.append(f"\nparams: {_json_text(request['params'], limit=300)}", style="dim")
        console.print(Panel(prompt, title="prompt", title_align="left"))
    else:
        console.print(Text("prompt: not recorded (an entry from before v2 keeps only the answer)", style="dim"))
    console.print(Panel(_answer_text(entry.get("response")), title="answer", title_align="left"))


def _answer_text(response: Any) -> Text:
    answer = Text()
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices:
        return Text(_json_text(response, limit=2000))
    for number, choice in enumerate(choices):
        if number:
            answer.append("\n")
        message = choice.get("message") if isinstance(choice, dict) else None
        if len(choices) > 1:
            answer.append(f"[{number}] ", style="bold")
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None:
            answer.append(_content_text(content))
        tool_calls = message.get("tool_calls") if isinstance(message, dict) else None
        if tool_calls:
            answer.append(f"\ntool calls: {_json_text(tool_calls, limit=1000)}")
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        if finish and finish != "stop":
            answer.append(f"\n(finish_reason: {printable(finish)})", style="yellow")
    return answer


_KIND_NAMES = {
    "undecodable": "do not decode, or not answers",
    "key_mismatch": "key does not match its request",
    "digest_mismatch": "digest does not match (damaged)",
    "expired": "expired",
    "gone": "gone (dropped by the server)",
}


def print_verify(report: Any, *, directory: str, stream: IO[str] | None = None) -> None:
    """``llmbatch cache verify``: counts per kind, a few keys of each, and what --repair did."""
    import sys

    out = stream or sys.stdout
    lines = [
        f"checked {_count(report.checked)} entries in {printable(directory)} ({report.seconds:.1f}s)",
        f"  ok                                 {_count(report.ok)}",
        f"  cannot be checked (older entries)  {_count(report.unverifiable)}",
    ]
    for kind, name in _KIND_NAMES.items():
        lines.append(f"  {name.ljust(35)}{_count(report.found[kind])}")
        lines += [f"      e.g. {key}" for key in report.examples[kind]]
    if report.removed is not None:
        removed = f"removed {_count(report.removed)} entr{'y' if report.removed == 1 else 'ies'}"
        lines.append(f"{removed} (the next run pays for them again)")
    elif report.broken:
        lines.append(
            f"{_count(report.broken)} broken entr{'y' if report.broken == 1 else 'ies'}: "
            "llmbatch cache verify --repair removes them (the next run pays for them again)"
        )
    out.write("\n".join(lines) + "\n")


def print_plan(plan: Any, stream: IO[str] | None = None) -> None:
    """``llmbatch run --dry-run``: what a run would do and cost."""
    import sys

    console = Console(file=stream or sys.stdout, highlight=False)
    table = Table(title="plan (nothing was sent)", show_header=False, box=None, padding=(0, 2), title_justify="left")
    table.add_column(style="dim")
    table.add_column(justify="right")
    rows = [
        ("prompts", _count(plan.prompts)),
        ("cache hits", _count(plan.hits)),
        *((("  of which semantic", _count(plan.semantic_hits)),) if plan.semantic_hits is not None else ()),
        ("duplicates (no extra call)", _count(plan.duplicates)),
        *(
            (
                (
                    "in jobs already submitted (collected, not paid again)"
                    if plan.batch_api
                    else "in batch jobs not collected yet (see below)",
                    _count(plan.in_jobs),
                ),
            )
            if plan.in_jobs
            else ()
        ),
        ("calls to make", _count(plan.calls)),
        (
            "estimated tokens in / out",
            f"{_count(plan.estimated_input_tokens)} / {_count(plan.estimated_output_tokens)}",
        ),
        ("estimated cost at Batch API prices" if plan.batch_api else "estimated cost", _usd(plan.estimated_cost_usd)),
    ]
    if plan.escalations:
        # Which answers fail their check is only known once they come back.
        high = _usd(plan.estimated_cost_max_usd)
        rows[-1] = (rows[-1][0], f"{_usd(plan.estimated_cost_usd)} to {high}")
        rows.append(("may escalate (not known before the answers)", _count(plan.escalations)))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if plan.by_route:
        _print_plan_routes(console, plan.by_route)
    if plan.unpriced_models:
        console.print(Text(_unpriced_note(plan.unpriced_models)))
    if plan.in_jobs and not plan.batch_api:
        console.print(
            Text(
                f"note: {_count(plan.in_jobs)} of these prompts are in batch jobs submitted earlier and not "
                "collected yet: run with --batch-api to collect them (a run without it stops at the first "
                "rather than pay for it again)"
            )
        )


_ROUTE_NAMES = {"line": "the line's own model", "--model": "--model"}


def _print_plan_routes(console: Console, by_route: dict[str, dict[str, Any]]) -> None:
    """Lines, calls and estimated cost per route, and per model within it (models come from the config
    and the input: Text, never markup)."""
    table = Table(title="by route", title_justify="left", box=None, padding=(0, 1))
    for name in ("route", "model", "lines", "calls", "estimated cost"):
        table.add_column(name, justify="left" if name in ("route", "model") else "right")
    for label, taken in by_route.items():
        table.add_row(
            Text(_ROUTE_NAMES.get(label, label)),
            "",
            _count(taken["lines"]),
            _count(taken["calls"]),
            _usd(taken["cost_usd"]),
        )
        for model_ref, row in taken["by_model"].items():
            table.add_row("", Text(printable(model_ref)), "", "", _usd(row["cost_usd"]))
    console.print(table)


# --- llmbatch report ----------------------------------------------------------------------------


def print_report(report: Any, stream: IO[str] | None = None) -> None:
    """``llmbatch report`` for people: a :class:`~llmbatch.app.report.Report` as tables on stdout.

    Every string that comes from the results file (ids, models, error types and messages) goes
    through ``report.printable`` and into a ``Text`` (never markup): a provider's message can hold
    ESC sequences, which rich would pass to the terminal as they are."""
    import os
    import sys

    from llmbatch.units import format_ms

    out = stream or sys.stdout
    # Piped into a file or a CI log, rich would wrap the model table at 80 columns.
    wide = None if out.isatty() or "COLUMNS" in os.environ else 120
    console = Console(file=out, highlight=False, width=wide)

    title = Text.assemble(("llmbatch report: ", "bold"), (printable(report.source), "bold"))
    console.print(title + Text(f"  {_plural(report.lines, 'result line')}"))
    data = report.to_dict()
    lat = data["latency_ms"]
    answered = report.answered_by
    overview = Table(show_header=False, box=None, padding=(0, 2))
    overview.add_column(style="dim")
    overview.add_column()
    cost = format_usd(report.cost_usd)
    if report.unpriced:
        cost += f" + {_plural(report.unpriced, 'answer')} of unknown price"
    rows: list[tuple[str, Text]] = [
        ("status", Text(f"ok {_count(report.status['ok'])}  error {_count(report.status['error'])}")),
        (
            "answered by",
            Text(
                f"call {_count(answered['call'])}  cache {_count(answered['cache'])}  "
                f"duplicate {_count(answered['duplicate'])}"
                + (f"  no call {_count(answered['no_call'])}" if answered["no_call"] else "")
            ),
        ),
        ("cut off", Text(_count(report.truncated), style="yellow" if report.truncated else "")),
        ("retries", Text(_count(report.retries))),
        ("tokens in / out", Text(f"{_count(report.prompt_tokens)} / {_count(report.completion_tokens)}")),
        ("cost of the answers", Text(cost)),
        ("spent on calls made", Text(format_usd(report.spent_usd))),
        ("answers from the cache", Text(format_usd(data["cost"]["from_cache_usd"]))),
    ]
    if lat["calls"]:
        latency = (
            f"p50 {format_ms(lat['p50'])}  p90 {format_ms(lat['p90'])}  p99 {format_ms(lat['p99'])}  "
            f"max {format_ms(lat['max'])}  ({_plural(lat['calls'], 'answered call')})"
        )
    else:
        latency = "no answer came from a call (a hit keeps the latency of the call first paid for it)"
    rows.append(("latency", Text(latency)))
    for name, value in rows:
        overview.add_row(name, value)
    console.print(overview)

    by_model = Table(title="by model", title_justify="left", box=None, padding=(0, 1))
    # A model name is what the user greps for: never cut it short (the numbers are narrow anyway).
    longest = max((len(printable(name)) for name in report.models), default=5)
    by_model.add_column("model", no_wrap=True, min_width=min(longest, 60))
    columns = ["lines", "ok", "errors", "cut off", "calls", "tokens in", "tokens out", "cost", "spent"]
    if report.unpriced:
        columns.append("unpriced")
    for name in columns:
        by_model.add_column(name, justify="right", no_wrap=name in ("cost", "spent"))
    for name, m in sorted(report.models.items()):
        unknown = not m.priced and m.unpriced
        cells: list[str | Text] = [
            Text(printable(name)),
            _count(m.lines),
            _count(m.ok),
            Text(_count(m.errors), style="red" if m.errors else ""),
            _count(m.truncated),
            _count(m.calls),
            _count(m.prompt_tokens),
            _count(m.completion_tokens),
            Text("unknown" if unknown else format_usd(m.cost_usd), style="yellow" if unknown else ""),
            Text("unknown" if unknown else format_usd(m.spent_usd), style="yellow" if unknown else ""),
        ]
        if report.unpriced:
            cells.append(Text(_count(m.unpriced), style="yellow" if m.unpriced else ""))
        by_model.add_row(*cells)
    if report.models:
        console.print()
        console.print(by_model)

    if report.finish_reasons:
        reasons = "  ".join(f"{printable(name)} {_count(n)}" for name, n in report.finish_reasons.most_common())
        console.print()
        console.print(Text.assemble(("finish reasons  ", "bold"), reasons))

    if report.error_groups:
        groups = report.errors
        shown = groups[:_REPORT_ERROR_GROUPS]
        errors = Table(
            title=f"errors: {_plural(report.status['error'], 'line')}, {_plural(len(groups), 'group')}",
            title_justify="left",
            box=None,
            padding=(0, 1),
        )
        errors.add_column("count", justify="right")
        errors.add_column("type")
        errors.add_column("status", justify="right")
        errors.add_column("first line", justify="right")
        errors.add_column("id")
        errors.add_column("message", overflow="fold", ratio=1)
        for g in shown:
            message = g.message if len(g.message) <= 400 else g.message[:399] + "…"
            errors.add_row(
                Text(_count(g.count), style="red"),
                Text(printable(g.type)),
                "" if g.status_code is None else str(g.status_code),
                _count(g.first_line),
                Text(printable(g.first_id)),
                Text(printable(message)),
            )
        console.print()
        console.print(errors)
        hidden = len(groups) - len(shown)
        if hidden or report.other_errors:
            more = [f"{_plural(hidden, 'more group')} (--json lists them all)"] if hidden else []
            if report.other_errors:
                more.append(f"{_plural(report.other_errors, 'error')} past the first distinct messages kept")
            console.print(Text("and " + "; ".join(more), style="dim"), soft_wrap=True)

    if report.truncated:
        console.print()
        console.print(
            Text.assemble(
                ("cut off: ", "bold yellow"),
                f"{_plural(report.truncated, 'answer')} stopped at the token limit (finish reason length)",
            )
        )
        listed = ", ".join(f"line {line} (id {printable(id_)})" for line, id_ in report.truncated_first)
        more = report.truncated - len(report.truncated_first)
        console.print(Text("  " + listed + (f", and {_count(more)} more" if more else "")), soft_wrap=True)

    note = report.unpriced_note()
    if note:
        console.print()
        console.print(Text(f"note: {note}"), soft_wrap=True)


#: Error groups printed in the terminal (``--json`` and ``--html`` list every group kept).
_REPORT_ERROR_GROUPS = 20


def print_jobs(rows: list[dict[str, Any]], stream: IO[str] | None = None) -> None:
    """``llmbatch batches list`` / ``status`` / ``cancel``: one row per job."""
    import sys
    import time

    out = stream or sys.stdout
    if not rows:
        out.write("no batch jobs\n")
        return
    if not out.isatty():  # piped: one plain line a job, for grep and awk
        for row in rows:
            counts = f"{row['done']}/{row['failed']}/{row['total']}"
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(row["submitted_at"]))
            fields = (row["id"], row["batch_id"] or "-", row["model"], row["state"], row["status"] or "-", counts, when)
            out.write("  ".join(fields) + "\n")
        return
    console = Console(file=out, highlight=False)
    table = Table(box=None, padding=(0, 2))
    for name in ("job", "batch id", "model", "state", "status", "done/failed/total", "submitted"):
        table.add_column(name)
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["submitted_at"]))
        counts = f"{row['done']}/{row['failed']}/{row['total']}"
        table.add_row(row["id"], row["batch_id"] or "-", row["model"], row["state"], row["status"] or "-", counts, when)
    console.print(table)
