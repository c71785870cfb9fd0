# SPDX-License-Identifier: Apache-2.0
"""The kernels of a vLLM decode step, timed in this process (torch; vLLM's ops where they load).

- The engine's linear layer (vLLM's CPU GEMM dispatch, else ``torch.nn.functional.linear``), bf16 ``x @ Wᵀ``
  at batch B, timed at a few weight sizes and fitted by least squares to

      t(W) = c + W / bw          W: weight bytes; c ≥ 0 the per-call cost, bw the streaming rate

  (a flat or falling line — call cost only, or noise — gives c = 0 and bw = W / t of the largest point).
- One decode-attention call, batch 1 (vLLM's ``cpu_attention_with_kv_cache``, or Helix's packed kernel), at
  several key counts S over one KV buffer per layer, as a step visits them: the median time t(S), which
  ``engine_cpu.AttentionRate`` turns into the achieved rate 4·heads·S·D / t(S).

Every time is the median of ``ceilings.median_s`` (2 untimed warm-up calls unless said otherwise).
"""

from __future__ import annotations

import functools
import math
import os
import statistics

import torch

from vllm_helix.planner import ceilings
from vllm_helix.planner.calibration_sizes import BF16, BLOCK, Sizes
from vllm_helix.planner.cpu_profile import AttentionRate, Gemv

median_s = functools.partial(ceilings.median_s, warmup=2)  # the one timer (ceilings.median_s)


def load_vllm_ops():
    """vLLM's ``_custom_ops`` when its CPU attention ops load here, else None."""
    try:
        from vllm import _custom_ops as ops

        torch.ops._C.get_scheduler_metadata  # noqa: B018 - raises when the CPU ops are absent
        return ops
    except Exception:  # noqa: BLE001 - no vLLM / not a CPU build: the caller measures without it
        return None


def make_linear_op(out_features: int, in_features: int, batch: int, use_vllm: bool):
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
            fn, impl = make_linear_op(n, k, batch, use_vllm)
            pts.append((n * k * 2, median_s(fn, max(7, 3 * sizes.reps), warmup=3)))
        out.append(Gemv(threads, batch, *fit_line(pts)))
    return out, impl


def fit_line(pts: list[tuple[float, float]]) -> tuple[float, float]:
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
                isa=_choose_vllm_isa(self.head_dim),
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

    def measure_rate(self, keys_list, threads: int, ranks: int, reps: int, sync=None) -> AttentionRate:
        torch.set_num_threads(threads)
        points = []
        for keys in keys_list:
            self.set_keys(keys)
            if sync:
                sync()
            points.append((keys, median_s(self, reps, warmup=len(self.caches))))
        return AttentionRate(
            self.kernel, self.heads, self.kv_heads, self.head_dim, threads, ranks, tuple(points)
        )


def _choose_vllm_isa(head_dim: int) -> str:
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        return _get_attn_isa(BF16, BLOCK, head_dim)
    except Exception:  # noqa: BLE001
        return "vec"
