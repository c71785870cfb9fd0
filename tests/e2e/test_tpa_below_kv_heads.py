# SPDX-License-Identifier: Apache-2.0
"""TPA < KV heads — the grids stock vLLM refuses — with QKV computed per TPA shard (replicated over KVP
peers): greedy tokens identical to stock TP=1, per-rank KV ≈ 1/KVP of stock read from the rank's KV cache
tensors, weight memory per rank reported."""

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import BLOCK, NEW_TOKENS, PROMPT_LENGTHS, llm_args, prompt_ids
from tests.e2e.engine import run_engine
from tests.e2e.test_helix_offline import assert_kv_sharded
from vllm_helix.sharding import local_lengths

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ZERO_KV = "tests.e2e.kv_probe:zero_kv_caches"
MEASURE_KV = "tests.e2e.kv_probe:measure_kv_caches"
KV_CACHE_GIB = 1  # VLLM_CPU_KVCACHE_SPACE per rank (cpu_env's default)


def assert_kv_tensors_sharded(
    measured: list[dict], status: list[dict], model: Path, tp: int, dcp: int, total_tokens: int
) -> None:
    """Per-rank KV memory read from the KV cache tensors (`tests.e2e.kv_probe`), not from Helix's counters.

    With L layers, K KV heads of dim D, dtype of b bytes, a sequence of S tokens and TPA = N / KVP:

        stock TP = 1 holds            S · K · 2D · b · L bytes
        rank (t, k) holds        len_k · K/TPA · 2D · b · L bytes,   len_k = local_lengths(S, block, KVP)[k]
                                 ≤ (S/KVP + block) · K/TPA · 2D · b · L

    and allocates (blocks, K/TPA, block, 2D) per layer — K/TPA heads per slot, not K — within its KV
    budget."""
    cfg = json.loads((model / "config.json").read_text())
    layers, kv_heads = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    tpa = tp // dcp
    local_heads = max(1, kv_heads // tpa)
    expected = local_lengths(total_tokens, BLOCK, dcp)
    by_rank = {st["rank"]: st for st in status}
    assert sorted(m["rank"] for m in measured) == list(range(tp))
    for m in measured:
        st = by_rank[m["rank"]]
        b = m["dtype_bytes"]
        assert b == 4, m  # float32 engines
        slot_bytes = local_heads * 2 * head_dim * b * layers  # one token's K and V on this rank
        stock_bytes = total_tokens * kv_heads * 2 * head_dim * b * layers  # stock TP=1: every head and token
        # the allocation: K/TPA heads per slot, one backing buffer within VLLM_CPU_KVCACHE_SPACE
        blocks = m["kv_shape"][0]
        assert m["layers"] == layers and m["kv_shape"][1:] == [local_heads, BLOCK, 2 * head_dim], m
        assert m["allocated_bytes"] == m["layer_bytes"] == blocks * BLOCK * slot_bytes, m
        assert m["allocated_bytes"] <= KV_CACHE_GIB * 2**30, m
        # what was written: exactly the rank's round-robin share of the sequence, the same slots in every
        # layer
        assert m["same_slots_all_layers"], m
        assert m["written_slots"] == expected[st["kvp_index"]], (m, expected)
        assert m["written_slots"] <= total_tokens / dcp + BLOCK
        assert m["written_bytes"] == m["written_slots"] * slot_bytes
        assert 0.999 * m["written_bytes"] <= m["nonzero_bytes"] <= m["written_bytes"], m  # layout-free bound
        assert m["written_bytes"] <= stock_bytes / tp + BLOCK * slot_bytes, (m, stock_bytes)
        assert st["kv_bytes"] == m["written_bytes"], (st, m)  # the reported counter agrees with the tensors


@pytest.mark.parametrize(
    "model,tp,dcp,hop_b",
    [
        ("gqa2", 2, 2, False),  # 2 KV heads, KVP 2 × TPA 1
        ("gqa4", 4, 2, "auto"),  # 4 KV heads / 8 heads, KVP 2 × TPA 2
        ("qwen3", 2, 2, True),  # Qwen3 (q/k norm) with 2 KV heads, KVP 2 × TPA 1
    ],
)
def test_tiny_models_beyond_vllm_dcp_limit(tiny_models, stock_tokens, model, tp, dcp, hop_b):
    """One engine: a batch (HOP-B `hop_b`), the batch again with HOP-B flipped, then one long prompt alone on
    zeroed KV caches, after which every rank's KV cache tensors are read back
    (`assert_kv_tensors_sharded`)."""
    seed = 20 + tp
    prompts = prompt_ids(seed, PROMPT_LENGTHS)
    long_prompt = prompt_ids(seed + 1, [777])[0]
    flipped = (not hop_b) if isinstance(hop_b, bool) else False
    result = run_engine(
        {
            "llm": llm_args(
                tiny_models[model], tp, dcp, helix=True, additional_config={"helix": {"hop_b": hop_b}}
            ),
            "prompts": prompts,
            "max_tokens": NEW_TOKENS,
            "status": True,
            "phases": [
                {"configure": {"hop_b": flipped}, "prompts": prompts},
                {"rpc_before": [ZERO_KV], "prompts": [long_prompt], "rpc_after": [MEASURE_KV]},
            ],
        },
        env_extra={"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"},
    )  # lets collective_rpc ship the probe functions
    expected, expected_long = stock_tokens.groups(tiny_models[model], [prompts, [long_prompt]])
    assert result["tokens"] == expected, f"HOP-B {hop_b}"
    assert result["phases"][0]["tokens"] == expected, f"HOP-B {flipped}"
    long_phase = result["phases"][1]
    assert long_phase["tokens"] == expected_long
    total_tokens = (
        len(long_prompt) + NEW_TOKENS - 1
    )  # KV written = prompt + all generated tokens but the last
    assert_kv_sharded(long_phase["status"], total_tokens, dcp, tp // dcp)
    assert_kv_tensors_sharded(
        long_phase["rpc"][MEASURE_KV], long_phase["status"], Path(tiny_models[model]), tp, dcp, total_tokens
    )


def test_smollm2_kvp3_tpa1(stock_tokens):
    """The embedded SmolLM2-135M (9 heads, 3 KV heads) at -tp 3 -dcp 3, the README's default demo grid."""
    from vllm_helix.demo.model import ensure_demo_model

    model = str(ensure_demo_model("float32", quiet=True))
    prompts = [
        "The capital of France is",
        "Write a haiku about the sea." * 3,
        "List the numbers from one to forty: one, two," + " and so on," * 30,
    ]
    extra = {"tokenizer": model}
    result = run_engine(
        {
            "llm": llm_args(model, 3, 3, helix=True, **extra),
            "prompts": prompts,
            "max_tokens": NEW_TOKENS,
            "status": True,
        }
    )
    assert result["tokens"] == stock_tokens(model, prompts, **extra)
    status = result["status"]
    assert [st["kvp_index"] for st in status] == [0, 1, 2] and {st["tpa_index"] for st in status} == {0}
    # the replicated QKV projection is visible in the per-rank weight report: full H and K heads on every rank
    assert all(st["qkv_weight_bytes"] == status[0]["qkv_weight_bytes"] > 0 for st in status)
    assert all(st["weight_bytes"] > st["qkv_weight_bytes"] for st in status)
