# SPDX-License-Identifier: Apache-2.0
"""`vllm-helix serve-demo`: serve the embedded SmolLM2-135M-Instruct over vLLM's OpenAI API on 127.0.0.1.

By default with Helix at KVP 2 × TPA 1 (`-tp 2 -dcp 2`), one rank per core of a 2-core machine. SmolLM2 has 9
query heads, which 2 ranks cannot split, so a grid whose N does not divide 9 serves the same model with its
heads padded to 12 (`vllm-helix demo-model --heads 12`: one zero query head per GQA group, zero out-projection
columns — exactly the same function). Either way TPA 1 < 3 KV heads: the grid stock vLLM refuses. `--tp 3
--dcp 3` serves the original 9-head checkpoint at KVP 3. `--stock` serves the original with stock vLLM (TP 1)
instead. Anything after `--` goes to `vllm serve` unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_command(model_path: str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    vllm_cli = os.path.join(os.path.dirname(sys.executable), "vllm")
    cmd = [
        vllm_cli,
        "serve",
        model_path,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--served-model-name",
        "smollm2",
        "--dtype",
        args.dtype,
        "--enforce-eager",
        "--max-model-len",
        str(args.max_model_len),
        "--max-num-seqs",
        str(args.max_num_seqs),
    ]
    if not args.stock:
        cmd += ["--worker-cls", "vllm_helix.Worker", "-tp", str(args.tp), "-dcp", str(args.dcp)]
    return cmd + extra


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser(prog="vllm-helix serve-demo", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tp", type=int, default=2, help="N = KVP × TPA ranks (default 2)")
    p.add_argument("--dcp", type=int, default=2, help="KVP ranks (default 2)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--stock", action="store_true", help="serve with stock vLLM (no Helix), TP 1")
    p.add_argument("--print-command", action="store_true", help="print the vllm serve command and exit")
    args = p.parse_args(argv)

    from vllm_helix.cpu_setup import cpu_env
    from vllm_helix.demo.head_padding import heads_for
    from vllm_helix.demo.model import ensure_demo_model

    try:
        heads = 9 if args.stock else heads_for(args.tp)
    except ValueError as e:
        p.error(str(e))
    model_path = str(ensure_demo_model(args.dtype, heads=heads))
    ranks = 1 if args.stock else args.tp
    env = {**os.environ, **cpu_env(ranks)}
    cmd = build_command(model_path, args, extra)
    print(" ".join(cmd), file=sys.stderr, flush=True)
    if args.print_command:
        return 0
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
