# SPDX-License-Identifier: Apache-2.0
"""CPU expert parallelism: a guarded wrapper of vLLM 0.32's
`vllm.model_executor.layers.fused_moe.experts.cpu_moe.CPUUnquantizedExperts.apply`.

Why: that `apply` ignores its `expert_map` and hands the router's global expert ids to the C++
`cpu_fused_moe`, whose weights hold only the E/N local experts — a segfault under `--enable-expert-parallel`
(the math and the story: `vllm_helix.moe`). The wrapper maps the ids first (`remap_topk_to_local`).

Guard: installed only by the Helix worker (CPU, MLA MoE model, expert parallelism), in its own process; the
wrapper acts only when vLLM passes an `expert_map`.
"""

from __future__ import annotations

import functools

from vllm.logger import init_logger

from vllm_helix.compat import wrap_once
from vllm_helix.moe import remap_topk_to_local

logger = init_logger("vllm.helix.moe")  # under "vllm" so vLLM's log handlers show it

__all__ = ["install_cpu_expert_parallel"]


def _wrap_apply(original):
    @functools.wraps(original)
    def apply(
        self,
        output,
        hidden_states,
        w1,
        w2,
        topk_weights,
        topk_ids,
        activation,
        global_num_experts,
        expert_map,
        *args,
        **kwargs,
    ):
        if expert_map is not None:
            topk_ids, topk_weights = remap_topk_to_local(topk_ids, topk_weights, expert_map)
            if not getattr(apply, "_logged", False):
                apply._logged = True
                logger.info(
                    "Helix: CPU expert parallelism — routing %d global experts to %d local ones through "
                    "expert_map before cpu_fused_moe (vLLM's CPU path ignores expert_map)",
                    global_num_experts,
                    w1.shape[0],
                )
        return original(
            self,
            output,
            hidden_states,
            w1,
            w2,
            topk_weights,
            topk_ids,
            activation,
            global_num_experts,
            expert_map,
            *args,
            **kwargs,
        )

    return apply


def install_cpu_expert_parallel() -> bool:
    """Make vLLM's unquantized CPU MoE experts honour `expert_map` (this process only). Returns True if
    installed now. Quantized CPU expert classes are left alone (Helix's CPU tests are float32)."""
    from vllm.model_executor.layers.fused_moe.experts import cpu_moe

    if not wrap_once(cpu_moe.CPUUnquantizedExperts, "apply", _wrap_apply):
        return False
    logger.info(
        "Helix: installed expert_map-aware dispatch for CPUUnquantizedExperts (--enable-expert-parallel)"
    )
    return True
