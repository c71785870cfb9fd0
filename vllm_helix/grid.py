# SPDX-License-Identifier: Apache-2.0
"""The Helix grid: N = KVP × TPA ranks during attention, the same N ranks as one TP group after it.

vLLM's `-tp N -dcp KVP` gives N ranks; Helix reads them as a KVP × TPA grid:

    rank r  ↔  (tpa index t = r // KVP,  kvp index k = r % KVP)
    KVP group of t = {t·KVP + k : k < KVP}      (consecutive ranks — vLLM's DCP group)
    TPA group of k = {t·KVP + k : t < TPA}      (ranks with equal kvp index)

Worked table for N = 4, KVP = 2 (TPA = 2), H = 8 query heads, K = 2 KV heads:

    rank | tpa t | kvp k | attention heads (TPA shard) | KV head(s) | heads after the all-to-all (TP = N)
      0  |   0   |   0   | 0-3                         | 0          | 0-1
      1  |   0   |   1   | 0-3                         | 0          | 2-3
      2  |   1   |   0   | 4-7                         | 1          | 4-5
      3  |   1   |   1   | 4-7                         | 1          | 6-7

During attention rank r computes Q for the H/TPA heads of shard t and K, V for ⌈K/TPA⌉ KV heads, over the
1/KVP of the sequence it owns. The all-to-all over its KVP group leaves it with heads [r·H/N, (r+1)·H/N) —
exactly the input slice of rank r in a TP = N row-parallel out-projection.
"""

from __future__ import annotations

from dataclasses import dataclass


class HelixConfigError(ValueError):
    """A Helix grid or option that cannot work; the message names the values and a grid that would."""


def divisors(n: int) -> list[int]:
    """1 ≤ d ≤ n with n % d == 0, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def rank_coords(rank: int, kvp: int) -> tuple[int, int]:
    """(tpa index t, kvp index k) = (rank // KVP, rank % KVP): the one home of the rank ↔ grid rule."""
    return rank // kvp, rank % kvp


@dataclass(frozen=True, slots=True)
class HelixGrid:
    """A validated KVP × TPA grid for one model.

    Args:
        world_size: N, vLLM's `--tensor-parallel-size`.
        kvp: KVP, vLLM's `--decode-context-parallel-size`.
        num_heads: total query heads H.
        num_kv_heads: total KV heads K (1 for MLA's latent cache).
        block_size: tokens per paged KV block (the unit of round-robin placement).
    """

    world_size: int
    kvp: int
    num_heads: int
    num_kv_heads: int
    block_size: int = 16

    def __post_init__(self) -> None:
        problems = grid_problems(
            self.world_size, self.kvp, self.num_heads, self.num_kv_heads, self.block_size
        )
        if problems:
            raise HelixConfigError(
                f"Helix grid -tp {self.world_size} -dcp {self.kvp} cannot work for a model with "
                f"{self.num_heads} query heads and {self.num_kv_heads} KV heads: "
                + "; ".join(problems)
                + ". "
                + describe_working_grids(self.num_heads, self.num_kv_heads, self.world_size)
            )

    @property
    def tpa(self) -> int:
        return self.world_size // self.kvp

    @property
    def heads_per_tpa_rank(self) -> int:
        """Query heads a rank computes during attention: H / TPA."""
        return self.num_heads // self.tpa

    @property
    def kv_heads_per_tpa_rank(self) -> int:
        """KV heads a rank stores: K / TPA, or 1 (replicated) when TPA > K."""
        return max(1, self.num_kv_heads // self.tpa)

    @property
    def heads_per_rank(self) -> int:
        """Query heads a rank holds after the exchange: H / N."""
        return self.num_heads // self.world_size

    def coords(self, rank: int) -> tuple[int, int]:
        """(tpa index, kvp index) of `rank`."""
        return rank_coords(rank, self.kvp)

    def kvp_group(self, tpa_index: int) -> list[int]:
        return [tpa_index * self.kvp + k for k in range(self.kvp)]

    def tpa_group(self, kvp_index: int) -> list[int]:
        return [t * self.kvp + kvp_index for t in range(self.tpa)]

    def kvp_groups(self) -> list[list[int]]:
        return [self.kvp_group(t) for t in range(self.tpa)]

    def tpa_groups(self) -> list[list[int]]:
        return [self.tpa_group(k) for k in range(self.kvp)]

    def attention_heads(self, rank: int) -> range:
        """Query heads rank computes during attention (its TPA shard)."""
        t = self.coords(rank)[0]
        return range(t * self.heads_per_tpa_rank, (t + 1) * self.heads_per_tpa_rank)

    def kv_heads(self, rank: int) -> range:
        t = self.coords(rank)[0]
        if self.tpa >= self.num_kv_heads:
            first = t * self.num_kv_heads // self.tpa
            return range(first, first + 1)
        return range(t * self.kv_heads_per_tpa_rank, (t + 1) * self.kv_heads_per_tpa_rank)

    def output_heads(self, rank: int) -> range:
        """Query heads rank holds after the all-to-all: the TP = N out-projection slice."""
        return range(rank * self.heads_per_rank, (rank + 1) * self.heads_per_rank)

    def rank_table(self) -> list[dict]:
        """One row per rank: coordinates and head ranges (used by /helix/status and the docs)."""
        return [
            {
                "rank": r,
                "tpa_index": self.coords(r)[0],
                "kvp_index": self.coords(r)[1],
                "attention_heads": [self.attention_heads(r).start, self.attention_heads(r).stop - 1],
                "kv_heads": [self.kv_heads(r).start, self.kv_heads(r).stop - 1],
                "output_heads": [self.output_heads(r).start, self.output_heads(r).stop - 1],
            }
            for r in range(self.world_size)
        ]


def grid_problems(
    world_size: int, kvp: int, num_heads: int, num_kv_heads: int, block_size: int = 16
) -> list[str]:
    """Every reason a grid cannot work (empty list: it can)."""
    problems = []
    if world_size < 1 or kvp < 1:
        return [f"-tp ({world_size}) and -dcp ({kvp}) must be ≥ 1"]
    if world_size % kvp:
        problems.append(f"-tp ({world_size}) must be divisible by -dcp ({kvp}) since N = KVP × TPA")
    if num_heads % world_size:
        problems.append(
            f"query heads ({num_heads}) must be divisible by N = -tp ({world_size}) so that every rank "
            "holds H/N heads for the out-projection"
        )
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        problems.append(f"query heads ({num_heads}) must be a multiple of KV heads ({num_kv_heads})")
    elif world_size % kvp == 0:
        tpa = world_size // kvp
        if tpa <= num_kv_heads and num_kv_heads % tpa:
            problems.append(f"KV heads ({num_kv_heads}) must be divisible by TPA = N/KVP ({tpa})")
        if tpa > num_kv_heads and tpa % num_kv_heads:
            problems.append(
                f"TPA = N/KVP ({tpa}) exceeds KV heads ({num_kv_heads}) and is not a multiple of it"
            )
    if block_size < 1:
        problems.append(f"block size ({block_size}) must be ≥ 1")
    return problems


def working_grids(num_heads: int, num_kv_heads: int, max_world_size: int = 64) -> list[tuple[int, int]]:
    """All (N, KVP) with N ≤ max_world_size that `grid_problems` accepts, smallest N first, TPA ≤ K
    preferred."""
    grids = []
    for n in range(1, max_world_size + 1):
        for kvp in divisors(n):
            if not grid_problems(n, kvp, num_heads, num_kv_heads):
                grids.append((n, kvp))
    return grids


def describe_working_grids(num_heads: int, num_kv_heads: int, near_world_size: int) -> str:
    """A short hint listing grids that work, nearest to the requested N first."""
    grids = working_grids(num_heads, num_kv_heads, max(8, 2 * near_world_size))
    same_n = [g for g in grids if g[0] == near_world_size]
    pick = same_n or sorted(grids, key=lambda g: (abs(g[0] - near_world_size), -g[1]))[:4]
    text = ", ".join(f"-tp {n} -dcp {k} (KVP {k} × TPA {n // k})" for n, k in pick)
    return f"Grids that work for this model: {text}."
