# SPDX-License-Identifier: Apache-2.0
"""Absorbed-MLA partial decode attention (Triton, interpreter mode) against its torch reference."""

from __future__ import annotations

import pytest
import torch

from vllm_helix.attention.torch_attention import paged_partial_attention
from vllm_helix.kernels.triton_mla_decode_attention import mla_partial_decode_attention_reference


def make_latent_cache(lens, block_size, lora_rank, rope_dim, dtype):
    blocks = [-(-n // block_size) for n in lens]
    num_blocks = sum(blocks) + 2
    perm = torch.randperm(num_blocks).to(torch.int32)
    table = torch.full((len(lens), max(blocks + [0]) + 1), -1, dtype=torch.int32)  # padding: never read
    used = 0
    for seq, nb in enumerate(blocks):
        table[seq, :nb] = perm[used : used + nb]
        used += nb
    kv_cache = (0.5 * torch.randn(num_blocks, block_size, lora_rank + rope_dim)).to(dtype)  # |O| < 2
    return kv_cache, table, torch.tensor(lens, dtype=torch.int32)


def make_queries(num_seqs, heads, lora_rank, rope_dim, dtype):
    q_nope = (torch.randn(num_seqs, heads, lora_rank) * 0.5).to(dtype)
    q_pe = (torch.randn(num_seqs, heads, rope_dim) * 0.5).to(dtype)
    return q_nope, q_pe


@pytest.mark.parametrize("lora_rank,rope_dim", [(512, 64), (32, 16)])
def test_reference_is_mqa_over_the_latent(lora_rank, rope_dim):
    """The MLA reference equals the generic paged reference with K = [c | k_pe], V = c, one KV head."""
    kv, table, seq_lens = make_latent_cache([0, 9, 40], 16, lora_rank, rope_dim, torch.float32)
    table = table.clamp_min(0)  # the generic reference index_selects only needed blocks, but keep ids valid
    q_nope, q_pe = make_queries(3, 4, lora_rank, rope_dim, torch.float32)
    scale = (lora_rank + rope_dim) ** -0.5
    out, lse = mla_partial_decode_attention_reference(q_nope, q_pe, kv, table, seq_lens, scale)
    ref_out, ref_lse = paged_partial_attention(
        torch.cat([q_nope, q_pe], -1), kv[:, :, None, :], kv[:, :, None, :lora_rank], table, seq_lens,
        torch.arange(4), scale,
    )  # fmt: skip
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=0)
    # Chunked gather (tiny chunks) gives the same answer.
    out2, lse2 = mla_partial_decode_attention_reference(
        q_nope, q_pe, kv, table, seq_lens, scale, max_tokens_per_chunk=8
    )
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=0)
    torch.testing.assert_close(lse2, lse, atol=1e-6, rtol=0)


# (lora_rank, rope_dim, dtype, block_size, heads, lens, num_splits)
CASES = [
    (512, 64, torch.float32, 16, 4, [0, 9, 40], 2),
    (512, 64, torch.bfloat16, 32, 4, [33, 0, 5], 1),
    (512, 64, torch.bfloat16, 16, 2, [16, 50], 3),
    (32, 16, torch.float32, 32, 20, [7, 0, 70], 3),  # 20 heads: two head blocks, the second partly masked
    (32, 16, torch.bfloat16, 16, 3, [1, 31, 0], 2),
]


@pytest.mark.parametrize("lora_rank,rope_dim,dtype,block_size,heads,lens,num_splits", CASES)
def test_kernel_matches_reference(
    lora_rank, rope_dim, dtype, block_size, heads, lens, num_splits, assert_close
):
    pytest.importorskip("triton")
    from vllm_helix.kernels.triton_mla_decode_attention import mla_partial_decode_attention

    kv, table, seq_lens = make_latent_cache(lens, block_size, lora_rank, rope_dim, dtype)
    q_nope, q_pe = make_queries(len(lens), heads, lora_rank, rope_dim, dtype)
    scale = (lora_rank + rope_dim) ** -0.5
    out, lse = mla_partial_decode_attention(q_nope, q_pe, kv, table, seq_lens, scale, num_splits=num_splits)
    ref_out, ref_lse = mla_partial_decode_attention_reference(q_nope, q_pe, kv, table, seq_lens, scale)
    assert out.shape == (len(lens), heads, lora_rank) and out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, ref_out, dtype, "O")
    assert_close(lse, ref_lse, dtype, "LSE")
    for seq, n in enumerate(lens):
        if n == 0:
            assert torch.all(torch.isneginf(lse[seq])) and torch.all(out[seq] == 0)


def test_kernel_vllm_cache_layout_and_checks(assert_close):
    """vLLM's MLA cache layout (NB, BS, 1, C+R) is accepted; mismatched dims are rejected."""
    pytest.importorskip("triton")
    from vllm_helix.kernels.triton_mla_decode_attention import mla_partial_decode_attention

    kv, table, seq_lens = make_latent_cache([12, 3], 16, 32, 16, torch.float32)
    q_nope, q_pe = make_queries(2, 2, 32, 16, torch.float32)
    out, lse = mla_partial_decode_attention(q_nope, q_pe, kv[:, :, None, :], table, seq_lens, 0.1)
    ref_out, ref_lse = mla_partial_decode_attention_reference(q_nope, q_pe, kv, table, seq_lens, 0.1)
    assert_close(out, ref_out, torch.float32, "O")
    assert_close(lse, ref_lse, torch.float32, "LSE")
    with pytest.raises(ValueError, match="kv_lora_rank"):
        mla_partial_decode_attention(q_nope, q_pe[..., :8], kv, table, seq_lens, 0.1)
    with pytest.raises(ValueError, match="share one of"):
        mla_partial_decode_attention(q_nope, q_pe, kv.bfloat16(), table, seq_lens, 0.1)
