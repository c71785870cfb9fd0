# SPDX-License-Identifier: Apache-2.0
"""Pareto figure as in the Helix paper: throughput per GPU vs tokens/s/user, Helix vs baselines, one panel per
model, both axes normalised to the best baseline's maximum (the paper reports normalised values)."""

from __future__ import annotations

from vllm_helix.planner.cost import Estimate

STYLE = {
    "helix": ("Helix", "#76b900", "o"),
    "tp": ("TP", "#1f77b4", "s"),
    "tp_pp": ("TP + PP", "#9467bd", "^"),
    "medha": ("KVP (Medha)", "#ff7f0e", "D"),
    "ep": ("EP (DP attn + EP FFN)", "#d62728", "v"),
}
TITLES = {"deepseek-r1": "DeepSeek-R1 (MLA + MoE)", "llama-405b": "Llama-3.1-405B (dense GQA)"}


def _xy(front: list[Estimate], x0: float, y0: float) -> tuple[list[float], list[float]]:
    return [e.tokens_per_s_user / x0 for e in front], [e.tokens_per_s_gpu / y0 for e in front]


def plot_pareto(results: dict[str, dict], path: str) -> None:
    """Write the figure for ``search.paper_experiment`` results to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 4.8))
    for ax, (name, r) in zip(axes, results.items(), strict=True):
        base = [e for f in r["baselines"].values() for e in f]
        x0 = max(e.tokens_per_s_user for e in base)
        y0 = max(e.tokens_per_s_gpu for e in base)
        for strategy, front in list(r["baselines"].items()) + [("helix", r["helix"])]:
            label, color, marker = STYLE[strategy]
            xs, ys = _xy(front, x0, y0)
            lw = 2.6 if strategy == "helix" else 1.6
            z = 3 if strategy == "helix" else 2
            ax.step(xs, ys, where="pre", color=color, lw=lw, label=label, zorder=z)
            ax.plot(xs, ys, marker, color=color, ms=4, zorder=3)
        h = r["headline"]
        ax.set_title(
            f"{TITLES.get(name, name)}\nHelix: {h['max_interactivity_gain']:.2f}x interactivity, "
            f"{h['throughput_gain_at_equal_ttl']:.1f}x throughput at equal TTL",
            fontsize=10,
        )
        ax.set_xlabel("Tokens/s/user (interactivity), normalised to best baseline")
        ax.set_ylabel("Tokens/s/GPU (throughput), normalised")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Decode at 1M context on GB200 NVL72, FP4, 1-64 GPUs (simulated)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
