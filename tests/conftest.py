# SPDX-License-Identifier: Apache-2.0
"""Shared test helpers: `spawn(world_size, fn)` for multi-process gloo tests, with a hard timeout."""

from __future__ import annotations

import os
import traceback

import pytest
import torch.multiprocessing as mp

from vllm_helix.loopback_group import free_port, init_loopback_gloo


def _entry(rank: int, world_size: int, port: int, fn, args, errors) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        init_loopback_gloo(rank, world_size, port, timeout_s=60)
        fn(rank, world_size, *args)
    except BaseException:  # noqa: BLE001 — report every failure to the parent
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(world_size: int, fn, *args, timeout: float = 120.0) -> None:
    """Run `fn(rank, world_size, *args)` in `world_size` processes joined by a gloo group on 127.0.0.1.

    `fn` must be a module-level function (it is pickled). Fails the test with every rank's traceback, and
    kills all ranks if any is still running after `timeout` seconds.
    """
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, world_size, port, fn, args, errors), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join(5)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    if alive:
        pytest.fail(
            f"spawn({world_size}, {fn.__name__}) timed out after {timeout}s; ranks still alive were killed"
        )
    if failures or any(p.exitcode != 0 for p in procs):
        detail = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(failures))
        pytest.fail(
            f"spawn({world_size}, {fn.__name__}) failed (exit codes {[p.exitcode for p in procs]}):\n{detail}"
        )


@pytest.fixture
def spawn_ranks():
    return spawn


os.environ.setdefault("HF_HUB_OFFLINE", "1")
