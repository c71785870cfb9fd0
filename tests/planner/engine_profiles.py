# SPDX-License-Identifier: Apache-2.0
"""Synthetic CPU engine profiles and bench_decode results for the planner tests (no measuring)."""

from __future__ import annotations

from vllm_helix.planner import cpu_profile as cp

US = 1e-6


def profile(
    rate_gflops: float = 20.0,
    read_gbps: float = 10.0,
    coll_us: float = 50.0,
    executor_us: float | None = 100.0,
    step_overhead_s: float | None = 0.005,
    cache_boost: float = 4.0,
) -> cp.CpuProfile:
    """A 2-core profile with one flat attention rate for every kernel and shape; 1-thread reads of 1 MiB are
    ``cache_boost`` times faster than of 1 GiB."""
    flat = tuple((k, 4 * h * k * 64 / (rate_gflops * 1e9)) for k in (1024, 131072) for h in (1,))

    def attn(kernel: str, heads: int, threads: int, ranks: int) -> cp.AttentionRate:
        pts = tuple((k, s * heads) for k, s in flat)  # s per call scales with heads: the same GFLOP/s
        return cp.AttentionRate(kernel, heads, 1, 64, threads, ranks, pts)

    return cp.CpuProfile(
        name="test",
        cores=2,
        read_bw={
            1: ((1 << 20, cache_boost * read_gbps * 1e9), (1 << 30, read_gbps * 1e9)),
            2: ((1 << 30, read_gbps * 1e9),),
        },
        gemm_flops={"fp32": {1: 70e9, 2: 140e9}},
        gemv=(cp.Gemv(1, 1, 5 * US, 9e9), cp.Gemv(1, 8, 6 * US, 5e9), cp.Gemv(2, 1, 8 * US, 16e9)),
        attention=(attn("vllm", 8, 2, 1), attn("vllm", 4, 1, 2), attn("helix", 8, 1, 2)),
        collectives={
            name: cp.Collective(
                2, 1024, coll_us * US, None if name.startswith("gloo_all_to") else coll_us * US
            )
            for name in cp.COLLECTIVES
        },
        combine_s=10 * US,
        executor_round_trip_s=None if executor_us is None else executor_us * US,
        step_overhead_s=step_overhead_s,
        step_overhead_source="test",
        meta={"note": "synthetic"},
    )


def bench_result() -> dict:
    """A bench_decode-shaped result: two repetitions at 4K, Helix counters, a config the model skips."""
    rows = {
        "stock_tp1": [(4096, 1, 10.0, 0), (4096, 1, 12.0, 1), (131072, 1, 60.0, 0)],
        "stock_tp2": [(4096, 1, 11.0, 0), (131072, 1, 40.0, 0)],
        "helix_tp2_dcp2": [(4096, 1, 14.0, 0), (131072, 1, 30.0, 0)],
        "stock_tp7_weird": [(4096, 1, 99.0, 0)],
    }
    results = {}
    for cfg, rs in rows.items():
        out = []
        for ctx, batch, ms, rep in rs:
            r = {"context": ctx, "batch": batch, "tpot_ms": ms, "rep": rep}
            if cfg.startswith("helix"):
                r["helix_decode"] = [
                    {
                        "rank": i,
                        "attention_ms_per_call": 0.5 + i,
                        "exchange_ms_per_call": 0.2,
                        "all_reduce_ms_per_call": 0.05,
                    }
                    for i in range(2)
                ]
            out.append(r)
        results[cfg] = {"config": cfg, "rows": out}
    model = {
        "name": "mqa",
        "heads": 8,
        "kv_heads": 1,
        "head_dim": 64,
        "layers": 4,
        "intermediate": 1024,
        "vocab": 1024,
    }
    return {"benchmark": "decode", "model": model, "results": results, "summary": {"table": []}}
