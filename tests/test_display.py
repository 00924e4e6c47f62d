"""What the user sees: plain progress lines when piped, the live view's content, the summary."""

from __future__ import annotations

import io
import re
import time

from llmbatch.display import Display, Summary, choose_mode, format_duration
from llmbatch.engine import RunStats


def busy_stats() -> RunStats:
    return RunStats(
        total=100,
        read=60,
        done=40,
        written=40,
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


def test_quiet_shows_nothing_until_one_summary_line():
    stream = io.StringIO()
    stats = busy_stats()
    with Display(stats, mode="quiet", stream=stream, plain_every_s=0.01):
        time.sleep(0.05)
    assert stream.getvalue() == ""
    Display(stats, mode="quiet", stream=stream).summary(Summary(results="out.jsonl", complete=True))
    [line] = stream.getvalue().splitlines()
    assert line.startswith("llmbatch: 100 prompts, 39 ok, 1 error, 25 from cache, 2 duplicates, 15 calls, spent $0, ")
    assert line.endswith("s, results: out.jsonl")


def test_the_summary_table_lists_every_counter():
    stream = io.StringIO()
    Display(busy_stats(), mode="plain", stream=stream).summary(Summary(results="out.jsonl", complete=True))
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


def test_progress_counts_lines_as_they_are_answered_and_shows_the_order_apart():
    # One early line retrying held the written count at 0 while 286 of 300 were answered: the
    # display must say 286 done, not 0 %, and that the file waits for the order.
    stats = RunStats(total=300, read=300, done=286, written=0, hits=0, calls=286, started_at=time.monotonic() - 10)
    stream = io.StringIO()
    display = Display(stats, mode="live", stream=stream)
    display.console.print(display._live_view())
    text = stream.getvalue()
    assert "286/300" in text and "95%" in text and "(0 written in order)" in text


def test_the_eta_comes_from_the_calls_left_and_the_call_rate_not_from_hits():
    from llmbatch.display import _Rate, _snapshot, calls_left

    # 294 hits answered at once, 66 calls to make, 6 answered so far at 3 a second.
    stats = RunStats(total=360, read=360, done=300, hits=294, calls=12, started_at=time.monotonic() - 2)
    assert calls_left(stats) == 60
    rate = _Rate()
    now = time.monotonic()
    _snapshot(RunStats(total=360, read=360, done=297, hits=294, calls=12, started_at=now - 2), rate, now - 1)
    snap = _snapshot(stats, rate, now)
    assert snap["eta"] == 20.0  # 60 calls left at 3 answered a second; hits never count


def test_simulated_money_is_labelled_as_what_it_would_have_cost():
    stream = io.StringIO()
    stats = RunStats(total=2, done=2, ok=2, calls=2, spent_usd=0.00015)
    Display(stats, mode="plain", stream=stream, simulated=True).summary(Summary(results="r", complete=True))
    assert re.search(r"would have cost \(simulated\)\s+\$0.00015", stream.getvalue())
    assert "spent this run" not in stream.getvalue()


def test_control_characters_from_providers_are_shown_not_obeyed():
    stream = io.StringIO()
    stats = RunStats(total=1, done=1, stopped="evil \x1b]0;pwned\x07 \x1b[2J text")
    Display(stats, mode="plain", stream=stream).summary(Summary(results="r", complete=False))
    text = stream.getvalue()
    assert "\x1b" not in text
    assert "evil \\x1b]0;pwned\\x07 \\x1b[2J text" in text


def test_mode_follows_the_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert choose_mode(Tty(), quiet=False) == "live"
    assert choose_mode(io.StringIO(), quiet=False) == "plain"
    assert choose_mode(Tty(), quiet=True) == "quiet"


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (None, 5, 65, 3725)] == ["--", "5s", "1m05s", "1h02m05s"]


def test_the_first_plain_line_comes_soon_with_a_rate_then_one_every_few_seconds():
    stats = busy_stats()
    stream = io.StringIO()
    now = [100.0]
    display = Display(stats, mode="plain", stream=stream, plain_first_s=0.05, plain_every_s=10, clock=lambda: now[0])
    with display:
        now[0] += 2.0
        stats.done += 10
        time.sleep(0.3)
    [line] = stream.getvalue().splitlines()  # the first one early, the next only after 10 s
    assert ", 5.0 lines/s, " in line  # 10 lines in 2 s since the display started, not "0.0"


def test_the_pace_says_what_is_applied():
    from llmbatch.display import _pace_text

    assert _pace_text(RunStats()) == "pace unlimited"
    assert _pace_text(RunStats(concurrency_limit=16)) == "pace unlimited, 16 allowed in flight"
    assert _pace_text(RunStats(pace_rpm=60, pace_tpm=1, concurrency_limit=4)) == (
        "pace 60 req/min, 1 tokens/min, 4 allowed in flight"
    )


def test_after_a_signal_the_display_counts_what_it_waits_for_and_the_summary_does_not():
    from llmbatch.display import _stopping_text
    from llmbatch.engine import StopReason

    stats = RunStats(total=3, stopped="interrupted by Ctrl-C", stop_reason=StopReason.INTERRUPTED, in_flight=1)
    assert _stopping_text(stats) == (
        "stopping: interrupted by Ctrl-C; finishing 1 call in flight (a second signal quits now)"
    )
    stats.in_flight = 0
    assert _stopping_text(stats) == "stopping: interrupted by Ctrl-C"
    stream = io.StringIO()
    Display(stats, mode="plain", stream=stream).summary(Summary(results="r.partial", complete=False))
    assert "stopped early: interrupted by Ctrl-C\n" in stream.getvalue() and "finishing" not in stream.getvalue()


def test_long_paths_in_the_summary_are_never_cut():
    results = "/tmp/" + "deep/" * 30 + "prompts.results.jsonl"
    config = "/home/someone/" + "project/" * 20 + "llmbatch.toml"
    stream = io.StringIO()
    Display(busy_stats(), mode="plain", stream=stream).summary(Summary(results=results, complete=True, config=config))
    lines = stream.getvalue().splitlines()
    assert re.search(rf"^  limits from\s+{re.escape(config)}$", "\n".join(lines), re.MULTILINE)
    assert re.search(rf"^  results\s+{re.escape(results)}$", "\n".join(lines), re.MULTILINE)
    assert "…" not in stream.getvalue()


def test_messages_and_plain_lines_are_written_whole():
    class Slow(io.StringIO):
        """A stream that yields the GIL in the middle of each write, as a pipe may."""

        def write(self, text: str) -> int:
            half = len(text) // 2
            super().write(text[:half])
            time.sleep(0.001)
            return super().write(text[half:]) + half

    stream = Slow()
    display = Display(busy_stats(), mode="plain", stream=stream, plain_first_s=0.001, plain_every_s=0.001)
    with display:
        for i in range(200):
            display.message(f"retry line {i} (q{i}), attempt 1: ProviderError 503: busy; retrying in 0.1s")
    for line in stream.getvalue().splitlines():
        assert re.match(
            r"^(retry line \d+ \(q\d+\), attempt 1: .*; retrying in 0\.1s|llmbatch: 40/100 done, .*)$", line
        ), line


def test_a_run_stopped_before_it_began_shows_no_wall_time_of_its_own():
    # A Ctrl-C while the run was starting: its clock never started, and the machine's uptime
    # (the monotonic clock's zero) must not show as the run's wall time.
    stream = io.StringIO()
    stats = RunStats(total=30, stopped="interrupted by Ctrl-C")
    Display(stats, mode="quiet", stream=stream).summary(Summary(results="out.jsonl", complete=False))
    assert ", 0.0s, " in stream.getvalue()
