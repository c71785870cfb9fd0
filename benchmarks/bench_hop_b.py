# SPDX-License-Identifier: Apache-2.0
"""HOP-B on vs off: one decode step's Helix attention + exchange on the CPU, with real gloo ranks.

Each KVP rank (one process, one thread, pinned to core `rank % cores`) holds its round-robin shard of a decode
batch's KV cache (MQA by default: 8 query heads, 1 KV head, head_dim 64, bf16, block 128, as on a TPA = 1
rank) and runs `vllm_helix.attention.step.attend_and_exchange` — the exact code path of the Helix backend —
with HOP-B forced on (auto slice count: min(4, batch)) and off. The two modes alternate within every
repetition (side by side, same run); before each timed step the ranks meet at a barrier. A step's time is the
slowest rank's; we report medians.

  exposed exchange = time the step spends in the exchange outside attention (pack, all-to-all launch/wait,
                     combine) — the backend's own `exchange_seconds` counter, max over ranks
  step             = wall time of attend_and_exchange, max over ranks

Prints ONE JSON line. Example:
  python benchmarks/bench_hop_b.py --kvp 2 --contexts 4096,16384,65536 --batches 1,4,16,64 --reps 7
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm_helix.loopback_group import free_port, init_loopback_gloo  # noqa: E402 — after the path insert


def _case(ctx: int, batch: int, kvp: int, rank: int, args, torch):
    """This rank's caches and metadata for `batch` decode requests of global length `ctx`."""
    from vllm_helix.sharding import local_lengths_tensor

    bs, kvh, d = args.block_size, args.kv_heads, args.head_dim
    dtype = getattr(torch, args.dtype)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int64)
    local = local_lengths_tensor(seq_lens, bs, kvp, rank)
    nb = int((local.max() + bs - 1) // bs)
    gen = torch.Generator().manual_seed(1000 + rank)
    kv = torch.randn(2, batch * nb, bs, kvh, d, generator=gen).to(
        dtype
    )  # the Helix backend's token-major layout
    key_cache, value_cache = kv[0], kv[1]  # (blocks, bs, kvh, D)
    md = SimpleNamespace(
        num_reqs=batch,
        num_decode_reqs=batch,
        query_start_loc=torch.arange(batch + 1),
        block_table=torch.arange(batch * nb, dtype=torch.int32).view(batch, nb),
        local_seq_lens=local,
        query_positions=seq_lens - 1,
    )
    q = torch.randn(batch, args.heads, d, generator=gen).to(dtype)
    return q, key_cache, value_cache, md, local


def _rank(rank: int, world: int, port: int, args, queue) -> None:
    import torch
    import torch.distributed as dist

    from vllm_helix.attention.step import attend_and_exchange, plan_slices
    from vllm_helix.config import HelixConfig
    from vllm_helix.grid import HelixGrid
    from vllm_helix.runtime import HelixStats

    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[rank % len(cores)]})
    torch.set_num_threads(1)
    init_loopback_gloo(rank, world, port, timeout_s=600)
    try:
        if args.heads % world:  # e.g. KVP 3: SmolLM2's shape on a TPA = 1 rank (9 query heads, 3 KV heads)
            args.heads, args.kv_heads = 9, 3
        grid = HelixGrid(world, world, args.heads, args.kv_heads, args.block_size)
        modes = {"off": HelixConfig(hop_b=False), "on": HelixConfig(hop_b=True, hop_b_slices=args.slices)}
        rows = []
        for ctx in args.contexts:
            for batch in args.batches:
                q, kc, vc, md, local = _case(ctx, batch, world, rank, args, torch)
                samples = {m: {"step": [], "exposed": []} for m in modes}
                for rep in range(args.reps + 1):  # rep 0: warm-up, not recorded
                    order = list(modes) if rep % 2 == 0 else list(reversed(modes))
                    for mode in order:
                        rt = SimpleNamespace(
                            grid=grid,
                            config=modes[mode],
                            kvp_rank=rank,
                            interleave=args.block_size,
                            kvp_group=None,
                            kvp_exchange=None,
                            stats=HelixStats(),
                        )
                        dist.barrier()
                        t0 = time.perf_counter()
                        out = attend_and_exchange(q, kc, vc, md, 1.0 / args.head_dim**0.5, rt)
                        step = time.perf_counter() - t0
                        both = torch.tensor([step, rt.stats.exchange_seconds], dtype=torch.float64)
                        dist.all_reduce(both, op=dist.ReduceOp.MAX)  # the slowest rank sets the step
                        if rep:
                            samples[mode]["step"].append(float(both[0]))
                            samples[mode]["exposed"].append(float(both[1]))
                del out
                med = {m: {k: statistics.median(v) * 1e3 for k, v in s.items()} for m, s in samples.items()}
                slices = len(plan_slices(batch, batch, world, modes["on"]))
                rows.append(
                    {
                        "kvp": world,
                        "heads": args.heads,
                        "kv_heads": args.kv_heads,
                        "context": ctx,
                        "batch": batch,
                        "local_tokens_per_seq": int(local.max()),
                        "slices_on": slices,
                        "step_ms_off": round(med["off"]["step"], 3),
                        "step_ms_on": round(med["on"]["step"], 3),
                        "exposed_exchange_ms_off": round(med["off"]["exposed"], 3),
                        "exposed_exchange_ms_on": round(med["on"]["exposed"], 3),
                        "attention_ms_off": round(med["off"]["step"] - med["off"]["exposed"], 3),
                        "step_ratio_off_over_on": round(med["off"]["step"] / med["on"]["step"], 3),
                    }
                )
                if rank == 0:
                    print(f"[bench_hop_b] {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
        if rank == 0:
            queue.put(rows)
    finally:
        dist.destroy_process_group()


def run_kvp(kvp: int, args) -> list[dict]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, kvp, port, args, queue)) for r in range(kvp)]
    for p in procs:
        p.start()
    deadline = time.time() + args.timeout
    for p in procs:
        p.join(max(1.0, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    if any(p.exitcode != 0 for p in procs) or queue.empty():
        raise RuntimeError(f"KVP {kvp} ranks failed: exit codes {[p.exitcode for p in procs]}")
    return queue.get()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap.add_argument(
        "--kvp", type=ints, default=[2], help="KVP sizes to run, e.g. 2,3 (3 ranks share 2 cores)"
    )
    ap.add_argument("--contexts", type=ints, default=[4096, 16384, 65536])
    ap.add_argument("--batches", type=ints, default=[1, 4, 16, 64])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--slices", type=int, default=None, help="HOP-B slices (default: auto = min(4, batch))")
    ap.add_argument(
        "--heads",
        type=int,
        default=8,
        help="query heads per rank (H/TPA); a KVP that does not divide it runs 9 heads / 3 KV heads",
    )
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    rows = []
    for kvp in args.kvp:
        rows += run_kvp(kvp, args)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    print(
        json.dumps(
            {
                "benchmark": "hop_b",
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "loadavg": load,
                },
                "model": {
                    "heads_per_rank": args.heads,
                    "kv_heads": args.kv_heads,
                    "head_dim": args.head_dim,
                    "block_size": args.block_size,
                    "dtype": args.dtype,
                },
                "reps": args.reps,
                "unit": "ms, median over reps, max over ranks",
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
