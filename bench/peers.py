"""llmbatch against its peers, end to end, as whole processes: issue 18's table.

    python bench/peers.py                    # 5,000 prompts, 100 ms, -c 100, 5 rounds (~4 minutes)
    python bench/peers.py --rounds 3 --n 2000
    python bench/peers.py --only llmbatch,ceiling
    python bench/peers.py --only llmbatch,llmbatch_w2,ceiling --cpus 0   # pinned to one core
    python bench/peers.py --rev 91f82cd --only llmbatch,llmbatch@rev,ceiling   # before and after, one run

One simulator (`llmbatch sim --latency 100ms`) in its own process, and in rotating order each round:

- ``llmbatch``: `llmbatch run FILE -m openai:gpt-4o-mini -c 100 -q` (``--workers auto``), a fresh cache;
- ``llmbatch_w0``: the same with ``--workers 0`` (every call in one process); ``llmbatch_wN`` with
  ``--workers N``;
- ``ceiling``: bench/ceiling.py, one aiohttp session under a semaphore (a raw-aiohttp runner like the
  OpenAI cookbook's ``api_request_parallel_processor.py``);
- ``anyllm``: bench/baseline.py, one plain any-llm client under a semaphore;
- with ``--rev REV``, ``llmbatch@rev`` (or ``llmbatch_w0@rev``, ...): the same run by the code of an
  earlier commit (``git archive`` into the temporary directory). Every llmbatch variant then runs as
  ``python -m llmbatch`` from that directory with PYTHONPATH set to its own tree.

Each is timed from outside (bench/run.py's ``measure``: wall, CPU of the process and its children,
peak RSS, PSS and USS of the tree). The simulator reports when the first request arrived and when
the last answer left on the machine's monotonic clock, so each run splits into *before the first
request*, *while running* (share of ideal = N x latency / C over that span) and *after the last
answer* (to the exit). RSS sums each process's resident pages, so a page shared copy-on-write by a
forked child counts in both; PSS splits it between them (the tree's real footprint); USS counts only
pages private to one process. Medians over the rounds; the ratios to the ceiling are the point on a
shared machine. ``--cpus 0`` runs every measured command under ``taskset -c 0`` (the simulator keeps
the machine's cores), as in a
container given one CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from run import (  # bench/ is on sys.path
    BENCH,
    MODEL,
    ROOT,
    SimProcess,
    llmbatch_cmd,
    measure,
    result_counts,
    write_prompts,
)

VARIANTS = ("llmbatch", "llmbatch_w0", "ceiling", "anyllm")
LABELS = {
    "llmbatch": "llmbatch (workers auto)",
    "ceiling": "raw aiohttp (bench/ceiling.py)",
    "anyllm": "any-llm client + semaphore",
}


def label(which: str, rev: str | None = None) -> str:
    base, at, _ = which.partition("@")
    text = LABELS.get(base) or f"llmbatch `--workers {base.removeprefix('llmbatch_w')}`"
    return f"{text} at `{rev}` (before)" if at else text


def tree_of(which: str, trees: dict[str, Path]) -> Path | None:
    """The source tree a variant runs from: None for the installed llmbatch and the peers."""
    if not which.startswith("llmbatch") or not trees:
        return None
    return trees["rev" if "@" in which else "new"]


def argv_of(
    which: str, file: Path, url: str, concurrency: int, out: Path, extra: list[str], tree: Path | None = None
) -> list[str]:
    if which.startswith("llmbatch"):
        base = which.partition("@")[0]
        workers = ["--workers", base.removeprefix("llmbatch_w")] if base.startswith("llmbatch_w") else []
        return [
            *(llmbatch_cmd() if tree is None else [sys.executable, "-m", "llmbatch"]),
            "run",
            str(file),
            "-m",
            MODEL,
            "-q",
            "-o",
            str(out),
            "-c",
            str(concurrency),
            "--api-base",
            url,
            *workers,
            *extra,
        ]
    script = "ceiling.py" if which == "ceiling" else "baseline.py"
    model = MODEL.split(":", 1)[1]
    return [sys.executable, str(BENCH / script), str(file), "--api-base", url, "-c", str(concurrency), "--model", model]


def one_run(
    which: str, file: Path, n: int, sim: SimProcess, args: argparse.Namespace, tmp: Path, r: int, trees: dict[str, Path]
) -> dict:
    cache = tmp / f"cache-{which}-{r}"
    out = tmp / f"out-{which}-{r}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_BASE_URL", "_API_BASE"))}
    env.update({"LLMBATCH_CACHE_DIR": str(cache), "OPENAI_API_KEY": "sk-bench"})
    tree = tree_of(which, trees)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    sim.reset()
    argv = argv_of(which, file, sim.url, args.concurrency, out, args.extra, tree)
    if args.cpus is not None:
        argv = ["taskset", "-c", args.cpus, *argv]
    m = measure(argv, env=env, pss=True)
    if m.returncode != 0:
        raise RuntimeError(f"{which} exited {m.returncode}:\n{m.stderr[-2000:]}")
    stats = sim.stats()
    if stats["completions_served"] != n:
        raise RuntimeError(f"{which}: the simulator served {stats['completions_served']} of {n}")
    if which.startswith("llmbatch") and result_counts(out)["ok"] != n:
        raise RuntimeError(f"{which}: {result_counts(out)}")
    ideal = n * args.latency_ms / 1000 / args.concurrency
    return {
        "wall_s": m.wall_s,
        "running_share": ideal / stats["serving_s"],
        "before_first_s": stats["first_request_at"] - m.started_at,
        "after_last_s": m.ended_at - stats["last_completion_at"],
        "cpu_ms_per_prompt": 1000 * m.cpu_s / n,
        "peak_tree_rss_mb": m.peak_tree_rss_mb,
        "peak_tree_pss_mb": m.peak_tree_pss_mb,
        "peak_tree_uss_mb": m.peak_tree_uss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--concurrency", "-c", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument("--extra", nargs="*", default=[], help="more options for both llmbatch variants")
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument("--cpus", help="run the measured commands under taskset -c CPUS (0: one core)")
    parser.add_argument("--rev", help="an earlier commit, run as the variants named NAME@rev")
    args = parser.parse_args()
    variants = [v for v in args.only.split(",") if v]
    if any("@" in v for v in variants) and not args.rev:
        parser.error("a variant NAME@rev needs --rev")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="llmbatch-peers-") as tmp_name, SimProcess(args.latency_ms) as sim:
        tmp = Path(tmp_name)
        trees: dict[str, Path] = {}
        if args.rev:
            trees = {"new": ROOT, "rev": tmp / "rev"}
            trees["rev"].mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.rev, "llmbatch"], check=True, capture_output=True
            )
            subprocess.run(["tar", "-x", "-C", str(trees["rev"])], input=archive.stdout, check=True)
            os.chdir(tmp)  # python -m llmbatch imports from the working directory first
        file = write_prompts(tmp / "prompts.jsonl", args.n, "peers")
        for r in range(args.rounds):
            k = r % len(variants)
            for which in variants[k:] + variants[:k]:
                run = one_run(which, file, args.n, sim, args, tmp, r, trees)
                runs[which].append(run)
                sys.stderr.write(f"[peers] round {r + 1}/{args.rounds} {which}: {json.dumps(_rounded(run))}\n")
    print(table(runs, args))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs}, indent=1))


def _rounded(run: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in run.items()}


def table(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    def med(which: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[which])

    def span(which: str, key: str) -> str:
        values = sorted(r[key] for r in runs[which])
        return f"{values[0]:.2f}-{values[-1]:.2f} s (median {med(which, key):.2f})"

    lines = [
        f"{args.n:,} prompts, {args.latency_ms} ms latency, -c {args.concurrency}, "
        f"{args.rounds} interleaved rounds, medians" + (f", clients on CPUs {args.cpus}" if args.cpus else ""),
        "",
        "| | share of ideal while running | wall s | before first request | after last answer "
        "| CPU ms/prompt | peak RSS (tree) | peak PSS / USS (tree) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for which in runs:
        lines.append(
            f"| {label(which, args.rev)} | {med(which, 'running_share'):.2f} | {med(which, 'wall_s'):.2f} "
            f"| {span(which, 'before_first_s')} | {span(which, 'after_last_s')} "
            f"| {med(which, 'cpu_ms_per_prompt'):.2f} | {med(which, 'peak_tree_rss_mb'):.0f} MB "
            f"| {med(which, 'peak_tree_pss_mb'):.0f} / {med(which, 'peak_tree_uss_mb'):.0f} MB |"
        )
    if "ceiling" in runs:
        lines.append("")
        ceiling = med("ceiling", "wall_s")
        for which in runs:
            if which != "ceiling":
                ratios = sorted(r["wall_s"] / c["wall_s"] for r, c in zip(runs[which], runs["ceiling"], strict=False))
                lines.append(
                    f"wall {which} / ceiling: {med(which, 'wall_s') / ceiling:.3f} (medians); "
                    f"per round {', '.join(f'{x:.2f}' for x in ratios)}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
