# SPDX-License-Identifier: Apache-2.0
"""vLLM 0.32's CPU communication, two hooks in a Helix worker process.

1. `vllm.distributed.device_communicators.cpu_communicator._CPUSHMDistributed._init_cpu_shm` (wrapped; applied
   by the general plugin, acts only where a Helix runtime is set): vLLM's CPU shared-memory all-reduce
   leaves its `/dev/shm/<ident>-tp:0-[...]-cpushm_<r>` segments behind on every exit (graceful or a killed
   rank). Once every rank has joined (the original ends with a barrier) the names are no longer needed —
   the mappings stay valid — so Helix unlinks them right away and nothing is left in /dev/shm whatever way
   the server ends.
2. The TP group's `CpuCommunicator.dist_module` (replaced by `install_shm_tp_all_reduce`; Helix worker, CPU,
   only where that slot still holds `torch.distributed`): vLLM's AVX2 CPU build lacks its shared-memory ops,
   so its TP all-reduce (o_proj, FFN, embedding) falls back to gloo/TCP (≈ 1 ms per call on 2 cores), two per
   layer on every step's critical path. `_SharedMemoryAllReduce` sums over Helix's native shared memory
   instead (`helix_cpu::shm_all_reduce`, fp32 accumulation in peer order: every rank holds the same bits);
   under torch.compile the call is the opaque custom op `vllm_helix::tp_all_reduce`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import torch

from vllm_helix.compat import wrap_once

__all__ = ["install_shm_unlink", "unlink_shm_segments", "install_shm_tp_all_reduce"]


def _helix_init_cpu_shm(original):
    @functools.wraps(original)
    def _init_cpu_shm(self, *args, **kwargs):
        handle = original(self, *args, **kwargs)  # every rank of the group has joined every segment by now
        from vllm_helix.runtime import has_runtime

        if has_runtime():
            unlink_shm_segments(self.group_name)
        return handle

    return _init_cpu_shm


def unlink_shm_segments(group_name: str, shm_dir: str = "/dev/shm") -> list[str]:
    """Remove the names `<group_name>_<rank>` of a joined CPU shm group (the memory lives on while mapped)."""
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(shm_dir):
            if name.startswith(group_name + "_") and name[len(group_name) + 1 :].isdigit():
                with contextlib.suppress(FileNotFoundError):  # a peer rank may have removed it first
                    os.unlink(os.path.join(shm_dir, name))
                    removed.append(name)
    return removed


def install_shm_unlink() -> None:
    """Hook 1 (idempotent); nothing where vLLM's layout differs."""
    try:
        from vllm.distributed.device_communicators.cpu_communicator import _CPUSHMDistributed
    except ImportError:  # another vLLM layout: nothing to tidy
        return
    wrap_once(_CPUSHMDistributed, "_init_cpu_shm", _helix_init_cpu_shm)


class _SharedMemoryAllReduce:
    """Stands in for `torch.distributed` as the TP group's `CpuCommunicator.dist_module` (the attribute where
    vLLM plugs its own shared-memory ops, `_CPUSHMDistributed`, when its build has them): a synchronous sum
    all-reduce of fp32/bf16 goes over Helix's shared memory (`ShmGroup.all_reduce`), everything else — and any
    message that does not fit — to torch.distributed (gloo) unchanged."""

    def __init__(self, shm, stats, group) -> None:
        global _TP_ALL_REDUCE
        self._shm, self._stats, self._group = shm, stats, group
        _TP_ALL_REDUCE = self

    def reduce(self, tensor) -> None:
        """tensor ← Σ over the TP group, in place; shared memory when it fits, gloo otherwise."""
        import torch.distributed as dist

        started = time.perf_counter()
        if self._shm.all_reduce(tensor):
            stats = self._stats()
            stats.all_reduce_seconds += time.perf_counter() - started  # includes waiting for the peers
            stats.all_reduces += 1
        else:
            dist.all_reduce(tensor, group=self._group)

    def all_reduce(self, tensor, op=None, group=None, async_op=False):
        import torch.distributed as dist

        # vLLM calls this only with its TP device group (`CpuCommunicator.all_reduce`): `group` is that group.
        if (
            (op is None or op == dist.ReduceOp.SUM)
            and not async_op
            and tensor.dtype in (torch.float32, torch.bfloat16)
        ):
            if torch.compiler.is_compiling():
                torch.ops.vllm_helix.tp_all_reduce(tensor)
            else:
                self.reduce(tensor)
            return None
        return dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=group, async_op=async_op)

    def __getattr__(self, name: str):
        import torch.distributed as dist

        return getattr(dist, name)


# this process's installed all-reduce (one TP group per worker)
_TP_ALL_REDUCE: _SharedMemoryAllReduce | None = None


@torch.library.custom_op("vllm_helix::tp_all_reduce", mutates_args=("tensor",))
def _tp_all_reduce(tensor: torch.Tensor) -> None:
    """tensor ← Σ over this worker's TP group, in place (`_SharedMemoryAllReduce.reduce`)."""
    _TP_ALL_REDUCE.reduce(tensor)


@_tp_all_reduce.register_fake
def _(tensor: torch.Tensor) -> None:
    return None


def install_shm_tp_all_reduce(slot_bytes: int, stats, logger) -> bool:
    """Hook 2: route the TP group's all-reduce over Helix's shared memory (`slot_bytes` per message slot;
    `stats()` returns the counters to update). Returns whether it was installed."""
    import torch.distributed as dist
    from vllm.distributed import parallel_state as ps

    from vllm_helix.kernels.cpu_shm_collectives import ShmGroup

    tp = ps.get_tp_group()
    communicator = tp.device_communicator
    if tp.world_size == 1 or communicator is None or getattr(communicator, "dist_module", None) is not dist:
        return False  # vLLM's own shared-memory ops (or another communicator) carry it: leave it alone
    try:
        shm = ShmGroup(tp.cpu_group, list(tp.ranks), tp.rank_in_group, slot_bytes=slot_bytes)
    except (RuntimeError, OSError) as exc:
        logger.warning(
            "Helix: shared-memory TP all-reduce unavailable (%s); vLLM's gloo all-reduce stays", exc
        )
        return False
    communicator.dist_module = _SharedMemoryAllReduce(shm, stats, communicator.device_group)
    return True
