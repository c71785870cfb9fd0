# SPDX-License-Identifier: Apache-2.0
"""Tiny random Hugging Face checkpoints (no hub) for end-to-end tests: MQA/GQA/MHA Llama, Mistral, Qwen2,
Qwen3 (GQA family) and DeepSeek-V3 (MLA + MoE); float32. Plus `hf_greedy_tokens`, transformers' own greedy
continuation of such a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path


def make_tiny_llama(
    path: Path,
    *,
    heads: int = 8,
    kv_heads: int = 1,
    head_dim: int = 32,
    layers: int = 2,
    vocab: int = 512,
    intermediate: int = 256,
    seed: int = 0,
    arch: str = "llama",
) -> Path:
    """Write a random-weight checkpoint of a Llama-family `arch` to `path` (idempotent) and return it.

    arch: "llama" (LlamaForCausalLM; kv_heads == heads is MHA), "mistral" (MistralForCausalLM with
    `sliding_window: null`, i.e. full attention), "qwen2" (Qwen2ForCausalLM: q/k/v projections carry a
    bias, set to non-zero random values — transformers initialises them to 0, which would leave the bias
    path untested — and no sliding window) or "qwen3" (Qwen3ForCausalLM: per-head q/k RMSNorm).

    Weights use a large init range so that greedy logits have clear winners: exact-token comparisons between
    parallel layouts then test the math, not float ties.
    """
    path = Path(path)
    if (path / "config.json").exists():
        return path
    import torch
    import transformers

    torch.manual_seed(seed)
    common = {
        "vocab_size": vocab,
        "hidden_size": heads * head_dim,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": 4096,
        "initializer_range": 0.08,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    if arch == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common))
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, use_sliding_window=False))
        with torch.no_grad():  # q/k/v biases: non-zero, of the same scale as the weights
            for name, param in model.named_parameters():
                if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                    param.normal_(0.0, 0.5)
    elif arch == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common, sliding_window=None))
    elif arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    model.save_pretrained(path, safe_serialization=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["torch_dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


# DeepSeek-V3's rope_scaling, scaled down (factor 40 over 4,096 positions there).
_DEEPSEEK_YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 1024,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}


def make_tiny_deepseek_v3(
    path: Path,
    *,
    heads: int = 8,
    hidden: int = 256,
    kv_lora_rank: int = 512,
    rope_dim: int = 64,
    nope_dim: int = 32,
    v_dim: int = 32,
    q_lora_rank: int | None = 64,
    layers: int = 2,
    first_dense: int = 1,
    experts: int = 8,
    experts_per_tok: int = 2,
    n_group: int = 2,
    topk_group: int = 1,
    moe_intermediate: int = 64,
    intermediate: int = 128,
    vocab: int = 512,
    seed: int = 0,
) -> Path:
    """A random-weight DeepSeek-V3-architecture checkpoint (MLA + MoE, `noaux_tc` routing with sigmoid
    scores), float32, written to `path` (idempotent). Layers < `first_dense` use a dense MLP, the rest MoE
    with one shared expert. The latent KV cache entry is kv_lora_rank + rope_dim wide (vLLM's stock CPU MLA
    kernel needs 576).

    Weights use a large init range (0.08) so greedy logits have clear winners. RoPE is DeepSeek-V3's YaRN
    (vLLM's `deepseek_yarn`, applied in torch): with plain RoPE vLLM 0.32's CPU `_C.rotary_embedding` rotates
    MLA's 3-D query (tokens, heads, rope) as if each head were a token, so stock vLLM's output depends on how
    the scheduler batched the prompts (docs/limits.md).
    """
    path = Path(path)
    if (path / "config.json").exists():
        return path
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.DeepseekV3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        moe_intermediate_size=moe_intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        n_shared_experts=1,
        n_routed_experts=experts,
        num_experts_per_tok=experts_per_tok,
        n_group=n_group,
        topk_group=topk_group,
        first_k_dense_replace=first_dense,
        routed_scaling_factor=1.0,
        norm_topk_prob=True,
        kv_lora_rank=kv_lora_rank,
        q_lora_rank=q_lora_rank,
        qk_rope_head_dim=rope_dim,
        qk_nope_head_dim=nope_dim,
        v_head_dim=v_dim,
        max_position_embeddings=4096,
        initializer_range=0.08,
        tie_word_embeddings=False,
        num_nextn_predict_layers=0,
        rope_parameters=dict(_DEEPSEEK_YARN),
    )
    model = transformers.DeepseekV3ForCausalLM(config)
    with torch.no_grad():  # small random router bias: exercises the noaux_tc bias-corrected selection
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.rand_like(buf) * 0.1)
    model.save_pretrained(path, safe_serialization=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(torch_dtype="float32", topk_method="noaux_tc", scoring_func="sigmoid")
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


def hf_greedy_tokens(path: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuations of token-id prompts by Hugging Face transformers' own implementation of the
    checkpoint (float32, one prompt at a time, its KV cache): the next token is argmax of the last
    position's logits, `max_tokens` times, never stopping at EOS (vLLM's `ignore_eos`). A reference
    independent of vLLM, for checkpoints stock vLLM cannot run on CPU."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    outputs, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on 2 shared cores (≈ 3 s per 64 tokens)
    try:
        with torch.inference_mode():
            for prompt in prompts:
                step_input, cache, tokens = torch.tensor([prompt]), None, []  # (1, prompt_len), then (1, 1)
                for _ in range(max_tokens):
                    out = model(input_ids=step_input, past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    tokens.append(int(out.logits[0, -1].argmax()))
                    step_input = torch.tensor([[tokens[-1]]])
                outputs.append(tokens)
    finally:
        torch.set_num_threads(threads)
    return outputs
