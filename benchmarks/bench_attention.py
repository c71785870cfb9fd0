# SPDX-License-Identifier: Apache-2.0
"""Decode attention per layer against its roofline, and what KV sharding itself buys (one thread, side by
side).

For a global context S the same kernel runs two rank's shares of one MQA layer (8 query heads, 1 KV head,
head_dim 64, bf16, block 128, the Helix token-major cache):

  helix   Helix KVP 2 × TPA 1: all 8 heads over S/2 keys (half the sequence)
  stock   stock TP 2: 4 heads over all S keys (the single KV head duplicated on both ranks)

with each implementation: `native` (the C++ kernel, kernels/csrc) and `torch` (the torch path it replaced,
still the fallback). Each call reads KV of one of `--layers` layers in turn, so the bytes in play are those of
a whole decode step, as in the engine. The ceilings are measured in the same run
(vllm_helix.planner.ceilings): vectorised read bandwidth at DRAM size and at the step's KV size, and the fp32
FMA and bf16 rates (bf16 caches: the higher of the two, `ceilings.attention_compute_rate` — the avx512bf16
kernel multiplies bf16 directly).

    bound = max(KV bytes / read bandwidth at the step's KV size, FLOP / compute rate)

Reported: ms per layer call (median over repetitions), fraction of the bound, and stock/helix time per
implementation — at the bandwidth bound that ratio tends to 2× (the paper's thesis).

Prints ONE JSON line.

    python benchmarks/bench_attention.py [--contexts 16384,32768,65536,131072] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORKS = {"helix": dict(heads=8, kv_heads=1, share=2), "stock": dict(heads=4, kv_heads=1, share=1)}
DIM, BLOCK = 64, 128


def make_layers(keys: int, batch: int, kv_heads: int, layers: int, dtype):
    """Per layer: (key_cache, value_cache) views of one token-major buffer, a block table of consecutive
    blocks."""
    import torch

    nb = -(-keys // BLOCK)
    caches = []
    for _ in range(layers):
        kv = torch.randn(2, nb * batch, BLOCK, kv_heads, DIM).to(dtype)
        caches.append((kv[0], kv[1]))
    table = torch.arange(nb * batch, dtype=torch.int32).view(batch, nb)
    return caches, table, torch.full((batch,), keys)


def time_calls(fn, caches, reps: int) -> float:
    """Median over `reps` of the mean time of one call per layer (all layers in turn)."""
    for kc, vc in caches:
        fn(kc, vc)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for kc, vc in caches:
            fn(kc, vc)
        samples.append((time.perf_counter() - t0) / len(caches))
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap.add_argument("--contexts", type=ints, default=[16384, 32768, 65536, 131072])
    ap.add_argument("--batches", type=ints, default=[1, 8])
    ap.add_argument("--batch8-max-context", type=int, default=65536)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--impls", default="native,torch")
    args = ap.parse_args()

    import torch

    from vllm_helix.attention.torch_attention import decode_attention_reference
    from vllm_helix.kernels import cpu_build, cpu_decode_attention
    from vllm_helix.planner import ceilings

    torch.set_num_threads(1)
    dtype, item = torch.bfloat16, 2
    native = cpu_build.status()
    impls = {
        "native": lambda q, kc, vc, t, n: cpu_decode_attention.partial_decode_attention(
            q, kc, vc, t, n, DIM**-0.5
        ),
        "torch": lambda q, kc, vc, t, n: decode_attention_reference(q, kc, vc, t, n, DIM**-0.5),
    }
    impls = {
        k: v
        for k, v in impls.items()
        if k in args.impls.split(",") and (k != "native" or native["available"])
    }
    cases = [(c, b) for c in args.contexts for b in args.batches if b == 1 or c <= args.batch8_max_context]
    step_bytes = sorted(
        {
            args.layers
            * ceilings.decode_attention_cost(c // w["share"], w["heads"], w["kv_heads"], DIM, item, b)[0]
            for c, b in cases
            for w in WORKS.values()
        }
    )
    ceil = ceilings.measure(step_bytes)
    load_before = os.getloadavg()
    rows = []
    for ctx, batch in cases:
        for work, w in WORKS.items():
            keys = ctx // w["share"]
            caches, table, lens = make_layers(keys, batch, w["kv_heads"], args.layers, dtype)
            q = torch.randn(batch, w["heads"], DIM).to(dtype)
            nbytes, flops = ceilings.decode_attention_cost(keys, w["heads"], w["kv_heads"], DIM, item, batch)
            bw = ceil["read_GBps"][str(args.layers * nbytes)] * 1e9
            rate = ceilings.attention_compute_rate(ceil, item)
            bound = ceilings.attention_bound_s(nbytes, flops, bw, rate)
            row = {
                "context": ctx,
                "batch": batch,
                "work": work,
                "heads": w["heads"],
                "keys": keys,
                "kv_bytes": nbytes,
                "flops": flops,
                "read_GBps_at_step_size": round(bw / 1e9, 2),
                "bound_ms": round(bound * 1e3, 4),
                "bound_by": "bandwidth" if nbytes / bw >= flops / rate else "compute",
            }
            for name, fn in impls.items():
                t = time_calls(
                    lambda kc, vc, fn=fn, q=q, table=table, lens=lens: fn(q, kc, vc, table, lens),
                    caches,
                    args.reps,
                )
                row[f"{name}_ms"] = round(t * 1e3, 4)
                row[f"{name}_fraction_of_bound"] = round(bound / t, 3)
                row[f"{name}_GFLOPs"] = round(flops / t / 1e9, 1)
                row[f"{name}_GBps"] = round(nbytes / t / 1e9, 2)
            rows.append(row)
            print(f"[bench_attention] {json.dumps(row)}", file=sys.stderr, flush=True)
            del caches
    ablation = []
    for ctx, batch in cases:
        h = next(r for r in rows if r["context"] == ctx and r["batch"] == batch and r["work"] == "helix")
        s = next(r for r in rows if r["context"] == ctx and r["batch"] == batch and r["work"] == "stock")
        entry = {"context": ctx, "batch": batch, "bound_ratio": round(s["bound_ms"] / h["bound_ms"], 3)}
        for name in impls:
            entry[f"{name}_stock_over_helix"] = round(s[f"{name}_ms"] / h[f"{name}_ms"], 3)
        if "native" in impls and "torch" in impls:
            entry["native_helix_vs_torch_helix"] = round(h["torch_ms"] / h["native_ms"], 3)
        ablation.append(entry)
    print(
        json.dumps(
            {
                "benchmark": "attention",
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": ceilings.machine(load_before),
                "native": native,
                "dtype": "bfloat16",
                "threads": 1,
                "layers": args.layers,
                "reps": args.reps,
                "ceilings": ceil,
                "rows": rows,
                "ablation": ablation,
            }
        )
    )


if __name__ == "__main__":
    main()
