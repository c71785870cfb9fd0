# SPDX-License-Identifier: Apache-2.0
"""Start the README's serve path — `vllm-helix serve-demo` (what `make serve` runs) — for a test, and list the
TCP sockets its process tree really listens on.

`serve_demo(args, extra)` runs `python -m vllm_helix.cli serve-demo --port P ARGS -- EXTRA` in its own process
group (serve-demo execs `vllm serve`, so the PID stays the server's), waits for /health, yields a
`tests.e2e.proc_tools.ServerHandle`, and on teardown stops the group by PID and removes only the /dev/shm
files the group's processes had mapped or open. No `--host` is passed: the bind address is serve-demo's own
default.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import time

import psutil
import requests

from tests.e2e.engine import REPO
from tests.e2e.proc_tools import SHM, ServerHandle, group_processes
from tests.e2e.server import free_port, stop_process_group


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped loopback address; 0.0.0.0 / :: (every interface) are not."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@contextlib.contextmanager
def serve_demo(
    args: list[str], extra: list[str] | None = None, timeout: float = 420.0, env_extra: dict | None = None
):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}  # serve-demo's own default applies
    env.update({"PYTHONPATH": str(REPO), **(env_extra or {})})
    cmd = [
        sys.executable,
        "-m",
        "vllm_helix.cli",
        "serve-demo",
        "--port",
        str(port),
        *args,
        "--",
        *(extra or []),
    ]
    log_path = REPO / f".pytest-serve-demo-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 — closed in finally
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle = ServerHandle(f"http://127.0.0.1:{port}", proc, log_path)
    handle.port = port
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve-demo exited with {proc.returncode}:\n{handle.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{handle.base}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"serve-demo not healthy after {timeout}s:\n{handle.log_tail()}")
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
        for p in group_processes(proc.pid):  # only our group, by PID
            with contextlib.suppress(psutil.Error):
                p.kill()
        for name in handle.shm_seen:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM, name))
        log.close()
        with contextlib.suppress(OSError):
            log_path.unlink()


def listening_tcp_sockets(pgid: int) -> list[tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP socket (IPv4 and IPv6) of process group `pgid`."""
    found = []
    for p in group_processes(pgid):
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    found.append((p.pid, p.name(), c.laddr.ip, c.laddr.port))
    return sorted(found)
