# SPDX-License-Identifier: Apache-2.0
"""The Helix attention backend for vLLM 0.32's v1 interface (installed by `vllm_helix.Worker` only).

One call per layer and step, for every token of the batch (prefill, chunked prefill and decode alike):

    write K, V of the tokens this rank owns            (slot −1: another KVP rank owns it)
    (O_i, LSE_i) = partial attention over the local shard, causal by global position   [H/TPA heads]
    O = all-to-all over the KVP group + LSE combine                                     [H/N heads]

Prefill tokens go through the same exchange as decode tokens: a prompt's KV is spread over the KVP ranks as it
is written, so its attention is split the same way and stays exact. `output` is (tokens, H/N, head_dim) — the
input of the TP = N out-projection (see `vllm_helix.model_surgery`).

Extends vLLM 0.32's `CPUAttentionBackend` (same KV buffer size per block, read token-major: see
`split_kv_cache`), adding the LSE-returning compute path vLLM's CPU kernel lacks.
"""

from __future__ import annotations

import time

import torch
from vllm.v1.attention.backend import AttentionImpl, AttentionLayer, AttentionType
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

from vllm_helix.attention.metadata import HelixAttentionMetadata, HelixAttentionMetadataBuilder
from vllm_helix.attention.step import attend_and_exchange
from vllm_helix.runtime import get_runtime


class HelixAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_name() -> str:
        # Must name an existing enum member (vLLM pickles the enum into worker processes); on CPU the Helix
        # worker overrides CPU_ATTN's class path in its own process only.
        return "CPU_ATTN"

    @staticmethod
    def get_impl_cls() -> type[HelixAttentionImpl]:
        return HelixAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[HelixAttentionMetadataBuilder]:
        return HelixAttentionMetadataBuilder

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER


def split_kv_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Helix's reading of a layer's KV buffer → key, value (blocks, block_size, kv_heads, D).

    vLLM sizes the buffer as CPU_ATTN's (blocks, kv_heads, block_size, 2·D) (layout LBHNC, one contiguous
    tensor per layer); only the Helix backend writes and reads it, so it stores all keys, then all values,
    token-major (vLLM's GPU "NHD" layout): a run of consecutive blocks is then one (run·block_size, kv_heads,
    D) stretch the flash kernel reads in one call. Same bytes, same block ids, so vLLM's block manager is
    unaffected."""
    num_blocks, kv_heads, block_size, two_d = kv_cache.shape
    if not kv_cache.is_contiguous():
        raise RuntimeError(
            f"Helix attention needs a contiguous per-layer KV cache, got strides {kv_cache.stride()}"
        )
    kv = kv_cache.view(2, num_blocks, block_size, kv_heads, two_d // 2)
    return kv[0], kv[1]


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slots: torch.Tensor) -> None:
    """Scatter key/value (n, kv_heads, D) to local slots (n,) of the cache, in the layout `split_kv_cache`
    reads (vLLM's C++ `cpu_attn_reshape_and_cache` writes an ISA-specific tiled layout instead)."""
    key_cache, value_cache = split_kv_cache(kv_cache)  # (blocks, block_size, kv_heads, D)
    kv_heads, dim = key_cache.shape[2:]
    key_cache.view(-1, kv_heads, dim)[slots] = key.to(key_cache.dtype)
    value_cache.view(-1, kv_heads, dim)[slots] = value.to(value_cache.dtype)


class HelixAttentionImpl(AttentionImpl):
    can_return_lse_for_decode = True
    supports_dcp = True
    lse_base_on_e = True

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        unsupported = {
            "alibi_slopes": alibi_slopes is not None,
            "sliding_window": sliding_window not in (None, -1),
            "logits_soft_cap": bool(logits_soft_cap),
            "attention sinks": sinks is not None,
            "fp8 KV cache": kv_cache_dtype not in ("auto", "bfloat16", "float16", "float32"),
            f"attention type {attn_type}": attn_type != AttentionType.DECODER,
        }
        bad = [name for name, flag in unsupported.items() if flag]
        if bad:
            raise NotImplementedError(
                f"Helix attention does not support {', '.join(bad)} yet; run this model "
                "without --worker-cls vllm_helix.Worker"
            )
        self.num_heads = num_heads  # H/TPA after model surgery
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.sliding_window = -1

    def do_kv_cache_update(
        self,
        layer: torch.nn.Module,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Write K, V (tokens, kv_heads, D) of the tokens this rank owns (slot ≥ 0) into the paged cache."""
        owned = slot_mapping[: key.shape[0]] >= 0
        if not bool(owned.any()):
            return
        if not bool(owned.all()):
            idx = owned.nonzero().flatten()
            key, value, slot_mapping = key.index_select(0, idx), value.index_select(0, idx), slot_mapping[idx]
        else:
            slot_mapping = slot_mapping[: key.shape[0]]
        write_kv(key, value, kv_cache, slot_mapping)
        num_blocks, _, block_size, _ = kv_cache.shape
        get_runtime().track_kv_write(layer.layer_name, slot_mapping, num_blocks * block_size, block_size)

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: HelixAttentionMetadata | None,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (tokens, H/TPA, D) → output (tokens, H/N, D): exact attention over all KVP shards."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by Helix attention")
        if attn_metadata is None:  # profiling / warm-up run without metadata
            return output
        rt = get_runtime()
        n = attn_metadata.num_actual_tokens
        key_cache, value_cache = split_kv_cache(kv_cache)
        started = time.perf_counter()
        target = output[:n]
        attend_and_exchange(
            query[:n],
            key_cache,
            value_cache,
            attn_metadata,
            self.scale,
            rt,
            out=target if target.dim() == 3 else target.view(n, -1, query.shape[-1]),
        )
        rt.stats.attention_seconds += time.perf_counter() - started
        return output
