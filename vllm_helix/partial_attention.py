# SPDX-License-Identifier: Apache-2.0
"""Partial attention over one rank's paged KV shard, returning (O_i, LSE_i) — the pure torch reference.

For a query q (one head) and the keys/values k_j, v_j a rank holds for its sequence:

    s_j   = scale · q·k_j                      (masked: s_j = −inf where key j is in q's future)
    LSE_i = log Σ_j exp(s_j)                   (base e, fp32)
    O_i   = Σ_j exp(s_j − LSE_i) · v_j         (the locally normalised output)

A rank that holds no (visible) key for q returns LSE_i = −inf and O_i = 0 — never NaN — so that the combine
(`vllm_helix.combine.combine_partials`) gives it weight exp(−inf − LSE) = 0.

Paged layout (the Helix backend's KV cache): `key_cache`/`value_cache` are (num_blocks, block_size, kv_heads, dim);
a sequence's local block ``b`` (0, 1, 2, …) is ``block_table[seq, b]``. With KV-parallel size KVP and round-robin by
block, local block b of KVP rank k holds global block ``b·KVP + k``, i.e. global token positions
``(b·KVP + k)·block_size + [0, block_size)``. GQA: query head h reads KV head ``h // (heads / kv_heads)``.

This module is also the CPU compute path of the Helix backend and the reference the Triton kernels are tested
against, so it is vectorised over sequences of equal work rather than looping over tokens.
"""

from __future__ import annotations

import torch

__all__ = ["paged_partial_attention", "gather_local_kv", "local_key_positions"]


def local_key_positions(num_local_tokens: int, unit: int, kvp_rank: int, kvp_size: int,
                        device: torch.device | None = None) -> torch.Tensor:
    """Global positions of a rank's first `num_local_tokens` local KV slots: (u·KVP + k)·unit + offset, where
    `unit` is the round-robin unit (the block size for Helix's block-granular placement)."""
    local = torch.arange(num_local_tokens, device=device)
    block, offset = local // unit, local % unit
    return (block * kvp_size + kvp_rank) * unit + offset  # (num_local_tokens,)


def gather_local_kv(cache: torch.Tensor, block_row: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Contiguous (num_tokens, kv_heads, dim) view of one sequence's local KV from the paged cache."""
    block_size = cache.shape[1]
    num_blocks = (num_tokens + block_size - 1) // block_size
    blocks = cache.index_select(0, block_row[:num_blocks].long())  # (num_blocks, block_size, kv_heads, dim)
    return blocks.flatten(0, 1)[:num_tokens]


def paged_partial_attention(
    query: torch.Tensor,            # (num_tokens, heads, head_dim)
    key_cache: torch.Tensor,        # (num_blocks, block_size, kv_heads, head_dim)
    value_cache: torch.Tensor,      # (num_blocks, block_size, kv_heads, v_dim)
    block_table: torch.Tensor,      # (num_seqs, max_blocks) int, local block ids
    local_seq_lens: torch.Tensor,   # (num_seqs,) int, tokens this rank holds per sequence
    query_start_loc: torch.Tensor,  # (num_seqs + 1,) int, query token ranges per sequence
    scale: float,
    query_positions: torch.Tensor | None = None,  # (num_tokens,) global positions; None = no causal mask (decode)
    kvp_rank: int = 0,
    kvp_size: int = 1,
    interleave: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of `query` over this rank's KV shard. Returns O (num_tokens, heads, v_dim) in the query's dtype
    and LSE (num_tokens, heads) in float32, base e. Accumulation is in float32.

    With `query_positions` given, key j is visible to query t iff global_pos(j) ≤ query_positions[t] (causal
    prefill/chunked prefill over a sharded cache); without it every local key is visible (decode). `interleave` is
    the round-robin unit in tokens (vLLM's `cp_kv_cache_interleave_size`; default: the cache block size).
    """
    num_tokens, heads, _ = query.shape
    kv_heads, v_dim = key_cache.shape[2], value_cache.shape[3]
    group = heads // kv_heads
    out = torch.zeros(num_tokens, heads, v_dim, dtype=torch.float32, device=query.device)
    lse = torch.full((num_tokens, heads), float("-inf"), dtype=torch.float32, device=query.device)
    unit = interleave or key_cache.shape[1]
    starts = query_start_loc.tolist()
    lens = local_seq_lens.tolist()
    for seq, n_kv in enumerate(lens):
        q0, q1 = starts[seq], starts[seq + 1]
        if n_kv == 0 or q1 == q0:
            continue
        k = gather_local_kv(key_cache, block_table[seq], n_kv).float()    # (n_kv, kv_heads, head_dim)
        v = gather_local_kv(value_cache, block_table[seq], n_kv).float()  # (n_kv, kv_heads, v_dim)
        q = query[q0:q1].float().view(q1 - q0, kv_heads, group, -1)      # (nq, kv_heads, group, head_dim)
        # scores: (kv_heads, nq·group, n_kv)
        s = torch.matmul(q.permute(1, 0, 2, 3).reshape(kv_heads, -1, q.shape[-1]), k.permute(1, 2, 0)) * scale
        if query_positions is not None:
            kpos = local_key_positions(n_kv, unit, kvp_rank, kvp_size, query.device)  # (n_kv,)
            qpos = query_positions[q0:q1].repeat_interleave(group)                         # (nq·group,)
            s = s.masked_fill(kpos[None, None, :] > qpos[None, :, None], float("-inf"))
        m = s.amax(dim=-1, keepdim=True)                                 # (kv_heads, nq·group, 1)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s - m_safe)
        denom = p.sum(dim=-1, keepdim=True)
        o = torch.matmul(p, v.permute(1, 0, 2)) / denom.clamp_min(1e-30)  # (kv_heads, nq·group, v_dim)
        seq_lse = (m_safe + torch.log(denom)).squeeze(-1)                 # (kv_heads, nq·group); −inf if empty
        o = torch.where(denom > 0, o, torch.zeros_like(o))
        out[q0:q1] = o.view(kv_heads, q1 - q0, group, v_dim).permute(1, 0, 2, 3).reshape(q1 - q0, heads, v_dim)
        lse[q0:q1] = seq_lse.view(kv_heads, q1 - q0, group).permute(1, 0, 2).reshape(q1 - q0, heads)
    return out.to(query.dtype), lse
