# SPDX-License-Identifier: Apache-2.0
"""The Helix exchange: one all-to-all over the KVP group, then the exact LSE combine.

Before: every rank of a KVP group holds partials (O_i, LSE_i) for the same H/TPA heads (its TPA shard) over its own
slice of the sequence. Split those heads into KVP chunks of H/N heads; chunk j goes to KVP peer j. After one
`all_to_all_single`, peer j holds chunk j's partials from every peer — (KVP, tokens, H/N, ·) — and combines them:

    O = Σ_i exp(LSE_i − LSE) · O_i,     LSE = log Σ_i exp(LSE_i)

O and LSE travel in one packed tensor (tokens, H/TPA, D + e): the fp32 LSE is bit-cast into e = 4 / itemsize extra
elements of the output dtype, so the exchange is exact for fp32, bf16 and fp16 alike. Per rank it sends
tokens × H/TPA × (D + e) elements, independent of the sequence length S.

Rank r = t·KVP + k ends with heads [r·H/N, (r+1)·H/N): the input slice of a TP = N row-parallel out-projection.

Transport: `dist.all_to_all_single` on the KVP process group (gloo on CPU, NCCL on CUDA), or — for a synchronous
exchange on CPU — `gather_exchange`, an all-gather over vLLM's shared-memory communicator of which each peer keeps
its own chunk (`shm_all_to_all`): KVP× the bytes, but a few µs instead of a TCP round trip for decode-sized messages.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vllm_helix.combine import combine_partials

__all__ = ["pack_partials", "unpack_partials", "exchange_and_combine", "start_exchange", "finish_exchange",
           "shm_all_to_all"]


def pack_partials(out: torch.Tensor, lse: torch.Tensor, kvp: int) -> torch.Tensor:
    """(tokens, heads, D) + (tokens, heads) fp32 → (KVP, tokens, heads/KVP, D + e), chunk j destined to peer j."""
    tokens, heads, dim = out.shape
    lse_bits = lse.float().contiguous().view(out.dtype).view(tokens, heads, -1)  # (tokens, heads, e)
    packed = torch.cat([out, lse_bits], dim=-1)                                     # (tokens, heads, D + e)
    return packed.view(tokens, kvp, heads // kvp, -1).transpose(0, 1).contiguous()


def unpack_partials(packed: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(KVP, tokens, h, D + e) → O (KVP, tokens, h, D), LSE (KVP, tokens, h) fp32."""
    out = packed[..., :dim]
    lse = packed[..., dim:].contiguous().view(torch.float32).squeeze(-1)
    return out, lse


def shm_all_to_all(coordinator):
    """An all-to-all for `start_exchange` built from a vLLM `GroupCoordinator`'s all-gather (on CPU: the
    shared-memory `shm_all_gather`). Peer k of the group keeps chunk k of every peer's send:

        send (KVP, …) on every peer  →  gathered (KVP_src, KVP_dst, …)  →  recv = gathered[:, k]   (KVP_src, …)
    """
    k, size = coordinator.rank_in_group, coordinator.world_size

    def exchange(send: torch.Tensor) -> torch.Tensor:
        gathered = coordinator.all_gather(send.reshape(1, -1), dim=0)   # (KVP_src, KVP·…)
        return gathered.view(size, *send.shape)[:, k]

    return exchange


def start_exchange(out: torch.Tensor, lse: torch.Tensor, group: dist.ProcessGroup | None, kvp: int,
                   async_op: bool = False, gather_exchange=None):
    """Launch the all-to-all of packed partials. Returns (received buffer, work handle or None).
    `gather_exchange` (from `shm_all_to_all`), if given, carries a synchronous exchange instead of `group`."""
    send = pack_partials(out, lse, kvp)
    if kvp == 1:
        return send, None
    if gather_exchange is not None and not async_op:
        return gather_exchange(send), None
    recv = torch.empty_like(send)
    work = dist.all_to_all_single(recv, send, group=group, async_op=async_op)
    return recv, (work if async_op else None)


def finish_exchange(recv: torch.Tensor, work, dim: int, out_dtype: torch.dtype,
                    combine=combine_partials) -> torch.Tensor:
    """Wait for the all-to-all and combine (`combine`: the torch reference or a kernel with its signature):
    → (tokens, H/N, D) in `out_dtype`."""
    if work is not None:
        work.wait()
    partial_out, partial_lse = unpack_partials(recv, dim)
    combined, _ = combine(partial_out, partial_lse, out_dtype)
    return combined


def exchange_and_combine(out: torch.Tensor, lse: torch.Tensor, group: dist.ProcessGroup | None,
                         kvp: int) -> torch.Tensor:
    """Partials (tokens, H/TPA, D) + LSE (tokens, H/TPA) on every KVP peer → exact (tokens, H/N, D) on each."""
    recv, work = start_exchange(out, lse, group, kvp)
    return finish_exchange(recv, work, out.shape[-1], out.dtype)
