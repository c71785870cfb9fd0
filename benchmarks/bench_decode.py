# SPDX-License-Identifier: Apache-2.0
"""Long-context decode with real vLLM on the CPU: stock TP vs Helix, time per output token and tokens/s/user.

Configurations (each one engine, kept alive across all its context lengths and batch sizes, run in its own
child process that is killed by PID afterwards):

  stock_tp1        stock vLLM -tp 1 (one rank with both cores' threads)
  stock_tp2        stock vLLM -tp 2 (MQA: the single KV head is duplicated on both ranks)
  helix_tp2_dcp2   Helix -tp 2 -dcp 2 (KVP 2 × TPA 1: each rank holds half of the KV)
  helix_tp2_dcp1   Helix -tp 2 -dcp 1 (KVP 1: the plugin's overhead at equal TP; vLLM's own attention)
  helix_tp2_dcp2_gloo  as helix_tp2_dcp2 with the exchange over gloo instead of vLLM's CPU shared memory

Model: a random tiny MQA Llama (hidden 512, 4 layers, 8 query heads, 1 KV head, head_dim 64, bf16) so that
attention over the KV cache dominates a decode step at long context. Prompts are random token ids.

Timing: the engine is stepped by hand (`LLMEngine.add_request` + `step()`), with a timestamp after every step.
A *pure decode step* is one in which every request of the batch already has its first token and none has
finished; time per output token (TPOT) = median pure-decode step time. Prefill (time to the last first token)
is reported apart. For Helix ranks the backend's counters give attention and exchange time over the decode
phase and each rank's KV use after prefill (tokens, blocks). The roofline bound of the Helix attention per
layer call is max(KV bytes / read bandwidth, FLOP / compute rate) — the compute rate of a bf16 cache is the
higher of the fp32 FMA and bf16 rates (`ceilings.attention_compute_rate`) — with the ceilings measured in the
same run (`vllm_helix.planner.ceilings`: vectorised read of a buffer the size of a rank's KV over all
layers, and of 1 GiB).

Prints ONE JSON line. Example:
  python benchmarks/bench_decode.py --contexts 4096,16384,65536 --batch8-max-context 16384
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {
    "stock_tp1": {"tp": 1, "dcp": 1, "helix": False},
    "stock_tp2": {"tp": 2, "dcp": 1, "helix": False},
    "helix_tp2_dcp2": {"tp": 2, "dcp": 2, "helix": True},
    "helix_tp2_dcp1": {"tp": 2, "dcp": 1, "helix": True},
    "helix_tp2_dcp2_gloo": {"tp": 2, "dcp": 2, "helix": True, "exchange": "gloo"},
    "stock_tp3": {"tp": 3, "dcp": 1, "helix": False},
    "helix_tp3_dcp3": {"tp": 3, "dcp": 3, "helix": True},
}
MODEL = dict(heads=8, kv_heads=1, head_dim=64, layers=4, intermediate=1024, vocab=1024)
SMOLLM2 = dict(
    heads=9, kv_heads=3, head_dim=64, layers=30, intermediate=1536, vocab=49152
)  # KVP 3 × TPA 1 grids


def make_model(path: Path, max_len: int) -> Path:
    from tests.e2e.tiny_models import make_tiny_llama

    make_tiny_llama(
        path,
        heads=MODEL["heads"],
        kv_heads=MODEL["kv_heads"],
        head_dim=MODEL["head_dim"],
        layers=MODEL["layers"],
        vocab=MODEL["vocab"],
        intermediate=MODEL["intermediate"],
    )
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("max_position_embeddings", 0) < max_len:
        cfg["max_position_embeddings"] = max_len
        (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


# ---------------------------------------------------------------- child: one engine, many measurements
def _run_batch(
    llm, eng, ctx: int, batch: int, new_tokens: int, chunk: int, helix: bool, tag: str, vocab: int
):
    from vllm import SamplingParams

    rng = random.Random(hash((tag, ctx, batch)) & 0xFFFF)
    prompt_len = ctx - new_tokens
    # requests that finish prefill early keep decoding while the others prefill: give them room so that a
    # window of `new_tokens` steps with the whole batch decoding remains
    extra = (batch - 1) * (-(-prompt_len // chunk) + 1) if batch > 1 else 0
    params = SamplingParams(temperature=0, max_tokens=new_tokens + extra, ignore_eos=True)
    if helix:
        llm.collective_rpc("helix_reset_stats")
    ids = [f"{tag}-{ctx}-{batch}-{i}" for i in range(batch)]
    t_start = time.perf_counter()
    for rid in ids:
        eng.add_request(
            rid, {"prompt_token_ids": [rng.randrange(1, vocab) for _ in range(prompt_len)]}, params
        )
    ntok = dict.fromkeys(ids, 0)
    finished: set[str] = set()
    pure_steps, decode_started, kv_status = [], None, None
    while eng.has_unfinished_requests():
        all_decoding = all(n >= 1 for n in ntok.values()) and not finished
        t0 = time.perf_counter()
        outs = eng.step()
        t1 = time.perf_counter()
        for o in outs:
            ntok[o.request_id] = len(o.outputs[0].token_ids)
            if o.finished:
                finished.add(o.request_id)
        if all_decoding:
            pure_steps.append(t1 - t0)
        elif decode_started is None and all(n >= 1 for n in ntok.values()):
            decode_started = t1
            if helix:  # prefill done: each rank's KV use, then count decode-only attention time
                kv_status = llm.collective_rpc("helix_status")
                llm.collective_rpc("helix_reset_stats")
    row = {
        "context": ctx,
        "batch": batch,
        "prompt_tokens": prompt_len,
        "pure_decode_steps": len(pure_steps),
        "prefill_s": round((decode_started or t1) - t_start, 3),
    }
    if pure_steps:
        row["tpot_ms"] = round(statistics.median(pure_steps) * 1e3, 3)
        row["tpot_ms_mean"] = round(statistics.fmean(pure_steps) * 1e3, 3)
        row["tokens_per_s_per_user"] = round(1e3 / row["tpot_ms"], 2)
    if helix:
        status = llm.collective_rpc("helix_status")
        calls = max(1, status[0]["exchanges"])  # one exchange per layer call when HOP-B does not slice
        row["helix_decode"] = [
            {
                "rank": s["rank"],
                "attention_ms_per_call": round(
                    (s["attention_seconds"] - s["exchange_seconds"]) / calls * 1e3, 4
                ),
                "exchange_ms_per_call": round(s["exchange_seconds"] / calls * 1e3, 4),
                "calls": s["exchanges"],
                "all_reduce_ms_per_call": round(
                    s.get("all_reduce_seconds", 0) / max(1, s.get("all_reduces", 0)) * 1e3, 4
                ),
                "all_reduces": s.get("all_reduces", 0),
            }
            for s in status
        ]
        if kv_status:
            row["kv_per_rank"] = [
                {
                    "rank": s["rank"],
                    "kv_tokens": s["kv_tokens"],
                    "kv_blocks": s["kv_blocks"],
                    "block_size": s["block_size"],
                }
                for s in kv_status
            ]
    return row


def engine_args(spec: dict) -> dict:
    """`LLM(**...)` arguments of one benchmark engine: the configuration's grid, bf16, eager, and for Helix
    the worker class with its knobs."""
    cfg = CONFIGS[spec["config"]]
    args = dict(
        model=spec["model"],
        tensor_parallel_size=cfg["tp"],
        decode_context_parallel_size=cfg["dcp"],
        dtype="bfloat16",
        enforce_eager=True,
        max_model_len=spec["max_model_len"],
        max_num_seqs=8,
        seed=0,
        skip_tokenizer_init=True,
        enable_prefix_caching=False,
    )
    if cfg["helix"]:
        args["worker_cls"] = "vllm_helix.Worker"
        args["additional_config"] = {
            "helix": {"hop_b": spec.get("hop_b", "auto"), "exchange": cfg.get("exchange", "auto")}
        }
    return args


def child(spec: dict) -> None:
    from vllm import LLM

    cfg = CONFIGS[spec["config"]]
    t0 = time.perf_counter()
    llm = LLM(**engine_args(spec))
    startup = time.perf_counter() - t0
    eng = llm.llm_engine
    chunk = eng.vllm_config.scheduler_config.max_num_batched_tokens
    rows = []
    for ctx, batch in spec["cases"]:
        for rep in range(spec["reps"] if ctx <= spec["rep_max_context"] else 1):
            row = _run_batch(
                llm,
                eng,
                ctx,
                batch,
                spec["new_tokens"],
                chunk,
                cfg["helix"],
                f"{spec['config']}{rep}",
                spec.get("vocab", MODEL["vocab"]),
            )
            row["rep"] = rep
            rows.append(row)
            print(f"[bench_decode] {spec['config']} {json.dumps(row)}", file=sys.stderr, flush=True)
    print(
        "RESULT "
        + json.dumps(
            {"config": spec["config"], "startup_s": round(startup, 1), "chunk": chunk, "rows": rows}
        ),
        flush=True,
    )
    del llm


# ---------------------------------------------------------------- parent
def run_config(
    spec: dict, kv_gib: int, timeout: float, log_dir: Path | None = None, script: Path | None = None
) -> dict:
    """Run `script --child spec` (default: this file) in its own process group with the CPU env of its
    ranks; return its RESULT line, killing the whole group afterwards."""
    from vllm_helix.cpu_setup import cpu_env

    ranks = CONFIGS[spec["config"]]["tp"]
    env = {
        **os.environ,
        **cpu_env(ranks, kv_gib),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_gib)
    log = open(log_dir / f"{spec['config']}.log", "w") if log_dir else None  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str((script or Path(__file__)).resolve()), "--child", json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log or subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:  # workers of the engine share the child's process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if log:
            log.close()
            err = (log_dir / f"{spec['config']}.log").read_text()
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    sys.stderr.write(err[-5000:])
    return {"config": spec["config"], "error": f"exit {proc.returncode}", "stderr_tail": err[-1500:]}


def rank_kv_bytes(ctx: int, kvp: int, dims: dict = MODEL) -> int:
    """KV bytes one Helix rank reads per decode step (all layers, bf16, TPA = 1: all KV heads)."""
    return -(-ctx // kvp) * dims["kv_heads"] * dims["head_dim"] * 2 * 2 * dims["layers"]


def summarize(results: dict, ceil: dict, dims: dict = MODEL) -> dict:
    def tpot(cfg, ctx, batch):
        rows = [
            r
            for r in results.get(cfg, {}).get("rows", [])
            if r["context"] == ctx and r["batch"] == batch and "tpot_ms" in r
        ]
        return statistics.median(r["tpot_ms"] for r in rows) if rows else None

    cases = sorted({(r["context"], r["batch"]) for res in results.values() for r in res.get("rows", [])})
    table = []
    for ctx, batch in cases:
        entry = {"context": ctx, "batch": batch}
        for cfg in results:
            t = tpot(cfg, ctx, batch)
            if t is not None:
                entry[f"{cfg}_tpot_ms"] = round(t, 3)
        s, h, h1, hg = (
            entry.get(f"{c}_tpot_ms")
            for c in ("stock_tp2", "helix_tp2_dcp2", "helix_tp2_dcp1", "helix_tp2_dcp2_gloo")
        )
        if s and h:
            entry["helix_kvp2_speedup"] = round(s / h, 3)
        stocks = [t for t in (entry.get("stock_tp1_tpot_ms"), s) if t]
        if stocks and h:
            entry["helix_kvp2_vs_best_stock"] = round(min(stocks) / h, 3)
        if s and hg:
            entry["helix_kvp2_gloo_speedup"] = round(s / hg, 3)
        if s and h1:
            entry["kvp1_overhead_pct"] = round((h1 / s - 1) * 100, 1)
        s3, h3 = entry.get("stock_tp3_tpot_ms"), entry.get("helix_tp3_dcp3_tpot_ms")
        if s3 and h3:
            entry["helix_kvp3_speedup"] = round(s3 / h3, 3)
        table.append(entry)
    # roofline bound of the Helix attention per layer call, and per-rank KV, for Helix at batch 1 (first
    # repetition)
    bound, kv = [], []
    from vllm_helix.planner import ceilings

    fma = ceilings.attention_compute_rate(ceil, 2)  # both benchmark models are bf16
    for cfg in ("helix_tp2_dcp2", "helix_tp3_dcp3"):
        kvp = CONFIGS[cfg]["dcp"]
        for r in results.get(cfg, {}).get("rows", []):
            if r["batch"] != 1 or r.get("rep", 0) != 0:
                continue
            if "helix_decode" in r:
                att = max(x["attention_ms_per_call"] for x in r["helix_decode"])
                step_bytes = rank_kv_bytes(r["context"], kvp, dims)
                kv_bytes = step_bytes // dims["layers"]
                flops = 4 * dims["heads"] * -(-r["context"] // kvp) * dims["head_dim"]
                read = (
                    ceil["read_GBps"].get(str(step_bytes), ceil["read_GBps"][str(ceil["dram_bytes"])]) * 1e9
                )
                bound_ms = max(kv_bytes / read, flops / fma) * 1e3
                bound.append(
                    {
                        "config": cfg,
                        "context": r["context"],
                        "attention_ms_per_layer": att,
                        "kv_bytes_per_rank_layer": kv_bytes,
                        "flops_per_rank_layer": flops,
                        "read_GBps_at_step_size": round(read / 1e9, 2),
                        "bound_ms": round(bound_ms, 4),
                        "bound_by": "bandwidth" if kv_bytes / read >= flops / fma else "compute",
                        "fraction_of_bound": round(bound_ms / att, 3) if att else None,
                        "achieved_GBps": round(kv_bytes / (att / 1e3) / 1e9, 2) if att else None,
                        "achieved_GFLOPs": round(flops / (att / 1e3) / 1e9, 1) if att else None,
                    }
                )
            if "kv_per_rank" in r:
                bs = r["kv_per_rank"][0]["block_size"]
                limit = -(-r["prompt_tokens"] // kvp) + bs
                kv.append(
                    {
                        "config": cfg,
                        "context": r["context"],
                        "prompt_tokens": r["prompt_tokens"],
                        "kv_tokens_per_rank": [x["kv_tokens"] for x in r["kv_per_rank"]],
                        "kv_blocks_per_rank": [x["kv_blocks"] for x in r["kv_per_rank"]],
                        "limit_S_over_KVP_plus_block": limit,
                        "within_limit": all(x["kv_blocks"] * bs <= limit for x in r["kv_per_rank"]),
                    }
                )
    return {"table": table, "bandwidth_bound": bound, "kv_per_rank": kv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap.add_argument("--configs", default="stock_tp1,stock_tp2,helix_tp2_dcp2,helix_tp2_dcp1")
    ap.add_argument("--contexts", type=ints, default=[4096, 16384, 65536])
    ap.add_argument("--batches", type=ints, default=[1, 8])
    ap.add_argument("--batch8-max-context", type=int, default=16384, help="batch > 1 only up to this context")
    ap.add_argument(
        "--kvp1-max-context", type=int, default=16384, help="helix_tp2_dcp1 only up to this context"
    )
    ap.add_argument(
        "--gloo-max-context",
        type=int,
        default=16384,
        help="helix_tp2_dcp2_gloo (the exchange over gloo instead of shared memory) only up to this context",
    )
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2, help="repetitions per case up to --rep-max-context")
    ap.add_argument("--rep-max-context", type=int, default=16384)
    ap.add_argument("--kv-gib", type=int, default=1)
    ap.add_argument("--model-dir", default="/tmp/vllm_helix_bench/mqa512")
    ap.add_argument(
        "--model",
        choices=["mqa", "smollm2"],
        default="mqa",
        help="smollm2: the embedded SmolLM2-135M (bf16, 9 heads / 3 KV heads, max 8K context) for "
        "--configs stock_tp3,helix_tp3_dcp3",
    )
    ap.add_argument(
        "--log-dir", type=Path, default=None, help="write each engine's stderr to DIR/<config>.log"
    )
    ap.add_argument("--timeout", type=float, default=1500)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.model == "smollm2":
        from vllm_helix.demo.head_padding import heads_for
        from vllm_helix.demo.model import ensure_demo_model

        # a grid whose N does not divide SmolLM2's 9 heads gets the same model padded to 12 (as serve-demo
        # does)
        model = {
            c: ensure_demo_model("bfloat16", quiet=True, heads=heads_for(CONFIGS[c]["tp"]))
            for c in args.configs.split(",")
        }
        dims, max_len = SMOLLM2, max(args.contexts)
    else:
        max_len = max(args.contexts) + 256
        model, dims = make_model(Path(args.model_dir), max_len), MODEL
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    from vllm_helix.planner import ceilings

    kvps = sorted({CONFIGS[c]["dcp"] for c in args.configs.split(",") if CONFIGS[c]["helix"]})
    ceil = ceilings.measure([rank_kv_bytes(c, k, dims) for c in args.contexts for k in kvps])
    results, load_before = {}, os.getloadavg()
    for name in args.configs.split(","):
        max_ctx = {"helix_tp2_dcp1": args.kvp1_max_context, "helix_tp2_dcp2_gloo": args.gloo_max_context}.get(
            name, max(args.contexts)
        )
        cases = [
            (c, b)
            for c in args.contexts
            for b in args.batches
            if c <= max_ctx and (b == 1 or c <= args.batch8_max_context)
        ]
        spec = {
            "config": name,
            "model": str(model[name] if isinstance(model, dict) else model),
            "max_model_len": max_len,
            "cases": cases,
            "new_tokens": args.new_tokens,
            "reps": args.reps,
            "rep_max_context": args.rep_max_context,
            "vocab": dims["vocab"],
        }
        results[name] = run_config(spec, args.kv_gib, args.timeout, args.log_dir)
        print(f"[bench_decode] done {name} (load {os.getloadavg()})", file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "decode",
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": ceilings.machine(load_before),
                "model": {"name": args.model, **dims},
                "dtype": "bfloat16",
                "ceilings": ceil,
                "summary": summarize(results, ceil, dims),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
