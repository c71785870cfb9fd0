# SPDX-License-Identifier: Apache-2.0
"""vllm-helix: Helix Parallelism (KV-parallel attention, tensor-parallel FFN) for stock vLLM 0.32.0.

`vllm serve MODEL --worker-cls vllm_helix.Worker -tp N -dcp KVP` — `Worker` is imported lazily so that the
pure core (grid, sharding, combine, planner) and the vLLM plugin entry point stay cheap to import.
"""

__version__ = "0.1.0"

# A plain checkout on PYTHONPATH (no install, e.g. `make gpu-check` on a machine without vLLM): the top-level
# `kernels/` directory is `vllm_helix.kernels`, as pyproject's package-dir mapping makes it for an install.
import os as _os

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "kernels")
) and _os.path.isfile(_os.path.join(_checkout, "kernels", "_triton.py")):
    __path__.append(_checkout)


def __getattr__(name: str):
    if name == "Worker":
        from vllm_helix.worker import Worker

        return Worker
    raise AttributeError(f"module 'vllm_helix' has no attribute {name!r}")
