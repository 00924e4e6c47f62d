"""The simulator over real HTTP on 127.0.0.1, including through the real any-llm OpenAI client."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from llmbatch.sim import SimConfig, SimulatorThread, parse_duration_s

StartSim = Callable[..., SimulatorThread]


def chat(
    server: SimulatorThread,
    content: str = "hi",
    *,
    key: str | None = "sk-test",
    timeout: float = 5.0,
    **extra: Any,
) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(f"{server.url}/chat/completions", json=body, headers=headers, timeout=timeout)


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def root(server: SimulatorThread) -> str:
    return server.url.removesuffix("/v1")


# --- the answer ------------------------------------------------------------------------------


def test_reply_is_a_complete_chat_completion(sim: SimulatorThread) -> None:
    data = chat(sim).json()
    assert data["id"].startswith("chatcmpl-sim-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-4o-mini"
    assert data["system_fingerprint"] == "llmbatch-sim"
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert set(data["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_content_is_the_documented_function_of_the_body(sim: SimulatorThread) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "what is 2+2?"}]}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    # stream=false is not part of the digest, so it does not change the answer.
    response = httpx.post(f"{sim.url}/chat/completions", json={**body, "stream": False})
    assert answer(response) == f"Simulated answer {digest[:8]} to: what is 2+2?"


def test_same_body_same_content_other_temperature_other_digest(sim: SimulatorThread) -> None:
    first = answer(chat(sim, "hello", temperature=0.0))
    assert answer(chat(sim, "hello", temperature=0.0)) == first
    other = answer(chat(sim, "hello", temperature=0.7))
    assert other != first and other.endswith("to: hello")


def test_list_content_text_parts_are_concatenated(sim: SimulatorThread) -> None:
    parts = [
        {"type": "text", "text": "one "},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "two"},
    ]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": parts},
    ]
    response = httpx.post(f"{sim.url}/chat/completions", json={"model": "m", "messages": messages})
    assert answer(response).endswith("to: one two")
    assert response.json()["usage"]["prompt_tokens"] == 6  # be brief / earlier / ok / one two


def test_usage_counts_words_and_max_tokens_truncates(sim: SimulatorThread) -> None:
    full = chat(sim, "alpha beta gamma").json()
    # "Simulated answer <hex> to: alpha beta gamma"
    assert full["usage"] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}

    cut = chat(sim, "alpha beta gamma", max_tokens=4).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["choices"][0]["message"]["content"].split()[:2] == ["Simulated", "answer"]
    assert len(cut["choices"][0]["message"]["content"].split()) == 4
    assert cut["usage"]["completion_tokens"] == 4
    roomy = chat(sim, "alpha beta gamma", max_completion_tokens=50).json()
    assert roomy["choices"][0]["finish_reason"] == "stop"


def test_n_choices_are_numbered(sim: SimulatorThread) -> None:
    data = chat(sim, "pick", n=3).json()
    contents = [c["message"]["content"] for c in data["choices"]]
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert contents[1] == contents[0] + " (choice 1)" and contents[2] == contents[0] + " (choice 2)"
    assert data["usage"]["completion_tokens"] == sum(len(c.split()) for c in contents)


def test_json_response_format_wraps_the_answer(sim: SimulatorThread) -> None:
    content = answer(chat(sim, "json please", response_format={"type": "json_object"}))
    assert orjson.loads(content)["answer"].endswith("to: json please")


# --- directives ------------------------------------------------------------------------------


def test_directive_status_answers_that_status(sim: SimulatorThread) -> None:
    response = chat(sim, "x [[sim:status=400]]")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.stats()["faults"]["400"] == 1


def test_directive_quirks_answer_200_with_bodies_real_providers_send_now_and_then(sim: SimulatorThread) -> None:
    assert chat(sim, "x [[sim:quirk=no_choices]]").json()["choices"] == []
    [choice] = chat(sim, "x [[sim:quirk=choice_error]]").json()["choices"]
    assert choice["finish_reason"] == "error" and choice["error"]["code"] == 502
    assert choice["message"]["content"] is None
    assert b'"big":123456789012345678901234567890' in chat(sim, "x [[sim:quirk=bigint]]").content
    assert b"[" * 300 in chat(sim, "x [[sim:quirk=deep]]").content
    echoed = chat(sim, "x [[sim:quirk=echo_key]]", key="sk-echo-me").json()
    assert echoed["choices"][0]["message"]["content"].endswith("(you sent the key sk-echo-me)")
    # quirk_first: only the first N attempts of the same body
    assert chat(sim, "y [[sim:quirk=no_choices]] [[sim:quirk_first=1]]").json()["choices"] == []
    assert len(chat(sim, "y [[sim:quirk=no_choices]] [[sim:quirk_first=1]]").json()["choices"]) == 1
    assert chat(sim, "x [[sim:quirk=nonsense]]").status_code == 400


def test_directive_finish_content_filter(sim: SimulatorThread) -> None:
    choice = chat(sim, "x [[sim:finish=content_filter]]").json()["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None


def test_directive_fail_first_counts_per_body(sim: SimulatorThread) -> None:
    statuses = [chat(sim, "flaky [[sim:fail_first=2]]").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert chat(sim, "other [[sim:fail_first=1]]").status_code == 503  # its own count
    assert sim.stats()["faults"]["503"] == 3


def test_directive_latency_delays_that_request(sim: SimulatorThread) -> None:
    started = time.perf_counter()
    content = answer(chat(sim, "slow [[sim:latency=200ms]]"))
    assert time.perf_counter() - started >= 0.19
    assert "[[sim:latency=200ms]]" in content


def test_unknown_directive_is_a_bad_request(sim: SimulatorThread) -> None:
    assert chat(sim, "x [[sim:explode=1]]").status_code == 400


# --- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        orjson.dumps({"model": "gpt-4o-mini"}),
        orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 0}),
    ],
)
def test_bad_requests_get_openai_error_bodies(sim: SimulatorThread, payload: bytes) -> None:
    response = httpx.post(f"{sim.url}/chat/completions", content=payload)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and {"message", "param", "code"} <= set(error)
    assert sim.stats()["bad_requests"] == 1


def test_wrong_or_missing_key_is_401_and_never_echoed(simulator: StartSim) -> None:
    server = simulator(require_api_key="sk-right")
    for key in ("sk-wrong-secret-123", None):
        response = chat(server, key=key)
        assert response.status_code == 401
        assert response.json()["error"] == {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
        assert "sk-wrong" not in response.text
    assert chat(server, key="sk-right").status_code == 200
    assert server.stats()["auth_failures"] == 2


def test_unknown_model_is_404(simulator: StartSim) -> None:
    server = simulator(models=("sim-1",))
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{server.url}/chat/completions", json=body)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["message"] == "The model `gpt-5` does not exist or you do not have access to it."
    assert server.stats()["unknown_model"] == 1


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_after_s", "header"), [(2.0, "2"), (0.5, "0.5")])
def test_injected_429_carries_retry_after(simulator: StartSim, retry_after_s: float, header: str) -> None:
    server = simulator(p429=1.0, retry_after_s=retry_after_s)
    response = chat(server)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == header
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert server.stats()["faults"]["429"] == 1 and server.stats()["rate_limited"] == 0


@pytest.mark.parametrize(("option", "status"), [("p500", 500), ("p503", 503)])
def test_injected_server_errors(simulator: StartSim, option: str, status: int) -> None:
    server = simulator(**{option: 1.0})
    response = chat(server)
    assert response.status_code == status
    assert response.json()["error"]["type"] == "server_error"
    assert server.stats()["faults"][str(status)] == 1


def test_seeded_faults_repeat(simulator: StartSim) -> None:
    servers = [simulator(p500=0.5, seed=7) for _ in range(2)]
    runs = [[chat(server).status_code for _ in range(12)] for server in servers]
    assert runs[0] == runs[1] and {200, 500} == set(runs[0])


def test_drop_closes_the_connection_without_any_response(simulator: StartSim) -> None:
    server = simulator(pdrop=1.0)
    address = urlsplit(server.url)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    received = b""
    with socket.create_connection((address.hostname, address.port), timeout=5) as raw:
        raw.sendall(head.encode() + body)
        try:
            while chunk := raw.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert received == b""  # EOF or reset, and not one byte of an HTTP response
    with pytest.raises(httpx.RemoteProtocolError):
        chat(server)
    assert server.stats()["faults"]["drop"] == 2


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_hang_is_cut_by_the_client_timeout_and_freed_on_the_server(simulator: StartSim) -> None:
    server = simulator(phang=1.0)
    with pytest.raises(httpx.ReadTimeout):
        chat(server, timeout=0.3)
    stats = server.stats()
    assert stats["faults"]["hang"] == 1 and stats["completions_served"] == 0
    wait_until(lambda: server.stats()["in_flight"] == 0)  # the handler was cancelled, not left asleep


def test_close_does_not_wait_for_a_hanging_request(simulator: StartSim) -> None:
    server = SimulatorThread(SimConfig(phang=1.0)).start()
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            chat(server, timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    client = threading.Thread(target=hang)
    client.start()
    wait_until(lambda: server.stats()["in_flight"] == 1)
    started = time.perf_counter()
    server.close()
    assert time.perf_counter() - started < 2.0
    client.join(5)
    assert errors and isinstance(errors[0], httpx.RemoteProtocolError)


# --- rate limits -----------------------------------------------------------------------------


def test_rpm_limit_over_a_short_window(simulator: StartSim) -> None:
    server = simulator(rpm=600, limit_window_s=0.5)  # 5 requests per half second
    with httpx.Client() as client:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        responses = [client.post(f"{server.url}/chat/completions", json=body) for _ in range(6)]
        assert [r.status_code for r in responses] == [200] * 5 + [429]
        first, refused = responses[0], responses[5]
        # Stated per minute, as OpenAI does, though enforced over the half-second window.
        assert first.headers["x-ratelimit-limit-requests"] == "600"
        assert first.headers["x-ratelimit-remaining-requests"] == "480"  # 4 of 5 left, scaled
        assert first.headers["x-ratelimit-reset-requests"].endswith("ms")
        assert "x-ratelimit-limit-tokens" not in first.headers  # no tpm set
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        retry_after = float(refused.headers["Retry-After"])
        assert 0 < retry_after <= 0.5
        time.sleep(retry_after)
        assert client.post(f"{server.url}/chat/completions", json=body).status_code == 200
    assert server.stats()["rate_limited"] == 1


def test_tpm_limit_counts_prompt_plus_max_tokens(simulator: StartSim) -> None:
    server = simulator(tpm=6000, limit_window_s=0.5)  # 50 tokens per half second
    first = chat(server, "hi", max_tokens=20)  # 1 + 20 tokens
    assert first.headers["x-ratelimit-limit-tokens"] == "6000"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(29 * 6000 // 50)
    assert chat(server, "hi", max_tokens=20).status_code == 200
    refused = chat(server, "hi", max_tokens=20)
    assert refused.status_code == 429 and float(refused.headers["Retry-After"]) <= 0.5
    too_big = chat(server, "hi", max_tokens=100)  # can never fit in 50
    assert too_big.status_code == 429 and "Retry-After" not in too_big.headers


# --- stats and models ------------------------------------------------------------------------


def test_stats_count_and_reset(sim: SimulatorThread) -> None:
    for _ in range(2):
        chat(sim, "same")
    chat(sim, "different")
    stats = httpx.get(f"{root(sim)}/stats").json()
    assert stats == sim.stats()
    assert stats["requests_received"] == 3
    assert stats["completions_served"] == 3
    assert stats["distinct_requests_served"] == 2
    assert stats["max_serves_per_request"] == 2
    assert stats["max_in_flight"] == 1 and stats["in_flight"] == 0
    assert stats["prompt_tokens"] == 3 and stats["completion_tokens"] == 15
    assert stats["faults"] == {"429": 0, "500": 0, "503": 0, "hang": 0, "drop": 0}

    reset = httpx.post(f"{root(sim)}/stats/reset").json()
    assert reset["requests_received"] == 0 and reset["distinct_requests_served"] == 0
    chat(sim)
    sim.reset_stats()
    assert sim.stats()["completions_served"] == 0


def test_models_list(simulator: StartSim) -> None:
    default = httpx.get(f"{simulator().url}/models").json()
    assert default["object"] == "list"
    assert {"gpt-4o-mini", "sim-1"} <= {m["id"] for m in default["data"]}
    assert all(m["object"] == "model" and m["owned_by"] == "llmbatch-sim" for m in default["data"])
    configured = httpx.get(f"{simulator(models=('a', 'b')).url}/models").json()
    assert [m["id"] for m in configured["data"]] == ["a", "b"]


# --- the real client -------------------------------------------------------------------------


async def anyllm_call(url: str, api_key: str = "sk-test", **kwargs: Any) -> Any:
    from any_llm import AnyLLM

    client = AnyLLM.create("openai", api_key=api_key, api_base=url, unified_exceptions=True, max_retries=0)
    try:
        return await client.acompletion(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50, **kwargs
        )
    finally:
        await client.client.close()  # AnyLLM has no close of its own; this is the openai SDK client


def test_anyllm_client_gets_content_and_usage(sim: SimulatorThread) -> None:
    response = asyncio.run(anyllm_call(sim.url))
    content = response.choices[0].message.content
    assert content.startswith("Simulated answer ") and content.endswith(" to: hi")
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == 1
    assert response.usage.completion_tokens == 5
    assert response.usage.total_tokens == 6
    assert response.model == "gpt-4o-mini"
    assert sim.stats()["completions_served"] == 1


def test_anyllm_client_sees_429_as_rate_limit_error(simulator: StartSim) -> None:
    from any_llm.exceptions import RateLimitError

    server = simulator(p429=1.0, retry_after_s=3)
    with pytest.raises(RateLimitError) as caught:
        asyncio.run(anyllm_call(server.url))
    assert caught.value.retry_after == "3"


def test_anyllm_client_sees_bad_key_as_authentication_error(simulator: StartSim) -> None:
    from any_llm.exceptions import AuthenticationError

    server = simulator(require_api_key="sk-right")
    with pytest.raises(AuthenticationError) as caught:
        asyncio.run(anyllm_call(server.url, api_key="sk-leaked-secret"))
    assert "sk-leaked-secret" not in str(caught.value)


# --- helpers and running it ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("200ms", 0.2), ("1.5s", 1.5), ("2", 2.0), ("1m", 60.0), (" 0.25 s ", 0.25)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "-1s", "1d", "1.5.2s"])
def test_parse_duration_rejects_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 200ms"):
        parse_duration_s(text)


@pytest.mark.parametrize("kwargs", [{"p429": 1.5}, {"p500": 0.6, "p503": 0.6}, {"latency_dist": "normal"}, {"rpm": 0}])
def test_config_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)


SERVE_SCRIPT = """
import sys
from llmbatch.sim import SimConfig, serve_forever
serve_forever(SimConfig(), port=0, on_ready=lambda url: print(url, flush=True))
print("stopped", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery")
def test_serve_forever_stops_cleanly_on_ctrl_c() -> None:
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert httpx.get(f"{url}/models").status_code == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "stopped" and "Traceback" not in err


def test_thread_context_manager_and_taken_port(sim: SimulatorThread) -> None:
    port = urlsplit(sim.url).port
    assert port is not None
    with pytest.raises(OSError):
        SimulatorThread(port=port).start()
    with SimulatorThread() as other:
        assert chat(other).status_code == 200
    with pytest.raises(httpx.ConnectError):
        chat(other)
