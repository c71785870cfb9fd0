# SPDX-License-Identifier: Apache-2.0
"""Invalid Helix configurations fail in seconds, before any worker starts, through the real entry points:
offline `LLM(...)` (in a child process that refuses to start any process — `tests.e2e.config_child`) and
`vllm serve`. Also: `-dcp` > 1 *without* the Helix worker on CPU gets vLLM's own error (unchanged) and does
not hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.bad_models import make_tiny_gpt2, make_tiny_mistral_sliding
from tests.e2e.engine import REPO
from tests.e2e.proc_tools import group_processes
from tests.e2e.server import free_port
from tests.e2e.tiny_models import make_tiny_deepseek_v3, make_tiny_llama

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HEADER = "Helix (--worker-cls vllm_helix.Worker) cannot run this configuration"
FAST_S = 20.0  # after vLLM is imported, from LLM(...) to the error
PROBE_S = 60.0  # architectures vLLM has not inspected yet: vLLM first probes the model class in a subprocess


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("config-errors")
    return {
        "mqa": str(make_tiny_llama(root / "mqa", heads=8, kv_heads=1, seed=1)),
        "h12k3": str(make_tiny_llama(root / "h12k3", heads=12, kv_heads=3, head_dim=16, seed=5)),
        "gpt2": str(make_tiny_gpt2(root / "gpt2")),
        "mistral_sw": str(make_tiny_mistral_sliding(root / "mistral_sw")),
        "deepseek": str(
            make_tiny_deepseek_v3(root / "deepseek", kv_lora_rank=96, rope_dim=32, nope_dim=16, v_dim=24)
        ),
    }


def _llm(model, tp=2, dcp=2, helix=True, **kw) -> dict:
    args = dict(
        model=model,
        tensor_parallel_size=tp,
        decode_context_parallel_size=dcp,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        skip_tokenizer_init=True,
    )
    if helix:
        args["worker_cls"] = "vllm_helix.Worker"
    return {**args, **kw}


def _cases(m: dict) -> list[tuple[str, dict, list[str], float]]:
    """(name, LLM kwargs, message fragments, time bound)."""
    smol = _smollm2()
    return [
        (
            "heads % N",
            _llm(m["mqa"], 3, 3),
            [HEADER, "query heads (8) must be divisible by N = -tp (3)", "-tp 2 -dcp 2"],
            FAST_S,
        ),
        (
            "-tp % -dcp",
            _llm(m["mqa"], 4, 3),
            [HEADER, "-tp (4) must be divisible by -dcp (3)", "-tp 4 -dcp 2"],
            FAST_S,
        ),
        (
            "KV heads % TPA",
            _llm(m["h12k3"], 4, 2),
            [HEADER, "KV heads (3) must be divisible by TPA = N/KVP (2)", "-tp 4 -dcp 4"],
            FAST_S,
        ),
        ("TPA % KV heads", _llm(m["h12k3"], 12, 3), [HEADER, "TPA = N/KVP (4) exceeds KV heads (3)"], FAST_S),
        ("PP > 1", _llm(m["mqa"], pipeline_parallel_size=2), [HEADER, "--pipeline-parallel-size 2"], FAST_S),
        (
            "PCP > 1",
            _llm(m["mqa"], prefill_context_parallel_size=2),
            [HEADER, "--prefill-context-parallel-size 2"],
            FAST_S,
        ),
        ("architecture", _llm(m["gpt2"]), [HEADER, "architecture GPT2LMHeadModel is not supported"], PROBE_S),
        (
            "sliding window",
            _llm(m["mistral_sw"]),
            [HEADER, "sliding-window attention (window 64)", "--disable-sliding-window"],
            PROBE_S,
        ),
        ("fp8 KV cache", _llm(m["mqa"], kv_cache_dtype="fp8"), [HEADER, "--kv-cache-dtype fp8"], FAST_S),
        (
            "MLA with AMX_MLA",
            _llm(m["deepseek"], attention_backend="AMX_MLA"),
            [HEADER, "--attention-backend AMX_MLA", "pass CPU_MLA"],
            PROBE_S,
        ),
        ("quantization", _llm(m["mqa"], quantization="fp8"), [HEADER, "quantization 'fp8'"], FAST_S),
        ("pooling runner", _llm(m["mqa"], runner="pooling"), [HEADER, "--runner pooling"], FAST_S),
        (
            "Transformers impl",
            _llm(m["mqa"], model_impl="transformers"),
            [HEADER, "--model-impl transformers"],
            PROBE_S,
        ),
        (
            "block size 16",
            _llm(m["mqa"], block_size=16),
            [HEADER, "--block-size 16", "--block-size 32"],
            FAST_S,
        ),
        (
            "interleave 12 / block 32",
            _llm(m["mqa"], block_size=32, cp_kv_cache_interleave_size=12),
            [HEADER, "--cp-kv-cache-interleave-size 12 does not divide the block size 32"],
            FAST_S,
        ),
        (
            "interleave 256 > default block 128",
            _llm(m["mqa"], cp_kv_cache_interleave_size=256),
            [HEADER, "--cp-kv-cache-interleave-size 256 does not divide the block size 128"],
            FAST_S,
        ),
        (
            "unknown helix key",
            _llm(m["mqa"], additional_config={"helix": {"hopb": True}}),
            [HEADER, "unknown --additional-config helix key(s) ['hopb']"],
            FAST_S,
        ),
        (
            "bad helix value",
            _llm(m["mqa"], additional_config={"helix": {"hop_b": "sometimes"}}),
            [HEADER, "helix.hop_b must be"],
            FAST_S,
        ),
        (
            "helix value type",
            _llm(m["mqa"], additional_config={"helix": {"hop_b_slices": "4"}}),
            [HEADER, "helix.hop_b_slices must be an integer"],
            FAST_S,
        ),
        (
            "helix not an object",
            _llm(m["mqa"], additional_config={"helix": [1]}),
            [HEADER, '"helix" must be a JSON object'],
            FAST_S,
        ),
        (
            "Triton kernels on CPU",
            _llm(m["mqa"], additional_config={"helix": {"kernels": "triton"}}),
            [HEADER, 'helix.kernels "triton" needs CUDA'],
            FAST_S,
        ),
        # stock vLLM (no Helix worker) keeps its own pre-spawn DCP error, unchanged
        (
            "stock DCP beyond TP/K",
            _llm(smol, 3, 3, helix=False),
            [
                "Decode context parallelism for GQA/MQA requires `--tensor-parallel-size` (3) "
                "to be greater than"
            ],
            FAST_S,
        ),
    ]


def _smollm2() -> str:
    from vllm_helix.demo.model import ensure_demo_model

    return str(ensure_demo_model("float32", quiet=True))


def _env(ranks: int) -> dict:
    from vllm_helix.cpu_setup import cpu_env

    return {**os.environ, **cpu_env(ranks), "PYTHONPATH": str(REPO)}


def _run(cmd: list[str], ranks: int, timeout: float) -> tuple[int | str, str, float, list[str]]:
    """Run `cmd` in its own process group; (exit code or "timeout", output, seconds, processes left in the
    group)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(ranks),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = "timeout"
    seconds = time.monotonic() - t0
    time.sleep(1)
    left = [str(p.pid) for p in group_processes(proc.pid)]
    for p in group_processes(proc.pid):
        p.kill()
    return code, out, seconds, left


def _valid(m: dict) -> list[tuple[str, dict]]:
    """Configurations Helix runs: validation must let them through to the engine start."""
    return [
        ("valid: MQA -tp 2 -dcp 2, default block", _llm(m["mqa"])),
        ("valid: interleave 16 in block 32", _llm(m["mqa"], block_size=32, cp_kv_cache_interleave_size=16)),
        ("valid: SmolLM2 KVP 3 x TPA 1", _llm(_smollm2(), 3, 3)),
        (
            "valid: sliding window disabled",
            _llm(m["mistral_sw"], max_model_len=64, disable_sliding_window=True),
        ),
        ("valid: DeepSeek MLA + EP", _llm(m["deepseek"], enable_expert_parallel=True)),
    ]


@pytest.mark.timeout(600)
def test_offline_llm_fails_before_any_process_starts(models):
    cases, valid = _cases(models), _valid(models)
    spec = [{"name": name, "llm": llm} for name, llm, _, _ in cases] + [
        {"name": n, "llm": llm} for n, llm in valid
    ]
    code, out, seconds, left = _run(
        [sys.executable, "-m", "tests.e2e.config_child", json.dumps(spec)], 2, 540
    )
    assert code == 0, f"child exited {code}:\n{out[-4000:]}"
    assert not left
    results = {}
    for line in out.splitlines():
        if line.startswith("CASE "):
            case = json.loads(line[5:])
            results[case["name"]] = case
    timings = {}
    for name, _, fragments, bound in cases:
        case = results.get(name)
        assert case is not None, f"{name}: no result (hang or crash?)\n{out[-3000:]}"
        assert case["started"] == [], f"{name}: vLLM tried to start {case['started']} before failing"
        assert case["error_type"] not in (None, "ProcessStartRefused"), f"{name}: {case}"
        for fragment in fragments:
            assert fragment in case["message"], f"{name}: {fragment!r} not in {case['message']!r}"
        assert case["seconds"] < bound, f"{name}: took {case['seconds']} s"
        timings[name] = case["seconds"]
    for name, _ in valid:  # validation passed: the child refused the engine-core start that comes next
        assert results[name]["started"] == ["EngineCore"], f"{name}: {results[name]}"
    print(
        "RELIABILITY "
        + json.dumps(
            {"test": "invalid configs (offline LLM)", "cases": len(cases), "seconds_after_import": timings}
        ),
        flush=True,
    )


SERVE_CASES = [  # (name, args after the model, fragments)
    ("serve -tp 4 -dcp 3", ["-tp", "4", "-dcp", "3"], [HEADER, "-tp (4) must be divisible by -dcp (3)"]),
    (
        "serve --data-parallel-size 2",
        ["-tp", "2", "-dcp", "2", "--data-parallel-size", "2"],
        [HEADER, "--data-parallel-size 2"],
    ),
    (
        "serve unknown helix key",
        ["-tp", "2", "-dcp", "2", "--additional-config", '{"helix": {"kernel": "torch"}}'],
        [HEADER, "unknown --additional-config helix key(s) ['kernel']"],
    ),
]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("name,args,fragments", SERVE_CASES, ids=[c[0] for c in SERVE_CASES])
def test_vllm_serve_exits_with_the_message(models, name, args, fragments):
    vllm_cli = str(Path(sys.executable).with_name("vllm"))
    cmd = [
        vllm_cli,
        "serve",
        models["mqa"],
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--worker-cls",
        "vllm_helix.Worker",
        "--skip-tokenizer-init",
        "--enforce-eager",
        *args,
    ]
    code, out, seconds, left = _run(cmd, 2, 120)
    assert code not in (0, "timeout"), f"{name}: exit {code}\n{out[-3000:]}"
    for fragment in fragments:
        assert fragment in out, f"{name}: {fragment!r} not in output:\n{out[-3000:]}"
    assert "EngineCore" not in out and "Worker_TP" not in out, f"{name}: an engine was started\n{out[-3000:]}"
    assert not left, f"{name}: processes left {left}"
    print(
        "RELIABILITY "
        + json.dumps({"test": name, "exit_code": code, "seconds_incl_import": round(seconds, 1)}),
        flush=True,
    )


@pytest.mark.timeout(400)
def test_stock_dcp_without_the_helix_worker_fails_with_vllms_error_and_does_not_hang(models):
    """Stock vLLM 0.32 on CPU, `-tp 2 -dcp 2` without `--worker-cls`: Helix changes nothing; vLLM's own
    worker-side error ("... requires attention implementations to return the softmax LSE ...") ends the run,
    no hang."""
    spec = {"llm": _llm(models["mqa"], helix=False, block_size=32), "prompts": [[1, 2, 3]], "max_tokens": 2}
    code, out, seconds, left = _run([sys.executable, "-m", "tests.e2e.engine", json.dumps(spec)], 2, 300)
    assert code not in (0, "timeout"), f"exit {code}\n{out[-3000:]}"
    assert "requires attention implementations to return the softmax LSE during decode" in out, out[-3000:]
    assert "Helix" not in out.replace("vllm_helix", ""), "Helix must not act without its worker"
    assert not left, f"processes left {left}"
    print(
        "RELIABILITY "
        + json.dumps(
            {
                "test": "stock -dcp 2 on CPU without Helix",
                "exit_code": code,
                "seconds_incl_spawn": round(seconds, 1),
            }
        ),
        flush=True,
    )
