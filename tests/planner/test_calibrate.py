# SPDX-License-Identifier: Apache-2.0
"""``vllm-helix calibrate`` measuring for real at tiny sizes, without vLLM (no vLLM kernel, no executor
queue): two spawned ranks, shared-memory and gloo collectives with timeouts, a profile the engine model
takes. A smoke test of the plumbing; the numbers themselves are not checked."""

from __future__ import annotations

import time

import pytest

from vllm_helix.kernels import cpu_build
from vllm_helix.planner import cpu_profile as cp
from vllm_helix.planner import engine_cpu as ec
from vllm_helix.planner.calibration_sizes import Sizes
from vllm_helix.planner.models import ModelSpec
from vllm_helix.planner.profile_measurement import measure

pytestmark = pytest.mark.timeout(180)

TINY = ModelSpec("tiny", "", 2, 128, 4, 1, 32, 256, 256)
SIZES = Sizes(
    read_bytes=(1 << 20, 4 << 20),
    attention_keys=(256, 1024),
    gemv_shapes=((128, 128), (512, 256)),
    gemv_batches=(1,),
    reps=3,
    coll_reps=20,
    step_context=512,
    steps=3,
    gemm=False,
)


@pytest.fixture(autouse=True)
def _native_ops():
    reason = cpu_build.load()
    if reason is not None and cpu_build.DISABLE_ENV in reason:
        pytest.skip(reason)
    assert reason is None, reason


def test_measure_tiny_without_vllm():
    t0 = time.perf_counter()
    p = measure(TINY, use_vllm=False, timeout_s=90, sizes=SIZES)
    assert time.perf_counter() - t0 < 120
    assert p.cores >= 1 and set(p.read_bw) == {1, p.cores}
    assert [b for b, _ in p.read_bw[1]] == [1 << 20, 4 << 20] and all(v > 0 for _, v in p.read_bw[1])
    assert {g.threads for g in p.gemv} == {1, p.cores} and all(g.bytes_per_s > 0 for g in p.gemv)
    kernels = {(a.kernel, a.heads, a.threads, a.ranks) for a in p.attention}
    assert kernels == {("helix", 4, p.cores, 1), ("helix", 4, 1, 2), ("helix", 2, 1, 2)}  # no vLLM: Helix's
    for a in p.attention:
        assert [k for k, _ in a.points] == [256, 1024] and all(s > 0 for _, s in a.points)
    assert set(p.collectives) == set(cp.COLLECTIVES)
    for name in ("shm_all_to_all", "shm_all_reduce", "gloo_all_reduce", "gloo_all_gather"):
        c = p.collectives[name]
        assert c.ranks == 2 and c.idle_s > 0 and c.in_step_s is not None and c.in_step_s > 0
    assert p.collectives["gloo_all_to_all"].in_step_s is None  # not in a step
    assert p.combine_s > 0 and p.executor_round_trip_s is None and p.step_overhead_s is None
    assert p.meta["synthetic_steps"]["helix_tp2_dcp2"]["context"] == 512
    assert cp.CpuProfile.from_dict(p.to_dict()) == p
    for g in ec.engine_grids(TINY, 2):
        pred = ec.tpot(p, TINY, g, 4096)
        assert pred.tpot_s > 0 and any("step overhead" in n for n in pred.notes)
