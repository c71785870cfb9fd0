# SPDX-License-Identifier: Apache-2.0
"""Native CPU Helix combine from the exchange's receive buffer (`torch.ops.helix_cpu.combine_packed`).

recv (KVP, T, h, D + e) holds every KVP peer's rows [O_i | LSE_i bits]
(`vllm_helix.attention.exchange.pack_partials`); the op writes into out (T, h, D), in place, with fp32
accumulation:

    M = max_i LSE_i,    O = Σ_i exp(LSE_i − M) · O_i / Σ_i exp(LSE_i − M)     (O = 0 when every LSE_i = −inf)

The torch path, the reference of the tests, is `vllm_helix.attention.exchange.combine_received`.
"""

from __future__ import annotations

import torch

from vllm_helix.kernels import cpu_build

__all__ = ["combine_packed", "supports"]


def supports(recv: torch.Tensor, out: torch.Tensor) -> bool:
    return (
        recv.device.type == "cpu"
        and recv.dtype == out.dtype
        and recv.dtype in (torch.float32, torch.bfloat16)
        and recv.is_contiguous()
        and out.stride(-1) == 1
    )


def combine_packed(recv: torch.Tensor, out: torch.Tensor) -> None:
    """recv (KVP, T, h, D + e) → out (T, h, D), written in place."""
    reason = cpu_build.load()
    if reason is not None:
        raise RuntimeError(reason)
    torch.ops.helix_cpu.combine_packed(recv, out)
