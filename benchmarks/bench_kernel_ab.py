# SPDX-License-Identifier: Apache-2.0
"""The native CPU decode kernel's time per call with its KV cache-resident: what a kernel change does to the
compute, without the read bandwidth (and its noise on a shared VM) in the way.

One layer's KV (D 64, block 128) is reused call after call, one thread; per shape the minimum over `--rounds`
batches of `--calls` calls (the minimum: interference only ever adds time). Shapes: MQA with 8, 4 and 16 query
heads (a Helix KVP 2 rank, a stock TP 2 rank, a wide group), fp32 and bf16, SmolLM2's 9/3 grouping, and one
32K-key case that no longer fits the caches.

To compare two versions of the kernel, run it in both checkouts, alternately, a few times (the op library is
built per checkout: set `TORCH_EXTENSIONS_DIR` per checkout so they do not share a build):

    python benchmarks/bench_kernel_ab.py --label after                # in this checkout
    TORCH_EXTENSIONS_DIR=/tmp/ext-other python benchmarks/bench_kernel_ab.py --label before   # in the other

Prints ONE JSON line: microseconds per call per shape ("heads/kv_heads keys dtype").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DIM, BLOCK = 64, 128
SHAPES = [  # (heads, kv_heads, keys, dtype name)
    (8, 1, 4096, "bfloat16"),
    (4, 1, 8192, "bfloat16"),
    (16, 1, 2048, "bfloat16"),
    (8, 1, 4096, "float32"),
    (9, 3, 4096, "bfloat16"),
    (8, 1, 32768, "bfloat16"),
]


def time_shape(heads: int, kv_heads: int, keys: int, dtype, rounds: int, calls: int) -> float:
    """Seconds per call, minimum over `rounds` batches of `calls`."""
    import torch

    from vllm_helix.kernels import cpu_decode_attention

    nb = keys // BLOCK
    kv = torch.randn(2, nb, BLOCK, kv_heads, DIM).to(dtype)  # (2, blocks, block, kv_heads, D)
    q = torch.randn(1, heads, DIM).to(dtype)  # (1, heads, D)
    table = torch.arange(nb, dtype=torch.int32)[None]  # (1, blocks)
    lens = torch.tensor([keys])

    def call():
        return cpu_decode_attention.partial_decode_attention(q, kv[0], kv[1], table, lens, DIM**-0.5)

    for _ in range(calls):
        call()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()

    import torch

    from vllm_helix.kernels import cpu_build
    from vllm_helix.planner import ceilings

    torch.set_num_threads(1)
    native = cpu_build.status()
    if not native["available"]:
        raise SystemExit(f"native CPU ops unavailable: {native['reason']}")
    load_before = os.getloadavg()
    us = {
        f"{h}/{k} {n} {d}": round(time_shape(h, k, n, getattr(torch, d), args.rounds, args.calls) * 1e6, 1)
        for h, k, n, d in SHAPES
    }
    print(
        json.dumps(
            {
                "benchmark": "kernel_ab",
                "label": args.label,
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": ceilings.machine(load_before),
                "native": native,
                "threads": 1,
                "us_per_call": us,
            }
        )
    )


if __name__ == "__main__":
    main()
