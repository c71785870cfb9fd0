# SPDX-License-Identifier: Apache-2.0
"""``vllm-helix calibrate``: time the primitives of a vLLM decode step on this CPU, write a ``CpuProfile``.

    vllm-helix calibrate --out cpu_profile.json                                   # measure (≈ 30-60 s)
    vllm-helix calibrate --profile cpu_profile.json --from-bench decode.json --out cpu_profile.json  # fit F
    vllm-helix plan --hardware cpu_profile.json --model tiny-mqa --contexts 4K,16K,64K,128K --batch 1

The measuring is ``profile_measurement.measure`` (at the shapes of ``--model``, default the bench_decode
model ``tiny-mqa``; ``--no-vllm`` measures without vLLM's kernels and executor queue; ``--quick`` at smaller
sizes). Nothing is fitted to a vLLM benchmark except, when asked, the per-step fixed cost F:
``--step-overhead-ms X`` sets it, ``--from-bench DECODE.json`` fits it to the stock TP 1 row at the shortest
context S₀ (batch 1) of a ``benchmarks/bench_decode.py`` result, at that result's model's shapes:

    F = max(0, TPOT_measured(stock TP 1, S₀, B = 1) − TPOT_model(stock TP 1, S₀, B = 1; F = 0))

(``engine_cpu.fit_step_overhead``). Prints one JSON line of the profile's headline numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from vllm_helix.planner.cpu_profile import CpuProfile
from vllm_helix.planner.engine_cpu import bench_model, bench_tpots, fit_step_overhead
from vllm_helix.planner.models import ModelSpec, load_model
from vllm_helix.planner.profile_measurement import measure


def apply_overhead(
    profile: CpuProfile, m: ModelSpec | None, step_overhead_ms: float | None, from_bench: str | None
) -> CpuProfile:
    """F from ``--step-overhead-ms`` or fitted to the stock TP 1 row at the shortest context (batch 1) of a
    bench_decode result (its model's shapes, not ``m``)."""
    if step_overhead_ms is not None:
        return replace(
            profile, step_overhead_s=step_overhead_ms / 1e3, step_overhead_source="given: --step-overhead-ms"
        )
    if from_bench is None:
        return profile
    result = json.loads(Path(from_bench).read_text())
    tpots = bench_tpots(result)
    rows = sorted((ctx, ms) for (cfg, ctx, b), ms in tpots.items() if cfg == "stock_tp1" and b == 1)
    if not rows:
        raise ValueError(f"{from_bench}: no stock_tp1 row at batch 1 to fit the step overhead to")
    ctx, ms = rows[0]
    return fit_step_overhead(
        profile, bench_model(result.get("model", {})), ms / 1e3, ctx, 1, source=from_bench
    )


def _build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vllm-helix calibrate",
        description="Measure this CPU's decode-step primitives (bandwidth, GEMV, attention kernels, "
        "collectives, executor round trip) and write a hardware profile for "
        "`vllm-helix plan --hardware PROFILE.json`.",
    )
    ap.add_argument("--out", default=None, help="profile to write (default cpu_profile.json, or --profile)")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (a smoke run, ~15 s)")
    ap.add_argument("--model", default="tiny-mqa", help="shapes to measure at (built-in name or config.json)")
    ap.add_argument(
        "--no-vllm", action="store_true", help="do not import vLLM (no vLLM kernel / executor queue)"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for the 2-rank part (killed after)")
    ap.add_argument("--profile", help="start from this profile instead of measuring (to set or fit F only)")
    ap.add_argument("--step-overhead-ms", type=float, help="set the per-step fixed cost F")
    ap.add_argument(
        "--from-bench",
        metavar="DECODE.json",
        help="fit F to the stock_tp1 row at the shortest context (batch 1) of a bench_decode result",
    )
    return ap


def calibrate_main(argv: list[str]) -> int:
    """Entry point of ``vllm-helix calibrate``; prints one JSON summary line, returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        m = load_model(args.model)
        if args.profile:
            profile = CpuProfile.load(args.profile)
        else:
            profile = measure(m, quick=args.quick, use_vllm=not args.no_vllm, timeout_s=args.timeout)
        profile = apply_overhead(profile, m, args.step_overhead_ms, args.from_bench)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = args.out or args.profile or "cpu_profile.json"
    profile.save(out)
    print(json.dumps(summarize(profile, out)))
    return 0


def summarize(p: CpuProfile, path: str) -> dict:
    """The profile's headline numbers (ms, GB/s, GFLOP/s)."""
    return {
        "profile": path,
        "cores": p.cores,
        "read_GBps_1thread": {str(b): round(v / 1e9, 2) for b, v in p.read_bw[1]},
        "gemv": [
            {
                "threads": g.threads,
                "batch": g.batch,
                "call_us": round(g.call_s * 1e6, 2),
                "GBps": round(g.bytes_per_s / 1e9, 2),
            }
            for g in p.gemv
        ],
        "attention_GFLOPs": [
            {
                "kernel": a.kernel,
                "heads": a.heads,
                "threads": a.threads,
                "ranks": a.ranks,
                "by_keys": {str(k): round(a.gflops_at(k), 1) for k, _ in a.points},
            }
            for a in p.attention
        ],
        "collectives_us": {
            n: {
                "idle": round(c.idle_s * 1e6, 1),
                "in_step": None if c.in_step_s is None else round(c.in_step_s * 1e6, 1),
            }
            for n, c in p.collectives.items()
        },
        "combine_us": round(p.combine_s * 1e6, 2),
        "executor_round_trip_us": None
        if p.executor_round_trip_s is None
        else round(p.executor_round_trip_s * 1e6, 1),
        "vllm_tp_all_reduce": p.vllm_tp_all_reduce,
        "step_overhead_ms": None if p.step_overhead_s is None else round(p.step_overhead_s * 1e3, 3),
        "step_overhead_source": p.step_overhead_source,
        "seconds": p.meta.get("seconds"),
    }
