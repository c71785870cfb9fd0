# SPDX-License-Identifier: Apache-2.0
"""Offline `LLM(..., worker_cls="vllm_helix.Worker")`: greedy tokens identical to stock vLLM TP=1 (float32),
with HOP-B on and off on the same engine, and each rank's KV share read back from the workers."""

import pytest

from tests.e2e.conftest import BLOCK, NEW_TOKENS, PROMPT_LENGTHS, llm_args, prompt_ids
from tests.e2e.engine import run_engine
from vllm_helix.sharding import local_lengths

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def assert_kv_sharded(status: list[dict], total_tokens: int, kvp: int, tpa: int, block: int = BLOCK) -> None:
    """Each rank's KV holds exactly its round-robin share of the request: within one block of S/KVP."""
    assert len(status) == kvp * tpa
    expected = local_lengths(total_tokens, block, kvp)
    for st in status:
        assert st["kv_tokens"] == expected[st["kvp_index"]], (st, expected)
        assert abs(st["kv_tokens"] - total_tokens / kvp) <= block
        assert st["kv_blocks"] <= -(-total_tokens // (kvp * block)) + 1


def run_helix_vs_stock(model, tp, dcp, stock_tokens, seed, first_hop_b, exchange="auto", **extra):
    """One Helix engine: batch (HOP-B `first_hop_b`), batch again with HOP-B flipped, then one long prompt
    alone. `exchange`: the unsliced exchange's transport ("auto" = vLLM's CPU shared memory here)."""
    prompts = prompt_ids(seed, PROMPT_LENGTHS)
    long_prompt = prompt_ids(seed + 1, [777])[0]
    flipped = (not first_hop_b) if isinstance(first_hop_b, bool) else False
    result = run_engine(
        {
            "llm": llm_args(
                model,
                tp,
                dcp,
                helix=True,
                additional_config={"helix": {"hop_b": first_hop_b, "exchange": exchange}},
                **extra,
            ),
            "prompts": prompts,
            "max_tokens": NEW_TOKENS,
            "status": True,
            "phases": [{"configure": {"hop_b": flipped}, "prompts": prompts}, {"prompts": [long_prompt]}],
        }
    )
    expected, expected_long = stock_tokens.groups(model, [prompts, [long_prompt]], **extra)
    assert result["tokens"] == expected, f"HOP-B {first_hop_b}"
    assert result["phases"][0]["tokens"] == expected, f"HOP-B {flipped}"
    long_phase = result["phases"][1]
    assert long_phase["tokens"] == expected_long
    # KV written for one long request = prompt + all generated tokens but the last
    assert_kv_sharded(long_phase["status"], len(long_prompt) + NEW_TOKENS - 1, dcp, tp // dcp)
    assert {st["grid"]["exchange"] for st in long_phase["status"]} == {
        "gloo" if exchange == "gloo" else "shm"
    }
    # every step of the long prompt was answered in one executor round trip (`vllm_helix.compat.step_rpc`)
    assert all(st["steps_sampled_with_forward"] >= NEW_TOKENS for st in long_phase["status"])
    return result


@pytest.mark.parametrize(
    "model,tp,dcp,hop_b,exchange,seed",
    [
        ("mqa", 2, 2, "auto", "auto", 12),  # MQA (1 KV head), KVP 2 × TPA 1, shared-memory exchange
        # 8 heads / 2 KV heads, KVP 2 × TPA 2 (TPA = K), gloo exchange; seed 22: the prompts of the other
        # gqa2 tests (test_kvp1_leaves_attention_to_vllm, test_tpa_below_kv_heads): one stock reference
        ("gqa2", 4, 2, True, "gloo", 22),
    ],
)
def test_greedy_tokens_match_stock(tiny_models, stock_tokens, model, tp, dcp, hop_b, exchange, seed):
    run_helix_vs_stock(tiny_models[model], tp, dcp, stock_tokens, seed, hop_b, exchange)


def test_kvp1_leaves_attention_to_vllm(tiny_models, stock_tokens):
    """`-dcp 1` is plain TP = N: the Helix worker installs nothing in attention (vLLM's own backend and
    model); tokens equal stock TP = 1 (a batch, then one long prompt alone) and `helix_status` says which
    attention ran."""
    model = tiny_models["gqa2"]
    prompts = prompt_ids(22, PROMPT_LENGTHS)
    long_prompt = prompt_ids(23, [777])[0]
    result = run_engine(
        {
            "llm": llm_args(model, 2, 1, helix=True),
            "prompts": prompts,
            "max_tokens": NEW_TOKENS,
            "status": True,
            "phases": [{"prompts": [long_prompt]}],
        }
    )
    expected, expected_long = stock_tokens.groups(model, [prompts, [long_prompt]])
    assert result["tokens"] == expected
    assert result["phases"][0]["tokens"] == expected_long
    assert {(st["grid"]["attention"], st["grid"]["exchange"]) for st in result["status"]} == {
        ("vllm", "none")
    }
