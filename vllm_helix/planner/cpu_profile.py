# SPDX-License-Identifier: Apache-2.0
"""The measured CPU profile the engine model prices a decode step with: ``CpuProfile`` (pure data + lookups).

``vllm-helix calibrate`` measures it (``profile_measurement.py``) and saves it as JSON (kind
"vllm-helix-cpu-profile", version 1); ``engine_cpu.tpot`` reads it. The lookups:

    read_bandwidth(τ, bytes)    vectorised-read bytes/s at the nearest measured thread count, piecewise linear
                                in log(bytes) between measured buffer sizes, clamped at the ends
    gemv_seconds(W, τ, B)       the engine's linear op: call_s + W / bytes_per_s at the nearest τ, linear in B
                                between measured batches
    attention_rate(...)         the measured kernel closest to a call (kernel, then τ, then ranks running at
                                once, then heads per KV head); ``gflops_at(S_r)`` = 4·heads·S_r·Hsz / seconds,
                                piecewise linear in log(S_r)
    Collective.seconds          the latency inside a decode-step rhythm where measured, else back to back
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_KIND = "vllm-helix-cpu-profile"
PROFILE_VERSION = 1
BF16 = 2  # bytes per weight / KV element / activation element in the engine (--dtype bfloat16)

COLLECTIVES = (
    "shm_all_to_all",
    "shm_all_reduce",
    "gloo_all_reduce",
    "gloo_all_gather",
    "gloo_all_to_all",
)


# ----------------------------------------------------------------------------------------------- the profile
@dataclass(frozen=True, slots=True)
class AttentionRate:
    """A decode-attention kernel timed on one rank: ``points`` = [(keys per sequence, seconds per call)] at
    batch 1 for ``heads`` query heads over ``kv_heads`` KV heads of ``head_dim``, ``threads`` threads, while
    ``ranks`` ranks ran the same call at once (shared DRAM and L3)."""

    kernel: str  # "vllm" (cpu_attention_with_kv_cache) or "helix" (helix_cpu.decode_attention_packed)
    heads: int
    kv_heads: int
    head_dim: int
    threads: int
    ranks: int
    points: tuple[tuple[int, float], ...]

    @property
    def group(self) -> float:
        return self.heads / self.kv_heads

    def gflops_at(self, keys: int) -> float:
        """Achieved GFLOP/s (4·heads·keys·Hsz per call), interpolated in log2(keys), clamped at the ends."""
        pts = sorted((k, 4 * self.heads * k * self.head_dim / s / 1e9) for k, s in self.points)
        return _interp_log(pts, keys)


@dataclass(frozen=True, slots=True)
class Collective:
    """One collective between ``ranks`` processes: ``idle_s`` back to back, ``in_step_s`` inside a decode-step
    rhythm (None when not measured)."""

    ranks: int
    nbytes: int
    idle_s: float
    in_step_s: float | None = None

    @property
    def seconds(self) -> float:
        return self.in_step_s if self.in_step_s is not None else self.idle_s


@dataclass(frozen=True, slots=True)
class Gemv:
    """The engine's linear op at ``threads`` threads and ``batch`` rows:
    t = call_s + weight bytes / bytes_per_s."""

    threads: int
    batch: int
    call_s: float
    bytes_per_s: float

    def seconds(self, nbytes: float) -> float:
        return self.call_s + nbytes / self.bytes_per_s


@dataclass(frozen=True, slots=True)
class CpuProfile:
    """What ``vllm-helix calibrate`` measured on one machine (see the module docstring for how it is used).

    ``read_bw``: threads -> [(buffer bytes, bytes/s)]; ``gemm_flops``: dtype -> threads -> FLOP/s (reported,
    not used by the step model: the engine's GEMVs and attention are timed directly); ``step_overhead_s``: F,
    None until given or fitted (then 0 is used and ``notes`` say so)."""

    name: str
    cores: int
    read_bw: dict[int, tuple[tuple[int, float], ...]]
    gemm_flops: dict[str, dict[int, float]]
    gemv: tuple[Gemv, ...]
    attention: tuple[AttentionRate, ...]
    collectives: dict[str, Collective]
    combine_s: float = 0.0
    executor_round_trip_s: float | None = None
    vllm_tp_all_reduce: str = "gloo"  # what stock vLLM's TP all-reduce runs over on this build
    step_overhead_s: float | None = None
    step_overhead_source: str = "unset"
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    # -- JSON
    def to_dict(self) -> dict:
        return {
            "kind": PROFILE_KIND,
            "version": PROFILE_VERSION,
            "name": self.name,
            "cores": self.cores,
            "read_bandwidth_Bps": {str(t): {str(b): v for b, v in pts} for t, pts in self.read_bw.items()},
            "gemm_flops": {d: {str(t): v for t, v in r.items()} for d, r in self.gemm_flops.items()},
            "gemv": [
                {"threads": g.threads, "batch": g.batch, "call_s": g.call_s, "bytes_per_s": g.bytes_per_s}
                for g in self.gemv
            ],
            "attention": [
                {
                    "kernel": a.kernel,
                    "heads": a.heads,
                    "kv_heads": a.kv_heads,
                    "head_dim": a.head_dim,
                    "threads": a.threads,
                    "ranks": a.ranks,
                    "points": [[k, s] for k, s in a.points],
                    "gflops": [[k, round(a.gflops_at(k), 2)] for k, _ in a.points],
                }
                for a in self.attention
            ],
            "collectives": {
                n: {"ranks": c.ranks, "bytes": c.nbytes, "idle_s": c.idle_s, "in_step_s": c.in_step_s}
                for n, c in self.collectives.items()
            },
            "combine_s": self.combine_s,
            "executor_round_trip_s": self.executor_round_trip_s,
            "vllm_tp_all_reduce": self.vllm_tp_all_reduce,
            "step_overhead_s": self.step_overhead_s,
            "step_overhead_source": self.step_overhead_source,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CpuProfile:
        if d.get("kind") != PROFILE_KIND:
            raise ValueError(
                f"not a {PROFILE_KIND} (kind={d.get('kind')!r}); make one with vllm-helix calibrate"
            )
        if d.get("version") != PROFILE_VERSION:
            raise ValueError(
                f"profile version {d.get('version')} != {PROFILE_VERSION}; re-run vllm-helix calibrate"
            )
        return cls(
            name=d["name"],
            cores=int(d["cores"]),
            read_bw={
                int(t): tuple(sorted((int(b), float(v)) for b, v in pts.items()))
                for t, pts in d["read_bandwidth_Bps"].items()
            },
            gemm_flops={
                k: {int(t): float(v) for t, v in r.items()} for k, r in d.get("gemm_flops", {}).items()
            },
            gemv=tuple(
                Gemv(int(g["threads"]), int(g["batch"]), g["call_s"], g["bytes_per_s"]) for g in d["gemv"]
            ),
            attention=tuple(
                AttentionRate(
                    a["kernel"],
                    int(a["heads"]),
                    int(a["kv_heads"]),
                    int(a["head_dim"]),
                    int(a["threads"]),
                    int(a["ranks"]),
                    tuple((int(k), float(s)) for k, s in a["points"]),
                )
                for a in d["attention"]
            ),
            collectives={
                n: Collective(int(c["ranks"]), int(c["bytes"]), float(c["idle_s"]), c.get("in_step_s"))
                for n, c in d["collectives"].items()
            },
            combine_s=float(d.get("combine_s") or 0.0),
            executor_round_trip_s=d.get("executor_round_trip_s"),
            vllm_tp_all_reduce=d.get("vllm_tp_all_reduce", "gloo"),
            step_overhead_s=d.get("step_overhead_s"),
            step_overhead_source=d.get("step_overhead_source", "unset"),
            meta=d.get("meta", {}),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CpuProfile:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # -- lookups
    def read_bandwidth(self, threads: int, nbytes: float) -> float:
        """Bytes/s of a vectorised read of ``nbytes`` (log-interpolated between measured sizes)."""
        return _interp_log(self.read_bw[_nearest(self.read_bw, threads)], nbytes)

    def gemv_seconds(self, nbytes: float, threads: int, batch: int) -> float:
        """One call of the engine's linear op over ``nbytes`` of weights: the entries at the nearest thread
        count, linear in the batch between (or beyond) the measured batches."""
        t = _nearest({g.threads: None for g in self.gemv}, threads)
        by_batch = sorted((g.batch, g.seconds(nbytes)) for g in self.gemv if g.threads == t)
        if len(by_batch) == 1 or batch <= by_batch[0][0]:
            return by_batch[0][1]
        i = min(bisect.bisect_left([b for b, _ in by_batch], batch), len(by_batch) - 1)
        (b0, s0), (b1, s1) = by_batch[i - 1], by_batch[i]
        return max(s0, s0 + (s1 - s0) * (batch - b0) / (b1 - b0))

    def attention_rate(
        self, kernel: str, heads: int, kv_heads: int, threads: int, ranks: int
    ) -> AttentionRate:
        """The measured kernel closest to this call: same kernel (else the other one), then the same threads,
        then measured with as many ranks running at once, then the nearest heads-per-KV-head group."""
        if not self.attention:
            raise ValueError("the profile has no attention measurements")
        group = heads / max(1, kv_heads)
        return min(
            self.attention,
            key=lambda a: (
                a.kernel != kernel,
                abs(a.threads - threads),
                abs(a.ranks - ranks),
                abs(math.log(a.group / group)),
            ),
        )


def _nearest(table, key: int) -> int:
    return min(table, key=lambda k: (abs(k - key), k))


def _interp_log(points: list | tuple, x: float) -> float:
    """Piecewise-linear interpolation of y over log(x) through sorted (x, y) points; clamped at both ends."""
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1]
    if x >= pts[-1][0]:
        return pts[-1][1]
    i = bisect.bisect_right([p[0] for p in pts], x)
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    f = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return y0 + f * (y1 - y0)
