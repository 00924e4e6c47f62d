"""The llmbatch benchmark suite: one command, one table, one JSON file.

    python bench/run.py            # full: ~3 minutes on 2 cores
    python bench/run.py --quick    # smaller sizes, ~40 s
    python bench/run.py --tiny     # seconds; what tests/test_bench_smoke.py runs
    python bench/run.py --profile  # also py-spy profiles of a cold and a warm run (top functions)

Everything runs in its own process: two simulators (`llmbatch sim`, one at the chosen latency, one
at 0 ms), and every measured command. Measured in one run, so that ratios compare like with like
on a noisy machine:

1. cold: N distinct prompts, `llmbatch run FILE --api-base SIM -m openai:gpt-4o-mini -c 100 -q -o
   OUT` with a fresh, empty cache directory (so cache writes are included), interleaved with
2. baseline (bench/baseline.py): one plain any-llm client under an asyncio semaphore, same file,
   same C, same simulator. Every cold figure is also given as a ratio to the baseline's.
3. ceiling (bench/ceiling.py): a bare aiohttp client at the same C against the simulator at its
   latency and at 0 ms: the simulator is not the limit.
4. warm: the same file again, every line a cache hit (seeded untimed; the largest size through
   bench/seed_cache.py), plus a rerun of the cold file itself.
5. memory: peak RSS, all processes together, of `--cache-only` on an empty cache for a small, a
   middle and a large file (every line becomes a "not in the cache" error line: reading,
   validation, keys, lookups and ordered writing all run, no network; inputs of 4 MB or more are
   checked by a forked child too, so flatness is judged between the two larger sizes); and of a
   cold run at two sizes, every line a call and a cache write, answered at once in-process
   (bench/seed_cache.py) so that it takes seconds, not minutes.
6. start-up: `llmbatch --help`, and a rerun of a 1-line file that is a cache hit (median of
   several), and whether that rerun imports any_llm (`python -X importtime`).

How a child is measured: wall time with perf_counter around the process; CPU seconds from
getrusage(RUSAGE_CHILDREN) deltas around it (which include its own children, once reaped); the
RSS of all its processes together, sampled every 20 ms (``TreeRss``); its own peak RSS from GNU
time's %M (`/usr/bin/time -f ... -o FILE`), which is that one child's own ru_maxrss. Not
RUSAGE_CHILDREN's maxrss (the maximum over every child so far), and not os.wait4 on a child
spawned from this script either: Linux records the spawning process's RSS high-water mark into
the child's maxrss at exec, so a child would never read below this script's peak. GNU time is a
~2 MB C program, so that floor is gone.
Without /usr/bin/time, os.wait4 is used and results.json says so (``rss_method``).

Results: a table on stdout and bench/out/results.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CONCURRENCY = 100
MODEL = "openai:gpt-4o-mini"
GNU_TIME = "/usr/bin/time"
PROVIDER_SDKS = ("any_llm", "openai", "anthropic", "httpx", "httpx2", "mistralai", "google", "ollama")


@dataclass(frozen=True)
class Mode:
    name: str
    cold: int  # prompts in the cold run (and the baseline, and the ceiling runs)
    latency_ms: int
    warm: tuple[int, int]  # small (seeded by a real cold run), large (seeded by seed_cache.py)
    memory: tuple[int, ...]  # --cache-only on an empty cache: small (one process), middle, large
    memory_cold: tuple[int, int]  # cold runs with instant answers (bench/seed_cache.py)
    repeats: int  # cold/baseline pairs, warm reruns
    startup_repeats: int


MODES = {
    "full": Mode("full", 5_000, 100, (2_000, 100_000), (10_000, 100_000, 1_000_000), (10_000, 200_000), 3, 5),
    "quick": Mode("quick", 500, 100, (2_000, 10_000), (10_000, 50_000, 100_000), (2_000, 20_000), 2, 5),
    "tiny": Mode("tiny", 50, 10, (50, 200), (100, 500, 1_000), (100, 1_000), 1, 2),
}

#: The cold figures also given as a ratio to the baseline's.
RATIO_KEYS = (
    "wall_s",
    "req_per_s",
    "share_of_ideal",
    "running_req_per_s",
    "running_share_of_ideal",
    "cpu_ms_per_prompt",
    "peak_tree_rss_mb",
)

TARGETS = {
    "cold_share_of_ideal": ">= 0.9 of ideal while running (5,000 prompts, 100 ms, C=100: ideal 1,000 req/s)",
    "warm_lines_per_s": ">= 50,000 lines/s end to end, 100,000 cached prompts",
    "memory_peak_rss_mb": "< 250 MB for a 1,000,000-line file, flat",
    "help_s": "llmbatch --help < 0.3 s",
    "zero_miss_imports_any_llm": "a zero-miss rerun never imports the provider SDK (imports any_llm?)",
}


# --- measuring one child -------------------------------------------------------------------------


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float  # the largest single process (GNU time's %M)
    returncode: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    peak_tree_rss_mb: float = 0.0  # the process and all its children together (sampled every 20 ms)
    #: time.monotonic() just before the start and just after the exit: the simulator's
    #: first_request_at and last_completion_at are on the same clock.
    started_at: float = 0.0
    ended_at: float = 0.0
    #: With ``measure(..., pss=True)``: the tree's peak PSS (shared pages split between the processes
    #: that map them) and USS (pages private to one process), sampled as the tree's RSS is.
    peak_tree_pss_mb: float = 0.0
    peak_tree_uss_mb: float = 0.0


PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants now (Linux /proc; just ``pid`` elsewhere)."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def _tree_rss(pid: int) -> int:
    """Bytes resident in ``pid`` and its descendants now (Linux /proc; 0 elsewhere). A page shared
    by several processes (copy-on-write after a fork, a shared library) counts once in each."""
    total = 0
    for p in _tree_pids(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError):
            continue
    return total


def _tree_pss_uss(pid: int) -> tuple[int, int]:
    """Bytes of the tree by proportional share (a page shared by k processes counts 1/k in each:
    the sum is what the tree really holds) and unique to one process (private pages only), from
    /proc/PID/smaps_rollup (Linux 4.14+; (0, 0) elsewhere). Costlier to read than statm."""
    pss = uss = 0
    for p in _tree_pids(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name == "Pss":
                        pss += int(rest.split()[0]) * 1024
                    elif name in ("Private_Clean", "Private_Dirty"):
                        uss += int(rest.split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return pss, uss


class TreeRss(threading.Thread):
    """Samples the RSS of a process tree: with worker processes, the run's memory is their sum.
    With ``pss``, also the tree's PSS and USS (peaks sampled apart, every 20 ms)."""

    def __init__(self, pid: int, *, pss: bool = False) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()
        self.pss, self.peak_pss, self.peak_uss = pss, 0, 0

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, _tree_rss(self.pid))
            if self.pss:
                pss, uss = _tree_pss_uss(self.pid)
                self.peak_pss, self.peak_uss = max(self.peak_pss, pss), max(self.peak_uss, uss)


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 900, pss: bool = False
) -> Measured:
    """Run ``argv`` to the end; its wall time, CPU seconds and own peak RSS (with ``pss``, the tree's
    peak PSS and USS too)."""
    use_time = os.access(GNU_TIME, os.X_OK)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".time") as timing,
    ):
        full = [GNU_TIME, "-f", "%M", "-o", timing.name, *argv] if use_time else argv
        cpu_before = _cpu_of_children()
        started_at = time.monotonic()
        started = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        tree = TreeRss(proc.pid, pss=pss)
        tree.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            tree.done.set()
            tree.join()
        wall = time.perf_counter() - started
        ended_at = time.monotonic()
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = _cpu_of_children() - cpu_before
        if use_time:
            # GNU time writes "Command exited with non-zero status N" first when N != 0.
            lines = timing.read().split()
            rss_kb = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        else:
            rss_kb = usage.ru_maxrss
        out.seek(0)
        err.seek(0)
        return Measured(
            wall_s=wall,
            cpu_s=cpu,
            peak_rss_mb=rss_kb / 1024,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            peak_tree_rss_mb=max(tree.peak / 2**20, rss_kb / 1024),
            started_at=started_at,
            ended_at=ended_at,
            peak_tree_pss_mb=tree.peak_pss / 2**20,
            peak_tree_uss_mb=tree.peak_uss / 2**20,
        )


def run_client(script: str, file: Path, url: str) -> tuple[Measured, dict[str, Any]]:
    """Run bench/baseline.py or bench/ceiling.py on FILE against URL; its measurement and report."""
    argv = [
        sys.executable,
        str(BENCH / script),
        str(file),
        "--api-base",
        url,
        "-c",
        str(CONCURRENCY),
        "--model",
        MODEL.split(":", 1)[1],
    ]
    m = measure(argv)
    if m.returncode != 0:
        raise RuntimeError(f"{script} exited {m.returncode}:\n{m.stderr[-2000:]}")
    return m, json.loads(m.stdout.strip().splitlines()[-1])


def seed_argv(file: Path, api_base: str, out: Path) -> list[str]:
    """bench/seed_cache.py: fill the cache for FILE as a cold run against ``api_base`` would."""
    argv = [str(BENCH / "seed_cache.py"), str(file), "--api-base", api_base, "-m", MODEL, "-c", "200", "-q"]
    return [sys.executable, *argv, "-o", str(out)]


def llmbatch_cmd() -> list[str]:
    """The installed `llmbatch` command beside this Python, else `python -m llmbatch`."""
    script = Path(sys.executable).parent / "llmbatch"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llmbatch"]


def cpu_of_process(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc), 0.0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# --- the simulator in its own process ------------------------------------------------------------


class SimProcess:
    """`llmbatch sim --port 0 --latency L [EXTRA]` in a child process; ``url`` from its first stderr line."""

    def __init__(self, latency_ms: int, *extra: str) -> None:
        self.latency_ms = latency_ms
        self.extra = extra
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._tail: list[str] = []

    def __enter__(self) -> SimProcess:
        latency = f"{self.latency_ms}ms" if self.latency_ms else "0"
        self._proc = subprocess.Popen(
            [*llmbatch_cmd(), "sim", "--port", "0", "--latency", latency, *self.extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stderr is not None
        first = self._proc.stderr.readline()
        found = re.search(r"listening on (\S+)", first)
        if not found:
            self.__exit__()
            raise RuntimeError(f"the simulator did not start: {first!r}")
        self.url = found.group(1)
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:  # keep its stderr pipe from filling up
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._tail = [*self._tail[-20:], line]

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def cpu_s(self) -> float:
        return cpu_of_process(self.pid)

    def _request(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(self.url.removesuffix("/v1") + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def stats(self) -> dict[str, Any]:
        return self._request("/stats")

    def reset(self) -> None:
        self._request("/stats/reset", method="POST")


# --- input files ---------------------------------------------------------------------------------


def prompt_text(i: int, tag: str) -> str:
    return f"[{tag}] Question {i}: in one sentence, why might item {i} matter?"


def write_prompts(path: Path, n: int, tag: str) -> Path:
    """N distinct prompts, written in chunks (this script keeps its own RSS small)."""
    with path.open("w", encoding="utf-8") as stream:
        for start in range(0, n, 10_000):
            stream.write(
                "".join(
                    json.dumps({"id": i, "prompt": prompt_text(i, tag)}) + "\n"
                    for i in range(start, min(n, start + 10_000))
                )
            )
    return path


def count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def result_counts(path: Path) -> Counter[str]:
    """ok / error / cached counts of a results file, read line by line."""
    counts: Counter[str] = Counter()
    with path.open("rb") as stream:
        for line in stream:
            row = json.loads(line)
            counts["lines"] += 1
            counts[row.get("status", "?")] += 1
            counts["cached"] += bool(row.get("cached"))
    return counts


def engine_wall_s(stderr: str) -> float | None:
    """The `wall time` llmbatch's summary reports (start-up excluded), when it can be read."""
    found = re.search(r"wall time\s+([\d.]+)s", stderr)
    return float(found.group(1)) if found else None


# --- the benchmark -------------------------------------------------------------------------------


class Bench:
    def __init__(self, mode: Mode, tmp: Path, sim: SimProcess, sim0: SimProcess) -> None:
        self.mode = mode
        self.tmp = tmp
        self.sim = sim
        self.sim0 = sim0
        self.ideal_s = mode.cold * (mode.latency_ms / 1000) / CONCURRENCY
        self._dirs = 0
        self.warm_caches: dict[int, Path] = {}
        self.last_cold_cache: Path | None = None

    def log(self, text: str) -> None:
        sys.stderr.write(f"[bench] {text}\n")
        sys.stderr.flush()

    def fresh_dir(self, name: str) -> Path:
        self._dirs += 1
        path = self.tmp / f"{name}-{self._dirs}"
        path.mkdir()
        return path

    def env(self, cache_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_BASE_URL", "_API_BASE"))}
        return {**env, "LLMBATCH_CACHE_DIR": str(cache_dir), "OPENAI_API_KEY": "sk-bench", "PYTHONUNBUFFERED": "1"}

    def run_llmbatch(
        self, file: Path, cache_dir: Path, *extra: str, sim: SimProcess | None = None, check: bool = True
    ) -> tuple[Measured, Path]:
        out = cache_dir.parent / f"{cache_dir.name}.results.jsonl"
        argv = [*llmbatch_cmd(), "run", str(file), "-m", MODEL, "-q", "-o", str(out), *extra]
        if sim is not None:
            argv += ["--api-base", sim.url]
        m = measure(argv, env=self.env(cache_dir))
        if check and m.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {m.returncode}:\n{m.stderr[-2000:]}")
        return m, out

    # -- 1 + 2: cold runs and the baseline, interleaved --------------------------------------------

    #: The cold variants, run in rotating order: llmbatch as a user runs it (``--workers auto``:
    #: worker processes at -c 100 on 2+ cores), llmbatch in one process, and the any-llm baseline.
    COLD_VARIANTS = ("llmbatch", "llmbatch_one_process", "baseline")

    def cold_and_baseline(self, file: Path) -> dict[str, dict[str, Any]]:
        n = self.mode.cold
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in self.COLD_VARIANTS}
        for r in range(self.mode.repeats):
            k = r % len(self.COLD_VARIANTS)
            for which in self.COLD_VARIANTS[k:] + self.COLD_VARIANTS[:k]:
                self.log(f"cold {which} {r + 1}/{self.mode.repeats}: {n:,} prompts")
                self.sim.reset()
                sim_cpu = self.sim.cpu_s()
                if which.startswith("llmbatch"):
                    cache_dir = self.fresh_dir("cold")
                    workers = ["--workers", "0"] if which == "llmbatch_one_process" else []
                    m, out = self.run_llmbatch(file, cache_dir, "-c", str(CONCURRENCY), *workers, sim=self.sim)
                    counts = result_counts(out)
                    if counts["ok"] != n:
                        raise RuntimeError(f"cold run: {counts} of {n}")
                    extra = {"engine_wall_s": engine_wall_s(m.stderr), "cache_dir": str(cache_dir)}
                else:
                    m, extra = run_client("baseline.py", file, self.sim.url)
                stats = self.sim.stats()
                if stats["completions_served"] != n:
                    raise RuntimeError(f"cold {which}: the simulator served {stats['completions_served']} of {n}")
                run = {
                    **self.rates(m, n, stats["serving_s"]),
                    "sim_cpu_s": round(self.sim.cpu_s() - sim_cpu, 2),
                    "sim_max_in_flight": stats["max_in_flight"],
                    **{k: v for k, v in extra.items() if k != "cache_dir"},
                }
                runs[which].append(run)
                if which == "llmbatch":
                    self.last_cold_cache = Path(extra["cache_dir"])
        return {which: self.summarise(r) for which, r in runs.items()}

    def rates(self, m: Measured, n: int, serving_s: float) -> dict[str, Any]:
        """End to end (start-up included), and while running: from the first request the simulator
        received to the last answer it sent, the issue's "req/s while running"."""
        return {
            "wall_s": round(m.wall_s, 3),
            "req_per_s": round(n / m.wall_s, 1),
            "share_of_ideal": round(self.ideal_s / m.wall_s, 3),
            "serving_s": round(serving_s, 3),
            "running_req_per_s": round(n / serving_s, 1),
            "running_share_of_ideal": round(self.ideal_s / serving_s, 3),
            "cpu_s": round(m.cpu_s, 2),
            "cpu_ms_per_prompt": round(1000 * m.cpu_s / n, 3),
            "peak_rss_mb": round(m.peak_rss_mb, 1),
            "peak_tree_rss_mb": round(m.peak_tree_rss_mb, 1),
        }

    @staticmethod
    def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
        """The median of each figure over the runs, and the runs themselves."""
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
        median = {
            k: round(statistics.median(r[k] for r in runs if r.get(k) is not None), 3)
            for k in keys
            if all(r.get(k) is not None for r in runs)
        }
        return {**median, "runs": runs}

    # -- 3: the simulator's ceiling ------------------------------------------------------------------

    def ceiling(self, file: Path) -> dict[str, Any]:
        n = self.mode.cold
        result: dict[str, Any] = {}
        for sim in (self.sim, self.sim0):
            self.log(f"ceiling: bare aiohttp, {n:,} requests at {sim.latency_ms} ms")
            sim.reset()
            sim_cpu = sim.cpu_s()
            m, report = run_client("ceiling.py", file, sim.url)
            loop_s = report["loop_s"]
            ideal = n * (sim.latency_ms / 1000) / CONCURRENCY
            result[f"latency_{sim.latency_ms}ms"] = {
                "latency_ms": sim.latency_ms,
                "loop_s": round(loop_s, 3),
                "req_per_s": round(n / loop_s, 1),
                "share_of_ideal": round(ideal / loop_s, 3) if ideal else None,
                "sim_cpu_s": round(sim.cpu_s() - sim_cpu, 2),
                "sim_max_in_flight": sim.stats()["max_in_flight"],
                "wall_s": round(m.wall_s, 3),
            }
        return result

    # -- 4: warm reruns ------------------------------------------------------------------------------

    def warm(self, n: int, *, instant_seed: bool) -> dict[str, Any]:
        file = write_prompts(self.tmp / f"warm-{n}.jsonl", n, f"warm{n}")
        cache_dir = self.fresh_dir(f"warm{n}")
        self.log(f"warm {n:,}: seeding the cache ({'seed_cache.py' if instant_seed else 'real cold run, -c 200'})")
        seeded_by = "real cold run against the 0 ms simulator, -c 200"
        started = time.perf_counter()
        if instant_seed:
            seed = measure(seed_argv(file, self.sim0.url, self.tmp / "seed.results.jsonl"), env=self.env(cache_dir))
            if seed.returncode == 0:
                seeded_by = "bench/seed_cache.py (llmbatch run, instant in-process answers)"
            elif seed.returncode != 3:
                raise RuntimeError(f"seed_cache.py exited {seed.returncode}:\n{seed.stderr[-2000:]}")
            else:
                instant_seed = False
        if not instant_seed:
            self.run_llmbatch(file, cache_dir, "-c", "200", sim=self.sim0)
        seed_s = time.perf_counter() - started
        self.warm_caches[n] = cache_dir
        runs = []
        for r in range(self.mode.repeats):
            self.log(f"warm {n:,}: rerun {r + 1}/{self.mode.repeats}")
            runs.append(self.warm_rerun(file, cache_dir, n, self.sim0))
        return {"prompts": n, **self.summarise(runs), "seeded_by": seeded_by, "seed_s": round(seed_s, 1)}

    def warm_rerun(self, file: Path, cache_dir: Path, n: int, sim: SimProcess) -> dict[str, Any]:
        sim.reset()
        m, out = self.run_llmbatch(file, cache_dir, "-c", str(CONCURRENCY), sim=sim)
        counts = result_counts(out)
        calls = sim.stats()["requests_received"]
        if counts["cached"] != n or calls:
            raise RuntimeError(f"warm rerun of {n:,}: {counts['cached']:,} cached lines, {calls} calls made")
        return {
            "wall_s": round(m.wall_s, 3),
            "lines_per_s": round(n / m.wall_s),
            "cpu_s": round(m.cpu_s, 2),
            "cpu_us_per_line": round(1e6 * m.cpu_s / n, 1),
            # All processes together: a big input is checked by a forked child as well (runner.validate).
            "peak_rss_mb": round(m.peak_tree_rss_mb, 1),
            "largest_process_rss_mb": round(m.peak_rss_mb, 1),
            "engine_wall_s": engine_wall_s(m.stderr),
            "calls_made": calls,
        }

    # -- 5: memory -------------------------------------------------------------------------------------

    def memory(self) -> dict[str, Any]:
        runs = []
        for n in self.mode.memory:
            self.log(f"memory: --cache-only on an empty cache, {n:,} lines")
            file = write_prompts(self.tmp / f"memory-{n}.jsonl", n, f"mem{n}")
            cache_dir = self.fresh_dir(f"memory{n}")
            m, out = self.run_llmbatch(file, cache_dir, "--cache-only", check=False)
            lines = count_lines(out)
            if m.returncode != 1 or lines != n:  # 1: every line is an error line, as expected
                raise RuntimeError(
                    f"--cache-only on {n:,} lines: exit {m.returncode}, {lines:,} lines\n{m.stderr[-2000:]}"
                )
            runs.append(self.memory_run(n, m))
            out.unlink()
            file.unlink()
        return {
            "method": "--cache-only on an empty cache (every line an error line: 'not in the cache')",
            **self.growth(runs),
            "cold": self.memory_cold(),
        }

    def memory_cold(self) -> dict[str, Any]:
        runs = []
        for n in self.mode.memory_cold:
            self.log(f"memory: a cold run with instant answers, {n:,} lines")
            file = write_prompts(self.tmp / f"memory-cold-{n}.jsonl", n, f"memcold{n}")
            cache_dir = self.fresh_dir(f"memory-cold{n}")
            out = cache_dir.parent / f"{cache_dir.name}.results.jsonl"
            m = measure(seed_argv(file, self.sim0.url, out), env=self.env(cache_dir))
            counts = result_counts(out)
            if m.returncode != 0 or counts["ok"] != n:
                raise RuntimeError(f"cold run with instant answers, {n:,} lines: {counts}\n{m.stderr[-2000:]}")
            runs.append(self.memory_run(n, m))
            out.unlink()
            file.unlink()
            shutil.rmtree(cache_dir)
        return {
            "method": "a cold run (every line a call and a cache write), answered at once in-process "
            "by bench/seed_cache.py: the engine's state over a long run, without the provider SDK",
            **self.growth(runs),
        }

    @staticmethod
    def memory_run(n: int, m: Measured) -> dict[str, Any]:
        return {
            "lines": n,
            "peak_rss_mb": round(m.peak_tree_rss_mb, 1),  # all processes together, as for the warm rows
            "largest_process_rss_mb": round(m.peak_rss_mb, 1),
            "wall_s": round(m.wall_s, 2),
            "lines_per_s": round(n / m.wall_s),
            "cpu_us_per_line": round(1e6 * m.cpu_s / n, 1),
        }

    @staticmethod
    def growth(runs: list[dict[str, Any]]) -> dict[str, Any]:
        # Between the two largest sizes: the smallest input is checked by one process, larger by two.
        small, large = runs[-2], runs[-1]
        return {
            "runs": runs,
            "growth_mb": round(large["peak_rss_mb"] - small["peak_rss_mb"], 1),
            "growth_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 2),
        }

    # -- 6: start-up -------------------------------------------------------------------------------------

    def startup(self) -> dict[str, Any]:
        k = self.mode.startup_repeats
        self.log(f"start-up: llmbatch --help x{k}, zero-miss rerun of a 1-line file x{k}")
        help_runs = [measure([*llmbatch_cmd(), "--help"]) for _ in range(k)]
        if any(m.returncode != 0 for m in help_runs):
            raise RuntimeError(f"llmbatch --help failed: {help_runs[0].stderr[-2000:]}")
        help_imports = importtime([sys.executable, "-X", "importtime", "-m", "llmbatch", "--help"])

        file = write_prompts(self.tmp / "one.jsonl", 1, "one")
        cache_dir = self.fresh_dir("one")
        self.run_llmbatch(file, cache_dir, sim=self.sim0)  # the one call: now the rerun is a hit
        reruns = [self.warm_rerun(file, cache_dir, 1, self.sim0) for _ in range(k)]
        argv = [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "llmbatch",
            "run",
            str(file),
            "-m",
            MODEL,
            "-q",
            "-o",
            str(self.tmp / "one-importtime.jsonl"),
            "--api-base",
            self.sim0.url,
        ]
        rerun_imports = importtime(argv, env=self.env(cache_dir))
        sdks = sorted(p for p in PROVIDER_SDKS if p in rerun_imports["packages"])
        return {
            "help_s": round(statistics.median(m.wall_s for m in help_runs), 3),
            "help_runs_s": [round(m.wall_s, 3) for m in help_runs],
            "help_peak_rss_mb": round(statistics.median(m.peak_rss_mb for m in help_runs), 1),
            "help_slowest_imports_ms": help_imports["slowest"],
            "zero_miss_rerun_s": round(statistics.median(r["wall_s"] for r in reruns), 3),
            "zero_miss_rerun_runs_s": [r["wall_s"] for r in reruns],
            "zero_miss_rerun_peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in reruns), 1),
            "zero_miss_imports_any_llm": "any_llm" in rerun_imports["packages"],
            "zero_miss_provider_packages_imported": sdks,
            "zero_miss_slowest_imports_ms": rerun_imports["slowest"],
        }


def importtime(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Top-level packages a command imports (`python -X importtime`), and the slowest of them."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    packages: set[str] = set()
    top: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        module = name.strip()
        packages.add(module.split(".")[0])
        if name.startswith(" ") and not name.startswith("   ") and cumulative.strip().isdigit():
            top[module] = int(cumulative)  # nesting level 0: imported by the program itself
    slowest = sorted(top.items(), key=lambda kv: -kv[1])[:8]
    return {"packages": packages, "slowest": {k: round(v / 1000, 1) for k, v in slowest}}


# --- profiles (--profile) --------------------------------------------------------------------------


def pyspy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def top_functions(raw: Path, k: int = 10) -> dict[str, Any]:
    """Own (leaf) and inclusive sample shares per function, and own shares per top-level package
    (``asyncio``, ``openai``, ``llmbatch``, ...), from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f.strip()]
        if not frames:
            own["(no Python frame)"] += count
            packages["(no Python frame)"] += count
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        where = re.search(r"\(([^)]*)\)$", frames[-1])
        packages[where.group(1).split("/")[0] if where else "?"] += count

    def share(c: int) -> float:
        return round(c / total, 3) if total else 0.0

    return {
        "samples": total,
        "own": [[f, share(c)] for f, c in own.most_common(k)],
        "own_by_package": [[p, share(c)] for p, c in packages.most_common(k)],
        "inclusive": [[f, share(c)] for f, c in inclusive.most_common(k + 12)],
    }


def profile(bench: Bench, cold_file: Path, warm_file: Path, warm_cache: Path | None, out_dir: Path) -> dict[str, Any]:
    spy = pyspy()
    if spy is None:
        return {"skipped": "py-spy not found (pip install py-spy)"}
    result: dict[str, Any] = {}
    runs = [("cold", cold_file, bench.fresh_dir("profile-cold"), bench.sim)]
    if warm_cache is not None:
        runs.append(("warm", warm_file, warm_cache, bench.sim0))
    for name, file, cache_dir, sim in runs:
        bench.log(f"profile: py-spy record, {name} run")
        raw = out_dir / f"profile-{name}.txt"
        out = bench.tmp / f"profile-{name}.results.jsonl"
        argv = [
            spy,
            "record",
            "--subprocesses",  # the worker processes too
            "--format",
            "raw",
            "-r",
            "250",
            "-o",
            str(raw),
            "--",
            *llmbatch_cmd(),
            "run",
            str(file),
            "-m",
            MODEL,
            "-q",
            "-o",
            str(out),
            "-c",
            str(CONCURRENCY),
            "--api-base",
            sim.url,
        ]
        done = subprocess.run(argv, env=bench.env(cache_dir), capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not raw.exists():
            result[name] = {"skipped": f"py-spy exited {done.returncode}: {done.stderr[-500:]}"}
            continue
        result[name] = {
            **top_functions(raw),
            "raw": str(raw.relative_to(ROOT)) if raw.is_relative_to(ROOT) else str(raw),
        }
    return result


# --- report ---------------------------------------------------------------------------------------


def source_digest() -> str:
    """sha256 over llmbatch/*.py: the code measured (someone may be editing it during the run)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "llmbatch").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"Model name:\s*(.+)", lscpu)
        model = found.group(1).strip() if found else model
    ram_gb = None
    with contextlib.suppress(OSError, ValueError):
        meminfo = Path("/proc/meminfo").read_text()
        ram_gb = round(int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) / 1024**2, 1)  # type: ignore[union-attr]
    git = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "llmbatch"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        git = {"commit": head.stdout.strip(), "llmbatch_modified_from_commit": bool(dirty.stdout.strip())}
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "rss_method": "GNU time %M (the child's own ru_maxrss)"
        if os.access(GNU_TIME, os.X_OK)
        else "os.wait4 (floor: this script's own peak RSS)",
        "cpu_method": "getrusage(RUSAGE_CHILDREN) delta around each child",
        "llmbatch_source": source_digest(),
        **git,
    }


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each figure against its target; ``comparable`` is false unless the sizes are the target's (full run)."""
    full = r["params"]["mode"] == "full"
    cold, warm, startup = r["cold"], r["warm"][-1], r["startup"]
    memory_small, memory_large = r["memory"]["runs"][-2], r["memory"]["runs"][-1]
    flat = r["memory"]["growth_mb"] <= 0.1 * memory_small["peak_rss_mb"]  # flat: within 10 % of the smaller file's
    figures = {
        "cold_share_of_ideal": (cold["running_share_of_ideal"], cold["running_share_of_ideal"] >= 0.9, full),
        "warm_lines_per_s": (round(warm["lines_per_s"]), warm["lines_per_s"] >= 50_000, full),
        "memory_peak_rss_mb": (memory_large["peak_rss_mb"], memory_large["peak_rss_mb"] < 250 and flat, full),
        "help_s": (startup["help_s"], startup["help_s"] < 0.3, True),
        "zero_miss_imports_any_llm": (
            startup["zero_miss_imports_any_llm"],
            not startup["zero_miss_imports_any_llm"],
            True,
        ),
    }
    result = {
        name: {"target": TARGETS[name], "measured": measured, "met": met, "comparable": comparable}
        for name, (measured, met, comparable) in figures.items()
    }
    result["memory_peak_rss_mb"]["flat"] = flat
    # A cold run's memory is shown beside it, not folded into the verdict: the target is the
    # --cache-only file of 1,000,000 lines, and a cold run of that length takes minutes.
    cold_memory = r["memory"]["cold"]
    result["memory_peak_rss_mb"]["cold_run"] = {
        "lines": [m["lines"] for m in cold_memory["runs"]],
        "peak_rss_mb": [m["peak_rss_mb"] for m in cold_memory["runs"]],
        "growth_mb": cold_memory["growth_mb"],
    }
    return result


def memory_row(m: dict[str, Any]) -> str:
    return (
        f"  {m['lines']:>9,} lines{'':<12}{m['wall_s']:>9.2f}{m['lines_per_s']:>10,.0f}"
        f"{m['cpu_us_per_line']:>13.1f}{m['peak_rss_mb']:>13.1f}"
    )


def table(r: dict[str, Any]) -> str:
    p = r["params"]
    cold, one, base = r["cold"], r["cold_one_process"], r["baseline"]
    lines = [
        f"llmbatch benchmarks ({p['mode']}), {r['machine']['cpu_model']}, {r['machine']['cpus']} CPUs, "
        f"Python {r['machine']['python']}",
        f"cold: {p['cold_prompts']:,} distinct prompts, C={p['concurrency']}, simulator latency {p['latency_ms']} ms, "
        f"ideal {p['ideal_s']:.2f} s ({p['ideal_req_per_s']:,.0f} req/s); median of {p['repeats']}",
        "",
        "  end to end: the whole command, start-up included; while running: first request in to last answer",
        "  out, as the simulator saw them. RSS: all processes together.",
        f"{'cold':<34}{'wall s':>8}{'req/s':>7}{'share':>7}{'running':>9}{'share':>7}{'CPU ms/prompt':>15}"
        f"{'RSS MB':>8}",
    ]

    def cold_row(name: str, d: dict[str, Any]) -> str:
        return (
            f"  {name:<32}{d['wall_s']:>8.2f}{d['req_per_s']:>7.0f}{d['share_of_ideal']:>7.3f}"
            f"{d['running_req_per_s']:>9.0f}{d['running_share_of_ideal']:>7.3f}"
            f"{d['cpu_ms_per_prompt']:>15.3f}{d['peak_tree_rss_mb']:>8.1f}"
        )

    def ratio_row(name: str, ratio: dict[str, Any]) -> str:
        return (
            f"  {name:<32}{ratio['wall_s']:>8.2f}{ratio['req_per_s']:>7.2f}{ratio['share_of_ideal']:>7.2f}"
            f"{ratio['running_req_per_s']:>9.2f}{ratio['running_share_of_ideal']:>7.2f}"
            f"{ratio['cpu_ms_per_prompt']:>15.2f}{ratio['peak_tree_rss_mb']:>8.2f}"
        )

    lines.append(cold_row("llmbatch run (workers auto)", cold))
    lines.append(cold_row("llmbatch run --workers 0", one))
    lines.append(cold_row("any-llm baseline", base))
    lines.append(ratio_row("llmbatch / baseline", cold["ratio_to_baseline"]))
    lines.append(ratio_row("llmbatch --workers 0 / baseline", one["ratio_to_baseline"]))
    for c in r["ceiling"].values():
        share = f"{c['share_of_ideal']:>8.3f}" if c["share_of_ideal"] is not None else f"{'-':>8}"
        lines.append(
            f"  {'bare aiohttp, sim ' + str(c['latency_ms']) + ' ms':<28}{c['loop_s']:>9.2f}"
            f"{c['req_per_s']:>9.0f}{share}   (loop only, no start-up)"
        )
    lines += ["", f"{'warm rerun (all hits)':<30}{'wall s':>9}{'lines/s':>10}{'CPU us/line':>13}{'RSS MB, all':>13}"]
    for w in r["warm"]:
        lines.append(
            f"  {w['prompts']:>9,} prompts{'':<10}{w['wall_s']:>9.2f}{w['lines_per_s']:>10,.0f}"
            f"{w['cpu_us_per_line']:>13.1f}{w['peak_rss_mb']:>13.1f}"
        )
    w = r["warm_cold_file"]
    lines.append(
        f"  {w['prompts']:>9,} (the cold file){'':<3}{w['wall_s']:>9.2f}{w['lines_per_s']:>10,.0f}"
        f"{w['cpu_us_per_line']:>13.1f}{w['peak_rss_mb']:>13.1f}"
    )
    lines += [
        "",
        f"{'memory (--cache-only, empty)':<30}{'wall s':>9}{'lines/s':>10}{'CPU us/line':>13}{'RSS MB, all':>13}",
    ]
    lines += [memory_row(m) for m in r["memory"]["runs"]]
    lines.append("memory (cold, instant answers)")
    lines += [memory_row(m) for m in r["memory"]["cold"]["runs"]]
    s = r["startup"]
    lines += [
        "",
        f"start-up: llmbatch --help {s['help_s']:.3f} s (median of {len(s['help_runs_s'])}); zero-miss rerun of "
        f"1 line {s['zero_miss_rerun_s']:.3f} s; imports any_llm: {'yes' if s['zero_miss_imports_any_llm'] else 'no'}"
        f" (provider packages: {', '.join(s['zero_miss_provider_packages_imported']) or 'none'})",
        "",
        "targets:",
    ]
    for t in r["targets"].values():
        verdict = ("met" if t["met"] else "MISSED") if t["comparable"] else "n/a"
        note = "" if t["comparable"] else " (not the target's sizes: run without --quick/--tiny)"
        measured = t["measured"]
        shown = ("yes" if measured else "no") if isinstance(measured, bool) else f"{measured:,}"
        lines.append(f"  [{verdict:>6}] {t['target']}: measured {shown}{note}")
        if "cold_run" in t:
            c = t["cold_run"]
            sizes = " and ".join(f"{n:,} lines {mb} MB" for n, mb in zip(c["lines"], c["peak_rss_mb"], strict=True))
            lines.append(f"           a cold run (instant answers): {sizes} ({c['growth_mb']:+} MB)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="llmbatch benchmarks (see the module docstring and BENCHMARKS.md)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (~40 s)")
    size.add_argument("--tiny", action="store_true", help="a few seconds: the smoke test")
    parser.add_argument("--profile", action="store_true", help="also profile a cold and a warm run with py-spy")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "results.json")
    args = parser.parse_args()
    mode = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ideal_s = mode.cold * (mode.latency_ms / 1000) / CONCURRENCY
    results: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "mode": mode.name,
            **{k: v for k, v in asdict(mode).items() if k != "name"},
            "cold_prompts": mode.cold,
            "concurrency": CONCURRENCY,
            "model": MODEL,
            "ideal_s": ideal_s,
            "ideal_req_per_s": CONCURRENCY / (mode.latency_ms / 1000),
        },
    }
    with (
        tempfile.TemporaryDirectory(prefix="llmbatch-bench-") as tmp_name,
        SimProcess(mode.latency_ms) as sim,
        SimProcess(0) as sim0,
    ):
        tmp = Path(tmp_name)
        bench = Bench(mode, tmp, sim, sim0)
        cold_file = write_prompts(tmp / "cold.jsonl", mode.cold, "cold")
        # Untimed warm-up: bytecode compiled, files in the page cache, both simulators answering.
        warmup = write_prompts(tmp / "warmup.jsonl", 20, "warmup")
        bench.run_llmbatch(warmup, bench.fresh_dir("warmup"), sim=sim)
        subprocess.run(
            [sys.executable, str(BENCH / "baseline.py"), str(warmup), "--api-base", sim0.url],
            capture_output=True,
            timeout=120,
            check=True,
        )

        results["ceiling"] = bench.ceiling(cold_file)
        variants = bench.cold_and_baseline(cold_file)
        baseline = variants["baseline"]
        for name in ("llmbatch", "llmbatch_one_process"):
            variants[name]["ratio_to_baseline"] = {k: round(variants[name][k] / baseline[k], 3) for k in RATIO_KEYS}
        results["cold"], results["cold_one_process"], results["baseline"] = (
            variants["llmbatch"],
            variants["llmbatch_one_process"],
            baseline,
        )
        results["warm"] = [bench.warm(mode.warm[0], instant_seed=False), bench.warm(mode.warm[1], instant_seed=True)]
        bench.log(f"warm: rerun of the cold file ({mode.cold:,} prompts)")
        assert bench.last_cold_cache is not None
        cold_reruns = [bench.warm_rerun(cold_file, bench.last_cold_cache, mode.cold, sim) for _ in range(mode.repeats)]
        results["warm_cold_file"] = {"prompts": mode.cold, **bench.summarise(cold_reruns)}
        results["memory"] = bench.memory()
        results["startup"] = bench.startup()
        results["targets"] = targets(results)
        if args.profile:
            warm_large = tmp / f"warm-{mode.warm[1]}.jsonl"
            results["profile"] = profile(
                bench, cold_file, warm_large, bench.warm_caches.get(mode.warm[1]), args.out.parent
            )
    results["bench_wall_s"] = round(time.perf_counter() - started, 1)
    results["machine"]["llmbatch_source_end"] = source_digest()
    changed = results["machine"]["llmbatch_source"] != results["machine"]["llmbatch_source_end"]
    results["machine"]["llmbatch_changed_during_run"] = changed
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    if "profile" in results:
        for name, prof in results["profile"].items():
            print(f"\nprofile, {name} run: top functions by own time (share of samples)")
            for func, share in prof.get("own", []):
                print(f"  {share:>6.1%}  {func}")
            by_package = ", ".join(f"{p} {share:.0%}" for p, share in prof.get("own_by_package", []))
            print(f"  by package: {by_package}")
    if changed:
        print("\nWARNING: llmbatch/*.py changed during the run: the figures mix two versions of the code")
    print(f"\nresults: {args.out} ({results['bench_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
