# SPDX-License-Identifier: Apache-2.0
"""PNG plots for benchmarks/RESULTS.md from the JSON lines that bench_hop_b.py and bench_decode.py printed.

python benchmarks/plot_results.py --hop-b benchmarks/results/hop_b.json \
    --decode benchmarks/results/decode.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot_hop_b(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    kvps = sorted({r["kvp"] for r in rows})
    ctxs = sorted({r["context"] for r in rows})
    fig, axes = plt.subplots(len(kvps), len(ctxs), figsize=(4 * len(ctxs), 3.2 * len(kvps)), squeeze=False)
    for i, kvp in enumerate(kvps):
        for j, ctx in enumerate(ctxs):
            ax = axes[i][j]
            sel = sorted(
                (r for r in rows if r["kvp"] == kvp and r["context"] == ctx), key=lambda r: r["batch"]
            )
            if not sel:
                ax.set_visible(False)
                continue
            x = range(len(sel))
            ax.bar([v - 0.2 for v in x], [r["step_ms_off"] for r in sel], 0.4, label="step, HOP-B off")
            ax.bar([v + 0.2 for v in x], [r["step_ms_on"] for r in sel], 0.4, label="step, HOP-B on")
            ax.plot(
                [v - 0.2 for v in x],
                [r["exposed_exchange_ms_off"] for r in sel],
                "kx",
                label="exposed exch. off",
            )
            ax.plot(
                [v + 0.2 for v in x],
                [r["exposed_exchange_ms_on"] for r in sel],
                "r+",
                label="exposed exch. on",
            )
            ax.set_xticks(list(x), [str(r["batch"]) for r in sel])
            ax.set_yscale("log")
            ax.set_title(f"KVP {kvp}, context {ctx // 1024}K")
            ax.set_xlabel("batch")
            ax.set_ylabel("ms (median)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def plot_decode(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = data["summary"]["table"]
    batches = sorted({r["batch"] for r in table})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.5), squeeze=False)
    for j, b in enumerate(batches):
        ax = axes[0][j]
        sel = sorted((r for r in table if r["batch"] == b), key=lambda r: r["context"])
        for key, label in (
            ("stock_tp2_tpot_ms", "stock vLLM TP=2"),
            ("helix_tp2_dcp2_tpot_ms", "Helix KVP 2"),
            ("helix_tp2_dcp2_gloo_tpot_ms", "Helix KVP 2, gloo exchange"),
            ("helix_tp2_dcp1_tpot_ms", "Helix KVP 1 (TP=2)"),
            ("stock_tp3_tpot_ms", "stock TP=3"),
            ("helix_tp3_dcp3_tpot_ms", "Helix KVP 3"),
        ):
            pts = [(r["context"], r[key]) for r in sel if key in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("time per output token, ms (median)")
        ax.set_title(f"decode, batch {b}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hop-b", type=Path)
    ap.add_argument("--decode", type=Path)
    ap.add_argument(
        "--decode-smollm2", type=Path, help="bench_decode.py --model smollm2 output → decode_smollm2.png"
    )
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    if args.hop_b:
        plot_hop_b(json.loads(args.hop_b.read_text().strip().splitlines()[-1]), args.out_dir / "hop_b.png")
    if args.decode:
        plot_decode(json.loads(args.decode.read_text().strip().splitlines()[-1]), args.out_dir / "decode.png")
    if args.decode_smollm2:
        plot_decode(
            json.loads(args.decode_smollm2.read_text().strip().splitlines()[-1]),
            args.out_dir / "decode_smollm2.png",
        )


if __name__ == "__main__":
    main()
