# SPDX-License-Identifier: Apache-2.0
"""Every configuration Helix cannot run, found before any worker starts (pure: no vLLM import).

`vllm_helix.compat.config_checks` copies the values that matter out of vLLM's `EngineArgs` / `VllmConfig`
into a `HelixSetup` and calls `validate_setup` in the API / engine-config process, so a bad `vllm serve ...
--worker-cls vllm_helix.Worker` or `LLM(..., worker_cls="vllm_helix.Worker")` fails in seconds with one
`HelixConfigError` listing each problem, its values and a setting that works — never after the ranks have
spawned, never a hang.

Kinds of problem (one line each in the error):

| kind                 | refused                                     | what works                           |
|----------------------|---------------------------------------------|--------------------------------------|
| grid                 | -tp % -dcp, H % N, H % K, K % TPA, TPA % K  | the grids listed for the model       |
| pipeline parallel    | --pipeline-parallel-size > 1                | 1 (all ranks in -tp)                 |
| data parallel        | --data-parallel-size > 1                    | 1 (one server per replica)           |
| prefill context par. | --prefill-context-parallel-size > 1         | 1 (-dcp shards the KV)               |
| architecture         | not in SUPPORTED_ / MLA_ARCHITECTURES       | stock vLLM (no --worker-cls)         |
| sliding window       | a window in the model config                | --disable-sliding-window             |
| soft-cap / ALiBi     | logit soft-capping, ALiBi slopes            | stock vLLM                           |
| KV cache dtype       | fp8 & co.                                   | --kv-cache-dtype auto                |
| quantization         | quantized checkpoints / --quantization      | an unquantized checkpoint            |
| runner / model impl  | --runner pooling, --model-impl transformers | --runner generate, --model-impl auto |
| block size           | not a multiple of 32 on CPU (non-MLA)       | --block-size 32/64/128               |
| interleave           | cp_kv_cache_interleave_size ∤ block size    | unset (= block size), a divisor      |
| --additional-config  | unknown helix keys, bad values or types     | the listed keys and values           |
| kernels              | "triton" on CPU, "native" on CUDA           | "auto" (or "torch")                  |
| platform             | an MLA model on CUDA                        | vLLM's DCP for MLA; Helix on CPU     |

Which attention path the Helix worker installs is decided here too, purely (`helix_attention_path`): the
worker asks the same function (`vllm_helix.worker._install_backend`), so what is refused before spawning is
exactly what it could not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_helix.config import MLA_ARCHITECTURES, SUPPORTED_ARCHITECTURES, HelixConfig
from vllm_helix.grid import HelixConfigError, describe_working_grids, grid_problems

SUPPORTED_KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "float32")
CPU_BLOCK_MULTIPLE = 32  # vLLM's CPU attention backend (and Helix's, which extends it): MultipleOf(32)
NO_HELIX = "or serve the model with stock vLLM (drop --worker-cls vllm_helix.Worker)"


@dataclass(frozen=True)
class HelixSetup:
    """The values of a vLLM configuration that decide whether Helix can run it; None: not known yet."""

    tensor_parallel_size: int = 1
    decode_context_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    prefill_context_parallel_size: int = 1
    num_heads: int | None = None
    num_kv_heads: int | None = None
    architectures: tuple[str, ...] | None = None
    use_mla: bool = False
    block_size: int | None = None
    interleave: int | None = None  # cp_kv_cache_interleave_size; None or 1: Helix uses the block size
    kv_cache_dtype: str = "auto"
    sliding_window: int | None = None
    attn_softcap: float | None = None
    alibi: bool = False
    quantization: str | None = None
    runner_type: str | None = None
    model_impl: str = "auto"
    attention_backend: str | None = None  # --attention-backend (an AttentionBackendEnum name) or None
    device: str = "cpu"
    triton_interpret: bool = False
    additional_config: Any = None


# (platform, MLA?) → the Helix attention path the worker installs. Missing: not wired (refused).
HELIX_ATTENTION_PATHS = {
    ("cpu", False): "gqa",  # vllm_helix.attention.backend over CPU_ATTN (torch / native kernels)
    ("cpu", True): "mla",  # vllm_helix.attention.mla over CPU_MLA, vLLM's MLA + DCP flow
    ("cuda", False): "gqa",  # vllm_helix.attention.backend as the CUSTOM backend (Triton kernels)
}


def helix_attention_path(device: str, use_mla: bool) -> str | None:
    """The Helix attention path for `device` ("cpu" or "cuda") and the model's attention kind, or None where
    Helix has none: MLA on CUDA (the Helix MLA backend is CPU-only, and the GQA backend cannot run MLA)."""
    return HELIX_ATTENTION_PATHS.get((device, bool(use_mla)))


def attention_path_problem(
    device: str, use_mla: bool, architectures: tuple[str, ...] | None = None
) -> str | None:
    """Why Helix cannot attend for this platform and model (None: it can), with what works instead."""
    if helix_attention_path(device, use_mla) is not None:
        return None
    model = ", ".join(architectures or ()) or "this model"
    return (
        f"MLA attention ({model}) on {device.upper()}: the Helix worker has no MLA path there (its MLA "
        "backend, vllm_helix.attention.mla, runs on CPU only); on CUDA serve MLA models without "
        "--worker-cls vllm_helix.Worker and use vLLM's own decode context parallelism for MLA "
        "(`vllm serve MODEL -tp N -dcp KVP`: its MLA backends return the LSE and vLLM combines the "
        "shards), or run Helix on CPU"
    )


def _grid(s: HelixSetup) -> list[str]:
    tp, dcp = s.tensor_parallel_size, s.decode_context_parallel_size
    if s.num_heads is None or s.num_kv_heads is None:  # model not known yet: only the arithmetic of the grid
        if tp >= 1 and dcp >= 1 and tp % dcp:
            divisors = [d for d in range(1, tp + 1) if tp % d == 0]
            return [
                f"-tp {tp} is not divisible by -dcp {dcp}: Helix reads the N = -tp ranks as a KVP × TPA grid "
                f"with KVP = -dcp; use -dcp in {divisors} with -tp {tp}, or -tp {dcp} or {2 * dcp} with "
                f"-dcp {dcp}"
            ]
        return []
    kv_heads = 1 if s.use_mla else s.num_kv_heads
    problems = grid_problems(tp, dcp, s.num_heads, kv_heads)
    if not problems:
        return []
    return [
        f"grid -tp {tp} -dcp {dcp} cannot work for a model with {s.num_heads} query heads and {kv_heads} KV "
        f"heads: " + "; ".join(problems) + ". " + describe_working_grids(s.num_heads, kv_heads, tp)
    ]


def _parallel(s: HelixSetup) -> list[str]:
    problems = []
    if s.pipeline_parallel_size > 1:
        problems.append(
            f"--pipeline-parallel-size {s.pipeline_parallel_size}: Helix runs attention and FFN on one "
            "group of N = -tp ranks; use --pipeline-parallel-size 1 and put every rank in -tp N -dcp KVP"
        )
    if s.data_parallel_size > 1:
        problems.append(
            f"--data-parallel-size {s.data_parallel_size}: Helix serves one engine replica; use "
            "--data-parallel-size 1 (run one `vllm serve` per replica behind a load balancer)"
        )
    if s.prefill_context_parallel_size > 1:
        problems.append(
            f"--prefill-context-parallel-size {s.prefill_context_parallel_size}: Helix already shards "
            "the KV (and prefill attention) over the -dcp ranks; use --prefill-context-parallel-size 1 "
            "and -dcp KVP"
        )
    return problems


def _model(s: HelixSetup) -> list[str]:
    problems = []
    platform = attention_path_problem(s.device, s.use_mla, s.architectures)
    if platform:
        problems.append(platform)
    if s.architectures is not None:
        supported = SUPPORTED_ARCHITECTURES + MLA_ARCHITECTURES
        bad = [a for a in s.architectures if a not in supported]
        if bad or not s.architectures:
            problems.append(
                f"architecture {', '.join(bad) or '(none)'} is not supported by Helix yet (supported: "
                f"{', '.join(supported)}); use one of those, {NO_HELIX}"
            )
        elif s.use_mla and not any(a in MLA_ARCHITECTURES for a in s.architectures):
            problems.append(
                f"MLA attention in {', '.join(s.architectures)} is supported by Helix only for "
                f"{', '.join(MLA_ARCHITECTURES)}; {NO_HELIX}"
            )
    if s.device == "cpu" and s.use_mla and s.attention_backend not in (None, "CPU_MLA"):
        problems.append(
            f"--attention-backend {s.attention_backend}: Helix attends MLA models on CPU through its own "
            "CPU_MLA backend (partial attention + LSE for the exchange); leave --attention-backend unset "
            "or pass CPU_MLA"
        )
    if s.sliding_window is not None:
        problems.append(
            f"sliding-window attention (window {s.sliding_window}) is not supported by the Helix "
            "backend; pass --disable-sliding-window (max_model_len is then capped to the window), " + NO_HELIX
        )
    if s.attn_softcap:
        problems.append(
            f"attention logit soft-capping ({s.attn_softcap}) is not supported by the Helix backend; "
            + NO_HELIX
        )
    if s.alibi:
        problems.append(f"ALiBi attention is not supported by the Helix backend; {NO_HELIX}")
    if s.quantization:
        problems.append(
            f"quantization {s.quantization!r}: Helix rebuilds the QKV projection per TPA shard "
            f"unquantized; use an unquantized (bfloat16 / float32) checkpoint, {NO_HELIX}"
        )
    if s.runner_type not in (None, "generate"):
        problems.append(
            f"--runner {s.runner_type}: Helix serves generative decoder models only; use "
            f"--runner generate, {NO_HELIX}"
        )
    if str(s.model_impl) not in ("auto", "vllm"):
        problems.append(
            f"--model-impl {s.model_impl}: Helix re-shards vLLM's own model classes; use "
            "--model-impl auto (or vllm)"
        )
    return problems


def _cache(s: HelixSetup) -> list[str]:
    problems = []
    if s.kv_cache_dtype not in SUPPORTED_KV_CACHE_DTYPES:
        problems.append(
            f"--kv-cache-dtype {s.kv_cache_dtype}: Helix keeps the KV cache in the model dtype; use "
            f"--kv-cache-dtype auto (or one of {', '.join(SUPPORTED_KV_CACHE_DTYPES[1:])})"
        )
    b, i = s.block_size, s.interleave
    if b is not None and b < 1:
        return problems + [f"--block-size {b} must be ≥ 1; use --block-size 32, 64 or 128"]
    if (
        b is not None and s.device == "cpu" and not s.use_mla and b % CPU_BLOCK_MULTIPLE
    ):  # MLA: any (vLLM uses 16)
        up = -(-b // CPU_BLOCK_MULTIPLE) * CPU_BLOCK_MULTIPLE
        problems.append(
            f"--block-size {b}: on CPU the Helix attention backend (like vLLM's CPU backend) needs a "
            f"multiple of {CPU_BLOCK_MULTIPLE}; use --block-size {up} (or 64, 128)"
        )
    if i is not None and i < 1:
        problems.append(
            f"--cp-kv-cache-interleave-size {i} must be ≥ 1; leave it unset (Helix then places KV "
            "round-robin by whole blocks)"
        )
    elif i is not None and i > 1 and b is not None and (i > b or b % i):
        divisors = [d for d in range(1, b + 1) if b % d == 0]
        problems.append(
            f"--cp-kv-cache-interleave-size {i} does not divide the block size {b}: each rank owns whole "
            f"interleave units inside its blocks; leave it unset (Helix uses the block size, {b}) or "
            f"use a divisor of {b}: {divisors}"
        )
    return problems


def _helix_options(s: HelixSetup) -> tuple[list[str], HelixConfig | None]:
    if s.additional_config is not None and not isinstance(s.additional_config, dict):
        return [
            f"--additional-config must be a JSON object, got {s.additional_config!r}; e.g. "
            '--additional-config \'{"helix": {"hop_b": "auto"}}\''
        ], None
    try:
        options = HelixConfig.from_additional_config(s.additional_config)
    except HelixConfigError as e:
        return [str(e)], None
    except (
        TypeError
    ) as e:  # e.g. positional garbage; from_additional_config names keys, so this is a last resort
        return [f"--additional-config helix: {e}"], None
    if options.kernels == "triton" and s.device == "cpu" and not s.triton_interpret:
        return [
            'helix.kernels "triton" needs CUDA (Triton has no CPU backend; TRITON_INTERPRET=1 is for tests '
            'only); on CPU use "auto" or "torch"'
        ], options
    if options.kernels == "native" and s.device != "cpu":
        return [
            f'helix.kernels "native" runs the C++ CPU ops and cannot run on {s.device}; use "auto" (Triton) '
            'or "torch"'
        ], options
    return [], options


def setup_problems(s: HelixSetup) -> list[str]:
    """Every reason Helix cannot run `s`, one sentence each with the values and what works (empty: it can)."""
    options, _ = _helix_options(s)
    return _grid(s) + _parallel(s) + _model(s) + _cache(s) + options


def validate_setup(s: HelixSetup) -> HelixConfig:
    """Raise `HelixConfigError` listing every problem of `s`; return the parsed Helix options otherwise."""
    problems = setup_problems(s)
    if problems:
        if len(problems) == 1:
            raise HelixConfigError(
                f"Helix (--worker-cls vllm_helix.Worker) cannot run this configuration: {problems[0]}"
            )
        raise HelixConfigError(
            "Helix (--worker-cls vllm_helix.Worker) cannot run this configuration:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return _helix_options(s)[1]
