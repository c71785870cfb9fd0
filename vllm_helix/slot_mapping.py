# SPDX-License-Identifier: Apache-2.0
"""Context-parallel slot mapping in torch: vLLM 0.32's CPU fallback for `ComputeSlotMappingKernel.kernel`
(`vllm.utils.cpu_triton_utils._compute_slot_mapping_kernel_impl`) asserts "Context Parallelism is not
supported on CPU". This is the same computation as the Triton kernel, vectorised, installed by the Helix
worker in its own process only:

    V = block_size · CP                (the scheduler's virtual block)
    o = pos mod V,  owner = (o // I) mod CP          (I = cp_kv_cache_interleave_size)
    slot = block_table[req, pos // V] · block_size + (o // (I·CP))·I + o mod I    on the owner
         = PAD_ID                                                                 elsewhere
"""

from __future__ import annotations

import torch


def compute_slot_mapping(
    num_tokens: int,
    max_num_tokens: int,
    query_start_loc: torch.Tensor,
    positions: torch.Tensor,
    block_table: torch.Tensor,
    block_table_stride: int,
    slot_mapping: torch.Tensor,
    KV_CACHE_BLOCK_SIZE: int,
    TOTAL_CP_WORLD_SIZE: int = 1,
    TOTAL_CP_RANK: int = 0,
    CP_KV_CACHE_INTERLEAVE_SIZE: int = 1,
    PAD_ID: int = -1,
    BLOCK_SIZE: int = 1024,
) -> None:
    """Fill `slot_mapping[:max_num_tokens]` (int64) in place; signature of vLLM's Triton kernel."""
    bs, cp, rank, inter = KV_CACHE_BLOCK_SIZE, TOTAL_CP_WORLD_SIZE, TOTAL_CP_RANK, CP_KV_CACHE_INTERLEAVE_SIZE
    qsl = query_start_loc.to(torch.int64)
    counts = qsl[1:] - qsl[:-1]  # (num_reqs,)
    n = int(qsl[-1]) if qsl.numel() > 1 else 0
    req = torch.repeat_interleave(torch.arange(counts.numel()), counts)  # (n,)
    pos = positions[:n].to(torch.int64)
    virtual = bs * cp
    vblock, offset = pos // virtual, pos % virtual
    is_local = (offset // inter) % cp == rank
    local_offset = (offset // (inter * cp)) * inter + offset % inter
    table = block_table.reshape(-1)[: block_table.numel()].view(-1, block_table_stride)
    slots = table[req, vblock].to(torch.int64) * bs + local_offset
    slot_mapping[:n] = torch.where(is_local, slots, torch.full_like(slots, PAD_ID))
    if max_num_tokens > n:
        slot_mapping[n:max_num_tokens] = PAD_ID
