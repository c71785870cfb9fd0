# SPDX-License-Identifier: Apache-2.0
"""A tiny random MQA Llama with SmolLM2's tokenizer (no hub): the full text API of `vllm serve` at a fraction
of SmolLM2's cost. 8 query heads, 1 KV head (Helix `-tp 2 -dcp 2` is KVP 2 × TPA 1), 2 layers, hidden 128,
float32, 8192 positions. Its greedy output is gibberish, but deterministic: exact-equality tests compare token
ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def make_tiny_chat_llama(path: Path, seed: int = 7) -> Path:
    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import torch
    import transformers

    from vllm_helix.demo.model import ensure_demo_model

    demo = Path(ensure_demo_model("bfloat16", quiet=True))
    demo_cfg = json.loads((demo / "config.json").read_text())
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=demo_cfg["vocab_size"],
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=8192,
        initializer_range=0.08,
        tie_word_embeddings=True,
        bos_token_id=demo_cfg.get("bos_token_id"),
        eos_token_id=demo_cfg.get("eos_token_id"),
        pad_token_id=demo_cfg.get("pad_token_id"),
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["torch_dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    for name in TOKENIZER_FILES:
        if (demo / name).exists():
            shutil.copy(demo / name, path / name)
    return path
