# SPDX-License-Identifier: Apache-2.0
"""``vllm-helix simulate --paper --explain``: one Helix layer of the paper experiment, term by term.

For each model: the Helix grid with the best tokens/s/user (B = 1), the same grid at the batch of the paper's
Fig. 3 (B = 8), and the Helix frontier point where switching HOP-B off costs most. Per layer and device, every
phase and collective of ``cost.layer_detail`` with its bytes, what HOP-B hides slice by slice, and the bound

    loss = 1 - TTL_on / TTL_off  ≤  L·(1 - 1/c)·wire(a2a) / TTL_off  <  L·wire(a2a) / TTL_off

(L layers, c slices): with HOP-B off one all-to-all per batch pays α once; with HOP-B on every slice pays α
and the last slice's exchange stays exposed, so only the all-to-all's wire time can be hidden. The row
``needed`` is the wire time (and bytes at ``link_bw``) per request that the paper's loss would take:
``loss_paper · TTL_off / (L·B)``. The output is Markdown, carried verbatim by docs/planner.md and held to it
by tests/planner/test_docs_figures.py.
"""

from __future__ import annotations

import dataclasses

from vllm_helix.planner.cost import Grid, Precision, estimate, layer_detail
from vllm_helix.planner.hardware import Hardware
from vllm_helix.planner.models import ModelSpec

PAPER_LOSS = {"deepseek-r1": 0.01, "llama-405b": 0.12}  # the paper's HOP-B ablation
FIG3_BATCH = 8


def _us(t: float) -> str:
    return f"{t * 1e6:.2f}"


def _kb(nbytes: float) -> str:
    return f"{nbytes / 1e3:.1f}"


def _wire(hw: Hardware, n: int, nbytes: float, factor: float) -> float:
    """Bandwidth part of a collective over n devices (``cost._coll`` without α)."""
    return 0.0 if n <= 1 else factor * (n - 1) / n * nbytes / hw.link_bw


def _column(name: str, m: ModelSpec, hw: Hardware, p: Precision, s: int, g: Grid) -> dict[str, str]:
    on = estimate(m, hw, p, s, g)
    off_grid = dataclasses.replace(g, hop_b=False)
    off = estimate(m, hw, p, s, off_grid)
    lock = estimate(m, dataclasses.replace(hw, a2a_lockstep=True), p, s, off_grid)
    d = layer_detail(g, m, hw, p, s, m.is_moe)
    alpha = _us(hw.coll_latency_s)
    sent = d["a2a_bytes"] * (g.kvp - 1) / g.kvp  # bytes one GPU puts on the wire per exchange of the batch
    a2a_wire = _wire(hw, g.kvp, d["a2a_bytes"], 1.0)
    layer_off = sum(d[k] for k in ("qkv", "attention", "o_proj", "allreduce", "ffn", "ffn_comm", "a2a_off"))
    layer_on = layer_off - d["a2a_off"] + d["a2a"]
    comm_off = d["a2a_off"] + d["allreduce"] + d["ffn_comm"]
    needed = PAPER_LOSS[name] * off.ttl_s / (m.n_layers * g.batch)  # wire seconds per request
    ar_wire = _us(_wire(hw, g.n_gpus, d["ar_bytes"], 2.0))
    paper_wire = f"wire per request for the paper's {PAPER_LOSS[name]:.0%}: ns (KB), ours"
    return {
        "grid": f"N={g.n_gpus} KVP={g.kvp} TPA={g.tpa} B={g.batch}",
        "QKV projection (µs)": _us(d["qkv"]),
        "attention core (µs)": f"{_us(d['attention'])} ({_us(d['attention'] / g.batch)} per request)",
        "all-to-all: KB sent per GPU, α + wire (µs)": f"{_kb(sent)}, {alpha} + {_us(a2a_wire)}",
        "O-projection (µs)": _us(d["o_proj"]),
        "O all-reduce: KB per GPU, α + wire (µs)": f"{_kb(d['ar_bytes'])}, {alpha} + {ar_wire}",
        "FFN (µs)": _us(d["ffn"]),
        "FFN all-reduce: α + wire (µs)": f"{alpha} + {_us(_wire(hw, g.ffn_width, d['ffn_comm_bytes'], 2.0))}",
        "layer with HOP-B off (µs); communication share": f"{_us(layer_off)}; {comm_off / layer_off:.1%}",
        "HOP-B on: slices, layer (µs), hidden (µs)": (
            f"{d['slices']}, {_us(layer_on)}, {_us(layer_off - layer_on)}"
        ),
        "TTL off → on (ms): loss": (
            f"{off.ttl_s * 1e3:.3f} → {on.ttl_s * 1e3:.3f}: {1 - on.ttl_s / off.ttl_s:.1%}"
        ),
        "bound L·wire(a2a) / TTL_off": f"{m.n_layers * a2a_wire / off.ttl_s:.2%}",
        paper_wire: "one request: nothing to pipeline"
        if g.batch == 1
        else f"{needed * 1e9:.0f} ({_kb(needed * hw.link_bw)}), ours {a2a_wire / g.batch * 1e9:.1f} "
        f"({_kb(sent / g.batch)})",
        "lockstep off (B exchanges): TTL (ms): loss": (
            f"{lock.ttl_s * 1e3:.3f}: {1 - on.ttl_s / lock.ttl_s:.1%}"
        ),
    }


def _slices(g: Grid, d: dict, hw: Hardware) -> list[str]:
    """HOP-B slice by slice: c slices of B/c requests, per-slice attention and exchange, ``cost.hop_b_plan``'s
    pipelined time ``core/c + a2a(B/c) + (c-1)·max(core/c, a2a(B/c))`` against one batched exchange; up to
    twice the slice count the model picks."""
    core, alpha, wire = d["attention"], hw.coll_latency_s, d["a2a_batch"] - hw.coll_latency_s
    rows = [
        f"HOP-B slice by slice at N={g.n_gpus} KVP={g.kvp} TPA={g.tpa} B={g.batch}, attention + "
        "all-to-all of one layer (µs):",
        "",
        "| slices c | attention per slice | exchange per slice: α + wire | pipelined | minus HOP-B off |",
        "|---|---|---|---|---|",
    ]
    off, c = core + alpha + wire, 1
    while c <= min(g.batch, max(4, 2 * d["slices"])):
        comp, comm = core / c, alpha + wire / c
        t = comp + comm + (c - 1) * max(comp, comm)
        rows.append(f"| {c} | {_us(comp)} | {_us(alpha)} + {_us(wire / c)} | {_us(t)} | {_us(t - off)} |")
        c *= 2
    return rows


def explain_model(name: str, m: ModelSpec, hw: Hardware, p: Precision, s: int, grids: list[Grid]) -> str:
    """Markdown: the per-layer terms of ``grids`` (Helix, HOP-B on), then HOP-B slice by slice for B > 1."""
    cols = [_column(name, m, hw, p, s, g) for g in grids]
    layer = "one MoE layer" if m.is_moe else "one layer"
    lines = [
        f"**{name}**, {layer} on one GPU (FP4 weights and KV, {p.comm_bytes:g} B per exchanged element, "
        f"α = {hw.coll_latency_s * 1e6:g} µs, {hw.link_bw / 1e9:g} GB/s per direction):",
        "",
        "| term | " + " | ".join(c["grid"] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    lines += [f"| {k} | " + " | ".join(c[k] for c in cols) + " |" for k in cols[0] if k != "grid"]
    for g in grids:
        if g.batch > 1:
            lines += [""] + _slices(g, layer_detail(g, m, hw, p, s, m.is_moe), hw)
    return "\n".join(lines)


def explain(results: dict, models: dict, hw: Hardware, p: Precision, s: int) -> str:
    """Every model of a ``search.paper_experiment`` run (``results``), as Markdown."""
    out = []
    for name, r in results.items():
        m, helix = models[name], r["helix"]
        loss = {
            e.grid: 1 - e.ttl_s / estimate(m, hw, p, s, dataclasses.replace(e.grid, hop_b=False)).ttl_s
            for e in helix
        }
        best = max(helix, key=lambda e: e.tokens_per_s_user).grid
        worst = max(helix, key=lambda e: (loss[e.grid], -e.grid.batch)).grid
        grids = [best, dataclasses.replace(best, batch=FIG3_BATCH), worst]
        out.append(explain_model(name, m, hw, p, s, grids))
    return "\n\n".join(out) + "\n"
