# SPDX-License-Identifier: Apache-2.0
"""`make gpu-check` (tests/kernels/gpu_check.py) without a GPU: the target's command, the skip report and
exit status 2, and the bandwidth and benchmark bookkeeping on CPU (interpreter, fake 1 ms timer: no number
here is a measurement). On a CUDA machine the command itself is the check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.kernels import gpu_check


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_target_runs_the_script_from_the_checkout():
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "gpu-check", "GPU_PYTHON=py"],
        check=False,
        cwd=gpu_check.REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == ["PYTHONPATH=. py tests/kernels/gpu_check.py"]


@pytest.mark.timeout(300)
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device: `make gpu-check` runs for real there")
def test_without_a_gpu_every_kernel_test_is_skipped_and_the_check_exits_2():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env["PYTHONPATH"] = "."
    out = subprocess.run(
        [sys.executable, "tests/kernels/gpu_check.py"],
        check=False,
        cwd=gpu_check.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    tests = report["tests"]
    assert report["cuda"] is False and report["ok"] is False and "no CUDA device" in report["reason"]
    assert tests["pytest_exit"] == 0 and tests["failed"] == tests["errors"] == tests["passed"] == 0
    assert tests["skipped"] == tests["tests"] > 20
    assert tests["skip_reasons"] == [gpu_check_skip_reason()]
    assert "bench" not in report and "bandwidth" not in report


def gpu_check_skip_reason() -> str:
    from tests.kernels.conftest import NO_GPU

    return NO_GPU


def test_bandwidth_and_benchmark_rows_on_cpu(kernel_device):
    pytest.importorskip("triton")
    bandwidth = gpu_check.measure_bandwidth(kernel_device, timer=lambda fn: 1.0, nbytes=1 << 20)
    assert bandwidth["copy_gbps"] == pytest.approx(2 * (1 << 20) / 1e-3 / 1e9)
    assert bandwidth["read_gbps"] == pytest.approx((1 << 20) / 1e-3 / 1e9)
    tiny = [
        (
            "decode",
            [
                "--op",
                "decode",
                "--dtype",
                "bf16",
                "--batch",
                "2",
                "--heads",
                "4",
                "--kv-heads",
                "2",
                "--head-dim",
                "64",
                "--context",
                "40",
                "--kvp",
                "2",
                "--num-splits",
                "2",
            ],
        ),
        (
            "combine",
            [
                "--op",
                "combine",
                "--dtype",
                "fp32",
                "--kvp",
                "3",
                "--batch",
                "2",
                "--heads",
                "2",
                "--head-dim",
                "64",
            ],
        ),
    ]
    rows = gpu_check.run_benchmarks(kernel_device, bandwidth, timer=lambda fn: 1.0, benches=tiny)
    assert [r["name"] for r in rows] == ["decode", "combine"]
    for row in rows:
        assert row["peak_gbps"] == bandwidth["copy_gbps"] and row["within_tolerance"]
        assert row["fraction_of_peak"] == pytest.approx(row["achieved_gbps"] / bandwidth["copy_gbps"])
        assert row["fraction_of_read"] == pytest.approx(row["achieved_gbps"] / bandwidth["read_gbps"])


def test_the_compiled_run_selects_only_the_triton_kernel_tests():
    files = gpu_check.kernel_test_files()
    assert "tests/kernels/test_triton_decode_attention.py" in files
    assert "tests/kernels/test_kernel_dispatch.py" in files
    assert all("cpu_" not in f and "gpu_check" not in f for f in files)  # native CPU-op tests, this file
