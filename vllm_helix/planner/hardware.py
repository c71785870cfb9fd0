# SPDX-License-Identifier: Apache-2.0
"""Hardware profiles for the planner: one GPU (or CPU rank) and its scale-up domain.

Every number is per device. Bandwidths are bytes/s, FLOP rates FLOP/s (dense, no sparsity).
Collectives are modelled as ``t = coll_latency_s + bytes_on_wire / link_bw`` (see ``cost.py``).

Two constants are modelling choices, not specs, and are applied to every strategy alike:

- ``mem_eff = 0.85`` and ``flop_eff = 0.70``: fraction of peak HBM bandwidth / tensor-core rate a tuned
  decode kernel reaches. The same factors multiply every byte and FLOP, so they scale absolute latency but
  barely move the Helix/baseline ratios.
- ``coll_latency_s``: fixed start-up latency of one collective (all-reduce, all-to-all, all-gather,
  send/recv) inside an NVLink domain: 10 us, taken from NCCL's own cost model (NVIDIA/nccl
  ``src/graph/tuning.cc`` at 01afd20, LL protocol: ring ``baseLat 3.6 us + 2·(n-1)·0.47 us`` = 10.2 us
  and tree ``4.4 + 2·(n-1)·0.52`` = 11.7 us for an 8-GPU NVLink all-reduce). It is flat in n (NVLS / MNNVL
  one-shot kernels do not grow with n the way a ring does). ``docs/planner.md`` shows how the headline
  ratios move with it (``--coll-latency-us``).
- ``a2a_lockstep`` (default off): how Helix without HOP-B issues its KVP all-to-all. Off: one collective for
  the whole batch (``α + B·bytes/bw``), as TensorRT-LLM and vLLM DCP do. On: one per request, none
  overlapped (``B·(α + bytes/bw)``), the literal reading of the paper's Fig. 3 (``--hop-b-off lockstep``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

MEM_EFF = 0.85
FLOP_EFF = 0.70
NVLINK_COLL_LATENCY_S = 10e-6


@dataclass(frozen=True, slots=True)
class Hardware:
    """One accelerator and its scale-up (NVLink) domain.

    Attributes:
        name: profile key, e.g. ``"gb200-nvl72"``.
        domain_size: devices in one NVLink domain (the planner never crosses it).
        hbm_bytes: usable device memory in bytes.
        mem_bw: peak memory read bandwidth, bytes/s.
        flops: dense peak FLOP/s by math dtype (``"fp4"``, ``"fp8"``, ``"bf16"``).
        link_bw: scale-up bandwidth per device per direction, bytes/s.
        coll_latency_s: fixed latency of one collective, seconds.
        default_dtype: weight/KV/math dtype the planner assumes by default.
        mem_eff: achievable fraction of ``mem_bw``.
        flop_eff: achievable fraction of ``flops``.
        a2a_lockstep: without HOP-B, exchange per request instead of once per batch (see module docstring).
    """

    name: str
    domain_size: int
    hbm_bytes: float
    mem_bw: float
    flops: dict[str, float] = field(hash=False)
    link_bw: float
    coll_latency_s: float = NVLINK_COLL_LATENCY_S
    default_dtype: str = "fp8"
    mem_eff: float = MEM_EFF
    flop_eff: float = FLOP_EFF
    a2a_lockstep: bool = False

    def __post_init__(self) -> None:
        if self.domain_size < 1 or self.hbm_bytes <= 0 or self.mem_bw <= 0 or self.link_bw <= 0:
            raise ValueError(f"invalid hardware profile {self.name}: {self}")
        if self.default_dtype not in self.flops:
            raise ValueError(f"{self.name}: default dtype {self.default_dtype} not in {sorted(self.flops)}")

    def flop_rate(self, dtype: str) -> float:
        """Dense FLOP/s for ``dtype``; falls back to the next wider supported dtype (fp4 -> fp8 -> bf16)."""
        for d in ("fp4", "fp8", "bf16")[("fp4", "fp8", "bf16").index(dtype) :]:
            if d in self.flops:
                return self.flops[d]
        raise ValueError(f"{self.name} supports none of fp4/fp8/bf16 from {dtype}")


GB = 1e9
TB = 1e12
PF = 1e15

PROFILES: dict[str, Hardware] = {
    # GB200 NVL72: 72 Blackwell GPUs, one NVLink-5 domain. Rack totals 13.4 TB HBM3e, 576 TB/s, 1,440 PF FP4 /
    # 720 PF FP8 sparse (NVIDIA GB200 NVL72 product page; MLPerf v6.1 Crusoe GB200 system JSON lists 186 GB
    # usable). Per GPU: 186 GB, 8 TB/s (also the paper's MemBW), 10 PF FP4 / 5 PF FP8 / 2.5 PF BF16 dense.
    # NVLink 5: 1.8 TB/s bidirectional = 900 GB/s per direction.
    "gb200-nvl72": Hardware(
        "gb200-nvl72",
        72,
        186 * GB,
        8 * TB,
        {"fp4": 10 * PF, "fp8": 5 * PF, "bf16": 2.5 * PF},
        900 * GB,
        default_dtype="fp4",
    ),
    # GB300 NVL72 (Blackwell Ultra): 288 GB HBM3e per GPU at 8 TB/s, 15 PF dense NVFP4 per GPU (NVIDIA
    # "Inside Blackwell Ultra" blog), FP8 720 PF sparse per rack = 5 PF dense per GPU, BF16 2.5 PF; NVLink 5.
    "gb300-nvl72": Hardware(
        "gb300-nvl72",
        72,
        288 * GB,
        8 * TB,
        {"fp4": 15 * PF, "fp8": 5 * PF, "bf16": 2.5 * PF},
        900 * GB,
        default_dtype="fp4",
    ),
    # HGX B200 (8 GPUs): 1.44 TB HBM3e total = 180 GB per GPU, 7.7 TB/s, 9 PF FP4 / 4.5 PF FP8 / 2.25 PF BF16
    # dense per GPU (NVIDIA HGX B200 datasheet); NVLink 5, 900 GB/s per direction.
    "b200-hgx": Hardware(
        "b200-hgx",
        8,
        180 * GB,
        7.7 * TB,
        {"fp4": 9 * PF, "fp8": 4.5 * PF, "bf16": 2.25 * PF},
        900 * GB,
        default_dtype="fp4",
    ),
    # HGX H200 (8 GPUs): 141 GB HBM3e, 4.8 TB/s, FP8 1,979 TF / BF16 989 TF dense (H200 datasheet halves the
    # sparse 3,958 / 1,979); NVLink 4 900 GB/s bidirectional = 450 GB/s per direction. No FP4 tensor cores.
    "h200-hgx": Hardware(
        "h200-hgx",
        8,
        141 * GB,
        4.8 * TB,
        {"fp8": 1979e12, "bf16": 989e12},
        450 * GB,
    ),
    # HGX H100 SXM (8 GPUs): 80 GB HBM3, 3.35 TB/s, FP8 1,979 TF / BF16 989 TF dense (H100 datasheet);
    # NVLink 4, 450 GB/s per direction.
    "h100-hgx": Hardware(
        "h100-hgx",
        8,
        80 * GB,
        3.35 * TB,
        {"fp8": 1979e12, "bf16": 989e12},
        450 * GB,
    ),
    # This development machine: 2 x86 cores (AVX-512 + avx512_bf16, no AMX), 24 GiB RAM, no GPU. A "device"
    # is one vLLM CPU worker; up to 3 workers run on the 2 cores (VLLM_CPU_OMP_THREADS_BIND="0|1|0"), so
    # domain_size = 3. Measured 2026-11-22 by `python benchmarks/measure_cpu.py` (torch 2.13 CPU, load 1.5
    # from other jobs, so these are what a worker actually gets, not peaks):
    #   read bandwidth 10-14 GB/s (torch.sum over 512 MB fp32; 2 threads were no faster than 1) -> 10 GB/s,
    #   bf16 matmul 0.03 TFLOP/s (torch.mm 2048^2; no AMX, bf16 takes a slow path; fp32 reaches 0.14),
    #   gloo all-reduce between 2 processes: 170 us for 4 KB, ~1 GB/s bus bandwidth for 64 MB.
    # The lead's brief expected ~60 GB/s; this shared 2-core VM measured far less, and the profile keeps the
    # measurement. hbm_bytes: 24 GiB RAM minus OS/Python/vLLM overhead, split over at most 3 workers -> 6 GB.
    # Efficiency factors are 1.0: the measurements already are achieved, not peak, rates.
    "cpu": Hardware(
        "cpu",
        3,
        6 * GB,
        10 * GB,
        {"bf16": 0.03 * TB},
        1 * GB,
        coll_latency_s=170e-6,
        default_dtype="bf16",
        mem_eff=1.0,
        flop_eff=1.0,
    ),
}


def get_hardware(name: str, coll_latency_us: float | None = None) -> Hardware:
    """Return the profile ``name`` (case-insensitive), optionally with another collective latency."""
    key = name.lower()
    if key not in PROFILES:
        raise ValueError(f"unknown hardware {name!r}; choose one of: {', '.join(PROFILES)}")
    hw = PROFILES[key]
    if coll_latency_us is not None:
        hw = replace(hw, coll_latency_s=coll_latency_us * 1e-6)
    return hw
