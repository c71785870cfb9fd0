# SPDX-License-Identifier: Apache-2.0
"""Triton Helix combine: exact attention output from the KVP ranks' partials (O_i, LSE_i).

    M   = max_i LSE_i
    LSE = M + log Σ_i exp(LSE_i − M)
    O   = Σ_i exp(LSE_i − LSE) · O_i           (fp32 accumulation; empty shards have LSE_i = −inf, weight 0)

Like TensorRT-LLM's `helixPostProcess` kernel, one program per (token, head): it reads all KVP LSEs once
(KVP ≤ 256), then streams the KVP partial rows through BLOCK_D-wide chunks of the head dim.
"""

from __future__ import annotations

import torch

from vllm_helix.kernels._triton import check_launch_device, tl, triton

__all__ = ["combine", "MAX_KVP"]

MAX_KVP = 256
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TILE_ELEMS = 4096  # BLOCK_KVP · BLOCK_D per loaded tile, bounds registers per program


@triton.jit
def _combine_kernel(
    PartialO,  # (KVP, T, H, D)
    PartialLse,  # (KVP, T, H) fp32
    Out,  # (T, H, D)
    Lse,  # (T, H) fp32
    kvp,
    stride_pk,
    stride_pt,
    stride_ph,
    stride_lk,
    stride_lt,
    stride_lh,
    stride_ot,
    stride_oh,
    stride_st,
    stride_sh,
    DIM: tl.constexpr,
    BLOCK_KVP: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0)
    head = tl.program_id(1)
    offs_k = tl.arange(0, BLOCK_KVP)
    mask_k = offs_k < kvp

    lse = tl.load(
        PartialLse + offs_k * stride_lk + tok * stride_lt + head * stride_lh, mask=mask_k, other=float("-inf")
    ).to(tl.float32)
    m = tl.max(lse, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m_safe)  # (BLOCK_KVP,), 0 for empty shards
    total = tl.sum(w, axis=0)
    nonempty = total > 0.0
    total_safe = tl.where(nonempty, total, 1.0)  # all shards empty: O = 0 (w = 0), LSE = −inf
    w = w / total_safe
    out_lse = tl.where(nonempty, m_safe + tl.log(total_safe), float("-inf"))
    tl.store(Lse + tok * stride_st + head * stride_sh, out_lse)

    base = PartialO + offs_k[:, None].to(tl.int64) * stride_pk + tok * stride_pt + head * stride_ph
    for d0 in range(0, DIM, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < DIM
        mask = mask_k[:, None] & mask_d[None, :]
        o = tl.load(base + offs_d[None, :], mask=mask, other=0.0)  # (BLOCK_KVP, BLOCK_D)
        out = tl.sum(w[:, None] * o.to(tl.float32), axis=0)
        tl.store(Out + tok * stride_ot + head * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=mask_d)


def combine(
    partial_out: torch.Tensor,  # (kvp, tokens, heads, dim)
    partial_lse: torch.Tensor,  # (kvp, tokens, heads) fp32
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Helix combine of KVP partials (Triton).

    Computes `LSE[t,h] = log Σ_i exp(partial_lse[i,t,h])` and
    `O[t,h,:] = Σ_i exp(partial_lse[i,t,h] − LSE[t,h]) · partial_out[i,t,h,:]` in fp32. Shards with
    LSE = −inf get weight 0; if all shards are empty, O = 0 and LSE = −inf. Same result as
    `vllm_helix.attention.lse_combine.combine_partials`.

    Args:
        partial_out: (kvp, tokens, heads, dim) fp32/bf16/fp16, last dim contiguous; 1 ≤ kvp ≤ 256.
        partial_lse: (kvp, tokens, heads) fp32, base e.
        out_dtype: dtype of O; defaults to partial_out's.

    Returns:
        O (tokens, heads, dim) in out_dtype, and LSE (tokens, heads) fp32.
    """
    op = "combine"
    device = check_launch_device(op, partial_out, partial_lse)
    if partial_out.dim() != 4 or tuple(partial_lse.shape) != tuple(partial_out.shape[:3]):
        raise ValueError(
            f"{op}: expected partial_out (KVP,T,H,D) and partial_lse (KVP,T,H); got "
            f"{tuple(partial_out.shape)} and {tuple(partial_lse.shape)}"
        )
    kvp, tokens, heads, dim = partial_out.shape
    if not 1 <= kvp <= MAX_KVP:
        raise ValueError(f"{op}: kvp must be in [1, {MAX_KVP}], got {kvp}")
    if partial_out.dtype not in _FLOAT_DTYPES or partial_lse.dtype != torch.float32:
        raise ValueError(
            f"{op}: partial_out must be one of {_FLOAT_DTYPES} and partial_lse float32, got "
            f"{partial_out.dtype} / {partial_lse.dtype}"
        )
    out_dtype = out_dtype or partial_out.dtype
    if out_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{op}: out_dtype must be one of {_FLOAT_DTYPES}, got {out_dtype}")
    if partial_out.stride(3) != 1:
        raise ValueError(
            f"{op}: partial_out must be contiguous in its last dim, got strides {partial_out.stride()}"
        )

    out = torch.empty(tokens, heads, dim, dtype=out_dtype, device=device)
    lse = torch.empty(tokens, heads, dtype=torch.float32, device=device)
    if tokens == 0 or heads == 0:
        return out, lse
    block_kvp = triton.next_power_of_2(kvp)
    block_d = max(16, min(triton.next_power_of_2(dim), _TILE_ELEMS // block_kvp))
    _combine_kernel[(tokens, heads)](
        partial_out, partial_lse, out, lse, kvp,
        partial_out.stride(0), partial_out.stride(1), partial_out.stride(2),
        partial_lse.stride(0), partial_lse.stride(1), partial_lse.stride(2),
        out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
        DIM=dim,
        BLOCK_KVP=block_kvp,
        BLOCK_D=block_d,
    )  # fmt: skip
    return out, lse
