# SPDX-License-Identifier: Apache-2.0
"""Partial attention over one rank's paged KV shard, returning (O_i, LSE_i) — the pure torch reference.

For a query q (one head) and the keys/values k_j, v_j a rank holds for its sequence:

    s_j   = scale · q·k_j                      (masked: s_j = −inf where key j is in q's future)
    LSE_i = log Σ_j exp(s_j)                   (base e, fp32)
    O_i   = Σ_j exp(s_j − LSE_i) · v_j         (the locally normalised output)

A rank that holds no (visible) key for q returns LSE_i = −inf and O_i = 0 — never NaN — so that the combine
(`vllm_helix.attention.lse_combine.combine_partials`) gives it weight exp(−inf − LSE) = 0.

Paged layout (the Helix backend's KV cache): `key_cache`/`value_cache` are (num_blocks, block_size, kv_heads,
dim); a sequence's local block ``b`` (0, 1, 2, …) is ``block_table[seq, b]``. With KV-parallel size KVP and
round-robin by block, local block b of KVP rank k holds global block ``b·KVP + k``, i.e. global token
positions ``(b·KVP + k)·block_size + [0, block_size)``. GQA: query head h reads KV head ``h // (heads /
kv_heads)``.

This module is also the CPU compute path of the Helix backend and the reference the Triton kernels are tested
against, so it is vectorised over sequences of equal work rather than looping over tokens.
"""

from __future__ import annotations

import torch

from vllm_helix.sharding import global_position, local_key_positions

__all__ = ["paged_partial_attention", "decode_attention_reference", "gather_local_kv"]

_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

# Runs of consecutive blocks shorter than this on average are gathered instead of attended run by run.
_MIN_AVG_RUN = 4


def gather_local_kv(cache: torch.Tensor, block_row: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Contiguous (num_tokens, kv_heads, dim) view of one sequence's local KV from the paged cache."""
    block_size = cache.shape[1]
    num_blocks = (num_tokens + block_size - 1) // block_size
    blocks = cache.index_select(0, block_row[:num_blocks].long())  # (num_blocks, block_size, kv_heads, dim)
    return blocks.flatten(0, 1)[:num_tokens]


def _dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, hidden: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit fp32 attention. q (kv_heads, L, D), k (n, kv_heads, D), v (n, kv_heads, Dv); `hidden` (L, n)
    bool, True where the key is masked. → O (kv_heads, L, Dv) fp32, LSE (kv_heads, L) fp32 (−inf, O = 0 if no
    key)."""
    s = torch.matmul(q.float(), k.float().permute(1, 2, 0)) * scale  # (kv_heads, L, n)
    if hidden is not None:
        s = s.masked_fill(hidden[None], float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m_safe)
    denom = p.sum(dim=-1, keepdim=True)
    o = torch.matmul(p, v.float().permute(1, 0, 2)) / denom.clamp_min(1e-30)
    o = torch.where(denom > 0, o, torch.zeros_like(o))
    return o, (m_safe + torch.log(denom)).squeeze(-1)


def _merge(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact LSE merge of partial results over disjoint key sets. outs (P_i, kv_heads, L, Dv), lses (P_i,
    kv_heads, L) → (kv_heads, L, Dv) fp32, (kv_heads, L) fp32."""
    if len(outs) == 1 and outs[0].shape[0] == 1:
        return outs[0][0].float(), lses[0][0]
    o = torch.cat(outs) if len(outs) > 1 else outs[0]
    lse = torch.cat(lses) if len(lses) > 1 else lses[0]
    m = lse.amax(dim=0)  # (kv_heads, L)
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    w = torch.exp(lse - m)  # (P, kv_heads, L); 0 for empty pieces
    denom = w.sum(dim=0)
    merged = (w.unsqueeze(-1) * o).sum(dim=0) / denom.clamp_min(1e-30).unsqueeze(-1)
    return merged, m + torch.log(denom)  # log 0 = −inf where no key at all


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive block ids: [(start position in `ids`, length), ...]."""
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            runs.append((start, i - start))
            start = i
    return runs


def _visible_blocks(
    q3, key_cache, value_cache, ids, scale, outs, lses, last_tokens: int | None = None
) -> None:
    """Attend q3 (kv_heads, L, D) to the blocks `ids` (table order) of the token-major caches (blocks,
    block_size, kv_heads, D) with the CPU flash kernel, appending partial (O, LSE) to outs/lses; only the
    first `last_tokens` of the last block count (all of it if None). Every query sees every key here, so block
    order is irrelevant: ids are sorted, and each run of consecutive ids is one kernel call on the cache in
    place — (tokens, kv_heads, D) is one strided view when the cache is contiguous, as the Helix backend
    stores it — the partial block ending its run (the usual case) or, rarely, attended alone. A fragmented
    table (average run < `_MIN_AVG_RUN` blocks) is gathered once instead."""
    if not ids:
        return
    bs = key_cache.shape[1]
    partial = ids[-1] if last_tokens is not None and last_tokens < bs else None
    q4 = q3.unsqueeze(0)  # (1, kv_heads, L, D)

    def attend(k: torch.Tensor, v: torch.Tensor) -> None:  # k, v (tokens, kv_heads, D)
        o, lse = _sdpa(q4, k.permute(1, 0, 2).unsqueeze(0), v.permute(1, 0, 2).unsqueeze(0), scale=scale)[:2]
        outs.append(o)  # (1, kv_heads, L, D)
        lses.append(lse)  # (1, kv_heads, L)

    def attend_run(b0: int, blocks: int, tokens: int) -> None:  # in place: a view of the cache
        attend(
            key_cache[b0 : b0 + blocks].flatten(0, 1)[:tokens],
            value_cache[b0 : b0 + blocks].flatten(0, 1)[:tokens],
        )

    # sorting turns the descending ids vLLM hands out after blocks were freed (its free queue returns them in
    # reverse) back into runs readable in place
    ordered = sorted(ids)
    runs = _runs(ordered)
    if len(ids) >= _MIN_AVG_RUN * len(runs):
        for start, length in runs:
            b0 = ordered[start]
            if partial is None or not b0 <= partial < b0 + length:
                attend_run(b0, length, length * bs)
            elif partial == b0 + length - 1:  # the partial block ends this run
                attend_run(b0, length, (length - 1) * bs + last_tokens)
            else:  # inside the run: split around it
                if partial > b0:
                    attend_run(b0, partial - b0, (partial - b0) * bs)
                attend_run(partial, 1, last_tokens)
                attend_run(partial + 1, b0 + length - partial - 1, (b0 + length - partial - 1) * bs)
        return
    idx = torch.tensor(ids, dtype=torch.long)  # table order: the partial block last
    tokens = len(ids) * bs - (bs - last_tokens if partial is not None else 0)
    attend(
        key_cache.index_select(0, idx).flatten(0, 1)[:tokens],  # (n·bs, kv_heads, D) copies
        value_cache.index_select(0, idx).flatten(0, 1)[:tokens],
    )


def _diagonal(
    q3: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    blocks: torch.Tensor,
    n: int,
    kpos: torch.Tensor,
    qpos: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys on a prefill chunk's causal diagonal: the first `n` tokens of `blocks`, at global positions `kpos`
    (n,), for the queries at `qpos` (nq,). q3 (kv_heads, nq·group, D) in the cache dtype. One masked
    flash-kernel call with the query heads as heads (K/V broadcast over each KV head's group, the mask over
    heads) → O (kv_heads, nq·group, D) fp32, LSE (kv_heads, nq·group) with −inf, O = 0 for queries that see
    none of them."""
    kv_heads, rows, dim = q3.shape
    nq = qpos.shape[0]
    group = rows // nq
    k = gather_local_kv(key_cache, blocks, n).permute(1, 0, 2)  # (kv_heads, n, D)
    v = gather_local_kv(value_cache, blocks, n).permute(1, 0, 2)
    k = k.unsqueeze(1).expand(kv_heads, group, n, dim).reshape(1, kv_heads * group, n, dim)
    v = v.unsqueeze(1).expand(kv_heads, group, n, -1).reshape(1, kv_heads * group, n, v.shape[-1])
    q = q3.view(kv_heads, nq, group, dim).permute(0, 2, 1, 3).reshape(1, kv_heads * group, nq, dim)
    hidden = kpos[None, :] > qpos[:, None]  # (nq, n)
    mask = torch.zeros(hidden.shape, dtype=q.dtype).masked_fill_(hidden, float("-inf"))
    o, lse = _sdpa(q, k, v, attn_mask=mask, scale=scale)[:2]  # (1, H, nq, D), (1, H, nq)
    none = hidden.all(dim=1)  # queries that see no key here
    lse = lse.masked_fill(none[None, None, :], float("-inf"))
    o = o.float().masked_fill(none[None, None, :, None], 0.0)
    o = o.view(kv_heads, group, nq, -1).permute(0, 2, 1, 3).reshape(kv_heads, rows, -1)
    return o, lse.view(kv_heads, group, nq).permute(0, 2, 1).reshape(kv_heads, rows)


def paged_partial_attention(
    query: torch.Tensor,  # (num_tokens, heads, head_dim)
    key_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, head_dim)
    value_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, v_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks) int, local block ids
    local_seq_lens: torch.Tensor,  # (num_seqs,) int, tokens this rank holds per sequence
    query_start_loc: torch.Tensor,  # (num_seqs + 1,) int, query token ranges per sequence
    scale: float,
    query_positions: torch.Tensor
    | None = None,  # (num_tokens,) global positions; None = no causal mask (decode)
    kvp_rank: int = 0,
    kvp_size: int = 1,
    interleave: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of `query` over this rank's KV shard. Returns O (num_tokens, heads, v_dim) in the query's
    dtype and LSE (num_tokens, heads) in float32, base e. Accumulation is in float32.

    With `query_positions` given, key j is visible to query t iff global_pos(j) ≤ query_positions[t] (causal
    prefill/chunked prefill over a sharded cache); without it every local key is visible (decode).
    `interleave` is the round-robin unit in tokens (vLLM's `cp_kv_cache_interleave_size`; default: the cache
    block size).

    CPU fast path: keys every query of a sequence sees (all of them in decode) go through
    `aten._scaled_dot_product_flash_attention_for_cpu`, reading the paged cache in place — one call per run of
    consecutive blocks, (run·block_size, kv_heads, D) being one strided view of a contiguous token-major cache
    — and the per-run (O, LSE) are merged exactly. The blocks on a prefill chunk's causal diagonal go through
    the same kernel with a mask. Other devices, or a round-robin unit other than the block size, use the
    explicit fp32 path throughout.
    """
    num_tokens, heads, head_dim = query.shape
    num_blocks, block_size, kv_heads, v_dim = value_cache.shape
    group = heads // kv_heads
    out = torch.zeros(num_tokens, heads, v_dim, dtype=torch.float32, device=query.device)
    lse = torch.full((num_tokens, heads), float("-inf"), dtype=torch.float32, device=query.device)
    unit = interleave or block_size
    starts = query_start_loc.tolist()
    lens = local_seq_lens.tolist()
    fast = (
        query.device.type == "cpu"
        and unit == block_size
        and key_cache.stride(-1) == 1
        and value_cache.stride(-1) == 1
        and key_cache.dtype == value_cache.dtype
        and head_dim == v_dim
        and key_cache.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )
    qpos_all = query_positions.tolist() if (fast and query_positions is not None) else None
    for seq, n_kv in enumerate(lens):
        q0, q1 = starts[seq], starts[seq + 1]
        if n_kv == 0 or q1 == q0:
            continue
        nq = q1 - q0
        q = (
            query[q0:q1]
            .view(nq, kv_heads, group, head_dim)
            .permute(1, 0, 2, 3)
            .reshape(kv_heads, nq * group, -1)
        )
        if fast:
            nb = (n_kv + block_size - 1) // block_size
            ids = block_table[seq, :nb].tolist()
            # local blocks [0, vis) are visible to every query of this sequence; the rest need the causal mask
            if qpos_all is None or min(qpos_all[q0:q1]) >= global_position(
                n_kv - 1, unit, kvp_rank, kvp_size
            ):
                vis_tokens = n_kv
            else:
                qmin = min(qpos_all[q0:q1])
                vis = 0
                while (
                    vis < nb
                    and global_position(
                        min(vis * block_size + block_size, n_kv) - 1, unit, kvp_rank, kvp_size
                    )
                    <= qmin
                ):
                    vis += 1
                vis_tokens = min(vis * block_size, n_kv)
            full = vis_tokens // block_size
            outs, lses = [], []
            qk = q if q.dtype == key_cache.dtype else q.to(key_cache.dtype)
            rem = vis_tokens - full * block_size  # tokens of a visible partial last block
            _visible_blocks(
                qk,
                key_cache,
                value_cache,
                ids[: full + (rem > 0)],
                scale,
                outs,
                lses,
                last_tokens=rem if rem else None,
            )
            if not rem and vis_tokens < n_kv:  # the causal diagonal: masked flash kernel
                o, l_ = _diagonal(
                    qk,
                    key_cache,
                    value_cache,
                    block_table[seq, full:nb],
                    n_kv - vis_tokens,
                    local_key_positions(n_kv, unit, kvp_rank, kvp_size, query.device)[vis_tokens:],
                    query_positions[q0:q1],
                    scale,
                )
                outs.append(o.unsqueeze(0))
                lses.append(l_.unsqueeze(0))
            o, seq_lse = _merge(outs, lses)
        else:
            k = gather_local_kv(key_cache, block_table[seq], n_kv)  # (n_kv, kv_heads, head_dim)
            v = gather_local_kv(value_cache, block_table[seq], n_kv)
            hidden = None
            if query_positions is not None:
                kpos = local_key_positions(n_kv, unit, kvp_rank, kvp_size, query.device)
                qpos = query_positions[q0:q1].repeat_interleave(group)
                hidden = kpos[None, :] > qpos[:, None]
            o, seq_lse = _dense(q, k, v, scale, hidden)
        out[q0:q1] = o.view(kv_heads, nq, group, v_dim).permute(1, 0, 2, 3).reshape(nq, heads, v_dim)
        lse[q0:q1] = seq_lse.view(kv_heads, nq, group).permute(1, 0, 2).reshape(nq, heads)
    return out.to(query.dtype), lse


def decode_attention_reference(
    query: torch.Tensor,  # (num_seqs, heads, head_dim), one decode token per sequence
    key_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, head_dim)
    value_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, v_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks)
    local_seq_lens: torch.Tensor,  # (num_seqs,)
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch decode attention: `paged_partial_attention` with one query per sequence and every local key
    visible → O (num_seqs, heads, v_dim), LSE (num_seqs, heads). The CPU fallback of `kernels.dispatch` and
    the one reference the native and Triton decode kernels are tested against."""
    query_start_loc = torch.arange(query.shape[0] + 1, device=query.device)
    return paged_partial_attention(
        query, key_cache, value_cache, block_table, local_seq_lens, query_start_loc, scale
    )
