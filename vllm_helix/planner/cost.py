# SPDX-License-Identifier: Apache-2.0
"""Per-layer decode latency and per-device memory for Helix and the baseline strategies.

One decode step of a batch of B requests, each with S cached tokens, on N devices. Per layer and device:

    phase time   = max(bytes / (mem_bw·mem_eff), flops / (flop_rate·flop_eff))      (roofline per phase)
    all-reduce   = α + 2·(n-1)/n · bytes / link_bw            (n = group size; 0 when n = 1)
    all-to-all   = α + (n-1)/n · bytes / link_bw
    send/recv    = α + bytes / link_bw                          (pipeline stage boundary)

    layer = qkv_proj + attention_core + combine + o_proj + all-reduce + ffn + ffn_comm
    TTL   = Σ_layers layer + lm_head (+ (PP-1)·send/recv)

Attention core bytes = b·(S/KVP)·kv_elems(k)·kv_bytes with k = ⌈K/TPA⌉ KV heads on the device (paper App. A:
B·2·⌈K/TPA⌉·Hsz·S/KVP·bytes). FLOPs are 2 per weight per token and ``attn_flops_per_pos`` per query head per
cached position. The KVP combine exchanges what this runtime's ``vllm_helix.attention.exchange.pack_partials``
packs: per token and local query head the partial output (Hsz; MLA kv_lora_rank, the latent, or v_head_dim
with ``mla_a2a_latent=False``) at ``comm_bytes`` each plus one fp32 LSE (``LSE_BYTES``). HOP-B
(``hop_b_plan``) splits the batch into c slices (best c ≤ B) and pipelines attention with the exchange:
``core/c + a2a(B/c) + (c-1)·max(core/c, a2a(B/c))`` (Σ compute + last exchange when the exchange is shorter).
HOP-B off is ``core + a2a(B)``: one all-to-all for the batch, as ``vllm_helix.attention.step`` issues it;
``Hardware.a2a_lockstep`` instead charges one exchange per request, ``core + B·a2a(1)`` (the paper's Fig. 3
read literally). ``layer_detail`` returns every term of one layer with its bytes.

Strategies (``Grid.strategy``):

- ``helix``: attention KVP×TPA = N (TPA ≤ K, K % TPA == 0, QKV weights replicated over KVP), one all-to-all of
  partial outputs + fp32 LSE, O-projection TP = N + all-reduce, FFN TP = N (dense) or TPF×EP = N
  (MoE, one all-reduce over N = intra-expert all-reduce + inter-expert all-gather).
- ``tp``: attention and FFN TP = N (KV duplicated when N > K; MLA latent duplicated on every rank).
- ``tp_pp``: TP = N/PP per stage, PP stages, B/PP requests per micro-batch, PP micro-batches in flight.
- ``medha``: attention KVP × TP (fixed TP group), partial outputs reduced onto the TP group, FFN TP on that
  group only; no overlap. Dense models only (for MLA any TP > 1 duplicates the latent cache).
- ``ep``: data-parallel attention (B/N requests per device, full attention weights) + expert-parallel MoE with
  token dispatch/combine all-to-alls; dense layers TP = N with all-gather + reduce-scatter. MoE models only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vllm_helix.planner.hardware import Hardware
from vllm_helix.planner.models import ModelSpec

STRATEGIES = ("helix", "tp", "tp_pp", "medha", "ep")
LSE_BYTES = 4  # one fp32 log-sum-exp per token and query head, packed with the partials (pack_partials)


@dataclass(frozen=True, slots=True)
class Precision:
    """Bytes per weight, per KV element and per exchanged activation element, and the math dtype."""

    weight_bytes: float
    kv_bytes: float
    math: str
    comm_bytes: float = 2.0  # activations and partial outputs cross the wire in bf16 (as TensorRT-LLM does)


PRECISIONS = {
    "fp4": Precision(0.5, 0.5, "fp4"),
    "fp8": Precision(1.0, 1.0, "fp8"),
    "bf16": Precision(2.0, 2.0, "bf16"),
}


@dataclass(frozen=True, slots=True)
class Grid:
    """One parallel layout and batch. ``tpa`` is the attention TP width (TP of the baselines too); ``ep`` the
    expert-parallel width of the FFN (TPF = FFN width / EP)."""

    strategy: str
    n_gpus: int
    batch: int
    kvp: int = 1
    tpa: int = 1
    ep: int = 1
    pp: int = 1
    hop_b: bool = False

    @property
    def ffn_width(self) -> int:
        return self.tpa if self.strategy in ("tp_pp", "medha") else self.n_gpus

    @property
    def tpf(self) -> int:
        return self.ffn_width // self.ep


@dataclass(frozen=True, slots=True)
class Estimate:
    """Predicted decode step: ``ttl_s`` token-to-token latency, ``parts`` seconds per component summed over
    layers, ``mem`` bytes per device (weights, kv, activations)."""

    grid: Grid
    ttl_s: float
    parts: dict
    mem: dict
    hbm_bytes: float
    hop_b_slices: int = 1  # batch slices HOP-B pipelines (1: none), the runtime's ``helix.hop_b_slices``

    @property
    def feasible(self) -> bool:
        return sum(self.mem.values()) <= self.hbm_bytes

    @property
    def tokens_per_s_user(self) -> float:
        return 1.0 / self.ttl_s

    @property
    def tokens_per_s_gpu(self) -> float:
        return self.grid.batch / (self.ttl_s * self.grid.n_gpus)


def check_grid(g: Grid, m: ModelSpec) -> None:
    """Raise ``ValueError`` when ``g`` is not a valid layout for ``m``."""
    k, q, n = m.kv_heads, m.n_heads, g.n_gpus
    if g.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {g.strategy!r}; one of {STRATEGIES}")
    if min(g.n_gpus, g.batch, g.kvp, g.tpa, g.ep, g.pp) < 1:
        raise ValueError(f"all grid sizes must be >= 1: {g}")
    if g.strategy == "helix":
        if g.kvp * g.tpa != n:
            raise ValueError(f"helix needs KVP·TPA = N, got {g.kvp}·{g.tpa} != {n}")
        if g.tpa > k or k % g.tpa:
            raise ValueError(f"helix needs TPA <= K and K % TPA == 0 (no KV duplication): TPA={g.tpa}, K={k}")
        if q % n:
            raise ValueError(f"query heads {q} must divide by N={n} (O-projection / all-to-all head split)")
    elif g.strategy in ("tp", "tp_pp", "medha"):
        if g.tpa * g.kvp * g.pp != n or (g.strategy == "tp" and (g.kvp, g.pp) != (1, 1)):
            raise ValueError(f"{g.strategy}: TP·KVP·PP must equal N: {g}")
        if q % g.tpa:
            raise ValueError(f"query heads {q} must divide by TP={g.tpa}")
        if g.strategy == "tp_pp" and (g.pp < 2 or g.pp > m.n_layers or g.batch % g.pp):
            raise ValueError(f"tp_pp needs 2 <= PP <= layers and batch % PP == 0: {g}")
        if g.strategy == "medha" and (g.kvp < 2 or m.is_moe):
            raise ValueError("medha needs KVP >= 2 and a dense model")
    elif g.strategy == "ep" and (not m.is_moe or g.ep != n):
        raise ValueError(f"ep (DP attention + EP FFN) needs a MoE model and EP = N: {g}")
    if g.ffn_width % g.ep or (g.ep > 1 and (not m.is_moe or g.ep > m.n_experts)):
        raise ValueError(f"EP={g.ep} must divide the FFN width {g.ffn_width} and not exceed the expert count")


def _coll(hw: Hardware, n: int, nbytes: float, factor: float) -> float:
    return 0.0 if n <= 1 else hw.coll_latency_s + factor * (n - 1) / n * nbytes / hw.link_bw


def allreduce(hw: Hardware, n: int, nbytes: float) -> float:
    return _coll(hw, n, nbytes, 2.0)


def alltoall(hw: Hardware, n: int, nbytes: float) -> float:
    return _coll(hw, n, nbytes, 1.0)


def phase(hw: Hardware, p: Precision, nbytes: float, flops: float) -> float:
    return max(nbytes / (hw.mem_bw * hw.mem_eff), flops / (hw.flop_rate(p.math) * hw.flop_eff))


def hop_b_time(core: float, a2a_of, batch: int, enabled: bool, lockstep: bool = False) -> float:
    """Seconds of ``hop_b_plan``."""
    return hop_b_plan(core, a2a_of, batch, enabled, lockstep)[0]


def hop_b_plan(core: float, a2a_of, batch: int, enabled: bool, lockstep: bool = False) -> tuple[float, int]:
    """(seconds, slices) of the attention core of ``batch`` requests plus their KVP all-to-all; ``a2a_of(f)``
    costs the exchange of a fraction f of the batch.

    HOP-B on: c slices (c = 1, 2, 4, ... ≤ B, the best kept), each slice's exchange issued when its attention
    ends, exchanges serialised on the communicator:

        T_on(c) = core/c + a2a(B/c) + (c-1)·max(core/c, a2a(B/c))     (Σ compute + last exchange if shorter)

    HOP-B off: ``core + a2a(B)``, one all-to-all for the whole batch (as TensorRT-LLM and vLLM DCP issue
    it), or with ``lockstep`` one exchange per request, none overlapped: ``core + B·a2a(1/B)``. Paper
    Fig. 3 (B = 8, compute 2 and exchange 1.2 per request, no fixed latency): off 8·2 + 8·1.2 = 25.6 either
    way, on 2 + 1.2 + 7·2 = 17.2. With a fixed latency α the two off readings differ by (B-1)·α.

    What HOP-B can hide is bounded by the exchange's wire time: ``T_off - T_on(c) ≤ (1 - 1/c)·(a2a(B) - α)``
    for the batched reading, since every slice pays its own α and the last slice's exchange stays exposed.
    """
    if not enabled:
        return core + (batch * a2a_of(1.0 / batch) if lockstep else a2a_of(1.0)), 1
    best, c = (core + a2a_of(1.0), 1), 2
    while c <= batch:
        comp, comm = core / c, a2a_of(1.0 / c)
        best = min(best, (comp + comm + (c - 1) * max(comp, comm), c))
        c *= 2
    return best


def _attn_layout(g: Grid, m: ModelSpec, s: int) -> tuple[int, int, int, int, int]:
    """(query heads, KV heads, cached positions, requests) on one device, and the O-projection TP width."""
    k = m.kv_heads
    if g.strategy == "helix":
        return m.n_heads // g.tpa, k // g.tpa, math.ceil(s / g.kvp), g.batch, g.n_gpus
    if g.strategy == "ep":
        return m.n_heads, k, s, math.ceil(g.batch / g.n_gpus), 1
    b = g.batch // g.pp
    return m.n_heads // g.tpa, math.ceil(k / g.tpa), math.ceil(s / g.kvp), b, g.tpa


def _attn_params(g: Grid, m: ModelSpec, q_loc: int, kv_loc: int) -> float:
    """QKV (+ MLA up-projection) parameters on one device. Helix with an MLA latent exchange runs
    ``v_b_proj`` after the all-to-all at TP = N (TensorRT-LLM): ``v_up(Q)/N`` instead of ``v_up(q_loc)``."""
    params = m.qkv_params(q_loc, kv_loc)
    if g.strategy == "helix" and m.is_mla and m.mla_a2a_latent:
        params += m.v_up_params(m.n_heads) / g.n_gpus - m.v_up_params(q_loc)
    return params


def _moe_active(m: ModelSpec, local_experts: float, tokens: int) -> float:
    """Expected distinct experts hit on one EP rank: ``E_loc·(1 - (1 - k/E)^T)`` (uniform routing)."""
    return local_experts * (1.0 - (1.0 - m.top_k / m.n_experts) ** tokens)


def _ffn(
    g: Grid, m: ModelSpec, hw: Hardware, p: Precision, moe: bool, tokens: int
) -> tuple[float, float, float]:
    """(compute, communication) seconds of one FFN layer on one device, and the bytes each collective of that
    communication carries per device."""
    w, h, cb = g.ffn_width, m.hidden, p.comm_bytes
    if not moe:
        params = m.dense_ffn_params / w
        return (
            phase(hw, p, params * p.weight_bytes, 2 * tokens * params),
            allreduce(hw, w, tokens * h * cb),
            tokens * h * cb,
        )
    routed = _moe_active(m, m.n_experts / g.ep, tokens) * m.expert_params / g.tpf
    if g.strategy == "ep":  # DP attention: shared expert replicated, tokens dispatched/combined by all-to-all
        t_loc = math.ceil(tokens / g.n_gpus)
        shared = m.n_shared_experts * m.expert_params
        flops = 2 * tokens * m.top_k * m.expert_params / w + 2 * t_loc * shared
        comm_bytes = t_loc * m.top_k * h * cb
        comm = 2 * alltoall(hw, g.n_gpus, comm_bytes)
    else:
        shared = m.n_shared_experts * m.expert_params / w
        flops = 2 * tokens * (m.top_k + m.n_shared_experts) * m.expert_params / w
        comm_bytes = tokens * h * cb
        comm = allreduce(hw, w, comm_bytes)
    nbytes = (routed + shared + h * m.n_experts) * p.weight_bytes
    return phase(hw, p, nbytes, flops), comm, comm_bytes


LAYER_PARTS = ("qkv", "attention", "a2a", "o_proj", "allreduce", "ffn", "ffn_comm")


def layer_detail(g: Grid, m: ModelSpec, hw: Hardware, p: Precision, s: int, moe: bool) -> dict:
    """Every term of one layer on one device: seconds for ``LAYER_PARTS`` (``a2a`` = exposed exchange time,
    attention + a2a = the HOP-B pipeline), plus ``a2a_bytes`` / ``ar_bytes`` / ``ffn_comm_bytes`` (bytes per
    device per collective, before the (n-1)/n wire factor), ``a2a_batch`` (one exchange of the whole batch,
    α + wire), ``a2a_off`` (exposed exchange with HOP-B off) and ``slices`` (HOP-B's pick)."""
    q_loc, kv_loc, s_loc, b_loc, o_w = _attn_layout(g, m, s)
    tokens = g.batch // g.pp  # tokens entering O-projection / FFN on one device (all but DP attention)
    qkv = _attn_params(g, m, q_loc, kv_loc)
    t_qkv = phase(hw, p, qkv * p.weight_bytes, 2 * b_loc * qkv)
    kv_read = b_loc * s_loc * m.kv_elems(kv_loc) * p.kv_bytes
    core = phase(hw, p, kv_read, b_loc * q_loc * s_loc * m.attn_flops_per_pos())
    a2a_bytes = b_loc * q_loc * (m.a2a_elems_per_head() * p.comm_bytes + LSE_BYTES)
    slices, a2a_off = 1, 0.0
    if g.strategy in ("helix", "medha"):
        a2a_of = lambda f: alltoall(hw, g.kvp, f * a2a_bytes)  # noqa: E731
        attn, slices = hop_b_plan(core, a2a_of, b_loc, g.hop_b, hw.a2a_lockstep)
        a2a = attn - core
        a2a_off = hop_b_time(core, a2a_of, b_loc, False, hw.a2a_lockstep) - core
    else:
        attn, a2a, a2a_bytes = core, 0.0, 0.0
    o_tokens = b_loc if g.strategy == "ep" else tokens
    t_o = phase(hw, p, m.o_params / o_w * p.weight_bytes, 2 * o_tokens * m.o_params / o_w)
    ar_bytes = 0.0 if g.strategy == "ep" else tokens * m.hidden * p.comm_bytes
    ar_o = allreduce(hw, o_w, ar_bytes)
    ffn, ffn_comm, ffn_comm_bytes = _ffn(g, m, hw, p, moe, g.batch if g.strategy == "ep" else tokens)
    return {
        "qkv": t_qkv,
        "attention": core,
        "a2a": a2a,
        "o_proj": t_o,
        "allreduce": ar_o,
        "ffn": ffn,
        "ffn_comm": ffn_comm,
        "a2a_bytes": a2a_bytes,
        "ar_bytes": ar_bytes,
        "ffn_comm_bytes": ffn_comm_bytes,
        "a2a_batch": alltoall(hw, g.kvp, a2a_bytes) if a2a_bytes else 0.0,
        "a2a_off": a2a_off,
        "slices": slices,
    }


def _memory(g: Grid, m: ModelSpec, p: Precision, s: int) -> dict:
    q_loc, kv_loc, s_loc, _, o_w = _attn_layout(g, m, s)
    w = g.ffn_width
    layers = math.ceil(m.n_layers / g.pp)
    dense_l = min(m.n_dense_layers, layers)
    moe_l = layers - dense_l
    moe = 0.0
    if m.is_moe:
        shared = m.n_shared_experts * m.expert_params / (1 if g.strategy == "ep" else w)
        moe = m.n_experts / g.ep * m.expert_params / g.tpf + shared + m.hidden * m.n_experts
    params = layers * (_attn_params(g, m, q_loc, kv_loc) + m.o_params / o_w)
    params += dense_l * m.dense_ffn_params / w + moe_l * moe + m.embed_params / w
    requests = math.ceil(g.batch / g.n_gpus) if g.strategy == "ep" else g.batch
    kv = requests * s_loc * m.kv_elems(kv_loc) * p.kv_bytes * layers
    act = 4 * g.batch * (m.hidden + max(m.ffn, m.moe_ffn * m.top_k) / w) * p.comm_bytes
    return {"weights": params * p.weight_bytes, "kv": kv, "activations": act}


def estimate(m: ModelSpec, hw: Hardware, p: Precision, s: int, g: Grid) -> Estimate:
    """Cost one decode step of ``g`` for ``m`` at context ``s`` on ``hw``; ``ValueError`` on a bad grid."""
    check_grid(g, m)
    parts: dict[str, float] = {}
    slices = 1
    for moe, count in ((False, m.n_dense_layers), (True, m.n_moe_layers)):
        if count:
            detail = layer_detail(g, m, hw, p, s, moe)
            slices = detail["slices"]  # the attention (and so HOP-B's pick) is the same in every layer
            for key in LAYER_PARTS:
                parts[key] = parts.get(key, 0.0) + count * detail[key]
    head = m.vocab * m.hidden / (g.tpa if g.strategy in ("tp_pp", "medha") else g.n_gpus)
    parts["lm_head"] = phase(hw, p, head * p.weight_bytes, 2 * (g.batch // g.pp) * head)
    b = g.batch // g.pp
    parts["pp_send"] = (g.pp - 1) * (hw.coll_latency_s + b * m.hidden * p.comm_bytes / hw.link_bw)
    return Estimate(g, sum(parts.values()), parts, _memory(g, m, p, s), hw.hbm_bytes, slices)
