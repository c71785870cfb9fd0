# SPDX-License-Identifier: Apache-2.0
"""One synthetic decode step of a 2-rank grid (stock TP 2, Helix KVP 2) on one rank, built from the engine's
primitives at batch 1, and the two RPCs the engine core sends per step.

A step on rank r of N = 2 (Q, K heads, L layers, hidden H, FFN F, vocabulary V; q, k the rank's heads — stock:
Q/N, max(1, K/N); Helix: Q/TPA, K/TPA; each KV buffer holds ⌈S/KVP⌉ keys):

    all-reduce(H)                                                      vocabulary-parallel embedding
    L × [ qkv (H → (q+2k)·D) · attention · (Helix: all-to-all + combine) · o_proj (Q·D/N → H) · all-reduce(H)
          · gate_up (H → 2F/N) · down (F/N → H) · all-reduce(H) ]
    LM head (H → V/N) · all-gather(V/N)                                 then ``sample``: argmax of the logits

Each collective's and the combine's time is recorded per call under its profile name (``shm_all_reduce`` for
Helix, ``gloo_all_reduce`` for stock TP; ``shm_all_to_all``; ``gloo_all_gather``; ``combine``).
"""

from __future__ import annotations

import math
import time

import torch

from vllm_helix.planner.calibration_sizes import BF16
from vllm_helix.planner.engine_cpu import EngineGrid
from vllm_helix.planner.kernel_timing import Attention, make_linear_op
from vllm_helix.planner.models import ModelSpec


def _time_call(samples: list, fn, *args):
    """``fn(*args)``, its wall time appended to ``samples``."""
    t0 = time.perf_counter()
    out = fn(*args)
    samples.append(time.perf_counter() - t0)
    return out


class SyntheticStep:
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
        lin = lambda o, i: make_linear_op(o, i, 1, use_vllm)[0]  # noqa: E731
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
            _time_call(s, self.shm.all_reduce, self.hidden)
        else:
            _time_call(s, self.dist.all_reduce, self.hidden)

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
                recv = _time_call(self.samples.setdefault("shm_all_to_all", []), self.shm.all_to_all, send)
                from vllm_helix.kernels import dispatch

                _time_call(self.samples["combine"], dispatch.combine_packed, recv, self.combined)
            o()
            self._all_reduce()
            gate_up()
            down()
            self._all_reduce()
        self.head()
        _time_call(
            self.samples.setdefault("gloo_all_gather", []),
            self.dist.all_gather_into_tensor,
            self.gathered,
            self.logits,
        )


def make_scheduler_output(batch: int = 1):
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


def make_reply(rpc: str):
    """What rank 0 answers: None to ``execute_model``, the sampled tokens to ``sample_tokens``."""
    if rpc == "execute":
        return None
    return {
        "req_ids": ["req-0"],
        "req_id_to_index": {"req-0": 0},
        "sampled_token_ids": [[1]],
        "logprobs": None,
    }
