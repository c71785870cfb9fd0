# SPDX-License-Identifier: Apache-2.0
"""The MLA exchange: vLLM 0.32's `MLAAttention.dcp_manager.combine` (an `MLADCPManager` from
`vllm.v1.attention.ops.dcp`) replaced, per layer, by the Helix exchange.

Why: vLLM's own DCP combine (Triton all-to-all / all-gather + reduce-scatter) is CUDA-only; on CPU the
partials (B, H_g, C) + LSE (B, H_g) that `HelixMLAImpl.forward_mqa` returns must go through the Helix
exchange (`vllm_helix.attention.mla._helix_combine`), same signature.

Guard: called by `HelixMLAImpl` only, in a Helix worker, when DCP > 1; a layer's manager is replaced once
(`helix_combine` marks it).
"""

from __future__ import annotations

__all__ = ["install_mla_combine"]


def install_mla_combine(layer, combine, rt) -> None:
    """Route `layer.dcp_manager.combine(out, lse, **kw)` to `combine(out, lse, rt=rt, **kw)` (once)."""
    manager = getattr(layer, "dcp_manager", None)
    if manager is None or getattr(manager, "helix_combine", False):
        return
    manager.combine = lambda out, lse, **kw: combine(out, lse, rt=rt, **kw)
    manager.helix_combine = True
