# SPDX-License-Identifier: Apache-2.0
"""Decode-step latency of vLLM on this CPU, stock TP and Helix KVP×TPA, from a measured profile (pure).

The GPU model of ``cost.py`` prices bytes and FLOPs at datasheet rates. On a small CPU box a decode step is
dominated by other things — a per-step fixed cost (scheduler, sampler, the Python of every layer), kernels
far below the FMA rate, collectives with tens of µs of latency — so this model prices every term with the
*measured* cost of the primitive the engine really calls (``vllm-helix calibrate`` measures them and writes a
``CpuProfile``). One decode step of B requests at context S on N ranks (N = vLLM ``-tp``, KVP = ``-dcp``,
TPA = N / KVP), τ = max(1, cores // N) threads per rank, L layers:

    TPOT = F + E(N) + L·(t_qkv + t_attn + t_xchg + t_comb + t_o + t_ffn + 2·t_ar)
             + t_emb_ar + t_head + t_gather

    F          per-step fixed cost (engine-core scheduler, input preparation, sampler, the per-layer Python
               of the model): the one number not measured from a primitive — given
               (``--step-overhead-ms``) or fitted as TPOT(stock TP 1, shortest context) − (the rest of this
               formula) from one bench_decode row (``fit_step_overhead``)
    E(N)       N > 1: the executor's two round trips per step (vLLM's shared-memory MessageQueue, engine core
               → ranks → engine core: ``execute_model`` with the SchedulerOutput, then ``sample_tokens``),
               measured; 0 for N = 1 (the model runs inside the engine-core process)
    t_gemv(W)  c(τ, B) + W / bw(τ, B), W = bf16 weight bytes on one rank; c and bw fitted to the engine's
               linear op (vLLM's CPU GEMM dispatch) timed at three weight sizes
    t_qkv      t_gemv(H·(q + 2k)·Hsz·2): q = Q/N, k = ⌈K/N⌉ for stock (the KV head duplicated when N > K);
               q = Q/TPA, k = K/TPA for Helix (QKV replicated over KVP)
    t_o        t_gemv(Q·Hsz·H/N·2);   t_ffn = t_gemv(2·H·F/N·2) + t_gemv(H·F/N·2)   (SwiGLU)
    t_attn     max(B·4·q·S_r·Hsz / R(kernel, q/k, τ, S_r),  B·S_r·k·2·Hsz·2 / BW_read(τ, L·that))
               S_r = ⌈S/KVP⌉ keys per rank; R = the kernel's achieved FLOP/s measured at several key
               counts (vLLM's ``cpu_attention_with_kv_cache`` for stock, Helix's native packed decode
               kernel for KVP > 1), interpolated in log S_r; BW_read = vectorised-read bandwidth at the size
               of the KV of all layers
    t_xchg     Helix KVP > 1: one all-to-all of the packed partials (shared memory; gloo for ``_gloo``)
    t_comb     Helix KVP > 1: the LSE combine of the received partials
    t_ar       N > 1: one all-reduce of B·H bf16 — gloo for stock TP where vLLM's CPU build has no
               shared-memory ops (AVX2), shared memory (``ShmGroup``) for the Helix worker; two per layer
               (o_proj, down_proj) and t_emb_ar, one for the vocabulary-parallel embedding
    t_head     t_gemv(vocab·H/N·2);   t_gather: N > 1, the gloo all-gather of the logits

Collective terms are the latency measured *inside a decode-step rhythm* (two ranks doing a layer's work
between calls while a third process spins on the executor queue, as on the real box), else back-to-back
latency. Terms the profile lacks (calibrated without vLLM: no executor round trip) count 0 and are listed in
``EnginePrediction.notes``. Limits: ranks ≤ cores (oversubscription is not modelled); collective sizes are
those of batch 1 (a few KiB: latency-bound); F does not grow with B.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, replace

from vllm_helix.planner.cpu_profile import BF16, CpuProfile
from vllm_helix.planner.models import BUILTIN, ModelSpec


# ------------------------------------------------------------------------------------------------- the grids
@dataclass(frozen=True, slots=True)
class EngineGrid:
    """A vLLM configuration of ``benchmarks/bench_decode.py``: ``tp`` ranks (``-tp``), Helix KVP ``kvp``
    (``-dcp``; TPA = tp / kvp), ``helix``: the Helix worker (``--worker-cls vllm_helix.Worker``: its
    shared-memory TP all-reduce, its attention and exchange when kvp > 1), ``exchange``: "shm" or "gloo"."""

    name: str
    tp: int
    kvp: int = 1
    helix: bool = False
    exchange: str = "shm"

    @property
    def tpa(self) -> int:
        return self.tp // self.kvp

    @classmethod
    def from_name(cls, name: str) -> EngineGrid:
        """``stock_tp2`` / ``helix_tp2_dcp2`` / ``helix_tp2_dcp2_gloo`` (bench_decode's config names)."""
        m = re.fullmatch(r"stock_tp(\d+)", name)
        if m:
            return cls(name, int(m[1]))
        m = re.fullmatch(r"helix_tp(\d+)_dcp(\d+)(_gloo)?", name)
        if m:
            return cls(name, int(m[1]), int(m[2]), True, "gloo" if m[3] else "shm")
        raise ValueError(f"unknown engine configuration {name!r} (stock_tpN, helix_tpN_dcpK[_gloo])")


def engine_grids(model: ModelSpec, cores: int) -> list[EngineGrid]:
    """The grids worth comparing on ``cores`` cores (one rank per core at most): stock TP N for N | Q, and
    Helix KVP × TPA = N ≥ 2 with KVP ≥ 2, TPA ≤ K, K % TPA == 0."""
    grids = [EngineGrid(f"stock_tp{n}", n) for n in range(1, cores + 1) if model.n_heads % n == 0]
    for n in range(2, cores + 1):
        if model.n_heads % n:
            continue
        for kvp in range(2, n + 1):
            tpa = n // kvp
            if n % kvp == 0 and tpa <= model.kv_heads and model.kv_heads % tpa == 0:
                grids.append(EngineGrid(f"helix_tp{n}_dcp{kvp}", n, kvp, True))
    return grids


# ------------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True, slots=True)
class EnginePrediction:
    """Predicted decode step: ``tpot_s`` and its ``parts`` (seconds per step, summed over layers)."""

    grid: EngineGrid
    context: int
    batch: int
    tpot_s: float
    parts: dict
    notes: tuple[str, ...] = ()


def _coll(profile: CpuProfile, name: str, notes: list[str]) -> float:
    c = profile.collectives.get(name)
    if c is None:
        notes.append(f"{name} not in the profile: counted 0")
        return 0.0
    return c.seconds


def tpot(
    profile: CpuProfile, model: ModelSpec, grid: EngineGrid, context: int, batch: int = 1
) -> EnginePrediction:
    """One decode step of ``grid`` for ``model`` at ``context`` cached tokens and ``batch`` requests (module
    docstring)."""
    if model.is_mla or model.is_moe:
        raise ValueError("the CPU engine model covers dense GQA/MQA models only")
    n, b, layers = grid.tp, batch, model.n_layers
    q_heads, k_heads, d, h = model.n_heads, model.n_kv_heads, model.head_dim, model.hidden
    if q_heads % n or n % grid.kvp:
        raise ValueError(f"{grid.name}: query heads {q_heads} and tp {n} must divide by tp and kvp")
    notes: list[str] = []
    threads = max(1, profile.cores // n)
    if n > profile.cores:
        notes.append(f"{n} ranks on {profile.cores} cores: oversubscription is not modelled")
    helix_attn = grid.helix and grid.kvp > 1
    if helix_attn:
        if grid.tpa > k_heads or k_heads % grid.tpa:
            raise ValueError(
                f"{grid.name}: Helix needs TPA <= K and K % TPA == 0 (TPA={grid.tpa}, K={k_heads})"
            )
        q_loc, kv_loc = q_heads // grid.tpa, k_heads // grid.tpa
    else:
        q_loc, kv_loc = q_heads // n, max(1, k_heads // n)  # vLLM duplicates the KV head when tp > K
    keys = math.ceil(context / grid.kvp)

    def gemv(params: float) -> float:
        return profile.gemv_seconds(params * BF16, threads, b)

    t_qkv = gemv(h * (q_loc + 2 * kv_loc) * d)
    t_o = gemv(q_heads * d * h / n)
    t_ffn = gemv(2 * h * model.ffn / n) + gemv(h * model.ffn / n)
    rate = profile.attention_rate("helix" if helix_attn else "vllm", q_loc, kv_loc, threads, n)
    flops = b * 4 * q_loc * keys * d
    kv_bytes = b * keys * kv_loc * 2 * d * BF16
    t_attn = max(
        flops / (rate.gflops_at(keys) * 1e9),
        kv_bytes / profile.read_bandwidth(threads, kv_bytes * layers),
    )
    t_xchg = t_comb = t_ar = t_gather = 0.0
    if helix_attn:
        t_xchg = _coll(profile, f"{grid.exchange}_all_to_all", notes)
        t_comb = profile.combine_s
    if n > 1:
        transport = "shm" if grid.helix else profile.vllm_tp_all_reduce
        t_ar = _coll(profile, f"{transport}_all_reduce", notes)
        t_gather = _coll(profile, "gloo_all_gather", notes)
    executor = 0.0
    if n > 1:
        if profile.executor_round_trip_s is None:
            notes.append("no executor round trip in the profile (calibrated without vLLM): counted 0")
        executor = profile.executor_round_trip_s or 0.0
    if profile.step_overhead_s is None:
        notes.append(
            "step overhead F unset: counted 0 (vllm-helix calibrate --step-overhead-ms / --from-bench)"
        )
    parts = {
        "step_overhead": profile.step_overhead_s or 0.0,
        "executor": executor,
        "qkv": layers * t_qkv,
        "attention": layers * t_attn,
        "exchange": layers * t_xchg,
        "combine": layers * t_comb,
        "o_proj": layers * t_o,
        "ffn": layers * t_ffn,
        "all_reduce": (2 * layers + 1) * t_ar,  # o_proj, down_proj per layer + the embedding
        "lm_head": gemv(model.vocab * h / n),
        "logits_gather": t_gather,
    }
    return EnginePrediction(grid, context, batch, sum(parts.values()), parts, tuple(dict.fromkeys(notes)))


def fit_step_overhead(
    profile: CpuProfile,
    model: ModelSpec,
    measured_tpot_s: float,
    context: int,
    batch: int = 1,
    grid: EngineGrid | None = None,
    source: str = "",
) -> CpuProfile:
    """The profile with F = measured TPOT − the modelled rest of the step for ``grid`` (default stock TP 1)
    at ``context`` / ``batch``; clamped at 0 (negative: the primitives over-predict; the source says so)."""
    grid = grid or EngineGrid("stock_tp1", 1)
    rest = tpot(replace(profile, step_overhead_s=0.0), model, grid, context, batch).tpot_s
    f = measured_tpot_s - rest
    why = (
        f"fitted: {grid.name} context {context} batch {batch}{' of ' + source if source else ''}: measured "
        f"{measured_tpot_s * 1e3:.3f} ms - modelled rest {rest * 1e3:.3f} ms"
    )
    if f < 0:
        why += " (negative: clamped to 0)"
    return replace(profile, step_overhead_s=max(0.0, f), step_overhead_source=why)


def choose(predictions: list[EnginePrediction]) -> EnginePrediction:
    """The fastest grid (lowest TPOT)."""
    return min(predictions, key=lambda p: p.tpot_s)


def plan(
    profile: CpuProfile,
    model: ModelSpec,
    contexts: list[int],
    batch: int = 1,
    grids: list[EngineGrid] | None = None,
) -> list[dict]:
    """Per context: every grid's predicted TPOT (ms) and the chosen (fastest) grid."""
    grids = grids or engine_grids(model, profile.cores)
    rows = []
    for s in contexts:
        preds = [tpot(profile, model, g, s, batch) for g in grids]
        best = choose(preds)
        rows.append(
            {
                "context": s,
                "batch": batch,
                "tpot_ms": {p.grid.name: round(p.tpot_s * 1e3, 3) for p in preds},
                "parts_ms": {p.grid.name: {k: round(v * 1e3, 4) for k, v in p.parts.items()} for p in preds},
                "choice": best.grid.name,
                "notes": sorted({n for p in preds for n in p.notes}),
            }
        )
    return rows


# ------------------------------------------------------------------------------- bench_decode result files
def bench_model(d: dict) -> ModelSpec:
    """The ``ModelSpec`` of a bench_decode result's ``"model"`` entry (heads, kv_heads, head_dim, layers,
    intermediate, vocab; hidden = heads·head_dim unless given); the bench default ``tiny-mqa`` when empty."""
    if not d:
        return BUILTIN["tiny-mqa"]
    heads, head_dim = int(d["heads"]), int(d["head_dim"])
    return ModelSpec(
        name=str(d.get("name") or "bench"),
        hf_id="",
        n_layers=int(d["layers"]),
        hidden=int(d.get("hidden") or heads * head_dim),
        n_heads=heads,
        n_kv_heads=int(d["kv_heads"]),
        head_dim=head_dim,
        ffn=int(d["intermediate"]),
        vocab=int(d["vocab"]),
    )


def bench_tpots(result: dict) -> dict[tuple[str, int, int], float]:
    """(config, context, batch) -> measured TPOT in ms of a bench_decode result: the median over repetitions
    of ``results[config]["rows"][i]["tpot_ms"]`` (what its summary reports), else the summary table's
    ``"<config>_tpot_ms"`` columns."""
    rows: dict[tuple[str, int, int], list[float]] = {}
    for cfg, res in (result.get("results") or {}).items():
        for r in (res or {}).get("rows", []) if isinstance(res, dict) else []:
            if "tpot_ms" in r:
                rows.setdefault((cfg, int(r["context"]), int(r["batch"])), []).append(float(r["tpot_ms"]))
    if rows:
        return {k: statistics.median(v) for k, v in rows.items()}
    out = {}
    table = (result.get("summary") or {}).get("table") or result.get("table") or []
    for entry in table:
        for key, value in entry.items():
            if key.endswith("_tpot_ms") and value is not None:
                out[(key[: -len("_tpot_ms")], int(entry["context"]), int(entry["batch"]))] = float(value)
    return out
