# SPDX-License-Identifier: Apache-2.0
"""TPA < KV heads — the grids stock vLLM refuses — with QKV computed per TPA shard (replicated over KVP peers):
greedy tokens identical to stock TP=1, per-rank KV ≈ 1/KVP of stock, weight memory per rank reported."""

import pytest

from tests.e2e.conftest import BLOCK, NEW_TOKENS, llm_args, prompt_ids
from tests.e2e.engine import run_engine
from tests.e2e.test_helix_offline import run_helix_vs_stock

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("model,tp,dcp,hop_b", [
    ("gqa2", 2, 2, False),   # 2 KV heads, KVP 2 × TPA 1
    ("gqa4", 4, 2, "auto"),  # 4 KV heads / 8 heads, KVP 2 × TPA 2
    ("qwen3", 2, 2, True),   # Qwen3 (q/k norm) with 2 KV heads, KVP 2 × TPA 1
])
def test_tiny_models_beyond_vllm_dcp_limit(tiny_models, stock_tokens, model, tp, dcp, hop_b):
    result = run_helix_vs_stock(tiny_models[model], tp, dcp, stock_tokens, 20 + tp, hop_b)
    status = result["phases"][1]["status"]
    kv_heads = {"gqa2": 2, "gqa4": 4, "qwen3": 2}[model]
    local_heads = kv_heads // (tp // dcp)
    total_tokens = len(prompt_ids(21 + tp, [777])[0]) + NEW_TOKENS - 1
    for st in status:
        per_token_head = st["kv_bytes"] / (st["kv_tokens"] * local_heads)   # 2 · head_dim · dtype · layers
        stock_bytes = total_tokens * kv_heads * per_token_head            # stock TP=1 holds every head and token
        one_block = BLOCK * local_heads * per_token_head
        assert st["kv_bytes"] <= stock_bytes / tp + one_block, (st, stock_bytes)

def test_smollm2_kvp3_tpa1(stock_tokens):
    """The embedded SmolLM2-135M (9 heads, 3 KV heads) at -tp 3 -dcp 3, the README's default demo grid."""
    from vllm_helix.demo_model import ensure_demo_model

    model = str(ensure_demo_model("float32", quiet=True))
    prompts = ["The capital of France is", "Write a haiku about the sea." * 3,
               "List the numbers from one to forty: one, two," + " and so on," * 30]
    extra = {"tokenizer": model}
    result = run_engine({"llm": llm_args(model, 3, 3, helix=True, **extra), "prompts": prompts,
                         "max_tokens": NEW_TOKENS, "status": True})
    assert result["tokens"] == stock_tokens(model, prompts, **extra)
    status = result["status"]
    assert [st["kvp_index"] for st in status] == [0, 1, 2] and {st["tpa_index"] for st in status} == {0}
    # the replicated QKV projection is visible in the per-rank weight report: full H and K heads on every rank
    assert all(st["qkv_weight_bytes"] == status[0]["qkv_weight_bytes"] > 0 for st in status)
    assert all(st["weight_bytes"] > st["qkv_weight_bytes"] for st in status)
