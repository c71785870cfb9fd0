# SPDX-License-Identifier: Apache-2.0
"""The GPU benchmark script: exits 2 without CUDA; its byte accounting and checks run on CPU (interpreter)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_kernels_gpu", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exits_2_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert _load().main(["--op", "combine"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("op", ["decode", "mla", "combine"])
def test_bench_logic_on_cpu(op, kernel_device):
    """Tiny shapes, fake 1 ms timer: no number here is a measurement. On CPU (interpreter), or on the GPU in
    compiled mode (`make gpu-check`)."""
    module = _load()
    args = module.parse_args(
        ["--op", op, "--dtype", "fp32", "--batch", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "64",
         "--kv-lora-rank", "32", "--rope-dim", "16", "--context", "40", "--kvp", "2", "--num-splits", "2",
         "--peak-gbps", "1000"]
    )  # fmt: skip
    result = module.bench(args, device=kernel_device, timer=lambda fn: 1.0)
    expected_bytes = {
        "decode": 2 * 20 * 2 * 2 * 64 * 4 + 2 * 2 * 4 * 64 * 4 + 2 * 4 * 4,
        "mla": 2 * 20 * 48 * 4 + 2 * 4 * 48 * 4 + 2 * 4 * 32 * 4 + 2 * 4 * 4,
        "combine": 2 * 2 * 4 * 64 * 4 + 2 * 2 * 4 * 4 + 2 * 4 * 64 * 4 + 2 * 4 * 4,
    }[op]
    assert result["bytes"] == expected_bytes
    assert result["achieved_gbps"] == pytest.approx(expected_bytes / 1e-3 / 1e9)
    assert result["fraction_of_peak"] == pytest.approx(result["achieved_gbps"] / 1000)
    assert result["max_abs_err_o"] <= 1e-5 and result["max_abs_err_lse"] <= 1e-5
