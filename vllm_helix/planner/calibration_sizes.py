# SPDX-License-Identifier: Apache-2.0
"""How much one ``vllm-helix calibrate`` run measures (``Sizes``: ``FULL``, ``QUICK``) and the engine's
constants it measures at: KV block of 128 tokens, bf16 tensors, 2 ranks for the TP 2 / Helix KVP 2 part.

Every timing is a median: ``reps`` calls per kernel point, ``coll_reps`` back-to-back calls per collective,
``steps`` synthetic decode steps per grid after 3 warm-up steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 128  # the engine's KV block size (bench_decode)
MIB = 1 << 20
RANKS = 2
MQ_CHUNK = 1 << 20  # ring-buffer chunk of the executor queue (vLLM's 24 MiB only matters for huge messages)
BF16 = torch.bfloat16


@dataclass(frozen=True)
class Sizes:
    """How much one run measures."""

    read_bytes: tuple[int, ...]  # 1-thread read bandwidth at these buffer sizes; all threads at the largest
    attention_keys: tuple[int, ...]  # keys per sequence of the kernel timings
    gemv_shapes: tuple[tuple[int, int], ...]  # (out, in) bf16 weights of the linear-op fit
    gemv_batches: tuple[int, ...]
    reps: int  # timed calls per kernel point (median)
    coll_reps: int  # back-to-back collectives per kind (median)
    step_context: int  # context of the synthetic decode steps
    steps: int  # synthetic decode steps per grid (after 3 warm-up steps)
    gemm: bool


FULL = Sizes(
    (1 * MIB, 8 * MIB, 64 * MIB, 512 * MIB),
    (1024, 8192, 32768, 131072),
    ((512, 512), (2048, 512), (4096, 1024)),
    (1, 8),
    9,
    300,
    4096,
    40,
    True,
)
QUICK = Sizes((1 * MIB, 16 * MIB), (512, 4096), ((256, 256), (1024, 512)), (1,), 3, 40, 1024, 6, False)
