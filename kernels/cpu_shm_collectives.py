# SPDX-License-Identifier: Apache-2.0
"""Collectives over shared memory between the ranks of one machine (`torch.ops.helix_cpu.shm_all_to_all`,
`shm_all_reduce`; kernels/csrc/shm_collectives_op.cpp).

`ShmGroup(group, …)` maps one region per process group (created by the group's first rank under /dev/shm,
opened by the others, unlinked as soon as all have mapped it, so nothing is left behind even if a rank dies).
Each call is one round, so every peer must issue the same collectives in the same order (true of a TP or KVP
group):

- `all_to_all(send)` / calling the group: send (P, …) — chunk j for peer j — → recv (P, …), recv[r] = chunk
  `rank` of peer r's send: the Helix KVP exchange (`vllm_helix.attention.exchange`), one copy in and one copy
  out;
- `all_reduce(x)`: x ← Σ over peers, in place, summed in peer order in fp32 (the same bits on every peer): the
  TP group's all-reduce in the Helix worker where vLLM has no shared-memory one.

Waiting is spin → yield → futex sleep. A message larger than a slot is not sent (None / False): the caller
uses gloo. `all_to_all_reference` is the torch.distributed all-to-all with the same contract (the reference of
the tests).
"""

from __future__ import annotations

import mmap
import os
import uuid

import torch
import torch.distributed as dist

from vllm_helix.kernels import cpu_build

__all__ = ["ShmGroup", "all_to_all_reference", "default_spins", "DEFAULT_SLOT_BYTES"]

DEFAULT_SLOT_BYTES = (
    8 << 20
)  # per rank and buffer; decode exchanges are KBs, large prefill chunks go over gloo
_HEADER_LINE = 64
TIMEOUT_ENV, SPINS_ENV = "VLLM_HELIX_SHM_TIMEOUT_S", "VLLM_HELIX_SHM_SPINS"


def default_spins(local_ranks: int, cores: int) -> int:
    """Pause-spins of a waiting peer before it yields its core: 4000 when each of the job's
    `local_ranks` ranks on this machine can have one of its `cores`, 100 when ranks share cores (the peer
    being waited for may need this one). Measured in one engine (benchmarks/RESULTS.md §0): Helix KVP 2 on a
    2-core machine, 4000 vs 100 spins, 7 % less time per token at 4K, 3 % at 64K."""
    return 4000 if local_ranks <= cores else 100


class ShmGroup:
    """Synchronous collectives over shared memory for one process group (see the module docstring)."""

    def __init__(
        self,
        group: dist.ProcessGroup,
        group_ranks: list[int],
        rank_in_group: int,
        slot_bytes: int = DEFAULT_SLOT_BYTES,
        local_ranks: int | None = None,
    ) -> None:
        """`local_ranks`: the processes of the job on this machine (default: the group's size), for the
        spin rule (`default_spins`; the machine's CPU count, not this process's affinity: vLLM pins each rank
        to its own cores before the group is made)."""
        reason = cpu_build.load()
        if reason is not None:
            raise RuntimeError(reason)
        self.rank, self.world, self.slot_bytes = rank_in_group, len(group_ranks), slot_bytes
        self.timeout_s = float(os.environ.get(TIMEOUT_ENV, "300"))
        spins = os.environ.get(SPINS_ENV)
        self.spins = int(spins) if spins else default_spins(local_ranks or self.world, os.cpu_count() or 1)
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

    def all_to_all(self, send: torch.Tensor) -> torch.Tensor | None:
        """send (P, …) → recv (P, …), or None if the message does not fit a slot (nothing was exchanged)."""
        if not self.fits(send):
            return None
        self.seq += 1
        return torch.ops.helix_cpu.shm_all_to_all(
            self.region,
            send.contiguous(),
            self.rank,
            self.world,
            self.seq,
            self.slot_bytes,
            self.timeout_s,
            self.spins,
        )

    __call__ = all_to_all  # the `local_exchange` of vllm_helix.attention.exchange.send_packed

    def all_reduce(self, x: torch.Tensor) -> bool:
        """x ← Σ over peers, in place (contiguous fp32 / bf16). False, with x untouched, if it cannot go
        here."""
        if not (self.fits(x) and x.is_contiguous() and x.dtype in (torch.float32, torch.bfloat16)):
            return False
        self.seq += 1
        torch.ops.helix_cpu.shm_all_reduce(
            self.region, x, self.rank, self.world, self.seq, self.slot_bytes, self.timeout_s, self.spins
        )
        return True


def all_to_all_reference(send: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send.contiguous(), group=group)
    return recv
