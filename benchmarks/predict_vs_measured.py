# SPDX-License-Identifier: Apache-2.0
"""Predicted vs measured decode TPOT: the CPU engine model (``vllm_helix.planner.engine_cpu``) with a profile
from ``vllm-helix calibrate``, against a ``benchmarks/bench_decode.py`` result.

    python benchmarks/predict_vs_measured.py PROFILE.json DECODE.json [--fit-overhead] [--markdown-only]

For every (context, batch, configuration) the result measured (median over repetitions, as its summary does):
the predicted TPOT, the measured one, error % = (predicted / measured − 1)·100. Per (context, batch): the
choice = the fastest of the configurations measured there, predicted vs measured, and gap % = how much slower
the measured second-fastest was (a wrong choice only counts where the gap exceeds 10 %, issue 17's goal).
Helix rows also compare the model's per-layer attention / exchange / all-reduce terms with the engine's
counters (slowest rank; those include waiting for the peer).

The step overhead F is the profile's. If the profile has none, ``--fit-overhead`` fits it here to the result's
stock_tp1 row at the shortest context, batch 1 (the only number taken from the benchmark), and the output says
so; otherwise F counts 0.

Prints ONE JSON line, then the Markdown table(s).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vllm_helix.planner.cpu_profile import CpuProfile  # noqa: E402
from vllm_helix.planner.engine_cpu import (  # noqa: E402
    EngineGrid,
    bench_model,
    bench_tpots,
    fit_step_overhead,
    tpot,
)

GOAL_ERROR_PCT = 20.0
GOAL_GAP_PCT = 10.0


def _label(ctx: int) -> str:
    return f"{ctx >> 10}K" if ctx >= 1024 and ctx % 1024 == 0 else str(ctx)


def _helix_counters(result: dict) -> dict[tuple[str, int, int], dict]:
    """(config, context, batch) -> the slowest rank's per-layer-call counters of the first repetition."""
    out = {}
    for cfg, res in (result.get("results") or {}).items():
        for r in (res or {}).get("rows", []) if isinstance(res, dict) else []:
            key = (cfg, int(r["context"]), int(r["batch"]))
            if "helix_decode" in r and r.get("rep", 0) == 0 and key not in out:
                ranks = r["helix_decode"]
                out[key] = {
                    f: max(x.get(f, 0.0) for x in ranks)
                    for f in ("attention_ms_per_call", "exchange_ms_per_call", "all_reduce_ms_per_call")
                }
    return out


def compare(profile: CpuProfile, result: dict, fit_overhead: bool = False, source: str = "") -> dict:
    """The comparison as one dict (see the module docstring)."""
    model = bench_model(result.get("model") or {})
    measured = bench_tpots(result)
    notes: set[str] = set()
    if profile.step_overhead_s is None and fit_overhead:
        base = sorted((c, ms) for (cfg, c, b), ms in measured.items() if cfg == "stock_tp1" and b == 1)
        if not base:
            raise ValueError("--fit-overhead needs a stock_tp1 row at batch 1")
        profile = fit_step_overhead(profile, model, base[0][1] / 1e3, base[0][0], 1, source=source)
    rows, preds = [], {}
    for (cfg, ctx, batch), ms in sorted(measured.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        try:
            grid = EngineGrid.from_name(cfg)
        except ValueError:
            notes.add(f"{cfg}: not a configuration the model knows; skipped")
            continue
        p = tpot(profile, model, grid, ctx, batch)
        preds[(cfg, ctx, batch)] = p
        notes.update(p.notes)
        rows.append(
            {
                "context": ctx,
                "batch": batch,
                "config": cfg,
                "predicted_ms": round(p.tpot_s * 1e3, 3),
                "measured_ms": round(ms, 3),
                "error_pct": round((p.tpot_s * 1e3 / ms - 1) * 100, 1),
                "parts_ms": {k: round(v * 1e3, 4) for k, v in p.parts.items()},
            }
        )
    choices = []
    for ctx, batch in sorted({(r["context"], r["batch"]) for r in rows}):
        group = [r for r in rows if (r["context"], r["batch"]) == (ctx, batch)]
        if len(group) < 2:
            continue
        by_measured = sorted(group, key=lambda r: r["measured_ms"])
        predicted = min(group, key=lambda r: r["predicted_ms"])["config"]
        gap = (by_measured[1]["measured_ms"] / by_measured[0]["measured_ms"] - 1) * 100
        choices.append(
            {
                "context": ctx,
                "batch": batch,
                "predicted": predicted,
                "measured": by_measured[0]["config"],
                "gap_pct": round(gap, 1),
                "ok": predicted == by_measured[0]["config"] or gap <= GOAL_GAP_PCT,
            }
        )
    counters = []
    for key, c in sorted(_helix_counters(result).items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        if key not in preds or preds[key].grid.kvp == 1:  # KVP 1: vLLM's attention, no Helix counters
            continue
        p, layers = preds[key], model.n_layers
        ar_calls = 2 * layers + 1
        counters.append(
            {
                "config": key[0],
                "context": key[1],
                "batch": key[2],
                "attention_ms": [round(p.parts["attention"] / layers * 1e3, 4), c["attention_ms_per_call"]],
                "exchange_ms": [round(p.parts["exchange"] / layers * 1e3, 4), c["exchange_ms_per_call"]],
                "all_reduce_ms": [
                    round(p.parts["all_reduce"] / ar_calls * 1e3, 4),
                    c["all_reduce_ms_per_call"],
                ],
            }
        )
    errors = [abs(r["error_pct"]) for r in rows]
    return {
        "benchmark": "predict_vs_measured",
        "model": model.name,
        "profile": profile.name,
        "step_overhead_ms": None
        if profile.step_overhead_s is None
        else round(profile.step_overhead_s * 1e3, 3),
        "step_overhead_source": profile.step_overhead_source,
        "rows": rows,
        "choices": choices,
        "helix_counters": counters,
        "max_abs_error_pct": max(errors) if errors else None,
        "all_within_20pct": bool(errors) and max(errors) <= GOAL_ERROR_PCT,
        "choices_ok": all(c["ok"] for c in choices),
        "notes": sorted(notes),
    }


def markdown(out: dict) -> str:
    """The tables: TPOT per row (choice columns on the first row of each context/batch), Helix counters."""
    lines = [
        "| context | batch | config | predicted ms | measured ms | error % | predicted choice "
        "| measured choice | gap % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    choice = {(c["context"], c["batch"]): c for c in out["choices"]}
    seen = set()
    for r in out["rows"]:
        key = (r["context"], r["batch"])
        c = choice.get(key) if key not in seen else None
        seen.add(key)
        pick = ("", "", "")
        if c:
            mark = "" if c["ok"] else " ✗"
            pick = (c["predicted"] + mark, c["measured"], f"{c['gap_pct']:.1f}")
        lines.append(
            f"| {_label(r['context'])} | {r['batch']} | {r['config']} | {r['predicted_ms']:.2f} | "
            f"{r['measured_ms']:.2f} | {r['error_pct']:+.1f} | {pick[0]} | {pick[1]} | {pick[2]} |"
        )
    if out["helix_counters"]:
        lines += [
            "",
            "| context | batch | config | attention ms/layer (model / engine) | exchange ms/layer | "
            "all-reduce ms/call |",
            "|---|---|---|---|---|---|",
        ]
        for c in out["helix_counters"]:
            cells = " | ".join(
                f"{m:.3f} / {e:.3f}"
                for m, e in (c[k] for k in ("attention_ms", "exchange_ms", "all_reduce_ms"))
            )
            lines.append(f"| {_label(c['context'])} | {c['batch']} | {c['config']} | {cells} |")
    f = out["step_overhead_ms"]
    f_text = "unset (0)" if f is None else f"{f} ms"
    met = "met" if out["all_within_20pct"] else "not met"
    right = "right" if out["choices_ok"] else "wrong"
    lines += [
        "",
        f"Step overhead F = {f_text} ({out['step_overhead_source']}); "
        f"max |error| {out['max_abs_error_pct']} % (goal ≤ {GOAL_ERROR_PCT:g} %: {met}); "
        f"choices {right} wherever the measured gap exceeds "
        f"{GOAL_GAP_PCT:g} %.",
    ]
    lines += [f"Note: {n}" for n in out["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="CPU profile JSON from `vllm-helix calibrate`")
    ap.add_argument("result", help="benchmarks/bench_decode.py result JSON")
    ap.add_argument("--fit-overhead", action="store_true", help="fit F here when the profile has none")
    ap.add_argument("--markdown-only", action="store_true", help="print only the tables")
    args = ap.parse_args(argv)
    try:
        profile = CpuProfile.load(args.profile)
        result = json.loads(Path(args.result).read_text())
        out = compare(profile, result, args.fit_overhead, source=args.result)
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.markdown_only:
        print(json.dumps(out))
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
