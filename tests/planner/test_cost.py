# SPDX-License-Identifier: Apache-2.0
"""Invariants of the planner's latency/memory model (pure Python, no vLLM/torch)."""

import dataclasses

import pytest

from vllm_helix.planner.cost import PRECISIONS, Grid, estimate
from vllm_helix.planner.hardware import get_hardware
from vllm_helix.planner.models import BUILTIN

HW = get_hardware("gb200-nvl72")
FP4 = PRECISIONS["fp4"]
LLAMA, DSR1, SMOL = BUILTIN["llama-405b"], BUILTIN["deepseek-r1"], BUILTIN["smollm2-135m"]
S = 1 << 20


def helix(n=64, b=8, kvp=8, tpa=8, ep=1, hop_b=True):
    return Grid("helix", n, b, kvp=kvp, tpa=tpa, ep=ep, hop_b=hop_b)


@pytest.mark.parametrize(
    "model,grid",
    [
        (LLAMA, helix()),
        (LLAMA, Grid("tp", 64, 8, tpa=64)),
        (LLAMA, Grid("medha", 64, 8, kvp=8, tpa=8)),
        (DSR1, helix(kvp=64, tpa=1, ep=8)),
        (DSR1, Grid("ep", 64, 64, ep=64)),
        (DSR1, Grid("tp_pp", 64, 8, tpa=8, pp=8)),
    ],
)
def test_monotone_in_context_and_batch(model, grid):
    base = estimate(model, HW, FP4, S, grid).ttl_s
    assert estimate(model, HW, FP4, 2 * S, grid).ttl_s > base
    assert estimate(model, HW, FP4, S, dataclasses.replace(grid, batch=grid.batch * 2)).ttl_s > base
    mem = estimate(model, HW, FP4, S, grid).mem["kv"]
    assert estimate(model, HW, FP4, 2 * S, grid).mem["kv"] == pytest.approx(2 * mem, rel=1e-6)


def test_kvp_halves_kv_reads():
    # KV bytes are read in the attention core; doubling KVP at fixed TPA and batch halves them.
    one = estimate(LLAMA, HW, FP4, S, helix(n=32, b=64, kvp=4, tpa=8))
    two = estimate(LLAMA, HW, FP4, S, helix(n=64, b=64, kvp=8, tpa=8))
    assert two.parts["attention"] == pytest.approx(one.parts["attention"] / 2, rel=1e-3)
    assert two.mem["kv"] == pytest.approx(one.mem["kv"] / 2, rel=1e-3)


def test_paper_appendix_kv_formula():
    # App. A: KV read = B·2·⌈K/TPA⌉·Hsz·(S/KVP)·bytes / MemBW, per layer.
    g = helix(b=8, kvp=8, tpa=8)
    e = estimate(LLAMA, HW, FP4, S, g)
    per_layer = 8 * 2 * 1 * 128 * (S / 8) * 0.5 / (HW.mem_bw * HW.mem_eff)
    assert e.parts["attention"] == pytest.approx(LLAMA.n_layers * per_layer, rel=1e-9)


def test_tpa_above_kv_heads_rejected():
    with pytest.raises(ValueError, match="TPA <= K"):
        estimate(LLAMA, HW, FP4, S, helix(n=64, kvp=4, tpa=16))
    with pytest.raises(ValueError, match="TPA <= K"):
        estimate(DSR1, HW, FP4, S, helix(n=64, kvp=32, tpa=2))  # MLA: one latent KV head
    with pytest.raises(ValueError, match="KVP·TPA"):
        estimate(LLAMA, HW, FP4, S, helix(n=64, kvp=4, tpa=8))
    with pytest.raises(ValueError, match="query heads"):
        estimate(SMOL, get_hardware("cpu"), PRECISIONS["bf16"], 4096, helix(n=2, kvp=2, tpa=1))


def test_memory_limit_respected_by_sweep():
    from vllm_helix.planner.search import sweep

    pts = sweep(LLAMA, HW, FP4, S, ("helix", "tp"), [8, 64])
    assert pts and all(sum(e.mem.values()) <= HW.hbm_bytes for e in pts)
    # Llama-405B FP4 (~200 GB of weights) cannot fit one 186 GB GPU.
    assert not estimate(LLAMA, HW, FP4, S, Grid("tp", 1, 1, tpa=1)).feasible
    # The biggest feasible Helix batch on 64 GPUs stops where the KV cache fills HBM.
    helix64 = [e for e in pts if e.grid.strategy == "helix" and e.grid.n_gpus == 64]
    top = max(helix64, key=lambda e: e.grid.batch)
    bigger = estimate(LLAMA, HW, FP4, S, dataclasses.replace(top.grid, batch=top.grid.batch * 2))
    assert not bigger.feasible


def test_hop_b_never_slower_and_helps_when_exchange_is_large():
    for g in (helix(b=1), helix(b=64)):
        on = estimate(DSR1, HW, FP4, S, dataclasses.replace(g, kvp=64, tpa=1))
        off = estimate(DSR1, HW, FP4, S, dataclasses.replace(g, kvp=64, tpa=1, hop_b=False))
        assert on.ttl_s <= off.ttl_s
    on = estimate(DSR1, HW, FP4, S, helix(b=128, kvp=64, tpa=1))
    off = estimate(DSR1, HW, FP4, S, helix(b=128, kvp=64, tpa=1, hop_b=False))
    assert on.ttl_s < off.ttl_s


def test_tp_duplicates_kv_beyond_kv_heads():
    # TP=64 on K=8 holds one KV head per GPU (8x duplication); Helix KVP=8 x TPA=8 holds 1/8 of the sequence.
    tp = estimate(LLAMA, HW, FP4, S, Grid("tp", 64, 1, tpa=64))
    hx = estimate(LLAMA, HW, FP4, S, helix(b=1))
    assert tp.mem["kv"] == pytest.approx(8 * hx.mem["kv"], rel=1e-6)


def test_model_shapes():
    assert LLAMA.ffn == 53248
    assert 395e9 < LLAMA.total_params() < 410e9
    assert 660e9 < DSR1.total_params() < 690e9
    assert DSR1.kv_elems(1) == 576
    assert 130e6 < SMOL.total_params() < 140e6


def test_hop_b_reproduces_paper_fig3_worked_example():
    # 8 requests, attention 2 units and exchange 1.2 units each, no fixed latency: lockstep 8·2 + 8·1.2 =
    # 25.6, pipelined 2 + 1.2 + 7·2 = 17.2 (the paper's "≈ 8·2 + 1.2 ≈ 17").
    from vllm_helix.planner.cost import hop_b_time

    def a2a_of(f):
        return 8 * 1.2 * f

    assert hop_b_time(16.0, a2a_of, 8, enabled=False) == pytest.approx(25.6)
    assert hop_b_time(16.0, a2a_of, 8, enabled=False, lockstep=True) == pytest.approx(25.6)
    assert hop_b_time(16.0, a2a_of, 8, enabled=True) == pytest.approx(17.2)
    # Exchange longer than compute: the pipeline is exchange-bound, 2 + 8·3 = 26 < 8·(2 + 3) = 40.
    assert hop_b_time(16.0, lambda f: 24.0 * f, 8, enabled=True) == pytest.approx(26.0)


@pytest.mark.parametrize("lockstep", [False, True])
@pytest.mark.parametrize("name", ["llama-405b", "deepseek-r1"])
def test_hop_b_off_never_faster_on_any_grid(name, lockstep):
    from vllm_helix.planner.search import gpu_counts, sweep

    hw = dataclasses.replace(HW, a2a_lockstep=lockstep)
    pts = sweep(BUILTIN[name], hw, FP4, S, ("helix",), gpu_counts(64))
    ttl = {e.grid: e.ttl_s for e in pts}
    pairs = [(t, ttl[dataclasses.replace(g, hop_b=False)]) for g, t in ttl.items() if g.hop_b]
    assert len(pairs) > 50
    assert all(on <= off * (1 + 1e-12) for on, off in pairs)


def test_lockstep_off_pays_one_latency_per_request():
    g = helix(b=8, hop_b=False)
    batched = estimate(LLAMA, HW, FP4, S, g)
    lockstep = estimate(LLAMA, dataclasses.replace(HW, a2a_lockstep=True), FP4, S, g)
    extra = LLAMA.n_layers * (g.batch - 1) * HW.coll_latency_s
    assert lockstep.ttl_s - batched.ttl_s == pytest.approx(extra, rel=1e-9)


def test_mla_exchange_payload_and_v_up_placement():
    # Default = the runtime's exchange: the kv_lora_rank latent, W_UV (v_b_proj) after the combine at TP = N.
    vhead = dataclasses.replace(DSR1, mla_a2a_latent=False)
    assert (DSR1.a2a_elems_per_head(), vhead.a2a_elems_per_head()) == (512, 128)
    g = helix(n=64, b=64, kvp=64, tpa=1)
    lt, vh = estimate(DSR1, HW, FP4, S, g), estimate(vhead, HW, FP4, S, g)
    assert lt.parts["a2a"] > vh.parts["a2a"]
    # v_head: v_b_proj runs before the exchange on every KVP rank instead of once per head group at TP = N.
    moved = DSR1.n_layers * DSR1.v_up_params(DSR1.n_heads) * (1 - 1 / 64) * FP4.weight_bytes
    assert vh.mem["weights"] - lt.mem["weights"] == pytest.approx(moved, rel=1e-9)
    tp = Grid("tp", 8, 8, tpa=8)  # baselines are untouched by the Helix exchange choice
    assert estimate(DSR1, HW, FP4, S, tp).ttl_s == estimate(vhead, HW, FP4, S, tp).ttl_s


def test_exchange_bytes_are_what_the_runtime_packs():
    # One truth: per token and query head the planner charges what
    # vllm_helix.attention.exchange.pack_partials sends, the partial output (MLA: the kv_lora_rank latent
    # that HelixMLAImpl.forward_mqa returns) + one fp32 LSE.
    torch = pytest.importorskip("torch")
    from vllm_helix.attention.exchange import pack_partials
    from vllm_helix.planner.cost import LSE_BYTES, layer_detail

    for m, g in ((DSR1, helix(n=8, b=3, kvp=8, tpa=1)), (LLAMA, helix(n=16, b=3, kvp=2, tpa=8))):
        q_loc = m.n_heads // g.tpa
        out = torch.zeros(g.batch, q_loc, m.a2a_elems_per_head(), dtype=torch.bfloat16)  # (B, H/TPA, D)
        packed = pack_partials(out, torch.zeros(g.batch, q_loc), g.kvp)  # (KVP, B, H/N, D + e)
        runtime_bytes = packed.numel() * packed.element_size()
        assert layer_detail(g, m, HW, PRECISIONS["bf16"], S, False)["a2a_bytes"] == runtime_bytes
        assert runtime_bytes == g.batch * q_loc * (m.a2a_elems_per_head() * 2 + LSE_BYTES)


def test_layer_detail_sums_to_estimate_and_bounds_hop_b():
    from vllm_helix.planner.cost import LAYER_PARTS, layer_detail

    for m, g in ((LLAMA, helix(b=55)), (DSR1, helix(b=315, kvp=64, tpa=1))):
        e = estimate(m, HW, FP4, S, g)
        off = estimate(m, HW, FP4, S, dataclasses.replace(g, hop_b=False))
        d = layer_detail(g, m, HW, FP4, S, m.is_moe)
        if not m.is_moe:  # every layer alike: the step is L layers + the LM head
            assert m.n_layers * sum(d[k] for k in LAYER_PARTS) + e.parts["lm_head"] == pytest.approx(e.ttl_s)
        assert e.hop_b_slices == d["slices"] > 1
        wire = d["a2a_batch"] - HW.coll_latency_s
        # HOP-B hides at most the exchange's wire time (every slice pays α, the last one stays exposed).
        assert 0 < off.ttl_s - e.ttl_s <= m.n_layers * wire * (1 - 1 / d["slices"]) * (1 + 1e-9)
