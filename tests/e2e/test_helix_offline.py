# SPDX-License-Identifier: Apache-2.0
"""Offline `LLM(..., worker_cls="vllm_helix.Worker")`: greedy tokens identical to stock vLLM TP=1 (float32)."""

import pytest

from tests.e2e.conftest import BLOCK, NEW_TOKENS, PROMPT_LENGTHS, llm_args, prompt_ids
from tests.e2e.engine import run_engine
from vllm_helix.sharding import local_lengths

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def _assert_kv_sharded(status: list[dict], total_tokens: int, kvp: int, tpa: int) -> None:
    """Each rank's KV (read from the workers) holds exactly its round-robin share: within one block of S/KVP."""
    assert len(status) == kvp * tpa
    expected = local_lengths(total_tokens, BLOCK, kvp)
    for st in status:
        assert st["kv_tokens"] == expected[st["kvp_index"]], (st, expected)
        assert abs(st["kv_tokens"] - total_tokens / kvp) <= BLOCK
        assert st["kv_blocks"] <= -(-total_tokens // (kvp * BLOCK)) + 1


@pytest.mark.parametrize("model,tp,dcp,hop_b", [
    ("mqa", 2, 2, "auto"),     # MQA, KVP 2 × TPA 1
    ("gqa2", 4, 2, False),     # GQA 8 heads / 2 KV heads, KVP 2 × TPA 2 (TPA = K)
])
def test_greedy_tokens_match_stock(tiny_models, stock_tokens, model, tp, dcp, hop_b):
    prompts = prompt_ids(10 + tp, PROMPT_LENGTHS)
    long_prompt = prompt_ids(99, [777])[0]
    result = run_engine({"llm": llm_args(tiny_models[model], tp, dcp, helix=True,
                                         additional_config={"helix": {"hop_b": hop_b}}),
                         "prompts": prompts, "max_tokens": NEW_TOKENS, "status": True, "after": [long_prompt]})
    assert result["tokens"] == stock_tokens(tiny_models[model], prompts)
    after = result["after"][0]
    assert after["tokens"] == stock_tokens(tiny_models[model], [long_prompt])[0]
    # KV written for one long request = prompt + all generated tokens but the last
    _assert_kv_sharded(after["status"], len(long_prompt) + NEW_TOKENS - 1, dcp, tp // dcp)
