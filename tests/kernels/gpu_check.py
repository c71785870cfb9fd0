# SPDX-License-Identifier: Apache-2.0
"""`make gpu-check`: the Helix Triton kernels on a real GPU, in one command that prints one JSON object.

For a CUDA machine with torch, Triton and pytest and nothing else: no vLLM, no install, no package registry.
From a plain checkout: `PYTHONPATH=. python3 tests/kernels/gpu_check.py` (what `make gpu-check` runs).

1. Tests, compiled: pytest on the Triton kernel tests (`tests/kernels/test_triton_*.py`, the dispatch and
   the benchmark-script tests) with `HELIX_TRITON_COMPILED=1`, so tests/kernels/conftest.py leaves
   TRITON_INTERPRET unset and makes CUDA the default device: every kernel is compiled for this GPU and runs on
   it, against the torch references (fp32 ≤ 1e-5, bf16 ≤ 2e-2). Without a GPU every test is skipped, saying a
   GPU is needed.
2. This GPU's bandwidth, measured: a device-to-device copy (bytes read + written per second) and a read-only
   reduction (`sum`, bytes read per second), 1 GiB each, median of `triton.testing.do_bench`.
3. The kernel benchmark (`benchmarks/bench_kernels_gpu.py`, its `bench`): decode attention (GQA and MQA), MLA
   decode and the combine at long context in bf16, each with `--peak-gbps` = the measured copy bandwidth, so
   `fraction_of_peak` is the share of what this GPU moves in a plain copy; `fraction_of_read` is against the
   read-only figure. Each also reports its max abs error against the torch reference.

The JSON is the last line of stdout (pytest's own output goes to stderr). Exit status: 0 when no test failed
or errored, at least one ran, and every benchmark is within its tolerance; 2 without a CUDA device (after the
tests report their skips); 1 otherwise. Budget: ≤ 5 minutes (pytest is stopped after `TEST_TIMEOUT_S`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
KERNEL_TESTS = Path(__file__).resolve().parent
COMPILED_ENV = "HELIX_TRITON_COMPILED"  # read by tests/kernels/conftest.py
TEST_TIMEOUT_S = 210
BENCH_TOL = {"bf16": 2e-2, "fp16": 2e-2, "fp32": 1e-4}
# (name, bench_kernels_gpu.py arguments): Helix per-rank shapes at 128K context
BENCHES = [
    (
        "decode_gqa",
        [
            "--op",
            "decode",
            "--dtype",
            "bf16",
            "--batch",
            "8",
            "--heads",
            "32",
            "--kv-heads",
            "8",
            "--head-dim",
            "128",
            "--context",
            "131072",
            "--kvp",
            "4",
        ],
    ),
    (
        "decode_mqa",
        [
            "--op",
            "decode",
            "--dtype",
            "bf16",
            "--batch",
            "8",
            "--heads",
            "16",
            "--kv-heads",
            "1",
            "--head-dim",
            "128",
            "--context",
            "131072",
            "--kvp",
            "8",
        ],
    ),
    (
        "mla",
        [
            "--op",
            "mla",
            "--dtype",
            "bf16",
            "--batch",
            "8",
            "--heads",
            "16",
            "--context",
            "131072",
            "--kvp",
            "8",
        ],
    ),
    (
        "combine",
        [
            "--op",
            "combine",
            "--dtype",
            "bf16",
            "--kvp",
            "8",
            "--batch",
            "64",
            "--heads",
            "128",
            "--head-dim",
            "512",
        ],
    ),
]


def kernel_test_files() -> list[str]:
    """The Triton kernel tests (not the native CPU-op tests of the same folder)."""
    files = sorted(KERNEL_TESTS.glob("test_triton_*.py"))
    files += [KERNEL_TESTS / "test_kernel_dispatch.py", KERNEL_TESTS / "test_bench_kernels_gpu_script.py"]
    return [str(f.relative_to(REPO)) for f in files if f.exists()]


def run_tests(timeout: float = TEST_TIMEOUT_S, extra_env: dict | None = None) -> dict:
    """pytest on `kernel_test_files()` in compiled mode, in a child process; counts from its JUnit XML."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(
        {
            COMPILED_ENV: "1",
            "VLLM_HELIX_NATIVE": "0",  # the native CPU ops: not this check's subject
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            **(extra_env or {}),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rfEs",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "--junitxml",
            str(junit),
            *kernel_test_files(),
        ]
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                check=False,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
            output, exit_code = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as e:
            output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            exit_code = f"timeout after {timeout}s"
        print(output, file=sys.stderr, flush=True)
        seconds = round(time.monotonic() - started, 1)
        result = {"files": kernel_test_files(), "pytest_exit": exit_code, "seconds": seconds}
        result.update(_junit_counts(junit))
    return result


def _junit_counts(junit: Path) -> dict:
    if not junit.exists():
        return {
            "tests": 0,
            "passed": 0,
            "failed": 0,
            "errors": 0,
            "skipped": 0,
            "failures": [],
            "skip_reasons": [],
        }
    cases = ET.parse(junit).getroot().iter("testcase")
    failed, errors, skipped, reasons, names = 0, 0, 0, set(), []
    total = 0
    for case in cases:
        total += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            failed += 1
            names.append(name)
        elif case.find("error") is not None:
            errors += 1
            names.append(name)
        elif (skip := case.find("skipped")) is not None:
            skipped += 1
            reasons.add((skip.get("message") or "").strip())
    return {
        "tests": total,
        "passed": total - failed - errors - skipped,
        "failed": failed,
        "errors": errors,
        "skipped": skipped,
        "failures": names,
        "skip_reasons": sorted(reasons),
    }


def _do_bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def measure_bandwidth(device: torch.device, timer=_do_bench, nbytes: int = 1 << 30) -> dict:
    """GB/s of a device copy (read + write bytes) and of a read-only `sum` over `nbytes` of fp32."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_ms = timer(lambda: dst.copy_(src))
    read_ms = timer(lambda: src.sum())
    return {
        "bytes": nbytes,
        "copy_gbps": 2 * nbytes / (copy_ms * 1e-3) / 1e9,
        "read_gbps": nbytes / (read_ms * 1e-3) / 1e9,
    }


def _bench_module():
    path = REPO / "benchmarks" / "bench_kernels_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_kernels_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmarks(device: torch.device, bandwidth: dict, timer=None, benches=BENCHES) -> list[dict]:
    """`bench_kernels_gpu.bench` for each of `benches`, peak = the measured copy bandwidth."""
    module = _bench_module()
    rows = []
    for name, argv in benches:
        args = module.parse_args([*argv, "--peak-gbps", str(bandwidth["copy_gbps"])])
        row = {"name": name, **module.bench(args, device=device, timer=timer)}
        row["fraction_of_read"] = row["achieved_gbps"] / bandwidth["read_gbps"]
        tol = BENCH_TOL[args.dtype]
        row["within_tolerance"] = max(row.get("max_abs_err_o", 0.0), row.get("max_abs_err_lse", 0.0)) <= tol
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _environment() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.cuda.is_available(),
        "vllm_importable": importlib.util.find_spec("vllm") is not None,
    }
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true", help="only the bandwidth and the benchmark")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report: dict = {"check": "gpu-check", **_environment()}
    if not args.skip_tests:
        report["tests"] = run_tests()
    if not report["cuda"]:
        report.update(
            ok=False,
            reason="no CUDA device (torch.cuda.is_available() is False): nothing was "
            "compiled, run or measured; `make gpu-check` is for a CUDA machine",
        )
        report["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(report), flush=True)
        return 2
    device = torch.device("cuda")
    report["bandwidth"] = measure_bandwidth(device)
    report["bench"] = run_benchmarks(device, report["bandwidth"])
    tests = report.get("tests")
    tests_ok = tests is None or (
        tests["failed"] == 0 and tests["errors"] == 0 and tests["passed"] > 0 and tests["pytest_exit"] == 0
    )
    report["ok"] = bool(tests_ok and all(row["within_tolerance"] for row in report["bench"]))
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
