# SPDX-License-Identifier: Apache-2.0
"""The exact Helix combine of per-shard partial attention (pure torch).

Shard i (one KVP rank) returns a locally normalised output O_i and its log-sum-exp LSE_i. The exact attention
over the union of the shards is

    LSE = log Σ_i exp(LSE_i)                 (computed as M + log Σ_i exp(LSE_i − M), M = max_i LSE_i)
    O   = Σ_i exp(LSE_i − LSE) · O_i

A shard with no visible key has LSE_i = −inf, O_i = 0 and weight 0. If every shard is empty (cannot happen for
a causal decoder, but is guarded) O = 0 and LSE = −inf. Accumulation is float32.
"""

from __future__ import annotations

import torch

__all__ = ["combine_partials"]


def combine_partials(
    partial_out: torch.Tensor,  # (kvp, tokens, heads, dim)
    partial_lse: torch.Tensor,  # (kvp, tokens, heads) float32, base e
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine KVP partials into the exact output (tokens, heads, dim) and its LSE (tokens, heads)."""
    lse = partial_lse.float()
    m = lse.amax(dim=0)  # (tokens, heads)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lse - m_safe)  # (kvp, tokens, heads); 0 for empty shards
    total = w.sum(dim=0)  # (tokens, heads)
    weights = w / total.clamp_min(1e-30)
    out = (weights.unsqueeze(-1) * partial_out.float()).sum(dim=0)  # (tokens, heads, dim)
    out_lse = m_safe + torch.log(total)  # −inf where all shards are empty
    return out.to(out_dtype or partial_out.dtype), out_lse
