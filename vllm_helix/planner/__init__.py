# SPDX-License-Identifier: Apache-2.0
"""Helix planner and simulator: pure-Python latency/memory model, grid search and Pareto frontiers.

No vLLM or torch import; matplotlib only for ``plot``. Entry points: ``cli.plan_main``, ``cli.simulate_main``.
``engine_cpu`` (pure) models vLLM's decode step on a CPU from a measured profile (``cpu_profile``);
``profile_measurement`` (torch, and vLLM where it imports; not imported here) measures that profile from
``kernel_timing``, ``rank_timing`` and ``synthetic_step``: ``calibration.calibrate_main``.
"""

from vllm_helix.planner.cost import PRECISIONS, Estimate, Grid, Precision, estimate
from vllm_helix.planner.hardware import PROFILES, Hardware, get_hardware
from vllm_helix.planner.models import BUILTIN, ModelSpec, load_model

__all__ = [
    "BUILTIN",
    "PRECISIONS",
    "PROFILES",
    "Estimate",
    "Grid",
    "Hardware",
    "ModelSpec",
    "Precision",
    "estimate",
    "get_hardware",
    "load_model",
]
