# SPDX-License-Identifier: Apache-2.0
"""vllm-helix: Helix Parallelism (KV-parallel attention, tensor-parallel FFN) for stock vLLM 0.32.0.

`vllm serve MODEL --worker-cls vllm_helix.Worker -tp N -dcp KVP` — `Worker` is imported lazily so that the pure
core (grid, sharding, combine, planner) and the vLLM plugin entry point stay cheap to import.
"""

__version__ = "0.1.0"


def register() -> None:
    """The `vllm.general_plugins` entry point (see `vllm_helix.plugin.register`)."""
    from vllm_helix.plugin import register as _register

    _register()


def __getattr__(name: str):
    if name == "Worker":
        from vllm_helix.worker import Worker

        return Worker
    raise AttributeError(f"module 'vllm_helix' has no attribute {name!r}")
