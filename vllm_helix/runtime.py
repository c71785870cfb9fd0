# SPDX-License-Identifier: Apache-2.0
"""Per-process Helix state, set once by `vllm_helix.Worker` and read by the attention backend and model
surgery."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm_helix.config import HelixConfig
from vllm_helix.grid import HelixGrid


@dataclass
class HelixStats:
    """Counters the backend updates and the worker reports (metrics, /helix/status)."""

    exchange_seconds: float = 0.0  # exposed KVP all-to-all + combine (`exchange.exchange_and_combine`)
    exchanges: int = 0
    attention_seconds: float = 0.0  # the whole attention step, exchange included (GQA and MLA alike)
    all_reduce_seconds: float = 0.0  # TP all-reduces over Helix's shared memory, waiting for peers included
    all_reduces: int = 0
    steps_sampled_with_forward: int = 0  # steps answered in one executor round trip (`compat.step_rpc`)


@dataclass
class HelixRuntime:
    grid: HelixGrid
    rank: int
    config: HelixConfig
    kvp_group: Any = None  # torch.distributed ProcessGroup of this rank's KVP peers
    tpa_coordinator: Any = None  # vLLM GroupCoordinator of this rank's TPA peers
    kvp_exchange: Any = None  # ShmGroup: synchronous all-to-all over shared memory (CPU), or None
    shm_all_reduce: bool = (
        False  # the TP group's all-reduce runs over Helix's shared memory (CPU, no vLLM shm)
    )
    interleave: int = 1  # tokens per round-robin unit (= block size by default)
    stats: HelixStats = field(default_factory=HelixStats)
    tracked_layer: str | None = None  # the first attention layer: its KV writes measure per-rank KV use
    slots_used: Any = None  # (num_blocks · block_size,) bool: slots of tracked_layer written so far
    block_size: int = 0

    def track_kv_write(self, layer_name: str, slots, num_slots: int, block_size: int) -> None:
        """Record the local slots written for the first attention layer (all layers write the same slots).
        Off with `--additional-config '{"helix": {"metrics": false}}'` (then KV use reads as 0)."""
        import torch

        if not self.config.metrics:
            return
        if self.tracked_layer is None:
            self.tracked_layer = layer_name
        if layer_name != self.tracked_layer:
            return
        if self.slots_used is None or self.slots_used.numel() != num_slots:
            self.slots_used = torch.zeros(num_slots, dtype=torch.bool)
            self.block_size = block_size
        self.slots_used[slots.to("cpu", torch.int64)] = True

    def reset_stats(self) -> None:
        self.stats = HelixStats()
        if self.slots_used is not None:  # a fresh tensor: the old one may be an inference-mode tensor
            import torch

            self.slots_used = torch.zeros(self.slots_used.numel(), dtype=torch.bool)

    @property
    def kvp_rank(self) -> int:
        return self.grid.coords(self.rank)[1]

    @property
    def tpa_rank(self) -> int:
        return self.grid.coords(self.rank)[0]


_RUNTIME: HelixRuntime | None = None


def set_runtime(runtime: HelixRuntime | None) -> None:
    global _RUNTIME
    _RUNTIME = runtime


def get_runtime() -> HelixRuntime:
    if _RUNTIME is None:
        raise RuntimeError(
            "Helix is not active in this process: start vLLM with --worker-cls vllm_helix.Worker"
        )
    return _RUNTIME


def has_runtime() -> bool:
    return _RUNTIME is not None
