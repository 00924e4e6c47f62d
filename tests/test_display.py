"""What the user sees: plain progress lines when piped, the live view's content, the summary."""

from __future__ import annotations

import io
import time

from llmbatch.display import Display, Summary, choose_mode, format_duration
from llmbatch.engine import RunStats


def busy_stats() -> RunStats:
    return RunStats(
        total=100,
        done=40,
        ok=39,
        errors=1,
        hits=25,
        calls=15,
        coalesced=2,
        retries=3,
        in_flight=4,
        prompt_tokens=1200,
        completion_tokens=3400,
        started_at=time.monotonic() - 8,
    )


def test_piped_output_gets_plain_progress_lines_without_escape_codes():
    stream = io.StringIO()
    with Display(busy_stats(), mode="plain", stream=stream, plain_every_s=0.02):
        time.sleep(0.1)
    text = stream.getvalue()
    assert "\x1b[" not in text
    line = text.splitlines()[0]
    assert line.startswith("llmbatch: 40/100 done, 25 hits, 15 calls, 1 errors, 3 retries, 4 in flight")
    assert "lines/s" in line and "ETA" in line


def test_the_live_view_shows_every_counter():
    stream = io.StringIO()
    display = Display(busy_stats(), mode="live", stream=stream)
    display.console.print(display._live_view())
    text = stream.getvalue()
    for word in (
        "40/100",
        "hits",
        "25",
        "calls",
        "15",
        "coalesced",
        "errors",
        "retries",
        "in flight",
        "lines/s",
        "calls/s",
        "tokens",
        "1,200 in / 3,400 out",
        "elapsed",
        "ETA",
    ):
        assert word in text, word


def test_quiet_shows_nothing_until_the_summary():
    stream = io.StringIO()
    stats = busy_stats()
    with Display(stats, mode="quiet", stream=stream, plain_every_s=0.01):
        time.sleep(0.05)
    assert stream.getvalue() == ""
    Display(stats, mode="quiet", stream=stream).summary(Summary(results="out.jsonl", complete=True))
    text = stream.getvalue()
    for label in (
        "prompts",
        "answered from cache",
        "calls made",
        "duplicates coalesced",
        "errors",
        "retries",
        "tokens in / out",
        "wall time",
        "results",
        "out.jsonl",
    ):
        assert label in text, label


def test_mode_follows_the_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert choose_mode(Tty(), quiet=False) == "live"
    assert choose_mode(io.StringIO(), quiet=False) == "plain"
    assert choose_mode(Tty(), quiet=True) == "quiet"


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (None, 5, 65, 3725)] == ["--", "5s", "1m05s", "1h02m05s"]
