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

**How they start (Linux).** Importing any-llm and the SDKs is 1.5-2 s of CPU and ~70 MB; N children
importing them each paid that N times, on the cores the parent needed too. So one short-lived
*zygote* (``python -m llmbatch.providers.workers --fork ...``) imports them once, freezes them out of
the garbage collector's reach, and forks the N workers before it has started any thread or event
loop; each worker then makes its own event loop and clients, and shares the imported modules' pages
copy-on-write. The parent made every worker's three pipes and handed their ends to the zygote
(``pass_fds``), so the protocol above is unchanged. The zygote then exits; the parent, a child
subreaper while it waits (``PR_SET_CHILD_SUBREAPER``), adopts the workers as its own children, so it
reaps them, reads their exit codes and signals them as it would processes it had started (no pid can
be reused before it reaps one). Where that is not available, each worker is started as its own
``python -m llmbatch.providers.workers``, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
from collections import deque
from typing import Any, Protocol

import orjson

from llmbatch.answers import keepable
from llmbatch.model.request import Request
from llmbatch.providers.anyllm import AnyLLMProvider, preload
from llmbatch.providers.base import PLACEHOLDER_KEYS, CallError, Destination, Reply, redact

__all__ = ["WorkerPool", "auto_workers"]

#: Lines between the processes can be large (a long answer); asyncio's default limit is 64 KiB.
_LINE_LIMIT = 1 << 30
#: Past the call's own timeout, how long the parent waits for a silent child before giving up.
_GRACE_S = 15.0
#: Importing any-llm and the SDK (in the zygote, or in each spawned child), or creating a client in
#: a child: seconds on a slow machine.
_PREPARE_TIMEOUT_S = 120.0


#: ``--workers auto`` starts workers only for runs of at least this many requests: starting them
#: costs an import of any-llm and the SDKs (1-2.5 s of CPU, once for all of them when they are
#: forked, once each when not), which a short run never earns back.
AUTO_MIN_REQUESTS = 2000


def auto_workers(concurrency: int, cpus: int | None, requests: int) -> int:
    """How many worker processes ``--workers auto`` uses: none (calls in this process) unless the
    run is long and keeps enough calls in flight for one core to be the limit.

    At 1-3 ms of CPU a call, one process is saturated by ~100 calls in flight at a latency of
    ~150 ms; below that a second process only adds start-up time and memory (~20-25 MB of its own
    each when forked, ~90 MB when not).
    """
    cpus = cpus or 1
    if cpus < 2 or concurrency < 64 or requests < AUTO_MIN_REQUESTS:
        return 0
    return max(2, min(cpus, 8, concurrency // 50))


class _Child(Protocol):
    """What the pool needs of a worker process: an asyncio ``Process``, or an adopted :class:`_Forked`."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


class _Pipe(Protocol):
    """The worker's stdin as the pool writes it: an asyncio ``StreamWriter`` or ``WriteTransport``."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...


class _Worker:
    def __init__(
        self, process: _Child, stdin: _Pipe, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader
    ) -> None:
        self.process = process
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.reader: asyncio.Task[None] | None = None
        self.drain: asyncio.Task[None] | None = None
        self.retired = False  # stopped by us for not answering: its calls are retried elsewhere

    @property
    def alive(self) -> bool:
        return not self.retired and not (self.reader is not None and self.reader.done())

    def send(self, message: dict[str, Any]) -> None:
        self.stdin.write(orjson.dumps(message) + b"\n")


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
        self._first_provider: str | None = None  # what the zygote imports for: the first one prepared
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
            if self._first_provider is None:
                self._first_provider = self.destination.force_provider or provider
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
            if self._first_provider is None:
                self._first_provider = self.destination.force_provider or request.provider
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
            if not worker.stdin.is_closing():
                worker.stdin.close()
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
        if _can_fork():
            await self._fork()
        else:
            await self._spawn()

    async def _spawn(self) -> None:
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
            assert process.stdin is not None and process.stdout is not None and process.stderr is not None
            self._adopt(_Worker(process, process.stdin, process.stdout, process.stderr))

    async def _fork(self) -> None:
        """The workers, forked by one zygote that imported the SDK once (the module's docstring)."""
        loop = asyncio.get_running_loop()
        theirs: list[int] = []
        ours: list[int] = []
        # Popen, not an asyncio subprocess: a stop signal raises KeyboardInterrupt wherever the code
        # is, and one raised while asyncio sets up its subprocess transport left that transport to be
        # closed by the garbage collector after the loop, as a traceback. Popen returns at once; the
        # zygote's output is read, and its exit seen, on the loop below.
        zygote: subprocess.Popen[bytes] | None = None
        try:
            for _ in range(self._count):
                for _end in range(3):  # stdin, stdout, stderr
                    read, write = os.pipe()
                    theirs.append(read if _end == 0 else write)
                    ours.append(write if _end == 0 else read)
            _set_subreaper(True)
            try:
                zygote = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "llmbatch.providers.workers",
                        "--fork",
                        ",".join(map(str, theirs)),
                        "--preload",
                        self._first_provider or "openai",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=theirs,
                    start_new_session=True,  # and so are the workers it forks: Ctrl-C is the parent's
                )
                for fd in theirs:
                    os.close(fd)
                theirs.clear()
                out, err = await asyncio.wait_for(_finished(zygote), _PREPARE_TIMEOUT_S)
            finally:
                # Once the zygote has exited, its children are ours; later orphans need not be.
                _set_subreaper(False)
        except BaseException as exc:
            if zygote is not None and zygote.returncode is None:
                # Stopped while it imports (Ctrl-C): it and any worker it forked already are one
                # process group (its session's), which goes at once.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(zygote.pid, signal.SIGKILL)
            for fd in theirs + ours:
                os.close(fd)
            if isinstance(exc, TimeoutError):  # an OSError too: asked first
                waited = f"{_PREPARE_TIMEOUT_S:g} s"
                raise CallError("fatal", "WorkerStart", f"worker processes were not ready within {waited}") from None
            if isinstance(exc, OSError):
                raise CallError(
                    "fatal", "WorkerStart", f"cannot start worker processes: {exc.strerror or exc}"
                ) from None
            raise
        pids: list[int] = []
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            pids = [int(pid) for pid in orjson.loads(out)["pids"]]
        if zygote.returncode != 0 or len(pids) != self._count:
            for fd in ours:
                os.close(fd)
            lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
            detail = f": {redact(lines[-1], self._secrets)}" if lines else ""
            raise CallError(
                "fatal", "WorkerStart", f"worker processes failed to start (exit code {zygote.returncode}){detail}"
            )
        for pid, (stdin, stdout, stderr) in zip(pids, zip(*[iter(ours)] * 3, strict=True), strict=True):
            transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(stdin, "wb", buffering=0))
            out_reader = await _reader(os.fdopen(stdout, "rb", buffering=0))
            err_reader = await _reader(os.fdopen(stderr, "rb", buffering=0))
            self._adopt(_Worker(_Forked(pid), transport, out_reader, err_reader))

    def _adopt(self, worker: _Worker) -> None:
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
        stdout = worker.stdout
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
        while line := await worker.stderr.readline():
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


class _Forked:
    """A worker the zygote forked, adopted by this process: killed and reaped as a child of ours.

    Its exit is seen through a pidfd (readable once it has exited); until this process reaps it,
    its pid cannot be given to another process, so ``kill`` never reaches a stranger."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._reaped: asyncio.Future[None] | None = None

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        if self._reaped is None:
            self._reaped = asyncio.ensure_future(self._reap())
        await asyncio.shield(self._reaped)
        assert self.returncode is not None
        return self.returncode

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            pidfd = None  # reaped already (cannot happen to an adopted child): nothing to wait for
        if pidfd is not None:
            exited: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(pidfd, readable)
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        try:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # not ours after all (the zygote was killed before it exited)
            self.returncode = -signal.SIGKILL


async def _reader(pipe: Any) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


async def _finished(process: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """A child's whole stdout and stderr, once it has exited and been reaped (its ``returncode`` set,
    so that the subprocess module never reaps it behind our back)."""
    stdout, stderr = await _reader(process.stdout), await _reader(process.stderr)
    out, err = await asyncio.gather(stdout.read(), stderr.read())
    process.returncode = await _Forked(process.pid).wait()
    return out, err


_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def _set_subreaper(on: bool) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot adopt the worker processes (prctl)")


def _can_fork() -> bool:
    """Linux with pidfds (5.3+), where a process can be its descendants' subreaper."""
    return sys.platform == "linux" and hasattr(os, "pidfd_open")


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


def _zygote(fds: list[int], provider: str) -> None:
    """Import the SDK once, fork one worker per three descriptors (its stdin, stdout, stderr), tell
    the parent their pids on stdout, and exit. No thread and no event loop exist here before the
    forks: a fork copies only the thread that calls it, and a loop's state would be shared."""
    preload(provider)
    # Frozen objects are never scanned by the children's collections, which would otherwise write
    # to (and so copy) nearly every page of the modules imported here.
    gc.collect()
    gc.freeze()
    sets = [fds[i : i + 3] for i in range(0, len(fds), 3)]
    pids = []
    for stdin, stdout, stderr in sets:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                    os.dup2(fd, target)
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(BrokenPipeError):
                    asyncio.run(_serve())
                status = 0
            except BaseException:  # noqa: BLE001 - a worker's failure is written for the parent to read
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(status)  # never back into the zygote's code, nor its interpreter teardown
        pids.append(pid)
    for fd in fds:
        os.close(fd)
    sys.stdout.buffer.write(orjson.dumps({"pids": pids}) + b"\n")
    sys.stdout.flush()
    os._exit(0)  # its children are now the parent's; tearing down the SDK's modules would only delay that


def main(argv: list[str] | None = None) -> None:
    # Only the parent decides what a stop means: Ctrl-C, SIGTERM (systemd and `kill` on the whole
    # process tree) and SIGHUP reach it too, and it lets the calls in flight here finish before it
    # closes our stdin. A worker that obeyed them would drop calls that are already paid for.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--fork"] and args[2:3] == ["--preload"]:
        _zygote([int(fd) for fd in args[1].split(",")], args[3])
    with contextlib.suppress(BrokenPipeError):
        asyncio.run(_serve())


if __name__ == "__main__":
    main()
