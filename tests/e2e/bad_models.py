# SPDX-License-Identifier: Apache-2.0
"""Tiny random checkpoints (no hub) that Helix must refuse before spawning: an unsupported architecture
(GPT-2) and a supported one with sliding-window attention (Mistral). Idempotent; a few MB each."""

from __future__ import annotations

import json
from pathlib import Path


def _save(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["torch_dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


def make_tiny_gpt2(path: Path) -> Path:
    path = Path(path)
    if (path / "config.json").exists():
        return path
    import transformers

    config = transformers.GPT2Config(
        vocab_size=512, n_positions=1024, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return _save(transformers.GPT2LMHeadModel(config), path)


def make_tiny_mistral_sliding(path: Path, window: int = 64) -> Path:
    path = Path(path)
    if (path / "config.json").exists():
        return path
    import transformers

    config = transformers.MistralConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        sliding_window=window,
    )
    return _save(transformers.MistralForCausalLM(config), path)
