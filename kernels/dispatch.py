# SPDX-License-Identifier: Apache-2.0
"""The one place that picks an implementation for each Helix attention op: the table (device × mode → impl).

    VLLM_HELIX_KERNELS | force   | CUDA tensors | CPU tensors
    -------------------+---------+--------------+----------------------------------------------
    auto (default)     | None    | triton       | native (C++ ops, kernels/csrc), torch if they cannot build
    native             | native  | (refused)    | native (error if the ops cannot build)
    triton             | triton  | triton       | triton (only with TRITON_INTERPRET=1, for tests)
    torch              | torch   | torch        | torch

`force` (a call argument, the `helix.kernels` knob) wins over the environment variable. "auto" also falls back
to torch when Triton is not importable. What each implementation runs, per op (the torch column is the
reference every kernel is tested against):

    op                 | native (CPU)            | triton (CUDA)               | torch
    -------------------+-------------------------+-----------------------------+---------------------------
    decode attention   | cpu_decode_attention    | triton_decode_attention     | torch_attention
    ... in the send    | cpu_decode_attention    | decode attention, then      | decode attention, then
        layout         | (writes it directly)    | exchange.pack_partials      | exchange.pack_partials
    combine (packed)   | cpu_combine             | triton_combine              | exchange.combine_received
    combine (split)    | lse_combine (torch)     | triton_combine              | lse_combine
    MLA decode         | the torch reference     | triton_mla_decode_attention | its reference

A native op that does not support a call's dtypes or shapes (`supports(...)`) runs the torch reference. Kernel
modules are imported lazily, so a CPU-only install without Triton works and tests can monkeypatch `_is_cuda`
and the launchers.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from vllm_helix.kernels import triton_available

__all__ = [
    "ENV_VAR",
    "select_impl",
    "describe",
    "decode_attention",
    "decode_attention_packed",
    "combine",
    "combine_packed",
    "mla_decode_attention",
]

ENV_VAR = "VLLM_HELIX_KERNELS"
_MODES = ("auto", "native", "triton", "torch")
Impl = Literal["native", "triton", "torch"]


def _is_cuda(device: torch.device | str) -> bool:
    """The platform check; tests monkeypatch this to take the CUDA path without a GPU."""
    return (device if isinstance(device, torch.device) else torch.device(device)).type == "cuda"


def _native_unavailable() -> str | None:
    from vllm_helix.kernels import cpu_build

    return cpu_build.load()


def select_impl(device: torch.device | str, force: str | None = None) -> Impl:
    """Return "native", "triton" or "torch" for tensors on `device`.

    `force` (else $VLLM_HELIX_KERNELS) is "auto", "native", "triton" or "torch"; see the module docstring's
    table.
    """
    mode = (force if force is not None else os.environ.get(ENV_VAR, "auto")).strip().lower() or "auto"
    if mode not in _MODES:
        source = "force" if force is not None else ENV_VAR
        raise ValueError(f"{source}={mode!r} is not one of {_MODES}")
    if mode == "torch":
        return "torch"
    if mode == "native":
        if _is_cuda(device):
            raise RuntimeError(
                f"{ENV_VAR}/force=native: the native ops are CPU ops; use auto or triton on CUDA"
            )
        reason = _native_unavailable()
        if reason is not None:
            raise RuntimeError(f"{ENV_VAR}/force=native but {reason}; set {ENV_VAR}=torch or fix the build")
        return "native"
    if mode == "triton":
        if not triton_available():
            raise RuntimeError(
                f"{ENV_VAR}/force=triton but Triton is not importable; install the CUDA build "
                f"or set {ENV_VAR}=torch"
            )
        return "triton"
    if _is_cuda(device):
        return "triton" if triton_available() else "torch"
    is_cpu = (device if isinstance(device, torch.device) else torch.device(device)).type == "cpu"
    return "native" if is_cpu and _native_unavailable() is None else "torch"


def describe(device: torch.device | str, force: str | None = None) -> str:
    """What decode attention runs on `device`, for logs and /helix/status: "native (avx2)", "triton", or
    "torch" with the reason the native ops are missing where that is why."""
    impl = select_impl(device, force)
    if impl == "native":
        from vllm_helix.kernels import cpu_build

        return f"native ({cpu_build.status()['isa']})"
    if impl == "torch" and torch.device(device).type == "cpu" and _native_unavailable() is not None:
        return f"torch ({_native_unavailable()})"
    return impl


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
    impl = select_impl(query.device, force)
    if impl == "triton":
        from vllm_helix.kernels import triton_decode_attention

        return triton_decode_attention.partial_decode_attention(*args, num_splits=num_splits)
    from vllm_helix.kernels import cpu_decode_attention

    if impl == "native" and cpu_decode_attention.supports(query, key_cache, value_cache):
        return cpu_decode_attention.partial_decode_attention(*args, num_splits=num_splits or 0)
    from vllm_helix.attention.torch_attention import decode_attention_reference

    return decode_attention_reference(*args)


def decode_attention_packed(
    query: torch.Tensor,  # (num_seqs, heads, head_dim)
    key_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, head_dim)
    value_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, v_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks)
    local_seq_lens: torch.Tensor,  # (num_seqs,)
    scale: float,
    kvp: int,
    *,
    force: str | None = None,
) -> torch.Tensor:
    """Partial decode attention in the exchange's send layout (KVP, num_seqs, heads/KVP, v_dim + e): written
    there directly by the native op, else computed and packed
    (`vllm_helix.attention.exchange.pack_partials`)."""
    from vllm_helix.kernels import cpu_decode_attention

    if select_impl(query.device, force) == "native" and cpu_decode_attention.supports(
        query, key_cache, value_cache
    ):
        return cpu_decode_attention.partial_decode_attention_packed(
            query, key_cache, value_cache, block_table, local_seq_lens, scale, kvp
        )
    from vllm_helix.attention.exchange import pack_partials

    out, lse = decode_attention(
        query, key_cache, value_cache, block_table, local_seq_lens, scale, force=force
    )
    return pack_partials(out, lse, kvp)


def combine_packed(recv: torch.Tensor, out: torch.Tensor, *, force: str | None = None) -> None:
    """The Helix combine of a receive buffer (KVP, tokens, heads, dim + e) into out (tokens, heads, dim)."""
    impl = select_impl(recv.device, force)
    if impl == "native":
        from vllm_helix.kernels import cpu_combine

        if cpu_combine.supports(recv, out):
            return cpu_combine.combine_packed(recv, out)
    from vllm_helix.attention.exchange import combine_received, unpack_partials

    if impl == "triton":
        partial_out, partial_lse = unpack_partials(recv, out.shape[-1])
        out.copy_(combine(partial_out, partial_lse, out.dtype, force=impl)[0])
        return None
    return combine_received(recv, out)


def combine(
    partial_out: torch.Tensor,  # (kvp, tokens, heads, dim)
    partial_lse: torch.Tensor,  # (kvp, tokens, heads) fp32
    out_dtype: torch.dtype | None = None,
    *,
    force: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Helix combine of KVP partials: (O (tokens, heads, dim), LSE (tokens, heads) fp32)."""
    if select_impl(partial_out.device, force) == "triton":  # native: no native combine op, the torch one
        from vllm_helix.kernels import triton_combine

        return triton_combine.combine(partial_out, partial_lse, out_dtype)
    from vllm_helix.attention.lse_combine import combine_partials

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
    from vllm_helix.kernels import (
        triton_mla_decode_attention,  # imports fine without triton (placeholder jit)
    )

    args = (q_nope, q_pe, kv_cache, block_table, local_seq_lens, scale)
    if select_impl(q_nope.device, force) == "triton":
        return triton_mla_decode_attention.mla_partial_decode_attention(*args, num_splits=num_splits)
    return triton_mla_decode_attention.mla_partial_decode_attention_reference(*args)
