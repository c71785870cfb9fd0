# SPDX-License-Identifier: Apache-2.0
"""Is decode attention on this CPU compute- or bandwidth-bound? One core, median of repetitions.

Measures: a square GEMM in bf16 and fp32 (the core's practical FLOP rate), PyTorch's CPU flash kernel on one
decode step as Helix runs it (8 query rows of one KV head over S keys, bf16, D 64: 4·rows·S·D FLOP) with the
KV bytes it reads per second, and a DRAM-sized copy (bytes read per second). If the flash kernel's KV rate is
far below the copy rate while its FLOP rate is near the GEMM rate, attention is compute-bound and halving the
KV a rank reads (Helix) does not halve its time.

Prints ONE JSON line.  python benchmarks/bench_compute_rate.py
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time


def _median_s(fn, reps: int = 10) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    result = {"benchmark": "compute_rate", "threads": 1, "loadavg": os.getloadavg()}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        result[f"gemm_{name}_GFLOPs"] = round(
            2 * 1024**3 / _median_s(functools.partial(torch.matmul, a, b)) / 1e9, 1
        )
    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    rows, dim = 8, 64
    for keys in (8192, 32768, 65536):
        q = torch.randn(1, 1, rows, dim, dtype=torch.bfloat16)  # (1, kv_heads, query rows, D)
        k = torch.randn(1, 1, keys, dim, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        t = _median_s(functools.partial(sdpa, q, k, v, scale=dim**-0.5))
        result[f"flash_decode_{keys}"] = {
            "ms": round(t * 1e3, 3),
            "GFLOPs": round(4 * rows * keys * dim / t / 1e9, 1),
            "kv_GBps": round(2 * keys * dim * 2 / t / 1e9, 2),
        }
    src = torch.empty(256 * 2**20 // 2, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    result["copy_256MiB_read_GBps"] = round(256 * 2**20 / _median_s(lambda: dst.copy_(src), 5) / 1e9, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
