# SPDX-License-Identifier: Apache-2.0
"""The attention variants the README lists, each at a TPA < K grid: greedy tokens identical to stock vLLM
TP = 1 (float32).

Tiny random checkpoints (`tests.e2e.conftest.tiny_models`), `-tp 2 -dcp 2` (KVP 2 × TPA 1), one Helix engine
per model plus its stock reference:

| model     | vLLM class         | heads / KV heads | what could break                                      |
|-----------|--------------------|------------------|-------------------------------------------------------|
| Llama MHA | LlamaForCausalLM   | 8 / 8            | K = H: the QKV re-shard keeps all 8 KV heads per rank |
| Mistral   | MistralForCausalLM | 8 / 2            | vLLM's Mistral class (sliding_window: null)           |
| Qwen2     | Qwen2ForCausalLM   | 8 / 4            | q/k/v biases (random, non-zero) re-sharded with QKV   |

Qwen2's engines are the ones of test_user_config.py's compiled test (vLLM's default compiled mode, chunked
prefill, prefix caching: one engine for those claims and this one); its checkpoint is checked here. GQA/MQA
Llama and Qwen3 run in test_helix_offline.py / test_tpa_below_kv_heads.py.
"""

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import NEW_TOKENS, PROMPT_LENGTHS, llm_args, prompt_ids
from tests.e2e.engine import run_engine

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ARCHITECTURES = {"mha": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
HEADS = {"mha": (8, 8), "mistral": (8, 2), "qwen2": (8, 4)}  # (query heads, KV heads)
TP, KVP = 2, 2


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_checkpoint_is_what_the_row_claims(tiny_models, name):
    """Architecture, head counts, full attention (Mistral's `sliding_window` written as null), and Qwen2's
    q/k/v biases present and non-zero in every layer (transformers initialises them to 0)."""
    path = Path(tiny_models[name])
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == [ARCHITECTURES[name]]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == HEADS[name]
    assert cfg.get("sliding_window") is None, cfg  # full attention (Helix refuses sliding windows)
    if name == "mistral":
        assert "sliding_window" in cfg, cfg  # written as null, not left to a default
    if name == "qwen2":
        from safetensors.torch import load_file

        biases = {
            k: t
            for k, t in load_file(str(path / "model.safetensors")).items()
            if k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))
        }
        assert len(biases) == 3 * cfg["num_hidden_layers"]
        assert all(t.abs().min() > 0 for t in biases.values())


@pytest.mark.parametrize("name", ["mha", "mistral"])
def test_architecture_at_tpa_below_kv_heads_matches_stock(tiny_models, stock_tokens, name):
    model = tiny_models[name]
    prompts = prompt_ids(50 + len(name), PROMPT_LENGTHS)
    result = run_engine(
        {
            "llm": llm_args(model, TP, KVP, helix=True),
            "prompts": prompts,
            "max_tokens": NEW_TOKENS,
            "status": True,
        }
    )
    assert result["tokens"] == stock_tokens(model, prompts)
    for st in result["status"]:  # Helix attention ran, on the grid stock vLLM refuses (TPA 1 < K)
        grid = st["grid"]
        assert (grid["attention"], grid["kvp"], grid["tpa"]) == ("helix", KVP, 1), grid
        assert grid["num_kv_heads"] == HEADS[name][1] > grid["tpa"], grid
        assert st["kv_tokens"] > 0, st
