# SPDX-License-Identifier: Apache-2.0
"""The CPU engine model (``vllm_helix.planner.engine_cpu``) on synthetic profiles: JSON round trip, the terms
of the formula, monotonicity in context, Helix's S/KVP keys, the choice of grid, the fit of the step overhead,
bench_decode result parsing, ``plan --hardware PROFILE.json`` and ``calibrate --profile`` (no measuring)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from tests.planner.engine_profiles import bench_result, profile
from vllm_helix.planner import cpu_profile as cp
from vllm_helix.planner import engine_cpu as ec
from vllm_helix.planner.calibration import calibrate_main
from vllm_helix.planner.cli import plan_main
from vllm_helix.planner.models import BUILTIN

MQA = BUILTIN["tiny-mqa"]
US = 1e-6


def grid(name: str) -> ec.EngineGrid:
    return ec.EngineGrid.from_name(name)


def test_profile_json_round_trip(tmp_path):
    p = profile()
    path = tmp_path / "p.json"
    p.save(path)
    q = cp.CpuProfile.load(path)
    assert q == p and q.meta == p.meta
    assert json.loads(path.read_text())["kind"] == cp.PROFILE_KIND
    for k in (1024, 5000, 131072):
        assert q.attention[0].gflops_at(k) == pytest.approx(20.0)
    bad = p.to_dict() | {"kind": "something-else"}
    with pytest.raises(ValueError, match="calibrate"):
        cp.CpuProfile.from_dict(bad)
    with pytest.raises(ValueError, match="version"):
        cp.CpuProfile.from_dict(p.to_dict() | {"version": 99})


def test_interpolation_and_lookups():
    p = profile()
    assert p.read_bandwidth(1, 1 << 10) == 40e9  # clamped below the smallest size
    assert p.read_bandwidth(1, 1 << 25) == pytest.approx(25e9)  # log-midway between 2^20 and 2^30
    assert p.read_bandwidth(4, 1 << 30) == 10e9  # nearest measured thread count
    assert p.gemv_seconds(9e6, 1, 1) == pytest.approx(5 * US + 1e-3)
    b4 = p.gemv_seconds(9e6, 1, 4)  # linear in the batch between the measured 1 and 8
    assert p.gemv_seconds(9e6, 1, 1) < b4 < p.gemv_seconds(9e6, 1, 8)
    assert p.attention_rate("helix", 8, 1, 1, 2).kernel == "helix"
    assert p.attention_rate("vllm", 4, 1, 1, 2).heads == 4
    assert p.attention_rate("vllm", 8, 1, 2, 1).threads == 2


def test_grids():
    assert [g.name for g in ec.engine_grids(MQA, 2)] == ["stock_tp1", "stock_tp2", "helix_tp2_dcp2"]
    smol = BUILTIN["smollm2-135m"]  # 9 heads / 3 KV heads: TP 3, Helix KVP 3 × TPA 1
    assert [g.name for g in ec.engine_grids(smol, 3)] == ["stock_tp1", "stock_tp3", "helix_tp3_dcp3"]
    g = grid("helix_tp2_dcp2_gloo")
    assert (g.tp, g.kvp, g.tpa, g.helix, g.exchange) == (2, 2, 1, True, "gloo")
    assert grid("stock_tp2") == ec.EngineGrid("stock_tp2", 2)
    with pytest.raises(ValueError):
        grid("tp2")


def test_terms_follow_the_formula():
    p, s, layers = profile(), 65536, MQA.n_layers
    h, f, d = MQA.hidden, MQA.ffn, MQA.head_dim
    stock1 = ec.tpot(p, MQA, grid("stock_tp1"), s)
    t = stock1.parts
    assert t["executor"] == t["all_reduce"] == t["exchange"] == t["logits_gather"] == 0  # one rank
    assert t["qkv"] == pytest.approx(layers * p.gemv_seconds(h * (8 + 2) * d * 2, 2, 1))
    assert t["ffn"] == pytest.approx(
        layers * (p.gemv_seconds(2 * h * f * 2, 2, 1) + p.gemv_seconds(h * f * 2, 2, 1))
    )
    flops = 4 * 8 * s * d
    kv = s * 1 * 2 * d * 2
    assert t["attention"] == pytest.approx(layers * max(flops / 20e9, kv / p.read_bandwidth(2, kv * layers)))
    assert stock1.tpot_s == pytest.approx(sum(t.values()))
    helix = ec.tpot(p, MQA, grid("helix_tp2_dcp2"), s).parts
    assert helix["exchange"] == pytest.approx(layers * 50 * US)
    assert helix["combine"] == pytest.approx(layers * 10 * US)
    assert helix["all_reduce"] == pytest.approx((2 * layers + 1) * 50 * US)
    assert helix["executor"] == pytest.approx(100 * US)
    assert helix["qkv"] == pytest.approx(layers * p.gemv_seconds(h * (8 + 2) * d * 2, 1, 1))  # QKV replicated
    assert helix["o_proj"] == pytest.approx(layers * p.gemv_seconds(8 * d * h / 2 * 2, 1, 1))


def test_helix_attends_half_the_keys():
    s, layers, d = 131072, MQA.n_layers, MQA.head_dim
    compute = profile(read_gbps=1e6)  # bandwidth never binds: the FLOP term
    helix = ec.tpot(compute, MQA, grid("helix_tp2_dcp2"), s).parts["attention"]
    stock2 = ec.tpot(compute, MQA, grid("stock_tp2"), s).parts["attention"]
    assert helix == pytest.approx(layers * 4 * 8 * math.ceil(s / 2) * d / 20e9)  # 8 heads over S/2 keys
    assert helix == pytest.approx(stock2)  # 4 heads over S keys: the same FLOPs per rank
    memory = profile(rate_gflops=1e6, read_gbps=1.0, cache_boost=1.0)  # bandwidth binds: the KV bytes
    helix = ec.tpot(memory, MQA, grid("helix_tp2_dcp2"), s).parts["attention"]
    stock2 = ec.tpot(memory, MQA, grid("stock_tp2"), s).parts["attention"]
    assert helix == pytest.approx(stock2 / 2)  # half the KV per rank
    assert helix == pytest.approx(layers * (s // 2) * 2 * d * 2 / 1e9)


@pytest.mark.parametrize("name", ["stock_tp1", "stock_tp2", "helix_tp2_dcp2", "helix_tp2_dcp1"])
def test_tpot_grows_with_context_and_batch(name):
    p = profile()
    prev = 0.0
    for s in (4096, 16384, 65536, 131072):
        t = ec.tpot(p, MQA, grid(name), s).tpot_s
        assert t > prev
        prev = t
    assert ec.tpot(p, MQA, grid(name), 16384, 8).tpot_s > ec.tpot(p, MQA, grid(name), 16384, 1).tpot_s


def test_choice_follows_the_costs():
    # cheap collectives, bandwidth-bound attention: Helix reads half the KV per rank and wins at long context
    rows = ec.plan(profile(rate_gflops=1e6, read_gbps=2.0, coll_us=5), MQA, [4096, 131072])
    assert rows[-1]["choice"] == "helix_tp2_dcp2"
    assert set(rows[0]["tpot_ms"]) == {"stock_tp1", "stock_tp2", "helix_tp2_dcp2"}
    # expensive collectives and executor: one rank wins everywhere
    rows = ec.plan(profile(coll_us=5000, executor_us=5000), MQA, [4096, 65536])
    assert [r["choice"] for r in rows] == ["stock_tp1", "stock_tp1"]
    preds = [ec.tpot(profile(), MQA, g, 4096) for g in ec.engine_grids(MQA, 2)]
    assert ec.choose(preds).tpot_s == min(x.tpot_s for x in preds)


def test_notes_for_missing_terms():
    p = profile(executor_us=None, step_overhead_s=None)
    p = replace(p, collectives={k: v for k, v in p.collectives.items() if k != "shm_all_to_all"})
    notes = ec.tpot(p, MQA, grid("helix_tp2_dcp2"), 4096).notes
    assert any("executor" in n for n in notes)
    assert any("step overhead" in n for n in notes)
    assert any("shm_all_to_all" in n for n in notes)
    assert not ec.tpot(profile(), MQA, grid("stock_tp1"), 4096).notes
    assert any(
        "oversubscription" in n
        for n in ec.tpot(profile(), BUILTIN["smollm2-135m"], grid("stock_tp3"), 4096).notes
    )


def test_fit_step_overhead():
    p = profile(step_overhead_s=None)
    fitted = ec.fit_step_overhead(p, MQA, 0.012, 4096, source="x.json")
    assert ec.tpot(fitted, MQA, grid("stock_tp1"), 4096).tpot_s == pytest.approx(0.012)
    assert fitted.step_overhead_source.startswith("fitted: stock_tp1 context 4096 batch 1 of x.json")
    low = ec.fit_step_overhead(p, MQA, 1e-6, 4096)
    assert low.step_overhead_s == 0 and "clamped" in low.step_overhead_source


def test_bench_parsing():
    res = bench_result()
    tp = ec.bench_tpots(res)
    assert tp[("stock_tp1", 4096, 1)] == 11.0  # median of the repetitions
    assert tp[("helix_tp2_dcp2", 131072, 1)] == 30.0
    table = {
        "summary": {
            "table": [{"context": 4096, "batch": 1, "stock_tp2_tpot_ms": 5.0, "helix_kvp2_speedup": 1}]
        }
    }
    assert ec.bench_tpots(table) == {("stock_tp2", 4096, 1): 5.0}
    m = ec.bench_model(res["model"])
    assert (m.n_layers, m.hidden, m.n_heads, m.n_kv_heads, m.ffn, m.vocab) == (4, 512, 8, 1, 1024, 1024)
    assert ec.bench_model({}) == MQA


def test_plan_cli_with_a_profile(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    profile().save(path)
    argv = ["--model", "tiny-mqa", "--hardware", str(path), "--contexts", "4K,128K"]
    assert plan_main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["context"] for r in out["rows"]] == [4096, 131072]
    for r in out["rows"]:
        assert set(r["tpot_ms"]) == {"stock_tp1", "stock_tp2", "helix_tp2_dcp2"}
        assert r["choice"] == min(r["tpot_ms"], key=r["tpot_ms"].get)
    assert plan_main(argv) == 0
    text = capsys.readouterr().out
    assert "helix_tp2_dcp2" in text and "131,072" in text
    assert plan_main(["--model", "tiny-mqa", "--hardware", str(tmp_path / "missing.json")]) == 2
    assert plan_main(["--model", "tiny-mqa", "--hardware", "no-such-gpu"]) == 2


def test_calibrate_sets_or_fits_the_overhead_without_measuring(tmp_path, capsys):
    path, bench = tmp_path / "cpu.json", tmp_path / "decode.json"
    profile(step_overhead_s=None).save(path)
    bench.write_text(json.dumps(bench_result()))
    assert calibrate_main(["--profile", str(path), "--step-overhead-ms", "7.5"]) == 0
    assert json.loads(capsys.readouterr().out)["step_overhead_ms"] == 7.5
    assert cp.CpuProfile.load(path).step_overhead_s == pytest.approx(7.5e-3)
    out = tmp_path / "fitted.json"
    assert calibrate_main(["--profile", str(path), "--from-bench", str(bench), "--out", str(out)]) == 0
    fitted = cp.CpuProfile.load(out)
    assert "fitted: stock_tp1 context 4096" in fitted.step_overhead_source
    assert ec.tpot(fitted, MQA, grid("stock_tp1"), 4096).tpot_s == pytest.approx(0.011)
    bench.write_text(json.dumps({"results": {}}))
    assert calibrate_main(["--profile", str(path), "--from-bench", str(bench)]) == 1
