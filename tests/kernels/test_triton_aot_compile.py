# SPDX-License-Identifier: Apache-2.0
"""The kernels are real CUDA kernels: they compile to sm_90 cubins (no GPU needed) without spills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

_SCRIPT = Path(__file__).with_name("aot_compile_check.py")
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(
    not (_BIN / "ptxas").exists() or not (_BIN / "cuobjdump").exists(),
    reason="this triton wheel bundles no ptxas/cuobjdump",
)
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(_SCRIPT), "--arch", "90"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 8, result.stdout
    kernels = {row["kernel"] for row in rows}
    assert kernels == {
        "_partial_decode_attention_kernel",
        "_split_reduce_kernel",
        "_combine_kernel",
        "_mla_partial_decode_attention_kernel",
    }
    spilled = [row for row in rows if row["local_bytes"] != 0]
    assert not spilled, f"register spills to local memory: {spilled}"
