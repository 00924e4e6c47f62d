"""The semantic cache, measured (issue 15): false hits and recall, embedding speed, lookup latency at
100,000 and 1,000,000 entries, first-use cost, and what --semantic adds to a run with no semantic hit.

    python bench/semantic.py                           # everything (the 1M index takes a few minutes)
    python bench/semantic.py --part pairs              # false hits / recall only
    python bench/semantic.py --part latency --sizes 100000
    python bench/semantic.py --part overhead --lines 500

pairs: every pair of bench/data/semantic_pairs.jsonl (hand-written, labelled; see
bench/data/make_semantic_pairs.py) is embedded by the packaged model, and a pair counts as served
when its cosine similarity reaches the threshold and, guards on, the guards agree
(llmbatch.store.semantic_guards.disagreements): the same decision llmbatch.store.semantic makes
once a scope matches. False hits: served different-answer pairs / all different-answer pairs.
Recall: served same-answer pairs / all same-answer pairs.

latency: the vector record (vectors.db) filled in bulk with N random unit vectors (float16) in 50
scopes; then VectorIndex (the real class) finds no index and builds and saves one from the record
(timed); then a new process opens it (memory-mapped) and times 1,000 searches of random vectors,
each within a scope (median, 99th percentile) and reports its peak RSS: what a run pays. The
embedding of the question is not in this figure (see the throughput).

first use: a new interpreter importing llmbatch.store.semantic_index, opening an Embedder, and making
its first embedding (which loads the model).

overhead: `llmbatch run --simulate -q` over LINES distinct temperature-0 questions, each into a fresh
cache: without --semantic, and with it in three cases: (a) the scope has nothing stored (no
embedding is needed), (b) one stored answer shares the scope (since the guards' signature, a line
whose numbers no stored prompt shares is not embedded), (c) the same with `--semantic-guards off
--semantic-threshold 1`, so that every line is embedded and searched and none passes: the worst
case. The runs alternate, median of --rounds (3), wall and CPU time; per-line cost is
(with - without) / LINES, and again with what a one-line run of the same case pays once taken out
(imports; loading the model). --compare SRC times the package in SRC too (PYTHONPATH), interleaved
with this one: before and after in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llmbatch.store.semantic_guards import disagreements
from llmbatch.store.semantic_index import Embedder, VectorIndex

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "bench" / "data" / "semantic_pairs.jsonl"
THRESHOLDS = [0.85, 0.86, 0.87, 0.88, 0.89, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]


def pairs(embedder: Embedder) -> dict[str, object]:
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [row["a"] for row in rows] + [row["b"] for row in rows]
    started = time.perf_counter()
    vectors = embedder.embed(texts)
    embed_s = time.perf_counter() - started
    half = len(rows)
    for i, row in enumerate(rows):
        row["similarity"] = float(vectors[i] @ vectors[half + i])
        row["guards_pass"] = not disagreements(row["a"], row["b"])
    report: dict[str, object] = {"embedding_prompts_per_s_batch": round(len(texts) / embed_s, 1)}
    for split in ("all", "tuning", "held-out"):
        subset = [row for row in rows if split == "all" or row["split"] == split]
        report[split] = _rates(subset)
    return report


def _rates(rows: list[dict[str, object]]) -> dict[str, object]:
    same = [bool(row["same"]) for row in rows]
    table = []
    for threshold in THRESHOLDS:
        line: dict[str, object] = {"threshold": threshold}
        for name, use_guards in (("guards_on", True), ("guards_off", False)):
            served = [float(row["similarity"]) >= threshold and (row["guards_pass"] or not use_guards) for row in rows]
            false_hits = sum(v and not y for v, y in zip(served, same, strict=True))
            true_hits = sum(v and y for v, y in zip(served, same, strict=True))
            line[name] = {
                "false_hit_rate": round(false_hits / same.count(False), 4),
                "false_hits": false_hits,
                "recall": round(true_hits / same.count(True), 4),
            }
        table.append(line)
    wrong_kinds: dict[str, dict[str, int]] = {}
    for row in rows:
        if not row["same"] and float(row["similarity"]) >= 0.90:
            counts = wrong_kinds.setdefault(str(row["kind"]), {"above_0.90": 0, "passing_guards": 0})
            counts["above_0.90"] += 1
            counts["passing_guards"] += bool(row["guards_pass"])
    return {
        "pairs": len(rows),
        "same_answer": same.count(True),
        "different_answer": same.count(False),
        "by_threshold": table,
        "different_pairs_above_0.90_by_kind": wrong_kinds,
        "guards_refuse_same_answer_pairs": sum(not row["guards_pass"] for row in rows if row["same"]),
    }


def single_throughput(embedder: Embedder) -> float:
    texts = [f"What is the best way to learn topic number {i} quickly?" for i in range(100)]
    started = time.perf_counter()
    for text in texts:
        embedder.embed([text])
    return round(len(texts) / (time.perf_counter() - started), 1)


def latency(size: int, ndim: int) -> dict[str, object]:
    rng = np.random.default_rng(15)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        VectorIndex(directory, ndim=ndim).close()  # the record's tables, empty
        started = time.perf_counter()
        with sqlite3.connect(directory / "vectors.db") as db:  # the record, filled in bulk
            for at in range(0, size, 50_000):
                n = min(50_000, size - at)
                vectors = rng.standard_normal((n, ndim)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                db.executemany(
                    "INSERT INTO vectors (label, key, scope, vector) VALUES (?, ?, ?, ?)",
                    (
                        (at + i, f"k{at + i}", f"scope{(at + i) % 50}", vectors[i].astype(np.float16).tobytes())
                        for i in range(n)
                    ),
                )
        fill_s = time.perf_counter() - started
        started = time.perf_counter()
        index = VectorIndex(directory, ndim=ndim)  # no index file: built from the record and saved
        assert index.rebuilt
        index.close()
        build_s = time.perf_counter() - started
        # A new process opens it (memory-mapped) and searches: its peak RSS is what a run pays.
        done = subprocess.run(
            [sys.executable, __file__, "--search-child", str(directory), str(ndim)],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(done.stdout)
        size_mb = sum(p.stat().st_size for p in directory.iterdir()) / 1e6
    return {
        "entries": size,
        "record_fill_s": round(fill_s, 1),
        "index_build_s": round(build_s, 1),
        "open_s": measured["open_s"],
        "lookup_ms_median": measured["median"],
        "lookup_ms_p99": measured["p99"],
        "search_process_peak_rss_mb": measured["peak_rss_mb"],
        "files_mb": round(size_mb, 1),
    }


def search_child(directory: Path, ndim: int) -> None:
    """In the measuring process: open the saved index and time 1,000 searches."""
    started = time.perf_counter()
    index = VectorIndex(directory, ndim=ndim)
    open_s = time.perf_counter() - started
    assert not index.rebuilt
    rng = np.random.default_rng(1)
    times = []
    for i in range(1000):
        query = rng.standard_normal(ndim).astype(np.float32)
        query /= np.linalg.norm(query)
        started = time.perf_counter()
        index.search(query, f"scope{i % 50}", count=16)
        times.append(1000 * (time.perf_counter() - started))
    times.sort()
    # VmHWM, not getrusage's maxrss: that one is kept across exec, so it would be the forking parent's.
    peak = _status_kb("VmHWM") / 1024
    result = {"open_s": round(open_s, 3), "median": round(statistics.median(times), 3), "p99": round(times[989], 3)}
    print(json.dumps({**result, "peak_rss_mb": round(peak, 1)}))


def _status_kb(name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise LookupError(name)


def first_use() -> dict[str, float]:
    """Importing the libraries, opening an Embedder (finds the model; loads nothing since issue 15's
    lazy load), and the first embedding (loads the tokenizer and the model, embeds one prompt)."""
    code = (
        "import time; t = time.perf_counter()\n"
        "from llmbatch.store.semantic_index import Embedder\n"
        "i = time.perf_counter(); e = Embedder(); o = time.perf_counter()\n"
        "e.embed(['What is retrieval-augmented generation?']); f = time.perf_counter()\n"
        "print(i - t, o - i, f - o)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True) for _ in range(5)]
    imports, opens, firsts = zip(*[map(float, run.stdout.split()) for run in runs], strict=True)
    return {
        "import_s": round(statistics.median(imports), 3),
        "open_s": round(statistics.median(opens), 3),
        "first_embedding_s": round(statistics.median(firsts), 3),
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def overhead(lines: int, compare: Path | None = None, rounds: int = 3) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        questions = root / "q.jsonl"
        questions.write_text(
            "".join(
                json.dumps(
                    {"id": i, "prompt": f"Write one sentence about the history of town number {i}.", "temperature": 0}
                )
                + "\n"
                for i in range(lines)
            )
        )
        seed = root / "seed.jsonl"
        seed.write_text(
            json.dumps({"id": "s", "prompt": "What is retrieval-augmented generation?", "temperature": 0}) + "\n"
        )
        one = root / "one.jsonl"
        one.write_text(json.dumps({"id": 0, "prompt": "Say hello.", "temperature": 0}) + "\n")
        # Runs of one line, without and with --semantic in each case: what a run pays once (imports,
        # the model when a line is embedded), to be taken out of the per-line figure.
        cases = ("without", "new_scope", "scope_with_an_entry", "every_line_embedded")
        variants = [(case, size) for size in ("one_line", "lines") for case in cases]
        sources = {"this": None} if compare is None else {"this": None, "compared": compare}
        times: dict[str, list[float]] = {f"{source}:{size}:{case}": [] for source in sources for case, size in variants}
        cpu: dict[str, list[float]] = {name: [] for name in times}
        for round_ in range(rounds):
            for source, path in sources.items():
                env_path = {} if path is None else {"PYTHONPATH": str(path)}
                for case, size in variants:
                    cache = root / f"cache-{source}-{case}-{size}-{round_}"
                    env = {**os.environ, **env_path, "LLMBATCH_CACHE_DIR": str(cache)}
                    base = [sys.executable, "-m", "llmbatch", "run", "--simulate", "-q", "--workers", "0"]
                    if case in ("scope_with_an_entry", "every_line_embedded"):
                        seeded = [*base, str(seed), "-o", str(root / "seed.out"), "--semantic"]
                        subprocess.run(seeded, env=env, cwd=root, check=True, capture_output=True)
                    extra = {
                        "without": [],
                        "new_scope": ["--semantic"],
                        "scope_with_an_entry": ["--semantic"],
                        # Guards off: no question is left out for what the guards see in it; a
                        # threshold of 1 serves none of them.
                        "every_line_embedded": ["--semantic", "--semantic-guards", "off", "--semantic-threshold", "1"],
                    }[case]
                    source_file = one if size == "one_line" else questions
                    name = f"{source}:{size}:{case}"
                    used = _children_cpu_s()
                    started = time.perf_counter()
                    subprocess.run(
                        [*base, str(source_file), "-o", str(root / "out.jsonl"), *extra],
                        env=env,
                        cwd=root,  # not the checkout: `-m` would import the package there, whatever PYTHONPATH says
                        check=True,
                        capture_output=True,
                    )
                    times[name].append(time.perf_counter() - started)
                    cpu[name].append(_children_cpu_s() - used)
    report: dict[str, object] = {"lines": lines, "rounds": rounds}
    for source in sources:
        figures: dict[str, object] = {}
        # Wall time is what the target is about; CPU time (user + sys of the run's process) moves
        # far less when other work shares the cores.
        for measure, values in (("wall", times), ("cpu", cpu)):
            m = {
                name.split(":", 1)[1]: statistics.median(v)
                for name, v in values.items()
                if name.startswith(source + ":")
            }
            for case in cases[1:]:
                once = m[f"one_line:{case}"] - m["one_line:without"]
                extra = m[f"lines:{case}"] - m["lines:without"]
                figures[f"{measure}:{case}_once_s"] = round(once, 3)
                figures[f"{measure}:{case}_extra_ms_per_line"] = round(1000 * extra / lines, 3)
                figures[f"{measure}:{case}_extra_ms_per_line_after_once"] = round(1000 * (extra - once) / lines, 3)
            figures[f"{measure}:median_s"] = {name: round(value, 3) for name, value in m.items()}
        report[source] = figures
    if compare is not None:
        report["compared_source"] = str(compare)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "pairs", "latency", "first-use", "overhead"], default="all")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="overhead: runs of each kind (the median is kept)")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="SRC",
        help="overhead: also time the llmbatch package in SRC (e.g. `git archive` of an older commit), interleaved",
    )
    parser.add_argument("--search-child", nargs=2, metavar=("DIR", "NDIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.search_child:
        search_child(Path(args.search_child[0]), int(args.search_child[1]))
        return
    report: dict[str, object] = {}
    embedder = Embedder()
    if args.part in ("all", "pairs"):
        report["pairs"] = pairs(embedder)
        report["embedding_prompts_per_s_one_at_a_time"] = single_throughput(embedder)
    if args.part in ("all", "first-use"):
        report["first_use"] = first_use()
    if args.part in ("all", "overhead"):
        report["overhead"] = overhead(args.lines, args.compare, args.rounds)
    if args.part in ("all", "latency"):
        report["latency"] = [latency(int(size), embedder.ndim) for size in args.sizes.split(",")]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
