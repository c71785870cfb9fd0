# SPDX-License-Identifier: Apache-2.0
"""Build and load the native CPU ops (`torch.ops.helix_cpu.*`, sources in `kernels/csrc/`).

The ops are compiled against the installed torch with `torch.utils.cpp_extension.load` (gcc + ninja), once per
machine: the README's setup step (`vllm-helix setup-cpu`) builds them, later loads reuse the cached library
(torch rebuilds it only when a source changes). Each ISA build (generic, AVX2, AVX-512, AVX-512 + BF16) is
compiled into the same library through `#pragma GCC target`, and the op picks the best one the CPU has at run
time.

If the build fails (no compiler, no ninja, …) the Helix backend falls back to the torch path: `status()` says
why, the worker logs it once and `/helix/status` shows it.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

__all__ = ["EXTENSION_NAME", "load", "status", "sources"]

EXTENSION_NAME = "vllm_helix_cpu"
DISABLE_ENV = "VLLM_HELIX_NATIVE"  # "0": never build or load the native ops (the torch path is used)
_CSRC = Path(__file__).resolve().parent / "csrc"
logger = logging.getLogger("vllm.helix.kernels")  # under "vllm": shown by vLLM's log handlers


def sources() -> list[Path]:
    return sorted(_CSRC.glob("*.cpp"))


@functools.cache
def load() -> str | None:
    """Build (if needed) and load the ops. Returns None on success, else the reason they are unavailable."""
    if os.environ.get(DISABLE_ENV, "1").strip() == "0":
        return f"disabled by {DISABLE_ENV}=0"
    if hasattr(torch.ops, "helix_cpu") and hasattr(torch.ops.helix_cpu, "decode_attention"):
        return None  # already registered in this process
    try:
        from torch.utils.cpp_extension import load as cpp_load

        cpp_load(
            name=EXTENSION_NAME,
            sources=[str(s) for s in sources()],
            extra_cflags=["-O3"],
            is_python_module=False,
            verbose=False,
        )
        torch.ops.helix_cpu.decode_attention  # noqa: B018 - raises if registration did not happen
    except Exception as exc:  # noqa: BLE001 - any build/load failure means: use the torch path
        reason = (
            f"native CPU ops unavailable ({type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]})"
        )
        logger.warning("vllm-helix: %s; using the torch attention path", reason)
        return reason
    return None


def status() -> dict:
    """{"available": bool, "isa": the ISA the ops run ("avx512bf16", "avx512",
    "avx2", "generic8") or None, "reason": …}."""
    reason = load()
    isa = torch.ops.helix_cpu.resolved_isa("auto") if reason is None else None
    return {"available": reason is None, "isa": isa, "reason": reason}
