"""A big input is checked in two halves at once, the second by a forked child that also answers
its leading cache hits (llmbatch.app.validation). Whatever the child does, the outcome
is exactly that of one pass: the same results in the same order, every bad line and duplicate id
reported with its line number, nothing paid twice; and if the child fails, this process does its
half itself.

These runs use ``--simulate`` in-process: a simulator thread in the test process would (rightly)
stop llmbatch from forking. Whether the child ran is observed on ``Forked.result``, unchanged."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmbatch.app import validation as runner
from llmbatch.app.validation import Forked
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
    """From the one summary line of a quiet run: "..., 12 calls, ..." (or "1 call")."""
    [count] = [m.group(1) for line in stderr.splitlines() if (m := re.search(r"^llmbatch: .* ([\d,]+) calls?, ", line))]
    return int(count.replace(",", ""))


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


def huge_input(tmp_path: Path) -> Path:
    """1,000,000 short lines: seconds to check, even in two halves."""
    path = tmp_path / "huge.jsonl"
    line = b'{"id": "%d", "prompt": "a question that is long enough to take a while to check"}\n'
    with path.open("wb") as out:
        for start in range(0, 1_000_000, 10_000):
            out.write(b"".join(line % i for i in range(start, start + 10_000)))
    return path


def start(path: Path, env: dict[str, str], stderr) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "run", str(path), "--simulate", "-q"],
        env={**os.environ, **env},
        stderr=stderr,
        start_new_session=True,  # its own process group, as a terminal's foreground job is
    )


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def ctrl_c_when(path: Path, env: dict[str, str], ready, what: str) -> tuple[int, str, list[int]]:
    """Run on ``path``, press Ctrl-C once ``ready(pid)``; the exit code, stderr, and the processes
    still reading ``path`` right after the command returned."""
    log = path.with_suffix(".stderr.txt")
    with log.open("w") as stderr_file:  # a file, not a pipe: reading a pipe would wait for the child too
        process = start(path, env, stderr_file)
        assert wait_until(lambda: ready(process.pid), 30), what
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group gets it
        process.wait(timeout=60)
    left = _processes_reading(path)
    return process.returncode, log.read_text(), left


def test_ctrl_c_while_checking_a_big_input_stops_both_processes_and_sends_nothing(tmp_path, env):
    path = huge_input(tmp_path)
    returncode, stderr, left = ctrl_c_when(path, env, _children, "the second half was not given to a child")

    assert returncode == 130, stderr
    assert "interrupted while checking the input; nothing was sent" in stderr
    assert "Traceback" not in stderr
    assert not any(tmp_path.glob("huge.results*"))
    assert not left  # the child was stopped and reaped before the command returned


def test_a_parent_killed_with_9_takes_the_child_with_it(tmp_path, env):
    path = huge_input(tmp_path)
    process = start(path, env, subprocess.DEVNULL)
    assert wait_until(lambda: _children(process.pid), 30), "the second half was not given to a child"
    process.kill()
    process.wait(timeout=10)
    wait_until(lambda: not _processes_reading(path), 2)  # its half alone takes seconds more
    assert not _processes_reading(path)


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


def settings_of(cache_dir: Path) -> tuple[int, str]:
    from llmbatch.store import DiskStore

    cache = DiskStore(cache_dir, create=False)
    try:
        stats = cache.stats()
        return stats.size_limit, stats.eviction_policy
    finally:
        cache.close()


def test_a_first_split_run_on_a_new_cache_leaves_llmbatchs_settings_not_diskcaches(tmp_path, env, halves):
    from llmbatch.store import DEFAULT_EVICTION, DEFAULT_SIZE_LIMIT

    path = write_big(tmp_path / "big.jsonl", big_prompts())
    for attempt in range(3):  # the two opens raced: most runs, not every one, lost the settings
        cache_dir = tmp_path / f"cache{attempt}"
        done = run(
            str(path),
            "--cache-only",
            "-o",
            str(tmp_path / "out.jsonl"),
            env={**env, "LLMBATCH_CACHE_DIR": str(cache_dir)},
        )
        assert done.exit_code == 1  # every line "not in the cache"
        assert settings_of(cache_dir) == (DEFAULT_SIZE_LIMIT, DEFAULT_EVICTION)
    assert len(halves) == 3 and all(h is not None for h in halves)


def test_cache_options_given_to_a_split_run_are_kept(tmp_path, env, cached, halves):
    for policy, limit in [("least-recently-used", "30GB"), ("least-frequently-used", "40GB"), ("none", "50GB")]:
        done = run(
            str(cached),
            "--cache-eviction",
            policy,
            "--cache-size-limit",
            limit,
            "-o",
            str(tmp_path / "o.jsonl"),
            env=env,
        )
        assert done.exit_code == 0, done.stderr
        assert settings_of(Path(env["LLMBATCH_CACHE_DIR"])) == (int(limit[:2]) * 10**9, policy)
    assert len(halves) == 3 and all(h is not None and h["hits"]["lines"] > 0 for h in halves)


def test_a_refused_fork_means_one_process_does_it_all(tmp_path, env, cached, halves, monkeypatch):
    one = tmp_path / "one.jsonl"
    assert run(str(cached), "--workers", "0", "-o", str(one), env=env).exit_code == 0

    def refused() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")  # a container's pids limit

    monkeypatch.setattr(os, "fork", refused)
    done = run(str(cached), "-o", str(tmp_path / "two.jsonl"), env=env)

    assert done.exit_code == 0, done.stderr
    assert halves == []
    assert (tmp_path / "two.jsonl").read_bytes() == one.read_bytes()


class _OsWithLittleRoom:
    """``os`` as llmbatch.results sees it, on a disk with room for ``room`` more bytes written
    through descriptors (a real full disk cannot be made without privileges)."""

    def __init__(self, room: int) -> None:
        self._room = room

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if len(data) > self._room:
            self._room = 0
            raise OSError(28, "No space left on device")
        self._room -= len(data)
        return os.write(fd, data)

    def __getattr__(self, name: str):
        return getattr(os, name)


@pytest.mark.parametrize("output", ["file", "stdout"])
def test_with_no_room_to_take_the_childs_answers_over_this_process_answers_its_half(
    tmp_path, env, cached, halves, monkeypatch, output
):
    from llmbatch import results

    one = tmp_path / "one.jsonl"
    assert run(str(cached), "--workers", "0", "-o", str(one), env=env).exit_code == 0
    monkeypatch.setattr(results, "os", _OsWithLittleRoom(room=1 << 20))  # about a fifth of the child's lines

    done = run(str(cached), "-o", "-" if output == "stdout" else str(tmp_path / "two.jsonl"), env=env)

    assert done.exit_code == 0, done.stderr
    assert [h is not None for h in halves] == [True]
    assert calls_made(done.stderr) == 0
    got = done.stdout.encode() if output == "stdout" else (tmp_path / "two.jsonl").read_bytes()
    assert got == one.read_bytes()


def test_a_ctrl_c_that_arrives_during_the_fork_stops_the_child_too(tmp_path, env, cached, monkeypatch):
    real_fork = os.fork
    children: list[int] = []

    def fork_then_ctrl_c() -> int:
        pid = real_fork()
        if pid:
            children.append(pid)
            os.kill(os.getpid(), signal.SIGINT)  # held back until the fork is done: as a Ctrl-C then would be
        return pid

    monkeypatch.setattr(os, "fork", fork_then_ctrl_c)
    done = run(str(cached), "-o", str(tmp_path / "out.jsonl"), env=env)

    assert done.exit_code == 130
    assert "interrupted while checking the input; nothing was sent" in done.stderr
    [child] = children
    assert not Path(f"/proc/{child}").exists()  # killed and reaped, not left running


def test_ctrl_c_while_waiting_for_the_child_is_a_clean_interrupt(tmp_path, env):
    # The first half is a few long lines, quick to check; the second, many short ones: this
    # process soon waits for the child, and the Ctrl-C comes then.
    path = tmp_path / "skewed.jsonl"
    long_prompt = "y" * (1 << 21)
    short = b'{"id": "s%d", "prompt": "a short question"}\n'
    with path.open("wb") as out:
        for i in range(10):
            out.write(b'{"id": "long%d", "prompt": "%s"}\n' % (i, long_prompt.encode()))
        out.write(b"".join(short % i for i in range(500_000)))
    returncode, stderr, left = ctrl_c_when(
        path, env, lambda pid: _children(pid) and _waiting_on_a_pipe(pid), "this process never waited for the child"
    )

    assert returncode == 130, stderr
    assert "interrupted while checking the input; nothing was sent" in stderr
    assert "Traceback" not in stderr
    assert not left


def _waiting_on_a_pipe(pid: int) -> bool:
    try:
        return "pipe_read" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
