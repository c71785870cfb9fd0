# SPDX-License-Identifier: Apache-2.0
"""``vllm-helix plan`` / ``simulate`` front ends, HF config parsing and the Pareto PNG."""

import json
import shlex
import time

import pytest

from vllm_helix.planner.cli import parse_context, plan_main, simulate_main
from vllm_helix.planner.models import load_model

KEYS = {"max_interactivity_gain", "throughput_gain_at_equal_ttl", "hop_b_off_loss"}


def test_parse_context():
    assert parse_context("1M") == 1 << 20
    assert parse_context("128K") == 131072
    assert parse_context("128k") == 131072
    assert parse_context("4096") == 4096


def test_simulate_paper_json_fast(capsys):
    t = time.perf_counter()
    assert simulate_main(["--paper", "--json"]) == 0
    assert time.perf_counter() - t < 60
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"deepseek-r1", "llama-405b"}
    for ratios in out.values():
        assert set(ratios) == KEYS
        assert ratios["max_interactivity_gain"] > 1 and ratios["throughput_gain_at_equal_ttl"] > 1
        assert 0 <= ratios["hop_b_off_loss"] < 1


def test_simulate_switches(capsys):
    base = ["--paper", "--json"]
    assert simulate_main(base) == 0
    default = json.loads(capsys.readouterr().out)
    alt_flags = ["--hop-b-off", "lockstep", "--wire-dtype", "fp4", "--mla-a2a", "v_head"]
    assert simulate_main(base + alt_flags) == 0
    alt = json.loads(capsys.readouterr().out)
    for name in default:
        assert set(alt[name]) == KEYS
        # Only the ablation's baseline changes with --hop-b-off: per-request exchanges cost more.
        assert alt[name]["hop_b_off_loss"] > default[name]["hop_b_off_loss"]


def test_plan_smollm2_cpu_runnable(capsys):
    assert (
        plan_main(
            [
                "--model",
                "smollm2-135m",
                "--hardware",
                "cpu",
                "--context",
                "4096",
                "--ttl-ms",
                "300",
                "--gpus",
                "3",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    argv = shlex.split(out["command"])
    assert (
        argv[:3] == ["vllm", "serve", "$(vllm-helix", "demo-model", "--quiet)"][:3]
    )  # the embedded checkpoint
    assert out["command"].startswith("vllm serve $(vllm-helix demo-model --quiet) ")
    argv = ["vllm", "serve", "MODEL"] + argv[5:]
    assert argv[argv.index("--worker-cls") + 1] == "vllm_helix.Worker"
    tp, dcp = int(argv[argv.index("-tp") + 1]), int(argv[argv.index("-dcp") + 1])
    assert tp == 3 and tp % dcp == 0 and 3 % (tp // dcp) == 0  # N = KVP·TPA, TPA | K = 3
    helix_cfg = json.loads(argv[argv.index("--additional-config") + 1])["helix"]
    assert helix_cfg["hop_b"] == (out["best"]["hop_b"] and out["best"]["hop_b_slices"] > 1)
    for flag in ("--dtype", "--enforce-eager", "--host"):
        assert flag in argv
    assert out["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1|0"
    assert int(out["env"]["VLLM_CPU_KVCACHE_SPACE"]) >= 1
    assert out["best"]["ttl_ms"] <= 300


def _helix_config(out: dict) -> dict:
    argv = shlex.split(out["command"])
    return json.loads(argv[argv.index("--additional-config") + 1])["helix"]


def test_plan_passes_hop_b_slices_to_the_runtime(capsys):
    # The serve line asks the runtime for the slice count the estimate pipelined (helix.hop_b_slices).
    budget = ["--context", "1M", "--ttl-ms", "30", "--gpus", "64", "--json"]
    assert plan_main(["--model", "llama-405b", *budget]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best"]["hop_b"] and out["best"]["hop_b_slices"] > 1
    assert _helix_config(out) == {"hop_b": True, "hop_b_slices": out["best"]["hop_b_slices"]}
    # The runtime's MLA path has no HOP-B (one exchange per layer), so an MLA plan never counts on it.
    assert plan_main(["--model", "deepseek-r1", *budget]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not out["best"]["hop_b"] and _helix_config(out) == {"hop_b": False}


def test_plan_text_and_infeasible_budget(capsys):
    assert plan_main(["--model", "deepseek-r1", "--context", "1M", "--ttl-ms", "30", "--gpus", "64"]) == 0
    text = capsys.readouterr().out
    assert "vllm serve deepseek-ai/DeepSeek-R1" in text and "-tp 64" in text
    assert plan_main(["--model", "llama-405b", "--context", "1M", "--ttl-ms", "0.01", "--gpus", "64"]) == 1
    assert "fastest Helix grid" in capsys.readouterr().err


def test_hf_config_parsing(tmp_path, capsys):
    qwen = {
        "model_type": "qwen3",
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(qwen))
    m = load_model(str(tmp_path / "config.json"))
    assert (m.n_heads, m.kv_heads, m.head_dim, m.ffn, m.is_moe) == (16, 8, 128, 3072, False)
    assert load_model(str(tmp_path)) == m
    ds = {
        "model_type": "deepseek_v3",
        "hidden_size": 7168,
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "intermediate_size": 18432,
        "vocab_size": 129280,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 2048,
        "first_k_dense_replace": 3,
    }
    d = tmp_path / "ds"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(ds))
    m = load_model(str(d))
    assert m.is_mla and m.is_moe and m.kv_heads == 1 and m.kv_elems(1) == 576 and m.n_moe_layers == 58
    assert plan_main(["--model", str(d), "--context", "128K", "--gpus", "8", "--json"]) == 0
    assert shlex.split(json.loads(capsys.readouterr().out)["command"])[2] == str(d)
    with pytest.raises(ValueError, match="not supported"):
        from vllm_helix.planner.models import from_hf_config

        from_hf_config({"model_type": "gpt2"}, "x", "x")


def test_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pareto.png"
    assert simulate_main(["--paper", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "llama-405b" in capsys.readouterr().out
