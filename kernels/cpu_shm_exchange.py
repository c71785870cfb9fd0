# SPDX-License-Identifier: Apache-2.0
"""The Helix KVP exchange over shared memory between the ranks of one machine (`torch.ops.helix_cpu.shm_all_to_all`).

`ShmExchange(group, …)` maps one region per KVP group (created by the group's first rank under /dev/shm, opened by
the others, unlinked as soon as all have mapped it, so nothing is left behind even if a rank dies). Calling it with
a send buffer (KVP, …) — chunk j for peer j — returns recv (KVP, …), recv[r] = chunk `rank` of peer r's send: the
all-to-all of `vllm_helix.exchange`, in one copy in and one copy out, with a spin → yield → futex wait
(kernels/csrc/shm_exchange_op.cpp). Messages larger than a slot return None: the caller sends them over gloo.

`all_to_all_reference` is the torch.distributed all-to-all with the same contract (the reference of the tests).
"""

from __future__ import annotations

import mmap
import os
import uuid

import torch
import torch.distributed as dist

from vllm_helix.kernels import cpu_build

__all__ = ["ShmExchange", "all_to_all_reference", "DEFAULT_SLOT_BYTES"]

DEFAULT_SLOT_BYTES = 8 << 20     # per rank and buffer; decode exchanges are KBs, large prefill chunks go over gloo
_HEADER_LINE = 64
TIMEOUT_ENV, SPINS_ENV = "VLLM_HELIX_SHM_TIMEOUT_S", "VLLM_HELIX_SHM_SPINS"


class ShmExchange:
    """A synchronous all-to-all over shared memory for one KVP group (see the module docstring)."""

    def __init__(self, group: dist.ProcessGroup, group_ranks: list[int], rank_in_group: int,
                 slot_bytes: int = DEFAULT_SLOT_BYTES) -> None:
        reason = cpu_build.load()
        if reason is not None:
            raise RuntimeError(reason)
        self.rank, self.world, self.slot_bytes = rank_in_group, len(group_ranks), slot_bytes
        self.timeout_s = float(os.environ.get(TIMEOUT_ENV, "300"))
        self.spins = int(os.environ.get(SPINS_ENV, "4000"))
        size = self.world * _HEADER_LINE + 2 * self.world * slot_bytes
        name = [f"vllm_helix_xchg_{os.getpid()}_{uuid.uuid4().hex[:12]}" if rank_in_group == 0 else None]
        dist.broadcast_object_list(name, src=group_ranks[0], group=group)
        self.path = path = os.path.join("/dev/shm", name[0])
        if rank_in_group == 0:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, size)  # zero-filled: every peer's round counter starts at 0
            os.close(fd)
        dist.barrier(group=group)
        try:
            fd = os.open(path, os.O_RDWR)
            try:
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        finally:
            dist.barrier(group=group)  # every peer has mapped (or failed): the name is no longer needed
            if rank_in_group == 0:
                os.unlink(path)
        self.region = torch.frombuffer(self._map, dtype=torch.uint8)  # (size,) over the shared mapping
        self.seq = 0

    def fits(self, send: torch.Tensor) -> bool:
        return send.numel() * send.element_size() <= self.slot_bytes

    def __call__(self, send: torch.Tensor) -> torch.Tensor | None:
        """send (KVP, …) → recv (KVP, …), or None if the message does not fit a slot (nothing was exchanged)."""
        if not self.fits(send):
            return None
        self.seq += 1
        return torch.ops.helix_cpu.shm_all_to_all(self.region, send.contiguous(), self.rank, self.world, self.seq,
                                                  self.slot_bytes, self.timeout_s, self.spins)


def all_to_all_reference(send: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send.contiguous(), group=group)
    return recv
