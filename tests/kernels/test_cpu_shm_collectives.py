# SPDX-License-Identifier: Apache-2.0
"""The shared-memory collectives across real processes (`spawn`): the all-to-all equal to gloo's
`all_to_all_single` and the all-reduce equal to an fp64 sum (bitwise the same on every peer), round after
round (both halves of the double buffer, messages of changing size, the two collectives interleaved), for 2–4
peers; nothing left in /dev/shm; a message larger than a slot is refused without a round; a peer that never
arrives makes the op raise."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from tests.conftest import spawn
from vllm_helix.kernels import cpu_build

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _native_ops():
    reason = cpu_build.load()
    if reason is not None and cpu_build.DISABLE_ENV in reason:
        pytest.skip(reason)
    assert reason is None, reason


def test_default_spins_long_only_when_every_rank_has_a_core():
    from vllm_helix.kernels.cpu_shm_collectives import default_spins

    assert default_spins(2, 2) == default_spins(1, 2) == default_spins(8, 64) == 4000
    assert default_spins(3, 2) == default_spins(4, 2) == 100


def _rounds(rank: int, world: int, rounds: int) -> None:
    from vllm_helix.kernels.cpu_shm_collectives import ShmGroup, all_to_all_reference, default_spins

    group = dist.new_group(list(range(world)))
    exchange = ShmGroup(group, list(range(world)), rank, slot_bytes=1 << 16)
    assert exchange.path.startswith("/dev/shm/vllm_helix_xchg_")
    if not os.environ.get("VLLM_HELIX_SHM_SPINS"):  # the group's size stands for the job's ranks by default
        assert exchange.spins == default_spins(world, os.cpu_count() or 1)
    if rank == 0:  # the creator unlinks the name as soon as every peer has mapped it
        assert not os.path.exists(exchange.path)
    gen = torch.Generator().manual_seed(rank)
    for i in range(rounds):
        dtype = (torch.float32, torch.bfloat16)[i % 2]
        tokens = 1 + (i * 7) % 13  # every peer sends the same shape per round
        send = torch.randn(world, tokens, 3, 66, generator=gen).to(dtype)
        recv = exchange(send)
        assert torch.equal(recv, all_to_all_reference(send, group)), f"round {i}"
        x = torch.randn(tokens, 40, generator=gen).to(dtype)  # an all-reduce between exchanges
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        assert exchange.all_reduce(x)
        exact = torch.stack([p.double() for p in parts]).sum(0)
        assert (x.double() - exact).abs().max().item() <= (
            1e-5 if dtype == torch.float32 else 2e-2 * exact.abs().max()
        )
        same = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(same, x, group=group)
        assert all(torch.equal(s, x) for s in same), "every peer must hold the same bits"
    assert exchange(torch.zeros(world, 1 << 14)) is None  # 64 KiB · world > slot: refused, no round
    big = torch.zeros(1 << 15)
    assert not exchange.all_reduce(big)  # refused as well, untouched
    send = torch.full((world, 2), float(rank))
    assert torch.equal(exchange(send), torch.arange(world, dtype=torch.float32)[:, None].expand(world, 2))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_matches_gloo_all_to_all(world):
    spawn(world, _rounds, 9)


def _absent_peer(rank: int, world: int) -> None:
    from vllm_helix.kernels.cpu_shm_collectives import ShmGroup

    os.environ["VLLM_HELIX_SHM_TIMEOUT_S"] = "1"
    group = dist.new_group(list(range(world)))
    exchange = ShmGroup(group, list(range(world)), rank, slot_bytes=1 << 12)
    if rank == 0:
        with pytest.raises(RuntimeError, match="did not reach round 1"):
            exchange(torch.zeros(world, 4))
    dist.barrier()


def test_absent_peer_times_out():
    spawn(2, _absent_peer)
