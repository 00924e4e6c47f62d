"""Where results go never destroys anything: not the prompts, not a file a link points to, not a
device, not a mode the user chose. Through the real CLI against the simulator, with real links,
hard links, FIFOs and device nodes; the simulator's counters prove that a refusal sent nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmbatch.errors import OutputError, UsageError
from llmbatch.results import Result, ResultWriter
from tests.support import prompts, read_results, write_jsonl

ROOT = Path(__file__).parent.parent

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can make device nodes or give files away")


def refused(run, message: str) -> None:
    """Exit code 2 and exactly this one line on stderr."""
    assert run.exit_code == 2, run.stderr
    assert run.stderr == f"llmbatch: error: {message}\n"


def result_ids(text: str) -> list[str]:
    return [json.loads(line)["id"] for line in text.splitlines()]


class Reader(threading.Thread):
    """Reads a FIFO (or a pipe's read end) to its end, as `cat fifo` would."""

    def __init__(self, path: Path | None = None, fd: int | None = None) -> None:
        super().__init__(daemon=True)  # a test that fails must not hang on a reader that never gets a writer
        self.path, self.fd, self.data = path, fd, b""

    def run(self) -> None:
        fd = self.fd if self.fd is not None else os.open(self.path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as stream:
            self.data = stream.read()

    def text(self) -> str:
        self.join(timeout=30)
        assert not self.is_alive(), "the reader never saw the end of the stream"
        return self.data.decode()


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- 1. a .partial we did not make is never used --------------------------------------------


def test_a_partial_that_is_a_symlink_is_never_followed(tmp_path, sim, llmbatch, monkeypatch):
    # What a cloned repository could ship: d/p.results.jsonl.partial -> ../../.bashrc
    home = tmp_path / "home"
    (home / "repo" / "d").mkdir(parents=True)
    bashrc = home / ".bashrc"
    bashrc.write_text("export PATH=$HOME/bin:$PATH\n")
    monkeypatch.chdir(home / "repo")
    write_jsonl(Path("d/p.jsonl"), prompts(3))
    Path("d/p.results.jsonl.partial").symlink_to("../../.bashrc")

    run = llmbatch("run", "d/p.jsonl")

    refused(
        run,
        "d/p.results.jsonl.partial is a symbolic link to ../../.bashrc, not a file llmbatch made; "
        "remove it and run again",
    )
    assert bashrc.read_text() == "export PATH=$HOME/bin:$PATH\n"
    assert Path("d/p.results.jsonl.partial").is_symlink() and not Path("d/p.results.jsonl").exists()
    assert sim.stats()["requests_received"] == 0


def test_a_dangling_partial_symlink_creates_nothing_at_its_target(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    partial = tmp_path / "p.results.jsonl.partial"
    partial.symlink_to(tmp_path / "planted")

    run = llmbatch("run", str(path))

    refused(
        run,
        f"{partial} is a symbolic link to {tmp_path / 'planted'}, not a file llmbatch made; remove it and run again",
    )
    assert not (tmp_path / "planted").exists() and partial.is_symlink()
    assert sim.stats()["requests_received"] == 0


def test_a_partial_symlink_is_refused_on_a_cached_rerun_too(tmp_path, sim, llmbatch):
    # A rerun whose lines are all cache hits writes them while validating (runner.HitPrefix):
    # that early path must not follow a dangling link either.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert llmbatch("run", str(path)).exit_code == 0
    (tmp_path / "p.results.jsonl").unlink()
    partial = tmp_path / "p.results.jsonl.partial"
    partial.symlink_to(tmp_path / "planted")

    run = llmbatch("run", str(path))

    refused(
        run,
        f"{partial} is a symbolic link to {tmp_path / 'planted'}, not a file llmbatch made; remove it and run again",
    )
    assert not (tmp_path / "planted").exists()
    assert sim.stats()["requests_received"] == 3  # the first run's, not one more


def test_a_partial_that_is_a_fifo_is_never_opened(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    partial = tmp_path / "p.results.jsonl.partial"
    os.mkfifo(partial)

    run = llmbatch("run", str(path))

    refused(run, f"{partial} is a FIFO, not a file llmbatch made; remove it and run again")
    assert stat.S_ISFIFO(os.lstat(partial).st_mode) and not (tmp_path / "p.results.jsonl").exists()
    assert sim.stats()["requests_received"] == 0


def test_a_partial_hard_linked_to_another_file_is_never_truncated(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    precious = tmp_path / "thesis.tex"
    precious.write_text("four years of work\n")
    partial = tmp_path / "p.results.jsonl.partial"
    os.link(precious, partial)

    run = llmbatch("run", str(path))

    refused(
        run,
        f"{partial} has 2 hard links (other names for the same file), so llmbatch will not truncate it; "
        "remove it and run again",
    )
    assert precious.read_text() == "four years of work\n"
    assert sim.stats()["requests_received"] == 0


@needs_root
def test_a_partial_owned_by_another_user_is_never_truncated(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    partial = tmp_path / "p.results.jsonl.partial"
    partial.write_text("someone else's lines\n")
    os.chown(partial, 4321, 4321)

    run = llmbatch("run", str(path))

    refused(
        run, f"{partial} belongs to another user (uid 4321), so llmbatch will not truncate it; remove it and run again"
    )
    assert partial.read_text() == "someone else's lines\n"
    assert sim.stats()["requests_received"] == 0


# --- 2. the results never overwrite the prompts ------------------------------------------------

PROMPTS = prompts(3)


def same_file_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """How -o (or the default output) can name the input: the arguments after the input, and the message."""
    same = tmp_path / "same.jsonl"
    return {
        "the same path": (["-o", "same.jsonl"], "cannot write results to same.jsonl: it is the input file"),
        "./ in front": (["-o", "./same.jsonl"], "cannot write results to same.jsonl: it is the input file"),
        "an absolute path": (["-o", str(same)], f"cannot write results to {same}: it is the input file"),
        "a symlink to the input": (
            ["-o", "link.jsonl"],
            "cannot write results to link.jsonl: it is a symbolic link to the input file same.jsonl",
        ),
        "a hard link to the input": (
            ["-o", "hard.jsonl"],
            "cannot write results to hard.jsonl: it is a hard link to the input file same.jsonl",
        ),
        "a default output linked to the input": (
            [],
            "cannot write results to same.results.jsonl: it is a symbolic link to the input file same.jsonl",
        ),
        "a default output hard linked to the input": (
            [],
            "cannot write results to same.results.jsonl: it is a hard link to the input file same.jsonl",
        ),
    }


@pytest.mark.parametrize("case", list(same_file_cases(Path("/x"))))
def test_results_never_overwrite_the_input(case, tmp_path, sim, llmbatch, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = write_jsonl(tmp_path / "same.jsonl", PROMPTS)
    before = same.read_bytes()
    (tmp_path / "link.jsonl").symlink_to("same.jsonl")
    os.link(same, tmp_path / "hard.jsonl")
    if case == "a default output linked to the input":
        (tmp_path / "same.results.jsonl").symlink_to("same.jsonl")
    if case == "a default output hard linked to the input":
        os.link(same, tmp_path / "same.results.jsonl")
    args, message = same_file_cases(tmp_path)[case]

    run = llmbatch("run", "same.jsonl", *args)

    refused(run, f"{message}; choose another file with -o")
    assert same.read_bytes() == before and stat.S_ISREG(os.lstat(same).st_mode)
    assert (tmp_path / "link.jsonl").is_symlink()
    assert sim.stats()["requests_received"] == 0


def test_results_never_truncate_an_input_at_their_partial_name(tmp_path, sim, llmbatch, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_jsonl(tmp_path / "r.jsonl.partial", PROMPTS)
    before = source.read_bytes()

    run = llmbatch("run", "r.jsonl.partial", "-o", "r.jsonl")

    refused(
        run,
        "cannot write results to r.jsonl: its temporary file r.jsonl.partial is the input file; "
        "choose another file with -o",
    )
    assert source.read_bytes() == before and not (tmp_path / "r.jsonl").exists()
    assert sim.stats()["requests_received"] == 0


def test_standard_output_appended_to_the_input_is_refused(tmp_path, env, sim):
    # `llmbatch run p.jsonl -o - >> p.jsonl`: the shell opens the input as stdout. A real process:
    # in-process runs have no real standard output to look at.
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    before = path.read_bytes()
    command = [sys.executable, "-m", "llmbatch", "run", str(path), "-o", "-", "--api-base", sim.url, "-m", "openai:m"]
    with path.open("ab") as stdout:
        done = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, **env}, timeout=120)

    assert done.returncode == 2
    assert done.stderr.decode() == (
        f"llmbatch: error: cannot write results to standard output: it is the input file {path}; "
        "choose another file with -o\n"
    )
    assert path.read_bytes() == before
    assert sim.stats()["requests_received"] == 0


# --- 3. devices, FIFOs and links at the output --------------------------------------------------


def test_a_fifo_output_is_written_in_place_as_a_stream(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(5))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = Reader(fifo)
    reader.start()

    run = llmbatch("run", str(path), "-o", str(fifo))

    assert run.exit_code == 0, run.stderr
    assert result_ids(reader.text()) == [f"q{i}" for i in range(5)]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out.fifo", "p.jsonl"]  # no .partial


def test_a_fifo_output_on_a_cached_rerun_gets_every_line(tmp_path, sim, llmbatch):
    # The leading hits are answered while validating, kept aside, then copied to the stream.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(4))
    assert llmbatch("run", str(path)).exit_code == 0
    write_jsonl(path, prompts(6))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = Reader(fifo)
    reader.start()

    run = llmbatch("run", str(path), "-o", str(fifo))

    assert run.exit_code == 0, run.stderr
    rows = [json.loads(line) for line in reader.text().splitlines()]
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(6)]
    assert [r["cached"] for r in rows] == [True] * 4 + [False] * 2
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_process_substitution_pipe_is_written_as_a_stream(tmp_path, sim, llmbatch):
    # `-o >(gzip > x.gz)` gives llmbatch /dev/fd/63: a link into /proc/self/fd, to a pipe.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    read_end, write_end = os.pipe()
    reader = Reader(fd=read_end)
    reader.start()
    try:
        run = llmbatch("run", str(path), "-o", f"/dev/fd/{write_end}")
    finally:
        os.close(write_end)  # the shell's copy of the write end: the reader sees the end once it is closed

    assert run.exit_code == 0, run.stderr
    assert result_ids(reader.text()) == ["q0", "q1", "q2"]


@needs_root
def test_a_character_device_output_is_written_in_place(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a twin of /dev/null

    run = llmbatch("run", str(path), "-o", str(null))

    assert run.exit_code == 0, run.stderr
    after = os.lstat(null)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "null", "p.jsonl"]
    assert sim.stats()["completions_served"] == 3


def test_the_real_dev_null_stays_a_character_device(tmp_path, sim, llmbatch):
    # As root, llmbatch once replaced the system's /dev/null with a regular file.
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))

    run = llmbatch("run", str(path), "-o", "/dev/null")

    assert run.exit_code == 0, run.stderr
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == os.makedev(1, 3)
    assert not os.path.lexists("/dev/null.partial")


def test_dev_stdout_means_standard_output(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))

    run = llmbatch("run", str(path), "-o", "/dev/stdout", "-q")

    assert run.exit_code == 0, run.stderr
    assert result_ids(run.stdout) == ["q0", "q1", "q2"]
    assert os.path.islink("/dev/stdout") and not os.path.lexists("/dev/stdout.partial")


def test_a_link_to_dev_stdout_means_standard_output(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    out = tmp_path / "out"
    out.symlink_to("/dev/stdout")

    run = llmbatch("run", str(path), "-o", str(out), "-q")

    assert run.exit_code == 0, run.stderr
    assert result_ids(run.stdout) == ["q0", "q1", "q2"]
    assert out.is_symlink() and os.readlink(out) == "/dev/stdout"


def test_a_link_to_a_character_device_is_written_through(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    out.symlink_to("/dev/null")

    run = llmbatch("run", str(path), "-o", str(out))

    assert run.exit_code == 0, run.stderr
    assert out.is_symlink() and os.readlink(out) == "/dev/null"
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_a_symlink_output_to_a_regular_file_is_refused(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    real = tmp_path / "kept" / "real.jsonl"
    real.parent.mkdir()
    real.write_text("not ours\n")
    out = tmp_path / "out.jsonl"
    out.symlink_to("kept/real.jsonl")

    run = llmbatch("run", str(path), "-o", str(out))

    target = os.path.realpath(real)
    refused(run, f"{out} is a symbolic link to {target}; give -o {target} to write there")
    assert real.read_text() == "not ours\n" and out.is_symlink()
    assert not os.path.lexists(f"{out}.partial")
    assert sim.stats()["requests_received"] == 0


def test_a_dangling_symlink_output_is_refused_and_nothing_is_created(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    out = tmp_path / "out.jsonl"
    out.symlink_to("nowhere.jsonl")

    run = llmbatch("run", str(path), "-o", str(out))

    target = os.path.realpath(tmp_path / "nowhere.jsonl")
    refused(run, f"{out} is a symbolic link to {target}; give -o {target} to write there")
    assert not (tmp_path / "nowhere.jsonl").exists() and out.is_symlink()
    assert sim.stats()["requests_received"] == 0


@needs_root
def test_a_block_device_output_is_refused(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    disk = tmp_path / "disk"
    os.mknod(disk, 0o600 | stat.S_IFBLK, os.makedev(7, 250))  # never opened: refused by its kind

    run = llmbatch("run", str(path), "-o", str(disk))

    refused(
        run,
        f"cannot write results to {disk}: it is a block device; "
        "-o takes a regular file, a FIFO or a character device (- for standard output)",
    )
    assert stat.S_ISBLK(os.lstat(disk).st_mode)
    assert sim.stats()["requests_received"] == 0


def test_a_socket_output_is_refused(tmp_path, sim, llmbatch, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short name: socket paths are limited to ~100 bytes
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("s.sock")

        run = llmbatch("run", str(path), "-o", "s.sock")

    refused(
        run,
        "cannot write results to s.sock: it is a socket; "
        "-o takes a regular file, a FIFO or a character device (- for standard output)",
    )
    assert stat.S_ISSOCK(os.lstat(tmp_path / "s.sock").st_mode)
    assert sim.stats()["requests_received"] == 0


@pytest.mark.parametrize("name", [".", "sub"])
def test_a_directory_output_is_refused(name, tmp_path, sim, llmbatch, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))

    run = llmbatch("run", str(path), "-o", name)

    refused(run, f"cannot write results to {name}: it is a directory; give a file name with -o")
    assert sim.stats()["requests_received"] == 0


def test_a_fifo_without_a_reader_can_be_interrupted_while_waiting(tmp_path):
    # Under asyncio, SIGINT's handler does nothing by itself (the event loop acts on it later): a
    # blocking open would be retried for ever. While waiting for a reader, Ctrl-C must still work.
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: seen.append(number))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            ResultWriter(fifo).open()
        handler = signal.getsignal(signal.SIGINT)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert callable(handler) and handler.__name__ == "<lambda>"  # the caller's handler is back
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# --- 4. the results file keeps the mode its owner gave it ---------------------------------------


def test_a_results_file_keeps_its_mode_across_reruns(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    assert llmbatch("run", str(path)).exit_code == 0
    results = tmp_path / "p.results.jsonl"
    results.chmod(0o600)
    write_jsonl(path, prompts(3))

    assert llmbatch("run", str(path)).exit_code == 0

    assert stat.S_IMODE(os.stat(results).st_mode) == 0o600
    assert len(read_results(results)) == 3


def test_a_new_results_file_gets_the_mode_the_umask_gives(tmp_path, sim, llmbatch, umask):
    os.umask(0o002)
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))

    assert llmbatch("run", str(path)).exit_code == 0

    assert stat.S_IMODE(os.stat(tmp_path / "p.results.jsonl").st_mode) == 0o664


def test_a_read_only_results_file_is_refused_up_front(tmp_path, sim, llmbatch):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    results = tmp_path / "p.results.jsonl"
    results.write_text("kept on purpose\n")
    results.chmod(0o444)

    run = llmbatch("run", str(path))

    refused(
        run,
        f"cannot write results to {results}: it is read-only (mode 0444); "
        "make it writable (chmod u+w) or choose another file with -o",
    )
    assert results.read_text() == "kept on purpose\n" and stat.S_IMODE(os.stat(results).st_mode) == 0o444
    assert sim.stats()["requests_received"] == 0


# --- the writer itself: recovery hook, identity, a results name that changed under it -----------


def result(n: int) -> Result:
    return Result(line=n, id=n, key=f"v1:{n}", status="ok", cached=False, model="openai:m", metadata=None)


def test_recover_reads_an_earlier_partial_before_it_is_truncated(tmp_path):
    out = tmp_path / "r.jsonl"
    partial = tmp_path / "r.jsonl.partial"
    partial.write_bytes(b'{"line": 1}\n{"line": 2}\n')
    seen: list[bytes] = []

    writer = ResultWriter(out, recover=lambda file: seen.append(file.read())).open()

    assert seen == [b'{"line": 1}\n{"line": 2}\n']
    writer.write(result(1))
    assert writer.finish(complete=True) == out
    assert read_results(out) == [json.loads(json.dumps(result(1).to_dict()))]  # no hole, no old bytes
    assert writer.identity == (os.stat(out).st_dev, os.stat(out).st_ino)


def test_recover_is_not_called_without_an_earlier_partial_nor_for_a_refused_one(tmp_path):
    calls: list[object] = []
    writer = ResultWriter(tmp_path / "a.jsonl", recover=calls.append).open()
    partial = tmp_path / "a.jsonl.partial"
    assert calls == [] and writer.identity == (os.stat(partial).st_dev, os.stat(partial).st_ino)
    writer.finish(complete=False)

    (tmp_path / "b.jsonl.partial").symlink_to(partial)
    with pytest.raises(UsageError, match="is a symbolic link to"):
        ResultWriter(tmp_path / "b.jsonl", recover=calls.append).open()
    assert calls == []


def test_a_stream_has_no_identity(tmp_path):
    assert ResultWriter(None).open().identity is None
    writer = ResultWriter(Path("/dev/null")).open()
    assert writer.identity is None
    writer.write(result(1))
    assert writer.finish(complete=True) == Path("/dev/null")


def test_a_results_name_that_stopped_being_a_file_is_never_renamed_over(tmp_path):
    out = tmp_path / "r.jsonl"
    writer = ResultWriter(out).open()
    writer.write(result(1))
    os.mkfifo(out)  # appeared while the run was writing

    with pytest.raises(OutputError) as caught:
        writer.finish(complete=True)

    assert str(caught.value) == (
        f"cannot write results to {out}: it is now a FIFO, so llmbatch will not replace it; "
        f"the results are in {out}.partial"
    )
    assert stat.S_ISFIFO(os.lstat(out).st_mode) and (tmp_path / "r.jsonl.partial").exists()


def test_results_to_a_full_or_closed_standard_output_are_one_clear_error_not_a_traceback(tmp_path, env):
    import subprocess
    import sys

    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    args = [sys.executable, "-m", "llmbatch", "run", str(path), "--simulate", "-o", "-", "-q"]
    full_env = {**os.environ, **env}
    with open("/dev/full", "wb") as full:
        done = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, text=True, env=full_env, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot write results to standard output: No space left on device" in done.stderr
    closed = subprocess.run(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        timeout=120,
        preexec_fn=lambda: os.close(1),
    )
    assert closed.returncode == 2 and "Traceback" not in closed.stderr
    assert "standard output is closed" in closed.stderr


def test_a_cached_rerun_to_a_reader_that_goes_away_says_broken_pipe_as_a_cold_run_does(tmp_path, env):
    # Its leading hits go out in one large write; the reader leaving mid-write made that write short
    # without an error, and the run exited 0 with a success summary, the lines after lost.
    rows = [{"id": f"q{i}", "prompt": f"pipe {i} " + "x" * 500} for i in range(300)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    args = [sys.executable, "-m", "llmbatch", "run", str(path), "--simulate", "-q"]
    full_env = {**os.environ, **env}
    cold = subprocess.run([*args, "-o", str(tmp_path / "cold.jsonl")], env=full_env, capture_output=True, timeout=120)
    assert cold.returncode == 0, cold.stderr
    run = subprocess.Popen([*args, "-o", "-"], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None
        run.stdout.read(100)  # the ~550 KB are more than a pipe holds: the run is inside that write now
        run.stdout.close()
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 1
    assert stderr == (
        "llmbatch: error: cannot write results to standard output: Broken pipe; "
        "the answers are in the cache, so a rerun writes them without paying again\n"
    )


def test_a_fifo_output_nobody_reads_yet_says_the_run_is_waiting_for_a_reader(tmp_path, sim, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    argv = [sys.executable, "-m", "llmbatch", "run", str(path), "-o", str(fifo), "--api-base", sim.url]
    argv += ["-m", "openai:gpt-4o-mini", "-q"]
    run = subprocess.Popen(argv, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    try:
        first = run.stderr.readline()  # before any reader exists: the run says why it waits
        assert first == f"llmbatch: waiting for a reader of {fifo} (results are written to it as a stream)\n"
        reader = Reader(fifo)
        reader.start()
        assert result_ids(reader.text()) == ["q0", "q1"]
        assert run.wait(timeout=30) == 0
    finally:
        run.kill()
        run.wait()
