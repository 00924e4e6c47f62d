"""What a damaged or doctored cache can and cannot do: found by an adversarial review of the cache's
management commands and the Redis store. A value moved under another key is never served; records
that would break a later run are refused at import; damaged rows never crash the tools meant to
repair them; a password is hidden in every form a URL can carry it."""

from __future__ import annotations

import json
import sqlite3

import redis

from llmbatch.model.entry import entry_digest
from tests.support import prompts, read_results, run_cli, write_jsonl
from tests.test_resilience import run_args


def test_a_value_moved_under_another_key_is_a_miss_on_disk_not_another_prompts_answer(tmp_path, sim, env, cache_dir):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    assert run_cli(run_args(path, sim), env=env).exit_code == 0
    with sqlite3.connect(cache_dir / "cache.db") as db:
        (first,), (second,) = db.execute("SELECT rowid FROM Cache ORDER BY rowid LIMIT 2").fetchall()
        db.execute(
            "UPDATE Cache SET value = (SELECT value FROM Cache WHERE rowid = ?) WHERE rowid = ?", (second, first)
        )
        db.execute("UPDATE Cache SET value = CAST('{\"v\": 3}' AS BLOB) WHERE rowid = ?", (second,))
    out = tmp_path / "again.jsonl"
    assert run_cli(run_args(path, sim, "-o", str(out)), env=env).exit_code == 0
    rows = read_results(out)
    assert [row["cached"] for row in rows] == [False, False, True]  # the two doctored rows are paid again
    assert [row["content"] for row in rows] == [row["content"] for row in read_results(tmp_path / "p.results.jsonl")]


def test_a_value_moved_under_another_key_is_a_miss_on_redis_too(tmp_path, sim, env, redis_server):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    first = run_cli(run_args(path, sim, "--cache", redis_server.url, "-o", str(tmp_path / "a.jsonl")), env=env)
    assert first.exit_code == 0
    keys = [row["key"] for row in read_results(tmp_path / "a.jsonl")]
    server = redis.Redis(unix_socket_path=str(redis_server.socket))
    server.set(f"llmbatch:e:{keys[0]}", server.get(f"llmbatch:e:{keys[1]}"))
    again = run_cli(run_args(path, sim, "--cache", redis_server.url, "-o", str(tmp_path / "b.jsonl")), env=env)
    assert again.exit_code == 0
    rows = read_results(tmp_path / "b.jsonl")
    assert [row["cached"] for row in rows] == [False, True]
    assert rows[0]["content"] == read_results(tmp_path / "a.jsonl")[0]["content"]


def test_records_that_would_break_a_later_run_are_refused_at_import(tmp_path, sim, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    assert run_cli(run_args(path, sim), env=env).exit_code == 0
    out = tmp_path / "answers.jsonl"
    assert run_cli(["cache", "export", "-o", str(out)], env=env).exit_code == 0
    good = json.loads(out.read_text())

    def doctored(change) -> str:
        record = json.loads(json.dumps(good))
        change(record)
        record["entry"]["digest"] = entry_digest(record["entry"])  # consistent: only the content is wrong
        return json.dumps(record)

    lines = [
        doctored(lambda r: r["entry"].__setitem__("cost_usd", "free")),
        doctored(lambda r: r["entry"]["response"]["choices"][0].__setitem__("message", "notadict")),
        doctored(lambda r: r.__setitem__("tag", "anthropic:claude-sonnet-4-5")),
        doctored(lambda r: r.__setitem__("llmbatch_cache", True)),
        doctored(lambda r: r.__setitem__("expires_at", 1e308)),
        doctored(lambda r: r["entry"].__setitem__("usage", "lots")),
    ]
    out.write_text("\n".join(lines) + "\n")
    done = run_cli(["cache", "import", str(out), "--cache-dir", str(tmp_path / "other")], env=env)
    assert done.exit_code == 2 and "Traceback" not in done.stderr
    assert "6 invalid lines; nothing was imported" in done.stderr
    for number in range(1, 7):
        assert f"{out}:{number}: " in done.stderr


def test_damaged_rows_never_crash_verify_and_repair_removes_them(tmp_path, sim, env, cache_dir):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(5))
    assert run_cli(run_args(path, sim), env=env).exit_code == 0
    with sqlite3.connect(cache_dir / "cache.db") as db:
        rows = [rowid for (rowid,) in db.execute("SELECT rowid FROM Cache ORDER BY rowid")]
        db.execute("UPDATE Cache SET mode = 2 WHERE rowid = ?", (rows[0],))
        db.execute("UPDATE Cache SET expire_time = 'soon' WHERE rowid = ?", (rows[1],))
        db.execute("UPDATE Cache SET store_time = 'yesterday' WHERE rowid = ?", (rows[2],))
    for command in (["cache", "stats"], ["cache", "export", "-o", str(tmp_path / "x.jsonl")]):
        done = run_cli(command, env=env)
        assert done.exit_code == 0 and "Traceback" not in done.stderr, done.stderr
    found = run_cli(["cache", "verify", "--json"], env=env)
    assert found.exit_code == 1
    assert json.loads(found.stdout)["checked"] == 5
    assert run_cli(["cache", "verify", "--repair"], env=env).exit_code == 0
    again = run_cli(run_args(path, sim, "-o", str(tmp_path / "again.jsonl")), env=env)
    assert again.exit_code == 0 and sum(not row["cached"] for row in read_results(tmp_path / "again.jsonl")) == 3


def test_a_password_in_the_query_is_hidden_too(tmp_path, sim, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    for url in ("redis://127.0.0.1:1/0?password=S3cr3tPW", "unix:///nowhere/redis.sock?password=S3cr3tPW"):
        done = run_cli(run_args(path, sim, "--cache", url), env=env)
        assert done.exit_code == 2 and "password=***" in done.stderr
        assert "S3cr3tPW" not in done.stderr + done.stdout


def test_a_namespace_that_could_start_another_is_refused(tmp_path, env):
    for namespace in ("team", "llmbatch:sub:"):
        done = run_cli(["cache", "stats", "--cache", "redis://127.0.0.1:1/0", "--cache-namespace", namespace], env=env)
        assert done.exit_code == 2 and "--cache-namespace" in done.stderr


def test_expired_answers_on_redis_are_expired_for_verify_not_broken(tmp_path, sim, env, redis_server):
    import time

    path = write_jsonl(tmp_path / "p.jsonl", prompts(2))
    assert run_cli(run_args(path, sim, "--cache", redis_server.url, "--ttl", "1s"), env=env).exit_code == 0
    time.sleep(1.2)
    done = run_cli(["cache", "verify", "--json", "--cache", redis_server.url], env=env)
    assert done.exit_code == 0, done.stdout
    found = json.loads(done.stdout)["found"]
    assert found["expired"] + found["gone"] <= 2 and found["undecodable"] == 0


def test_results_and_exports_never_land_inside_the_cache_directory(tmp_path, sim, env, cache_dir):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    assert run_cli(run_args(path, sim), env=env).exit_code == 0
    for command in (
        run_args(path, sim, "-o", str(cache_dir / "cache.db")),
        ["cache", "export", "-o", str(cache_dir / "cache.db")],
    ):
        done = run_cli(command, env=env)
        assert done.exit_code == 2 and "inside the cache directory" in done.stderr
    assert json.loads(run_cli(["cache", "stats", "--json"], env=env).stdout)["entries"] == 1


def test_limits_beyond_what_a_store_can_keep_are_refused_before_anything_is_sent(tmp_path, sim, env):
    path = write_jsonl(tmp_path / "p.jsonl", prompts(1))
    done = run_cli(run_args(path, sim, "--ttl", "99999999999w"), env=env)
    assert done.exit_code == 2 and "--ttl" in done.stderr
    lonely = run_cli(run_args(path, sim, "--rate-group", "team"), env=env)
    assert lonely.exit_code == 2 and "--cache URL" in lonely.stderr
    assert sim.stats()["requests_received"] == 0


def test_explain_makes_the_key_with_the_normalisation_a_run_would_use(tmp_path, sim, env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llmbatch.toml").write_text('normalize = "whitespace"\n')
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "  hello   there  "}])
    done = run_cli(run_args(path, sim), env=env)
    assert done.exit_code == 0 and "prompts normalised (whitespace) for every model" in done.stderr
    explained = json.loads(
        run_cli(
            ["cache", "explain", f"{path}:1", "--json", "-m", "openai:gpt-4o-mini", "--api-base", sim.url], env=env
        ).stdout
    )
    assert explained["stored"] is not None and explained["stored"]["served"]
    assert explained["material"]["normalize"] == "whitespace"
    assert explained["material"]["messages"][-1]["content"] == "hello there"


class _RealServer:
    """A server that is not llmbatch's simulator (as a vLLM would be), on a given 127.0.0.1 port:
    it answers every chat completion with one fixed answer and counts them."""

    def __init__(self, port: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.completions = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "my-model", "object": "model"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.completions += 1
                message = {"role": "assistant", "content": "REAL ANSWER"}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
                self._send({"id": "r", "object": "chat.completion", "created": 1, "model": "my-model",
                            "choices": [choice], "usage": usage})  # fmt: skip

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_answers_rehearsed_on_the_simulator_are_never_served_for_a_real_server_later_at_its_address(
    tmp_path, simulator, env
):
    # A review: `llmbatch sim --port 8000`, then vLLM on port 8000 (the README suggests both) served
    # the simulator's answers from the cache as the model's.
    sim = simulator()
    port = int(sim.url.rsplit(":", 1)[1].split("/")[0])
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "prompt": "Classify: I love it", "temperature": 0}])
    argv = ["run", str(path), "--api-base", sim.url, "--model", "openai:my-model"]
    assert run_cli([*argv, "-o", str(tmp_path / "rehearsal.jsonl")], env=env).exit_code == 0
    assert run_cli([*argv, "-o", str(tmp_path / "again.jsonl")], env=env).exit_code == 0
    assert read_results(tmp_path / "again.jsonl")[0]["hit"] == "exact"  # the rehearsal itself is cached
    sim.close()
    real = _RealServer(port)
    try:
        assert run_cli([*argv, "-o", str(tmp_path / "real.jsonl")], env=env).exit_code == 0
        assert run_cli([*argv, "-o", str(tmp_path / "real2.jsonl")], env=env).exit_code == 0
    finally:
        real.close()
    first, second = read_results(tmp_path / "real.jsonl")[0], read_results(tmp_path / "real2.jsonl")[0]
    assert (first["content"], first["hit"], real.completions) == ("REAL ANSWER", None, 1)
    assert (second["content"], second["hit"]) == ("REAL ANSWER", "exact")  # the real answers are cached in turn
