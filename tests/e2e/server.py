# SPDX-License-Identifier: Apache-2.0
"""Start `vllm serve` on 127.0.0.1 for a test, wait for /health, and clean up by PID (process group + shm
files)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import free_port  # noqa: F401 — re-exported for the e2e helpers
from tests.e2e.engine import REPO


def _owned_shm_files(proc: subprocess.Popen) -> set[str]:
    """/dev/shm files the server's own processes have open or mapped (never other programs' files)."""
    from tests.e2e.proc_tools import group_processes, shm_files_of

    with contextlib.suppress(Exception):
        return shm_files_of([p.pid for p in group_processes(proc.pid)])
    return set()


@contextlib.contextmanager
def vllm_server(
    model: str,
    args: list[str],
    ranks: int = 1,
    timeout: float = 300.0,
    env_extra: dict | None = None,
    log_text: list[str] | None = None,
):
    """Yield (base_url, process) of a running `vllm serve MODEL ARGS...`; always torn down afterwards. Without
    `VLLM_PLUGINS` (as a user runs it: the general plugin loads, and serves /helix/status for the Helix
    worker) unless `env_extra` sets it. `log_text`, if given, receives the server's whole output after
    shutdown."""
    from vllm_helix.cpu_setup import cpu_env

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    env.update({**cpu_env(ranks), "PYTHONPATH": str(REPO), **(env_extra or {})})
    vllm_cli = str(Path(sys.executable).with_name("vllm"))
    cmd = [vllm_cli, "serve", model, "--host", "127.0.0.1", "--port", str(port), *args]
    owned: set[str] = set()
    log = open(REPO / f".pytest-vllm-serve-{port}.log", "w+")  # noqa: SIM115 — closed in finally
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"vllm serve exited with {proc.returncode}:\n{log.read()[-5000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError(f"vllm serve not healthy after {timeout}s:\n{log.read()[-5000:]}")
            time.sleep(1)
        owned |= _owned_shm_files(proc)
        yield base, proc
    finally:
        owned |= _owned_shm_files(proc)
        stop_process_group(proc)
        for name in owned:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", name))
        if log_text is not None:
            log.seek(0)
            log_text.append(log.read())
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


def stop_process_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after `grace` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
