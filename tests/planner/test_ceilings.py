# SPDX-License-Identifier: Apache-2.0
"""``vllm_helix.planner.ceilings``' pure parts: the cost of a decode attention call and its roofline bound."""

from vllm_helix.planner import ceilings

CEIL = {"fp32_fma_GFLOPs": 70.0, "bf16_GFLOPs": 180.0}


def test_compute_rate_of_a_bf16_cache_is_the_higher_rate():
    # the avx512bf16 kernel multiplies bf16 directly: at the fp32 rate it could beat its bound
    assert ceilings.attention_compute_rate(CEIL, 2) == 180e9
    assert ceilings.attention_compute_rate(CEIL, 4) == 70e9
    assert ceilings.attention_compute_rate({"fp32_fma_GFLOPs": 150.0, "bf16_GFLOPs": 90.0}, 2) == 150e9
    assert ceilings.attention_compute_rate({"fp32_fma_GFLOPs": 70.0, "bf16_GFLOPs": None}, 2) == 70e9


def test_bound_is_the_larger_of_bytes_and_flops_time():
    nbytes, flops = ceilings.decode_attention_cost(32768, 8, 1, 64, 2)  # a Helix KVP 2 rank at 64K, one layer
    assert (nbytes, flops) == (32768 * 2 * 64 * 2, 4 * 8 * 32768 * 64)
    read = 17e9
    bound = ceilings.attention_bound_s(nbytes, flops, read, ceilings.attention_compute_rate(CEIL, 2))
    assert bound == nbytes / read  # bandwidth-bound once bf16 compute counts at its own rate
    assert ceilings.attention_bound_s(nbytes, flops, read, 70e9) == flops / 70e9  # fp32 rate: compute-bound
