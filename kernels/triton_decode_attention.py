# SPDX-License-Identifier: Apache-2.0
"""Triton paged partial decode attention over one KVP rank's shard, returning (O_i, LSE_i); split-KV inside.

For query head h of sequence s (one decode token per sequence), over the local_seq_lens[s] local keys:

    s_j   = scale · q·k_j
    LSE_i = log Σ_j exp(s_j)                   (base e, fp32; −inf for an empty shard)
    O_i   = Σ_j exp(s_j − LSE_i) · v_j         (0 for an empty shard)

Flash-decoding: the grid is (sequence, kv_head × head_block, split). Each program walks its split's share of
the shard through the block table with an online softmax and writes a split partial (o, lse) in fp32; the
second kernel (`_split_reduce_kernel`) merges the splits exactly like the Helix combine merges ranks. A GQA
group's query heads share one program, so every K/V tile is loaded once per group.
"""

from __future__ import annotations

import functools

import torch

from vllm_helix.kernels._triton import check_launch_device, tl, triton

__all__ = ["partial_decode_attention"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INT_DTYPES = (torch.int32, torch.int64)
_MAX_SPLITS = 64


@triton.jit
def _partial_decode_attention_kernel(
    Q,  # (S, H, D)
    K,  # (NB, BS, KVH, D)
    V,  # (NB, BS, KVH, DV)
    BlockTable,  # (S, MB)
    SeqLens,  # (S,)
    MidO,  # (S, H, NUM_SPLITS, DV) fp32
    MidLse,  # (S, H, NUM_SPLITS) fp32
    scale,
    num_splits,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bts,
    stride_mos,
    stride_moh,
    stride_mosp,
    stride_mls,
    stride_mlh,
    GROUP: tl.constexpr,  # query heads per KV head
    HEAD_BLOCKS: tl.constexpr,  # cdiv(GROUP, BLOCK_H)
    HEAD_DIM: tl.constexpr,
    V_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,  # tokens per KV-cache block
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs; "tf32" for 16-bit ones (exact on their values)
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1) // HEAD_BLOCKS
    head_block = tl.program_id(1) % HEAD_BLOCKS
    split = tl.program_id(2)

    offs_g = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_g < GROUP
    heads = kv_head * GROUP + offs_g  # (BLOCK_H,)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dv = offs_dv < V_DIM

    q = tl.load(
        Q + seq * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_h[:, None] & mask_d[None, :],
        other=0.0,
    ).to(tl.float32)  # (BLOCK_H, BLOCK_D)

    seq_len = tl.load(SeqLens + seq).to(tl.int32)
    per_split = tl.cdiv(seq_len, num_splits)
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
    # Every tile holds at least one live key (n0 < end), so m_new is finite and no exp sees (−inf) − (−inf).
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        block = tl.load(BlockTable + seq * stride_bts + offs_n // PAGE_SIZE, mask=mask_n, other=0)
        block = block.to(tl.int64)  # 64-bit cache offsets
        slot = offs_n % PAGE_SIZE
        k_rows = K + block[:, None] * stride_kb + slot[:, None] * stride_kt + kv_head * stride_kh  # (N, 1)
        v_rows = V + block[:, None] * stride_vb + slot[:, None] * stride_vt + kv_head * stride_vh
        k = tl.load(
            k_rows + offs_d[None, :],
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        ).to(tl.float32)  # (BLOCK_N, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # (BLOCK_H, BLOCK_N) fp32
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_rows + offs_dv[None, :],
            mask=mask_n[:, None] & mask_dv[None, :],
            other=0.0,
        ).to(tl.float32)  # (BLOCK_N, BLOCK_DV)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new

    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)  # empty split: O = 0, LSE = −inf, no log(0) or 0/0
    lse = tl.where(nonempty, m_i + tl.log(l_safe), float("-inf"))
    o = acc / l_safe[:, None]
    tl.store(
        MidO + seq * stride_mos + heads[:, None] * stride_moh + split * stride_mosp + offs_dv[None, :],
        o,
        mask=mask_h[:, None] & mask_dv[None, :],
    )
    tl.store(MidLse + seq * stride_mls + heads * stride_mlh + split, lse, mask=mask_h)


@triton.jit
def _split_reduce_kernel(
    MidO,  # (S, H, NUM_SPLITS, DV) fp32
    MidLse,  # (S, H, NUM_SPLITS) fp32
    Out,  # (S, H, DV)
    Lse,  # (S, H) fp32
    stride_mos,
    stride_moh,
    stride_mosp,
    stride_mls,
    stride_mlh,
    stride_os,
    stride_oh,
    stride_ls,
    NUM_SPLITS: tl.constexpr,
    V_DIM: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_sp = tl.arange(0, BLOCK_SPLITS)
    mask_sp = offs_sp < NUM_SPLITS
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dv = offs_dv < V_DIM

    lse = tl.load(MidLse + seq * stride_mls + head * stride_mlh + offs_sp, mask=mask_sp, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m_safe)  # 0 for empty splits
    total = tl.sum(w, axis=0)
    o = tl.load(
        MidO + seq * stride_mos + head * stride_moh + offs_sp[:, None] * stride_mosp + offs_dv[None, :],
        mask=mask_sp[:, None] & mask_dv[None, :],
        other=0.0,
    )  # (BLOCK_SPLITS, BLOCK_DV)
    nonempty = total > 0.0
    total_safe = tl.where(nonempty, total, 1.0)  # all splits empty: O = 0 (w = 0), LSE = −inf
    out = tl.sum(w[:, None] * o, axis=0) / total_safe
    tl.store(Out + seq * stride_os + head * stride_oh + offs_dv, out.to(Out.dtype.element_ty), mask=mask_dv)
    tl.store(Lse + seq * stride_ls + head, tl.where(nonempty, m_safe + tl.log(total_safe), float("-inf")))


def reduce_splits(mid_o: torch.Tensor, mid_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Merge split partials mid_o (S, H, splits, DV) / mid_lse (S, H, splits) into out (S, H, DV), lse (S, H).

    Shared with the MLA kernel, whose split partials have the same layout.
    """
    num_seqs, heads, num_splits, v_dim = mid_o.shape
    _split_reduce_kernel[(num_seqs, heads)](
        mid_o, mid_lse, out, lse,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1), lse.stride(0),
        NUM_SPLITS=num_splits,
        V_DIM=v_dim,
        BLOCK_SPLITS=triton.next_power_of_2(num_splits),
        BLOCK_DV=triton.next_power_of_2(v_dim),
    )  # fmt: skip


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for operands upcast from `dtype` to fp32.

    Operands are always upcast to fp32 (fp32 accumulation and an fp32 P·V, no P rounding to 16 bits). fp32
    inputs need "ieee" to meet 1e-5; bf16/fp16 values are exact in tf32, so their Q·K runs exactly on tf32
    tensor cores and only P is truncated to tf32 (relative error ≤ 2^-10) in P·V.
    """
    return "ieee" if dtype == torch.float32 else "tf32"


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_num_splits(device: torch.device, programs: int) -> int:
    """Splits per sequence for about 4 programs per SM; reads no sequence length (no device sync)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = 4 * _sm_count(index)
    else:  # interpreter mode: every program is a Python loop, keep them few
        target = 1
    return max(1, min(16, triton.cdiv(target, max(programs, 1))))


def _check_common(op: str, block_table: torch.Tensor, local_seq_lens: torch.Tensor, num_seqs: int) -> None:
    if block_table.dim() != 2 or block_table.shape[0] != num_seqs or block_table.dtype not in _INT_DTYPES:
        raise ValueError(
            f"{op}: block_table must be ({num_seqs}, max_blocks) int32/int64, got "
            f"{tuple(block_table.shape)} {block_table.dtype}"
        )
    if block_table.stride(1) != 1:
        raise ValueError(
            f"{op}: block_table must be contiguous in its last dim, got strides {block_table.stride()}"
        )
    if tuple(local_seq_lens.shape) != (num_seqs,) or local_seq_lens.dtype not in _INT_DTYPES:
        raise ValueError(
            f"{op}: local_seq_lens must be ({num_seqs},) int32/int64, got "
            f"{tuple(local_seq_lens.shape)} {local_seq_lens.dtype}"
        )


def _check_splits(op: str, num_splits: int) -> None:
    if not 1 <= num_splits <= _MAX_SPLITS:
        raise ValueError(f"{op}: num_splits must be in [1, {_MAX_SPLITS}], got {num_splits}")


def partial_decode_attention(
    query: torch.Tensor,  # (num_seqs, heads, head_dim)
    key_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, head_dim)
    value_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, v_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks) int32/int64
    local_seq_lens: torch.Tensor,  # (num_seqs,) int32/int64
    scale: float,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention of one query token per sequence over this rank's paged KV shard (Triton).

    Computes, for sequence s and query head h (KV head g = h // (heads / kv_heads)), over the local keys
    j < local_seq_lens[s] at cache[block_table[s, j // block_size], j % block_size, g]:
    `LSE[s,h] = log Σ_j exp(scale·q[s,h]·k_j)` and `O[s,h] = Σ_j exp(scale·q[s,h]·k_j − LSE[s,h]) · v_j`;
    an empty shard gives LSE = −inf and O = 0. Same result as
    `vllm_helix.attention.torch_attention.decode_attention_reference`.

    Args:
        query: (num_seqs, heads, head_dim) fp32/bf16/fp16, last dim contiguous.
        key_cache: (num_blocks, block_size, kv_heads, head_dim), query's dtype, last dim contiguous.
        value_cache: (num_blocks, block_size, kv_heads, v_dim), query's dtype, last dim contiguous.
        block_table: (num_seqs, max_blocks) local block ids; only the first cdiv(len, block_size) are read.
        local_seq_lens: (num_seqs,) number of keys this rank holds per sequence (0 allowed).
        scale: softmax scale.
        num_splits: KV splits per sequence (flash-decoding); None picks one from the grid size.

    Returns:
        O (num_seqs, heads, v_dim) in the query's dtype, and LSE (num_seqs, heads) fp32, base e.
    """
    op = "partial_decode_attention"
    device = check_launch_device(op, query, key_cache, value_cache, block_table, local_seq_lens)
    if query.dim() != 3 or key_cache.dim() != 4 or value_cache.dim() != 4:
        raise ValueError(
            f"{op}: expected query (S,H,D) and caches (NB,BS,KVH,D); got {tuple(query.shape)}, "
            f"{tuple(key_cache.shape)}, {tuple(value_cache.shape)}"
        )
    num_seqs, heads, head_dim = query.shape
    num_blocks, block_size, kv_heads, k_dim = key_cache.shape
    v_dim = value_cache.shape[3]
    if k_dim != head_dim or tuple(value_cache.shape[:3]) != (num_blocks, block_size, kv_heads):
        raise ValueError(
            f"{op}: cache shapes {tuple(key_cache.shape)} / {tuple(value_cache.shape)} do not "
            f"match query {tuple(query.shape)}"
        )
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"{op}: heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if query.dtype not in _FLOAT_DTYPES or key_cache.dtype != query.dtype or value_cache.dtype != query.dtype:
        raise ValueError(
            f"{op}: query/key_cache/value_cache must share one of {_FLOAT_DTYPES}, got "
            f"{query.dtype}/{key_cache.dtype}/{value_cache.dtype}"
        )
    if query.stride(2) != 1 or key_cache.stride(3) != 1 or value_cache.stride(3) != 1:
        raise ValueError(
            f"{op}: last dims must be contiguous; strides q {query.stride()}, "
            f"k {key_cache.stride()}, v {value_cache.stride()}"
        )
    _check_common(op, block_table, local_seq_lens, num_seqs)

    group = heads // kv_heads
    block_h = max(16, min(64, triton.next_power_of_2(group)))  # tl.dot needs M >= 16
    head_blocks = triton.cdiv(group, block_h)
    if num_splits is None:
        num_splits = default_num_splits(device, num_seqs * kv_heads * head_blocks)
    _check_splits(op, num_splits)

    out = torch.empty(num_seqs, heads, v_dim, dtype=query.dtype, device=device)
    lse = torch.empty(num_seqs, heads, dtype=torch.float32, device=device)
    if num_seqs == 0:
        return out, lse
    mid_o = torch.empty(num_seqs, heads, num_splits, v_dim, dtype=torch.float32, device=device)
    mid_lse = torch.empty(num_seqs, heads, num_splits, dtype=torch.float32, device=device)
    block_n = max(16, min(32, triton.next_power_of_2(block_size)))  # tl.dot needs N >= 16
    _partial_decode_attention_kernel[(num_seqs, kv_heads * head_blocks, num_splits)](
        query, key_cache, value_cache, block_table, local_seq_lens, mid_o, mid_lse,
        float(scale), num_splits,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_table.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        GROUP=group,
        HEAD_BLOCKS=head_blocks,
        HEAD_DIM=head_dim,
        V_DIM=v_dim,
        PAGE_SIZE=block_size,
        BLOCK_H=block_h,
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_DV=max(16, triton.next_power_of_2(v_dim)),
        DOT_PRECISION=dot_precision(query.dtype),
    )  # fmt: skip
    reduce_splits(mid_o, mid_lse, out, lse)
    return out, lse
