# SPDX-License-Identifier: Apache-2.0
"""Model shapes for the planner: built-in presets and a parser for Hugging Face ``config.json``.

Symbols (as in the Helix paper): H hidden, Q query heads, K KV heads, Hsz head size, F FFN size, L layers.
For MLA (DeepSeek-V2/V3/R1) the KV cache is one latent "head" of ``kv_lora_rank + qk_rope_head_dim`` elements
per token per layer (K = 1 for sharding purposes), and the attention is the weight-absorbed decode form.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of a decoder-only transformer, enough to cost one decode step.

    Attributes:
        name: short name; ``hf_id`` is what ``vllm serve`` gets.
        n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab: the usual shapes (``ffn`` is the dense
            SwiGLU intermediate size; for MoE models, that of the first ``first_k_dense`` layers).
        tied_embeddings: input embedding and LM head share one matrix.
        q_lora_rank, kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim: MLA shapes (``kv_lora_rank == 0``
            means GQA/MHA). ``q_lora_rank == 0`` means a plain Q projection.
        n_experts, n_shared_experts, top_k, moe_ffn, first_k_dense: MoE shapes (``n_experts == 0``: dense).
        mla_a2a_latent: MLA all-to-all carries the ``kv_lora_rank`` latent output per head and ``v_b_proj``
            (W_UV) runs after the combine at TP = N. Default True: what this runtime does
            (``vllm_helix/attention/mla.py``: ``forward_mqa`` returns O (B, H_g, kv_lora_rank),
            ``_helix_combine`` exchanges it, vLLM's ``MLAAttention`` applies ``_v_up_proj`` to the H/N
            combined heads) and what TensorRT-LLM does. False: the ``v_head_dim`` output per head,
            ``v_b_proj`` applied on every KVP rank before the exchange (4x less volume, W_UV replicated over
            KVP; ``simulate --mla-a2a v_head``).
    """

    name: str
    hf_id: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied_embeddings: bool = False
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    n_experts: int = 0
    n_shared_experts: int = 0
    top_k: int = 0
    moe_ffn: int = 0
    first_k_dense: int = 0
    mla_a2a_latent: bool = True

    def __post_init__(self) -> None:
        if self.n_heads % max(self.n_kv_heads, 1):
            raise ValueError(
                f"{self.name}: n_heads {self.n_heads} not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        if self.n_experts and not (0 < self.top_k <= self.n_experts and self.moe_ffn > 0):
            raise ValueError(f"{self.name}: bad MoE shape experts={self.n_experts} top_k={self.top_k}")

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def kv_heads(self) -> int:
        """KV heads for sharding: K for GQA, 1 for MLA (one shared latent)."""
        return 1 if self.is_mla else self.n_kv_heads

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.first_k_dense if self.is_moe else 0

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers - self.n_moe_layers

    def kv_elems(self, kv_heads_local: int) -> int:
        """KV-cache elements per token per layer on a device holding ``kv_heads_local`` KV heads.

        GQA: ``2·k·Hsz`` (K and V). MLA: ``kv_lora_rank + qk_rope_dim`` (the latent is never split by heads).
        """
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_dim
        return 2 * kv_heads_local * self.head_dim

    def qkv_params(self, q_local: int, kv_local: int) -> int:
        """QKV-projection parameters on a device computing ``q_local`` query heads and ``kv_local`` KV heads.

        GQA: ``H·q·Hsz + 2·H·k·Hsz``. MLA: ``H·q_lora + q_lora·q·(nope+rope) + H·(kv_lora+rope)
        + kv_lora·q·(nope+v)`` (the down-projections are replicated, the up-projections split by head; kv_b is
        absorbed into the query and output sides in decode, so it is read either way).
        """
        h = self.hidden
        if not self.is_mla:
            return h * q_local * self.head_dim + 2 * h * kv_local * self.head_dim
        qk = self.qk_nope_dim + self.qk_rope_dim
        q = (h * self.q_lora_rank + self.q_lora_rank * q_local * qk) if self.q_lora_rank else h * q_local * qk
        return (
            q
            + h * (self.kv_lora_rank + self.qk_rope_dim)
            + self.kv_lora_rank * q_local * (self.qk_nope_dim + self.v_head_dim)
        )

    @property
    def o_params(self) -> int:
        """Output projection ``Q·Hv·H``."""
        return self.n_heads * (self.v_head_dim if self.is_mla else self.head_dim) * self.hidden

    def v_up_params(self, q_local: int) -> int:
        """MLA ``v_b_proj`` (the V half of ``kv_b``) for ``q_local`` heads, ``kv_lora·q·v``; 0 for GQA. Part
        of ``qkv_params``; with a latent exchange it moves behind the all-to-all (``cost._attn_params``)."""
        return self.kv_lora_rank * q_local * self.v_head_dim if self.is_mla else 0

    def attn_flops_per_pos(self) -> int:
        """FLOPs per query head per cached position: ``4·Hsz`` (QKᵀ + PV); MLA absorbed: ``2·(kv_lora+rope) +
        2·kv_lora``."""
        if self.is_mla:
            return 2 * (self.kv_lora_rank + self.qk_rope_dim) + 2 * self.kv_lora_rank
        return 4 * self.head_dim

    def a2a_elems_per_head(self) -> int:
        """Helix all-to-all payload per token per query head: Hsz for GQA (Q·Hsz = H per token); for MLA
        ``kv_lora_rank`` with ``mla_a2a_latent`` (the default, as this runtime and TensorRT-LLM exchange the
        latent before ``v_b_proj``: 65,536 per token for DeepSeek, 9.1x H), else ``v_head_dim`` (Q·Hv,
        16,384 per token, 2.3x H). Either way an exact MLA exchange moves more than the paper's "B·H": the
        combine weights are per head, so no exchange after ``o_proj`` (H per token) can be exact."""
        if not self.is_mla:
            return self.head_dim
        return self.kv_lora_rank if self.mla_a2a_latent else self.v_head_dim

    @property
    def dense_ffn_params(self) -> int:
        """SwiGLU ``3·H·F``."""
        return 3 * self.hidden * self.ffn

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden * self.moe_ffn

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def total_params(self) -> int:
        layer_attn = self.qkv_params(self.n_heads, self.kv_heads) + self.o_params
        moe = (self.n_experts + self.n_shared_experts) * self.expert_params + self.hidden * self.n_experts
        return (
            self.n_layers * layer_attn
            + self.n_dense_layers * self.dense_ffn_params
            + self.n_moe_layers * moe
            + self.embed_params
        )


def _llama_ffn(dim: int, multiplier: float, multiple_of: int) -> int:
    """Llama-3 FFN size: ``multiple_of · ceil(int(multiplier · int(8·dim/3)) / multiple_of)``."""
    hidden = int(multiplier * int(2 * 4 * dim / 3))
    return multiple_of * math.ceil(hidden / multiple_of)


BUILTIN: dict[str, ModelSpec] = {
    # meta-llama/llama-models sku_list.py, Llama-3.1-405B (bf16-mp8): dim 16384, 126 layers, 128/8 heads,
    # ffn_dim_multiplier 1.2, multiple_of 4096 -> F = 53,248; vocab 128,256.
    "llama-405b": ModelSpec(
        "llama-405b",
        "meta-llama/Llama-3.1-405B-Instruct",
        126,
        16384,
        128,
        8,
        128,
        _llama_ffn(16384, 1.2, 4096),
        128256,
    ),
    # deepseek-ai/DeepSeek-V3 inference/configs/config_671B.json (R1 shares it): dim 7168, 61 layers (3 dense,
    # inter 18,432), 128 heads, q_lora 1536, kv_lora 512, nope 128, rope 64, v 128, 256 routed + 1 shared
    # experts, 8 active, moe_inter 2048, vocab 129,280. The MTP layer is not used for plain decode.
    "deepseek-r1": ModelSpec(
        "deepseek-r1",
        "deepseek-ai/DeepSeek-R1",
        61,
        7168,
        128,
        128,
        192,
        18432,
        129280,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_dim=128,
        qk_rope_dim=64,
        v_head_dim=128,
        n_experts=256,
        n_shared_experts=1,
        top_k=8,
        moe_ffn=2048,
        first_k_dense=3,
    ),
    # HuggingFaceTB/SmolLM2-135M-Instruct config.json: LlamaForCausalLM, hidden 576, 30 layers, 9/3 heads,
    # head_dim 64, intermediate 1536, vocab 49,152, tied embeddings.
    "smollm2-135m": ModelSpec(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        30,
        576,
        9,
        3,
        64,
        1536,
        49152,
        tied_embeddings=True,
    ),
    # The random tiny MQA Llama of benchmarks/bench_decode.py (MODEL there; tests/e2e/tiny_models.py writes it
    # to --model-dir, default /tmp/vllm_helix_bench/mqa512): hidden 512 = 8 heads x 64, 1 KV head, 4 layers,
    # intermediate 1024, vocab 1024, untied embeddings. The CPU engine model's calibration target.
    "tiny-mqa": ModelSpec(
        "tiny-mqa",
        "/tmp/vllm_helix_bench/mqa512",
        4,
        512,
        8,
        1,
        64,
        1024,
        1024,
    ),
}

ALIASES = {
    "llama-3.1-405b": "llama-405b",
    "meta-llama/llama-3.1-405b": "llama-405b",
    "meta-llama/llama-3.1-405b-instruct": "llama-405b",
    "deepseek-v3": "deepseek-r1",
    "deepseek-ai/deepseek-r1": "deepseek-r1",
    "deepseek-ai/deepseek-v3": "deepseek-r1",
    "smollm2": "smollm2-135m",
    "huggingfacetb/smollm2-135m": "smollm2-135m",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
    "mqa": "tiny-mqa",
}

SUPPORTED_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen2_moe",
    "qwen3_moe",
    "mixtral",
    "deepseek_v2",
    "deepseek_v3",
)


def from_hf_config(cfg: dict, name: str, hf_id: str) -> ModelSpec:
    """Build a ``ModelSpec`` from a parsed HF ``config.json`` (Llama/Mistral/Qwen2/3/DeepSeek-V2/V3)."""
    mtype = cfg.get("model_type", "")
    if mtype not in SUPPORTED_TYPES:
        raise ValueError(f"model_type {mtype!r} not supported by the planner; supported: {SUPPORTED_TYPES}")
    h, q = cfg["hidden_size"], cfg["num_attention_heads"]
    common = dict(
        name=name,
        hf_id=hf_id,
        n_layers=cfg["num_hidden_layers"],
        hidden=h,
        n_heads=q,
        n_kv_heads=cfg.get("num_key_value_heads") or q,
        head_dim=cfg.get("head_dim") or h // q,
        ffn=cfg["intermediate_size"],
        vocab=cfg["vocab_size"],
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    if mtype.startswith("deepseek"):
        n_exp = cfg.get("n_routed_experts") or 0
        common.update(
            n_kv_heads=q,
            q_lora_rank=cfg.get("q_lora_rank") or 0,
            kv_lora_rank=cfg["kv_lora_rank"],
            qk_nope_dim=cfg["qk_nope_head_dim"],
            qk_rope_dim=cfg["qk_rope_head_dim"],
            v_head_dim=cfg["v_head_dim"],
            head_dim=cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
        )
        if n_exp:
            common.update(
                n_experts=n_exp,
                n_shared_experts=cfg.get("n_shared_experts") or 0,
                top_k=cfg["num_experts_per_tok"],
                moe_ffn=cfg["moe_intermediate_size"],
                first_k_dense=cfg.get("first_k_dense_replace", 0),
            )
    elif mtype in ("qwen2_moe", "qwen3_moe", "mixtral"):
        n_exp = cfg.get("num_experts") or cfg.get("num_local_experts")
        shared = 1 if cfg.get("shared_expert_intermediate_size") else 0
        common.update(
            n_experts=n_exp,
            n_shared_experts=shared,
            top_k=cfg["num_experts_per_tok"],
            moe_ffn=cfg.get("moe_intermediate_size") or cfg["intermediate_size"],
            first_k_dense=0,
        )
    return ModelSpec(**common)


def load_model(spec: str) -> ModelSpec:
    """Resolve ``spec``: a built-in name/alias/HF id, a ``config.json`` path, or a directory holding one."""
    key = spec.lower()
    key = ALIASES.get(key, key)
    if key in BUILTIN:
        return BUILTIN[key]
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        model_dir = str(path.parent)
        return from_hf_config(cfg, name=path.parent.name or "model", hf_id=model_dir)
    raise ValueError(
        f"unknown model {spec!r}: give one of {', '.join(BUILTIN)} or a path to a Hugging Face config.json"
    )
