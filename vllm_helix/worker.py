# SPDX-License-Identifier: Apache-2.0
"""`vllm_helix.Worker`: the platform's own vLLM 0.32 worker (CPUWorker on CPU, the GPU Worker on CUDA) plus
Helix.

Overrides three hooks and adds three RPC methods:
- `__init__`: reads and validates the Helix config, sets block-granular round-robin placement
  (`cp_kv_cache_interleave_size = block_size` unless the user chose another), installs the Helix attention
  backend, the model re-sharding and (on CPU) the context-parallel slot mapping — all in this worker process
  only, and only when there is KV to shard (KVP > 1) or the model is MLA; at KVP = 1 vLLM's own attention is
  the Helix result.
- `init_device`: after vLLM's groups exist, reuses the DCP group (consecutive ranks) as the KVP group and
  builds the TPA groups (equal kvp index) with `init_model_parallel_group`; on CPU also the shared-memory
  exchange over the KVP ranks (`_shm_exchange`) and the TP all-reduce over shared memory.

Every hook into vLLM's internals that it installs is in `vllm_helix.compat` (registry, cpu_comm, moe).
- `execute_model`: samples right after the forward pass when vLLM would ask for it with no grammar, so a step
  costs one executor round trip instead of two (`vllm_helix.compat.step_rpc`).
- `helix_status()` / `helix_reset_stats()`: per-rank grid position, KV use and exchange time, for
  `collective_rpc` (tests, `/helix/status`, metrics).
"""

from __future__ import annotations

import dataclasses

import torch
from vllm.logger import init_logger
from vllm.platforms import current_platform

from vllm_helix.compat.step_rpc import samples_with_forward
from vllm_helix.config import HelixConfig
from vllm_helix.grid import HelixConfigError, HelixGrid
from vllm_helix.runtime import HelixRuntime, get_runtime, set_runtime

if current_platform.is_cpu():
    from vllm.v1.worker.cpu_worker import CPUWorker as _PlatformWorker
else:
    from vllm.v1.worker.gpu_worker import Worker as _PlatformWorker

logger = init_logger("vllm.helix.worker")  # under "vllm" so vLLM's log handlers show it

BACKEND_PATH = "vllm_helix.attention.backend.HelixAttentionBackend"


def _install_backend(vllm_config) -> None:
    """Point this process's attention selection at the Helix backend (`vllm_helix.compat.registry`)."""
    from vllm_helix.compat.registry import register_attention_backend
    from vllm_helix.validation import attention_path_problem  # the pre-spawn check asks the same function

    mc, pc = vllm_config.model_config, vllm_config.parallel_config
    problem = attention_path_problem(
        "cpu" if current_platform.is_cpu() else "cuda",
        bool(getattr(mc, "use_mla", False)),
        tuple(mc.architectures or ()),
    )
    if problem:
        raise HelixConfigError(problem)
    if current_platform.is_cpu() and getattr(mc, "use_mla", False):
        # MLA (DeepSeek V2/V3): vLLM's own MLA + DCP flow with a CPU impl that returns the LSE, any dims
        # (vllm_helix.attention.mla); replicated query projection over the KVP group instead of a q
        # all-gather.
        register_attention_backend("CPU_MLA", "vllm_helix.attention.mla.HelixMLABackend")
        if pc.decode_context_parallel_size > 1 and not pc.dcp_q_replicate:
            pc.dcp_q_replicate = True
            logger.info("Helix MLA: dcp_q_replicate=True (q_b_proj replicated over the KVP group)")
        if mc.is_moe and pc.enable_expert_parallel:
            from vllm_helix.compat.moe import install_cpu_expert_parallel

            # vLLM's CPU experts ignore expert_map (segfault); see vllm_helix.moe
            install_cpu_expert_parallel()
    elif current_platform.is_cpu():
        register_attention_backend("CPU_ATTN", BACKEND_PATH)  # CPU ignores --attention-backend
    else:
        register_attention_backend("CUSTOM", BACKEND_PATH, vllm_config)


def weight_bytes_by_module(model: torch.nn.Module, dtype_bytes: int) -> dict[str, int]:
    """Weight bytes this rank holds, per module. Linear layers count their logical shard
    (input_size_per_partition × output_size_per_partition): vLLM's CPU path may repack their weights into
    buffers that are not parameters any more."""
    sizes = {}
    for name, module in model.named_modules():
        rows, cols = (
            getattr(module, a, None) for a in ("output_size_per_partition", "input_size_per_partition")
        )
        if rows is not None and cols is not None:
            sizes[name] = rows * cols * dtype_bytes
        else:
            own = sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
            if own:
                sizes[name] = own
    return sizes


def _shm_exchange(rt, vllm_config):
    """The native shared-memory all-to-all over this rank's KVP group
    (`vllm_helix.kernels.cpu_shm_collectives`), or None (then gloo carries the exchange). Its slot holds one
    step's largest exchange: max_num_batched_tokens tokens × this rank's heads × (head size + LSE), in fp32 at
    most; larger messages go over gloo."""
    from vllm_helix.kernels.cpu_shm_collectives import DEFAULT_SLOT_BYTES, ShmGroup

    mc = vllm_config.model_config
    row = (getattr(mc.hf_text_config, "kv_lora_rank", None) or mc.get_head_size()) + 4
    heads = max(1, rt.grid.num_heads // rt.grid.tpa)
    tokens = vllm_config.scheduler_config.max_num_batched_tokens
    slot = max(DEFAULT_SLOT_BYTES, min(64 << 20, tokens * heads * row * 4))
    try:
        exchange = ShmGroup(
            rt.kvp_group,
            rt.grid.kvp_group(rt.tpa_rank),
            rt.kvp_rank,
            slot_bytes=slot,
            local_ranks=rt.grid.world_size,
        )
    except (RuntimeError, OSError) as exc:
        if rt.config.exchange == "shm":
            raise RuntimeError(
                f'helix.exchange=shm: the shared-memory exchange is unavailable ({exc}); use "auto" or "gloo"'
            ) from exc
        logger.warning("Helix: shared-memory exchange unavailable (%s); the KVP exchange uses gloo", exc)
        return None
    if rt.rank == 0:
        logger.info(
            "Helix: KVP exchange over shared memory (%d MiB slots; HOP-B slices: gloo async)", slot >> 20
        )
    return exchange


def _shm_tp_all_reduce(rt, vllm_config) -> bool:
    """On CPU, where vLLM's TP group all-reduce falls back to gloo (its build lacks the shared-memory ops,
    e.g. the AVX2 build), route it over Helix's shared memory (`vllm_helix.compat.cpu_comm`): two all-reduces
    per layer sit on every step's critical path. Returns whether it was installed."""
    from vllm_helix.compat.cpu_comm import install_shm_tp_all_reduce
    from vllm_helix.kernels.cpu_shm_collectives import DEFAULT_SLOT_BYTES

    mc = vllm_config.model_config
    tokens = vllm_config.scheduler_config.max_num_batched_tokens
    slot = max(DEFAULT_SLOT_BYTES, min(64 << 20, tokens * mc.get_hidden_size() * 4))
    installed = install_shm_tp_all_reduce(slot, lambda: get_runtime().stats, logger)
    if installed and rt.rank == 0:
        logger.info(
            "Helix: TP all-reduce over shared memory (vLLM's CPU build has none here; %d MiB slots)",
            slot >> 20,
        )
    return installed


def _decode_kernel(config: HelixConfig) -> str:
    """The decode-attention implementation this rank runs (`vllm_helix.kernels.dispatch.describe`)."""
    from vllm_helix.kernels import dispatch

    return dispatch.describe(current_platform.device_type, config.kernels)


def _kv_elements_per_slot(model, kv_heads_per_rank: int) -> int:
    """KV cache elements one token slot holds on this rank, summed over layers: 2·K_r·D per GQA layer (K and V
    for the rank's K_r KV heads), C + R per MLA layer (the latent [c | k_pe], one "head")."""
    total = 0
    for m in model.modules():
        if hasattr(m, "helix_out_heads"):
            total += 2 * kv_heads_per_rank * m.head_size
        elif type(m).__name__ == "MLAAttention":
            total += m.kv_lora_rank + m.qk_rope_head_dim
    return total


class Worker(_PlatformWorker):
    def __init__(
        self,
        vllm_config,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
    ) -> None:
        super().__init__(vllm_config, local_rank, rank, distributed_init_method, is_driver_worker)
        pc, cc, mc = vllm_config.parallel_config, vllm_config.cache_config, vllm_config.model_config
        kv_heads = 1 if mc.use_mla else mc.get_total_num_kv_heads()  # MLA: one latent "head" [c | k_pe]
        grid = HelixGrid(
            pc.tensor_parallel_size,
            pc.decode_context_parallel_size,
            mc.model_arch_config.total_num_attention_heads,
            kv_heads,
            cc.block_size,
        )
        if grid.kvp > 1 and pc.cp_kv_cache_interleave_size == 1:
            pc.cp_kv_cache_interleave_size = cc.block_size  # Helix: round-robin by paged block
        config = HelixConfig.from_additional_config(vllm_config.additional_config)
        set_runtime(
            HelixRuntime(grid=grid, rank=rank, config=config, interleave=pc.cp_kv_cache_interleave_size)
        )
        self.helix_attention = grid.kvp > 1 or bool(mc.use_mla)
        if self.helix_attention:
            _install_backend(vllm_config)
            if current_platform.is_cpu():  # vLLM's CPU slot-mapping fallback refuses context parallelism
                from vllm_helix.compat.registry import install_slot_mapping

                install_slot_mapping()
            from vllm_helix.model_surgery import register_helix_models

            register_helix_models(list(mc.architectures or []))
        elif rank == 0:
            # KVP = 1 is plain TP = N: no KV to shard, nothing to exchange. vLLM's own attention (C++ kernel,
            # its layout) is then exactly the Helix result, so the worker leaves attention and the model
            # untouched.
            logger.info("Helix: KVP = 1 (-dcp 1): nothing to shard or exchange; using vLLM's own attention")
        if rank == 0:
            logger.info(
                "Helix active: N=%d = KVP %d x TPA %d, block %d, interleave %d, %s",
                grid.world_size,
                grid.kvp,
                grid.tpa,
                cc.block_size,
                pc.cp_kv_cache_interleave_size,
                config,
            )
        if self.helix_attention and not mc.use_mla and rank == 0:
            logger.info("Helix decode attention: %s", _decode_kernel(config))

    def init_device(self) -> None:
        super().init_device()
        from vllm.distributed import parallel_state as ps

        rt = get_runtime()
        dcp = ps.get_dcp_group()
        expected = rt.grid.kvp_group(rt.tpa_rank)
        if list(dcp.ranks) != expected:
            raise RuntimeError(f"vLLM's DCP group {dcp.ranks} is not the Helix KVP group {expected}")
        rt.kvp_group = dcp.device_group
        rt.tpa_coordinator = ps.init_model_parallel_group(
            rt.grid.tpa_groups(),
            self.local_rank,
            current_platform.dist_backend,
            use_device_communicator=False,
            group_name="helix_tpa",
        )
        if rt.grid.kvp > 1 and current_platform.is_cpu() and rt.config.exchange != "gloo":
            rt.kvp_exchange = _shm_exchange(rt, self.vllm_config)
            rt.shm_all_reduce = _shm_tp_all_reduce(rt, self.vllm_config)

    def execute_model(self, scheduler_output):
        """vLLM's forward pass, then — where `compat.step_rpc.samples_with_forward` holds and the knob
        `sample_with_forward` is on — the sampling the engine core's next RPC would ask for
        (`sample_tokens(None)`), returned now: one round trip per step."""
        output = super().execute_model(scheduler_output)
        rt = get_runtime()
        if (
            output is None
            and rt.config.sample_with_forward
            and samples_with_forward(self.vllm_config, scheduler_output)
        ):
            output = self.sample_tokens(None)
            rt.stats.steps_sampled_with_forward += 1
        return output

    def helix_status(self) -> dict:
        """This rank's grid position, KV use and exchange statistics (for collective_rpc)."""
        rt = get_runtime()
        t, k = rt.grid.coords(rt.rank)
        slots = int(rt.slots_used.sum()) if rt.slots_used is not None else 0
        model = self.model_runner.model
        dtype_bytes = torch.empty(0, dtype=self.model_config.dtype).element_size()
        kv_bytes = slots * _kv_elements_per_slot(model, rt.grid.kv_heads_per_tpa_rank) * dtype_bytes
        weights = weight_bytes_by_module(model, dtype_bytes)
        qkv_bytes = sum(b for name, b in weights.items() if name.endswith("qkv_proj"))
        blocks = (
            int(rt.slots_used.view(-1, rt.block_size).any(dim=1).sum()) if rt.slots_used is not None else 0
        )
        grid = {
            "world_size": rt.grid.world_size,
            "kvp": rt.grid.kvp,
            "tpa": rt.grid.tpa,
            "attention": "helix" if self.helix_attention else "vllm",
            "exchange": "none" if rt.grid.kvp == 1 else ("shm" if rt.kvp_exchange else "gloo"),
            "tp_all_reduce": "shm" if rt.shm_all_reduce else "vllm",
            "num_heads": rt.grid.num_heads,
            "num_kv_heads": rt.grid.num_kv_heads,
            "block_size": rt.block_size or self.cache_config.block_size,
            "interleave": rt.interleave,
            "hop_b": rt.config.hop_b,
            "kernels": rt.config.kernels,
            "rank_table": rt.grid.rank_table(),
            "decode_kernel": _decode_kernel(rt.config) if self.helix_attention else "vllm",
        }
        return {
            "grid": grid,
            "rank": rt.rank,
            "tpa_index": t,
            "kvp_index": k,
            "kv_tokens": slots,
            "kv_blocks": blocks,
            "block_size": rt.block_size,
            "exchange_seconds": rt.stats.exchange_seconds,
            "exchanges": rt.stats.exchanges,
            "attention_seconds": rt.stats.attention_seconds,
            "all_reduce_seconds": rt.stats.all_reduce_seconds,
            "all_reduces": rt.stats.all_reduces,
            "steps_sampled_with_forward": rt.stats.steps_sampled_with_forward,
            "kv_bytes": kv_bytes,
            "qkv_weight_bytes": qkv_bytes,
            "weight_bytes": sum(weights.values()),
        }

    def helix_reset_stats(self) -> None:
        get_runtime().reset_stats()

    def helix_configure(self, **changes) -> dict:
        """Change Helix knobs at run time (e.g. `hop_b`), validated like --additional-config. Returns the
        config."""
        rt = get_runtime()
        rt.config = HelixConfig(**{**dataclasses.asdict(rt.config), **changes})
        return dataclasses.asdict(rt.config)
