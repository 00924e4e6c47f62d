"""The benchmark suite still runs end to end (its --tiny sizes); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_run_tiny_writes_every_figure(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {
        "machine",
        "params",
        "ceiling",
        "cold",
        "cold_one_process",
        "baseline",
        "warm",
        "warm_cold_file",
        "memory",
        "startup",
        "targets",
    } <= set(results)
    assert results["params"]["mode"] == "tiny"
    ratios = {
        "wall_s",
        "req_per_s",
        "share_of_ideal",
        "running_req_per_s",
        "running_share_of_ideal",
        "cpu_ms_per_prompt",
        "peak_tree_rss_mb",
    }
    for figures in (results["cold"], results["cold_one_process"], results["baseline"]):
        assert ratios | {"peak_rss_mb"} <= set(figures)
        assert figures["serving_s"] <= figures["wall_s"]
    for figures in (results["cold"], results["cold_one_process"]):
        assert set(figures["ratio_to_baseline"]) == ratios
    assert [w["prompts"] for w in results["warm"]] == [50, 200]
    assert all(w["calls_made"] == 0 for w in results["warm"][0]["runs"] + results["warm"][1]["runs"])
    assert [m["lines"] for m in results["memory"]["runs"]] == [100, 500, 1000]
    assert [m["lines"] for m in results["memory"]["cold"]["runs"]] == [100, 1000]
    assert results["targets"]["memory_peak_rss_mb"]["cold_run"]["lines"] == [100, 1000]
    assert {"latency_10ms", "latency_0ms"} == set(results["ceiling"])
    assert {"help_s", "zero_miss_rerun_s", "zero_miss_imports_any_llm"} <= set(results["startup"])
    assert set(results["targets"]) == {
        "cold_share_of_ideal",
        "warm_lines_per_s",
        "memory_peak_rss_mb",
        "help_s",
        "zero_miss_imports_any_llm",
    }
    assert "targets:" in done.stdout


def test_bench_peers_splits_each_run_into_start_up_running_and_shutdown(tmp_path):
    out = tmp_path / "peers.json"
    tiny = ["--n", "40", "--latency-ms", "10", "--rounds", "1", "--json", str(out), "--rev", "HEAD"]
    variants = ["--only", "llmbatch,llmbatch@rev,llmbatch_w0,ceiling,anyllm"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peers.py"), *tiny, *variants],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"llmbatch", "llmbatch@rev", "llmbatch_w0", "ceiling", "anyllm"}
    for (run,) in runs.values():
        assert set(run) == {
            "wall_s",
            "running_share",
            "before_first_s",
            "after_last_s",
            "cpu_ms_per_prompt",
            "peak_tree_rss_mb",
            "peak_tree_pss_mb",
            "peak_tree_uss_mb",
        }
        assert 0 < run["before_first_s"] < run["wall_s"] and 0 <= run["after_last_s"] < run["wall_s"]
        assert 0 < run["peak_tree_uss_mb"] <= run["peak_tree_pss_mb"] <= run["peak_tree_rss_mb"]
    assert "| llmbatch (workers auto) |" in done.stdout and "wall llmbatch / ceiling" in done.stdout
    assert "| llmbatch (workers auto) at `HEAD` (before) |" in done.stdout
