# SPDX-License-Identifier: Apache-2.0
"""Helix MLA (DeepSeek V2/V3) on vLLM 0.32: a CPU MLA backend whose decode returns the LSE, any dims.

Helix for MLA is TPA = 1 (or any TPA), KVP = N: the latent cache entry [c_j (kv_lora_rank C) | k_pe_j (rope
R)] is one KV "head", so it is sharded over the KVP ranks round-robin by block (vLLM's DCP slot mapping with
`cp_kv_cache_interleave_size = block_size`, set by the Helix worker) instead of being duplicated by TP.

vLLM's own MLA layer (`MLAAttention.forward_impl`) already runs the Helix data flow once the backend can
return an LSE; this module only supplies that backend and the exchange. Per decode step and layer, on rank r
of a KVP group:

    q (B, H_g, C + R)    absorbed query (W_UK folded in) for the group's H_g = H/TPA heads: with
                         `dcp_q_replicate` (set by the worker) q_b_proj is replicated over the group, so no
                         query all-gather — Helix's replicated query projection
    (O_r, LSE_r)         = absorbed decode attention over this rank's latent shard   O_r (B, H_g, C)  [here]
    O (B, H/N, C)        = all-to-all over the KVP group + exact LSE combine      [here, `_helix_combine`]
                           O = Σ_r exp(LSE_r − LSE) · O_r,  LSE = log Σ_r exp(LSE_r)
    W_UV, o_proj         applied by vLLM for the rank's H/N heads (v_up_proj, RowParallelLinear at TP = N)

Because the combine is linear in O_r and W_UV is per head, applying W_UV after the combine is exact; the
rank's H/N heads after the all-to-all are heads [r·H/N, (r+1)·H/N) — the slice its TP = N `kv_b_proj`/`o_proj`
hold.

Prefill (vLLM's MHA path) stays exact without an exchange: on CPU, vLLM disables chunked prefill and prefix
caching for MLA, so a prompt has no cached context and every rank attends over the prompt's freshly computed
(replicated) latents for its own H/N heads; only the *storage* of those latents is sharded.

vLLM's CPU_MLA decode kernel (`mla_decode_kvcache_cpu`) returns no LSE and supports only C + R = 576 with
block_size 16; the decode here is `vllm_helix.kernels.dispatch.mla_decode_attention` (torch on CPU, Triton on
CUDA), for any C, R and block size.
"""

from __future__ import annotations

import time

import torch
from vllm.model_executor.layers.attention.mla_attention import MLACommonMetadata, MLACommonMetadataBuilder
from vllm.v1.attention.backend import AttentionLayer, MultipleOf
from vllm.v1.attention.backends.mla.cpu_mla import CPUMLABackend, CPUMLAImpl

from vllm_helix.attention.exchange import exchange_and_combine, pack_partials
from vllm_helix.compat.mla import install_mla_combine
from vllm_helix.kernels import dispatch
from vllm_helix.runtime import get_runtime, has_runtime


class HelixMLAMetadata(MLACommonMetadata):
    """vLLM's MLA metadata without its head-size allow-list ([320, 512, 576]): any C + R."""

    def __post_init__(self) -> None:
        pass


class HelixMLAMetadataBuilder(MLACommonMetadataBuilder):
    """vLLM's MLA metadata builder (decode/prefill split, DCP-local sequence lengths), any head size."""

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device, metadata_cls=None, **kwargs) -> None:
        super().__init__(
            kv_cache_spec,
            layer_names,
            vllm_config,
            device,
            metadata_cls=metadata_cls or HelixMLAMetadata,
            **kwargs,
        )


class HelixMLABackend(CPUMLABackend):
    """vLLM's CPU MLA backend descriptor with the Helix impl; any latent width and block size."""

    @staticmethod
    def get_name() -> str:
        # Must name an existing enum member (pickled into workers); the Helix worker overrides CPU_MLA's path.
        return "CPU_MLA"

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return []  # any kv_lora_rank + rope

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(1)]

    @classmethod
    def supports_block_size(cls, block_size: int | None) -> bool:
        return True

    @staticmethod
    def get_impl_cls() -> type[HelixMLAImpl]:
        return HelixMLAImpl

    @staticmethod
    def get_builder_cls() -> type[HelixMLAMetadataBuilder]:
        return HelixMLAMetadataBuilder


def _helix_combine(partial_out: torch.Tensor, partial_lse: torch.Tensor, *, rt, **_unused) -> torch.Tensor:
    """vLLM's `MLADCPManager.combine` signature: partials (B, H_g, C) + LSE (B, H_g) → exact (B, H_g/KVP, C).

    Packs (O, LSE) and hands them to the one exchange driver (`exchange.exchange_and_combine`). Empty shards
    already carry LSE = −inf and O = 0, so vLLM's `seq_lens` is not needed. The time counts in
    `attention_seconds` too, which (as for GQA) covers the whole attention step: partials, exchange, combine.
    """
    started = time.perf_counter()
    kvp = rt.grid.kvp
    batch, heads, dim = partial_out.shape
    out = torch.empty(batch, heads // kvp, dim, dtype=partial_out.dtype, device=partial_out.device)
    # the combine's kernel: chosen by `dispatch.combine_packed` from the `helix.kernels` knob
    exchange_and_combine((pack_partials(partial_out, partial_lse, kvp),), (out,), rt, rt.config.kernels)
    rt.stats.attention_seconds += time.perf_counter() - started
    return out


class HelixMLAImpl(CPUMLAImpl):
    """CPU MLA impl whose decode returns (O, LSE) over the local latent shard; any dims."""

    can_return_lse_for_decode = True
    supports_dcp = True
    lse_base_on_e = True

    def __init__(self, *args, **kwargs) -> None:
        dcp_world_size, dcp_rank = self.dcp_world_size, self.dcp_rank  # set by AttentionImplBase.__new__
        super().__init__(*args, **kwargs)
        if self.kv_cache_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise NotImplementedError(
                "Helix MLA does not support a quantized KV cache yet; run without "
                "--worker-cls vllm_helix.Worker"
            )
        # CPUMLAImpl pins DCP off (its kernel has no LSE); this impl supports it.
        self.dcp_world_size, self.dcp_rank = dcp_world_size, dcp_rank
        from vllm.config import get_current_vllm_config

        self.cp_kv_cache_interleave_size = (
            get_current_vllm_config().parallel_config.cp_kv_cache_interleave_size
        )
        self._layer_key = f"mla@{id(self)}"

    def forward_mqa(
        self,
        q: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        kv_c_and_k_pe_cache: torch.Tensor,
        attn_metadata,
        layer: AttentionLayer,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Absorbed decode over the local shard: q (B, H_g, C + R) or (q_nope (B, H_g, C), q_pe (B, H_g, R))
        → O (B, H_g, C), LSE (B, H_g) fp32, base e (−inf / 0 for an empty shard)."""
        decode = attn_metadata.decode
        assert decode is not None
        if isinstance(q, tuple):
            q_nope, q_pe = q
        else:
            q_nope, q_pe = q.split([self.kv_lora_rank, q.shape[-1] - self.kv_lora_rank], dim=-1)
        started = time.perf_counter()
        force = get_runtime().config.kernels if has_runtime() else None
        out, lse = dispatch.mla_decode_attention(
            q_nope,
            q_pe,
            kv_c_and_k_pe_cache,
            decode.block_table,
            decode.seq_lens,  # seq_lens: local under DCP
            self.scale,
            force=force,
        )
        if has_runtime():
            rt = get_runtime()
            rt.stats.attention_seconds += time.perf_counter() - started
            if self.dcp_world_size > 1:  # vLLM's DCP combine is CUDA-only: route it to the Helix exchange
                install_mla_combine(layer, _helix_combine, rt)
        if self.dcp_world_size <= 1:
            return out, None
        return out, lse

    def do_kv_cache_update(
        self,
        kv_c_normed: torch.Tensor,
        k_pe: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        kv_cache_dtype: str,
        k_scale: torch.Tensor,
    ) -> None:
        """Write [c | k_pe] (tokens, C + R) of the tokens this rank owns (slot ≥ 0) into (blocks, bs, C +
        R)."""
        super().do_kv_cache_update(kv_c_normed, k_pe, kv_cache, slot_mapping, kv_cache_dtype, k_scale)
        if kv_cache.numel() == 0 or not has_runtime():
            return
        slots = slot_mapping.flatten()[: kv_c_normed.shape[0]]
        slots = slots[slots >= 0]
        block_size = kv_cache.shape[1]
        get_runtime().track_kv_write(self._layer_key, slots, kv_cache.shape[0] * block_size, block_size)
