# SPDX-License-Identifier: Apache-2.0
"""Pick the Triton kernels (CUDA) or their torch references (CPU) for the Helix backend's attention ops.

    VLLM_HELIX_KERNELS | force   | CUDA tensors | CPU tensors
    -------------------+---------+--------------+----------------------------------------------
    auto (default)     | None    | triton       | torch
    triton             | triton  | triton       | triton (only with TRITON_INTERPRET=1, for tests)
    torch              | torch   | torch        | torch

`force` (a call argument) wins over the environment variable. "auto" also falls back to torch when Triton
is not importable. The kernel modules are imported lazily, by attribute, so a CPU-only install without
Triton works and tests can monkeypatch `_is_cuda` and the launchers.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from vllm_helix.kernels import triton_available

__all__ = ["ENV_VAR", "select_impl", "decode_attention", "combine", "mla_decode_attention"]

ENV_VAR = "VLLM_HELIX_KERNELS"
_MODES = ("auto", "triton", "torch")
Impl = Literal["triton", "torch"]


def _is_cuda(device: torch.device | str) -> bool:
    """The platform check; tests monkeypatch this to take the CUDA path without a GPU."""
    return torch.device(device).type == "cuda"


def select_impl(device: torch.device | str, force: str | None = None) -> Impl:
    """Return "triton" or "torch" for tensors on `device`.

    `force` (else $VLLM_HELIX_KERNELS) is "auto", "triton" or "torch"; see the module docstring's table.
    """
    mode = (force if force is not None else os.environ.get(ENV_VAR, "auto")).strip().lower() or "auto"
    if mode not in _MODES:
        source = "force" if force is not None else ENV_VAR
        raise ValueError(f"{source}={mode!r} is not one of {_MODES}")
    if mode == "torch":
        return "torch"
    if mode == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}/force=triton but Triton is not importable; install the CUDA build "
                               f"or set {ENV_VAR}=torch")
        return "triton"
    return "triton" if _is_cuda(device) and triton_available() else "torch"


def decode_attention(
    query: torch.Tensor,  # (num_seqs, heads, head_dim)
    key_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, head_dim)
    value_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, v_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks)
    local_seq_lens: torch.Tensor,  # (num_seqs,)
    scale: float,
    *,
    num_splits: int | None = None,
    force: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial decode attention over this rank's shard: O (num_seqs, heads, v_dim), LSE (num_seqs, heads)."""
    args = (query, key_cache, value_cache, block_table, local_seq_lens, scale)
    if select_impl(query.device, force) == "triton":
        from vllm_helix.kernels import partial_attention

        return partial_attention.partial_decode_attention(*args, num_splits=num_splits)
    from vllm_helix.partial_attention import paged_partial_attention

    query_start_loc = torch.arange(query.shape[0] + 1, device=query.device)
    return paged_partial_attention(
        query, key_cache, value_cache, block_table, local_seq_lens, query_start_loc, scale
    )


def combine(
    partial_out: torch.Tensor,  # (kvp, tokens, heads, dim)
    partial_lse: torch.Tensor,  # (kvp, tokens, heads) fp32
    out_dtype: torch.dtype | None = None,
    *,
    force: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Helix combine of KVP partials: (O (tokens, heads, dim), LSE (tokens, heads) fp32)."""
    if select_impl(partial_out.device, force) == "triton":
        from vllm_helix.kernels import combine as combine_module

        return combine_module.combine(partial_out, partial_lse, out_dtype)
    from vllm_helix.combine import combine_partials

    return combine_partials(partial_out, partial_lse, out_dtype)


def mla_decode_attention(
    q_nope: torch.Tensor,  # (num_seqs, heads, kv_lora_rank)
    q_pe: torch.Tensor,  # (num_seqs, heads, rope_dim)
    kv_cache: torch.Tensor,  # (num_blocks, block_size, kv_lora_rank + rope_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks)
    local_seq_lens: torch.Tensor,  # (num_seqs,)
    scale: float,
    *,
    num_splits: int | None = None,
    force: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed-MLA partial decode attention: O (num_seqs, heads, kv_lora_rank), LSE (num_seqs, heads)."""
    from vllm_helix.kernels import mla_partial_attention  # imports fine without triton (placeholder jit)

    args = (q_nope, q_pe, kv_cache, block_table, local_seq_lens, scale)
    if select_impl(q_nope.device, force) == "triton":
        return mla_partial_attention.mla_partial_decode_attention(*args, num_splits=num_splits)
    return mla_partial_attention.mla_partial_decode_attention_reference(*args)
