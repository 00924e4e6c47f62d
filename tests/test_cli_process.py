"""The installed command as a separate process: what a user's shell sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support import prompts, write_jsonl

ROOT = Path(__file__).parent.parent


def llmbatch_process(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmbatch", *args], env={**os.environ, **env}, **kwargs)


def test_the_readme_quickstart_runs_and_reruns_for_free(tmp_path, env):
    sample = tmp_path / "quickstart.jsonl"
    sample.write_bytes((ROOT / "sample_prompts" / "quickstart.jsonl").read_bytes())
    env = {**env, "OPENAI_API_KEY": ""}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "llmbatch", "run", str(sample), "--simulate"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "quickstart.results.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all(r["cached"] for r in rows)
    assert "answered from cache" in done.stderr


def test_sim_serves_requests_until_interrupted(tmp_path, env):
    server = llmbatch_process("sim", "--port", "0", env=env, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stderr.readline()
        assert first.startswith("llmbatch simulator listening on http://127.0.0.1:")
        url = first.split(" on ")[1].split()[0]
        with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
            assert json.load(response)["object"] == "list"
        path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
        run = subprocess.run(
            [sys.executable, "-m", "llmbatch", "run", str(path), "--api-base", url, "--model", "openai:gpt-4o-mini"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
            assert json.load(response)["completions_served"] == 3
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=10) == 0


def test_plan_is_run_dry_run(tmp_path, env, sim):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmbatch",
            "plan",
            str(path),
            "--api-base",
            sim.url,
            "-m",
            "openai:gpt-4o-mini",
            "--json",
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["calls"] == 3
    assert sim.stats()["requests_received"] == 0
