"""A big input is checked in two halves at once, the second by a forked child that also answers
its leading cache hits (runner.validate, llmbatch.forked). Whatever the child does, the outcome
is exactly that of one pass: the same results in the same order, every bad line and duplicate id
reported with its line number, nothing paid twice; and if the child fails, this process does its
half itself.

These runs use ``--simulate`` in-process: a simulator thread in the test process would (rightly)
stop llmbatch from forking. Whether the child ran is observed on ``Forked.result``, unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmbatch import runner
from llmbatch.forked import Forked
from tests.support import read_results, run_cli, write_jsonl

PAD = "x" * 4200  # ~4.3 KB a line: 1,000 lines make an input big enough to be split
N = 1000


def big_prompts(n: int = N, tag: str = "") -> list[dict[str, str]]:
    return [{"id": f"q{i}", "prompt": f"{tag}question {i} {PAD}"} for i in range(n)]


def write_big(path: Path, rows: list) -> Path:
    write_jsonl(path, rows)
    assert path.stat().st_size >= runner.SPLIT_MIN_BYTES  # else this file tests nothing
    return path


def run(*args: str, env: dict[str, str]):
    return run_cli(["run", *args, "--simulate", "-q", "-c", "200"], env=env)


def calls_made(stderr: str) -> int:
    [line] = [line for line in stderr.splitlines() if "calls made" in line]
    return int(line.split()[-1].replace(",", ""))


@pytest.fixture
def halves(monkeypatch) -> list:
    """What each forked child handed back (None: it failed), observed without changing it."""
    seen: list = []
    real = Forked.result

    def result(self):
        value = real(self)
        seen.append(value)
        return value

    monkeypatch.setattr(Forked, "result", result)
    return seen


@pytest.fixture
def cached(tmp_path, env) -> Path:
    """A big input whose every line is in the cache (the cold run itself in one process)."""
    path = write_big(tmp_path / "big.jsonl", big_prompts())
    done = run(str(path), "--workers", "0", "-o", str(tmp_path / "cold.jsonl"), env=env)
    assert done.exit_code == 0, done.stderr
    return path


@pytest.mark.parametrize("output", ["file", "stdout", "beside an old partial file"])
def test_a_big_cached_rerun_is_answered_by_two_processes_exactly_as_by_one(tmp_path, env, cached, halves, output):
    one = tmp_path / "one.jsonl"
    assert run(str(cached), "--workers", "0", "-o", str(one), env=env).exit_code == 0
    assert halves == []  # --workers 0: everything in this process
    two = tmp_path / "two.jsonl"
    if output == "beside an old partial file":
        Path(f"{two}.partial").write_text('{"line": 1}\n')

    done = run(str(cached), "-o", "-" if output == "stdout" else str(two), env=env)

    assert done.exit_code == 0, done.stderr
    [handed] = halves
    assert handed is not None and handed["hits"]["lines"] > N // 3  # the child answered its half
    assert calls_made(done.stderr) == 0
    got = done.stdout.encode() if output == "stdout" else two.read_bytes()
    assert got == one.read_bytes()
    assert [row["line"] for row in read_results(one)] == list(range(1, N + 1))


@pytest.mark.parametrize("where", [10, N - 10])
def test_a_changed_line_in_either_half_is_the_one_call_and_every_line_is_in_order(tmp_path, env, cached, halves, where):
    rows = big_prompts()
    rows[where] = {"id": f"q{where}", "prompt": "a new question"}
    write_big(cached, rows)

    done = run(str(cached), "-o", str(tmp_path / "out.jsonl"), env=env)

    assert done.exit_code == 0, done.stderr
    assert [h is not None for h in halves] == [True]
    assert calls_made(done.stderr) == 1
    results = read_results(tmp_path / "out.jsonl")
    assert [row["id"] for row in results] == [f"q{i}" for i in range(N)]
    assert [row["line"] for row in results] == list(range(1, N + 1))
    assert [row["id"] for row in results if not row["cached"]] == [f"q{where}"]


def test_bad_lines_and_a_reused_id_in_both_halves_are_all_reported_with_their_line_numbers(tmp_path, env, halves):
    rows: list = big_prompts()
    rows[0] = "\ufeff" + '{"id": "q0", "prompt": "a first line with a BOM"}'
    rows[3] = ""  # blank lines and CRLF endings still count as lines in the second half's numbering
    rows[5] = '{"id": "q5", "prompt": "windows"}\r'
    rows[20] = {"id": "q20", "prompt": 20}
    rows[N - 30] = "{not json"
    rows[N - 3] = {"id": "q7", "prompt": "the id of line 8 again"}
    path = write_big(tmp_path / "bad.jsonl", rows)

    done = run(str(path), env=env)

    assert done.exit_code == 2
    assert [h is not None for h in halves] == [True]
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f'{path}:21: "prompt" must be a string, got an integer'
    assert lines[1].startswith(f"{path}:{N - 29}: malformed JSON")
    assert lines[2:] == [
        f"{path}:{N - 2}: duplicate id 'q7' (first used on line 8)",
        "llmbatch: error: 3 invalid lines; nothing was sent",
    ]
    assert not (tmp_path / "bad.results.jsonl").exists()
    assert not (tmp_path / "bad.results.jsonl.partial").exists()


def _raise() -> None:
    raise RuntimeError("the child failed")


def _exit() -> None:
    os._exit(3)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("crash", [_raise, _exit, _kill], ids=["exception", "exit", "killed"])
def test_when_the_child_fails_this_process_does_its_half_with_the_same_outcome(
    tmp_path, env, cached, halves, monkeypatch, crash
):
    one = tmp_path / "one.jsonl"
    assert run(str(cached), "--workers", "0", "-o", str(one), env=env).exit_code == 0
    monkeypatch.setattr(runner, "_second_half", lambda *_: crash())  # the crash, in the child only

    done = run(str(cached), "-o", str(tmp_path / "two.jsonl"), env=env)

    assert done.exit_code == 0, done.stderr
    assert halves == [None]
    assert calls_made(done.stderr) == 0
    assert (tmp_path / "two.jsonl").read_bytes() == one.read_bytes()

    rows = big_prompts()
    rows[N - 5] = {"id": "q1", "prompt": "a reused id, late"}
    write_big(cached, [*rows[:-1], {"id": "last", "prompt": ""}])
    bad = run(str(cached), "-o", str(tmp_path / "three.jsonl"), env=env)
    assert bad.exit_code == 2
    assert bad.stderr.splitlines()[:2] == [
        f"{cached}:{N - 4}: duplicate id 'q1' (first used on line 2)",
        f'{cached}:{N}: "prompt" is empty',
    ]


def test_ctrl_c_while_checking_a_big_input_stops_both_processes_and_sends_nothing(tmp_path, env):
    path = tmp_path / "huge.jsonl"
    line = b'{"id": "%d", "prompt": "a question that is long enough to take a while to check"}\n'
    with path.open("wb") as out:
        for start in range(0, 1_000_000, 10_000):
            out.write(b"".join(line % i for i in range(start, start + 10_000)))
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr_file:  # a file, not a pipe: reading a pipe would wait for the child too
        process = subprocess.Popen(
            [sys.executable, "-m", "llmbatch", "run", str(path), "--simulate", "-q"],
            env={**os.environ, **env},
            stderr=stderr_file,
            start_new_session=True,  # its own process group, as a terminal's foreground job is
        )
        deadline = time.monotonic() + 30
        while not _children(process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _children(process.pid), "the second half was not given to a child"
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group gets it
        process.wait(timeout=60)
    left = _processes_reading(path)
    stderr = log.read_text()

    assert process.returncode == 130, stderr
    assert "interrupted while checking the input; nothing was sent" in stderr
    assert "Traceback" not in stderr
    assert not any(tmp_path.glob("huge.results*"))
    assert not left  # the child was stopped and reaped before the command returned


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _processes_reading(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (a forked child keeps its parent's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
