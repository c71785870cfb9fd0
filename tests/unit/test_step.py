# SPDX-License-Identifier: Apache-2.0
"""Slice planning of HOP-B, and the backend's kernel selection (CUDA → Triton launchers, CPU → torch)."""

import itertools
from types import SimpleNamespace

import torch

from vllm_helix.attention.step import attend_and_exchange, plan_slices
from vllm_helix.attention.torch_attention import paged_partial_attention
from vllm_helix.config import HelixConfig
from vllm_helix.grid import HelixGrid
from vllm_helix.runtime import HelixStats


def test_plan_slices_cover_requests_in_order():
    cfg = HelixConfig()
    assert plan_slices(1, 1, 2, cfg) == [(0, 1)]
    assert plan_slices(8, 8, 1, cfg) == [(0, 8)]  # KVP 1: nothing to overlap
    assert plan_slices(8, 8, 2, HelixConfig(hop_b=False)) == [(0, 8)]
    assert plan_slices(8, 8, 2, cfg) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert plan_slices(5, 3, 2, cfg) == [(0, 1), (1, 2), (2, 3), (3, 5)]  # prefills ride as one last slice
    assert plan_slices(64, 64, 4, HelixConfig(hop_b_slices=16))[-1] == (60, 64)
    # auto on CPU waits for large decode batches; an explicit `true` always slices
    assert plan_slices(8, 8, 2, cfg, auto_min_decode_reqs=32) == [(0, 8)]
    assert len(plan_slices(8, 8, 2, HelixConfig(hop_b=True), auto_min_decode_reqs=32)) == 4
    assert len(plan_slices(40, 40, 2, cfg, auto_min_decode_reqs=32)) == 4
    for n, d in [(7, 7), (9, 4), (3, 0)]:
        s = plan_slices(n, d, 2, cfg)
        assert s[0][0] == 0 and s[-1][1] == n and all(a[1] == b[0] for a, b in itertools.pairwise(s))


def _decode_case(num_seqs=3, heads=4, kv_heads=2, dim=16, block=16):
    torch.manual_seed(0)
    cache_k = torch.randn(12, block, kv_heads, dim)
    cache_v = torch.randn(12, block, kv_heads, dim)
    lens = torch.tensor([5, 17, 40])
    md = SimpleNamespace(
        num_reqs=num_seqs,
        num_decode_reqs=num_seqs,
        query_start_loc=torch.arange(num_seqs + 1),
        block_table=torch.arange(12, dtype=torch.int32).view(3, 4),
        local_seq_lens=lens,
        query_positions=lens - 1,
    )
    rt = SimpleNamespace(
        grid=HelixGrid(1, 1, heads, kv_heads, block),
        config=HelixConfig(),
        kvp_rank=0,
        interleave=block,
        kvp_group=None,
        kvp_exchange=None,
        stats=HelixStats(),
    )
    return torch.randn(num_seqs, heads, dim), cache_k, cache_v, md, rt


def test_cpu_path_is_the_torch_reference():
    q, k, v, md, rt = _decode_case()
    out = attend_and_exchange(q, k, v, md, 0.25, rt)
    ref, _ = paged_partial_attention(q, k, v, md.block_table, md.local_seq_lens, md.query_start_loc, 0.25)
    assert torch.allclose(out, ref, atol=1e-6)


def test_cuda_path_calls_the_triton_launchers(monkeypatch):
    from vllm_helix.attention.lse_combine import combine_partials
    from vllm_helix.kernels import dispatch
    from vllm_helix.kernels import triton_combine as combine_kernel
    from vllm_helix.kernels import triton_decode_attention as attention_kernel

    calls = []

    def fake_decode(q, kc, vc, bt, lens, scale, num_splits=None):
        calls.append("partial_decode_attention")
        return paged_partial_attention(q, kc, vc, bt, lens, torch.arange(q.shape[0] + 1), scale)

    def fake_combine(o, lse, out_dtype=None):
        calls.append("combine")
        return combine_partials(o, lse, out_dtype)

    monkeypatch.setattr(dispatch, "_is_cuda", lambda device: True)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(attention_kernel, "partial_decode_attention", fake_decode)
    monkeypatch.setattr(combine_kernel, "combine", fake_combine)
    q, k, v, md, rt = _decode_case()
    out = attend_and_exchange(q, k, v, md, 0.25, rt)
    assert calls == ["partial_decode_attention", "combine"]
    ref, _ = paged_partial_attention(q, k, v, md.block_table, md.local_seq_lens, md.query_start_loc, 0.25)
    assert torch.allclose(out, ref, atol=1e-6)
