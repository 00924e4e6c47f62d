"""Calls made by worker processes, so that a fast provider can use more than one core.

Each call through any-llm and the provider's SDK costs about a millisecond of CPU (pydantic
models, request building, the HTTP client): one process tops out near 600-700 calls a second
however fast the provider answers. With ``--workers N`` the engine stays in this process (cache,
pacing, retries, budget, ordering, display: everything that needs one view of the run) and only
the calls themselves are handed to N child processes, each running the ordinary
:class:`~llmbatch.providers.base.AnyLLMProvider` on its own event loop.

The protocol is one JSON object per line over each child's stdin/stdout:

- parent → child: ``{"op": "init", ...}`` once (the API key travels here, never in argv or the
  environment's listing), then ``{"op": "prepare"|"call", "id": N, ...}``;
- child → parent: ``{"id": N, "reply": {...}}`` or ``{"id": N, "error": {...}}``, the error being a
  :class:`~llmbatch.providers.base.CallError` already classified and redacted in the child.

A child makes one attempt per call and never retries; the parent's retry policy decides. Children
run in their own session, so a terminal's Ctrl-C reaches only the parent, which decides when to
stop; a child exits when its stdin closes, which also happens if the parent dies. One that stops
answering is killed, and its calls are retried by the others; so are those of one that dies, as
long as another is alive (the last one's death stops the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from typing import Any

import orjson

from llmbatch.answers import keepable
from llmbatch.model.request import Request
from llmbatch.providers.anyllm import AnyLLMProvider
from llmbatch.providers.base import PLACEHOLDER_KEYS, CallError, Destination, Reply, redact

__all__ = ["WorkerPool", "auto_workers"]

#: Lines between the processes can be large (a long answer); asyncio's default limit is 64 KiB.
_LINE_LIMIT = 1 << 30
#: Past the call's own timeout, how long the parent waits for a silent child before giving up.
_GRACE_S = 15.0
#: Creating a client in a child (importing any-llm and the SDK): seconds on a slow machine.
_PREPARE_TIMEOUT_S = 120.0


#: ``--workers auto`` starts workers only for runs of at least this many requests: each worker
#: pays for importing any-llm and the SDKs (1-2.5 s of CPU), which a short run never earns back.
AUTO_MIN_REQUESTS = 2000


def auto_workers(concurrency: int, cpus: int | None, requests: int) -> int:
    """How many worker processes ``--workers auto`` uses: none (calls in this process) unless the
    run is long and keeps enough calls in flight for one core to be the limit.

    At 1-3 ms of CPU a call, one process is saturated by ~100 calls in flight at a latency of
    ~150 ms; below that a second process only adds start-up time and memory (~80 MB each).
    """
    cpus = cpus or 1
    if cpus < 2 or concurrency < 64 or requests < AUTO_MIN_REQUESTS:
        return 0
    return max(2, min(cpus, 8, concurrency // 50))


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.reader: asyncio.Task[None] | None = None
        self.drain: asyncio.Task[None] | None = None
        self.retired = False  # stopped by us for not answering: its calls are retried elsewhere

    @property
    def alive(self) -> bool:
        return not self.retired and not (self.reader is not None and self.reader.done())

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(message) + b"\n")


class WorkerPool:
    """The engine's :class:`~llmbatch.engine.Provider`, with the calls made by child processes.

    Children are started on the first call that needs them (a rerun that is all cache hits starts
    none, and never imports the provider SDKs).
    """

    def __init__(self, count: int, destination: Destination) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self._count = count
        self.destination = destination
        self._init = {
            "op": "init",
            "api_base": destination.api_base,
            "api_key": destination.api_key,
            "force_provider": destination.force_provider,
        }
        key = destination.api_key
        self._secrets: tuple[str, ...] = (key,) if key and key not in PLACEHOLDER_KEYS else ()
        self._workers: list[_Worker] = []
        self._starting: asyncio.Task[None] | None = None
        self._prepared: dict[str, CallError | None] = {}
        self._next_id = 0
        self._closing = False
        self.lost = 0  # children that died on their own (not stopped by us, not at the end)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    # --- the Provider protocol ---------------------------------------------------------------

    async def prepare(self, request: Request) -> None:
        """Start the children (once) and have every one of them create this provider's client:
        a missing API key or an unknown provider is a :class:`CallError` here, before any call."""
        provider = request.provider
        if provider not in self._prepared:
            await self._started()
            if provider not in self._prepared:
                replies = await asyncio.gather(
                    *(self._ask(w, {"op": "prepare", "provider": provider}, _PREPARE_TIMEOUT_S) for w in self._workers),
                    return_exceptions=True,
                )
                errors = [r for r in replies if isinstance(r, BaseException)]
                self._prepared.setdefault(provider, self._as_call_error(errors[0]) if errors else None)
        error = self._prepared[provider]
        if error is not None:
            raise error

    async def complete(self, request: Request, *, timeout_s: float) -> Reply:
        if not self._workers:
            await self._started()
        live = [w for w in self._workers if w.alive]
        if not live:
            raise CallError("fatal", "WorkerDied", "no worker process is left to make the calls")
        worker = min(live, key=lambda w: len(w.pending))
        message = {
            "op": "call",
            "provider": request.provider,
            "model": request.model,
            "messages": request.messages,
            "params": request.params,
            "extra": request.extra,
            "timeout_s": timeout_s,
        }
        try:
            reply = await self._ask(worker, message, timeout_s + _GRACE_S)
        except TimeoutError:
            # Its own timeouts (the SDK's, then asyncio's) should have answered long ago: the child
            # is stuck. Stop sending it calls and stop it; what it had is retried elsewhere.
            self._retire(worker)
            waited = timeout_s + _GRACE_S
            raise CallError("retryable", "Timeout", f"no answer from a worker process within {waited:g} s") from None
        return Reply(reply["response"], reply["latency_s"], reply.get("headers"))

    def _retire(self, worker: _Worker) -> None:
        worker.retired = True
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()

    async def aclose(self) -> None:
        """Stop every child. One with no call in hand is killed at once: every call it was sent has
        been answered back here (and so stored by the engine before this is called), so it holds
        nothing paid for, and its own shutdown (closing its clients, tearing down the SDK's
        objects) took 0.5-1 s of a run's end. One that still has calls (a second Ctrl-C) gets EOF
        on its stdin and time to answer them; a straggler is killed after 5 s."""
        self._closing = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        for worker in self._workers:
            if worker.process.stdin is not None and not worker.process.stdin.is_closing():
                worker.process.stdin.close()
            if not worker.pending:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        for worker in self._workers:
            try:
                await asyncio.wait_for(worker.process.wait(), timeout=5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            for task in (worker.reader, worker.drain):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        self._workers.clear()

    # --- parent side -----------------------------------------------------------------------

    async def _started(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        for _ in range(self._count):
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "llmbatch.providers.workers",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    limit=_LINE_LIMIT,
                    # Its own session: a Ctrl-C at the terminal is for the parent alone (the child
                    # may not have set SIGINT aside yet), and it ends at EOF when the parent does.
                    start_new_session=True,
                )
            except OSError as exc:
                raise CallError(
                    "fatal", "WorkerStart", f"cannot start a worker process: {exc.strerror or exc}"
                ) from None
            worker = _Worker(process)
            worker.send(self._init)
            worker.reader = asyncio.ensure_future(self._read(worker))
            worker.drain = asyncio.ensure_future(self._drain_stderr(worker))
            self._workers.append(worker)

    async def _ask(self, worker: _Worker, message: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
        if worker.reader is not None and worker.reader.done():
            raise self._died(worker)
        self._next_id += 1
        call_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[call_id] = future
        try:
            worker.send({**message, "id": call_id})
            return await asyncio.wait_for(future, timeout_s) if timeout_s is not None else await future
        finally:
            worker.pending.pop(call_id, None)

    async def _read(self, worker: _Worker) -> None:
        assert worker.process.stdout is not None
        stdout = worker.process.stdout
        while line := await stdout.readline():
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                worker.stderr_tail.append("it wrote something that is not llmbatch's protocol to its stdout")
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                break
            future = worker.pending.get(message["id"])
            if future is None or future.done():
                continue  # the parent gave up on it (timeout)
            if "error" in message:
                future.set_exception(_call_error(message["error"]))
            else:
                future.set_result(message["reply"])
        await worker.process.wait()
        if not worker.retired and not self._closing:
            self.lost += 1
        error = self._died(worker)
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(error)

    async def _drain_stderr(self, worker: _Worker) -> None:
        assert worker.process.stderr is not None
        while line := await worker.process.stderr.readline():
            worker.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    def _died(self, worker: _Worker) -> CallError:
        if worker.retired:
            return CallError("retryable", "Timeout", "a worker process stopped answering and was stopped")
        last = next((t for t in reversed(worker.stderr_tail) if t.strip()), "")
        detail = f": {redact(last, self._secrets)}" if last else ""
        what = f"a worker process stopped unexpectedly (exit code {worker.process.returncode}){detail}"
        if any(other.alive for other in self._workers if other is not worker):
            # The others carry on (killed by the OOM killer, say, or by hand): what it had in hand is
            # retried there. A call it had sent is paid for again, as it would be by a rerun.
            return CallError("retryable", "WorkerDied", f"{what}; its calls are retried by the other workers")
        return CallError("fatal", "WorkerDied", what)

    @staticmethod
    def _as_call_error(exc: BaseException) -> CallError:
        if isinstance(exc, CallError):
            return exc
        if isinstance(exc, TimeoutError):
            return CallError("fatal", "WorkerStart", f"a worker process was not ready within {_PREPARE_TIMEOUT_S:g} s")
        return CallError("fatal", type(exc).__name__, f"a worker process failed to start: {exc}")


def _call_error(data: dict[str, Any]) -> CallError:
    return CallError(
        data["kind"],
        data["type"],
        data["message"],
        status_code=data.get("status_code"),
        retry_after_s=data.get("retry_after_s"),
        headers=data.get("headers"),
    )


def _error_data(error: CallError) -> dict[str, Any]:
    return {
        "kind": error.kind,
        "type": error.type,
        "message": error.message,
        "status_code": error.status_code,
        "retry_after_s": error.retry_after_s,
        "headers": error.headers,
    }


# --- child side ------------------------------------------------------------------------------


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    # The protocol gets the real stdout; anything a library prints goes to stderr instead of
    # corrupting it.
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, protocol_out)
    init = orjson.loads(await reader.readline())
    provider = AnyLLMProvider(
        Destination.of(api_base=init["api_base"], api_key=init["api_key"], force_provider=init["force_provider"])
    )
    tasks: set[asyncio.Task[None]] = set()

    def answer(call_id: int, body: dict[str, Any]) -> None:
        transport.write(orjson.dumps({"id": call_id, **body}) + b"\n")

    async def handle(message: dict[str, Any]) -> None:
        call_id = message["id"]
        request = Request(
            line=0,
            id=call_id,
            provider=message["provider"],
            model=message.get("model", ""),
            messages=message.get("messages", []),
            params=message.get("params", {}),
            extra=message.get("extra", {}),
        )
        try:
            if message["op"] == "prepare":
                provider.prepare(request)
                answer(call_id, {"reply": {}})
                return
            reply = await provider.complete(request, timeout_s=message["timeout_s"])
            # Made writable here too: the answer crosses the pipe as JSON (big integers, say).
            response = keepable(reply.response, provider.secrets)
            answer(call_id, {"reply": {"response": response, "latency_s": reply.latency_s, "headers": reply.headers}})
        except CallError as exc:
            answer(call_id, {"error": _error_data(exc)})
        except Exception as exc:  # noqa: BLE001 - the parent must hear back about every call
            text = redact(f"{type(exc).__name__}: {exc}", provider.secrets)
            answer(call_id, {"error": _error_data(CallError("permanent", type(exc).__name__, text))})

    try:
        while line := await reader.readline():
            task = asyncio.ensure_future(handle(orjson.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        # stdin closed: the parent is done (or gone). Calls still in flight have nowhere to go.
        for task in tasks:
            task.cancel()
    finally:
        await provider.aclose()
        while transport.get_write_buffer_size():  # answers already written must reach the parent
            await asyncio.sleep(0.005)
        transport.close()


def main() -> None:
    # Only the parent decides what a stop means: Ctrl-C, SIGTERM (systemd and `kill` on the whole
    # process tree) and SIGHUP reach it too, and it lets the calls in flight here finish before it
    # closes our stdin. A worker that obeyed them would drop calls that are already paid for.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError):
        asyncio.run(_serve())


if __name__ == "__main__":
    main()
