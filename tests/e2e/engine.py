# SPDX-License-Identifier: Apache-2.0
"""Run a real vLLM engine in a child process (own process group, hard timeout, cleanup by PID).

`run_engine(spec)` starts `python -m tests.e2e.engine` with a JSON spec, which builds `LLM(**spec["llm"])`, generates
greedily for `spec["prompts"]` (token-id lists or strings), optionally collects `helix_status` from every worker, runs
optional further `phases` on the same engine (each may first change Helix knobs via `helix_configure`; stats are
reset before each), and prints one JSON line prefixed with RESULT. Keeping each engine in its own process keeps the test process clean and
lets a stuck engine be killed as a whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_engine(spec: dict, timeout: float = 420.0, env_extra: dict | None = None) -> dict:
    from vllm_helix.cpu_setup import cpu_env

    ranks = spec["llm"].get("tensor_parallel_size", 1)
    env = {**os.environ, **cpu_env(ranks), "PYTHONPATH": str(REPO), **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.engine", json.dumps(spec)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"engine timed out after {timeout}s:\n{out[-4000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"engine failed (exit {proc.returncode}):\n{out[-6000:]}")


def attention_impl_classes(worker) -> list[str]:
    """Run inside a worker (collective_rpc): the attention impl class of every attention layer."""
    from vllm.model_executor.layers.attention import Attention

    return sorted({f"{type(m.impl).__module__}.{type(m.impl).__name__}" for m in worker.model_runner.model.modules()
                   if isinstance(m, Attention)})


def _main(spec: dict) -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(**spec["llm"])
    prompts = [{"prompt_token_ids": p} if isinstance(p, list) else p for p in spec["prompts"]]
    params = SamplingParams(temperature=0, max_tokens=spec.get("max_tokens", 64), ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result = {"tokens": [list(o.outputs[0].token_ids) for o in outputs],
              "texts": [o.outputs[0].text for o in outputs]}
    if spec.get("status"):
        result["status"] = llm.collective_rpc("helix_status")
    if spec.get("impl_classes"):
        result["impl_classes"] = llm.collective_rpc(attention_impl_classes)
    for phase in spec.get("phases", []):  # further generate calls on the same engine, e.g. after a knob change
        if "configure" in phase:
            llm.collective_rpc("helix_configure", kwargs=phase["configure"])
        if spec.get("status"):
            llm.collective_rpc("helix_reset_stats")
        out = llm.generate([{"prompt_token_ids": p} if isinstance(p, list) else p for p in phase["prompts"]],
                           params, use_tqdm=False)
        entry = {"tokens": [list(o.outputs[0].token_ids) for o in out]}
        if spec.get("status"):
            entry["status"] = llm.collective_rpc("helix_status")
        result.setdefault("phases", []).append(entry)
    print("RESULT " + json.dumps(result), flush=True)
    del llm


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
