# SPDX-License-Identifier: Apache-2.0
"""The Helix exchange: one all-to-all over the KVP group, then the exact LSE combine.

Before: every rank of a KVP group holds partials (O_i, LSE_i) for the same H/TPA heads (its TPA shard) over
its own slice of the sequence. Split those heads into KVP chunks of H/N heads; chunk j goes to KVP peer j.
After one `all_to_all_single`, peer j holds chunk j's partials from every peer — (KVP, tokens, H/N, ·) — and
combines them:

    O = Σ_i exp(LSE_i − LSE) · O_i,     LSE = log Σ_i exp(LSE_i)

O and LSE travel in one packed tensor (tokens, H/TPA, D + e): the fp32 LSE is bit-cast into e = 4 / itemsize
extra elements of the output dtype, so the exchange is exact for fp32, bf16 and fp16 alike. Per rank it sends
tokens × H/TPA × (D + e) elements, independent of the sequence length S.

Rank r = t·KVP + k ends with heads [r·H/N, (r+1)·H/N): the input slice of a TP = N row-parallel
out-projection.

Transport: `dist.all_to_all_single` on the KVP process group (gloo on CPU, NCCL on CUDA), or — for a
synchronous exchange on CPU — `local_exchange`, the native shared-memory all-to-all between the group's
processes (`vllm_helix.kernels.cpu_shm_collectives`): one copy in, one copy out, µs instead of a TCP round
trip.

`exchange_and_combine` is the one driver — packed partials in, exact output out, one timing — used by the GQA
step (`vllm_helix.attention.step`, also for HOP-B's slices) and the MLA combine (`vllm_helix.attention.mla`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from vllm_helix.attention.lse_combine import combine_partials
from vllm_helix.kernels import dispatch

__all__ = ["pack_partials", "unpack_partials", "combine_received", "send_packed", "exchange_and_combine"]


def pack_partials(out: torch.Tensor, lse: torch.Tensor, kvp: int) -> torch.Tensor:
    """(tokens, heads, D) + (tokens, heads) fp32 → (KVP, tokens, heads/KVP, D + e), chunk j destined to peer
    j."""
    tokens, heads, dim = out.shape
    lse_bits = lse.float().contiguous().view(out.dtype).view(tokens, heads, -1)  # (tokens, heads, e)
    packed = torch.cat([out, lse_bits], dim=-1)  # (tokens, heads, D + e)
    return packed.view(tokens, kvp, heads // kvp, -1).transpose(0, 1).contiguous()


def unpack_partials(packed: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(KVP, tokens, h, D + e) → O (KVP, tokens, h, D), LSE (KVP, tokens, h) fp32."""
    out = packed[..., :dim]
    lse = packed[..., dim:].contiguous().view(torch.float32).squeeze(-1)
    return out, lse


def combine_received(recv: torch.Tensor, out: torch.Tensor) -> None:
    """The torch combine of a receive buffer: recv (KVP, tokens, h, D + e) → exact O written into out (tokens,
    h, D) (the reference of the native `helix_cpu::combine_packed`;
    `vllm_helix.kernels.dispatch.combine_packed` picks)."""
    partial_out, partial_lse = unpack_partials(recv, out.shape[-1])
    out.copy_(combine_partials(partial_out, partial_lse, out.dtype)[0])


def send_packed(
    send: torch.Tensor, group: dist.ProcessGroup | None, kvp: int, async_op: bool = False, local_exchange=None
):
    """Launch the all-to-all of a packed send buffer (KVP, tokens, h, D + e). Returns (received buffer, work
    handle or None). `local_exchange` (on CPU a `vllm_helix.kernels.cpu_shm_collectives.ShmGroup`), if given,
    carries a synchronous exchange over shared memory instead of `group` when the message fits it."""
    if kvp == 1:
        return send, None
    if local_exchange is not None and not async_op:
        recv = local_exchange(send)
        if recv is not None:
            return recv, None
    recv = torch.empty_like(send)
    work = dist.all_to_all_single(recv, send, group=group, async_op=async_op)
    return recv, (work if async_op else None)


def exchange_and_combine(sends: Iterable[torch.Tensor], outs: Sequence[torch.Tensor], rt, impl: str) -> None:
    """Partials in, exact output out — the one driver of the exchange (GQA step and MLA alike).

    sends: packed partials (KVP, tokens_s, h, D + e), one per slice; may be a generator, so that slice s+1 is
    computed while slice s travels (HOP-B: with more than one slice every all-to-all is launched
    asynchronously on the runtime's KVP group). outs: the matching exact outputs (tokens_s, h, D), written in
    place by `dispatch.combine_packed(recv, out, force=impl)` (`impl`: the step's "native" / "triton" /
    "torch" choice, or the `helix.kernels` mode). `rt.kvp_exchange` carries a synchronous exchange over
    shared memory.

    `rt.stats.exchange_seconds` grows by the exposed exchange time: launching, waiting and combining (the
    partial attention of later slices overlapping an exchange is not counted)."""
    group, kvp = rt.kvp_group, rt.grid.kvp
    async_op, pending, exposed = len(outs) > 1, [], 0.0
    for send in sends:
        launched = time.perf_counter()
        pending.append(send_packed(send, group, kvp, async_op, rt.kvp_exchange))
        exposed += time.perf_counter() - launched
    waited = time.perf_counter()
    for (recv, work), out in zip(pending, outs, strict=True):
        if work is not None:
            work.wait()
        dispatch.combine_packed(recv, out, force=impl)
    rt.stats.exchange_seconds += exposed + time.perf_counter() - waited
    rt.stats.exchanges += len(outs)
