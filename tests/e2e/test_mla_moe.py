# SPDX-License-Identifier: Apache-2.0
"""Helix on a tiny DeepSeek-V3 (MLA + MoE, `noaux_tc` / sigmoid routing), float32, against exact references.

One Helix engine per case plus the stock reference, each shared by its assertions:

- 576 case (kv_lora_rank 512 + rope 64, the only width vLLM's stock CPU_MLA kernel runs): greedy tokens of
  Helix `-tp 2 -dcp 2 --enable-expert-parallel` (latent KV sharded over 2 KVP ranks, MoE as EP = 2) are
  identical to stock vLLM TP = 1 (CPU_MLA), and each rank's latent KV for one long request is within one
  block of S / KVP.
- other dims (kv_lora_rank 96 + rope 32, v_head_dim 24): stock vLLM cannot generate with them on CPU
  (CPU_MLA's decode kernel, csrc/cpu/mla_decode.cpp, exists for C + R = 576 only), so the reference is
  Hugging Face transformers' own DeepseekV3 implementation of the same checkpoint (greedy, fp32;
  `hf_greedy_tokens`), which shares no code with vLLM or Helix. It is checked where stock can run: on the 576
  checkpoint its tokens equal stock vLLM TP = 1's. Helix `-tp 2 -dcp 2` (TP-sharded MoE, TPF = 2) must match
  it token for token. (A Helix-at-`-dcp 1` reference, used before, compared Helix with itself.)

- `-tp 4 -dcp 4 --enable-expert-parallel` (KVP = 4, EP = 4: two experts per rank) on the 576 model: identical
  to the same stock reference (≈ 60 s: four ranks on two cores).

The tiny models use DeepSeek-V3's YaRN RoPE. With plain RoPE, vLLM 0.32's CPU `_C.rotary_embedding`
mis-rotates MLA's 3-D query, so stock vLLM's tokens depended on how the scheduler batched the prompts (one
445-token prefill or 5 + 440) — that, not Helix, made these tests intermittent in session 1 (docs/limits.md).
"""

import pytest

from tests.e2e.conftest import NEW_TOKENS, llm_args, prompt_ids
from tests.e2e.engine import run_engine
from tests.e2e.tiny_models import hf_greedy_tokens, make_tiny_deepseek_v3
from vllm_helix.sharding import local_lengths

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

MLA_BLOCK = 16  # vLLM's CPU platform forces block_size 16 for MLA models (CPU_MLA)
# Stock vLLM 0.32 picks AMX_MLA (bf16 only: fails at worker start on these fp32 models) on CPUs with AMX
# tiles unless CPU_MLA is named; Helix names CPU_MLA itself (compat.config_checks.select_cpu_mla_backend).
STOCK_MLA = {"block_size": MLA_BLOCK, "attention_backend": "CPU_MLA"}
LENGTHS = [5, 40, 100]  # shorter than, around and several times the block


@pytest.fixture(scope="module")
def deepseek_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_deepseek")
    return {
        "ds576": make_tiny_deepseek_v3(root / "ds576", seed=0),
        "ds128": make_tiny_deepseek_v3(
            root / "ds128", kv_lora_rank=96, rope_dim=32, nope_dim=16, v_dim=24, seed=5
        ),
    }


def _mla_args(model, tp, dcp, **extra) -> dict:
    args = llm_args(model, tp, dcp, helix=True, **extra)
    args.pop("block_size")  # the platform picks 16 for MLA
    return args


def _assert_latent_kv_sharded(
    status: list[dict], seq_lens: list[int], kvp: int, latent: int, layers: int
) -> None:
    """Each KVP rank holds exactly its round-robin-by-block share of every request's latent KV: the sum over
    requests of `local_lengths`, each share within one block of S_i / KVP; one latent "head" of `latent`
    (C + R) float32 elements per token and MLA layer."""
    assert len(status) == kvp
    shares = [local_lengths(n, MLA_BLOCK, kvp) for n in seq_lens]
    for share, n in zip(shares, seq_lens, strict=True):
        assert all(abs(x - n / kvp) <= MLA_BLOCK for x in share)
    for st in status:
        assert st["block_size"] == MLA_BLOCK and st["grid"]["interleave"] == MLA_BLOCK
        assert st["kv_tokens"] == sum(share[st["kvp_index"]] for share in shares), (st, shares)
        assert st["exchanges"] > 0
        assert st["grid"]["num_kv_heads"] == 1 and st["grid"]["tpa"] == 1
        assert st["kv_bytes"] == st["kv_tokens"] * latent * 4 * layers


@pytest.mark.parametrize("kvp", [2, 4])  # EP = 2 (four experts per rank), EP = 4 (two)
def test_deepseek_v3_mla_moe_ep_matches_stock(deepseek_models, stock_tokens, kvp):
    model = deepseek_models["ds576"]
    prompts = prompt_ids(7, LENGTHS + [300])
    result = run_engine(
        {
            "llm": _mla_args(model, kvp, kvp, enable_expert_parallel=True),
            "prompts": prompts,
            "max_tokens": NEW_TOKENS,
            "status": True,
        }
    )
    assert result["tokens"] == stock_tokens(model, prompts, **STOCK_MLA)
    # KV written per request = prompt + all generated tokens but the last
    _assert_latent_kv_sharded(result["status"], [len(p) + NEW_TOKENS - 1 for p in prompts], kvp, 512 + 64, 2)


def test_deepseek_v3_other_mla_dims(deepseek_models, stock_tokens):
    # the reference agrees with stock vLLM where stock runs: the 576 test's stock tokens (cached)
    prompts_576 = prompt_ids(7, LENGTHS + [300])
    assert hf_greedy_tokens(deepseek_models["ds576"], prompts_576, NEW_TOKENS) == stock_tokens(
        deepseek_models["ds576"], prompts_576, **STOCK_MLA
    )
    model = deepseek_models["ds128"]
    prompts = prompt_ids(8, LENGTHS + [300])
    result = run_engine(
        {"llm": _mla_args(model, 2, 2), "prompts": prompts, "max_tokens": NEW_TOKENS, "status": True}
    )
    assert result["tokens"] == hf_greedy_tokens(model, prompts, NEW_TOKENS)
    assert all(len(t) == NEW_TOKENS for t in result["tokens"])
    _assert_latent_kv_sharded(result["status"], [len(p) + NEW_TOKENS - 1 for p in prompts], 2, 96 + 32, 2)
