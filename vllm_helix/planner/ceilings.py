# SPDX-License-Identifier: Apache-2.0
"""The ceilings of a roofline on this machine, measured (pure torch; no vLLM), and the bound they give.

- Read bandwidth: a vectorised read (`x.sum()` over fp32) of a buffer of a given size — larger than the
  last-level cache for DRAM, or the size the data really has (a rank's KV over all layers may sit in a large
  L3). A copy is
  not a read probe: it writes as much as it reads.
- Compute rate: fp32 FMA via a square fp32 GEMM (what the native decode kernel's arithmetic runs on: bf16 is
  widened to fp32), and the bf16 GEMM rate (bf16 dot products where the CPU has them).

For an attention call that reads `nbytes` of KV and does `flops` (4·heads·keys·D for decode: Q·K and P·V):

    bound = max(nbytes / read_bandwidth, flops / compute_rate)      fraction of bound = bound / measured time
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

__all__ = [
    "read_bandwidth",
    "gemm_rate",
    "measure",
    "attention_bound_s",
    "attention_compute_rate",
    "decode_attention_cost",
    "median_s",
    "cpu_model",
    "machine",
]


def median_s(fn, reps: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `reps` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for the machine line of every benchmark."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(loadavg_before: tuple[float, float, float]) -> dict:
    """The "machine" record of a benchmark's JSON line: CPU model, cores, load average before and after."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
    }


def _with_threads(threads: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def read_bandwidth(nbytes: int, threads: int = 1, reps: int = 7) -> float:
    """Bytes per second of a vectorised read (`sum` over an fp32 buffer of `nbytes`), median of `reps`."""
    x = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
    return _with_threads(threads, lambda: x.numel() * 4 / median_s(lambda: x.sum(), reps))


def gemm_rate(dtype: torch.dtype = torch.float32, threads: int = 1, n: int = 1024, reps: int = 7) -> float:
    """FLOP per second of an n×n×n GEMM in `dtype` (2·n³ FLOP), median of `reps`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return _with_threads(threads, lambda: 2 * n**3 / median_s(lambda: a @ b, reps))


def measure(data_bytes: list[int] | None = None, threads: int = 1, dram_bytes: int = 1 << 30) -> dict:
    """The ceilings in one dict: read GB/s at DRAM size and at each size in `data_bytes`, fp32 / bf16
    GFLOP/s."""
    sizes = sorted({dram_bytes, *(data_bytes or [])})
    return {
        "threads": threads,
        "read_GBps": {str(s): round(read_bandwidth(s, threads) / 1e9, 2) for s in sizes},
        "dram_bytes": dram_bytes,
        "fp32_fma_GFLOPs": round(gemm_rate(torch.float32, threads) / 1e9, 1),
        "bf16_GFLOPs": round(gemm_rate(torch.bfloat16, threads, n=512, reps=3) / 1e9, 1),
    }


def decode_attention_cost(
    keys: int, heads: int, kv_heads: int, head_dim: int, dtype_bytes: int, batch: int = 1
) -> tuple[int, int]:
    """(KV bytes read, FLOP) of one decode attention call: every key and value row once, Q·K and P·V per
    head."""
    return (batch * keys * kv_heads * 2 * head_dim * dtype_bytes, batch * 4 * heads * keys * head_dim)


def attention_compute_rate(ceil: dict, dtype_bytes: int) -> float:
    """The compute ceiling (FLOP/s) of a decode attention call over a cache of `dtype_bytes`-byte elements,
    from `measure`'s dict: the fp32 FMA rate; for a bf16 cache the higher of it and the bf16 rate, since
    kernels multiply bf16 directly where the CPU has bf16 dot products or AMX (the native `avx512bf16` build
    does). The higher rate keeps the bound a lower bound: a fraction of it never exceeds 1 by crediting the
    kernel with compute the machine can do faster."""
    rate = ceil["fp32_fma_GFLOPs"]
    if dtype_bytes == 2:
        rate = max(rate, ceil.get("bf16_GFLOPs") or 0.0)
    return rate * 1e9


def attention_bound_s(nbytes: int, flops: int, read_Bps: float, flops_per_s: float) -> float:
    """The roofline bound of a call: max(bytes / read bandwidth, FLOP / compute rate), in seconds."""
    return max(nbytes / read_Bps, flops / flops_per_s)
