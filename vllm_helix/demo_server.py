# SPDX-License-Identifier: Apache-2.0
"""`vllm-helix serve-demo`: serve the embedded SmolLM2-135M-Instruct over vLLM's OpenAI API on 127.0.0.1.

By default with Helix at KVP 3 × TPA 1 (`-tp 3 -dcp 3`): SmolLM2 has 9 query heads and 3 KV heads, so this is the
grid stock vLLM refuses (TPA 1 < 3 KV heads). `--stock` serves the same model with stock vLLM (TP 1) instead.
Anything after `--` goes to `vllm serve` unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_command(model_path: str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    vllm_cli = os.path.join(os.path.dirname(sys.executable), "vllm")
    cmd = [vllm_cli, "serve", model_path,
           "--host", args.host, "--port", str(args.port), "--served-model-name", "smollm2",
           "--dtype", args.dtype, "--enforce-eager", "--max-model-len", str(args.max_model_len),
           "--max-num-seqs", str(args.max_num_seqs)]
    if not args.stock:
        cmd += ["--worker-cls", "vllm_helix.Worker", "-tp", str(args.tp), "-dcp", str(args.dcp)]
    return cmd + extra


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser(prog="vllm-helix serve-demo", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tp", type=int, default=3, help="N = KVP × TPA ranks (default 3)")
    p.add_argument("--dcp", type=int, default=3, help="KVP ranks (default 3)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--stock", action="store_true", help="serve with stock vLLM (no Helix), TP 1")
    p.add_argument("--print-command", action="store_true", help="print the vllm serve command and exit")
    args = p.parse_args(argv)

    from vllm_helix.cpu_setup import cpu_env
    from vllm_helix.demo_model import ensure_demo_model

    model_path = str(ensure_demo_model(args.dtype))
    ranks = 1 if args.stock else args.tp
    env = {**os.environ, **cpu_env(ranks)}
    cmd = build_command(model_path, args, extra)
    print(" ".join(cmd), file=sys.stderr, flush=True)
    if args.print_command:
        return 0
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
