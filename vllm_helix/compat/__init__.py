# SPDX-License-Identifier: Apache-2.0
"""Every seam between Helix and vLLM 0.32's internals, in one folder (table: docs/design.md, "vLLM seams").

Each module replaces, wraps or registers vLLM 0.32 symbols, says why, and names its guard: it acts only in a
Helix worker process, or — for the pre-spawn checks and the status route — only when `--worker-cls
vllm_helix.Worker` is named. Wrappers go through `wrap_once`, the one guard idiom: a wrapper carries
`__helix_patched__`, so installing twice wraps once; each wrapper tests its own condition and otherwise calls
vLLM's original unchanged.

    config_checks  wraps `EngineArgs.create_engine_config`, `VllmConfig.__post_init__`,
                   `ModelConfig.verify_with_parallel_config`: Helix's checks first, "DCP ≤ TP / K" lifted
    cpu_comm       wraps `_CPUSHMDistributed._init_cpu_shm` (unlink vLLM's /dev/shm names once joined);
                   replaces the TP group's `CpuCommunicator.dist_module` (all-reduce over Helix's shared
                   memory) and defines the custom op `vllm_helix::tp_all_reduce`
    registry       `register_backend` (CPU_ATTN / CPU_MLA / CUSTOM) + the selector's cache clear;
                   `register_kernels` (CP slot mapping on CPU); `ModelRegistry` (Helix model subclasses)
    model          swaps `parallel_state._TP` while QKV is built; `Attention.__class__` → `HelixAttention`
                   (vLLM's `unified_*` attention ops); shows the constructor N KV heads when K, N don't divide
    moe            wraps `CPUUnquantizedExperts.apply` (maps global expert ids through `expert_map`)
    mla            replaces `MLAAttention.dcp_manager.combine` per layer (the Helix exchange)
    status_route   wraps `vllm.entrypoints.launchers.app.attach_endpoint_plugins` (`/helix/status`)
    step_rpc       when `vllm_helix.Worker.execute_model` may sample with the forward pass (`EngineCore.step`
                   then skips its `sample_tokens` RPC): one executor round trip per step

Installed by `vllm_helix.plugin.register` (every vLLM process: config_checks, cpu_comm's unlink,
status_route), `vllm_helix.Worker` (registry, cpu_comm's all-reduce, moe, step_rpc),
`vllm_helix.model_surgery` (model) and `vllm_helix.attention.mla` (mla). Outside this folder Helix only
subclasses vLLM classes (the worker, `CPUAttentionBackend`, `CPUMLABackend` / `CPUMLAImpl`, the metadata
builders) and reads public state (`get_dcp_group`, `init_model_parallel_group`, configs); the opt-in
platform plugin `vllm_helix/ray_cpu_platform.py` stays where its installed entry point names it.
"""

from __future__ import annotations

__all__ = ["wrap_once"]


def wrap_once(owner, name: str, make_wrapper) -> bool:
    """Replace `owner.<name>` by `make_wrapper(original)` unless it is already a Helix wrapper. Returns
    whether it wrapped now. The one guard idiom of this package."""
    original = getattr(owner, name)
    if getattr(original, "__helix_patched__", False):
        return False
    wrapper = make_wrapper(original)
    wrapper.__helix_patched__ = True
    setattr(owner, name, wrapper)
    return True
