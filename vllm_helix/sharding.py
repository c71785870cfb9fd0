# SPDX-License-Identifier: Apache-2.0
"""KV sharding, the one home of the rule: which KVP rank owns a token, where it sits, how many each holds.

Tokens are dealt round-robin in units of U tokens (U = vLLM's `cp_kv_cache_interleave_size`, which the Helix
worker sets to the block size: round-robin by paged block). For a global position p:

    owner(p)          = (p // U) % KVP
    local index  L(p) = ((p // U) // KVP) · U + p % U                (its place in the owner's token sequence)
    global position   = ((L // U) · KVP + k) · U + L % U              (the inverse, on rank k)

For S tokens with F = S // U full units and R = S % U tokens in the last, partial unit:

    local_len(k)  = (F // KVP + [k < F % KVP]) · U + [k == F % KVP] · R

so the per-rank counts differ by at most one unit. Example, U = 4, KVP 3, S = 18 (F = 4, R = 2):

    unit    0    1    2    3    4(partial)
    owner   k0   k1   k2   k0   k1            → local_len = [8, 6, 4]

`owner_rank`, `local_slot` and `global_position` take ints or int tensors alike. `compute_slot_mapping` turns
local indices into paged slots: vLLM's scheduler block under `-dcp KVP` is block_size × KVP tokens, so local
index L of a request lives in its local block `block_table[req, L // block_size]` at offset L % block_size
(U divides the block size, which vLLM checks).
"""

from __future__ import annotations

import torch

__all__ = [
    "owner_rank",
    "local_slot",
    "global_position",
    "local_key_positions",
    "local_lengths",
    "local_lengths_tensor",
    "compute_slot_mapping",
]


def owner_rank(position, unit: int, kvp: int):
    """KVP rank that stores the KV of token `position` (int or int tensor)."""
    return (position // unit) % kvp


def local_slot(position, unit: int, kvp: int):
    """Index of token `position` inside its owner's local token sequence (int or int tensor)."""
    return ((position // unit) // kvp) * unit + position % unit


def global_position(local_index, unit: int, kvp_rank: int, kvp: int):
    """Global position of local index `local_index` (int or int tensor) on KVP rank `kvp_rank`."""
    return ((local_index // unit) * kvp + kvp_rank) * unit + local_index % unit


def local_key_positions(
    num_local_tokens: int, unit: int, kvp_rank: int, kvp: int, device: torch.device | None = None
) -> torch.Tensor:
    """Global positions (num_local_tokens,) of a rank's first `num_local_tokens` local KV slots."""
    return global_position(torch.arange(num_local_tokens, device=device), unit, kvp_rank, kvp)


def local_lengths(seq_len: int, unit: int, kvp: int) -> list[int]:
    """Tokens each KVP rank holds for a sequence of `seq_len` tokens."""
    full, rem = divmod(seq_len, unit)
    return [(full // kvp + (k < full % kvp)) * unit + (rem if k == full % kvp else 0) for k in range(kvp)]


def local_lengths_tensor(seq_lens: torch.Tensor, unit: int, kvp: int, kvp_rank: int) -> torch.Tensor:
    """Vectorised `local_lengths(...)[kvp_rank]` for a batch of sequence lengths. (num_seqs,) →
    (num_seqs,)."""
    full = torch.div(seq_lens, unit, rounding_mode="floor")
    rem = seq_lens - full * unit
    whole = torch.div(full, kvp, rounding_mode="floor") + (full % kvp > kvp_rank).to(seq_lens.dtype)
    return whole * unit + torch.where(full % kvp == kvp_rank, rem, torch.zeros_like(rem))


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
    """Context-parallel slot mapping, vectorised, with the signature of vLLM 0.32's Triton
    `ComputeSlotMappingKernel.kernel` (whose CPU fallback refuses context parallelism; installed by
    `vllm_helix.compat.registry`). Fills `slot_mapping[:max_num_tokens]` (int64) in place:

        slot = block_table[req, L // block_size] · block_size + L % block_size   on owner(pos)
             = PAD_ID                                                           elsewhere
        (L = local_slot(pos))
    """
    bs, cp, rank, unit = KV_CACHE_BLOCK_SIZE, TOTAL_CP_WORLD_SIZE, TOTAL_CP_RANK, CP_KV_CACHE_INTERLEAVE_SIZE
    qsl = query_start_loc.to(torch.int64)
    counts = qsl[1:] - qsl[:-1]  # (num_reqs,)
    n = int(qsl[-1]) if qsl.numel() > 1 else 0
    req = torch.repeat_interleave(torch.arange(counts.numel()), counts)  # (n,)
    pos = positions[:n].to(torch.int64)  # (n,)
    local = local_slot(pos, unit, cp)  # (n,)
    table = block_table.reshape(-1)[: block_table.numel()].view(-1, block_table_stride)
    slots = table[req, local // bs].to(torch.int64) * bs + local % bs  # (n,)
    slot_mapping[:n] = torch.where(owner_rank(pos, unit, cp) == rank, slots, torch.full_like(slots, PAD_ID))
    if max_num_tokens > n:
        slot_mapping[n:max_num_tokens] = PAD_ID
