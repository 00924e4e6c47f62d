"""What `--normalize whitespace` saves on prompts that differ only in layout (issue 17).

    python bench/normalize.py                     # 200 prompts x 5 layouts = 1,000 lines
    python bench/normalize.py --prompts 1000 --json

Builds an input of N distinct prompts, each in five whitespace layouts (as written; a template's
trailing newline; indented as if pasted from a notebook; CRLF line ends with doubled spaces; tabs
and blank lines), in shuffled order with a fixed seed. Runs `llmbatch run --simulate -q` on it
twice, each into a fresh, empty cache in a temporary directory: without and with
`--normalize whitespace`. Prints, for each: calls made, prompt tokens sent, prompt characters
sent and wall time.

Where the figures come from: a line answered by a call (``hit`` null, not cached) is one call, and
its ``usage.prompt_tokens`` is what the simulator counted for it; the run's own -q summary line
must say the same number of calls (checked). The simulator counts whitespace-separated words as
tokens, so it cannot see whitespace shrink inside one prompt; real tokenizers do (a run of
spaces or newlines is one or more tokens), which is why the characters sent are given too: the
simulator echoes the user text it received, and that echo is measured.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_TOPICS = ("the battery life", "the delivery", "the screen", "customer support", "the price", "the manual")
_VERDICTS = ("was better than I hoped", "let me down", "did the job", "was a real surprise", "felt cheap")


def prompt(i: int) -> str:
    """A distinct, multi-line prompt of the kind a template makes."""
    rng = random.Random(i)
    first, second = (f"{rng.choice(_TOPICS)} {rng.choice(_VERDICTS)}" for _ in range(2))
    review = f"Review #{i}: {first}, and {second}."
    return (
        "Classify the sentiment of this product review.\n\n"
        f"{review}\n\nAnswer with one word: positive, negative or mixed."
    )


def layouts(text: str) -> list[str]:
    """Five spellings of ``text`` that differ only in whitespace."""
    lines = text.split("\n")
    return [
        text,
        text + "\n",
        "\n".join("    " + line if line else line for line in lines) + "\n",
        "\r\n".join(line.replace(". ", ".  ") for line in lines) + "\r\n\r\n",
        "\t" + "\n\n".join(line.replace(" ", "\t", 1) for line in lines if line) + " \n",
    ]


def write_input(path: Path, prompts: int, seed: int) -> int:
    rows = [{"prompt": variant} for i in range(prompts) for variant in layouts(prompt(i))]
    random.Random(seed).shuffle(rows)
    with path.open("w", encoding="utf-8") as out:
        for number, row in enumerate(rows, start=1):
            out.write(json.dumps({"id": f"r{number}", **row}) + "\n")
    return len(rows)


def llmbatch_cmd() -> list[str]:
    """The installed `llmbatch` command beside this Python, else `python -m llmbatch`."""
    script = Path(sys.executable).parent / "llmbatch"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llmbatch"]


def measure(file: Path, tmp: Path, name: str, extra: list[str], concurrency: int) -> dict[str, Any]:
    out = tmp / f"{name}.results.jsonl"
    argv = [*llmbatch_cmd(), "run", str(file), "--simulate", "-q", "-c", str(concurrency), "-o", str(out), *extra]
    env = {"LLMBATCH_CACHE_DIR": str(tmp / f"cache-{name}"), "PATH": "/usr/bin:/bin"}
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr}")
    calls = prompt_tokens = chars = 0
    lines = 0
    with out.open(encoding="utf-8") as stream:
        for raw in stream:
            row = json.loads(raw)
            lines += 1
            if row["status"] == "ok" and row["hit"] is None and not row["cached"]:
                calls += 1
                prompt_tokens += row["usage"]["prompt_tokens"]
                chars += len(row["content"].split(" to: ", 1)[1])  # the user text the simulator received
    summary = re.search(r", ([\d,]+) calls,", done.stderr)
    if summary is None or int(summary.group(1).replace(",", "")) != calls:
        raise SystemExit(f"{name}: the summary does not say {calls} calls:\n{done.stderr}")
    return {
        "command": " ".join(["llmbatch", *argv[len(llmbatch_cmd()) :]]),
        "lines": lines,
        "calls": calls,
        "prompt_tokens_sent": prompt_tokens,
        "prompt_chars_sent": chars,
        "wall_s": round(wall_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200, help="distinct prompts (each in 5 layouts)")
    parser.add_argument("--concurrency", "-c", type=int, default=64)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmbatch-bench-normalize-") as name:
        tmp = Path(name)
        file = tmp / "layouts.jsonl"
        lines = write_input(file, args.prompts, args.seed)
        runs = {
            "plain": measure(file, tmp, "plain", [], args.concurrency),
            "normalized": measure(file, tmp, "normalized", ["--normalize", "whitespace"], args.concurrency),
        }
    plain, normalized = runs["plain"], runs["normalized"]
    result = {
        "input": {"lines": lines, "distinct_prompts": args.prompts, "layouts_each": 5, "seed": args.seed},
        **runs,
        "saved": {
            "calls": plain["calls"] - normalized["calls"],
            "prompt_tokens": plain["prompt_tokens_sent"] - normalized["prompt_tokens_sent"],
            "prompt_chars": plain["prompt_chars_sent"] - normalized["prompt_chars_sent"],
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{lines:,} lines: {args.prompts:,} distinct prompts x 5 whitespace layouts (seed {args.seed})")
    print(f"{'':24}{'calls':>8}{'prompt tokens':>15}{'prompt chars':>14}{'wall':>8}")
    for label, run in (("without --normalize", plain), ("--normalize whitespace", normalized)):
        print(
            f"{label:24}{run['calls']:>8,}{run['prompt_tokens_sent']:>15,}{run['prompt_chars_sent']:>14,}"
            f"{run['wall_s']:>7.1f}s"
        )


if __name__ == "__main__":
    main()
