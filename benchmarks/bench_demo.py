# SPDX-License-Identifier: Apache-2.0
"""The README demo as a newcomer times it: `vllm-helix serve-demo` (what `make serve` runs) against plain
`vllm serve` of the same model at TP 1 (`serve-demo --stock`), one after the other on the same machine.

Each server answers the README's chat question, streamed through the OpenAI API (bf16, greedy, `--max-tokens`
tokens, EOS ignored so every run has the same length), `--reps` times after one warm-up. Per-token latency =
the median gap between consecutive streamed chunks; time to first token apart.

Prints ONE JSON line.

    python benchmarks/bench_demo.py [--reps 5] [--max-tokens 64] [--helix-args "--tp 3 --dcp 3"]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def stream_once(base: str, max_tokens: int) -> tuple[float, list[float], str]:
    """(time to first token s, gaps between later chunks s, text) of one streamed chat completion."""
    import requests

    body = {
        "model": "smollm2",
        "messages": CHAT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    stamps, text = [], []
    with requests.post(f"{base}/v1/chat/completions", json=body, stream=True, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
            if delta:
                stamps.append(time.perf_counter())
                text.append(delta)
    return stamps[0] - t0, [b - a for a, b in itertools.pairwise(stamps)], "".join(text)


def measure(args: list[str], reps: int, max_tokens: int) -> dict:
    from tests.e2e.demo_serve import serve_demo

    started = time.perf_counter()
    with serve_demo(args, timeout=900) as server:
        ready = time.perf_counter() - started
        stream_once(server.base, max_tokens)  # warm-up
        ttft, gaps, text = [], [], ""
        for _ in range(reps):
            first, between, text = stream_once(server.base, max_tokens)
            ttft.append(first)
            gaps.extend(between)
    return {
        "args": args,
        "startup_s": round(ready, 1),
        "ttft_ms": round(statistics.median(ttft) * 1e3, 1),
        "per_token_ms": round(statistics.median(gaps) * 1e3, 2),
        "per_token_ms_p90": round(sorted(gaps)[int(0.9 * (len(gaps) - 1))] * 1e3, 2),
        "tokens": len(gaps) // reps + 1,
        "answer_start": text[:60],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--helix-args", default="", help="extra serve-demo arguments for the Helix server")
    args = ap.parse_args()
    from vllm_helix.planner.ceilings import machine

    load_before = os.getloadavg()
    helix = measure(shlex.split(args.helix_args), args.reps, args.max_tokens)
    stock = measure(["--stock"], args.reps, args.max_tokens)
    print(
        json.dumps(
            {
                "benchmark": "demo",
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": machine(load_before),
                "helix": helix,
                "stock_tp1": stock,
                "helix_over_stock_per_token": round(helix["per_token_ms"] / stock["per_token_ms"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
