# SPDX-License-Identifier: Apache-2.0
"""The only patches of vLLM 0.32 that Helix needs — each a no-op unless `--worker-cls vllm_helix.Worker` is used.

Applied by the `vllm.general_plugins` entry point (`vllm_helix.plugin.register`) in every vLLM process, so they act in
the API/engine process *before* any worker is spawned:

1. `vllm.config.model.ModelConfig.verify_with_parallel_config` — replaced by a wrapper because vLLM's DCP only allows
   `-dcp` ≤ TP / KV heads (and TP > KV heads): its query all-gather design needs TPA ≥ K. Helix computes Q, K, V per
   TPA shard itself, so for the Helix worker the original runs with DCP hidden (every other check still runs) and
   Helix's own grid validation runs instead, failing early with the values and a grid that works.
2. `vllm.config.vllm.VllmConfig.__post_init__` — wrapped to validate `--additional-config '{"helix": ...}'` before
   anything else happens, so a typo fails before workers start.
"""

from __future__ import annotations

import functools

from vllm_helix.config import HelixConfig, is_helix_worker
from vllm_helix.grid import HelixGrid

_APPLIED = False


def _helix_verify_with_parallel_config(original):
    @functools.wraps(original)
    def verify_with_parallel_config(self, parallel_config, *args, **kwargs):
        if not is_helix_worker(getattr(parallel_config, "worker_cls", None)):
            return original(self, parallel_config, *args, **kwargs)
        dcp = parallel_config.decode_context_parallel_size
        if parallel_config.prefill_context_parallel_size > 1:
            from vllm_helix.grid import HelixConfigError

            raise HelixConfigError("Helix does not combine with --prefill-context-parallel-size > 1; use -tp N "
                                   "-dcp KVP only")
        if parallel_config.pipeline_parallel_size > 1 or parallel_config.data_parallel_size > 1:
            from vllm_helix.grid import HelixConfigError

            raise HelixConfigError(
                f"Helix runs on one TP group: got --pipeline-parallel-size {parallel_config.pipeline_parallel_size} "
                f"and --data-parallel-size {parallel_config.data_parallel_size}; use -tp N -dcp KVP with both 1")
        HelixGrid(parallel_config.tensor_parallel_size, dcp, self.model_arch_config.total_num_attention_heads,
                  1 if self.use_mla else self.get_total_num_kv_heads())
        object.__setattr__(parallel_config, "decode_context_parallel_size", 1)
        try:
            return original(self, parallel_config, *args, **kwargs)
        finally:
            object.__setattr__(parallel_config, "decode_context_parallel_size", dcp)

    verify_with_parallel_config.__helix_patched__ = True
    return verify_with_parallel_config


def _helix_vllm_config_post_init(original):
    @functools.wraps(original)
    def __post_init__(self, *args, **kwargs):
        if is_helix_worker(getattr(self.parallel_config, "worker_cls", None)):
            HelixConfig.from_additional_config(self.additional_config)
        return original(self, *args, **kwargs)

    __post_init__.__helix_patched__ = True
    return __post_init__


def apply() -> None:
    """Install the wrappers once per process (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from vllm.config.model import ModelConfig
    from vllm.config.vllm import VllmConfig

    if not getattr(ModelConfig.verify_with_parallel_config, "__helix_patched__", False):
        ModelConfig.verify_with_parallel_config = _helix_verify_with_parallel_config(
            ModelConfig.verify_with_parallel_config)
    if not getattr(VllmConfig.__post_init__, "__helix_patched__", False):
        VllmConfig.__post_init__ = _helix_vllm_config_post_init(VllmConfig.__post_init__)
    _APPLIED = True
