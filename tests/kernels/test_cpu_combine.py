# SPDX-License-Identifier: Apache-2.0
"""The native combine from a receive buffer against the torch combine and an fp64 reference: empty shards
(LSE −inf), all shards empty (O = 0), a strided output (the attention output rows), fp32 and bf16."""

from __future__ import annotations

import pytest
import torch

from vllm_helix.attention.exchange import combine_received, pack_partials
from vllm_helix.kernels import cpu_build, cpu_combine


@pytest.fixture(autouse=True)
def _native_ops():
    reason = cpu_build.load()
    if reason is not None and cpu_build.DISABLE_ENV in reason:
        pytest.skip(reason)
    assert reason is None, reason


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("kvp", [1, 2, 4])
def test_matches_torch_and_fp64(dtype, tol, kvp):
    gen = torch.Generator().manual_seed(kvp)
    tokens, heads, dim = 5, 6, 64
    outs = torch.randn(kvp, tokens, heads, dim, generator=gen).to(dtype)
    lses = torch.randn(kvp, tokens, heads, generator=gen) * 4
    lses[0, 1] = float("-inf")  # one shard empty for token 1
    lses[:, 2, 3] = float("-inf")  # every shard empty for (token 2, head 3)
    outs[0, 1] = 0
    outs[:, 2, 3] = 0
    # the receive buffer: chunk j of every peer's send, stacked over peers (here: each "peer" sends one chunk)
    recv = torch.stack([pack_partials(outs[i], lses[i], 1)[0] for i in range(kvp)])  # (KVP, T, h, D + e)
    rows = torch.empty(tokens, heads + 2, dim, dtype=dtype)
    out = rows[:, 1 : heads + 1]  # strided, like output[:n] of the attention layer
    cpu_combine.combine_packed(recv, out)
    ref = torch.empty(tokens, heads, dim, dtype=dtype)
    combine_received(recv, ref)
    w = torch.softmax(lses.double(), dim=0).nan_to_num(0.0)  # all −inf → NaN → 0
    exact = (w[..., None] * outs.double()).sum(0)
    assert (out.double() - exact).abs().max().item() <= tol
    assert (out.double() - ref.double()).abs().max().item() <= tol
    assert not out[2, 3].any()
