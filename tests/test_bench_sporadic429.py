"""bench/sporadic429.py still runs end to end (its --tiny size, ~10 s); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_sporadic429_tiny_writes_every_figure(tmp_path):
    out = tmp_path / "sporadic429.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sporadic429.py"), "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"machine", "params", "runs", "target"} <= set(results)
    assert results["params"]["tiny"] is True
    assert [run["variant"] for run in results["runs"]] == ["fault-free", "p429"]
    for run in results["runs"]:
        assert run["exit"] == 0 and run["ok"] == results["params"]["prompts"] == run["completions"]
        assert {"wall_s", "serving_s", "injected_429s", "max_in_flight", "avg_in_flight"} <= set(run)
    assert results["runs"][0]["injected_429s"] == 0
    assert {"fault_free_wall_s", "p429_wall_s", "limit_s", "share_of_limit", "met"} <= set(results["target"])
    assert "target <= 2 x" in done.stdout
