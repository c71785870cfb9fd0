# SPDX-License-Identifier: Apache-2.0
"""Paged partial decode attention (Triton, interpreter mode) against the torch reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vllm_helix.attention.torch_attention import (  # noqa: E402
    decode_attention_reference as partial_decode_attention_reference,
)
from vllm_helix.kernels.triton_decode_attention import partial_decode_attention  # noqa: E402


def make_paged_kv(lens, block_size, kv_heads, head_dim, v_dim, dtype):
    """Random paged caches with the sequences' blocks scattered; table padding points past the cache."""
    blocks = [-(-n // block_size) for n in lens]
    num_blocks = sum(blocks) + 3  # spare blocks nobody owns
    max_blocks = max(blocks + [0]) + 1  # one padding column
    perm = torch.randperm(num_blocks).to(torch.int32)
    table = torch.full((len(lens), max_blocks), num_blocks + 1000, dtype=torch.int32)  # never dereferenced
    used = 0
    for seq, nb in enumerate(blocks):
        table[seq, :nb] = perm[used : used + nb]
        used += nb
    key_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim).to(dtype)
    # |O| < 2 keeps one bf16 rounding flip of the output (kernel vs reference) at most 2^-7, below 2e-2.
    value_cache = (0.5 * torch.randn(num_blocks, block_size, kv_heads, v_dim)).to(dtype)
    return key_cache, value_cache, table, torch.tensor(lens, dtype=torch.int32)


# (dtype, head_dim, block_size, heads, kv_heads, lens, num_splits): each head dim x block size x dtype once;
# GQA, MQA and MHA; ragged lengths with 0 and shorter than one block.
CASES = [
    (torch.float32, 64, 16, 4, 2, [0, 5, 37, 70], 3),
    (torch.float32, 64, 32, 4, 1, [3, 0, 64, 45], 1),
    (torch.float32, 128, 16, 2, 2, [17, 1, 0], 2),
    (torch.float32, 128, 32, 8, 2, [40, 0, 9], 4),
    (torch.bfloat16, 64, 16, 4, 2, [0, 5, 37, 70], 2),
    (torch.bfloat16, 64, 32, 4, 1, [31, 0, 33], 3),
    (torch.bfloat16, 128, 16, 2, 2, [16, 0, 7], 1),
    (torch.bfloat16, 128, 32, 8, 2, [65, 2, 0], 2),
]


@pytest.mark.parametrize("dtype,head_dim,block_size,heads,kv_heads,lens,num_splits", CASES)
def test_matches_reference(dtype, head_dim, block_size, heads, kv_heads, lens, num_splits, assert_close):
    k, v, table, seq_lens = make_paged_kv(lens, block_size, kv_heads, head_dim, head_dim, dtype)
    q = torch.randn(len(lens), heads, head_dim).to(dtype)
    scale = head_dim**-0.5
    out, lse = partial_decode_attention(q, k, v, table, seq_lens, scale, num_splits=num_splits)
    ref_out, ref_lse = partial_decode_attention_reference(q, k, v, table, seq_lens, scale)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert out.shape == (len(lens), heads, head_dim) and lse.shape == (len(lens), heads)
    assert_close(out, ref_out, dtype, "O")
    assert_close(lse, ref_lse, dtype, "LSE")
    for seq, n in enumerate(lens):
        if n == 0:  # an empty shard: weight 0 in the combine, never NaN
            assert torch.all(torch.isneginf(lse[seq])) and torch.all(out[seq] == 0)


def test_empty_splits_and_split_invariance(assert_close):
    """More splits than keys leaves some splits empty; every split count gives the same answer."""
    k, v, table, seq_lens = make_paged_kv([50, 1, 2], 16, 1, 64, 64, torch.float32)
    q = torch.randn(3, 2, 64)
    ref_out, ref_lse = partial_decode_attention_reference(q, k, v, table, seq_lens, 0.125)
    for num_splits in (1, 7):
        out, lse = partial_decode_attention(q, k, v, table, seq_lens, 0.125, num_splits=num_splits)
        assert_close(out, ref_out, torch.float32, f"O splits={num_splits}")
        assert_close(lse, ref_lse, torch.float32, f"LSE splits={num_splits}")


def test_all_empty_shard():
    k, v, table, seq_lens = make_paged_kv([0, 0], 16, 2, 64, 64, torch.bfloat16)
    out, lse = partial_decode_attention(torch.randn(2, 4, 64).bfloat16(), k, v, table, seq_lens, 0.1)
    assert torch.all(torch.isneginf(lse)) and torch.all(out == 0)


def test_strided_query_int64_tables_and_value_dim(assert_close):
    """Query as a view of a fused buffer, int64 table/lengths, v_dim != head_dim."""
    k, v, table, seq_lens = make_paged_kv([20, 0, 33], 16, 2, 64, 32, torch.float32)
    fused = torch.randn(3, 4, 64 + 48)
    q = fused[:, :, 16:80]  # (3, 4, 64), stride(1) = 112
    table, seq_lens = table.long(), seq_lens.long()
    out, lse = partial_decode_attention(q, k, v, table, seq_lens, 0.125, num_splits=2)
    ref_out, ref_lse = partial_decode_attention_reference(q.contiguous(), k, v, table, seq_lens, 0.125)
    assert out.shape == (3, 4, 32)
    assert_close(out, ref_out, torch.float32, "O")
    assert_close(lse, ref_lse, torch.float32, "LSE")


def test_rejects_bad_inputs(monkeypatch):
    k, v, table, seq_lens = make_paged_kv([5], 16, 2, 64, 64, torch.float32)
    q = torch.randn(1, 4, 64)
    with pytest.raises(ValueError, match="share one of"):
        partial_decode_attention(q.bfloat16(), k, v, table, seq_lens, 1.0)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        partial_decode_attention(torch.randn(1, 3, 64), k, v, table, seq_lens, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        partial_decode_attention(torch.randn(1, 64, 4).transpose(1, 2), k, v, table, seq_lens, 1.0)
    with pytest.raises(ValueError, match="block_table"):
        partial_decode_attention(q, k, v, table.float(), seq_lens, 1.0)
    with pytest.raises(ValueError, match="num_splits"):
        partial_decode_attention(q, k, v, table, seq_lens, 1.0, num_splits=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):  # CPU tensors (also in compiled mode)
        partial_decode_attention(q.cpu(), k.cpu(), v.cpu(), table.cpu(), seq_lens.cpu(), 1.0)
