# SPDX-License-Identifier: Apache-2.0
"""One gloo process group of N local ranks over the loopback interface (tests, benchmarks, calibration).

The rendezvous is a TCP store at ``127.0.0.1:port`` (a port ``free_port`` found free), and gloo's own pairs
listen on ``lo`` (``GLOO_SOCKET_IFNAME``; without it gloo listens on the address the host name resolves to,
often a LAN one). Every collective of the group times out after ``timeout_s`` instead of hanging on a dead
peer. Imports ``torch.distributed`` only when a group is made.
"""

from __future__ import annotations

import os
import socket

__all__ = ["free_port", "init_loopback_gloo"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (gloo rendezvous, test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_loopback_gloo(rank: int, world_size: int, port: int, timeout_s: float = 60.0) -> None:
    """Join this process to the default gloo group of ``world_size`` ranks meeting at 127.0.0.1:``port``;
    its collectives raise after ``timeout_s`` seconds. A ``GLOO_SOCKET_IFNAME`` already set wins over
    ``lo``."""
    import datetime

    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
