# SPDX-License-Identifier: Apache-2.0
"""One executor round trip per decode step instead of vLLM 0.32's two.

vLLM 0.32's `vllm.v1.engine.core.EngineCore.step` asks the workers twice per step: the RPC `execute_model`
(forward pass; the model runner keeps its state and returns None), then, *only if that returned None*, the RPC
`sample_tokens(grammar_output)` with `grammar_output = Scheduler.get_grammar_bitmask(scheduler_output)`. That
bitmask is None exactly when `SchedulerOutput.has_structured_output_requests` is False (set by
`Scheduler._update_after_schedule` inside `schedule()`, before the output is sent). So a worker that samples
right after its forward pass — `model_runner.sample_tokens(None)`, the very call the second RPC would make —
and returns the `ModelRunnerOutput` from `execute_model` gives the engine core the same output one round trip
earlier: on 2 cores shared by the engine core and the ranks every round trip is a broadcast, a wake-up of each
rank and a reply.

Where this is not exact, vLLM's two-RPC protocol stays:
- a step with structured output (the grammar bitmask comes from the engine core after the forward pass);
- the engine core's batch queue (`EngineCore.step_with_batch_queue`, used when
  `VllmConfig.max_concurrent_batches > 1`: async scheduling or pipeline parallelism), which always calls
  `sample_tokens` after `execute_model`;
- Ray's compiled DAG (`vllm.v1.executor.ray_utils.RayWorkerWrapper.execute_model_ray`) calls the model
  runner directly and never reaches `Worker.execute_model`: already one round trip.
"""

from __future__ import annotations

from typing import Any


def samples_with_forward(vllm_config: Any, scheduler_output: Any) -> bool:
    """Whether this step's `sample_tokens(None)` may run inside `execute_model` (see the module docstring):
    the engine core steps one batch at a time and no scheduled request needs a grammar bitmask."""
    return vllm_config.max_concurrent_batches == 1 and not scheduler_output.has_structured_output_requests
