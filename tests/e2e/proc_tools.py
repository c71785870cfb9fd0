# SPDX-License-Identifier: Apache-2.0
"""Process-group and shared-memory bookkeeping for the reliability tests (by PID / process group only).

`tracked_server(...)` is `vllm serve` on 127.0.0.1 in its own process group, like
`tests.e2e.server.vllm_server`, but it attributes /dev/shm files to the server: it records the files the
group's processes have mapped or open (`snapshot()`), and on teardown reports what the group left behind
(`leftover_shm`, `leftover_pids`) before removing exactly those — never files of other programs that happen to
be created meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from tests.e2e.engine import REPO
from tests.e2e.server import free_port, stop_process_group

SHM = "/dev/shm"


def group_processes(pgid: int) -> list[psutil.Process]:
    """Live processes of process group `pgid` (zombies excluded)."""
    procs = []
    for p in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError, OSError):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                procs.append(p)
    return procs


def describe(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return f"{p.pid} {' '.join(p.cmdline())[:100]}"
    return str(p.pid)


def worker_processes(pgid: int) -> list[psutil.Process]:
    """vLLM worker ranks of the group (process title `VLLM::Worker_TP<r>...`), ordered by rank."""
    found = []
    for p in group_processes(pgid):
        with contextlib.suppress(psutil.Error):
            if "Worker_TP" in " ".join(p.cmdline()):
                found.append(p)
    return sorted(found, key=lambda p: " ".join(p.cmdline()))


def shm_files_of(pids: list[int]) -> set[str]:
    """Names of /dev/shm files that `pids` have mapped or open."""
    names: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith(SHM + "/"):
                    names.add(parts[5][len(SHM) + 1 :].removesuffix(" (deleted)"))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(SHM + "/"):
                        names.add(target[len(SHM) + 1 :].removesuffix(" (deleted)"))
    return names


@dataclass
class ServerHandle:
    base: str
    proc: subprocess.Popen
    log_path: Path
    shm_seen: set[str] = field(default_factory=set)
    leftover_shm: list[str] = field(default_factory=list)
    leftover_pids: list[str] = field(default_factory=list)

    def snapshot(self) -> set[str]:
        """Record the /dev/shm files the server's processes use now."""
        self.shm_seen |= shm_files_of([p.pid for p in group_processes(self.proc.pid)])
        return self.shm_seen

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""


@contextlib.contextmanager
def tracked_server(
    model: str,
    args: list[str],
    ranks: int,
    timeout: float = 300.0,
    env_extra: dict | None = None,
    health_headers: dict | None = None,
):
    """Yield a `ServerHandle` for a healthy `vllm serve MODEL ARGS`; tear the whole group down afterwards."""
    from vllm_helix.cpu_setup import cpu_env

    port = free_port()
    env = {
        **os.environ,
        **cpu_env(ranks),
        "PYTHONPATH": str(REPO),
        "VLLM_PLUGINS": "helix,helix_status",
        **(env_extra or {}),
    }
    cmd = [
        str(Path(sys.executable).with_name("vllm")),
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    log_path = REPO / f".pytest-vllm-serve-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 — closed in finally
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    handle = ServerHandle(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"vllm serve exited with {proc.returncode}:\n{handle.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if (
                    requests.get(f"{handle.base}/health", timeout=2, headers=health_headers).status_code
                    == 200
                ):
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"vllm serve not healthy after {timeout}s:\n{handle.log_tail()}")
            time.sleep(1)
        handle.snapshot()
        yield handle
    finally:
        with contextlib.suppress(Exception):
            handle.snapshot()
        stop_process_group(proc)
        deadline = time.monotonic() + 10
        while group_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        handle.leftover_pids = [describe(p) for p in group_processes(proc.pid)]
        for p in group_processes(proc.pid):  # only our group, by PID
            with contextlib.suppress(psutil.Error):
                p.kill()
        handle.leftover_shm = sorted(n for n in handle.shm_seen if os.path.exists(os.path.join(SHM, n)))
        for name in handle.leftover_shm:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM, name))
        log.close()
        with contextlib.suppress(OSError):
            log_path.unlink()
