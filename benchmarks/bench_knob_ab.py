# SPDX-License-Identifier: Apache-2.0
"""A/B of one Helix knob inside one engine: decode steps alternate between two values of a knob.

On a shared 2-core VM the time per token of the same code moves by up to 2× between engine starts (where the
engine core and the ranks land, what the host does); two engines started minutes apart cannot resolve a 10 %
change. Here one Helix engine (tiny MQA Llama of `bench_decode.py`, bf16, eager) prefills one request of
`--context` tokens, then decodes while `helix_configure` flips `--knob` between `--a` and `--b` every
`--block` steps (the first step after a flip is dropped), so both values see the same engine, the same cores
and nearly the same KV length. Reported: median step time per value, the ratio b / a, and per-block medians
paired in time (a block of a and the next block of b), whose median ratio is robust to slow drifts.

Besides the helix config keys, two process knobs (not settings a user has, for experiments):
`exchange_spins` — the pause-spins of the KVP shared-memory exchange before a waiting rank yields
(`ShmGroup.spins`, set on every rank; `cpu_shm_collectives.default_spins` chooses it otherwise), and
`engine_core_nice` — the nice value of vLLM's engine-core process (all its threads).

Prints ONE JSON line. Example (one executor round trip per step vs vLLM's two):
  python benchmarks/bench_knob_ab.py --knob sample_with_forward --a true --b false --context 4096
  python benchmarks/bench_knob_ab.py --knob exchange_spins --a 100 --b 4000 --context 4096
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_decode import CONFIGS, engine_args, make_model, run_config  # noqa: E402

PROCESS_KNOBS = ("exchange_spins", "engine_core_nice")


def _set_exchange_spins(worker, spins: int) -> int:
    """(Runs on every rank.) The KVP exchange's pause-spins before yielding."""
    from vllm_helix.runtime import get_runtime

    exchange = get_runtime().kvp_exchange
    exchange.spins = int(spins)
    return exchange.spins


def _renice_engine_core(nice: int) -> None:
    import psutil

    for proc in psutil.Process().children(recursive=True):
        if proc.name().startswith("VLLM::EngineCor"):
            for thread in proc.threads():
                os.setpriority(os.PRIO_PROCESS, thread.id, int(nice))


def apply_knob(llm, knob: str, value) -> None:
    """Set `knob` to `value` in the running engine."""
    if knob == "exchange_spins":
        llm.collective_rpc(_set_exchange_spins, args=(value,))
    elif knob == "engine_core_nice":
        _renice_engine_core(value)
    else:
        llm.collective_rpc("helix_configure", kwargs={knob: value})


def child(spec: dict) -> None:
    from vllm import LLM, SamplingParams

    if spec["knob"] == "exchange_spins":  # a function sent to the workers: vLLM pickles it only when allowed
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    llm = LLM(**engine_args(spec))
    eng = llm.llm_engine
    knob, values = spec["knob"], (spec["a"], spec["b"])
    steps_total = spec["blocks"] * spec["block"]
    rng = random.Random(0)
    prompt = [rng.randrange(1, 1000) for _ in range(spec["context"] - steps_total - 8)]
    params = SamplingParams(temperature=0, max_tokens=steps_total + 4, ignore_eos=True)
    eng.add_request("ab", {"prompt_token_ids": prompt}, params)
    while not any(len(o.outputs[0].token_ids) >= 1 for o in eng.step()):  # prefill
        pass
    times: dict[str, list[float]] = {"a": [], "b": []}
    block_medians: list[tuple[str, float]] = []
    for blk in range(spec["blocks"]):
        side = "ab"[blk % 2]
        apply_knob(llm, knob, values[blk % 2])
        eng.step()  # the first step after a flip is not counted
        steps = []
        for _ in range(spec["block"] - 1):
            t0 = time.perf_counter()
            eng.step()
            steps.append(time.perf_counter() - t0)
        times[side] += steps
        block_medians.append((side, statistics.median(steps)))
    pairs = [
        b / a for (sa, a), (sb, b) in zip(block_medians[::2], block_medians[1::2], strict=False) if sa != sb
    ]
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(
        "RESULT "
        + json.dumps(
            {
                "config": spec["config"],
                "rows": [
                    {
                        "knob": knob,
                        "a": values[0],
                        "b": values[1],
                        "context": spec["context"],
                        "steps_per_value": len(times["a"]),
                        "a_ms": round(med["a"], 3),
                        "b_ms": round(med["b"], 3),
                        "b_over_a": round(med["b"] / med["a"], 3),
                        "paired_block_ratio_median": round(statistics.median(pairs), 3),
                        "paired_blocks": len(pairs),
                    }
                ],
            }
        ),
        flush=True,
    )
    del llm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="helix_tp2_dcp2", choices=[c for c in CONFIGS if CONFIGS[c]["helix"]])
    ap.add_argument("--knob", help=f"a helix config key (docs/configuration.md) or one of {PROCESS_KNOBS}")
    ap.add_argument("--a", default="true", help="JSON value")
    ap.add_argument("--b", default="false", help="JSON value")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--blocks", type=int, default=40, help="alternating blocks (even: as many of a as of b)")
    ap.add_argument("--block", type=int, default=16, help="decode steps per block")
    ap.add_argument("--kv-gib", type=int, default=1)
    ap.add_argument("--model-dir", default="/tmp/vllm_helix_bench/mqa512")
    ap.add_argument("--timeout", type=float, default=1500)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if not args.knob:
        ap.error("--knob is required")
    from vllm_helix.planner import ceilings

    max_len = args.context + 256
    spec = {
        "config": args.config,
        "model": str(make_model(Path(args.model_dir), max_len)),
        "max_model_len": max_len,
        "knob": args.knob,
        "a": json.loads(args.a),
        "b": json.loads(args.b),
        "context": args.context,
        "blocks": args.blocks,
        "block": args.block,
    }
    load_before = os.getloadavg()
    result = run_config(spec, args.kv_gib, args.timeout, script=Path(__file__))
    print(
        json.dumps(
            {
                "benchmark": "knob_ab",
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": ceilings.machine(load_before),
                "result": result,
            }
        )
    )


if __name__ == "__main__":
    main()
