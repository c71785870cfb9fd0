# SPDX-License-Identifier: Apache-2.0
"""A ``CpuProfile`` of this machine, measured: what ``engine_cpu`` prices a vLLM decode step with (F unset).

In this process, with all cores' threads (what stock TP 1 gets): vectorised read bandwidth (1 thread at each
buffer size of ``Sizes.read_bytes``, all threads at the largest; ``ceilings.read_bandwidth``), fp32 / bf16
GEMM rates (1 and all threads; reported, not used), the linear-op fit ``t = c + W / bw`` per batch and the
decode-attention rate of vLLM's kernel (Helix's without vLLM) for all Q heads (``kernel_timing``). Then
the 2-rank part (``rank_timing``), from which the profile takes:

    attention, gemv (1 thread)    the mean of the two ranks' points / fitted c and bw
    collective idle_s             the mean over ranks of the back-to-back median
    collective in_step_s          the mean over ranks and both synthetic grids of the in-step median
                                  (None for a collective no step calls: gloo all-to-all)
    combine_s                     the mean over ranks
    executor_round_trip_s         the mean over both grids of the parent's executor share (None without vLLM)

``meta`` keeps how the run went (CPU, ISA, versions, load, seconds per phase) and the synthetic steps' own
timings, in ms.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import replace

import torch

from vllm_helix.planner import ceilings
from vllm_helix.planner.calibration_sizes import BF16, FULL, QUICK, RANKS, Sizes
from vllm_helix.planner.cpu_profile import Collective, CpuProfile
from vllm_helix.planner.kernel_timing import Attention, fit_gemv, load_vllm_ops
from vllm_helix.planner.models import ModelSpec
from vllm_helix.planner.rank_timing import run_ranks


def measure(
    m: ModelSpec,
    quick: bool = False,
    use_vllm: bool = True,
    timeout_s: float = 300.0,
    sizes: Sizes | None = None,
) -> CpuProfile:
    """Measure everything (module docstring) at the shapes of ``m`` and return the profile, F unset.
    ``sizes`` overrides ``QUICK`` / ``FULL`` (tests)."""
    t_start = time.perf_counter()
    sizes = sizes or (QUICK if quick else FULL)
    phases: dict[str, float] = {}
    last = [t_start]

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name], last[0] = round(now - last[0], 2), now

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads_before = torch.get_num_threads()
    ops = load_vllm_ops() if use_vllm else None
    use_vllm = use_vllm and ops is not None
    notes = [] if use_vllm else ["vLLM not used: no executor round trip, Helix's kernel stands in for vLLM's"]
    try:
        # this process, all cores: what stock TP 1 runs
        read_bw = {1: tuple((b, ceilings.read_bandwidth(b, 1, sizes.reps)) for b in sizes.read_bytes)}
        big = max(sizes.read_bytes)
        read_bw[cores] = ((big, ceilings.read_bandwidth(big, cores, sizes.reps)),)
        lap("read_bandwidth")
        gemm = {}
        if sizes.gemm:
            gemm = {
                "fp32": {t: ceilings.gemm_rate(torch.float32, t) for t in sorted({1, cores})},
                "bf16": {t: ceilings.gemm_rate(BF16, t, n=512, reps=3) for t in sorted({1, cores})},
            }
        lap("gemm")
        gemv, gemv_impl = fit_gemv(sizes, cores, use_vllm)
        lap("gemv")
        attn = Attention(
            "vllm" if ops else "helix",
            m.n_heads,
            m.n_kv_heads,
            m.head_dim,
            max(sizes.attention_keys),
            m.n_layers,
            ops,
        )
        attention = [attn.measure_rate(sizes.attention_keys, cores, 1, sizes.reps)]
        del attn
        lap("attention")
        # 2 ranks, one core each: TP 2 / Helix KVP 2
        ranks, parent = run_ranks(m, sizes, use_vllm, timeout_s)
        lap("ranks")
    finally:
        torch.set_num_threads(threads_before)
    for r0, r1 in zip(ranks[0]["attention"], ranks[1]["attention"], strict=True):
        pts = tuple((k, (s0 + s1) / 2) for (k, s0), (_, s1) in zip(r0.points, r1.points, strict=True))
        attention.append(replace(r0, points=pts))
    for g0, g1 in zip(ranks[0]["gemv"], ranks[1]["gemv"], strict=True):
        gemv.append(
            replace(g0, call_s=(g0.call_s + g1.call_s) / 2, bytes_per_s=(g0.bytes_per_s + g1.bytes_per_s) / 2)
        )
    in_step: dict[str, list[float]] = {}
    for r in ranks:
        for calls in (r["steps"]["stock_tp2"]["calls_s"], r["steps"]["helix_tp2_dcp2"]["calls_s"]):
            for name, s in calls.items():
                in_step.setdefault(name, []).append(s)
    collectives = {
        name: Collective(
            RANKS,
            ranks[0]["idle"][name][0],
            statistics.fmean(r["idle"][name][1] for r in ranks),
            statistics.fmean(in_step[name]) if name in in_step else None,
        )
        for name in ranks[0]["idle"]
    }
    executor = statistics.fmean(p["executor_s"] for p in parent.values()) if parent else None
    vllm_shm = bool(ops is not None and hasattr(torch.ops._C, "init_shm_manager"))
    return CpuProfile(
        name=f"cpu-{platform.node() or 'host'}",
        cores=cores,
        read_bw=read_bw,
        gemm_flops=gemm,
        gemv=tuple(gemv),
        attention=tuple(attention),
        collectives=collectives,
        combine_s=statistics.fmean(r["combine_s"] for r in ranks),
        executor_round_trip_s=executor,
        vllm_tp_all_reduce="shm" if vllm_shm else "gloo",
        meta={
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": ceilings.cpu_model(),
            "isa": _read_native_isa(),
            "torch": torch.__version__,
            "vllm": _read_vllm_version() if use_vllm else None,
            "quick": quick,
            "model": m.name,
            "gemv_impl": gemv_impl,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(time.perf_counter() - t_start, 1),
            "phase_seconds": phases,
            "synthetic_steps": {
                name: {
                    "context": sizes.step_context,
                    "rank_step_ms": [round(r["steps"][name]["step_s"] * 1e3, 4) for r in ranks],
                    "calls_ms": [
                        {k: round(v * 1e3, 4) for k, v in r["steps"][name]["calls_s"].items()} for r in ranks
                    ],
                    **(
                        {k.removesuffix("_s") + "_ms": round(v * 1e3, 4) for k, v in parent[name].items()}
                        if name in parent
                        else {}
                    ),
                }
                for name in ("stock_tp2", "helix_tp2_dcp2")
            },
            "notes": notes,
        },
    )


def _read_native_isa() -> str | None:
    try:
        from vllm_helix.kernels import cpu_build

        return cpu_build.status()["isa"]
    except Exception:  # noqa: BLE001
        return None


def _read_vllm_version() -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version("vllm")
    except Exception:  # noqa: BLE001
        return None
