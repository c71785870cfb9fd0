# SPDX-License-Identifier: Apache-2.0
"""Helix combine (Triton, interpreter mode) against the torch reference, KVP up to 256."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vllm_helix.attention.lse_combine import combine_partials as combine_reference  # noqa: E402
from vllm_helix.kernels.triton_combine import combine  # noqa: E402


def make_partials(kvp, tokens, heads, dim, dtype):
    """Partials with about a third of the shards empty (LSE = -inf, O = 0) and (0, 0) empty on every shard."""
    out = (0.5 * torch.randn(kvp, tokens, heads, dim)).to(dtype)
    lse = 3.0 * torch.randn(kvp, tokens, heads)
    empty = torch.rand(kvp, tokens, heads) < 0.3
    empty[:, 0, 0] = True
    lse = lse.masked_fill(empty, float("-inf"))
    out = out.masked_fill(empty[..., None], 0)
    return out, lse


@pytest.mark.parametrize("kvp", [1, 2, 5, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(kvp, dtype, assert_close):
    partial_out, partial_lse = make_partials(kvp, 2, 3, 64, dtype)
    out, lse = combine(partial_out, partial_lse)
    ref_out, ref_lse = combine_reference(partial_out, partial_lse)
    assert out.dtype == dtype and lse.dtype == torch.float32 and out.shape == (2, 3, 64)
    assert_close(out, ref_out, dtype, "O")
    assert_close(lse, ref_lse, dtype, "LSE")
    assert torch.isneginf(lse[0, 0]) and torch.all(out[0, 0] == 0)  # all shards empty


@pytest.mark.parametrize("dim", [72, 128])
def test_dims_out_dtype_and_strides(dim, assert_close):
    """Non-power-of-2 dim, fp32 output from bf16 partials, a strided (KVP-innermost) partial layout."""
    base, partial_lse = make_partials(3, 4, 2, dim, torch.bfloat16)
    partial_out = base.permute(1, 2, 0, 3).contiguous().permute(2, 0, 1, 3)  # same values, other strides
    out, lse = combine(partial_out, partial_lse, out_dtype=torch.float32)
    ref_out, ref_lse = combine_reference(base, partial_lse, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, ref_out, torch.float32, "O")
    assert_close(lse, ref_lse, torch.float32, "LSE")


def test_combine_of_splits_is_attention_over_the_union(assert_close):
    """Sharding one sequence's keys over 4 ranks and combining gives attention over all keys."""
    keys, values, q = torch.randn(40, 64), torch.randn(40, 64), torch.randn(1, 1, 64)
    shards = torch.arange(40).chunk(4)
    outs, lses = [], []
    for idx in shards:
        s = (q[0, 0] @ keys[idx].T) * 0.125
        lses.append(torch.logsumexp(s, 0).view(1, 1))
        outs.append((torch.softmax(s, 0) @ values[idx]).view(1, 1, 64))
    out, lse = combine(torch.stack(outs), torch.stack(lses))
    s = (q[0, 0] @ keys.T) * 0.125
    assert_close(out[0, 0], torch.softmax(s, 0) @ values, torch.float32, "O")
    assert_close(lse[0, 0], torch.logsumexp(s, 0), torch.float32, "LSE")


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="kvp must be"):
        combine(torch.zeros(257, 1, 1, 16), torch.zeros(257, 1, 1))
    with pytest.raises(ValueError, match="partial_lse float32"):
        combine(torch.zeros(2, 1, 1, 16), torch.zeros(2, 1, 1, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="expected partial_out"):
        combine(torch.zeros(2, 1, 1, 16), torch.zeros(2, 1, 2))
    with pytest.raises(ValueError, match="contiguous"):
        combine(torch.zeros(2, 1, 1, 32)[..., ::2], torch.zeros(2, 1, 1))
