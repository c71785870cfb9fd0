# SPDX-License-Identifier: Apache-2.0
"""Opt-in `vllm.platform_plugins` entry point that lets vLLM 0.32's Ray executor run on CPU (for testing).

Set `VLLM_HELIX_CPU_RAY=1` and start Ray with logical GPUs (`ray start --head --num-gpus N` or
`ray.init(num_gpus=N)`, one per rank); without the switch `register()` returns None and vLLM picks its own
platform, so stock vLLM is untouched. The platform is `CpuPlatform` in every respect except
`ray_device_key = "GPU"`: each rank holds one logical Ray GPU and runs on CPU.

Why a platform plugin, and only that (vLLM 0.32 / Ray 2.60):

* `CpuPlatform.ray_device_key` is "" (`Platform.ray_device_key` in `vllm/platforms/interface.py`, not
  overridden in `vllm/platforms/cpu.py`). `initialize_ray_cluster` (`v1/executor/ray_utils.py`) then raises
  "current platform cpu does not support ray." in the engine, and so does
  `RayWorkerProc.get_node_and_physical_gpu_ids` (`v1/executor/ray_executor_v2.py`) in each worker actor.
* A `vllm.general_plugins` hook is too late on the worker side: `RayExecutorV2._init_executor` calls
  `get_node_and_physical_gpu_ids` on the fresh actors before `WorkerProc.__init__`, which is where
  `load_general_plugins` runs (`v1/worker/worker_base.py`). A `worker_process_setup_hook` in the actors'
  runtime env does not run there either. Platform plugins are consulted by
  `resolve_current_platform_cls_qualname` (`vllm/platforms/__init__.py`) on the first use of
  `current_platform` in every process, and an activated out-of-tree plugin wins over the built-in CPU one.
* The key must be "GPU": `ray.get_runtime_context().get_accelerator_ids()` knows only Ray's accelerator keys,
  so a custom resource such as "vcpu" fails with KeyError. With "GPU" each actor gets ids like ["0"], which
  `Platform.device_control_id_to_physical_device_id` maps to ints as on CUDA; the CPU worker ignores them.
  Thread binding still follows `VLLM_CPU_OMP_THREADS_BIND` and the local rank, so no other override is needed.

Every vLLM process needs the switch, the worker actors included. `vllm-helix serve-ray` forwards it in the
launcher actor's runtime env, which vLLM copies to its workers (`EngineArgs.create_engine_config` ->
`parallel_config.ray_runtime_env` -> `RayExecutorV2._build_runtime_env`); a plain `vllm serve
--distributed-executor-backend ray` needs it in the Ray nodes' environment (`VLLM_HELIX_CPU_RAY=1 ray start`).
Do not set `VLLM_TARGET_DEVICE=cpu`: that selects the built-in CPU platform before any plugin is asked.
If `VLLM_PLUGINS` is set, it must name `helix` (this entry point's name) for the switch to work.
"""

from __future__ import annotations

import os

__all__ = ["ENV_SWITCH", "PLATFORM_QUALNAME", "register"]

ENV_SWITCH = "VLLM_HELIX_CPU_RAY"
PLATFORM_QUALNAME = f"{__name__}.RayCpuPlatform"
_BUILTIN_CPU = "vllm.platforms.cpu.CpuPlatform"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH) == "1"


def register() -> str | None:
    """The `vllm.platform_plugins` entry point: our platform's qualname when switched on, else None."""
    if not enabled():
        return None
    from vllm.platforms import cpu_platform_plugin  # vLLM's own CPU detection: only the plain CPU build

    found = cpu_platform_plugin()
    if found != _BUILTIN_CPU:  # a CUDA build, or the zentorch platform: leave the choice to vLLM
        return None
    return PLATFORM_QUALNAME


def _make_platform_class() -> type:
    # Imported on demand: this module is loaded in every vLLM process (entry points are loaded before the
    # switch is read), and importing vllm.platforms.cpu must not happen on other platforms.
    from vllm.platforms.cpu import CpuPlatform

    class RayCpuPlatform(CpuPlatform):
        """vLLM 0.32 `CpuPlatform` whose ranks each take one logical Ray GPU (see the module docstring)."""

        ray_device_key: str = "GPU"

    RayCpuPlatform.__module__ = __name__
    RayCpuPlatform.__qualname__ = "RayCpuPlatform"
    return RayCpuPlatform


def __getattr__(name: str):
    # `resolve_obj_by_qualname(PLATFORM_QUALNAME)` imports this module and reads the attribute: build it then.
    if name == "RayCpuPlatform":
        cls = _make_platform_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
