# SPDX-License-Identifier: Apache-2.0
"""``vllm-helix calibrate``: time the primitives of a vLLM decode step on this CPU, write a ``CpuProfile``.

    vllm-helix calibrate --out cpu_profile.json                                   # measure (≈ 30-60 s)
    vllm-helix calibrate --profile cpu_profile.json --from-bench decode.json --out cpu_profile.json  # fit F
    vllm-helix plan --hardware cpu_profile.json --model tiny-mqa --contexts 4K,16K,64K,128K --batch 1

What is measured (torch and the engine's own ops; vLLM's where it imports, ``--no-vllm`` skips them), at the
shapes of ``--model`` (default the bench_decode model ``tiny-mqa``):

- in this process with all cores' threads (what stock TP 1 gets): vectorised read bandwidth at several
  buffer sizes (1 thread; all threads at the largest), fp32 / bf16 GEMM rate (1 and all threads; reported
  only), the engine's linear op (vLLM's CPU GEMM dispatch, else ``torch.nn.functional.linear``) at three bf16
  weight sizes and batch 1 / 8 (fit ``t = c + bytes / bw``), and vLLM's decode attention
  (``cpu_attention_with_kv_cache``, block 128, split-KV as the engine runs it) for all Q heads at several key
  counts, over one KV buffer per layer;
- in 2 spawned ranks, one core and one thread each, both at once (what a TP 2 rank gets): the same linear
  op, vLLM's attention for Q/2 heads (stock TP 2) and Helix's native packed decode kernel for Q heads (Helix
  KVP 2), then the back-to-back latency of each collective at one decode step's sizes (``ShmGroup``
  all-to-all of the packed partials and all-reduce of B·H bf16; gloo all-reduce, all-gather, all-to-all),
  the Helix combine, and last two synthetic decode steps (stock TP 2, Helix KVP 2) built from these same
  primitives at a short context and driven by this process through vLLM's shared-memory ``MessageQueue``, as
  the engine core drives its workers (two RPCs per step, ``execute_model`` with a ``SchedulerOutput`` and
  ``sample_tokens``): the collectives' latency *in the step* (waiting for the peer included, as the engine's
  counters see it) and the executor's round trips (parent time per step − rank 0's own work).

Nothing is fitted to a vLLM benchmark except, when asked, the per-step fixed cost F: ``--step-overhead-ms X``
sets it, ``--from-bench DECODE.json`` fits it to the stock TP 1 row at the shortest context (batch 1) of a
``benchmarks/bench_decode.py`` result (``engine_cpu.fit_step_overhead``). Every collective has a timeout
(gloo 60 s; shared memory and the message queue ``--timeout``); ranks still alive after ``--timeout`` are
killed by PID.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vllm_helix.loopback_group import free_port, init_loopback_gloo
from vllm_helix.planner import ceilings
from vllm_helix.planner.engine_cpu import (
    AttentionRate,
    Collective,
    CpuProfile,
    EngineGrid,
    Gemv,
    bench_model,
    bench_tpots,
    fit_step_overhead,
)
from vllm_helix.planner.models import ModelSpec, load_model

BLOCK = 128  # the engine's KV block size (bench_decode)
MIB = 1 << 20
RANKS = 2
MQ_CHUNK = 1 << 20  # ring-buffer chunk of the executor queue (vLLM's 24 MiB only matters for huge messages)
BF16 = torch.bfloat16


@dataclass(frozen=True)
class Sizes:
    """How much one run measures."""

    read_bytes: tuple[int, ...]  # 1-thread read bandwidth at these buffer sizes; all threads at the largest
    attention_keys: tuple[int, ...]  # keys per sequence of the kernel timings
    gemv_shapes: tuple[tuple[int, int], ...]  # (out, in) bf16 weights of the linear-op fit
    gemv_batches: tuple[int, ...]
    reps: int  # timed calls per kernel point (median)
    coll_reps: int  # back-to-back collectives per kind (median)
    step_context: int  # context of the synthetic decode steps
    steps: int  # synthetic decode steps per grid (after 3 warm-up steps)
    gemm: bool


FULL = Sizes(
    (1 * MIB, 8 * MIB, 64 * MIB, 512 * MIB),
    (1024, 8192, 32768, 131072),
    ((512, 512), (2048, 512), (4096, 1024)),
    (1, 8),
    9,
    300,
    4096,
    40,
    True,
)
QUICK = Sizes((1 * MIB, 16 * MIB), (512, 4096), ((256, 256), (1024, 512)), (1,), 3, 40, 1024, 6, False)


# ------------------------------------------------------------------------------------------------ primitives
_median_s = functools.partial(ceilings.median_s, warmup=2)  # the one timer (ceilings.median_s)


def vllm_ops():
    """vLLM's ``_custom_ops`` when its CPU attention ops load here, else None."""
    try:
        from vllm import _custom_ops as ops

        torch.ops._C.get_scheduler_metadata  # noqa: B018 - raises when the CPU ops are absent
        return ops
    except Exception:  # noqa: BLE001 - no vLLM / not a CPU build: the caller measures without it
        return None


def linear_op(out_features: int, in_features: int, batch: int, use_vllm: bool):
    """(call, implementation): one bf16 ``x @ Wᵀ`` as the engine's linear layer runs it."""
    w = torch.empty(out_features, in_features, dtype=BF16).uniform_(-0.05, 0.05)
    x = torch.randn(batch, in_features).to(BF16)
    if use_vllm:
        try:
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            layer = torch.nn.Module()
            layer.weight = torch.nn.Parameter(w, requires_grad=False)
            dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
            return (lambda: layer.cpu_linear(x, layer.weight, None)), "vllm dispatch_cpu_unquantized_gemm"
        except Exception:  # noqa: BLE001 - fall back to what vLLM itself falls back to
            pass
    return (lambda: torch.nn.functional.linear(x, w)), "torch.nn.functional.linear"


def fit_gemv(sizes: Sizes, threads: int, use_vllm: bool) -> tuple[list[Gemv], str]:
    """Least-squares ``t = c + bytes / bw`` of the linear op over ``sizes.gemv_shapes``, per batch."""
    torch.set_num_threads(threads)
    out, impl = [], ""
    for batch in sizes.gemv_batches:
        pts = []
        for n, k in sizes.gemv_shapes:
            fn, impl = linear_op(n, k, batch, use_vllm)
            pts.append((n * k * 2, _median_s(fn, max(7, 3 * sizes.reps), warmup=3)))
        out.append(Gemv(threads, batch, *_line(pts)))
    return out, impl


def _line(pts: list[tuple[float, float]]) -> tuple[float, float]:
    """(intercept ≥ 0, 1/slope) of the least-squares line through (bytes, seconds)."""
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / var if var else 0.0
    if slope <= 0:  # flat (call cost only) or noise: the largest point's rate, no intercept
        x, y = max(pts)
        return 0.0, x / y
    return max(0.0, my - slope * mx), 1.0 / slope


class Attention:
    """One decode-attention call per ``__call__`` (batch 1), cycling over ``buffers`` KV caches (one per
    layer, as the engine's step visits them). ``kernel``: "vllm" (vLLM's CPU_ATTN op, its KV layout) or
    "helix" (Helix's packed decode kernel via ``vllm_helix.kernels.dispatch``: native C++ when built, else the
    torch path)."""

    def __init__(
        self, kernel: str, heads: int, kv_heads: int, head_dim: int, max_keys: int, buffers: int, ops=None
    ):
        self.kernel, self.heads, self.kv_heads, self.head_dim = kernel, heads, kv_heads, head_dim
        self.ops, self.i = ops, 0
        blocks = math.ceil(max_keys / BLOCK)
        if kernel == "vllm":
            shape = (blocks, kv_heads, BLOCK, 2 * head_dim)  # CPU_ATTN: (blocks, kv_heads, block, K | V)
        else:
            shape = (
                2,
                blocks,
                BLOCK,
                kv_heads,
                head_dim,
            )  # Helix's reading of the same bytes (split_kv_cache)
        self.caches = [torch.empty(shape, dtype=BF16).uniform_(-1, 1) for _ in range(buffers)]
        self.query = torch.randn(1, heads, head_dim).to(BF16)
        self.out = torch.empty(1, heads, head_dim, dtype=BF16)
        self.scale = head_dim**-0.5
        self.set_keys(max_keys)

    def set_keys(self, keys: int) -> None:
        self.keys = keys
        blocks = math.ceil(keys / BLOCK)
        self.table = torch.arange(blocks, dtype=torch.int32)[None]  # (1, blocks)
        self.lens = torch.tensor([keys], dtype=torch.int32)
        if self.kernel == "vllm":
            self.qsl = torch.tensor([0, 1], dtype=torch.int32)
            self.meta = self.ops.cpu_attn_get_scheduler_metadata(
                num_reqs=1,
                num_heads=self.heads,
                num_kv_heads=self.kv_heads,
                head_dim=self.head_dim,
                seq_lens=self.lens,
                dtype=BF16,
                query_start_loc=self.qsl,
                causal=True,
                sliding_window_size=-1,
                isa=_vllm_isa(self.head_dim),
                enable_kv_split=os.environ.get("VLLM_CPU_ATTN_SPLIT_KV", "1") != "0",
            )

    def __call__(self, kvp: int = 2) -> torch.Tensor:
        cache = self.caches[self.i % len(self.caches)]
        self.i += 1
        if self.kernel == "vllm":
            blocks = cache.shape[0]
            kc, vc = cache.view(blocks, self.kv_heads, 2 * BLOCK, self.head_dim).chunk(2, dim=2)
            self.ops.cpu_attention_with_kv_cache(
                query=self.query,
                key_cache=kc,
                value_cache=vc,
                output=self.out,
                query_start_loc=self.qsl,
                seq_lens=self.lens,
                scale=self.scale,
                causal=True,
                alibi_slopes=None,
                sliding_window=-1,
                block_table=self.table,
                softcap=0.0,
                scheduler_metadata=self.meta,
                s_aux=None,
            )
            return self.out
        from vllm_helix.kernels import dispatch

        return dispatch.decode_attention_packed(
            self.query, cache[0], cache[1], self.table, self.lens, self.scale, kvp
        )  # (kvp, 1, heads / kvp, head_dim + 2)

    def rate(self, keys_list, threads: int, ranks: int, reps: int, sync=None) -> AttentionRate:
        torch.set_num_threads(threads)
        points = []
        for keys in keys_list:
            self.set_keys(keys)
            if sync:
                sync()
            points.append((keys, _median_s(self, reps, warmup=len(self.caches))))
        return AttentionRate(
            self.kernel, self.heads, self.kv_heads, self.head_dim, threads, ranks, tuple(points)
        )


def _vllm_isa(head_dim: int) -> str:
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        return _get_attn_isa(BF16, BLOCK, head_dim)
    except Exception:  # noqa: BLE001
        return "vec"


# ------------------------------------------------------------------------------------------- the 2-rank part
def _timed(samples: list, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    samples.append(time.perf_counter() - t0)
    return out


class _Step:
    """One synthetic decode step of a TP-2 grid on this rank, from the engine's primitives (batch 1): per
    layer QKV / o_proj / gate_up / down linear ops, the attention kernel over one KV buffer per layer, the
    grid's collectives (each call's time recorded under its profile name), then the LM head and the logits
    gather."""

    def __init__(self, grid: EngineGrid, m: ModelSpec, context: int, shm, ops, use_vllm: bool):
        import torch.distributed as dist

        self.grid, self.m, self.shm, self.dist = grid, m, shm, dist
        n, h, d, q, k = grid.tp, m.hidden, m.head_dim, m.n_heads, m.n_kv_heads
        helix = grid.helix and grid.kvp > 1
        q_loc, kv_loc = (q // grid.tpa, k // grid.tpa) if helix else (q // n, max(1, k // n))
        kernel = "helix" if helix or ops is None else "vllm"
        self.attn = Attention(kernel, q_loc, kv_loc, d, math.ceil(context / grid.kvp), m.n_layers, ops)
        self.helix = helix
        lin = lambda o, i: linear_op(o, i, 1, use_vllm)[0]  # noqa: E731
        self.layers = [
            (lin((q_loc + 2 * kv_loc) * d, h), lin(h, q * d // n), lin(2 * m.ffn // n, h), lin(h, m.ffn // n))
            for _ in range(m.n_layers)
        ]
        self.head = lin(m.vocab // n, h)
        self.hidden = torch.zeros(1, h, dtype=BF16)
        self.logits = torch.zeros(1, m.vocab // n, dtype=BF16)
        self.gathered = torch.zeros(n, m.vocab // n, dtype=BF16)
        self.combined = torch.empty(1, q // n, d, dtype=BF16)
        self.ar_name = "shm_all_reduce" if grid.helix else "gloo_all_reduce"
        self.samples: dict[str, list[float]] = {"combine": []}

    def _all_reduce(self) -> None:
        s = self.samples.setdefault(self.ar_name, [])
        if self.grid.helix:
            _timed(s, self.shm.all_reduce, self.hidden)
        else:
            _timed(s, self.dist.all_reduce, self.hidden)

    def sample(self) -> None:
        """The second RPC of a step (``sample_tokens``): greedy sampling from the gathered logits."""
        self.token = int(self.gathered.view(-1).argmax())

    def execute(self) -> None:
        """The first RPC of a step (``execute_model``): embedding, layers, LM head, logits gather."""
        self._all_reduce()  # the vocabulary-parallel embedding
        for qkv, o, gate_up, down in self.layers:
            qkv()
            send = self.attn(self.grid.kvp)
            if self.helix:
                recv = _timed(self.samples.setdefault("shm_all_to_all", []), self.shm.all_to_all, send)
                from vllm_helix.kernels import dispatch

                _timed(self.samples["combine"], dispatch.combine_packed, recv, self.combined)
            o()
            self._all_reduce()
            gate_up()
            down()
            self._all_reduce()
        self.head()
        _timed(
            self.samples.setdefault("gloo_all_gather", []),
            self.dist.all_gather_into_tensor,
            self.gathered,
            self.logits,
        )


def _rank_main(rank: int, spec: dict, out_q) -> None:
    """One of the 2 ranks: kernels at once with the peer, collectives back to back, then synthetic steps."""
    try:
        _rank_body(rank, spec, out_q)
    except BaseException:  # noqa: BLE001 - report to the parent, which raises
        out_q.put(("error", rank, traceback.format_exc()))
        raise


def _rank_body(rank: int, spec: dict, out_q) -> None:
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
        ops = vllm_ops() if use_vllm else None
        res: dict = {"rank": rank, "attention": [], "gemv": []}
        # 1. kernels, both ranks at once (shared DRAM / L3, one core each)
        q, k, d = m.n_heads, m.n_kv_heads, m.head_dim
        shapes = [("helix", q, k)]  # Helix KVP 2 × TPA 1: all heads over S/2 keys
        shapes.append(("vllm" if ops else "helix", q // RANKS, max(1, k // RANKS)))  # stock TP 2
        for kernel, heads, kv in shapes:
            attn = Attention(kernel, heads, kv, d, max(sizes.attention_keys), m.n_layers, ops)
            res["attention"].append(attn.rate(sizes.attention_keys, 1, RANKS, sizes.reps, dist.barrier))
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
            res["idle"][name] = (nbytes, _median_s(fn, sizes.coll_reps, warmup=10))
        from vllm_helix.kernels import dispatch

        recv, out = torch.zeros_like(send), torch.empty(1, parts, d, dtype=BF16)
        recv[..., d:] = 0  # LSE bits 0.0 on both peers: a finite combine
        res["combine_s"] = _median_s(lambda: dispatch.combine_packed(recv, out), 50, warmup=5)
        # 3. synthetic decode steps, driven through vLLM's MessageQueue when there is one
        bq = rq = None
        if spec.get("bcast_handle") is not None:
            from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

            bq = MessageQueue.create_from_handle(spec["bcast_handle"], rank)
            _recv_timeout(bq, spec["timeout_s"])
            if rank == 0:
                rq = MessageQueue(1, 1, max_chunk_bytes=MQ_CHUNK)
                _recv_timeout(rq, spec["timeout_s"])
                out_q.put(("mq", rank, rq.export_handle()))
            bq.wait_until_ready()
            if rq is not None:
                rq.wait_until_ready()
        res["steps"] = {}
        for name in ("stock_tp2", "helix_tp2_dcp2"):
            step = _Step(EngineGrid.from_name(name), m, sizes.step_context, shm, ops, use_vllm)
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
                        rq.enqueue((took, _reply_payload(rpc)), timeout=spec["timeout_s"])
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


def _scheduler_payload(batch: int = 1):
    """What ``execute_model`` carries for a pure decode step of ``batch`` requests: vLLM's own
    ``SchedulerOutput`` when it builds, else a dict of the same content (pickled either way)."""
    ids = [f"req-{j}" for j in range(batch)]
    try:
        from dataclasses import replace as _replace

        from vllm.v1.core.sched.output import CachedRequestData, SchedulerOutput

        cached = _replace(
            CachedRequestData.make_empty(),
            req_ids=ids,
            new_token_ids=[[] for _ in ids],
            new_block_ids=[None for _ in ids],
            num_computed_tokens=[4096 for _ in ids],
            num_output_tokens=[8 for _ in ids],
        )
        return _replace(
            SchedulerOutput.make_empty(),
            scheduled_cached_reqs=cached,
            num_scheduled_tokens=dict.fromkeys(ids, 1),
            total_num_scheduled_tokens=batch,
            num_common_prefix_blocks=[0],
        )
    except Exception:  # noqa: BLE001 - another vLLM version: a stand-in of the same content
        return {
            "req_ids": ids,
            "num_scheduled_tokens": dict.fromkeys(ids, 1),
            "num_computed_tokens": [4096] * batch,
        }


def _reply_payload(rpc: str):
    """What rank 0 answers: None to ``execute_model``, the sampled tokens to ``sample_tokens``."""
    if rpc == "execute":
        return None
    return {
        "req_ids": ["req-0"],
        "req_id_to_index": {"req-0": 0},
        "sampled_token_ids": [[1]],
        "logprobs": None,
    }


def _recv_timeout(mq, seconds: float) -> None:
    """Bound the blocking zmq receives of ``MessageQueue.wait_until_ready`` (it has no timeout of its own)."""
    import zmq

    for sock in (getattr(mq, "local_socket", None), getattr(mq, "remote_socket", None)):
        if sock is not None:
            sock.setsockopt(zmq.RCVTIMEO, int(seconds * 1e3))


def _run_ranks(m: ModelSpec, sizes: Sizes, use_vllm: bool, timeout_s: float) -> tuple[list[dict], dict]:
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
            _recv_timeout(bcast, timeout_s)
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
    procs = [ctx.Process(target=_rank_main, args=(r, spec, out_q), daemon=True) for r in range(RANKS)]
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
            _recv_timeout(rq, timeout_s)
            rq.wait_until_ready()
            sched = _scheduler_payload()
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


# ------------------------------------------------------------------------------------------------ the profile
def _mean(xs) -> float:
    return statistics.fmean(xs)


def measure(
    m: ModelSpec,
    quick: bool = False,
    use_vllm: bool = True,
    timeout_s: float = 300.0,
    sizes: Sizes | None = None,
) -> CpuProfile:
    """Measure everything (module docstring) and return the profile, F unset. ``sizes`` overrides
    ``QUICK`` / ``FULL`` (tests)."""
    t_start = time.perf_counter()
    sizes = sizes or (QUICK if quick else FULL)
    phases: dict[str, float] = {}
    last = [t_start]

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name], last[0] = round(now - last[0], 2), now

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads_before = torch.get_num_threads()
    ops = vllm_ops() if use_vllm else None
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
        attention = [attn.rate(sizes.attention_keys, cores, 1, sizes.reps)]
        del attn
        lap("attention")
        # 2 ranks, one core each: TP 2 / Helix KVP 2
        ranks, parent = _run_ranks(m, sizes, use_vllm, timeout_s)
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
            _mean(r["idle"][name][1] for r in ranks),
            _mean(in_step[name]) if name in in_step else None,
        )
        for name in ranks[0]["idle"]
    }
    executor = _mean(p["executor_s"] for p in parent.values()) if parent else None
    vllm_shm = bool(ops is not None and hasattr(torch.ops._C, "init_shm_manager"))
    return CpuProfile(
        name=f"cpu-{platform.node() or 'host'}",
        cores=cores,
        read_bw=read_bw,
        gemm_flops=gemm,
        gemv=tuple(gemv),
        attention=tuple(attention),
        collectives=collectives,
        combine_s=_mean(r["combine_s"] for r in ranks),
        executor_round_trip_s=executor,
        vllm_tp_all_reduce="shm" if vllm_shm else "gloo",
        meta={
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": ceilings.cpu_model(),
            "isa": _native_isa(),
            "torch": torch.__version__,
            "vllm": _vllm_version() if use_vllm else None,
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


def _native_isa() -> str | None:
    try:
        from vllm_helix.kernels import cpu_build

        return cpu_build.status()["isa"]
    except Exception:  # noqa: BLE001
        return None


def _vllm_version() -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version("vllm")
    except Exception:  # noqa: BLE001
        return None


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


def _parser() -> argparse.ArgumentParser:
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
    args = _parser().parse_args(argv)
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
    print(json.dumps(summary(profile, out)))
    return 0


def summary(p: CpuProfile, path: str) -> dict:
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
