# SPDX-License-Identifier: Apache-2.0
"""The configuration users actually run, against stock vLLM TP = 1.

- `make serve` itself: `vllm-helix serve-demo` with no options (bf16 SmolLM2 with its heads padded to 12,
  `-tp 2 -dcp 2`, the CPU platform's block size 128), asked the README's chat question; compared with stock
  offline TP = 1 in bf16 on the original 9-head checkpoint (same chat template: the prompt token ids are
  checked equal) by vLLM's low-precision rule (`tests.e2e.logprobs_close`). A long completion prompt (> 2
  blocks of 128) puts KV on both KVP ranks.
- vLLM's default compilation (no `--enforce-eager`; on CPU vLLM 0.32 turns it into one Dynamo trace compiled
  by inductor, no CUDA graphs), with the scheduler's token budget far below the prompt lengths (chunked
  prefill, mixed prefill/decode steps) and prefix caching hit on a second pass: fp32 greedy tokens identical
  to stock TP = 1 with the same budget and prefix caching, hits checked on both sides. One Helix engine for
  the three claims — what a user gets by default, with a small budget — on the tiny Qwen2 (q/k/v biases,
  4 KV heads at TPA 1), which makes it the README's Qwen2 check too (test_architectures.py).
- The same compiled mode in bf16: logprobs-close to stock TP = 1 in bf16.

The stock references run eager: the reference is stock vLLM's output, and eager spares a compile (25–70 s
here).
"""

import pytest
import requests

from tests.e2e.conftest import BLOCK, PROMPT_LENGTHS, llm_args, prompt_ids
from tests.e2e.demo_serve import serve_demo
from tests.e2e.engine import run_engine
from tests.e2e.logprobs_close import assert_logprobs_close, openai_logprobs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

README_CHAT = [{"role": "user", "content": "What is the capital of France?"}]  # the README's curl request
README_MAX_TOKENS = 32
PLATFORM_BLOCK = 128  # vLLM 0.32's CPU default block size (platforms/cpu.py) when none is given
STORY = "Once upon a time, in a land far away, " + "there lived a dragon who loved to read books. " * 40
TOP = 5
ENGINE_STATE = "tests.e2e.engine:engine_state"
RPC_ENV = {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}  # lets collective_rpc ship engine_state to the workers


def _compile_env(tmp_path) -> dict:
    """A fresh vLLM cache for a compiled engine: it compiles in this run instead of loading an artifact that
    an earlier run (of older code) saved under ~/.cache/vllm/torch_compile_cache."""
    return {**RPC_ENV, "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")}


def _assert_compiled(states: list[dict]) -> None:
    """Every rank ran the model through vLLM's CPU compile path: one Dynamo trace, inductor, compiled."""
    for st in states:
        assert (st["mode"], st["backend"]) == ("DYNAMO_TRACE_ONCE", "inductor"), st
        assert st["enforce_eager"] is False, st
        assert st["compiled_modules"], st


def test_make_serve_bf16_logprobs_close_to_stock():
    """`make serve` as shipped (serve-demo, no options), the README's question: logprobs-close to stock."""
    from vllm_helix.demo.model import ensure_demo_model

    model = str(ensure_demo_model("bfloat16", quiet=True))
    stock_args = {
        "model": model,
        "dtype": "bfloat16",
        "enforce_eager": True,
        "max_model_len": 2048,
        "seed": 0,
    }
    stock = run_engine(
        {
            "llm": stock_args,
            "prompts": [STORY],
            "chats": [README_CHAT],
            "logprobs": TOP,
            "max_tokens": README_MAX_TOKENS,
            "ignore_eos": False,
        }
    )
    with serve_demo([]) as server:
        status = requests.get(f"{server.base}/helix/status", timeout=60).json()
        assert status.get("active"), status
        grid = status["grid"]
        assert (grid["kvp"], grid["tpa"], grid["block_size"], grid["num_heads"]) == (
            2,
            1,
            PLATFORM_BLOCK,
            12,
        ), grid
        extra = {
            "max_tokens": README_MAX_TOKENS,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": TOP,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }
        r = requests.post(
            f"{server.base}/v1/chat/completions",
            timeout=300,
            json={"model": "smollm2", "messages": README_CHAT, **extra},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["prompt_token_ids"] == stock["chat_prompt_ids"][0]  # same chat template, same prompt
        tokens, steps = openai_logprobs(body["choices"][0]["logprobs"]["content"])
        assert tokens == body["choices"][0]["token_ids"]
        assert_logprobs_close(
            tokens, steps, stock["chat_tokens"][0], stock["chat_logprobs"][0], "serve-demo", "stock TP=1"
        )
        r = requests.post(
            f"{server.base}/v1/completions",
            timeout=300,
            json={
                "model": "smollm2",
                "prompt": STORY,
                "max_tokens": README_MAX_TOKENS,
                "temperature": 0,
                "logprobs": TOP,
                "return_tokens_as_token_ids": True,
                "return_token_ids": True,
            },
        )
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert len(choice["prompt_token_ids"]) > 2 * PLATFORM_BLOCK  # KV on both KVP ranks
        tokens, steps = openai_logprobs(choice["logprobs"])
        assert_logprobs_close(
            tokens, steps, stock["tokens"][0], stock["logprobs"][0], "serve-demo", "stock TP=1"
        )
        ranks = requests.get(f"{server.base}/helix/status", timeout=60).json()["ranks"]
        assert len(ranks) == 2 and all(r["kv_tokens"] > 0 for r in ranks), ranks


# chunked prefill: a 64-token step budget; prompts of odd lengths up to several hundred tokens next to short
# ones, so long prompts are prefilled in chunks while the short ones already decode in the same steps
BUDGET = 64
MIXED_LENGTHS = [3, 17, 61, 131, 250, 389]
# prefix caching: a shared prefix of 150 tokens (4 blocks of 32 plus a part), three suffixes
PREFIX_LEN, SUFFIX_LENGTHS = 150, [9, 40, 77]
NEW = 32


def _prefix_prompts() -> list[list[int]]:
    prefix = prompt_ids(41, [PREFIX_LEN])[0]
    return [prefix + s for s in prompt_ids(42, SUFFIX_LENGTHS)]


def cached_tokens(prompt_len: int, block: int) -> int:
    """Tokens of a prompt vLLM serves from its prefix cache when the whole prompt is cached: full (scheduler)
    blocks of the first prompt_len − 1 tokens (the last token is always recomputed for its logits)."""
    return (prompt_len - 1) // block * block


def test_compiled_chunked_prefill_and_prefix_cache_fp32_match_stock(tiny_models, tmp_path):
    """Helix Qwen2 KVP 2 × TPA 1 (4 KV heads), compiled, budget 64, prefix caching: tokens equal stock's.

    Phases on one engine: the mixed-length batch; the prefix prompts; the prefix prompts again (now cached).
    vLLM's scheduler hashes and hits blocks of block · DCP tokens under DCP (`single_type_kv_cache_manager`:
    `block_size * dcp_world_size`), so Helix's hits come in 64-token units where stock's come in 32."""
    model, kvp = tiny_models["qwen2"], 2
    mixed, prefixed = prompt_ids(40, MIXED_LENGTHS), _prefix_prompts()
    phases = [{"prompts": prefixed}, {"prompts": prefixed, "rpc_after": [ENGINE_STATE]}]
    common = {"max_num_batched_tokens": BUDGET, "enable_prefix_caching": True}
    stock = run_engine(
        {"llm": llm_args(model, **common), "prompts": mixed, "max_tokens": NEW, "phases": phases},
        env_extra=RPC_ENV,
    )
    helix_args = {**llm_args(model, 2, kvp, helix=True, **common), "enforce_eager": False}
    helix = run_engine(
        {"llm": helix_args, "prompts": mixed, "max_tokens": NEW, "phases": phases},
        timeout=900,
        env_extra=_compile_env(tmp_path),
    )

    states = helix["phases"][1]["rpc"][ENGINE_STATE]
    _assert_compiled(states)
    for st in states + stock["phases"][1]["rpc"][ENGINE_STATE]:
        assert (st["max_num_batched_tokens"], st["chunked_prefill"], st["prefix_caching"]) == (
            BUDGET,
            True,
            True,
        ), st
    assert helix["tokens"] == stock["tokens"], "chunked prefill / mixed batches"
    assert helix["phases"][0]["tokens"] == stock["phases"][0]["tokens"], "prefix prompts, first pass"
    assert helix["phases"][1]["tokens"] == stock["phases"][1]["tokens"], "prefix prompts, cached pass"
    assert stock["phases"][1]["tokens"] == stock["phases"][0]["tokens"]
    lengths = [len(p) for p in prefixed]
    assert stock["phases"][1]["num_cached_tokens"] == [cached_tokens(n, BLOCK) for n in lengths]
    assert helix["phases"][1]["num_cached_tokens"] == [cached_tokens(n, BLOCK * kvp) for n in lengths]


def test_compiled_bf16_logprobs_close_to_stock(tiny_models, tmp_path):
    """Helix KVP 2 × TPA 1, compiled, bf16: every request logprobs-close to stock TP = 1 in bf16."""
    model = tiny_models["gqa2"]
    prompts = prompt_ids(43, PROMPT_LENGTHS)
    spec = {"prompts": prompts, "max_tokens": NEW, "logprobs": TOP}
    stock = run_engine({**spec, "llm": {**llm_args(model), "dtype": "bfloat16"}})
    helix_args = {**llm_args(model, 2, 2, helix=True), "dtype": "bfloat16", "enforce_eager": False}
    probe = [{"prompts": prompts[:1], "rpc_after": [ENGINE_STATE]}]
    helix = run_engine(
        {**spec, "llm": helix_args, "phases": probe}, timeout=900, env_extra=_compile_env(tmp_path)
    )
    _assert_compiled(helix["phases"][0]["rpc"][ENGINE_STATE])
    for i in range(len(prompts)):
        assert_logprobs_close(
            helix["tokens"][i],
            helix["logprobs"][i],
            stock["tokens"][i],
            stock["logprobs"][i],
            f"helix compiled, prompt {i}",
            "stock TP=1",
        )
