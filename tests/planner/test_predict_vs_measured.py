# SPDX-License-Identifier: Apache-2.0
"""``benchmarks/predict_vs_measured.py`` on a synthetic profile and bench_decode result: the JSON line, the
Markdown table, the choice / gap logic, ``--fit-overhead``."""

from __future__ import annotations

import json

import pytest

from benchmarks import predict_vs_measured as pvm
from tests.planner.engine_profiles import bench_result, profile
from vllm_helix.planner import engine_cpu as ec


@pytest.fixture
def files(tmp_path):
    prof, res = tmp_path / "cpu.json", tmp_path / "decode.json"
    profile(step_overhead_s=None).save(prof)
    res.write_text(json.dumps(bench_result()))
    return str(prof), str(res)


def test_json_line_and_table(files, capsys):
    assert pvm.main([*files, "--fit-overhead"]) == 0
    first, *table = capsys.readouterr().out.splitlines()
    out = json.loads(first)
    assert out["step_overhead_source"].startswith("fitted: stock_tp1 context 4096 batch 1")
    assert {(r["config"], r["context"]) for r in out["rows"]} == {
        (c, s) for c in ("stock_tp1", "stock_tp2", "helix_tp2_dcp2") for s in (4096, 131072)
    }
    for r in out["rows"]:
        assert r["error_pct"] == pytest.approx((r["predicted_ms"] / r["measured_ms"] - 1) * 100, abs=0.06)
    base = next(r for r in out["rows"] if r["config"] == "stock_tp1" and r["context"] == 4096)
    assert base["error_pct"] == 0.0  # F is fitted to this row
    assert any("stock_tp7_weird" in n for n in out["notes"])
    long = next(c for c in out["choices"] if c["context"] == 131072)
    assert long["measured"] == "helix_tp2_dcp2" and long["gap_pct"] == pytest.approx(33.3)
    assert long["ok"] == (long["predicted"] == "helix_tp2_dcp2")
    short = next(c for c in out["choices"] if c["context"] == 4096)
    assert short["measured"] == "stock_tp1" and short["gap_pct"] == 0.0 and short["ok"]  # 11 vs 11: a tie
    assert out["all_within_20pct"] == (out["max_abs_error_pct"] <= 20)
    counters = out["helix_counters"]
    assert [c["context"] for c in counters] == [4096, 131072]
    assert counters[0]["attention_ms"][1] == 1.5  # slowest rank
    text = "\n".join(table)
    assert "| context | batch | config | predicted ms | measured ms | error % |" in text
    assert "| 128K | 1 | helix_tp2_dcp2 |" in text and "Step overhead F" in text


def test_without_fit_f_counts_zero(files, capsys):
    assert pvm.main([*files, "--markdown-only"]) == 0
    text = capsys.readouterr().out
    assert not text.startswith("{") and "unset (0)" in text


def test_compare_keeps_a_given_overhead():
    p = profile(step_overhead_s=0.003)
    out = pvm.compare(p, bench_result(), fit_overhead=True)
    assert out["step_overhead_ms"] == 3.0 and out["step_overhead_source"] == "test"
    r = next(r for r in out["rows"] if r["config"] == "stock_tp2" and r["context"] == 4096)
    assert r["predicted_ms"] == pytest.approx(
        ec.tpot(p, ec.bench_model(bench_result()["model"]), ec.EngineGrid.from_name("stock_tp2"), 4096).tpot_s
        * 1e3,
        abs=1e-3,
    )


def test_errors(tmp_path, files, capsys):
    prof, _ = files
    (tmp_path / "empty.json").write_text(json.dumps({"results": {"stock_tp2": {"rows": []}}}))
    assert pvm.main([prof, str(tmp_path / "empty.json"), "--fit-overhead"]) == 2
    assert pvm.main([prof, str(tmp_path / "missing.json")]) == 2
    assert "error:" in capsys.readouterr().err
