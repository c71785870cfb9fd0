# SPDX-License-Identifier: Apache-2.0
"""Kernel tests run the real Triton kernels in interpreter mode on CPU tensors (no GPU here) — or, with
`HELIX_TRITON_COMPILED=1` (`make gpu-check`, tests/kernels/gpu_check.py), compiled for the GPU and run on
it: TRITON_INTERPRET stays unset and CUDA is the default device of every test, so the same tests build their
inputs on the GPU. Without a CUDA device every test is then skipped with that reason."""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch

COMPILED_ENV = "HELIX_TRITON_COMPILED"
COMPILED = os.environ.get(COMPILED_ENV) == "1"
NO_GPU = (
    f"compiled Triton kernel tests ({COMPILED_ENV}=1) need a CUDA GPU; none found "
    "(torch.cuda.is_available() is False)"
)

# Must precede the first `import triton`: triton.jit (also that of tl.sum, tl.max, ... in triton.language)
# reads it when a function is defined, and interpreted kernels cannot call GPU-compiled helpers. It is set for
# the collection (when the kernel modules are imported) and then per kernel test, see the hooks below.
_PREVIOUS_INTERPRET = os.environ.get("TRITON_INTERPRET")
if COMPILED:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = "1"


def _reimport_triton_interpreted() -> None:
    """Another test module imported triton (e.g. through vLLM) before this conftest ran: import it again.

    Drops triton's Python modules (its compiled `triton._C` extension stays loaded) and our kernel modules,
    so that the next imports define every jit function interpreted. Modules imported earlier keep the old
    triton; on CPU they never launch it. Running `pytest tests/kernels` alone, or setting
    TRITON_INTERPRET=1 in a top-level conftest, avoids this.
    """
    warnings.warn(
        "triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
        "re-importing it in interpreter mode",
        stacklevel=1,
    )
    for name in list(sys.modules):
        if (name == "triton" or name.startswith("triton.")) and not name.startswith("triton._C"):
            del sys.modules[name]
    package = sys.modules.get("vllm_helix.kernels")
    for sub in (
        "_triton",
        "triton_decode_attention",
        "triton_combine",
        "triton_mla_decode_attention",
        "dispatch",
    ):
        sys.modules.pop(f"vllm_helix.kernels.{sub}", None)
        if package is not None and sub in vars(package):
            delattr(package, sub)


_language = getattr(sys.modules.get("triton"), "language", None)
if not COMPILED and _language is not None and type(_language.sum).__name__ != "InterpretedFunction":
    _reimport_triton_interpreted()

# Tolerances of issue 7: max abs error vs the torch reference, and no element beyond it.
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> float:
    """Same -inf pattern, no NaN, and max |actual - expected| over finite entries within ATOL[dtype]."""
    actual, expected = actual.float(), expected.float()
    assert not torch.isnan(actual).any(), f"{what}: NaN in kernel output"
    assert torch.equal(torch.isneginf(actual), torch.isneginf(expected)), f"{what}: -inf pattern differs"
    finite = torch.isfinite(expected)
    err = (actual[finite] - expected[finite]).abs()
    max_err = err.max().item() if err.numel() else 0.0
    beyond = int((err > ATOL[dtype]).sum())
    assert beyond == 0, f"{what}: {beyond} elements beyond {ATOL[dtype]} (max abs err {max_err:.3g})"
    return max_err


@pytest.fixture
def assert_close():
    """`assert_close(actual, expected, dtype, what) -> max abs err` (conftest is not importable)."""
    return _assert_close


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    """The launchers run CPU tensors only when TRITON_INTERPRET is set; compiled mode: CUDA by default."""
    if not COMPILED:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        yield
        return
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.set_default_device("cuda")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture
def kernel_device() -> torch.device:
    """Where the kernel tests' tensors live: CUDA in compiled mode, else CPU (interpreter)."""
    return torch.device("cuda" if COMPILED else "cpu")


def pytest_collection_modifyitems(config, items):
    """Compiled mode without a GPU: skip every kernel test, saying a GPU is needed."""
    if not COMPILED or torch.cuda.is_available():
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.skip(reason=NO_GPU))


def pytest_collection_finish(session):
    """The kernels are defined by now: give other tests (and the vLLM processes they start) their
    environment."""
    if COMPILED:
        return
    if _PREVIOUS_INTERPRET is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS_INTERPRET
