# SPDX-License-Identifier: Apache-2.0
"""The 2-rank part of ``vllm-helix calibrate``: what one rank of stock TP 2 / Helix KVP 2 runs, timed in 2
spawned processes pinned to one core and one thread each, both at once (as ``VLLM_CPU_OMP_THREADS_BIND="0|1"``
pins the engine's ranks), joined by a loopback gloo group and a ``ShmGroup``.

Per rank, in order:

1. the kernels, the peer running the same at once (shared DRAM and L3): Helix's packed decode kernel for Q
   heads over K (Helix KVP 2 × TPA 1: all heads, S/2 keys) and vLLM's attention for Q/2 heads (stock TP 2),
   at every key count; the linear-op fit ``t = c + W / bw`` with 1 thread;
2. each collective back to back at one decode step's sizes (batch 1; median of ``coll_reps``): ``ShmGroup``
   all-to-all of the packed partials (2 × 1 × Q/2 × (D + 2) bf16: D values and the fp32 LSE as 2 bf16) and
   all-reduce of H bf16; gloo all-reduce (H), all-gather (V/2 → 2 × V/2), all-to-all (the partials); and the
   combine of the partials (median of 50);
3. the synthetic decode steps (``synthetic_step``), 3 warm-up + ``steps`` per grid, each step two RPCs from
   the parent through vLLM's shared-memory ``MessageQueue`` (``execute_model``, ``sample_tokens``) answered
   by rank 0 with its own work time, as the engine core drives its workers (without vLLM: a gloo barrier per
   step).

The parent reports per grid the median round trip (both RPCs) and the executor's share of it:

    executor_s = median over steps of Σ_rpc (parent time of the rpc − rank 0's work in it)

Every wait is bounded: gloo 60 s, shared memory and the queues ``timeout_s``; ranks still alive after it are
killed by PID.
"""

from __future__ import annotations

import os
import statistics
import time
import traceback

import torch

from vllm_helix.loopback_group import free_port, init_loopback_gloo
from vllm_helix.planner.calibration_sizes import BF16, MQ_CHUNK, RANKS, Sizes
from vllm_helix.planner.engine_cpu import EngineGrid
from vllm_helix.planner.kernel_timing import Attention, fit_gemv, load_vllm_ops, median_s
from vllm_helix.planner.models import ModelSpec
from vllm_helix.planner.synthetic_step import SyntheticStep, make_reply, make_scheduler_output


def run_rank(rank: int, spec: dict, out_q) -> None:
    """One of the 2 ranks: kernels at once with the peer, collectives back to back, then synthetic steps."""
    try:
        _measure_on_rank(rank, spec, out_q)
    except BaseException:  # noqa: BLE001 - report to the parent, which raises
        out_q.put(("error", rank, traceback.format_exc()))
        raise


def _measure_on_rank(rank: int, spec: dict, out_q) -> None:
    """Steps 1-3 of the module docstring on this rank; its results go to ``out_q``."""
    import warnings

    import torch.distributed as dist

    warnings.filterwarnings("ignore", category=FutureWarning)  # all_gather_into_tensor, as vLLM calls it
    os.environ["VLLM_HELIX_SHM_TIMEOUT_S"] = str(spec["timeout_s"])
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= RANKS:  # one core per rank, as VLLM_CPU_OMP_THREADS_BIND="0|1" pins the engine's ranks
        os.sched_setaffinity(0, {cores[rank]})
    torch.set_num_threads(1)
    sizes, m = Sizes(**spec["sizes"]), ModelSpec(**spec["model"])
    init_loopback_gloo(rank, RANKS, spec["port"], timeout_s=60)
    try:
        from vllm_helix.kernels.cpu_shm_collectives import ShmGroup

        shm = ShmGroup(dist.group.WORLD, list(range(RANKS)), rank, slot_bytes=1 << 20)
        use_vllm = spec["use_vllm"]
        ops = load_vllm_ops() if use_vllm else None
        res: dict = {"rank": rank, "attention": [], "gemv": []}
        # 1. kernels, both ranks at once (shared DRAM / L3, one core each)
        q, k, d = m.n_heads, m.n_kv_heads, m.head_dim
        shapes = [("helix", q, k)]  # Helix KVP 2 × TPA 1: all heads over S/2 keys
        shapes.append(("vllm" if ops else "helix", q // RANKS, max(1, k // RANKS)))  # stock TP 2
        for kernel, heads, kv in shapes:
            attn = Attention(kernel, heads, kv, d, max(sizes.attention_keys), m.n_layers, ops)
            res["attention"].append(
                attn.measure_rate(sizes.attention_keys, 1, RANKS, sizes.reps, dist.barrier)
            )
            del attn
        dist.barrier()
        res["gemv"], res["gemv_impl"] = fit_gemv(sizes, 1, use_vllm)
        # 2. collectives back to back, at one decode step's sizes (batch 1)
        h, parts = m.hidden, m.n_heads // RANKS
        send = torch.zeros(RANKS, 1, parts, d + 2, dtype=BF16)  # packed partials + fp32 LSE as 2 bf16
        hidden = torch.zeros(1, h, dtype=BF16)
        logits, gathered = (
            torch.zeros(1, m.vocab // RANKS, dtype=BF16),
            torch.zeros(RANKS, m.vocab // RANKS, dtype=BF16),
        )
        recv_gloo = torch.empty_like(send)
        calls = {
            "shm_all_to_all": (lambda: shm.all_to_all(send), send.numel() * 2),
            "shm_all_reduce": (lambda: shm.all_reduce(hidden), hidden.numel() * 2),
            "gloo_all_reduce": (lambda: dist.all_reduce(hidden), hidden.numel() * 2),
            "gloo_all_gather": (lambda: dist.all_gather_into_tensor(gathered, logits), logits.numel() * 2),
            "gloo_all_to_all": (lambda: dist.all_to_all_single(recv_gloo, send), send.numel() * 2),
        }
        res["idle"] = {}
        for name, (fn, nbytes) in calls.items():
            dist.barrier()
            res["idle"][name] = (nbytes, median_s(fn, sizes.coll_reps, warmup=10))
        from vllm_helix.kernels import dispatch

        recv, out = torch.zeros_like(send), torch.empty(1, parts, d, dtype=BF16)
        recv[..., d:] = 0  # LSE bits 0.0 on both peers: a finite combine
        res["combine_s"] = median_s(lambda: dispatch.combine_packed(recv, out), 50, warmup=5)
        # 3. synthetic decode steps, driven through vLLM's MessageQueue when there is one
        bq = rq = None
        if spec.get("bcast_handle") is not None:
            from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

            bq = MessageQueue.create_from_handle(spec["bcast_handle"], rank)
            bound_receives(bq, spec["timeout_s"])
            if rank == 0:
                rq = MessageQueue(1, 1, max_chunk_bytes=MQ_CHUNK)
                bound_receives(rq, spec["timeout_s"])
                out_q.put(("mq", rank, rq.export_handle()))
            bq.wait_until_ready()
            if rq is not None:
                rq.wait_until_ready()
        res["steps"] = {}
        for name in ("stock_tp2", "helix_tp2_dcp2"):
            step = SyntheticStep(EngineGrid.from_name(name), m, sizes.step_context, shm, ops, use_vllm)
            step_s = []
            for i in range(3 + sizes.steps):
                work = 0.0
                for rpc, call in (("execute", step.execute), ("sample", step.sample)):
                    if bq is not None:  # the engine core's two RPCs per step, each answered by rank 0
                        msg = bq.dequeue(timeout=spec["timeout_s"])
                        assert msg[:3] == (rpc, name, i), f"rank {rank}: expected {(rpc, name, i)}: {msg[:3]}"
                    elif rpc == "execute":
                        dist.barrier()
                    t0 = time.perf_counter()
                    call()
                    work += (took := time.perf_counter() - t0)
                    if rq is not None:
                        rq.enqueue((took, make_reply(rpc)), timeout=spec["timeout_s"])
                step_s.append(work)
                if i == 2:  # warm-up done: keep what the measured steps record
                    step.samples = {key: [] for key in step.samples}
            res["steps"][name] = {
                "step_s": statistics.median(step_s[3:]),
                "calls_s": {key: statistics.median(v) for key, v in step.samples.items() if v},
            }
            del step
        if bq is not None:
            assert bq.dequeue(timeout=spec["timeout_s"]) == ("stop",)
        out_q.put(("result", rank, res))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def bound_receives(mq, seconds: float) -> None:
    """Bound the blocking zmq receives of ``MessageQueue.wait_until_ready`` (it has no timeout of its own)."""
    import zmq

    for sock in (getattr(mq, "local_socket", None), getattr(mq, "remote_socket", None)):
        if sock is not None:
            sock.setsockopt(zmq.RCVTIMEO, int(seconds * 1e3))


def run_ranks(m: ModelSpec, sizes: Sizes, use_vllm: bool, timeout_s: float) -> tuple[list[dict], dict]:
    """Spawn the 2 ranks, drive their synthetic steps, return (their results, the parent's step timings)."""
    import dataclasses
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    out_q = ctx.Queue()
    bcast = None
    if use_vllm:
        try:
            from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

            bcast = MessageQueue(RANKS, RANKS, max_chunk_bytes=MQ_CHUNK)
            bound_receives(bcast, timeout_s)
        except Exception:  # noqa: BLE001 - no executor queue: steps are paced by a gloo barrier
            bcast = None
    spec = {
        "port": free_port(),
        "sizes": dataclasses.asdict(sizes),
        "model": dataclasses.asdict(m),
        "use_vllm": use_vllm,
        "timeout_s": timeout_s,
        "bcast_handle": bcast.export_handle() if bcast is not None else None,
    }
    procs = [ctx.Process(target=run_rank, args=(r, spec, out_q), daemon=True) for r in range(RANKS)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    results: dict[int, dict] = {}
    parent: dict = {}

    def get(kind: str):
        while True:
            left = deadline - time.monotonic()
            try:
                msg = out_q.get(timeout=max(0.1, min(left, 1.0)))
            except queue.Empty:
                if left <= 0 or any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError(
                        f"calibration ranks: no {kind!r} (exit codes {[p.exitcode for p in procs]})"
                    ) from None
                continue
            if msg[0] == "error":
                raise RuntimeError(f"calibration rank {msg[1]} failed:\n{msg[2]}")
            if msg[0] == "result":
                results[msg[1]] = msg[2]
            if msg[0] == kind:
                return msg

    try:
        if bcast is not None:
            handle = get("mq")[2]
            from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

            bcast.wait_until_ready()
            rq = MessageQueue.create_from_handle(handle, 0)
            bound_receives(rq, timeout_s)
            rq.wait_until_ready()
            sched = make_scheduler_output()
            for name in ("stock_tp2", "helix_tp2_dcp2"):
                rts, overhead = [], []
                for i in range(3 + sizes.steps):
                    rt = over = 0.0
                    for rpc, payload in (("execute", sched), ("sample", None)):
                        t0 = time.perf_counter()
                        bcast.enqueue((rpc, name, i, payload), timeout=timeout_s)
                        rank0_s, _ = rq.dequeue(timeout=timeout_s)
                        rt += (took := time.perf_counter() - t0)
                        over += took - rank0_s
                    if i >= 3:
                        rts.append(rt)
                        overhead.append(over)
                parent[name] = {
                    "round_trip_s": statistics.median(rts),
                    "executor_s": statistics.median(overhead),
                }
            bcast.enqueue(("stop",), timeout=timeout_s)
        while len(results) < RANKS:
            get("result")
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, 9)
                p.join(5)
    return [results[r] for r in range(RANKS)], parent
