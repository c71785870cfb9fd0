# SPDX-License-Identifier: Apache-2.0
"""Registrations in vLLM 0.32's registries, made by the Helix worker in its own process only.

- Attention backend: `vllm.v1.attention.backends.registry.register_backend` points an existing enum member at
  a Helix class — `CPU_ATTN` (CPU ignores `--attention-backend`), `CPU_MLA`, or `CUSTOM` on CUDA (selected
  through `attention_config.backend`). The member must exist: vLLM pickles the enum into worker processes.
  The selector memoises its answer (`vllm.v1.attention.selector._cached_get_attn_backend`), so its cache is
  cleared after registering.
- Slot mapping: vLLM's CPU fallback for `vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel` asserts
  "Context Parallelism is not supported on CPU"; `register_kernels` (vllm.triton_utils.dispatcher) installs
  `vllm_helix.sharding.compute_slot_mapping` instead.
- Model classes: `ModelRegistry._try_load_model_cls` (the stock class) and `ModelRegistry.register_model`
  (its Helix subclass, `vllm_helix.model_surgery.make_helix_model_class`) under the same architecture name.

Guard: only `vllm_helix.Worker.__init__` calls these, only when it shards KV (KVP > 1) or the model is MLA.
"""

from __future__ import annotations

__all__ = ["register_attention_backend", "install_slot_mapping", "load_model_class", "register_model_class"]


def register_attention_backend(member: str, class_path: str, vllm_config=None) -> None:
    """Point `AttentionBackendEnum.<member>` at `class_path` in this process; for "CUSTOM" also select it in
    `vllm_config`."""
    from vllm.v1.attention import selector
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    enum_member = AttentionBackendEnum[member]
    register_backend(enum_member, class_path)
    if member == "CUSTOM":
        vllm_config.attention_config.backend = enum_member
    cached = getattr(selector, "_cached_get_attn_backend", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


def install_slot_mapping() -> None:
    """Context-parallel slot mapping on CPU (this process)."""
    from vllm.triton_utils.dispatcher import register_kernels

    from vllm_helix.sharding import compute_slot_mapping

    register_kernels({"vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel": compute_slot_mapping})


def load_model_class(arch: str):
    """vLLM's model class for `arch`, or None."""
    from vllm.model_executor.models import ModelRegistry

    return ModelRegistry._try_load_model_cls(arch)


def register_model_class(arch: str, cls) -> None:
    from vllm.model_executor.models import ModelRegistry

    ModelRegistry.register_model(arch, cls)
