# SPDX-License-Identifier: Apache-2.0
"""A warm host for the test engines: `import vllm` once per session, then one forked process per engine.

Every e2e test used to start `python -m tests.e2e.engine`, which spends ≈ 10 s (on 2 cores) importing vLLM
before it builds `LLM(...)`. The host (`python -m tests.e2e.engine --host`, started on first use, one per
test session) pays that import once; for each spec it forks a child that

- starts its own session (process group = its pid, so the test can kill the engine as a whole),
- takes the test's environment (`os.environ` replaced before vLLM reads any of it: vLLM's env values are
  read lazily, and its plugins load when `LLM(...)` is built, not at import),
- writes everything to a log file and runs `tests.e2e.engine._main(spec)`.

vLLM's engine core and workers are then spawned exactly as for a user's script (the CPU platform forces the
`spawn` start method, and the child's `__main__` is `tests.e2e.engine` as before), so nothing the engine
computes depends on the host. The host itself never builds an engine, never loads vllm_helix and runs no
torch op before forking.

Protocol on the host's stdin/stdout, one JSON object per line: request {"spec", "env", "log"} → reply
`HOST {"pid"}` at once, then `HOST {"pid", "rc"}` when the child has exited (or was killed). Lines without
the `HOST ` prefix (vLLM's import-time warnings) are ignored. The host exits at end of input.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback

PREFIX = "HOST "


# ---- host side (the warm process) ----------------------------------------------------------------


def serve() -> None:
    import vllm  # noqa: F401 — the import every engine would otherwise pay
    from vllm import LLM, SamplingParams  # noqa: F401

    print(PREFIX + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request)  # never returns
        print(PREFIX + json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(PREFIX + json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(status)}), flush=True)


def _run_child(request: dict) -> None:
    code = 1
    try:
        os.setsid()
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        from tests.e2e.engine import _main

        _main(request["spec"])
        code = 0
    except BaseException:  # noqa: BLE001 — the test reads the traceback from the log
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# ---- test side --------------------------------------------------------------------------------------


class _Host:
    """The running host process and a line reader over its stdout (select + os.read, no buffering
    surprises)."""

    def __init__(self, env: dict) -> None:
        from tests.e2e.engine import REPO

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.engine", "--host"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._buffer = b""
        reply = self.read(timeout=180.0)
        if reply is None or not reply.get("ready"):
            self.stop()
            raise AssertionError(f"the engine host did not start: {reply}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, request: dict) -> None:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict | None:
        """The next `HOST` reply, or None after `timeout` seconds (or if the host died)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(PREFIX):
                    return json.loads(text[len(PREFIX) :])
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None  # the host exited
                self._buffer += chunk

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


_HOST: _Host | None = None


def _host(env: dict) -> _Host:
    global _HOST
    if _HOST is None or not _HOST.alive():
        _HOST = _Host(env)
        atexit.register(_HOST.stop)
    return _HOST


def _kill_engine(pgid: int) -> None:
    """SIGKILL the engine's process group, leaving multiprocessing's resource tracker to last: once every
    other process is gone it unlinks what they registered (vLLM's shared-memory queues, the named
    semaphores `sem.mp-*`, whose /dev/shm names no process map shows). /dev/shm files the processes had
    mapped are removed as well."""
    from tests.e2e.proc_tools import group_processes, shm_files_of

    procs, shm = [], set()
    with contextlib.suppress(Exception):
        procs = group_processes(pgid)
        shm = shm_files_of([p.pid for p in procs])
    trackers = []
    for p in procs:
        with contextlib.suppress(Exception):
            if "resource_tracker" in " ".join(p.cmdline()):
                trackers.append(p)
                continue
            p.kill()
    with contextlib.suppress(Exception):
        import psutil

        psutil.wait_procs(trackers, timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for name in shm:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join("/dev/shm", name))


def run_forked(spec: dict, env: dict, timeout: float) -> str:
    """Run `spec` in a child forked from the host; return the child's whole output (log file). The
    engine's process group is killed as soon as its RESULT line is written, after `timeout` seconds, or
    when the child exits."""
    host = _host(env)
    semaphores_before = _named_semaphores()
    fd, log_path = tempfile.mkstemp(prefix="helix-engine-", suffix=".log")
    os.close(fd)
    try:
        host.send({"spec": spec, "env": env, "log": log_path})
        started = host.read(timeout=60.0)
        if started is None or "pid" not in started:
            host.stop()
            raise AssertionError(f"the engine host did not fork: {started}")
        pid, exited, stacks = started["pid"], None, ""
        deadline = time.monotonic() + timeout
        try:
            while exited is None and not _has_result(text := _read(log_path)):
                if not stacks and HANG_LINE in text:  # vLLM says a step is stuck: record where, once
                    stacks = dump_stacks(pid)
                if time.monotonic() > deadline or not host.alive():
                    _kill_engine(pid)
                    raise AssertionError(
                        f"engine timed out after {timeout}s (host alive: {host.alive()}):\n"
                        f"{_read(log_path)[-4000:]}"
                    )
                exited = host.read(timeout=0.2)
        finally:
            _kill_engine(pid)
            if exited is None:
                exited = host.read(timeout=60.0)
            for name in _named_semaphores() - semaphores_before:  # created by the engine, left by the kill
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join("/dev/shm", name))
        out = _read(log_path)
        return out + (f"\n(exit {exited['rc']})" if exited else "") + stacks
    finally:
        with contextlib.suppress(OSError):
            os.unlink(log_path)


# vLLM's message-queue reader logs this after 60 s without the workers' reply (a hung step)
HANG_LINE = "No available shared memory broadcast block found"
STACKS_MARKER = "[stacks of the engine's processes"


def dump_stacks(pgid: int) -> str:
    """The Python stacks of every process of the engine's group (`py-spy dump`), taken while a step hangs, so
    a hang's report says which collective each rank waits in."""
    import shutil

    from tests.e2e.proc_tools import describe, group_processes

    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    parts = [f"\n{STACKS_MARKER} (py-spy dump), taken when vLLM reported a hung step]"]
    for proc in group_processes(pgid):
        try:
            run = subprocess.run(
                [spy, "dump", "--pid", str(proc.pid)], capture_output=True, text=True, timeout=30
            )
            parts.append(f"--- {describe(proc)}\n{run.stdout.strip() or run.stderr.strip()}")
        except (OSError, subprocess.SubprocessError) as e:
            parts.append(f"--- {proc.pid}: py-spy dump failed: {e}")
    return "\n".join(parts) + "\n"


def _named_semaphores() -> set[str]:
    """multiprocessing's named semaphores in /dev/shm (`sem.mp-*`; their names appear in no process map)."""
    with contextlib.suppress(OSError):
        return {n for n in os.listdir("/dev/shm") if n.startswith("sem.mp-")}
    return set()


def _has_result(out: str) -> bool:
    """A whole RESULT line is in the output."""
    at = out.rfind("RESULT ")
    return at >= 0 and (at == 0 or out[at - 1] == "\n") and "\n" in out[at:]


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()
