# SPDX-License-Identifier: Apache-2.0
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm_helix.sharding import local_lengths, local_lengths_tensor, local_slot, owner_rank


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
