# SPDX-License-Identifier: Apache-2.0
"""Optional Triton import: the real module when installed, inert stand-ins otherwise.

The kernel files define their `@triton.jit` functions at import time, but their torch references must stay
usable on a CPU-only install without Triton (the Helix backend's CPU path). With Triton missing, `triton.jit`
returns the function unchanged and the launchers refuse to run (`require_triton`).
"""

from __future__ import annotations

import os

import torch

__all__ = ["triton", "tl", "require_triton", "check_launch_device"]

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton

    class _TritonPlaceholder:
        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 if n <= 1 else 1 << (n - 1).bit_length()

    class _LanguagePlaceholder:
        constexpr = None  # only used in annotations of functions that never run without triton

    triton = _TritonPlaceholder()
    tl = _LanguagePlaceholder()


def require_triton(op: str) -> None:
    """Raise a clear error when a Triton launcher is called on an install without Triton."""
    from vllm_helix.kernels import triton_available  # the one "is Triton importable" flag

    if not triton_available():
        raise RuntimeError(
            f"{op}: Triton is not importable. Install the CUDA build (`pip install vllm-helix[cuda]`) "
            "or run the torch reference with VLLM_HELIX_KERNELS=torch."
        )


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def check_launch_device(op: str, *tensors: torch.Tensor) -> torch.device:
    """All tensors on one device, which can run a Triton kernel (CUDA, or CPU in interpreter mode)."""
    require_triton(op)
    device = tensors[0].device
    others = {str(t.device) for t in tensors if t.device != device}
    if others:
        raise ValueError(f"{op}: all tensors must be on {device}, got also {sorted(others)}")
    if device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"{op}: the Triton kernel needs CUDA tensors, got {device}. Use the torch reference "
            "(VLLM_HELIX_KERNELS=torch), or set TRITON_INTERPRET=1 before importing triton to run it on CPU."
        )
    return device
