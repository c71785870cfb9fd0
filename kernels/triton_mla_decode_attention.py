# SPDX-License-Identifier: Apache-2.0
"""Triton absorbed-MLA (latent-space) partial decode attention over one KVP rank's shard, and its reference.

With W_UK absorbed into the query, every head attends over the one shared latent "head" of the cache:
entry j is [c_j (kv_lora_rank) | k_pe_j (rope_dim)], the value is c_j itself. For query head h of sequence s:

    s_j   = scale · (q_nope[s,h]·c_j + q_pe[s,h]·k_pe_j)
    LSE   = log Σ_j exp(s_j)                   (base e, fp32; −inf for an empty shard)
    O     = Σ_j exp(s_j − LSE) · c_j           (latent space, (kv_lora_rank,); 0 for an empty shard)

The caller applies W_UV afterwards (after the Helix combine, which is linear in O). Grid (sequence,
head block, split); the split partials are merged by the reduction kernel of `triton_decode_attention.py`.
"""

from __future__ import annotations

import torch

from vllm_helix.kernels._triton import check_launch_device, tl, triton
from vllm_helix.kernels.triton_decode_attention import (
    _check_common,
    _check_splits,
    default_num_splits,
    dot_precision,
    reduce_splits,
)

__all__ = ["mla_partial_decode_attention", "mla_partial_decode_attention_reference"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _mla_partial_decode_attention_kernel(
    QNope,  # (S, H, C)
    QPe,  # (S, H, R)
    KV,  # (NB, BS, C + R)
    BlockTable,  # (S, MB)
    SeqLens,  # (S,)
    MidO,  # (S, H, NUM_SPLITS, C) fp32
    MidLse,  # (S, H, NUM_SPLITS) fp32
    scale,
    num_splits,
    stride_qns,
    stride_qnh,
    stride_qps,
    stride_qph,
    stride_kvb,
    stride_kvt,
    stride_bts,
    stride_mos,
    stride_moh,
    stride_mosp,
    stride_mls,
    stride_mlh,
    HEADS: tl.constexpr,
    LORA_RANK: tl.constexpr,  # C
    ROPE_DIM: tl.constexpr,  # R
    PAGE_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # see partial_attention.dot_precision
):
    seq = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    split = tl.program_id(2)
    mask_h = heads < HEADS
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < LORA_RANK
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < ROPE_DIM

    q_nope = tl.load(
        QNope + seq * stride_qns + heads[:, None] * stride_qnh + offs_c[None, :],
        mask=mask_h[:, None] & mask_c[None, :],
        other=0.0,
    ).to(tl.float32)  # (BLOCK_H, BLOCK_C)
    q_pe = tl.load(
        QPe + seq * stride_qps + heads[:, None] * stride_qph + offs_r[None, :],
        mask=mask_h[:, None] & mask_r[None, :],
        other=0.0,
    ).to(tl.float32)  # (BLOCK_H, BLOCK_R)

    seq_len = tl.load(SeqLens + seq).to(tl.int32)
    per_split = tl.cdiv(seq_len, num_splits)
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):  # each tile has a live key, so m_new is finite
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        block = tl.load(BlockTable + seq * stride_bts + offs_n // PAGE_SIZE, mask=mask_n, other=0)
        block = block.to(tl.int64)  # 64-bit cache offsets
        row = KV + block[:, None] * stride_kvb + (offs_n % PAGE_SIZE)[:, None] * stride_kvt  # (BLOCK_N, 1)
        c = tl.load(row + offs_c[None, :], mask=mask_n[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        k_pe = tl.load(row + LORA_RANK + offs_r[None, :], mask=mask_n[:, None] & mask_r[None, :], other=0.0)
        s = tl.dot(q_nope, tl.trans(c), input_precision=DOT_PRECISION)  # c: (BLOCK_N, BLOCK_C)
        s += tl.dot(q_pe, tl.trans(k_pe.to(tl.float32)), input_precision=DOT_PRECISION)
        s = tl.where(mask_n[None, :], s * scale, float("-inf"))  # (BLOCK_H, BLOCK_N)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, c, input_precision=DOT_PRECISION)
        m_i = m_new

    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)  # empty split: O = 0, LSE = −inf, no log(0) or 0/0
    lse = tl.where(nonempty, m_i + tl.log(l_safe), float("-inf"))
    o = acc / l_safe[:, None]
    tl.store(
        MidO + seq * stride_mos + heads[:, None] * stride_moh + split * stride_mosp + offs_c[None, :],
        o,
        mask=mask_h[:, None] & mask_c[None, :],
    )
    tl.store(MidLse + seq * stride_mls + heads * stride_mlh + split, lse, mask=mask_h)


def _as_latent_cache(op: str, kv_cache: torch.Tensor) -> torch.Tensor:
    """Accept (NB, BS, C+R) or vLLM's MLA layout (NB, BS, 1, C+R)."""
    if kv_cache.dim() == 4 and kv_cache.shape[2] == 1:
        return kv_cache.squeeze(2)
    if kv_cache.dim() != 3:
        raise ValueError(
            f"{op}: kv_cache must be (num_blocks, block_size, kv_lora_rank + rope_dim), "
            f"got {tuple(kv_cache.shape)}"
        )
    return kv_cache


def mla_partial_decode_attention(
    q_nope: torch.Tensor,  # (num_seqs, heads, kv_lora_rank), W_UK absorbed
    q_pe: torch.Tensor,  # (num_seqs, heads, rope_dim)
    kv_cache: torch.Tensor,  # (num_blocks, block_size, kv_lora_rank + rope_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks) int32/int64
    local_seq_lens: torch.Tensor,  # (num_seqs,) int32/int64
    scale: float,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed-MLA decode attention, one query per sequence, over this rank's paged latent shard (Triton).

    Computes, over local entries j < local_seq_lens[s] of the cache (row [c_j | k_pe_j]),
    `s_j = scale·(q_nope[s,h]·c_j + q_pe[s,h]·k_pe_j)`, `LSE[s,h] = log Σ_j exp(s_j)` and
    `O[s,h] = Σ_j exp(s_j − LSE[s,h]) · c_j`; an empty shard gives LSE = −inf and O = 0.
    Same result as `mla_partial_decode_attention_reference`.

    Args:
        q_nope: (num_seqs, heads, kv_lora_rank) fp32/bf16/fp16, last dim contiguous.
        q_pe: (num_seqs, heads, rope_dim), q_nope's dtype, last dim contiguous.
        kv_cache: (num_blocks, block_size, kv_lora_rank + rope_dim), or vLLM's (…, 1, …) layout; same dtype.
        block_table: (num_seqs, max_blocks) local block ids.
        local_seq_lens: (num_seqs,) entries this rank holds per sequence (0 allowed).
        scale: softmax scale (of the un-absorbed qk head dim).
        num_splits: KV splits per sequence; None picks one from the grid size.

    Returns:
        O (num_seqs, heads, kv_lora_rank) in q_nope's dtype, and LSE (num_seqs, heads) fp32, base e.
    """
    op = "mla_partial_decode_attention"
    kv_cache = _as_latent_cache(op, kv_cache)
    device = check_launch_device(op, q_nope, q_pe, kv_cache, block_table, local_seq_lens)
    if q_nope.dim() != 3 or q_pe.dim() != 3 or q_pe.shape[:2] != q_nope.shape[:2]:
        raise ValueError(
            f"{op}: expected q_nope (S,H,C) and q_pe (S,H,R), got {tuple(q_nope.shape)} and "
            f"{tuple(q_pe.shape)}"
        )
    num_seqs, heads, lora_rank = q_nope.shape
    rope_dim = q_pe.shape[2]
    if kv_cache.shape[2] != lora_rank + rope_dim:
        raise ValueError(
            f"{op}: kv_cache last dim {kv_cache.shape[2]} != kv_lora_rank {lora_rank} + rope_dim {rope_dim}"
        )
    if q_nope.dtype not in _FLOAT_DTYPES or q_pe.dtype != q_nope.dtype or kv_cache.dtype != q_nope.dtype:
        raise ValueError(
            f"{op}: q_nope/q_pe/kv_cache must share one of {_FLOAT_DTYPES}, got "
            f"{q_nope.dtype}/{q_pe.dtype}/{kv_cache.dtype}"
        )
    if q_nope.stride(2) != 1 or q_pe.stride(2) != 1 or kv_cache.stride(2) != 1:
        raise ValueError(
            f"{op}: last dims must be contiguous; strides q_nope {q_nope.stride()}, "
            f"q_pe {q_pe.stride()}, kv_cache {kv_cache.stride()}"
        )
    _check_common(op, block_table, local_seq_lens, num_seqs)

    block_h = 16  # tl.dot needs M >= 16; MLA decode has few (TP-sharded) heads
    head_blocks = triton.cdiv(heads, block_h)
    if num_splits is None:
        num_splits = default_num_splits(device, num_seqs * head_blocks)
    _check_splits(op, num_splits)

    out = torch.empty(num_seqs, heads, lora_rank, dtype=q_nope.dtype, device=device)
    lse = torch.empty(num_seqs, heads, dtype=torch.float32, device=device)
    if num_seqs == 0 or heads == 0:
        return out, lse
    mid_o = torch.empty(num_seqs, heads, num_splits, lora_rank, dtype=torch.float32, device=device)
    mid_lse = torch.empty(num_seqs, heads, num_splits, dtype=torch.float32, device=device)
    block_size = kv_cache.shape[1]
    _mla_partial_decode_attention_kernel[(num_seqs, head_blocks, num_splits)](
        q_nope, q_pe, kv_cache, block_table, local_seq_lens, mid_o, mid_lse,
        float(scale), num_splits,
        q_nope.stride(0), q_nope.stride(1), q_pe.stride(0), q_pe.stride(1),
        kv_cache.stride(0), kv_cache.stride(1),
        block_table.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        HEADS=heads,
        LORA_RANK=lora_rank,
        ROPE_DIM=rope_dim,
        PAGE_SIZE=block_size,
        BLOCK_H=block_h,
        BLOCK_N=16,  # a (16, 512) fp32 latent tile per step already fills the registers of 8 warps
        BLOCK_C=max(16, triton.next_power_of_2(lora_rank)),
        BLOCK_R=max(16, triton.next_power_of_2(rope_dim)),
        DOT_PRECISION=dot_precision(q_nope.dtype),
        num_warps=8,  # untuned guess (no GPU here); the interpreter ignores it
    )  # fmt: skip
    reduce_splits(mid_o, mid_lse, out, lse)
    return out, lse


def mla_partial_decode_attention_reference(
    q_nope: torch.Tensor,  # (num_seqs, heads, kv_lora_rank)
    q_pe: torch.Tensor,  # (num_seqs, heads, rope_dim)
    kv_cache: torch.Tensor,  # (num_blocks, block_size, kv_lora_rank + rope_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks) int
    local_seq_lens: torch.Tensor,  # (num_seqs,) int
    scale: float,
    num_splits: int | None = None,  # accepted for signature parity; the reference does not split
    max_tokens_per_chunk: int = 1 << 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference (and CPU path) of `mla_partial_decode_attention`; same args, same (O, LSE).

    Vectorised over sequences: the shards are gathered padded to the longest one, in chunks of sequences
    holding at most `max_tokens_per_chunk` padded entries, with fp32 accumulation. Block-table entries past a
    sequence's length are never dereferenced (they may be garbage, e.g. -1).
    """
    kv_cache = _as_latent_cache("mla_partial_decode_attention_reference", kv_cache)
    num_seqs, heads, lora_rank = q_nope.shape
    block_size = kv_cache.shape[1]
    out = torch.zeros(num_seqs, heads, lora_rank, dtype=torch.float32, device=q_nope.device)
    lse = torch.full((num_seqs, heads), float("-inf"), dtype=torch.float32, device=q_nope.device)
    lens = local_seq_lens.to(torch.int64)
    lens_list = lens.tolist()
    q = torch.cat([q_nope, q_pe], dim=-1).float()  # (S, H, C + R)
    s0 = 0
    while s0 < num_seqs:  # chunk sequences so that the padded gather stays bounded
        s1, longest = s0, 0
        while s1 < num_seqs:
            grown = max(longest, lens_list[s1])
            if s1 > s0 and grown * (s1 + 1 - s0) > max_tokens_per_chunk:
                break
            longest, s1 = grown, s1 + 1
        if longest > 0:
            num_blocks = -(-longest // block_size)
            pos = torch.arange(num_blocks * block_size, device=q.device)  # (L,)
            valid = pos[None, :] < lens[s0:s1, None]  # (s, L)
            table = block_table[s0:s1, :num_blocks].to(torch.int64)  # (s, num_blocks)
            table = torch.where(valid[:, ::block_size], table, torch.zeros_like(table))
            kv = kv_cache[table].flatten(1, 2).float()  # (s, L, C + R)
            scores = torch.einsum("shd,sld->shl", q[s0:s1], kv) * scale  # (s, H, L)
            scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
            m = scores.amax(dim=-1, keepdim=True)  # (s, H, 1)
            m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = torch.exp(scores - m_safe)
            denom = p.sum(dim=-1, keepdim=True)
            o = torch.einsum("shl,slc->shc", p, kv[..., :lora_rank]) / denom.clamp_min(1e-30)
            out[s0:s1] = torch.where(denom > 0, o, torch.zeros_like(o))
            lse[s0:s1] = (m_safe + torch.log(denom)).squeeze(-1)
        s0 = s1
    return out.to(q_nope.dtype), lse
