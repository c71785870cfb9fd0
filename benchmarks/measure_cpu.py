# SPDX-License-Identifier: Apache-2.0
"""Measure the numbers behind the planner's ``cpu`` hardware profile (not a test; run it by hand).

    python benchmarks/measure_cpu.py

Prints one JSON line: read bandwidth (1 and all threads), bf16 matmul FLOP/s, gloo all-reduce latency and
bandwidth between 2 processes.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm_helix.loopback_group import free_port, init_loopback_gloo  # noqa: E402 — after the path insert


def _best(fn, reps=5):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _read_bw(threads):
    torch.set_num_threads(threads)
    x = torch.ones(128 * 1024 * 1024)  # 512 MB fp32
    return x.numel() * 4 / _best(lambda: x.sum())


def _gloo(rank, port, out):
    init_loopback_gloo(rank, 2, port, timeout_s=60)
    small, big = torch.ones(1024), torch.ones(16 * 1024 * 1024)  # 4 KB, 64 MB
    lat = _best(lambda: [dist.all_reduce(small) for _ in range(100)]) / 100
    t = _best(lambda: dist.all_reduce(big), reps=3)
    if rank == 0:
        out["gloo_allreduce_latency_us"] = lat * 1e6
        out["gloo_busbw_GBps"] = 2 * 0.5 * big.numel() * 4 / t / 1e9  # 2(n-1)/n bytes per rank
    dist.destroy_process_group()


if __name__ == "__main__":
    res = {"read_bw_1thread_GBps": _read_bw(1) / 1e9, "read_bw_all_GBps": _read_bw(os.cpu_count()) / 1e9}
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    torch.set_num_threads(1)
    res["bf16_mm_1thread_TFLOPs"] = 2 * 2048**3 / _best(lambda: a @ a) / 1e12
    out = mp.Manager().dict()
    mp.spawn(_gloo, args=(free_port(), out), nprocs=2)
    res.update(out)
    print(json.dumps({k: round(v, 3) for k, v in res.items()}))
