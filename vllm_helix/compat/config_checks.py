# SPDX-License-Identifier: Apache-2.0
"""Pre-spawn checks: three guarded wrappers of vLLM 0.32 config code, each a no-op unless
`--worker-cls vllm_helix.Worker` is used.

The `VllmConfig.__post_init__` wrapper also names `CPU_MLA` as the attention backend of an MLA model on CPU
before the platform's config pass (`select_cpu_mla_backend`: vLLM 0.32 would pick the LSE-less `AMX_MLA` on
AMX CPUs).

Applied by the `vllm.general_plugins` entry point (`vllm_helix.plugin.register`) in every vLLM process (vLLM
loads general plugins in `EngineArgs.__post_init__`, before any config is built), so they act in the API /
engine-config process *before* any worker is spawned. Every check is `vllm_helix.validation.validate_setup`;
the wrappers only copy vLLM's values into a `HelixSetup`:

1. `vllm.engine.arg_utils.EngineArgs.create_engine_config` — checks the raw arguments first (grid arithmetic,
   PP / DP / PCP, KV cache dtype, block size and interleave as given, `--additional-config`), before vLLM's
   own `ParallelConfig` validation, so `-tp 4 -dcp 3` gets Helix's message with what works.
2. `vllm.config.vllm.VllmConfig.__post_init__` — checks the model (heads vs grid, architecture, MLA, sliding
   window, soft-cap, ALiBi, quantization, runner, model impl) before vLLM's own checks, and after them the
   block size the platform chose against the interleave.
3. `vllm.config.model.ModelConfig.verify_with_parallel_config` — vLLM's DCP only allows `-dcp` ≤ TP / KV heads
   (its query all-gather design needs TPA ≥ K). Helix computes Q, K, V per TPA shard itself, so for the Helix
   worker the original runs with DCP hidden (every other check still runs) after Helix's grid check.

`apply()` also installs `vllm_helix.compat.cpu_comm.install_shm_unlink` (the one other hook the general plugin
installs in every process; it acts only where a Helix runtime is set).
"""

from __future__ import annotations

import dataclasses
import functools
import os

from vllm_helix.compat import wrap_once
from vllm_helix.config import is_helix_worker
from vllm_helix.validation import HelixSetup, setup_problems, validate_setup

_APPLIED = False


def _device() -> str:
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "cuda"


def _common() -> dict:
    return {"device": _device(), "triton_interpret": os.environ.get("TRITON_INTERPRET", "") == "1"}


def setup_from_engine_args(args) -> HelixSetup:
    """What `EngineArgs` says before any config exists (the model is not read)."""
    quantization = args.quantization if isinstance(args.quantization, str) else None
    return HelixSetup(
        tensor_parallel_size=args.tensor_parallel_size,
        decode_context_parallel_size=args.decode_context_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        data_parallel_size=args.data_parallel_size,
        prefill_context_parallel_size=args.prefill_context_parallel_size,
        block_size=args.block_size,
        interleave=args.cp_kv_cache_interleave_size,
        kv_cache_dtype=str(args.kv_cache_dtype),
        quantization=quantization,
        model_impl=str(getattr(args.model_impl, "value", args.model_impl)),
        additional_config=args.additional_config,
        **_common(),
    )


def setup_from_vllm_config(config, *, final_block_size: bool) -> HelixSetup:
    """What a built `VllmConfig` says. The block size counts once the user or the platform has fixed it: the
    CPU platform does in `check_and_update_config` (inside `VllmConfig.__post_init__`); CUDA only in the
    workers."""
    mc, pc, cc = config.model_config, config.parallel_config, config.cache_config
    text = mc.hf_text_config
    fixed = cc.user_specified_block_size or (final_block_size and _device() == "cpu")
    block = cc.block_size if fixed and isinstance(cc.block_size, int) else None
    return HelixSetup(
        tensor_parallel_size=pc.tensor_parallel_size,
        decode_context_parallel_size=pc.decode_context_parallel_size,
        pipeline_parallel_size=pc.pipeline_parallel_size,
        data_parallel_size=pc.data_parallel_size,
        prefill_context_parallel_size=pc.prefill_context_parallel_size,
        num_heads=mc.model_arch_config.total_num_attention_heads,
        num_kv_heads=mc.get_total_num_kv_heads(),
        architectures=tuple(mc.architectures or ()),
        use_mla=bool(mc.use_mla),
        block_size=block,
        interleave=pc.cp_kv_cache_interleave_size,
        kv_cache_dtype=str(cc.cache_dtype),
        sliding_window=mc.get_sliding_window(),
        attn_softcap=getattr(text, "attn_logit_softcapping", None),
        alibi=bool(mc.uses_alibi),
        quantization=mc.quantization,
        runner_type=mc.runner_type,
        model_impl=str(getattr(mc.model_impl, "value", mc.model_impl)),
        attention_backend=getattr(config.attention_config.backend, "name", None),
        additional_config=config.additional_config,
        **_common(),
    )


def _with_model_heads(args, setup: HelixSetup) -> HelixSetup:
    """`setup` plus the model's head counts when its config can be read (best effort: only to improve the
    hint)."""
    try:
        mc = args.create_model_config()
        return dataclasses.replace(
            setup,
            num_heads=mc.model_arch_config.total_num_attention_heads,
            num_kv_heads=mc.get_total_num_kv_heads(),
            use_mla=bool(mc.use_mla),
        )
    except Exception:  # noqa: BLE001 — the model-free message is still right
        return setup


def _helix_create_engine_config(original):
    @functools.wraps(original)
    def create_engine_config(self, *args, **kwargs):
        if is_helix_worker(getattr(self, "worker_cls", None)):
            setup = setup_from_engine_args(self)
            if setup_problems(setup):
                validate_setup(_with_model_heads(self, setup))  # the message then lists grids for this model
        return original(self, *args, **kwargs)

    return create_engine_config


def _helix_vllm_config_post_init(original):
    @functools.wraps(original)
    def __post_init__(self, *args, **kwargs):
        mc = self.model_config
        checked = (
            is_helix_worker(getattr(self.parallel_config, "worker_cls", None))
            and mc is not None
            and not getattr(mc, "is_submodel_config", False)
        )
        if checked:
            validate_setup(setup_from_vllm_config(self, final_block_size=False))
            select_cpu_mla_backend(self)
        result = original(self, *args, **kwargs)
        if checked:
            validate_setup(setup_from_vllm_config(self, final_block_size=True))
        return result

    return __post_init__


def select_cpu_mla_backend(config) -> None:
    """Helix runs MLA on CPU through `CPU_MLA` (its class `vllm_helix.attention.mla.HelixMLABackend` is
    registered under that name in the worker). vLLM 0.32's CPU platform prefers `AMX_MLA` on CPUs with AMX
    tiles unless `attention_config.backend` is `CPU_MLA` (`CpuPlatform.get_attn_backend_cls`; its
    `check_and_update_config` then also keeps block size 128 and chunked prefill) — a bf16-only backend
    without the LSE the Helix exchange needs. So name `CPU_MLA` before the platform's config pass when the
    user named nothing (any other name was refused by `validate_setup` just before)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    if _device() == "cpu" and config.model_config.use_mla and config.attention_config.backend is None:
        config.attention_config.backend = AttentionBackendEnum.CPU_MLA


def _helix_verify_with_parallel_config(original):
    @functools.wraps(original)
    def verify_with_parallel_config(self, parallel_config, *args, **kwargs):
        if not is_helix_worker(getattr(parallel_config, "worker_cls", None)):
            return original(self, parallel_config, *args, **kwargs)
        dcp = parallel_config.decode_context_parallel_size
        validate_setup(
            HelixSetup(
                tensor_parallel_size=parallel_config.tensor_parallel_size,
                decode_context_parallel_size=dcp,
                pipeline_parallel_size=parallel_config.pipeline_parallel_size,
                data_parallel_size=parallel_config.data_parallel_size,
                prefill_context_parallel_size=parallel_config.prefill_context_parallel_size,
                num_heads=self.model_arch_config.total_num_attention_heads,
                num_kv_heads=self.get_total_num_kv_heads(),
                use_mla=bool(self.use_mla),
                **_common(),
            )
        )
        object.__setattr__(parallel_config, "decode_context_parallel_size", 1)
        try:
            return original(self, parallel_config, *args, **kwargs)
        finally:
            object.__setattr__(parallel_config, "decode_context_parallel_size", dcp)

    return verify_with_parallel_config


def apply() -> None:
    """Install the wrappers once per process (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from vllm.config.model import ModelConfig
    from vllm.config.vllm import VllmConfig
    from vllm.engine.arg_utils import EngineArgs

    from vllm_helix.compat.cpu_comm import install_shm_unlink

    wrap_once(ModelConfig, "verify_with_parallel_config", _helix_verify_with_parallel_config)
    wrap_once(VllmConfig, "__post_init__", _helix_vllm_config_post_init)
    wrap_once(EngineArgs, "create_engine_config", _helix_create_engine_config)
    install_shm_unlink()
    _APPLIED = True
