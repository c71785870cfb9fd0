# SPDX-License-Identifier: Apache-2.0
"""Run a real vLLM engine in a child process (own process group, hard timeout, cleanup by PID).

`run_engine(spec)` starts `python -m tests.e2e.engine` with a JSON spec, which builds `LLM(**spec["llm"])`,
generates greedily for `spec["prompts"]` (token-id lists or strings), optionally collects `helix_status` from
every worker, runs optional further `phases` on the same engine (each may first change Helix knobs via
`helix_configure`; stats are reset before each), and prints one JSON line prefixed with RESULT. Keeping each
engine in its own process keeps the test process clean and lets a stuck engine be killed as a whole.

A phase may also name worker functions to run on every rank through `collective_rpc` just before
(`"rpc_before"`) and just after (`"rpc_after"`) its generate call, as "module:function" strings (e.g.
"tests.e2e.kv_probe:measure_kv_caches"); their per-rank results land in the phase's entry under "rpc" by that
name. Shipping a function needs `VLLM_ALLOW_INSECURE_SERIALIZATION=1` in `env_extra`.

`"chats"` (a list of OpenAI-style message lists) runs `LLM.chat` — vLLM's own chat-template rendering, as
`vllm serve`'s /v1/chat/completions uses — with the same greedy parameters, after the prompts; the result then
has "chat_tokens", "chat_texts" and "chat_prompt_ids".

`"structured": {"prompts": [...], "choice": [...]}` generates those prompts (greedy) constrained to one of the
choices (vLLM's structured outputs, `StructuredOutputsParams(choice=...)`); texts under "structured_texts".

`"logprobs": k` samples each generated token's top-k logprobs, recorded best first as
[[token_id, logprob], ...] per token under "logprobs" (prompts) and "chat_logprobs" (chats);
`"ignore_eos": false` stops at EOS (default: true, every request runs to max_tokens). Every record of prompts
has "num_cached_tokens" per request (prompt tokens served from vLLM's prefix cache,
`RequestOutput.num_cached_tokens`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_engine(
    spec: dict, timeout: float = 420.0, env_extra: dict | None = None, log: list[str] | None = None
) -> dict:
    """Run `spec` on a fresh engine and return its RESULT. `log`, if given, receives the engine process's
    whole output (stdout and stderr).

    The engine process is forked from the session's warm host (`engine_host`: `import vllm` paid once, not
    once per test); vLLM then spawns its engine core and workers exactly as for any user script. As soon
    as the RESULT line is out, the engine's process group is killed and the /dev/shm files it held are
    removed (vLLM's CPU shutdown otherwise waits a 5 s grace period for its workers).
    `HELIX_TEST_ENGINE_HOST=0` starts a plain `python -m tests.e2e.engine` child instead."""
    from vllm_helix.cpu_setup import cpu_env

    ranks = spec["llm"].get("tensor_parallel_size", 1)
    env = {**os.environ, **cpu_env(ranks), "PYTHONPATH": str(REPO), **(env_extra or {})}
    if os.environ.get("HELIX_TEST_ENGINE_HOST", "1") == "0":
        out = _run_fresh(spec, env, timeout)
    else:
        from tests.e2e.engine_host import run_forked

        out = run_forked(spec, env, timeout)
    if log is not None:
        log.append(out)
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"engine failed:\n{failure_excerpt(out)}")


def failure_excerpt(out: str, first_lines: int = 60, tail_chars: int = 4000, stack_chars: int = 12000) -> str:
    """What a failed engine's log says, short enough for a test report: the first error block (the first
    `Traceback` or `ERROR` line and the lines after it — usually a worker's root cause, which vLLM's own
    re-raise in the engine core and the LLM constructor pushes out of any tail), the processes' stacks if a
    hung step had them dumped (`engine_host.dump_stacks`), and the log's tail."""
    from tests.e2e.engine_host import STACKS_MARKER

    stacks = ""
    if STACKS_MARKER in out:
        at = out.index(STACKS_MARKER)
        out, stacks = out[:at], out[at:][:stack_chars]
    lines = out.splitlines()
    first = next((i for i, line in enumerate(lines) if "Traceback" in line or " ERROR " in line), None)
    tail = out[-tail_chars:]
    if first is not None and "\n".join(lines[first:]) not in tail:
        head = "\n".join(lines[first : first + first_lines])
        tail = f"{head}\n[... first error block above, end of the log below ...]\n{tail}"
    return tail + (f"\n{stacks}" if stacks else "")


def _run_fresh(spec: dict, env: dict, timeout: float) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.engine", json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"engine timed out after {timeout}s:\n{out[-4000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out + f"\n(exit {proc.returncode})"


def attention_impl_classes(worker) -> list[str]:
    """Run inside a worker (collective_rpc): the attention impl class of every attention layer."""
    from vllm.model_executor.layers.attention import Attention

    return sorted(
        {
            f"{type(m.impl).__module__}.{type(m.impl).__name__}"
            for m in worker.model_runner.model.modules()
            if isinstance(m, Attention)
        }
    )


def engine_state(worker) -> dict:
    """Run inside a worker (collective_rpc, e.g. a phase's "rpc_after": "tests.e2e.engine:engine_state"): how
    this rank's engine really runs — vLLM 0.32's `compilation_config.mode`/`backend` after the platform
    adjusted them (CPU turns VLLM_COMPILE into DYNAMO_TRACE_ONCE + inductor), whether a
    `@support_torch_compile` module of the model has run compiled (`.compiled`, set by
    vllm.compilation.decorators after the first compiled call), the scheduler's token budget and prefix
    caching."""
    cfg = worker.vllm_config
    compiled = sorted(
        name
        for name, m in worker.model_runner.model.named_modules()
        if getattr(m, "do_not_compile", True) is False and getattr(m, "compiled", False) is True
    )
    return {
        "mode": cfg.compilation_config.mode.name,
        "backend": cfg.compilation_config.backend,
        "compiled_modules": compiled,
        "enforce_eager": cfg.model_config.enforce_eager,
        "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
        "chunked_prefill": cfg.scheduler_config.enable_chunked_prefill,
        "prefix_caching": cfg.cache_config.enable_prefix_caching,
        "block_size": cfg.cache_config.block_size,
    }


def _worker_fn(name: str):
    """Import "module:function" (a function collective_rpc ships to the workers; they import it by
    reference)."""
    import importlib

    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _run_rpcs(llm, names: list[str], into: dict) -> None:
    for name in names:
        into.setdefault("rpc", {})[name] = llm.collective_rpc(_worker_fn(name))


def _logprobs(outputs: list, key: str) -> dict:
    """{key: per request, per generated token, [[token_id, logprob], ...] best first}, or {} if not
    sampled."""
    if not outputs or outputs[0].outputs[0].logprobs is None:
        return {}
    return {
        key: [
            [
                sorted(([tid, lp.logprob] for tid, lp in step.items()), key=lambda e: -e[1])
                for step in o.outputs[0].logprobs
            ]
            for o in outputs
        ]
    }


def _main(spec: dict) -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(**spec["llm"])
    prompts = [{"prompt_token_ids": p} if isinstance(p, list) else p for p in spec["prompts"]]
    params = SamplingParams(
        temperature=0,
        max_tokens=spec.get("max_tokens", 64),
        ignore_eos=spec.get("ignore_eos", True),
        logprobs=spec.get("logprobs"),
    )
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "texts": [o.outputs[0].text for o in outputs],
        "num_cached_tokens": [o.num_cached_tokens for o in outputs],
        **_logprobs(outputs, "logprobs"),
    }
    if spec.get("chats"):
        chats = llm.chat(spec["chats"], params, use_tqdm=False)
        result.update(
            chat_tokens=[list(o.outputs[0].token_ids) for o in chats],
            chat_texts=[o.outputs[0].text for o in chats],
            chat_prompt_ids=[list(o.prompt_token_ids) for o in chats],
            **_logprobs(chats, "chat_logprobs"),
        )
    if spec.get("structured"):
        from vllm.sampling_params import StructuredOutputsParams

        constrained = SamplingParams(
            temperature=0,
            max_tokens=spec.get("max_tokens", 64),
            structured_outputs=StructuredOutputsParams(choice=spec["structured"]["choice"]),
        )
        out = llm.generate(spec["structured"]["prompts"], constrained, use_tqdm=False)
        result["structured_texts"] = [o.outputs[0].text for o in out]
    if spec.get("status"):
        result["status"] = llm.collective_rpc("helix_status")
    if spec.get("impl_classes"):
        result["impl_classes"] = llm.collective_rpc(attention_impl_classes)
    for phase in spec.get(
        "phases", []
    ):  # further generate calls on the same engine, e.g. after a knob change
        if "configure" in phase:
            llm.collective_rpc("helix_configure", kwargs=phase["configure"])
        if spec.get("status"):
            llm.collective_rpc("helix_reset_stats")
        entry: dict = {}
        _run_rpcs(llm, phase.get("rpc_before", []), entry)
        out = llm.generate(
            [{"prompt_token_ids": p} if isinstance(p, list) else p for p in phase["prompts"]],
            params,
            use_tqdm=False,
        )
        entry["tokens"] = [list(o.outputs[0].token_ids) for o in out]
        entry["num_cached_tokens"] = [o.num_cached_tokens for o in out]
        entry.update(_logprobs(out, "logprobs"))
        _run_rpcs(llm, phase.get("rpc_after", []), entry)
        if spec.get("status"):
            entry["status"] = llm.collective_rpc("helix_status")
        result.setdefault("phases", []).append(entry)
    print("RESULT " + json.dumps(result), flush=True)
    del llm


if __name__ == "__main__":
    if sys.argv[1] == "--host":
        from tests.e2e.engine_host import serve

        serve()
    else:
        _main(json.loads(sys.argv[1]))
