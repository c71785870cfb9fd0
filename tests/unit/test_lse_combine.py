# SPDX-License-Identifier: Apache-2.0
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_helix.attention.exchange import pack_partials, unpack_partials
from vllm_helix.attention.lse_combine import combine_partials
from vllm_helix.attention.torch_attention import paged_partial_attention


def _attend(q, k, v, scale):  # q (T,H,D), k/v (S,H,D) → out, lse
    s = torch.einsum("thd,shd->hts", q.double(), k.double()) * scale
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("hts,shd->thd", torch.softmax(s, -1), v.double())
    return out, lse.transpose(0, 1)


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 4))
def test_combine_of_random_splits_is_exact(kvp, s, t):
    torch.manual_seed(kvp * 100 + s)
    h, d = 3, 8
    q, k, v = torch.randn(t, h, d), torch.randn(s, h, d), torch.randn(s, h, d)
    ref, ref_lse = _attend(q, k, v, 0.3)
    owner = torch.randint(0, kvp, (s,))
    outs, lses = [], []
    for i in range(kvp):
        idx = (owner == i).nonzero().flatten()
        if len(idx) == 0:
            outs.append(torch.zeros(t, h, d))
            lses.append(torch.full((t, h), -math.inf))
        else:
            o, part_lse = _attend(q, k[idx], v[idx], 0.3)
            outs.append(o.float())
            lses.append(part_lse.float())
    out, lse = combine_partials(torch.stack(outs), torch.stack(lses))
    assert (out - ref.float()).abs().max() <= 1e-5
    assert (lse - ref_lse.float()).abs().max() <= 1e-5


def test_all_empty_shards_give_zero_not_nan():
    out, lse = combine_partials(torch.zeros(3, 2, 4, 8), torch.full((3, 2, 4), -math.inf))
    assert torch.equal(out, torch.zeros(2, 4, 8)) and torch.isneginf(lse).all()


def test_empty_local_shard_gives_minus_inf_and_zero():
    q = torch.randn(2, 4, 8)
    cache = torch.randn(4, 16, 2, 8)
    out, lse = paged_partial_attention(
        q,
        cache,
        cache,
        torch.zeros(2, 4, dtype=torch.int32),
        torch.tensor([0, 0]),
        torch.tensor([0, 1, 2]),
        0.5,
    )
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


def test_causal_mask_hides_everything_for_a_shard_that_only_holds_the_future():
    # rank 1 of KVP 2 holds global block 1 (positions 16..31); a query at position 3 sees none of it
    q = torch.randn(1, 2, 8)
    cache = torch.randn(2, 16, 1, 8)
    out, lse = paged_partial_attention(
        q,
        cache,
        cache,
        torch.tensor([[0, 1]]),
        torch.tensor([16]),
        torch.tensor([0, 1]),
        0.5,
        query_positions=torch.tensor([3]),
        kvp_rank=1,
        kvp_size=2,
    )
    assert torch.isneginf(lse).all() and not out.isnan().any() and torch.equal(out, torch.zeros_like(out))


def test_pack_roundtrip_is_bit_exact_for_bf16():
    out = torch.randn(5, 6, 8).bfloat16()
    lse = torch.randn(5, 6)
    lse[0, 0] = -math.inf
    packed = pack_partials(out, lse, 3)
    assert packed.shape == (3, 5, 2, 10)
    o, unpacked_lse = unpack_partials(packed, 8)
    assert torch.equal(o.transpose(0, 1).reshape(5, 6, 8), out)
    assert torch.equal(unpacked_lse.transpose(0, 1).reshape(5, 6), lse)
