# SPDX-License-Identifier: Apache-2.0
"""KV sharding: which KVP rank owns a token, and how many tokens each rank holds (round-robin by paged block).

    owner(p)      = (p // block_size) % KVP
    local slot    = ((p // block_size) // KVP) · block_size + p % block_size     (on its owner)

For S tokens with F = S // block_size full blocks and R = S % block_size tokens in the last, partial block:

    local_len(k)  = (F // KVP + [k < F % KVP]) · block_size + [k == F % KVP] · R

so the per-rank counts differ by at most one block. Example, block_size 4, KVP 3, S = 18 (F = 4, R = 2):

    block   0    1    2    3    4(partial)
    owner   k0   k1   k2   k0   k1            → local_len = [8, 6, 4]

This is the layout vLLM's DCP slot mapping produces with `cp_kv_cache_interleave_size = block_size` (its
scheduler block is block_size × KVP; local block b of rank k holds global block b·KVP + k).
"""

from __future__ import annotations

import torch

__all__ = ["owner_rank", "local_lengths", "local_lengths_tensor", "local_slot"]


def owner_rank(position: int, block_size: int, kvp: int) -> int:
    """KVP rank that stores the KV of token `position`."""
    return (position // block_size) % kvp


def local_slot(position: int, block_size: int, kvp: int) -> int:
    """Index of token `position` inside its owner's local token sequence."""
    return ((position // block_size) // kvp) * block_size + position % block_size


def local_lengths(seq_len: int, block_size: int, kvp: int) -> list[int]:
    """Tokens each KVP rank holds for a sequence of `seq_len` tokens."""
    full, rem = divmod(seq_len, block_size)
    return [
        (full // kvp + (k < full % kvp)) * block_size + (rem if k == full % kvp else 0) for k in range(kvp)
    ]


def local_lengths_tensor(seq_lens: torch.Tensor, block_size: int, kvp: int, kvp_rank: int) -> torch.Tensor:
    """Vectorised `local_lengths(...)[kvp_rank]` for a batch of sequence lengths. (num_seqs,) →
    (num_seqs,)."""
    full = torch.div(seq_lens, block_size, rounding_mode="floor")
    rem = seq_lens - full * block_size
    whole = torch.div(full, kvp, rounding_mode="floor") + (full % kvp > kvp_rank).to(seq_lens.dtype)
    return whole * block_size + torch.where(full % kvp == kvp_rank, rem, torch.zeros_like(rem))
