# SPDX-License-Identifier: Apache-2.0
"""``vllm-helix plan`` and ``vllm-helix simulate``: argparse front ends over the pure planner.

vllm-helix plan --model deepseek-r1 --hardware gb200-nvl72 --context 1M --ttl-ms 30 --gpus 64
vllm-helix plan --model smollm2-135m --hardware cpu --context 4096 --ttl-ms 200 --gpus 3
vllm-helix plan --model tiny-mqa --hardware cpu_profile.json --contexts 4K,16K,64K,128K --batch 1
vllm-helix simulate --paper --json --plot pareto.png

``--hardware`` names a GPU/CPU profile of ``hardware.py`` (the paper's model, ``cost.py``) or a JSON profile
written by ``vllm-helix calibrate`` (the measured CPU engine model, ``engine_cpu.py``: predicted TPOT of stock
TP and Helix grids per context and the fastest one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
from pathlib import Path

from vllm_helix.planner import engine_cpu
from vllm_helix.planner.cost import PRECISIONS, Estimate
from vllm_helix.planner.cpu_profile import CpuProfile
from vllm_helix.planner.hardware import PROFILES, get_hardware
from vllm_helix.planner.models import BUILTIN, load_model
from vllm_helix.planner.search import BASELINES, best_under_ttl, gpu_counts, paper_experiment, sweep


def parse_context(text: str) -> int:
    """``"1M"`` -> 1,048,576; ``"128K"`` -> 131,072; ``"4096"`` -> 4096 (binary K/M, as model cards use)."""
    t = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad context {text!r}; use e.g. 1M, 128K or 4096") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"context must be >= 1, got {text!r}")
    return int(value)


def _describe(e: Estimate) -> dict:
    g = e.grid
    return {
        "strategy": g.strategy,
        "n_gpus": g.n_gpus,
        "batch": g.batch,
        "kvp": g.kvp,
        "tpa": g.tpa,
        "tpf": g.tpf,
        "ep": g.ep,
        "pp": g.pp,
        "hop_b": g.hop_b,
        "hop_b_slices": e.hop_b_slices,
        "ttl_ms": round(e.ttl_s * 1e3, 4),
        "tokens_per_s_user": round(e.tokens_per_s_user, 3),
        "tokens_per_s_gpu": round(e.tokens_per_s_gpu, 4),
        "memory_gb": {k: round(v / 1e9, 3) for k, v in e.mem.items()},
    }


def serve_command(model_id: str, e: Estimate, context: int, hardware: str) -> tuple[dict, str]:
    """(environment, ``vllm serve`` line) that runs the Helix grid of ``e``."""
    g = e.grid
    if model_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and hardware == "cpu":
        model_id = "$(vllm-helix demo-model --quiet)"  # the embedded checkpoint: there is no hub here
    # The runtime slices as the estimate did: HOP-B only when the model picked c >= 2 slices, then exactly c
    # (vllm_helix.attention.step.plan_slices; its own default is min(4, B) slices).
    helix = {"hop_b": g.hop_b and e.hop_b_slices > 1}
    if helix["hop_b"]:
        helix["hop_b_slices"] = e.hop_b_slices
    extra = json.dumps({"helix": helix})
    cmd = [
        "vllm",
        "serve",
        model_id,
        "--worker-cls",
        "vllm_helix.Worker",
        "-tp",
        str(g.n_gpus),
        "-dcp",
        str(g.kvp),
        "--additional-config",
        extra,
    ]
    if g.ep > 1:
        cmd.append("--enable-expert-parallel")
    cmd += ["--max-model-len", str(context), "--max-num-seqs", str(g.batch)]
    env = {}
    if hardware == "cpu":
        cmd += ["--dtype", "bfloat16", "--enforce-eager", "--host", "127.0.0.1"]
        kv_gib = max(1, math.ceil(e.mem["kv"] / 2**30))  # KV space per worker, GiB
        env = {
            "VLLM_CPU_KVCACHE_SPACE": str(kv_gib),
            "VLLM_CPU_OMP_THREADS_BIND": "|".join(str(r % 2) for r in range(g.n_gpus)),
            "VLLM_HOST_IP": "127.0.0.1",
            "HF_HUB_OFFLINE": "1",
        }
    return env, " ".join(c if c.startswith("$(") else shlex.quote(c) for c in cmd)


def _plan_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vllm-helix plan",
        description="Pick the Helix grid for a model, "
        "hardware, context and token-to-token latency budget; print the vllm serve "
        "line.",
    )
    ap.add_argument("--model", required=True, help=f"built-in ({', '.join(BUILTIN)}) or path to config.json")
    ap.add_argument(
        "--hardware",
        default="gb200-nvl72",
        help=f"one of {', '.join(sorted(PROFILES))}, or a CPU profile JSON from `vllm-helix calibrate`",
    )
    ap.add_argument(
        "--context", type=parse_context, default=parse_context("128K"), help="KV length: 1M, 128K, 4096"
    )
    ap.add_argument(
        "--contexts",
        type=lambda t: [parse_context(x) for x in t.split(",") if x.strip()],
        help="CPU profile only: comma-separated contexts (default: --context)",
    )
    ap.add_argument("--batch", type=int, default=1, help="CPU profile only: decode batch (default 1)")
    ap.add_argument("--ttl-ms", type=float, default=50.0, help="token-to-token latency budget (ms)")
    ap.add_argument("--gpus", type=int, help="devices in the pool (default: try every size in the domain)")
    ap.add_argument("--dtype", choices=sorted(PRECISIONS), help="weights/KV/math dtype (default: hardware's)")
    ap.add_argument("--coll-latency-us", type=float, help="override the per-collective latency")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap


def plan_main(argv: list[str]) -> int:
    """Entry point of ``vllm-helix plan``; returns the exit status."""
    args = _plan_parser().parse_args(argv)
    if args.hardware.lower() not in PROFILES and (
        args.hardware.endswith(".json") or Path(args.hardware).is_file()
    ):
        return _plan_engine(args)
    try:
        model = load_model(args.model)
        hw = get_hardware(args.hardware, args.coll_latency_us)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    prec = PRECISIONS[args.dtype or hw.default_dtype]
    limit = min(hw.domain_size, 64)
    gpus = (
        [args.gpus]
        if args.gpus
        else sorted({n for n in range(1, limit + 1) if n in gpu_counts(limit) or model.n_heads % n == 0})
    )
    strategies = ("helix",) + tuple(
        b for b in BASELINES if (b != "medha" or not model.is_moe) and (b != "ep" or model.is_moe)
    )
    pts = sweep(model, hw, prec, args.context, strategies, gpus)
    if model.is_mla:  # the runtime's MLA path has no HOP-B, one exchange per layer (docs/mla-moe.md)
        pts = [e for e in pts if not (e.grid.strategy == "helix" and e.grid.hop_b)]
    best = best_under_ttl([e for e in pts if e.grid.strategy == "helix"], args.ttl_ms / 1e3)
    if best is None:
        fastest = min((e for e in pts if e.grid.strategy == "helix"), key=lambda e: e.ttl_s, default=None)
        hint = f"the fastest Helix grid needs {fastest.ttl_s * 1e3:.2f} ms" if fastest else "none fits memory"
        print(
            f"error: no Helix grid of {model.name} on {hw.name} meets TTL <= {args.ttl_ms} ms at context "
            f"{args.context} ({hint}); raise --ttl-ms, add --gpus or shorten --context",
            file=sys.stderr,
        )
        return 1
    budget = args.ttl_ms / 1e3
    runners = {s: best_under_ttl([e for e in pts if e.grid.strategy == s], budget) for s in strategies[1:]}
    env, cmd = serve_command(model.hf_id, best, args.context, hw.name)
    out = {
        "model": model.name,
        "hardware": hw.name,
        "context": args.context,
        "ttl_budget_ms": args.ttl_ms,
        "dtype": prec.math,
        "best": _describe(best),
        "baselines": {s: (_describe(e) if e else None) for s, e in runners.items()},
        "env": env,
        "command": cmd,
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    _print_plan(out)
    return 0


def _plan_engine(args) -> int:
    """``plan --hardware PROFILE.json``: predicted TPOT of every stock TP / Helix grid on this CPU engine
    (``engine_cpu.plan``) per context, and the fastest."""
    try:
        model = load_model(args.model)
        profile = CpuProfile.load(args.hardware)
        rows = engine_cpu.plan(profile, model, args.contexts or [args.context], args.batch)
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = {
        "model": model.name,
        "hardware": args.hardware,
        "profile": profile.name,
        "cores": profile.cores,
        "batch": args.batch,
        "step_overhead_ms": None
        if profile.step_overhead_s is None
        else round(profile.step_overhead_s * 1e3, 3),
        "step_overhead_source": profile.step_overhead_source,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    f = "unset (0)" if out["step_overhead_ms"] is None else f"{out['step_overhead_ms']} ms"
    print(
        f"CPU engine plan for {model.name} on {profile.name} ({profile.cores} cores, {args.hardware}), "
        f"batch {args.batch}; step overhead F = {f} [{profile.step_overhead_source}]"
    )
    names = list(rows[0]["tpot_ms"])
    print(f"{'context':>9}  " + "  ".join(f"{n:>16}" for n in names) + "  choice (TPOT ms)")
    for r in rows:
        cells = "  ".join(f"{r['tpot_ms'][n]:16.3f}" for n in names)
        print(f"{r['context']:>9,}  {cells}  {r['choice']}")
    for note in sorted({n for r in rows for n in r["notes"]}):
        print(f"note: {note}")
    return 0


def _fmt(d: dict) -> str:
    grid = f"N={d['n_gpus']} KVP={d['kvp']} TPA={d['tpa']} TPF={d['tpf']} EP={d['ep']} PP={d['pp']}"
    mem = sum(d["memory_gb"].values())
    return (
        f"{d['strategy']:<6} {grid:<40} B={d['batch']:<5} TTL {d['ttl_ms']:8.3f} ms  "
        f"{d['tokens_per_s_user']:9.1f} tok/s/user  {d['tokens_per_s_gpu']:9.2f} tok/s/GPU  "
        f"{mem:7.1f} GB"
    )


def _print_plan(out: dict) -> None:
    print(
        f"Helix plan for {out['model']} on {out['hardware']} ({out['dtype']}), context {out['context']:,}, "
        f"TTL budget {out['ttl_budget_ms']} ms"
    )
    best = out["best"]
    hop_b = f"on, {best['hop_b_slices']} slices" if best["hop_b"] and best["hop_b_slices"] > 1 else "off"
    print(f"  best   {_fmt(best)}  HOP-B {hop_b}")
    print("  best of each baseline under the same budget:")
    for s, d in out["baselines"].items():
        print(f"         {_fmt(d)}" if d else f"         {s:<6} no grid meets the budget")
    print("\nRun it:")
    if out["env"]:
        print("  " + " ".join(f"{k}={shlex.quote(v)}" for k, v in out["env"].items()) + " \\")
    print("  " + out["command"])


def _simulate_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vllm-helix simulate",
        description="Reproduce the Helix paper's "
        "experiment: GB200 NVL72, FP4, 1M context, 1-64 GPUs, DeepSeek-R1 and "
        "Llama-405B.",
    )
    ap.add_argument("--paper", action="store_true", required=True, help="run the paper's experiment")
    ap.add_argument("--json", action="store_true", help="print only the headline ratios as one JSON object")
    ap.add_argument("--plot", metavar="PNG", help="write the Pareto figure to this PNG")
    ap.add_argument(
        "--explain",
        action="store_true",
        help="print one Helix layer term by term (Markdown): "
        "best-interactivity grid at B = 1 and 8, and the point where HOP-B off costs most",
    )
    ap.add_argument("--hardware", default="gb200-nvl72", choices=sorted(PROFILES))
    ap.add_argument("--coll-latency-us", type=float, help="override the per-collective latency")
    ap.add_argument(
        "--mla-a2a",
        choices=("latent", "v_head"),
        default="latent",
        help="MLA all-to-all payload per head: the kv_lora_rank latent with v_b_proj after the "
        "exchange (default: what vllm-helix and TensorRT-LLM run) or the v_head_dim output, "
        "v_b_proj before the exchange on every KVP rank",
    )
    ap.add_argument(
        "--wire-dtype",
        choices=("bf16", "fp8", "fp4"),
        default="bf16",
        help="dtype of activations and partial outputs in every collective (default bf16)",
    )
    ap.add_argument(
        "--hop-b-off",
        choices=("batched", "lockstep"),
        default="batched",
        help="Helix without HOP-B: one all-to-all per batch (default) or one per request, "
        "not overlapped (the paper's Fig. 3 lockstep)",
    )
    return ap


def simulate_main(argv: list[str]) -> int:
    """Entry point of ``vllm-helix simulate``; returns the exit status."""
    args = _simulate_parser().parse_args(argv)
    hw = dataclasses.replace(
        get_hardware(args.hardware, args.coll_latency_us), a2a_lockstep=args.hop_b_off == "lockstep"
    )
    models = dict(BUILTIN)
    latent = args.mla_a2a == "latent"
    models["deepseek-r1"] = dataclasses.replace(models["deepseek-r1"], mla_a2a_latent=latent)
    wire = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5}[args.wire_dtype]
    prec = dataclasses.replace(PRECISIONS["fp4"], comm_bytes=wire)
    res = paper_experiment(hw, prec, models)
    ratios = {name: {k: round(v, 4) for k, v in r["headline"].items()} for name, r in res.items()}
    if args.plot:
        from vllm_helix.planner.plot import plot_pareto  # matplotlib only when asked

        plot_pareto(res, args.plot)
    if args.json:
        print(json.dumps(ratios))
        return 0
    if args.explain:
        from vllm_helix.planner.explain import explain
        from vllm_helix.planner.search import PAPER_CONTEXT

        print(explain(res, models, hw, prec, PAPER_CONTEXT), end="")
        return 0
    paper = {"deepseek-r1": (1.5, 32.0, 0.01), "llama-405b": (1.13, 4.0, 0.12)}
    print(
        f"Helix paper experiment on {hw.name} (FP4, context 1M, 1-64 GPUs, collective latency "
        f"{hw.coll_latency_s * 1e6:g} us, wire {args.wire_dtype}, MLA a2a {args.mla_a2a}, HOP-B off "
        f"{args.hop_b_off})"
    )
    print(f"{'model':<12} {'metric':<30} {'ours':>8} {'vs TP':>8} {'paper':>8}")
    for name, r in res.items():
        for i, key in enumerate(("max_interactivity_gain", "throughput_gain_at_equal_ttl", "hop_b_off_loss")):
            ours, vs_tp = r["headline"][key], r["vs_tp"][key]
            print(f"{name:<12} {key:<30} {ours:8.3f} {vs_tp:8.3f} {paper[name][i]:8.3f}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0
