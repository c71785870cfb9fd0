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
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vllm_helix.combine import combine_partials

__all__ = [
    "pack_partials",
    "unpack_partials",
    "combine_received",
    "exchange_and_combine",
    "start_exchange",
    "send_packed",
    "finish_exchange",
]


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


def start_exchange(
    out: torch.Tensor,
    lse: torch.Tensor,
    group: dist.ProcessGroup | None,
    kvp: int,
    async_op: bool = False,
    local_exchange=None,
):
    """Pack partials (tokens, heads, D) + (tokens, heads) and launch their all-to-all (`send_packed`)."""
    return send_packed(pack_partials(out, lse, kvp), group, kvp, async_op, local_exchange)


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


def finish_exchange(
    recv: torch.Tensor,
    work,
    dim: int,
    out_dtype: torch.dtype,
    combine=combine_received,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wait for the all-to-all and combine into `out` (tokens, H/N, D), allocated in `out_dtype` if None.
    `combine(recv, out)`: `combine_received`, or the kernel `vllm_helix.kernels.dispatch.combine_packed`
    picks."""
    if work is not None:
        work.wait()
    if out is None:
        out = torch.empty(*recv.shape[1:3], dim, dtype=out_dtype, device=recv.device)
    combine(recv, out)
    return out


def exchange_and_combine(
    out: torch.Tensor, lse: torch.Tensor, group: dist.ProcessGroup | None, kvp: int
) -> torch.Tensor:
    """Partials (tokens, H/TPA, D) + LSE (tokens, H/TPA) on every KVP peer → exact (tokens, H/N, D) on
    each."""
    recv, work = start_exchange(out, lse, group, kvp)
    return finish_exchange(recv, work, out.shape[-1], out.dtype)
