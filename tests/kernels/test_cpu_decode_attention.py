# SPDX-License-Identifier: Apache-2.0
"""The native CPU decode-attention op against an fp64 reference and against the torch path.

fp32 ≤ 1e-5 and bf16 ≤ 2e-2 max abs error (O and LSE), ragged local lengths (0, 1, partial blocks, many
blocks), head_dim 32/64/128, GQA group sizes 1–16, fragmented and descending block tables, the Helix cache
layout (K and V as views of one buffer), strided queries, 1 and 2 threads (splits merged by the LSE rule), and
each ISA build: the one this CPU runs ("auto": AVX-512 with AVX512-BF16 dot products for bf16 scores where the
CPU has them, plain AVX-512, AVX2), plain AVX-512 too where "auto" is the BF16 build, and the portable 8- and
16-lane builds — the latter is the AVX-512 lane layout, checked here on any CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from vllm_helix.attention.torch_attention import decode_attention_reference
from vllm_helix.kernels import cpu_build, cpu_decode_attention


@pytest.fixture(autouse=True)
def _native_ops():
    """The README setup builds the ops: not having them is a failure, unless switched off on purpose."""
    reason = cpu_build.load()
    if reason is not None and cpu_build.DISABLE_ENV in reason:
        pytest.skip(reason)
    assert reason is None, reason


def _explicit_isas() -> tuple[str, ...]:
    """The builds below the best one ("auto") that this CPU also runs: on AVX-512 + AVX512-BF16 the plain
    AVX-512 and the AVX2 builds, on plain AVX-512 the AVX2 build."""
    if cpu_build.load() is not None:
        return ()
    best = torch.ops.helix_cpu.resolved_isa("auto")
    return {"avx512bf16": ("avx512", "avx2"), "avx512": ("avx2",)}.get(best, ())


ISAS = ("auto", "generic8", "generic16", *_explicit_isas())
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def reference(query, key_cache, value_cache, block_table, lens, scale):
    """fp64 attention of each sequence's query over its first lens[s] local keys → O, LSE (−inf, 0 if
    empty)."""
    num_seqs, heads, _ = query.shape
    _, block_size, kv_heads, v_dim = value_cache.shape
    group = heads // kv_heads
    out = torch.zeros(num_seqs, heads, v_dim, dtype=torch.float64)
    lse = torch.full((num_seqs, heads), -math.inf, dtype=torch.float64)
    for s in range(num_seqs):
        n = int(lens[s])
        if n == 0:
            continue
        ids = block_table[s, : -(-n // block_size)].long()
        k = key_cache[ids].flatten(0, 1)[:n].double().repeat_interleave(group, dim=1)  # (n, heads, D)
        v = value_cache[ids].flatten(0, 1)[:n].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", query[s].double(), k) * scale  # (heads, n)
        lse[s] = torch.logsumexp(scores, dim=-1)
        out[s] = torch.einsum("hn,nhd->hd", torch.softmax(scores, dim=-1), v)
    return out, lse


def make_case(num_seqs, heads, kv_heads, dim, block_size, lens, dtype, seed=0, fragmented=True):
    """Caches as the Helix backend holds them (views of one (2, blocks, block_size, kv_heads, D) buffer) and a
    block table of distinct random (fragmented) or descending block ids per sequence."""
    gen = torch.Generator().manual_seed(seed)
    per_seq = max(1, max(-(-n // block_size) for n in lens))
    num_blocks = num_seqs * per_seq + 3
    kv = torch.randn(2, num_blocks, block_size, kv_heads, dim, generator=gen).to(dtype)
    ids = torch.randperm(num_blocks, generator=gen) if fragmented else torch.arange(num_blocks - 1, -1, -1)
    table = ids[: num_seqs * per_seq].view(num_seqs, per_seq).to(torch.int32)
    qkv = torch.randn(num_seqs, heads + 2 * kv_heads, dim, generator=gen).to(dtype)
    query = qkv[:, :heads]  # strided, as vLLM's split of the fused QKV output
    return query, kv[0], kv[1], table, torch.tensor(lens)


def check(out, lse, ref_out, ref_lse, dtype):
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "empty shards must give LSE = -inf"
    finite = torch.isfinite(ref_lse)
    assert (lse.double()[finite] - ref_lse[finite]).abs().max().item() <= TOL[dtype] if finite.any() else True
    assert (out.double() - ref_out).abs().max().item() <= TOL[dtype]
    assert not out.isnan().any()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "heads,kv_heads,dim",
    [
        (8, 1, 64),  # MQA, group 8 (the benchmark model)
        (4, 4, 32),  # MHA, group 1
        (6, 2, 128),  # group 3 (padded to 4)
        (9, 3, 64),  # SmolLM2 at TPA 1: group 3
        (16, 1, 64),  # group 16: two passes on 8 lanes, one on 16
        (24, 2, 32),  # group 12
        (4, 2, 128),  # group 2
    ],
)
def test_matches_fp64_reference(isa, dtype, heads, kv_heads, dim):
    lens = [0, 1, 31, 32, 33, 250, 517]
    case = make_case(len(lens), heads, kv_heads, dim, 32, lens, dtype, seed=heads * dim)
    out, lse = cpu_decode_attention.partial_decode_attention(*case, 0.11, isa=isa)
    check(out, lse, *reference(*case, 0.11), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 128])
def test_tables_and_block_sizes(dtype, block_size):
    """Descending ids (vLLM's free queue after frees), fragmented ids, partial last blocks, long sequences."""
    lens = [block_size * 9 + 5, block_size, 7, 0, block_size * 3 - 1]
    for fragmented in (True, False):
        case = make_case(len(lens), 8, 2, 64, block_size, lens, dtype, seed=block_size, fragmented=fragmented)
        out, lse = cpu_decode_attention.partial_decode_attention(*case, 0.125)
        check(out, lse, *reference(*case, 0.125), dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_splits_and_threads(threads, isa, num_threads):
    """One long request on 2 threads is cut into splits (flash-decoding); explicit splits on 1 thread; the
    merge is exact, including splits that hold no key (more splits than keys)."""
    threads(num_threads)
    for lens, splits in (([3000], 0), ([3000, 0], 0), ([3000, 17], 5), ([5], 8), ([2048] * 3, 3)):
        for dtype in (torch.float32, torch.bfloat16):
            case = make_case(len(lens), 8, 1, 64, 128, lens, dtype, seed=len(lens) + splits)
            out, lse = cpu_decode_attention.partial_decode_attention(*case, 0.125, num_splits=splits, isa=isa)
            check(out, lse, *reference(*case, 0.125), dtype)


def test_agrees_with_the_torch_path():
    lens = [400, 0, 129]
    case = make_case(len(lens), 12, 4, 64, 32, lens, torch.float32, seed=7)
    out, lse = cpu_decode_attention.partial_decode_attention(*case, 0.2)
    ref_out, ref_lse = decode_attention_reference(*case, 0.2)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=0)


def test_softmax_is_stable_for_large_scores():
    """Scores far from 0 (large q·k) must not overflow: the online max keeps every exponent ≤ 0."""
    lens = [300]
    query, key_cache, value_cache, table, n = make_case(1, 8, 1, 64, 32, lens, torch.float32, seed=3)
    query = query * 40
    out, lse = cpu_decode_attention.partial_decode_attention(query, key_cache, value_cache, table, n, 1.0)
    ref_out, ref_lse = reference(query, key_cache, value_cache, table, n, 1.0)
    assert ref_lse.abs().min() > 100  # the regime this test is about
    assert (out.double() - ref_out).abs().max().item() <= 1e-5
    assert (
        (lse.double() - ref_lse).abs() / ref_lse.abs()
    ).max().item() <= 1e-6  # fp32 spacing at |LSE| ~ 1e3


def test_refuses_what_it_cannot_run():
    query, key_cache, value_cache, table, lens = make_case(1, 4, 1, 64, 16, [20], torch.float32)
    with pytest.raises(RuntimeError, match="share a dtype"):
        cpu_decode_attention.partial_decode_attention(
            query.bfloat16(), key_cache, value_cache, table, lens, 0.1
        )
    with pytest.raises(RuntimeError, match="isa must be"):
        cpu_decode_attention.partial_decode_attention(
            query, key_cache, value_cache, table, lens, 0.1, isa="sse"
        )
    odd = torch.randn(1, 4, 24)
    assert not cpu_decode_attention.supports(odd, torch.randn(2, 16, 1, 24), torch.randn(2, 16, 1, 24))
    assert cpu_decode_attention.supports(query, key_cache, value_cache)
    assert not cpu_decode_attention.supports(query.half(), key_cache.half(), value_cache.half())


def test_status_names_the_isa():
    st = cpu_build.status()
    assert (
        st["available"] and st["isa"] in ("avx512bf16", "avx512", "avx2", "generic8") and st["reason"] is None
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_packed_output_is_the_exchange_layout(dtype, chunks):
    """The packed op writes exactly what `pack_partials` makes of the plain op's (O, LSE), including −inf
    rows."""
    from vllm_helix.attention.exchange import pack_partials

    lens = [0, 45, 300, 7]
    case = make_case(len(lens), 12, 3, 64, 32, lens, dtype, seed=chunks)
    packed = cpu_decode_attention.partial_decode_attention_packed(*case, 0.125, chunks)
    out, lse = cpu_decode_attention.partial_decode_attention(*case, 0.125)
    assert packed.shape == (chunks, len(lens), 12 // chunks, 64 + 4 // packed.element_size())
    assert torch.equal(packed, pack_partials(out, lse, chunks))
