# SPDX-License-Identifier: Apache-2.0
"""Pre-spawn validation (`vllm_helix.validation`): every kind of configuration Helix cannot run gives one
clear error naming the values and what works; configurations that work pass. Pure: no vLLM import (except the
check that the worker's backend choice refuses what validation refuses, which imports the worker module)."""

import types

import pytest

from vllm_helix.compat import config_checks, cpu_comm
from vllm_helix.config import MLA_ARCHITECTURES, SUPPORTED_ARCHITECTURES, HelixConfig
from vllm_helix.grid import HelixConfigError
from vllm_helix.validation import (
    HelixSetup,
    attention_path_problem,
    helix_attention_path,
    setup_problems,
    validate_setup,
)

LLAMA = ("LlamaForCausalLM",)
SMOL = dict(num_heads=9, num_kv_heads=3, architectures=LLAMA)  # SmolLM2-135M
MQA = dict(num_heads=8, num_kv_heads=1, architectures=LLAMA)
DEEPSEEK = dict(num_heads=16, num_kv_heads=16, architectures=("DeepseekV3ForCausalLM",))
GQA2 = dict(num_heads=8, num_kv_heads=2, architectures=LLAMA)


def setup(tp=2, dcp=2, model=MQA, **kw) -> HelixSetup:
    return HelixSetup(tensor_parallel_size=tp, decode_context_parallel_size=dcp, **model, **kw)


def error_of(s: HelixSetup) -> str:
    with pytest.raises(HelixConfigError) as e:
        validate_setup(s)
    return str(e.value)


@pytest.mark.parametrize(
    "s",
    [
        setup(),
        setup(3, 3, SMOL),
        setup(3, 1, SMOL),
        setup(1, 1, SMOL),
        setup(4, 2, GQA2),
        setup(2, 2, GQA2),
        setup(block_size=32),
        setup(block_size=128, interleave=1),
        setup(block_size=32, interleave=16),
        setup(block_size=64, interleave=64),
        setup(kv_cache_dtype="bfloat16"),
        setup(runner_type="generate"),
        setup(model_impl="vllm"),
        setup(additional_config={"helix": {"hop_b": False, "kernels": "torch"}}),
        setup(additional_config={"helix": {"kernels": "triton"}}, triton_interpret=True),
        setup(additional_config={"helix": {"kernels": "triton"}}, device="cuda", block_size=16),
        setup(additional_config={"other_plugin": 1}),
        setup(additional_config=None),
        HelixSetup(4, 2),  # model not read yet: only the grid arithmetic is checked
        # DeepSeek MLA: latent KV counts as 1 KV head; vLLM's CPU platform picks block 16, which the Helix MLA
        # backend runs
        setup(
            2,
            2,
            dict(num_heads=16, num_kv_heads=16, architectures=("DeepseekV3ForCausalLM",)),
            use_mla=True,
            block_size=16,
        ),
        setup(2, 2, DEEPSEEK, use_mla=True, block_size=16, attention_backend="CPU_MLA"),
    ],
)
def test_configurations_that_work_pass(s):
    assert setup_problems(s) == []
    assert isinstance(validate_setup(s), HelixConfig)


# (kind, setup, fragments the message must contain: the values and what works)
INVALID = [
    (
        "query heads not divisible by N",
        setup(2, 2, SMOL),
        ["-tp 2 -dcp 2", "query heads (9)", "-tp 3 -dcp 3 (KVP 3 × TPA 1)"],
    ),
    (
        "-tp not divisible by -dcp (model known)",
        setup(4, 3, MQA),
        ["-tp (4) must be divisible by -dcp (3)", "-tp 4 -dcp 2"],
    ),
    (
        "-tp not divisible by -dcp (model not read yet)",
        HelixSetup(4, 3),
        ["-tp 4 is not divisible by -dcp 3", "-dcp in [1, 2, 4]", "-tp 3 or 6"],
    ),
    (
        "KV heads not divisible by TPA",
        setup(4, 2, dict(num_heads=12, num_kv_heads=3, architectures=LLAMA)),
        ["KV heads (3) must be divisible by TPA = N/KVP (2)", "-tp 4 -dcp 4"],
    ),
    (
        "TPA above KV heads and not a multiple",
        setup(12, 3, dict(num_heads=12, num_kv_heads=3, architectures=LLAMA)),
        ["TPA = N/KVP (4) exceeds KV heads (3)", "-tp 12 -dcp 4"],
    ),
    (
        "query heads not a multiple of KV heads",
        setup(1, 1, dict(num_heads=8, num_kv_heads=3, architectures=LLAMA)),
        ["query heads (8) must be a multiple of KV heads (3)"],
    ),
    (
        "pipeline parallel",
        setup(pipeline_parallel_size=2),
        ["--pipeline-parallel-size 2", "use --pipeline-parallel-size 1"],
    ),
    ("data parallel", setup(data_parallel_size=2), ["--data-parallel-size 2", "use --data-parallel-size 1"]),
    (
        "prefill context parallel",
        setup(prefill_context_parallel_size=2),
        ["--prefill-context-parallel-size 2", "use --prefill-context-parallel-size 1"],
    ),
    (
        "unsupported architecture",
        setup(model=dict(num_heads=8, num_kv_heads=8, architectures=("GPT2LMHeadModel",))),
        [
            "architecture GPT2LMHeadModel is not supported",
            "LlamaForCausalLM",
            "drop --worker-cls vllm_helix.Worker",
        ],
    ),
    (
        "no architecture",
        setup(model=dict(num_heads=8, num_kv_heads=1, architectures=())),
        ["architecture (none) is not supported"],
    ),
    (
        "MLA outside the DeepSeek models",
        setup(use_mla=True),
        [
            "MLA attention in LlamaForCausalLM is supported by Helix only for DeepseekV2ForCausalLM",
            "stock vLLM",
        ],
    ),
    (
        "sliding window",
        setup(sliding_window=4096),
        ["sliding-window attention (window 4096)", "--disable-sliding-window"],
    ),
    ("attention soft-cap", setup(attn_softcap=50.0), ["soft-capping (50.0)", "stock vLLM"]),
    ("ALiBi", setup(alibi=True), ["ALiBi", "stock vLLM"]),
    ("fp8 KV cache", setup(kv_cache_dtype="fp8"), ["--kv-cache-dtype fp8", "--kv-cache-dtype auto"]),
    ("fp8_e5m2 KV cache", setup(kv_cache_dtype="fp8_e5m2"), ["--kv-cache-dtype fp8_e5m2"]),
    ("quantized checkpoint", setup(quantization="awq"), ["quantization 'awq'", "unquantized"]),
    ("pooling runner", setup(runner_type="pooling"), ["--runner pooling", "--runner generate"]),
    (
        "Transformers model impl",
        setup(model_impl="transformers"),
        ["--model-impl transformers", "--model-impl auto"],
    ),
    ("block size not a multiple of 32 on CPU", setup(block_size=16), ["--block-size 16", "--block-size 32"]),
    ("block size 48 on CPU", setup(block_size=48), ["--block-size 48", "--block-size 64"]),
    ("block size 0", setup(block_size=0), ["--block-size 0 must be ≥ 1"]),
    (
        "interleave not dividing the block",
        setup(block_size=32, interleave=12),
        [
            "--cp-kv-cache-interleave-size 12 does not divide the block size 32",
            "[1, 2, 4, 8, 16, 32]",
            "unset",
        ],
    ),
    (
        "interleave larger than the block",
        setup(block_size=32, interleave=64),
        ["--cp-kv-cache-interleave-size 64 does not divide the block size 32"],
    ),
    ("interleave 0", setup(interleave=0), ["--cp-kv-cache-interleave-size 0 must be ≥ 1"]),
    (
        "unknown helix key",
        setup(additional_config={"helix": {"hopb": True}}),
        [
            "unknown --additional-config helix key(s) ['hopb']",
            "valid keys: ['exchange', 'hop_b', 'hop_b_slices', 'kernels', 'metrics', 'sample_with_forward']",
        ],
    ),
    (
        "bad helix value",
        setup(additional_config={"helix": {"hop_b": "sometimes"}}),
        ['helix.hop_b must be "auto", true or false', "'sometimes'"],
    ),
    (
        "helix value of the wrong type",
        setup(additional_config={"helix": {"hop_b_slices": "4"}}),
        ["helix.hop_b_slices must be an integer ≥ 2 or null, got '4'"],
    ),
    (
        "bad helix exchange",
        setup(additional_config={"helix": {"exchange": "tcp"}}),
        ['helix.exchange must be "auto", "shm" or "gloo"', "'tcp'"],
    ),
    (
        "helix sample_with_forward of the wrong type",
        setup(additional_config={"helix": {"sample_with_forward": 1}}),
        ["helix.sample_with_forward must be true or false, got 1"],
    ),
    (
        "helix bool of the wrong type",
        setup(additional_config={"helix": {"metrics": "yes"}}),
        ["helix.metrics must be true or false, got 'yes'"],
    ),
    (
        "helix kernels unknown",
        setup(additional_config={"helix": {"kernels": "cuda"}}),
        ['helix.kernels must be "auto", "native", "torch" or "triton"', "'cuda'"],
    ),
    (
        "helix section not an object",
        setup(additional_config={"helix": [1]}),
        ['"helix" must be a JSON object, got [1]'],
    ),
    (
        "additional config not an object",
        setup(additional_config="helix"),
        ["--additional-config must be a JSON object, got 'helix'"],
    ),
    (
        "Triton kernels on CPU",
        setup(additional_config={"helix": {"kernels": "triton"}}),
        ['helix.kernels "triton" needs CUDA', '"auto" or "torch"'],
    ),
    (
        "native kernels on CUDA",
        setup(additional_config={"helix": {"kernels": "native"}}, device="cuda", block_size=64),
        ['helix.kernels "native" runs the C++ CPU ops and cannot run on cuda', 'use "auto" (Triton)'],
    ),
    (
        "MLA on CUDA",
        setup(2, 2, DEEPSEEK, use_mla=True, device="cuda", block_size=64),
        [
            "MLA attention (DeepseekV3ForCausalLM) on CUDA",
            "runs on CPU only",
            "without --worker-cls vllm_helix.Worker",
            "`vllm serve MODEL -tp N -dcp KVP`",
            "or run Helix on CPU",
        ],
    ),
    (
        "MLA on CPU with another attention backend",
        setup(2, 2, DEEPSEEK, use_mla=True, attention_backend="AMX_MLA"),
        ["--attention-backend AMX_MLA", "CPU_MLA backend", "leave --attention-backend unset or pass CPU_MLA"],
    ),
]


@pytest.mark.parametrize("kind,s,fragments", INVALID, ids=[k for k, _, _ in INVALID])
def test_each_invalid_kind_names_values_and_what_works(kind, s, fragments):
    message = error_of(s)
    assert message.startswith("Helix (--worker-cls vllm_helix.Worker) cannot run this configuration")
    for fragment in fragments:
        assert fragment in message, f"{kind}: {fragment!r} not in {message!r}"


def test_at_least_twelve_kinds_are_covered():
    assert len({k.split(" (")[0] for k, _, _ in INVALID}) >= 12


def test_every_problem_is_listed_at_once():
    s = setup(
        2,
        2,
        SMOL,
        pipeline_parallel_size=2,
        kv_cache_dtype="fp8",
        block_size=16,
        additional_config={"helix": {"bogus": 1}},
    )
    message = error_of(s)
    assert len(setup_problems(s)) == 5 and message.count("\n  - ") == 5
    for fragment in (
        "query heads (9)",
        "--pipeline-parallel-size 2",
        "--kv-cache-dtype fp8",
        "--block-size 16",
        "['bogus']",
    ):
        assert fragment in message


def test_supported_architectures_are_the_model_surgery_ones():
    assert "LlamaForCausalLM" in SUPPORTED_ARCHITECTURES and "Qwen3ForCausalLM" in SUPPORTED_ARCHITECTURES
    assert "DeepseekV3ForCausalLM" in MLA_ARCHITECTURES


def test_attention_path_is_decided_per_platform_and_attention_kind():
    """The one decision, pure: GQA/MQA/MHA on CPU and CUDA, MLA on CPU only; MLA on CUDA is refused."""
    assert helix_attention_path("cpu", False) == "gqa"
    assert helix_attention_path("cpu", True) == "mla"
    assert helix_attention_path("cuda", False) == "gqa"
    assert helix_attention_path("cuda", True) is None
    for device, mla in (("cpu", False), ("cpu", True), ("cuda", False)):
        assert attention_path_problem(device, mla) is None
    assert attention_path_problem("cuda", True).startswith("MLA attention (this model) on CUDA")
    # the same model on CPU, or at a KVP of 1, is no different: MLA on CUDA is refused whatever the grid
    assert setup_problems(setup(2, 2, DEEPSEEK, use_mla=True, block_size=16)) == []
    assert len(setup_problems(setup(1, 1, DEEPSEEK, use_mla=True, device="cuda"))) == 1


def test_the_worker_refuses_mla_on_cuda_with_the_same_decision(monkeypatch):
    """Behind the pre-spawn check, the worker's own backend choice asks the same function (no GPU needed):
    on CUDA an MLA model gets the error, not the GQA backend."""
    pytest.importorskip("vllm.v1.attention.backends.registry")
    from vllm_helix import worker

    monkeypatch.setattr(worker, "current_platform", types.SimpleNamespace(is_cpu=lambda: False))
    config = types.SimpleNamespace(
        model_config=types.SimpleNamespace(use_mla=True, architectures=["DeepseekV2ForCausalLM"]),
        parallel_config=types.SimpleNamespace(),
    )
    with pytest.raises(HelixConfigError, match=r"MLA attention \(DeepseekV2ForCausalLM\) on CUDA"):
        worker._install_backend(config)


# ---- the patch wrappers: no-ops (the original called with the same arguments) unless the Helix worker is on


def _recorder():
    calls = []

    def original(self, *args, **kwargs):
        calls.append((self, args, kwargs))
        return "original-result"

    return original, calls


def _engine_args(**kw):
    base = dict(
        worker_cls="auto",
        tensor_parallel_size=4,
        decode_context_parallel_size=3,
        pipeline_parallel_size=1,
        data_parallel_size=1,
        prefill_context_parallel_size=1,
        block_size=None,
        cp_kv_cache_interleave_size=None,
        kv_cache_dtype="auto",
        quantization=None,
        model_impl="auto",
        additional_config={},
    )
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_create_engine_config_wrapper_leaves_stock_vllm_alone(monkeypatch):
    monkeypatch.setattr(config_checks, "_device", lambda: "cpu")
    original, calls = _recorder()
    wrapped = config_checks._helix_create_engine_config(original)
    stock = _engine_args()  # -tp 4 -dcp 3 would be refused for Helix; stock vLLM decides for itself
    assert wrapped(stock, "usage", headless=True) == "original-result"
    assert calls == [(stock, ("usage",), {"headless": True})]


def test_create_engine_config_wrapper_refuses_before_the_original_runs(monkeypatch):
    monkeypatch.setattr(config_checks, "_device", lambda: "cpu")
    original, calls = _recorder()
    wrapped = config_checks._helix_create_engine_config(original)
    helix = _engine_args(worker_cls="vllm_helix.Worker")
    helix.create_model_config = lambda: (_ for _ in ()).throw(OSError("no model here"))  # hint is best effort
    with pytest.raises(HelixConfigError, match="-tp 4 is not divisible by -dcp 3"):
        wrapped(helix)
    assert calls == []
    ok = _engine_args(worker_cls="vllm_helix.Worker", decode_context_parallel_size=2)
    assert wrapped(ok) == "original-result" and len(calls) == 1


def test_verify_with_parallel_config_wrapper_leaves_stock_vllm_alone():
    original, calls = _recorder()
    wrapped = config_checks._helix_verify_with_parallel_config(original)
    pc = types.SimpleNamespace(
        worker_cls="vllm.v1.worker.cpu_worker.CPUWorker", decode_context_parallel_size=3
    )
    assert wrapped("model-config", pc) == "original-result"
    assert calls == [("model-config", (pc,), {})] and pc.decode_context_parallel_size == 3


def test_shm_unlink_only_in_a_helix_worker_and_only_the_group(tmp_path, monkeypatch):
    group = "vllm_dist_abc-tp:0-[0-1]-cpushm"
    for name in (f"{group}_0", f"{group}_1", "vllm_dist_other-tp:0-[0-1]-cpushm_0", f"{group}_x", "psm_123"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(cpu_comm.unlink_shm_segments(group, str(tmp_path))) == [f"{group}_0", f"{group}_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["vllm_dist_other-tp:0-[0-1]-cpushm_0", f"{group}_x", "psm_123"]
    )

    unlinked = []
    monkeypatch.setattr(cpu_comm, "unlink_shm_segments", lambda name: unlinked.append(name))
    original, calls = _recorder()
    wrapped = cpu_comm._helix_init_cpu_shm(original)
    comm = types.SimpleNamespace(group_name=group)
    from vllm_helix import runtime

    monkeypatch.setattr(runtime, "_RUNTIME", None)
    assert wrapped(comm) == "original-result" and unlinked == []  # stock worker: untouched
    monkeypatch.setattr(runtime, "_RUNTIME", object())
    assert wrapped(comm) == "original-result" and unlinked == [group]


def test_helix_names_cpu_mla_for_mla_models_on_cpu(monkeypatch):
    """vLLM 0.32 picks AMX_MLA (bf16 only, no LSE) on AMX CPUs unless CPU_MLA is named: a Helix MLA config on
    CPU gets CPU_MLA before the platform's config pass; a GQA model or a named backend is left as it is."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    monkeypatch.setattr(config_checks, "_device", lambda: "cpu")

    def config(use_mla, backend=None):
        return types.SimpleNamespace(
            model_config=types.SimpleNamespace(use_mla=use_mla),
            attention_config=types.SimpleNamespace(backend=backend),
        )

    mla, gqa = config(True), config(False)
    config_checks.select_cpu_mla_backend(mla)
    config_checks.select_cpu_mla_backend(gqa)
    assert mla.attention_config.backend == AttentionBackendEnum.CPU_MLA
    assert gqa.attention_config.backend is None
    monkeypatch.setattr(config_checks, "_device", lambda: "cuda")
    cuda = config(True)
    config_checks.select_cpu_mla_backend(cuda)
    assert cuda.attention_config.backend is None
