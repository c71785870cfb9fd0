# SPDX-License-Identifier: Apache-2.0
"""`paged_partial_attention`'s CPU fast path (flash kernel over runs of consecutive blocks, read in place from
the token-major cache) against an fp64 dense reference, for every way a block table can be laid out:
consecutive ids, descending ids (vLLM's free queue after requests finish: the partial last block then sits at
the *start* of its sorted run), a partial block in the middle of a run, and a fragmented table (the gather
path)."""

import pytest
import torch

from vllm_helix.attention.torch_attention import local_key_positions, paged_partial_attention

BS, DIM = 8, 16


def _reference(q, keys, values, kpos, qpos, scale):
    """q (T, H, D); keys/values (n, K, D) at global positions kpos; causal by qpos → O (T, H, D), LSE (T,
    H)."""
    group = q.shape[1] // keys.shape[1]
    k = keys.double().repeat_interleave(group, dim=1)
    v = values.double().repeat_interleave(group, dim=1)
    s = torch.einsum("thd,nhd->thn", q.double(), k) * scale
    s = s.masked_fill((kpos[None, :] > qpos[:, None])[:, None, :], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.einsum("thn,nhd->thd", torch.exp(s - lse[..., None]), v), lse


def _table(kind: str, nb: int, total: int, gen) -> list[int]:
    if kind == "consecutive":
        return list(range(3, 3 + nb))
    if kind == "descending":
        return list(range(3 + nb - 1, 2, -1))
    if kind == "partial_inside_run":  # last (partial) block's id sits between two others
        ids = list(range(3, 3 + nb))
        ids[-1], ids[nb // 2] = ids[nb // 2], ids[-1]
        return ids
    return torch.randperm(total, generator=gen)[:nb].tolist()  # fragmented


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("kind", ["consecutive", "descending", "partial_inside_run", "fragmented"])
@pytest.mark.parametrize("n_kv", [5 * BS, 5 * BS - 3, 37 * BS + 1])
@pytest.mark.parametrize("kv_heads,heads", [(1, 4), (2, 6)])
def test_fast_path_matches_dense_reference(dtype, tol, kind, n_kv, kv_heads, heads):
    gen = torch.Generator().manual_seed(n_kv * 7 + heads)
    kvp, rank, scale = 2, 1, 0.3
    nb = -(-n_kv // BS)
    total = nb + 8
    kv = torch.randn(2, total, BS, kv_heads, DIM, generator=gen).to(dtype)  # (2, blocks, bs, K, D)
    ids = _table(kind, nb, total, gen)
    table = torch.tensor([ids], dtype=torch.int32)
    kpos = local_key_positions(n_kv, BS, rank, kvp)
    last = int(kpos[-1])
    # decode (sees every local key) and a 3-token prefill chunk ending past the last local key
    for qpos in (torch.tensor([last + 5]), torch.tensor([last - 2 * BS - 1, last - 3, last + 1])):
        q = torch.randn(len(qpos), heads, DIM, generator=gen).to(dtype)
        out, lse = paged_partial_attention(
            q, kv[0], kv[1], table, torch.tensor([n_kv]), torch.tensor([0, len(qpos)]), scale, qpos, rank, kvp
        )
        keys = kv[0][ids].flatten(0, 1)[:n_kv]
        values = kv[1][ids].flatten(0, 1)[:n_kv]
        ref_o, ref_lse = _reference(q, keys, values, kpos, qpos, scale)
        assert (out.double() - ref_o).abs().max() <= tol
        assert (lse.double() - ref_lse).abs().max() <= tol
