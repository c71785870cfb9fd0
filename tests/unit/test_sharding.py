# SPDX-License-Identifier: Apache-2.0
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_helix.sharding import (
    compute_slot_mapping,
    global_position,
    local_key_positions,
    local_lengths,
    local_lengths_tensor,
    local_slot,
    owner_rank,
)


def test_docstring_example():
    assert local_lengths(18, 4, 3) == [8, 6, 4]
    assert [owner_rank(p, 4, 3) for p in range(0, 18, 4)] == [0, 1, 2, 0, 1]


@given(st.integers(0, 5000), st.sampled_from([1, 4, 16, 32]), st.integers(1, 8))
def test_counts_partition_the_sequence_and_differ_by_at_most_one_block(s, bs, kvp):
    lens = local_lengths(s, bs, kvp)
    assert sum(lens) == s
    assert max(lens) - min(lens) <= bs
    brute = [0] * kvp
    for p in range(s):
        brute[owner_rank(p, bs, kvp)] += 1
    assert brute == lens


@given(st.integers(0, 2000), st.sampled_from([2, 16]), st.integers(1, 5))
def test_local_slots_are_dense_per_rank(s, bs, kvp):
    slots = [[] for _ in range(kvp)]
    for p in range(s):
        slots[owner_rank(p, bs, kvp)].append(local_slot(p, bs, kvp))
    assert all(sl == list(range(len(sl))) for sl in slots)


def test_tensor_version_matches():
    seq = torch.arange(0, 300, 7)
    for kvp in (1, 2, 3, 4):
        for k in range(kvp):
            expect = [local_lengths(int(s), 16, kvp)[k] for s in seq]
            assert local_lengths_tensor(seq, 16, kvp, k).tolist() == expect


@given(st.integers(0, 2000), st.sampled_from([1, 2, 16]), st.integers(1, 5))
def test_global_position_inverts_local_slot(p, unit, kvp):
    assert global_position(local_slot(p, unit, kvp), unit, owner_rank(p, unit, kvp), kvp) == p


def test_local_key_positions_are_the_tensor_form():
    for kvp, k, unit in ((1, 0, 4), (3, 2, 4), (4, 1, 2)):
        expect = [global_position(i, unit, k, kvp) for i in range(37)]
        assert local_key_positions(37, unit, k, kvp).tolist() == expect


@given(
    st.lists(st.tuples(st.integers(0, 90), st.integers(1, 9)), min_size=1, max_size=4),
    st.sampled_from([(4, 4), (4, 2), (8, 1), (2, 2)]),
    st.integers(1, 4),
    st.integers(0, 10_000),
)
@settings(deadline=None, max_examples=50)  # one example is ~10 ms of torch indexing: no per-example deadline
def test_compute_slot_mapping_agrees_with_sharding(reqs, bs_unit, cp, seed):
    """vLLM's slot-mapping signature, checked token by token against owner_rank / local_slot, and against the
    virtual-block form of vLLM's Triton kernel (block_size × CP tokens per scheduler block)."""
    bs, unit = bs_unit
    gen = torch.Generator().manual_seed(seed)
    max_blocks = 100 // bs + 2
    table = torch.randperm(len(reqs) * max_blocks, generator=gen).view(len(reqs), max_blocks).to(torch.int32)
    positions, starts = [], [0]
    for first, count in reqs:
        positions += range(first, first + count)
        starts.append(starts[-1] + count)
    pos, qsl = torch.tensor(positions), torch.tensor(starts)
    for rank in range(cp):
        out = torch.zeros(len(positions) + 3, dtype=torch.int64)
        compute_slot_mapping(len(positions), len(out), qsl, pos, table, max_blocks, out, bs, cp, rank, unit)
        assert out[len(positions) :].tolist() == [-1] * 3
        for t, p in enumerate(positions):
            req = int(torch.searchsorted(qsl, t, right=True)) - 1
            local = local_slot(p, unit, cp)
            expect = int(table[req, local // bs]) * bs + local % bs if owner_rank(p, unit, cp) == rank else -1
            assert int(out[t]) == expect
            o = p % (bs * cp)  # vLLM's kernel: the offset inside the virtual block
            vllm = int(table[req, p // (bs * cp)]) * bs + (o // (unit * cp)) * unit + o % unit
            assert expect in (-1, vllm) and ((o // unit) % cp == rank) == (expect != -1)
