# SPDX-License-Identifier: Apache-2.0
"""Helix-only knobs, read from vLLM's `--additional-config '{"helix": {...}}'` and validated (pure).

| key            | values                              | default | meaning                                  |
|----------------|-------------------------------------|---------|------------------------------------------|
| `hop_b`        | "auto", true, false                 | "auto"  | overlap the exchange with the next slice |
| `hop_b_slices` | int ≥ 2 or null                     | null    | slices per decode batch (null: auto)     |
| `kernels`      | "auto", "native", "torch", "triton" | "auto"  | decode attention (`kernels.dispatch`)    |
| `metrics`      | true, false                         | true    | per-rank KV-use and exchange-time gauges |
| `exchange`     | "auto", "shm", "gloo"               | "auto"  | CPU transport of an unsliced exchange    |
| `sample_with_forward` | true, false                  | true    | one executor round trip per step   |

A user who sets nothing gets: HOP-B where the batch allows it, Triton kernels on CUDA, the native decode
kernel on CPU (`vllm_helix.kernels.dispatch` is the one table), metrics on, and on CPU the unsliced exchange
over vLLM's shared-memory communicator (gloo where it is unavailable).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from vllm_helix.grid import HelixConfigError

WORKER_CLASS_NAMES = ("vllm_helix.Worker", "vllm_helix.worker.Worker")

# Model classes whose attention Helix can re-shard (`vllm_helix.model_surgery`), checked before workers spawn
# by `vllm_helix.validation`. Kept here (no vLLM import) so the pre-spawn check stays cheap.
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
# MLA models: no re-sharding, vLLM's MLA + DCP flow with the Helix MLA backend (`vllm_helix.attention.mla`).
MLA_ARCHITECTURES = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")


@dataclass(frozen=True, slots=True)
class HelixConfig:
    hop_b: bool | str = "auto"
    hop_b_slices: int | None = None
    kernels: str = "auto"
    metrics: bool = True
    exchange: str = "auto"
    sample_with_forward: bool = True

    def __post_init__(self) -> None:
        if self.hop_b not in (True, False, "auto"):
            raise HelixConfigError(f'helix.hop_b must be "auto", true or false, got {self.hop_b!r}')
        if self.hop_b_slices is not None and (
            not isinstance(self.hop_b_slices, int)
            or isinstance(self.hop_b_slices, bool)
            or self.hop_b_slices < 2
        ):
            raise HelixConfigError(
                f"helix.hop_b_slices must be an integer ≥ 2 or null, got {self.hop_b_slices!r}"
            )
        if self.kernels not in ("auto", "native", "torch", "triton"):
            raise HelixConfigError(
                f'helix.kernels must be "auto", "native", "torch" or "triton", got {self.kernels!r}'
            )
        if not isinstance(self.metrics, bool):
            raise HelixConfigError(f"helix.metrics must be true or false, got {self.metrics!r}")
        if self.exchange not in ("auto", "shm", "gloo"):
            raise HelixConfigError(f'helix.exchange must be "auto", "shm" or "gloo", got {self.exchange!r}')
        if not isinstance(self.sample_with_forward, bool):
            raise HelixConfigError(
                f"helix.sample_with_forward must be true or false, got {self.sample_with_forward!r}"
            )

    @classmethod
    def from_additional_config(cls, additional_config: dict[str, Any] | None) -> HelixConfig:
        """Parse `additional_config["helix"]`; unknown keys are an error that lists the valid ones."""
        raw = (additional_config or {}).get("helix", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise HelixConfigError(
                f'--additional-config "helix" must be a JSON object, got {raw!r}; e.g. '
                '\'{"helix": {"hop_b": false}}\''
            )
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise HelixConfigError(
                f"unknown --additional-config helix key(s) {unknown}; valid keys: {sorted(valid)} "
                '(e.g. --additional-config \'{"helix": {"hop_b": "auto", "kernels": "auto"}}\')'
            )
        return cls(**raw)


def is_helix_worker(worker_cls: Any) -> bool:
    """True when vLLM's `--worker-cls` names the Helix worker."""
    return isinstance(worker_cls, str) and worker_cls in WORKER_CLASS_NAMES
