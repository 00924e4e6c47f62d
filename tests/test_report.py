"""`llmbatch report`: a results file summed up in the terminal, as JSON, and as an HTML page.

End to end, the results come from the real CLI against the simulator (its directives make error
lines and cut-off answers on purpose). The page is opened in a real headless Chromium, which must
render the charts and must not run anything the data smuggled in."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

from llmbatch.app import report as report_module
from llmbatch.app.report import latency_histogram, percentile, read_report, render_html
from llmbatch.errors import printable
from llmbatch.pricing import format_usd
from tests.support import prompts, read_results, run_cli, write_jsonl

ROOT = Path(__file__).parent.parent

LONG = "please answer with a long sentence of many words"


def mixed_prompts() -> list[dict[str, Any]]:
    """14 lines: 6 plain answers, a duplicate of the first, two 400s sharing a message, a 422,
    three answers cut off at 3 tokens, and one answer from a model with no known price."""
    return [
        *prompts(6),
        {"id": "dup", "prompt": "question number 0"},
        {"id": "e1", "prompt": "[[sim:status=400]] first"},
        {"id": "e2", "prompt": "[[sim:status=400]] second"},
        {"id": "e3", "prompt": "[[sim:status=422]] third"},
        *({"id": f"t{i}", "prompt": f"{LONG} {i}", "max_tokens": 3} for i in (1, 2, 3)),
        {"id": "free", "prompt": "question on another model", "model": "openai:sim-1"},
    ]


def one_line(text: str) -> list[str]:
    """The terminal output's lines with runs of spaces made one: table layout aside."""
    return [" ".join(line.split()) for line in text.splitlines()]


def report_json(llmbatch, path: Path) -> dict[str, Any]:
    result = llmbatch("report", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_report_of_a_real_run_counts_statuses_models_finish_reasons_errors_and_cut_off_lines(tmp_path, llmbatch):
    path = write_jsonl(tmp_path / "mixed.jsonl", mixed_prompts())
    assert llmbatch("run", str(path)).exit_code == 1  # some lines ended in error
    results_path = tmp_path / "mixed.results.jsonl"
    rows = read_results(results_path)
    newer = "hit" in rows[0]  # results written once the `hit` field exists say "duplicate"

    data = report_json(llmbatch, results_path)
    assert data["file"] == str(results_path)
    assert data["lines"] == 14
    assert data["status"] == {"ok": 11, "error": 3}
    assert data["answered_by"] == {
        "call": 13,
        "cache": 0 if newer else 1,
        "duplicate": 1 if newer else 0,
        "no_call": 0,
    }
    assert data["finish_reasons"] == {"stop": 8, "length": 3}
    mini, free = data["models"]["openai:gpt-4o-mini"], data["models"]["openai:sim-1"]
    assert {k: mini[k] for k in ("lines", "ok", "errors", "calls", "truncated", "unpriced")} == {
        "lines": 13,
        "ok": 10,
        "errors": 3,
        "calls": 12,
        "truncated": 3,
        "unpriced": 0,
    }
    assert free["cost_usd"] is None and free["spent_usd"] is None and free["unpriced"] == 1

    answers = [r for r in rows if r["status"] == "ok"]
    assert data["tokens"]["prompt"] == sum(r["usage"]["prompt_tokens"] for r in answers)
    assert data["tokens"]["completion"] == sum(r["usage"]["completion_tokens"] for r in answers)
    paid = [r["cost_usd"] for r in answers if r["cost_usd"] is not None]
    assert len(paid) == 10 and all(c > 0 for c in paid)
    assert data["cost"]["total_usd"] == pytest.approx(sum(paid))
    dup_cost = next(r["cost_usd"] for r in rows if r["id"] == "dup")
    assert data["cost"]["spent_usd"] == pytest.approx(sum(paid) - dup_cost)
    assert data["cost"]["from_cache_usd"] == pytest.approx(dup_cost)
    assert data["cost"]["unpriced"] == 1 and data["cost"]["unpriced_models"] == ["openai:sim-1"]

    # Latency: the answers of calls made (an error line has none; the duplicate's is the first call's).
    timed = sorted(r["latency_ms"] for r in answers if r["id"] != "dup")
    assert data["latency_ms"]["calls"] == 10
    assert data["latency_ms"]["max"] == timed[-1]
    assert data["latency_ms"]["p50"] == timed[4]  # nearest rank: the 5th of 10
    assert sum(b["count"] for b in data["latency_ms"]["histogram"]) == 10

    [bad_request, unprocessable] = data["errors"]
    assert bad_request == {
        "type": bad_request["type"],
        "message": bad_request["message"],
        "status_code": 400,
        "count": 2,
        "first_line": 8,
        "first_id": "e1",
    }
    assert "simulated bad request" in bad_request["message"]
    assert (unprocessable["status_code"], unprocessable["count"], unprocessable["first_line"]) == (422, 1, 10)
    assert data["truncated"] == {
        "count": 3,
        "first": [{"line": 11, "id": "t1"}, {"line": 12, "id": "t2"}, {"line": 13, "id": "t3"}],
        "more": 0,
    }

    shown = llmbatch("report", str(results_path))
    assert shown.exit_code == 0, shown.stderr
    lines = one_line(shown.stdout)
    assert lines[0] == f"llmbatch report: {results_path} 14 result lines"
    assert "status ok 11 error 3" in lines
    assert ("answered by call 13 cache 0 duplicate 1" if newer else "answered by call 13 cache 1 duplicate 0") in lines
    assert "cut off 3" in lines
    assert f"cost of the answers {format_usd(sum(paid))} + 1 answer of unknown price" in lines
    assert any(line.startswith("latency p50 ") and line.endswith("(10 answered calls)") for line in lines)
    assert any(line.startswith("openai:gpt-4o-mini 13 10 3 3 12 ") for line in lines)
    assert any(line.startswith("openai:sim-1 1 1 0 0 1 ") and line.endswith("unknown unknown 1") for line in lines)
    assert "finish reasons stop 8 length 3" in lines
    assert "errors: 3 lines, 2 groups" in lines
    assert any(re.match(r"2 \w+ 400 8 e1 .*simulated bad request", line) for line in lines)
    assert "cut off: 3 answers stopped at the token limit (finish reason length)" in lines
    assert "line 11 (id t1), line 12 (id t2), line 13 (id t3)" in lines
    assert lines[-1].startswith("note: 1 model has no known price (openai:sim-1: 1 answer): that cost is unknown")


def test_a_rerun_from_the_cache_has_no_latency_to_report_and_spent_nothing_on_answers(tmp_path, llmbatch):
    path = write_jsonl(tmp_path / "mixed.jsonl", mixed_prompts())
    llmbatch("run", str(path))
    llmbatch("run", str(path))  # every answer is a hit now; the error lines are called again
    data = report_json(llmbatch, tmp_path / "mixed.results.jsonl")
    assert data["answered_by"]["call"] == 3 and data["answered_by"]["cache"] + data["answered_by"]["duplicate"] == 11
    assert data["latency_ms"] == {"calls": 0, "p50": None, "p90": None, "p99": None, "max": None, "histogram": []}
    assert data["cost"]["spent_usd"] == 0 and data["cost"]["from_cache_usd"] == data["cost"]["total_usd"] > 0
    shown = llmbatch("report", str(tmp_path / "mixed.results.jsonl"))
    assert any(line.startswith("latency no answer came from a call") for line in one_line(shown.stdout))


def test_html_option_writes_the_page_and_keeps_stdout_for_the_json(tmp_path, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    llmbatch("run", str(path))
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    result = llmbatch("report", str(tmp_path / "p.results.jsonl"), "--json", "--html", str(page))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["lines"] == 3
    assert f"report page written to {page}" in result.stderr
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "p.results.jsonl" in text
    assert [p.name for p in page.parent.iterdir()] == ["report.html"]  # no temporary file left behind


# --- bad input ----------------------------------------------------------------------------------


def result(**fields: Any) -> dict[str, Any]:
    """One result line as `llmbatch run` writes it (an answered call), with fields overridden."""
    line = {
        "id": "r",
        "line": 1,
        "status": "ok",
        "cached": False,
        "content": "an answer",
        "finish_reason": "stop",
        "model": "openai:gpt-4o-mini",
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        "latency_ms": 100.0,
        "attempts": 1,
        "cost_usd": 0.0001,
        "key": "v1:0",
        "metadata": None,
        "error": None,
        "response": None,
    }
    line.update(fields)
    return line


def failed(message: str, type_: str = "InvalidRequestError", status_code: int | None = 400, **fields: Any):
    error = {"type": type_, "message": message, "status_code": status_code}
    return result(
        status="error",
        content=None,
        finish_reason=None,
        usage=None,
        latency_ms=None,
        cost_usd=None,
        error=error,
        **fields,
    )


def test_a_line_that_is_not_json_is_named_by_file_and_line_with_exit_2(tmp_path, llmbatch):
    path = write_jsonl(tmp_path / "r.jsonl", [result(), result(id="b", line=2), "{not json", result(id="d", line=4)])
    outcome = llmbatch("report", str(path))
    assert outcome.exit_code == 2
    assert "Traceback" not in outcome.stdout + outcome.stderr
    assert outcome.stdout == ""  # no half report
    assert outcome.stderr.splitlines()[0].startswith(f"{path}:3: not valid JSON (")
    assert outcome.stderr.splitlines()[-1].startswith("llmbatch: error: 1 invalid line")


def test_json_that_is_not_a_result_line_says_what_is_wrong(tmp_path, llmbatch):
    path = write_jsonl(
        tmp_path / "r.jsonl",
        [
            result(),
            "[1, 2]",
            {"id": "q", "prompt": "a prompt, not a result"},
            result(status="done"),
            result(cost_usd="0.1"),
            result(model=None),
            result(latency_ms=True),
            "",
            result(hit="maybe"),
        ],
    )
    outcome = llmbatch("report", str(path))
    assert outcome.exit_code == 2
    assert outcome.stderr.splitlines()[:-1] == [
        f"{path}:2: not a result line: a JSON object was expected, not an array",
        f"{path}:3: not a result line: this looks like a prompt line (llmbatch run writes the results file)",
        f'{path}:4: not a result line: "status" must be "ok" or "error", not "done"',
        f'{path}:5: "cost_usd" must be a number or null, not "0.1"',
        f'{path}:6: "model" must be a string, not null',
        f'{path}:7: "latency_ms" must be a number or null, not true',
        f'{path}:9: "hit" must be "exact", "duplicate" or null, not "maybe"',
    ]


def test_a_file_cut_mid_line_says_it_ends_in_the_middle_of_a_line(tmp_path, llmbatch):
    path = tmp_path / "r.jsonl.partial"
    path.write_text(json.dumps(result()) + "\n" + json.dumps(result(id="b"))[:40], encoding="utf-8")
    outcome = llmbatch("report", str(path))
    assert outcome.exit_code == 2
    assert (
        outcome.stderr.splitlines()[0]
        == f"{path}:2: the file ends in the middle of a line (is a run still writing it?)"
    )


def test_a_missing_file_is_a_usage_error(tmp_path, llmbatch):
    outcome = llmbatch("report", str(tmp_path / "nope.jsonl"))
    assert outcome.exit_code == 2
    assert outcome.stderr == f"llmbatch: error: results file not found: {tmp_path / 'nope.jsonl'}\n"


def test_results_can_come_from_stdin_with_a_bom_crlf_and_blank_lines(env):
    text = "\ufeff" + json.dumps(result()) + "\r\n\r\n" + json.dumps(result(id="b", line=2)) + "\r\n"
    outcome = run_cli(["report", "-", "--json"], env=env, stdin=text)
    assert outcome.exit_code == 0, outcome.stderr
    data = json.loads(outcome.stdout)
    assert (data["file"], data["lines"], data["status"]["ok"]) == ("<stdin>", 2, 2)


# --- what is counted, and how -----------------------------------------------------------------


def write_results(tmp_path: Path, rows: list[dict[str, Any] | str]) -> Path:
    return write_jsonl(tmp_path / "results.jsonl", rows)


def test_hit_and_truncated_fields_win_over_cached_and_finish_reason_when_present(tmp_path):
    report = read_report(
        str(
            write_results(
                tmp_path,
                [
                    result(id="a", hit=None, cached=False, truncated=True, finish_reason="stop"),
                    result(id="b", hit="exact", cached=True, truncated=False, finish_reason="length"),
                    result(id="c", hit="duplicate", cached=True, latency_ms=999.0),
                    result(id="d", cached=True, latency_ms=999.0),  # an older file: no hit field
                    result(id="e", finish_reason="length"),  # an older file: no truncated field
                ],
            )
        )
    )
    data = report.to_dict()
    assert data["answered_by"] == {"call": 2, "cache": 2, "duplicate": 1, "no_call": 0}
    assert data["truncated"]["first"] == [{"line": 1, "id": "a"}, {"line": 1, "id": "e"}]
    assert list(report.latencies) == [100.0, 100.0]  # hits and duplicates keep the first call's latency


def test_unknown_prices_are_reported_as_unknown_never_as_zero(tmp_path):
    report = read_report(
        str(
            write_results(
                tmp_path,
                [
                    result(model="acme:new", cost_usd=None),
                    result(model="acme:new", cost_usd=None, cached=True),
                    result(model="openai:gpt-4o-mini", cost_usd=0.00002),
                    failed("nope"),  # an error has no cost: it is not an unpriced answer
                ],
            )
        )
    )
    data = report.to_dict()
    assert data["models"]["acme:new"]["cost_usd"] is None and data["models"]["acme:new"]["unpriced"] == 2
    assert data["models"]["openai:gpt-4o-mini"]["cost_usd"] == 0.00002
    assert data["cost"]["total_usd"] == 0.00002 and data["cost"]["unpriced"] == 2
    assert report.unpriced_note() == (
        "1 model has no known price (acme:new: 2 answers): that cost is unknown, not 0, and is left out of the totals"
    )
    only_unknown = read_report(str(write_results(tmp_path, [result(model="acme:new", cost_usd=None)])))
    assert only_unknown.to_dict()["cost"]["total_usd"] is None


def test_money_shows_significant_digits_never_zero_for_a_cost_nor_scientific_notation():
    assert [format_usd(x) for x in (None, 0, 0.000085, 3.9e-6, 1e-9, 0.0123, 0.5, 0.999, 1, 1234.5678)] == [
        "unknown",
        "$0",
        "$0.000085",
        "$0.0000039",
        "$0.000000001",
        "$0.0123",
        "$0.50",
        "$0.999",
        "$1.00",
        "$1,234.57",
    ]
    for amount in (1e-7, 2.5e-5, 0.004999, 0.00001234):
        text = format_usd(amount)
        assert "e" not in text and text != "$0.0000" and float(text[1:]) == pytest.approx(amount, rel=0.01)


def test_percentiles_are_nearest_rank_over_the_calls_made():
    latencies = [float(n) for n in range(1, 101)]
    assert [percentile(latencies, p) for p in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_the_histogram_covers_every_call_and_puts_a_slow_tail_in_a_bucket_of_its_own():
    steady = sorted(100.0 + (i % 50) for i in range(1000))
    buckets = latency_histogram(steady)
    assert sum(b.count for b in buckets) == 1000 and not any(b.overflow for b in buckets)
    assert buckets[0].from_ms <= 100 and buckets[-1].to_ms >= 149 and 10 <= len(buckets) <= 30
    edges = [(b.from_ms, b.to_ms) for b in buckets]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(edges))  # contiguous

    hung = sorted([*steady, 30_000.0, 30_000.0])  # two calls waited for a timeout
    tail = latency_histogram(hung)
    assert tail[-1].overflow and tail[-1].count == 2 and tail[-1].to_ms == 30_000.0
    assert sum(b.count for b in tail) == 1002 and len(tail) <= 30

    assert [(b.count, b.overflow) for b in latency_histogram([5.0, 5.0])] == [(2, False)]


def test_errors_are_grouped_by_type_and_message_with_a_count_and_the_first_line(tmp_path):
    rows = [
        failed("rate limited", "RateLimitError", 429, id="a", line=1),
        result(id="b", line=2),
        failed("bad request", id="c", line=3),
        failed("rate limited", "RateLimitError", 429, id="d", line=4),
        failed("rate limited", "OtherError", 429, id="e", line=5),
        failed("bad request", id="f", line=6),
        failed("rate limited", "RateLimitError", 429, id="g", line=7),
    ]
    data = read_report(str(write_results(tmp_path, rows))).to_dict()
    assert [(g["type"], g["message"], g["count"], g["first_line"], g["first_id"]) for g in data["errors"]] == [
        ("RateLimitError", "rate limited", 3, 1, "a"),
        ("InvalidRequestError", "bad request", 2, 3, "c"),
        ("OtherError", "rate limited", 1, 5, "e"),
    ]


def test_distinct_error_messages_past_the_limit_are_counted_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "MAX_ERROR_GROUPS", 3)
    rows = [failed(f"request id {i} failed", id=f"e{i}", line=i) for i in range(1, 11)]
    data = read_report(str(write_results(tmp_path, [*rows, failed("request id 1 failed", line=11)]))).to_dict()
    assert [g["count"] for g in data["errors"]] == [2, 1, 1]
    assert data["other_errors"] == 7 and data["status"]["error"] == 11


def test_cut_off_lines_list_the_first_twenty_and_count_the_rest(tmp_path, llmbatch):
    rows = [result(id=f"c{i}", line=i, finish_reason="length") for i in range(1, 26)]
    path = write_results(tmp_path, rows)
    data = read_report(str(path)).to_dict()
    assert data["truncated"]["count"] == 25 and data["truncated"]["more"] == 5
    assert data["truncated"]["first"][-1] == {"line": 20, "id": "c20"}
    shown = one_line(llmbatch("report", str(path)).stdout)
    listing = next(line for line in shown if line.startswith("line 1 (id c1)"))
    assert listing.endswith("line 20 (id c20), and 5 more")


# --- nothing from the data can take over a terminal or a page --------------------------------

NASTY = "<script>alert('x')</script> \x1b[31mred\x1b[0m \x1b]0;pwned\x07 \x9b2J \u202eevil\u202c bell\x07 \r\n"


def nasty_results(tmp_path: Path) -> Path:
    return write_results(
        tmp_path,
        [
            failed(NASTY, type_=f"Err{NASTY}", id=f"id{NASTY}", line=1, model=f"openai:m{NASTY}"),
            result(id=f"cut{NASTY}", line=2, finish_reason="length", model=f"openai:m{NASTY}"),
        ],
    )


def test_control_characters_from_the_data_are_shown_escaped_in_the_terminal(tmp_path, llmbatch):
    shown = llmbatch("report", str(nasty_results(tmp_path)))
    assert shown.exit_code == 0, shown.stderr
    out = shown.stdout
    for raw in ("\x1b", "\x9b", "\x07", "\u202e", "\r"):
        assert raw not in out, repr(raw)
    assert "\\x1b[31mred\\x1b[0m" in out and "\\x9b2J" in out and "\\u202eevil" in out
    assert "<script>alert('x')</script>" in out  # plain text in a terminal: nothing to escape


def test_printable_escapes_every_control_character_and_leaves_other_text_alone():
    assert printable("café ✓ 数 tab\there") == "café ✓ 数 tab\\there"
    assert printable("\x00\x1b\x7f\x85\u2028\u2066") == "\\x00\\x1b\\x7f\\x85\\u2028\\u2066"
    assert printable(42) == "42"


def test_the_page_escapes_every_string_from_the_data(tmp_path):
    page = render_html(read_report(str(nasty_results(tmp_path))))
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") >= 4  # id, type, message, model
    assert "\x1b" not in page and "\\x1b[31m" in page


def test_the_page_loads_nothing_from_anywhere(tmp_path):
    page = render_html(read_report(str(nasty_results(tmp_path))))
    for outside in ("http://", "https://", "src=", "href=", "url(", "@import", "<link", "<iframe", "<img"):
        assert outside not in page.lower(), outside
    assert "default-src 'none'" in page  # and the browser is told to refuse anything that slipped in


# --- the page in a real browser -----------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must test the HTML page in a browser")
        pytest.skip(reason)
    return found


def run_chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a new one each time
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
        f"file://{page}",
    ]
    done = subprocess.run(command, capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


def png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA PNG (what Chromium writes) into rows of pixels, with zlib only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, bpp = 8, [], 0, 0, 0
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        pos += 12 + size
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:  # Up
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(rgb for i in range(0, stride, bpp) for rgb in line[i : i + 3]))
        prev = line
    return width, height, rows


def a_busy_results_file(tmp_path: Path) -> Path:
    """400 lines over three models: lognormal latencies with two hung calls, errors, cut-off
    answers, hits, an unpriced model, and a hostile id."""
    import random

    rng = random.Random(4)
    rows: list[dict[str, Any] | str] = []
    for i in range(1, 401):
        model = ("openai:gpt-4o-mini", "openai:gpt-4o", "acme:house-model")[i % 3]
        cost = None if model.startswith("acme") else (0.0004 if model == "openai:gpt-4o" else 0.00003)
        latency = round(rng.lognormvariate(5.5, 0.35), 1)
        if i in (50, 51):
            latency = 30_000.0
        if i % 37 == 0:
            rows.append(failed("Error code: 400 - bad request", id=f"q{i}", line=i, model=model))
        elif i % 53 == 0:
            rows.append(failed("Error code: 503 - overloaded", "ServiceUnavailableError", 503, id=f"q{i}", line=i))
        else:
            rows.append(
                result(
                    id=f"<script>alert({i})</script>" if i == 29 else f"q{i}",  # listed: cut off
                    line=i,
                    model=model,
                    cost_usd=cost,
                    latency_ms=latency,
                    cached=i % 4 == 0,
                    finish_reason="length" if i % 29 == 0 else "stop",
                )
            )
    return write_results(tmp_path, rows)


def test_the_page_renders_in_headless_chromium_with_its_charts(tmp_path, llmbatch):
    chromium()
    source = a_busy_results_file(tmp_path)
    page = tmp_path / "report.html"
    outcome = llmbatch("report", str(source), "--html", str(page), "--json")
    assert outcome.exit_code == 0, outcome.stderr
    data = json.loads(outcome.stdout)

    dom = run_chromium(tmp_path, page, "--dump-dom").stdout.decode()
    histogram = re.search(r'<svg class="histogram".*?</svg>', dom, re.S)
    assert histogram is not None
    bars = re.findall(r'<rect class="bar[ "]', histogram.group())
    assert len(bars) == len(data["latency_ms"]["histogram"]) >= 10
    assert 'class="bar overflow"' in histogram.group()  # the two hung calls, drawn apart
    costs = re.search(r'<svg class="costs".*?</svg>', dom, re.S)
    assert costs is not None and len(re.findall(r'<rect class="spent"', costs.group())) == 2
    assert "unknown price (" in costs.group()  # acme:house-model
    assert "<script" not in dom  # the hostile id stayed text
    assert "&lt;script&gt;alert(29)&lt;/script&gt;" in dom

    shot = tmp_path / "report.png"
    run_chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1200,1600")
    width, height, rows = png_rows(shot.read_bytes())
    assert (width, height) == (1200, 1600)
    colours = {row[i : i + 3] for row in rows[::4] for i in range(0, len(row), 12)}
    assert len(colours) > 20  # not blank: text, cards, bars
    accent = bytes((0x3D, 0x5A, 0xFE))  # the bars' blue: the charts were drawn
    assert sum(row.count(accent) for row in rows) > 2000


def test_the_readme_documents_every_key_of_the_json_report(tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Looking at results", 1)[1].split("\n## ", 1)[0]
    data = read_report(str(a_busy_results_file(tmp_path))).to_dict()
    keys = {
        *data,
        *data["status"],
        *data["answered_by"],
        *next(iter(data["models"].values())),
        *data["tokens"],
        *data["cost"],
        *data["latency_ms"],
        *data["latency_ms"]["histogram"][0],
        *data["errors"][0],
        *data["truncated"],
        *data["truncated"]["first"][0],
    }
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    documented = {word for span in re.findall(r"`([^`]+)`", prose) for word in re.findall(r"\w+", span)}
    assert sorted(keys - documented) == []


def test_an_empty_results_file_is_reported_as_zero_lines_everywhere(tmp_path, llmbatch):
    path = tmp_path / "empty.results.jsonl"
    path.write_bytes(b"")
    page = tmp_path / "empty.html"
    data = report_json(llmbatch, path)
    assert (data["lines"], data["cost"]["total_usd"], data["latency_ms"]["p50"], data["errors"]) == (0, 0, None, [])
    shown = llmbatch("report", str(path), "--html", str(page))
    assert shown.exit_code == 0, shown.stderr
    assert one_line(shown.stdout)[0] == f"llmbatch report: {path} 0 result lines"
    assert "No line ended in error." in page.read_text(encoding="utf-8")


# --- where the page goes: never over a file that is not ours ----------------------------------


def _results(tmp_path: Path, llmbatch) -> Path:
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert llmbatch("run", str(path)).exit_code == 0
    return tmp_path / "p.results.jsonl"


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root (CI runs as root)")
def test_the_page_is_written_into_a_device_or_a_fifo_in_place_never_replacing_it(tmp_path, llmbatch):
    import stat
    import threading

    results = _results(tmp_path, llmbatch)
    device = tmp_path / "mynull"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert run_cli(["report", str(results), "--html", str(device), "--json"]).exit_code == 0
    assert stat.S_ISCHR(os.lstat(device).st_mode)  # still the device

    fifo = tmp_path / "page.html"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert run_cli(["report", str(results), "--html", str(fifo), "--json"]).exit_code == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and got[0].startswith(b"<!DOCTYPE html>")


def test_the_page_never_goes_through_a_link_over_a_read_only_file_or_over_the_results(tmp_path, llmbatch):
    results = _results(tmp_path, llmbatch)
    kept = tmp_path / "kept.txt"
    kept.write_text("keep me\n")
    link = tmp_path / "l.html"
    link.symlink_to(kept)
    refused = run_cli(["report", str(results), "--html", str(link)])
    assert refused.exit_code == 2 and "symbolic link" in refused.stderr
    assert link.is_symlink() and kept.read_text() == "keep me\n"

    kept.chmod(0o444)
    refused = run_cli(["report", str(results), "--html", str(kept)])
    assert refused.exit_code == 2 and "read-only" in refused.stderr and kept.read_text() == "keep me\n"

    before = results.read_bytes()
    refused = run_cli(["report", str(results), "--html", str(results)])
    assert refused.exit_code == 2 and "results file being read" in refused.stderr
    assert results.read_bytes() == before


def test_the_page_keeps_the_mode_of_the_file_it_replaces_and_dash_means_stdout(tmp_path, llmbatch):
    results = _results(tmp_path, llmbatch)
    page = tmp_path / "s.html"
    page.write_text("old")
    page.chmod(0o600)
    assert run_cli(["report", str(results), "--html", str(page)]).exit_code == 0
    assert (page.stat().st_mode & 0o777) == 0o600 and page.read_text().startswith("<!DOCTYPE html>")

    to_stdout = run_cli(["report", str(results), "--html", "-"])
    assert to_stdout.exit_code == 0 and to_stdout.stdout.startswith("<!DOCTYPE html>")
    assert not (Path.cwd() / "-").exists()
