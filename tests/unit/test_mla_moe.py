# SPDX-License-Identifier: Apache-2.0
"""Pure pieces of Helix MLA + MoE: sharded absorbed decode + LSE combine + W_UV equals full MLA attention, and
the expert-parallel top-k remapping."""

import pytest
import torch

from vllm_helix.attention.exchange import pack_partials, unpack_partials
from vllm_helix.attention.lse_combine import combine_partials
from vllm_helix.kernels.triton_mla_decode_attention import mla_partial_decode_attention_reference
from vllm_helix.moe import remap_topk_to_local
from vllm_helix.sharding import local_lengths, owner_rank


@pytest.mark.parametrize("kvp,lora,rope,seq_len", [(2, 512, 64, 70), (4, 48, 16, 33), (3, 40, 8, 5)])
def test_sharded_absorbed_mla_decode_equals_full_mla(kvp, lora, rope, seq_len):
    """Each rank holds its round-robin blocks of the latent cache, attends in latent space with W_UK absorbed,
    the partials are exchanged (pack → per-destination chunks → unpack) and combined; W_UV after the combine
    for the rank's H/KVP heads equals the un-absorbed attention with K = W_UK c, V = W_UV c over the whole
    sequence."""
    torch.manual_seed(kvp + lora)
    heads, nope, v_dim, bs = 4 * kvp, 16, 12, 4
    scale = (nope + rope) ** -0.5
    c = torch.randn(seq_len, lora, dtype=torch.float64)  # latent c_j
    k_pe = torch.randn(seq_len, rope, dtype=torch.float64)
    w_uk = torch.randn(heads, nope, lora, dtype=torch.float64) / lora**0.5  # k_nope = W_UK c
    w_uv = torch.randn(heads, v_dim, lora, dtype=torch.float64) / lora**0.5  # v = W_UV c
    q_nope = torch.randn(1, heads, nope, dtype=torch.float64)
    q_pe = torch.randn(1, heads, rope, dtype=torch.float64)
    # reference: plain multi-head attention with materialised K, V
    k = torch.einsum("hnc,sc->shn", w_uk, c)
    v = torch.einsum("hvc,sc->shv", w_uv, c)
    s = (torch.einsum("hn,shn->hs", q_nope[0], k) + torch.einsum("hr,sr->hs", q_pe[0], k_pe)) * scale
    ref = torch.einsum("hs,shv->hv", torch.softmax(s, -1), v)  # (H, V)
    # Helix: absorbed query, latent shards, partial attention per rank
    q_abs = torch.einsum("thn,hnc->thc", q_nope, w_uk)  # (1, H, C)
    entries = torch.cat([c, k_pe], dim=-1)  # (S, C + R)
    sent = []
    for rank in range(kvp):
        mine = [p for p in range(seq_len) if owner_rank(p, bs, kvp) == rank]
        assert len(mine) == local_lengths(seq_len, bs, kvp)[rank]
        n_blocks = max(1, -(-len(mine) // bs))
        cache = torch.zeros(n_blocks + 1, bs, lora + rope, dtype=torch.float64)
        table = torch.arange(1, n_blocks + 1).view(1, -1)  # block 0 unused
        cache[1:].view(-1, lora + rope)[: len(mine)] = entries[mine]
        out, lse = mla_partial_decode_attention_reference(
            q_abs.float(), q_pe.float(), cache.float(), table, torch.tensor([len(mine)]), scale
        )  # fp32, as served
        sent.append(pack_partials(out, lse, kvp))  # (KVP, 1, H/KVP, C + e)
    for rank in range(kvp):
        recv = torch.stack([sent[src][rank] for src in range(kvp)])  # what the all-to-all delivers
        o_parts, lse_parts = unpack_partials(recv, lora)
        latent, _ = combine_partials(o_parts, lse_parts)  # (1, H/KVP, C)
        h = slice(rank * heads // kvp, (rank + 1) * heads // kvp)
        projected = torch.einsum("thc,hvc->thv", latent.double(), w_uv[h])[0]  # W_UV after the combine
        torch.testing.assert_close(projected, ref[h], rtol=1e-4, atol=1e-4)


def test_remap_topk_to_local_zeroes_remote_experts():
    expert_map = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3], dtype=torch.int32)  # rank 1 of EP 2, 8 experts
    ids = torch.tensor([[0, 5], [7, 4], [3, 2]], dtype=torch.int32)
    weights = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    local, w = remap_topk_to_local(ids, weights, expert_map)
    assert local.dtype == ids.dtype
    assert local.tolist() == [[0, 1], [3, 0], [0, 0]]
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.4], [0.3, 0.7], [0.0, 0.0]]))


def test_expert_parallel_sum_equals_all_experts():
    """Σ over EP ranks of the locally computed, remapped expert mixture equals the full mixture."""
    torch.manual_seed(0)
    experts, ep, hidden, tokens, k = 8, 4, 6, 5, 3
    mats = torch.randn(experts, hidden, hidden, dtype=torch.float64)
    x = torch.randn(tokens, hidden, dtype=torch.float64)
    ids = torch.stack([torch.randperm(experts)[:k] for _ in range(tokens)])
    weights = torch.rand(tokens, k, dtype=torch.float64)
    full = torch.einsum("tk,tkh->th", weights, torch.einsum("tkij,tj->tki", mats[ids], x))
    total = torch.zeros_like(full)
    per = experts // ep
    for r in range(ep):
        emap = torch.full((experts,), -1, dtype=torch.int32)
        emap[r * per : (r + 1) * per] = torch.arange(per, dtype=torch.int32)
        local, w = remap_topk_to_local(ids, weights, emap)
        local_mats = mats[r * per : (r + 1) * per]
        total += torch.einsum("tk,tkh->th", w, torch.einsum("tkij,tj->tki", local_mats[local], x))
    torch.testing.assert_close(total, full)
