# SPDX-License-Identifier: Apache-2.0
"""Triton kernels of the Helix backend (GPU path) and their torch references, as `vllm_helix.kernels`.

Submodules, named implementation_op: `triton_decode_attention` (Triton paged partial decode attention,
split-KV, O + LSE), `cpu_decode_attention` (the same op as native CPU code, built by `cpu_build` from
`csrc/`), `triton_combine` and `cpu_combine` (the Helix LSE combine), `triton_mla_decode_attention`
(absorbed-MLA decode), `cpu_shm_collectives` (the shared-memory all-to-all and all-reduce), and `dispatch`
(the one selection point and table: Triton on CUDA, native code on CPU, the torch references of
`vllm_helix.attention` otherwise).
Importing this package does not import Triton; the submodules load on first attribute access.
"""

from __future__ import annotations

import functools
import importlib

__all__ = ["triton_available"]  # submodules load lazily through __getattr__

_SUBMODULES = (
    "triton_decode_attention",
    "cpu_decode_attention",
    "cpu_build",
    "triton_combine",
    "triton_mla_decode_attention",
    "dispatch",
)


@functools.cache
def triton_available() -> bool:
    """Whether `import triton` succeeds (cached; does not check for a GPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
