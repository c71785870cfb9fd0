# SPDX-License-Identifier: Apache-2.0
"""The Helix attention step of one layer: partial attention over the local KV shard, exchange, exact combine.

    (O_i, LSE_i) = partial attention of the H/TPA query heads over this rank's shard  (`_partial_packed`)
    O = Σ_i exp(LSE_i − LSE) · O_i,  LSE = log Σ_i exp(LSE_i)  over the KVP peers  (`exchange_and_combine`)
    → (tokens, H/N, D), the input slice of the TP = N out-projection

The implementation (native C++ / Triton / torch) is chosen once per step (`kernels.dispatch.select_impl`).
Decode requests (they come first, one token each) run the decode kernel, written straight into the
exchange's send layout; prefill chunks run the torch path (`torch_attention.paged_partial_attention`).

HOP-B, an option of this step, overlaps the all-to-all of one batch slice with the attention of the next.
Without overlap a step costs Σ_s attention_s + Σ_s exchange_s. With the batch cut into slices s = 1..S, the
exchange of slice s is launched asynchronously (`async_op=True` on gloo; NCCL on its own stream on CUDA) and
runs while slice s+1 computes, so the step costs ≈ Σ_s attention_s + exchange_S when every exchange is shorter
than the next slice's attention. Results are identical: slicing only changes which tokens travel together.

Slices are contiguous runs of *requests*; decode requests are split into `num_slices` groups and any prefill
requests travel as one further slice (they are few and long). Auto mode slices only when KVP > 1 and the batch
holds enough decode requests: 2 on CUDA, 32 on CPU (see AUTO_MIN_DECODE_REQS)."""

from __future__ import annotations

import itertools

import torch

from vllm_helix.attention.exchange import exchange_and_combine, pack_partials
from vllm_helix.attention.torch_attention import paged_partial_attention
from vllm_helix.config import HelixConfig
from vllm_helix.kernels import dispatch

AUTO_MAX_SLICES = 4
# "auto" on CPU/gloo slices only batches of ≥ 32 decode requests: below that each extra all-to-all is pure
# gloo latency on cores the attention also needs, and HOP-B measured 0.54–0.92× at batch 4–16 but 1.08–1.90×
# at batch 64 (benchmarks/RESULTS.md §2). On CUDA the exchange has its own stream, so auto slices from 2
# requests.
AUTO_MIN_DECODE_REQS = {"cpu": 32}


def plan_slices(
    num_reqs: int, num_decode_reqs: int, kvp: int, config: HelixConfig, auto_min_decode_reqs: int = 2
) -> list[tuple[int, int]]:
    """Request ranges [(r0, r1), ...] covering 0..num_reqs, in order (pure)."""
    if config.hop_b is False or kvp == 1 or num_reqs <= 1:
        return [(0, num_reqs)]
    if config.hop_b == "auto" and num_decode_reqs < auto_min_decode_reqs:
        return [(0, num_reqs)]
    wanted = config.hop_b_slices or min(AUTO_MAX_SLICES, num_decode_reqs)
    decode_slices = max(1, min(wanted, num_decode_reqs))
    bounds = [round(i * num_decode_reqs / decode_slices) for i in range(decode_slices + 1)]
    ranges = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
    if num_decode_reqs < num_reqs:
        ranges.append((num_decode_reqs, num_reqs))
    return ranges or [(0, num_reqs)]


def _partial(query, key_cache, value_cache, md, r0: int, r1: int, scale: float, rt, impl: str):
    """Partial attention for requests r0..r1 → (tokens, H/TPA, D), (tokens, H/TPA): the decode requests among
    them (they come first, one token each) through the selected decode kernel — native C++ on CPU, Triton on
    CUDA — and prefill chunks through the torch path. `impl` is `dispatch.select_impl`'s choice, made once per
    step by `attend_and_exchange`."""
    qsl = md.query_start_loc
    d1 = min(r1, md.num_decode_reqs) if impl != "torch" else r0  # requests r0..d1 decode
    parts = []
    if d1 > r0:  # decode tokens r0..d1 (token index = request index for the leading decode requests)
        parts.append(
            dispatch.decode_attention(
                query[r0:d1],
                key_cache,
                value_cache,
                md.block_table[r0:d1],
                md.local_seq_lens[r0:d1].to(query.device),
                scale,
                force=impl,
            )
        )
    if r1 > d1:
        t0, t1 = int(qsl[d1]), int(qsl[r1])
        parts.append(
            paged_partial_attention(
                query[t0:t1],
                key_cache,
                value_cache,
                md.block_table[d1:r1],
                md.local_seq_lens[d1:r1],
                qsl[d1 : r1 + 1] - t0,
                scale,
                md.query_positions[t0:t1],
                rt.kvp_rank,
                rt.grid.kvp,
                rt.interleave,
            )
        )
    if len(parts) == 1:
        return parts[0]
    return torch.cat([parts[0][0], parts[1][0]]), torch.cat([parts[0][1], parts[1][1]])


def _partial_packed(query, key_cache, value_cache, md, r0: int, r1: int, scale: float, rt, impl: str):
    """Partials of requests r0..r1 in the exchange's send layout (KVP, tokens, H/N, D + e): a decode-only
    slice is written there directly by the decode kernel, anything else is computed by `_partial` and
    packed."""
    if impl != "torch" and r1 <= md.num_decode_reqs:
        whole = r0 == 0 and r1 == md.num_reqs
        table = md.block_table if whole else md.block_table[r0:r1]
        lens = md.local_seq_lens if whole else md.local_seq_lens[r0:r1]
        return dispatch.decode_attention_packed(
            query if whole else query[r0:r1],
            key_cache,
            value_cache,
            table,
            lens.to(query.device),
            scale,
            rt.grid.kvp,
            force=impl,
        )
    # (t, H/TPA, D), (t, H/TPA)
    out, lse = _partial(query, key_cache, value_cache, md, r0, r1, scale, rt, impl)
    return pack_partials(out, lse, rt.grid.kvp)


def attend_and_exchange(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    md,
    scale: float,
    rt,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """query (tokens, H/TPA, D), caches (blocks, block_size, kv_heads, D) → exact (tokens, H/N, D), written
    into `out` (allocated if None) and returned. The implementation is chosen once per call
    (`dispatch.select_impl`); the exchange and combine are `exchange.exchange_and_combine`."""
    kvp = rt.grid.kvp
    impl = dispatch.select_impl(query.device, rt.config.kernels)
    slices = plan_slices(
        md.num_reqs, md.num_decode_reqs, kvp, rt.config, AUTO_MIN_DECODE_REQS.get(query.device.type, 2)
    )
    if out is None:
        out = torch.empty(
            query.shape[0], query.shape[1] // kvp, query.shape[2], dtype=query.dtype, device=query.device
        )
    if len(slices) == 1:
        send = _partial_packed(query, key_cache, value_cache, md, 0, md.num_reqs, scale, rt, impl)
        exchange_and_combine((send,), (out,), rt, impl)
        return out
    bounds = md.query_start_loc.tolist()
    sends = (_partial_packed(query, key_cache, value_cache, md, r0, r1, scale, rt, impl) for r0, r1 in slices)
    exchange_and_combine(sends, [out[bounds[r0] : bounds[r1]] for r0, r1 in slices], rt, impl)
    return out
