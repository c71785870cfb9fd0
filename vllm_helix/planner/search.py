# SPDX-License-Identifier: Apache-2.0
"""Grid search over strategies, GPU counts and batch sizes, Pareto frontiers, and the paper's headline ratios.

A point is (x, y) = (tokens/s/user = 1/TTL, tokens/s/GPU = B/(TTL·N)). A frontier keeps the points no other
point beats on both axes. Headline ratios (Helix over the best baseline frontier):

- ``max_interactivity_gain`` = max x(Helix) / max x(baselines)
- ``throughput_gain_at_equal_ttl`` = max over x reached by both of y_H(x) / y_B(x), where y(x) is the best
  throughput among frontier points with interactivity ≥ x (i.e. TTL ≤ 1/x)
- ``hop_b_off_loss`` = max over the Helix frontier of 1 - TTL_on / TTL_off, the same grid and batch with HOP-B
  switched off (the paper's "HOP-B off costs up to 12% tokens/s/user")
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from vllm_helix.grid import divisors
from vllm_helix.planner.cost import Estimate, Grid, Precision, estimate
from vllm_helix.planner.hardware import Hardware
from vllm_helix.planner.models import ModelSpec

BASELINES = ("tp", "tp_pp", "medha", "ep")


def batch_sizes(limit: int = 4096) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, ... (powers of two and 1.5x between) up to ``limit``."""
    out, b = [], 1
    while b <= limit:
        out += [b] + ([b * 3 // 2] if b >= 2 and b * 3 // 2 <= limit else [])
        b *= 2
    return out


def gpu_counts(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit`` (the paper's 1-64 GPU sweep)."""
    return [1 << i for i in range(limit.bit_length()) if 1 << i <= limit]


def _eps(m: ModelSpec, width: int) -> list[int]:
    return [e for e in divisors(width) if e <= m.n_experts] if m.is_moe else [1]


def layouts(m: ModelSpec, strategy: str, n: int) -> Iterator[dict]:
    """Yield the grid keyword sets (without batch) of ``strategy`` on ``n`` devices; invalid ones are skipped
    later by ``check_grid``."""
    if strategy == "helix":
        for tpa in divisors(m.kv_heads):
            if n % tpa == 0:
                for ep in _eps(m, n):
                    for hop in (True, False):
                        yield dict(kvp=n // tpa, tpa=tpa, ep=ep, hop_b=hop)
    elif strategy == "tp":
        for ep in _eps(m, n):
            yield dict(tpa=n, ep=ep)
    elif strategy == "tp_pp":
        for pp in divisors(n)[1:]:
            for ep in _eps(m, n // pp):
                yield dict(tpa=n // pp, pp=pp, ep=ep)
    elif strategy == "medha":
        for kvp in divisors(n)[1:]:
            yield dict(kvp=kvp, tpa=n // kvp)
    elif strategy == "ep":
        yield dict(ep=n)


def sweep(
    m: ModelSpec,
    hw: Hardware,
    p: Precision,
    s: int,
    strategies: Iterable[str],
    gpus: Iterable[int],
    batches: Iterable[int] | None = None,
) -> list[Estimate]:
    """All feasible estimates. Batches grow until memory runs out (larger batches only need more memory)."""
    out: list[Estimate] = []
    batches = list(batches or batch_sizes())
    for strategy in strategies:
        for n in gpus:
            for kw in layouts(m, strategy, n):
                for b in batches:
                    if strategy == "ep":
                        b *= n  # B/N requests per device
                    try:
                        e = estimate(m, hw, p, s, Grid(strategy, n, b, **kw))
                    except ValueError:
                        continue
                    if not e.feasible:  # memory only grows with the batch
                        break
                    out.append(e)
    return out


def pareto(points: Iterable[Estimate]) -> list[Estimate]:
    """Frontier of (tokens/s/user, tokens/s/GPU), sorted by increasing interactivity."""
    best: list[Estimate] = []
    for e in sorted(points, key=lambda e: (-e.tokens_per_s_user, -e.tokens_per_s_gpu)):
        if not best or e.tokens_per_s_gpu > best[-1].tokens_per_s_gpu:
            best.append(e)
    return best[::-1]


def _y_at(front: list[Estimate], x: float) -> float:
    return max((e.tokens_per_s_gpu for e in front if e.tokens_per_s_user >= x * (1 - 1e-9)), default=0.0)


def headline(helix: list[Estimate], base: list[Estimate], everything: Iterable[Estimate]) -> dict[str, float]:
    """The three ratios of the paper (see the module docstring) from the Helix (HOP-B on) and baseline
    frontiers; ``everything`` must hold the HOP-B-off twin of every Helix frontier point."""
    x_h = max(e.tokens_per_s_user for e in helix)
    x_b = max(e.tokens_per_s_user for e in base)
    xs = [e.tokens_per_s_user for e in base + helix if e.tokens_per_s_user <= min(x_h, x_b)]
    thr = max(_y_at(helix, x) / _y_at(base, x) for x in xs)
    return {
        "max_interactivity_gain": x_h / x_b,
        "throughput_gain_at_equal_ttl": thr,
        "hop_b_off_loss": hop_b_off_loss(helix, everything),
    }


def hop_b_off_loss(helix: list[Estimate], everything: Iterable[Estimate]) -> float:
    """Largest tokens/s/user loss ``1 - TTL_on / TTL_off`` over Helix frontier points when only HOP-B is
    switched off (same grid and batch)."""
    off = {
        replace(e.grid, hop_b=True): e for e in everything if e.grid.strategy == "helix" and not e.grid.hop_b
    }
    return max((1 - e.ttl_s / off[e.grid].ttl_s for e in helix if e.grid in off), default=0.0)


def best_under_ttl(points: Iterable[Estimate], ttl_s: float) -> Estimate | None:
    """Highest tokens/s/GPU with TTL ≤ ``ttl_s`` (ties: lower TTL)."""
    ok = [e for e in points if e.ttl_s <= ttl_s]
    return max(ok, key=lambda e: (e.tokens_per_s_gpu, -e.ttl_s), default=None)


PAPER_MODELS = {"deepseek-r1": ("tp", "tp_pp", "ep"), "llama-405b": ("tp", "tp_pp", "medha")}
PAPER_CONTEXT = 1 << 20
PAPER_BATCHES = range(1, 4097)  # every batch size up to memory; a 1.5x-step grid quantises the ratios


def paper_experiment(hw: Hardware, p: Precision, models: dict[str, ModelSpec]) -> dict[str, dict]:
    """The paper's sweep: 1-64 GPUs, every strategy and every batch size, 1M context. Per model: the Helix
    (HOP-B on) and per-baseline frontiers and the headline ratios. Medha is left out for DeepSeek-R1 as in
    the paper (with MLA any TP > 1 duplicates the latent cache)."""
    out = {}
    for name, bases in PAPER_MODELS.items():
        pts = sweep(models[name], hw, p, PAPER_CONTEXT, ("helix",) + bases, gpu_counts(64), PAPER_BATCHES)
        helix = pareto(e for e in pts if e.grid.strategy == "helix" and e.grid.hop_b)
        fronts = {b: pareto(e for e in pts if e.grid.strategy == b) for b in bases}
        base = pareto(e for f in fronts.values() for e in f)
        out[name] = {
            "helix": helix,
            "baselines": fronts,
            "headline": headline(helix, base, pts),
            "vs_tp": headline(helix, fronts["tp"], pts),
        }
    return out
