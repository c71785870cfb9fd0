# SPDX-License-Identifier: Apache-2.0
"""Native CPU paged partial decode attention with LSE (`torch.ops.helix_cpu.decode_attention`).

For query head h of sequence s (one decode token) over the n = local_seq_lens[s] keys this KVP rank holds:

    s_j = scale · q·k_j        LSE = log Σ_j exp(s_j)  (base e, fp32)        O = Σ_j exp(s_j − LSE) · v_j

n = 0 gives LSE = −inf and O = 0 (an empty shard). The kernel (kernels/csrc/decode_attention.h) reads the
Helix paged cache in place through the block table — any table: runs of blocks, a partial last block,
fragmented ids — loads each K/V row once for all query heads of its GQA/MQA group, accumulates in fp32 with an
online softmax, and runs AVX-512 (with AVX512-BF16 dot products for bf16 scores where the CPU has
them), AVX2 or portable code chosen at run time. Work is spread over the calling thread pool by
(sequence × KV head × head pass); with fewer items than threads a sequence is cut into splits merged by the
LSE rule (flash-decoding).

The torch path — the CPU fallback and the reference of the tests — is
`vllm_helix.attention.torch_attention.decode_attention_reference`.
"""

from __future__ import annotations

import torch

from vllm_helix.kernels import cpu_build

__all__ = [
    "partial_decode_attention",
    "partial_decode_attention_packed",
    "supports",
]

DTYPES = (torch.float32, torch.bfloat16)
MAX_DIM = 256


def supports(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> bool:
    """Whether the native op takes these tensors (else the caller uses the torch path)."""
    return (
        query.device.type == "cpu"
        and query.dtype in DTYPES
        and key_cache.dtype == value_cache.dtype == query.dtype
        and query.shape[-1] % 16 == 0
        and value_cache.shape[-1] % 16 == 0
        and max(query.shape[-1], value_cache.shape[-1]) <= MAX_DIM
        and query.stride(-1) == key_cache.stride(-1) == value_cache.stride(-1) == 1
    )


def partial_decode_attention(
    query: torch.Tensor,  # (num_seqs, heads, head_dim)
    key_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, head_dim)
    value_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, v_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks) int32 (int64 is converted)
    local_seq_lens: torch.Tensor,  # (num_seqs,) int32/int64
    scale: float,
    *,
    num_splits: int = 0,  # 0: one split per item unless there are fewer items than threads
    isa: str = "auto",  # "auto", "avx512bf16", "avx512", "avx2", "generic8", "generic16" (tests)
) -> tuple[torch.Tensor, torch.Tensor]:
    """→ O (num_seqs, heads, v_dim) in the query's dtype, LSE (num_seqs, heads) fp32."""
    reason = cpu_build.load()
    if reason is not None:
        raise RuntimeError(reason)
    return torch.ops.helix_cpu.decode_attention(
        query, key_cache, value_cache, block_table, local_seq_lens, float(scale), num_splits, isa
    )


def partial_decode_attention_packed(
    query: torch.Tensor,  # (num_seqs, heads, head_dim)
    key_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, head_dim)
    value_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, v_dim)
    block_table: torch.Tensor,  # (num_seqs, max_blocks) int32
    local_seq_lens: torch.Tensor,  # (num_seqs,) int32/int64
    scale: float,
    chunks: int,  # KVP: the heads are cut into `chunks` equal parts, one per KVP peer
    *,
    num_splits: int = 0,
    isa: str = "auto",
) -> torch.Tensor:
    """The same attention written straight into the exchange's send layout: → (chunks, num_seqs, heads /
    chunks, v_dim + e) in the query's dtype, rows [O | LSE as fp32 bits] — what
    `vllm_helix.attention.exchange.pack_partials` makes of (O, LSE), without the intermediate tensors."""
    reason = cpu_build.load()
    if reason is not None:
        raise RuntimeError(reason)
    return torch.ops.helix_cpu.decode_attention_packed(
        query, key_cache, value_cache, block_table, local_seq_lens, float(scale), chunks, num_splits, isa
    )
