# SPDX-License-Identifier: Apache-2.0
"""Tiny random Hugging Face checkpoints (no hub) for end-to-end tests: MQA/GQA Llama, Qwen3; float32."""

from __future__ import annotations

import json
from pathlib import Path


def make_tiny_llama(path: Path, *, heads: int = 8, kv_heads: int = 1, head_dim: int = 32, layers: int = 2,
                    vocab: int = 512, intermediate: int = 256, seed: int = 0, arch: str = "llama") -> Path:
    """Write a random-weight checkpoint to `path` (idempotent) and return it.

    Weights use a large init range so that greedy logits have clear winners: exact-token comparisons between
    parallel layouts then test the math, not float ties.
    """
    path = Path(path)
    if (path / "config.json").exists():
        return path
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=heads * head_dim, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  head_dim=head_dim, max_position_embeddings=4096, initializer_range=0.08,
                  tie_word_embeddings=False, torch_dtype="float32")
    if arch == "qwen3":
        config = transformers.Qwen3Config(**common)
        model = transformers.Qwen3ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["torch_dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path
