# SPDX-License-Identifier: Apache-2.0
"""The Helix exchange across real processes: partial attention on each rank's shard, all-to-all, LSE combine.

World = N = KVP × TPA ranks (spawned, joined by gloo), grouped as `vllm_helix.grid` defines them: KVP group
of tpa index t = {t·KVP + k}, TPA group of kvp index k = {t·KVP + k}. Every rank builds the same random batch
(same seed) and keeps only what it owns:

- KV: the tokens p with owner_rank(p) = (p // B) mod KVP = k (`vllm_helix.sharding`), in a paged cache with
  the blocks scattered and every unowned slot filled with large garbage; KV heads `grid.kv_heads(rank)`;
- Q: the heads of its TPA shard, `grid.attention_heads(rank)`.

It computes (O_i, LSE_i) over its shard, exchanges and combines; rank r's result, heads [r·H/N, (r+1)·H/N),
must equal single-rank attention over the full sequence computed in fp64,

    O_ref[t, h] = Σ_{j ≤ pos_t} softmax_j(scale · q_{t,h} · k_{j,h//(H/K)}) · v_{j,h//(H/K)},

within 1e-5 (fp32) and 2e-2 (bf16) max abs error. The batch mixes decode requests (one query at the last
position) of ragged lengths — shorter than one block, so that KVP ranks > 0 hold no key (LSE −inf, O = 0),
exactly one block per rank, and longer — with prefill chunks whose first queries see keys on rank 0 only.

Paths, each against the reference:
- torch partials (`paged_partial_attention`) → packed → `exchange_and_combine` (the one exchange driver) over
  gloo: one synchronous all-to-all, and two launched asynchronously (as HOP-B launches them);
- HOP-B's `attend_and_exchange` with the torch kernels, slicing off (one exchange) and on (one asynchronous
  exchange per slice), which must also agree with each other exactly;
- `attend_and_exchange` as the Helix worker runs it on CPU: the native decode kernel and combine
  (`helix.kernels` "native") with the exchange over the native shared-memory all-to-all
  (`vllm_helix.kernels.cpu_shm_collectives.ShmGroup`, what `vllm_helix.worker._shm_exchange` installs),
  slicing off (the exchange goes over shared memory) and on (slices go over gloo's async all-to-all).
  Where the native ops cannot be built the test runs the rest and then reports these as skipped.

One spawn of 8 processes runs every grid: starting a process costs more than a grid's checks. Grid KVP × TPA
uses ranks 0..KVP·TPA-1 (the exchange only ever talks within the grid's KVP groups); the others only take part
in creating its groups.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from vllm_helix.attention.exchange import exchange_and_combine, pack_partials
from vllm_helix.attention.step import attend_and_exchange
from vllm_helix.attention.torch_attention import paged_partial_attention
from vllm_helix.config import HelixConfig
from vllm_helix.grid import HelixGrid
from vllm_helix.runtime import HelixStats
from vllm_helix.sharding import compute_slot_mapping, local_lengths, local_slot, owner_rank

H, D, BLOCK = 24, 32, 16  # H divides every N below (2, 3, 4, 6, 8); D a multiple of 16 (native kernel)
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
GARBAGE = 1e3  # unowned cache slots: reading one would move O far beyond the tolerance
GRIDS = [(kvp, tpa) for kvp in (2, 3, 4) for tpa in (1, 2)]
# KV heads per grid: GQA with TPA < K and TPA = K, MQA (K = 1 = TPA), and TPA > K (the KV head replicated)
KV_HEADS = {(2, 1): 2, (2, 2): 2, (3, 1): 1, (3, 2): 1, (4, 1): 3, (4, 2): 4}
HOP_B_SLICES = 3


# ---- the batch every rank builds (same seed), its fp64 reference, and one rank's share of it -------------


def make_batch(kvp: int, kv_heads: int, seed: int) -> dict:
    """Decode requests first (one query token each, at the last position), then prefill chunks (the last `c`
    positions of a sequence, causal). Lengths: < 1 block (ranks > 0 empty), 1 block + 1, one block per rank,
    random up to ~6 blocks per rank; one chunk starts at position 0 (its early queries see rank 0 only)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=gen))

    decode = [1, BLOCK - 3, BLOCK + 1, BLOCK * kvp] + [rand(2, 6 * BLOCK * kvp) for _ in range(3)]
    prefill = [
        (2 * BLOCK * kvp + 5, 2 * BLOCK + 3),
        (BLOCK + 7, BLOCK + 7),
        (rand(BLOCK, 4 * BLOCK * kvp), 5),
    ]
    seqs = [(s, 1) for s in decode] + [(s, min(c, s)) for s, c in prefill]
    q, k, v, positions, starts = [], [], [], [], [0]
    for seq_len, chunk in seqs:
        q.append(torch.randn(chunk, H, D, generator=gen))
        k.append(torch.randn(seq_len, kv_heads, D, generator=gen))
        v.append(0.5 * torch.randn(seq_len, kv_heads, D, generator=gen))  # |O| < 2: bf16 rounding stays small
        positions.append(torch.arange(seq_len - chunk, seq_len))
        starts.append(starts[-1] + chunk)
    return {
        "seqs": seqs,
        "num_decode": len(decode),
        "kv_heads": kv_heads,
        "q": q,
        "k": k,
        "v": v,
        "positions": torch.cat(positions),
        "query_start_loc": torch.tensor(starts),
    }


def reference(batch: dict, dtype: torch.dtype, heads: range, scale: float) -> torch.Tensor:
    """Single-rank causal attention in fp64 over the full sequences for query heads `heads`
    → (tokens, |heads|, D). The inputs are first rounded to `dtype`, as the ranks hold them."""
    group = H // batch["kv_heads"]
    kv_of = torch.tensor([h // group for h in heads])
    outs = []
    for (seq_len, chunk), *qkv in zip(batch["seqs"], batch["q"], batch["k"], batch["v"], strict=True):
        q, k, v = (x.to(dtype).double() for x in qkv)
        s = torch.einsum("thd,jhd->thj", q[:, list(heads)], k[:, kv_of]) * scale  # (chunk, |heads|, S)
        hidden = torch.arange(seq_len)[None, :] > torch.arange(seq_len - chunk, seq_len)[:, None]
        s = s.masked_fill(hidden[:, None, :], float("-inf"))
        outs.append(torch.einsum("thj,jhd->thd", torch.softmax(s, dim=-1), v[:, kv_of]))
    return torch.cat(outs)


def local_share(batch: dict, grid: HelixGrid, rank: int, dtype: torch.dtype) -> dict:
    """Rank `rank`'s paged KV shard (blocks scattered; table padding and unowned slots are garbage) and its
    TPA query shard."""
    k = grid.coords(rank)[1]
    kv_slice = list(grid.kv_heads(rank))
    lens = [local_lengths(s, BLOCK, grid.kvp)[k] for s, _ in batch["seqs"]]
    blocks = [-(-n // BLOCK) for n in lens]
    gen = torch.Generator().manual_seed(1000 + rank)
    num_blocks = sum(blocks) + 2
    key_cache = GARBAGE * torch.randn(num_blocks, BLOCK, len(kv_slice), D, generator=gen)
    value_cache = GARBAGE * torch.randn(num_blocks, BLOCK, len(kv_slice), D, generator=gen)
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    table = torch.full((len(lens), max(blocks) + 1), int(perm[-1]), dtype=torch.int32)  # padding: garbage
    used = 0
    for seq, ((seq_len, _), n) in enumerate(zip(batch["seqs"], lens, strict=True)):
        table[seq, : blocks[seq]] = perm[used : used + blocks[seq]]
        used += blocks[seq]
        owned = [p for p in range(seq_len) if owner_rank(p, BLOCK, grid.kvp) == k]
        assert [local_slot(p, BLOCK, grid.kvp) for p in owned] == list(range(n))  # sharding.py agrees
        if owned:
            idx = torch.arange(n)
            rows = table[seq, idx // BLOCK].long()
            key_cache[rows, idx % BLOCK] = batch["k"][seq][owned][:, kv_slice]
            value_cache[rows, idx % BLOCK] = batch["v"][seq][owned][:, kv_slice]
    query = torch.cat(batch["q"])[:, list(grid.attention_heads(rank))]  # (tokens, H/TPA, D)
    return {
        "query": query.to(dtype),
        "key_cache": key_cache.to(dtype),
        "value_cache": value_cache.to(dtype),
        "block_table": table,
        "local_seq_lens": torch.tensor(lens),
    }


def _metadata(batch: dict, share: dict) -> SimpleNamespace:
    """The fields of the Helix backend's metadata that HOP-B reads."""
    return SimpleNamespace(
        num_reqs=len(batch["seqs"]),
        num_decode_reqs=batch["num_decode"],
        query_start_loc=batch["query_start_loc"],
        block_table=share["block_table"],
        local_seq_lens=share["local_seq_lens"],
        query_positions=batch["positions"],
    )


def _check(name: str, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype and got.shape == ref.shape, f"{name}: {got.dtype} {tuple(got.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite output"
    err = (got.double() - ref).abs().max().item()
    assert err <= TOL[dtype], f"{name}: max abs error {err:.3g} > {TOL[dtype]} ({dtype})"


def _groups(grid: HelixGrid, rank: int):
    """Every rank of the world creates every KVP and TPA group of `grid` (torch.distributed requires it). A
    rank of the grid checks its groups' members — one tpa index and kvp indices 0..KVP-1 in its KVP group, the
    converse in its TPA group — and gets its KVP group; a rank outside the grid gets None."""
    kvp_groups = [dist.new_group(g) for g in grid.kvp_groups()]
    tpa_groups = [dist.new_group(g) for g in grid.tpa_groups()]
    if rank >= grid.world_size:
        return None
    t, k = grid.coords(rank)
    for group, size, expect in (
        (kvp_groups[t], grid.kvp, [[t, i] for i in range(grid.kvp)]),
        (tpa_groups[k], grid.tpa, [[i, k] for i in range(grid.tpa)]),
    ):
        coords = [torch.zeros(2, dtype=torch.int64) for _ in range(size)]
        dist.all_gather(coords, torch.tensor([t, k]), group=group)
        assert [c.tolist() for c in coords] == expect
    return kvp_groups[t]


# ---- one grid on one rank ---------------------------------------------------------------------------------


def _hop_b(
    share: dict,
    batch: dict,
    grid: HelixGrid,
    rank: int,
    scale: float,
    kernels: str,
    sliced: bool,
    kvp_group,
    shm,
) -> tuple[torch.Tensor, HelixStats]:
    """`attend_and_exchange` with a runtime carrying what the Helix worker sets (vllm_helix.runtime)."""
    config = HelixConfig(hop_b=sliced, hop_b_slices=HOP_B_SLICES if sliced else None, kernels=kernels)
    rt = SimpleNamespace(
        grid=grid,
        config=config,
        kvp_rank=grid.coords(rank)[1],
        interleave=BLOCK,
        kvp_group=kvp_group,
        kvp_exchange=shm,
        stats=HelixStats(),
    )
    out = attend_and_exchange(
        share["query"], share["key_cache"], share["value_cache"], _metadata(batch, share), scale, rt
    )
    assert rt.stats.exchanges == (HOP_B_SLICES + 1 if sliced else 1)  # decode slices + the prefill slice
    return out, rt.stats


def _check_grid(rank: int, grid: HelixGrid, kvp_group, shm, seed: int) -> None:
    kvp, kvp_rank = grid.kvp, grid.coords(rank)[1]
    batch = make_batch(kvp, grid.num_kv_heads, seed)
    scale = D**-0.5
    empty_shards = 0
    for dtype in (torch.float32, torch.bfloat16):
        ref = reference(batch, dtype, grid.output_heads(rank), scale)  # (tokens, H/N, D) fp64
        share = local_share(batch, grid, rank, dtype)
        out, lse = paged_partial_attention(
            share["query"],
            share["key_cache"],
            share["value_cache"],
            share["block_table"],
            share["local_seq_lens"],
            batch["query_start_loc"],
            scale,
            batch["positions"],
            kvp_rank,
            kvp,
            BLOCK,
        )  # (tokens, H/TPA, D), (tokens, H/TPA)
        empty = torch.isneginf(lse)
        assert torch.all(out[empty] == 0), "an empty shard must give O = 0"
        empty_shards += int(empty.all(dim=1).sum())
        tokens = out.shape[0]
        for cuts in ([0, tokens], [0, tokens // 2, tokens]):  # one synchronous all-to-all, or two async ones
            rt = SimpleNamespace(grid=grid, kvp_group=kvp_group, kvp_exchange=None, stats=HelixStats())
            got = torch.empty(ref.shape, dtype=dtype)
            pieces = list(itertools.pairwise(cuts))
            sends = [pack_partials(out[a:b], lse[a:b], kvp) for a, b in pieces]
            exchange_and_combine(sends, [got[a:b] for a, b in pieces], rt, "torch")
            assert rt.stats.exchanges == len(pieces)
            _check(f"exchange_and_combine, {len(pieces)} all-to-all(s)", got, ref, dtype)

        results = {}
        for sliced in (False, True):
            results[sliced], _ = _hop_b(share, batch, grid, rank, scale, "torch", sliced, kvp_group, None)
            _check(f"attend_and_exchange torch kernels, hop_b={sliced}", results[sliced], ref, dtype)
        assert torch.equal(results[True], results[False]), "HOP-B slicing changed the result"

        if shm is not None:
            for sliced in (False, True):
                rounds = shm.seq
                got, _ = _hop_b(share, batch, grid, rank, scale, "native", sliced, kvp_group, shm)
                assert shm.seq - rounds == (0 if sliced else 1), "the shared-memory exchange was (not) used"
                _check(f"attend_and_exchange native kernels + shm exchange, hop_b={sliced}", got, ref, dtype)
    # the batch really has empty shards on every rank > 0 of a KVP group (decode lengths 1 and BLOCK - 3)
    assert (empty_shards > 0) == (kvp_rank > 0)


def _rank_all_grids(rank: int, world_size: int, grids: list[tuple[int, int]], native: bool) -> None:
    for kvp, tpa in grids:
        grid = HelixGrid(kvp * tpa, kvp, H, KV_HEADS[kvp, tpa], BLOCK)
        kvp_group = _groups(grid, rank)
        if kvp_group is None:
            continue
        shm = None
        if native:
            from vllm_helix.kernels.cpu_shm_collectives import ShmGroup

            shm = ShmGroup(
                kvp_group, grid.kvp_group(grid.coords(rank)[0]), grid.coords(rank)[1], slot_bytes=1 << 20
            )
        try:
            _check_grid(rank, grid, kvp_group, shm, 100 * kvp + tpa)
        except AssertionError as e:
            where = f"grid KVP {kvp} x TPA {tpa} (K = {grid.num_kv_heads}), rank {rank}"
            raise AssertionError(f"{where}: {e}") from e


@pytest.mark.timeout(300)
def test_exchange_matches_single_rank_attention_on_every_grid(spawn_ranks):
    """KVP ∈ {2, 3, 4} × TPA ∈ {1, 2}; GQA with TPA < K and TPA = K, MQA, TPA > K (replicated KV head)."""
    from vllm_helix.kernels import cpu_build

    unavailable = cpu_build.load()  # builds the native ops once here (cached), before 8 ranks load them
    spawn_ranks(max(k * t for k, t in GRIDS), _rank_all_grids, GRIDS, unavailable is None, timeout=240)
    if unavailable is not None:
        pytest.skip(
            f"gloo and torch-kernel paths passed; native kernels + shared-memory exchange not run: "
            f"{unavailable}"
        )


# ---- the slot mapping the Helix worker installs agrees with vllm_helix.sharding ---------------------------


@pytest.mark.parametrize("kvp", [1, 2, 3, 4])
def test_slot_mapping_agrees_with_sharding(kvp):
    """`compute_slot_mapping` (vLLM's DCP slot mapping, interleave = block size) stores token p of a request
    on rank owner_rank(p) only, at local slot `local_slot(p)` of the request's local blocks:
    slot = table[req, local_slot // B] · B + local_slot mod B; PAD on every other rank."""
    gen = torch.Generator().manual_seed(kvp)
    seq_lens = [1, BLOCK - 1, BLOCK * kvp, BLOCK * kvp + 1, 5 * BLOCK + 7, 200]
    chunks = [1, 3, BLOCK * kvp, 2, 5 * BLOCK + 7, 64]  # the last `chunk` tokens are scheduled
    max_virtual = max(-(-s // (BLOCK * kvp)) for s in seq_lens)
    table = torch.randperm(len(seq_lens) * max_virtual, generator=gen).view(len(seq_lens), max_virtual)
    positions = torch.cat([torch.arange(s - c, s) for s, c in zip(seq_lens, chunks, strict=True)])
    starts = torch.tensor([0] + list(torch.tensor(chunks).cumsum(0)))
    req = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(chunks))
    n = int(starts[-1])
    seen = torch.zeros(n, dtype=torch.int64)
    for rank in range(kvp):
        slots = torch.empty(n + 5, dtype=torch.int64)
        compute_slot_mapping(
            n,
            n + 5,
            starts,
            positions,
            table.to(torch.int32),
            table.shape[1],
            slots,
            BLOCK,
            kvp,
            rank,
            BLOCK,
            PAD_ID=-1,
        )
        assert torch.all(slots[n:] == -1)
        for i in range(n):
            p, r = int(positions[i]), int(req[i])
            if owner_rank(p, BLOCK, kvp) != rank:
                assert slots[i] == -1, (rank, p)
                continue
            local = local_slot(p, BLOCK, kvp)
            assert slots[i] == table[r, local // BLOCK] * BLOCK + local % BLOCK, (rank, p)
            seen[i] += 1
        for r, s in enumerate(seq_lens):  # a request's slots on this rank: distinct, as many as it holds
            mine = slots[:n][(req == r) & (slots[:n] >= 0)]
            assert mine.unique().numel() == mine.numel()
            held = local_lengths(s, BLOCK, kvp)[rank] - local_lengths(s - chunks[r], BLOCK, kvp)[rank]
            assert mine.numel() == held
    assert torch.all(seen == 1)  # every scheduled token is stored on exactly one rank
