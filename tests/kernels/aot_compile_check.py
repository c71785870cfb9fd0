# SPDX-License-Identifier: Apache-2.0
"""Compile every Helix Triton kernel ahead of time for real NVIDIA targets, without a GPU.

Run by `test_triton_aot_compile.py` in a subprocess without TRITON_INTERPRET: interpreter mode never
lowers a kernel, so this is what proves the kernels go through Triton's CUDA pipeline (TTIR → TTGIR → LLVM →
PTX → cubin, with the ptxas bundled in the triton wheel). Prints one JSON line per compiled kernel, with the
register, local-memory (spill) and shared-memory use that cuobjdump reports.

    python tests/kernels/aot_compile_check.py [--arch 90 80]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("aot_compile_check.py must run without TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from vllm_helix.kernels import triton_combine, triton_decode_attention, triton_mla_decode_attention  # noqa: E402

_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _decode(dt: str, head_dim: int, group: int, page: int, block_n: int):
    pointers = {"Q": f"*{dt}", "K": f"*{dt}", "V": f"*{dt}"}
    block_h = max(16, triton.next_power_of_2(group))
    return triton_decode_attention._partial_decode_attention_kernel, pointers, {
        "GROUP": group, "HEAD_BLOCKS": 1, "HEAD_DIM": head_dim, "V_DIM": head_dim, "PAGE_SIZE": page,
        "BLOCK_H": block_h, "BLOCK_N": block_n, "BLOCK_D": head_dim, "BLOCK_DV": head_dim,
        "DOT_PRECISION": "ieee" if dt == "fp32" else "tf32",
    }, 4  # fmt: skip


def _mla(dt: str, lora_rank: int, rope_dim: int):
    pointers = {"QNope": f"*{dt}", "QPe": f"*{dt}", "KV": f"*{dt}"}
    return triton_mla_decode_attention._mla_partial_decode_attention_kernel, pointers, {
        "HEADS": 16, "LORA_RANK": lora_rank, "ROPE_DIM": rope_dim, "PAGE_SIZE": 64, "BLOCK_H": 16,
        "BLOCK_N": 16, "BLOCK_C": lora_rank, "BLOCK_R": max(16, rope_dim),
        "DOT_PRECISION": "ieee" if dt == "fp32" else "tf32",
    }, 8  # fmt: skip


def _combine(dt: str, kvp: int, dim: int):
    block_kvp = triton.next_power_of_2(kvp)
    constexprs = {"DIM": dim, "BLOCK_KVP": block_kvp, "BLOCK_D": max(16, min(dim, 4096 // block_kvp))}
    return triton_combine._combine_kernel, {"PartialO": f"*{dt}", "O": f"*{dt}"}, constexprs, 4


def _reduce(dt: str, splits: int, v_dim: int):
    constexprs = {"NUM_SPLITS": splits, "V_DIM": v_dim, "BLOCK_SPLITS": splits, "BLOCK_DV": v_dim}
    return triton_decode_attention._split_reduce_kernel, {"O": f"*{dt}"}, constexprs, 4


# Launch configurations the launchers pick for typical shapes (the launchers' block choices, fixed here).
CONFIGS = {
    "decode bf16 D128 GQA4 page16": _decode("bf16", 128, 4, 16, 16),
    "decode fp32 D64 GQA8 page32": _decode("fp32", 64, 8, 32, 32),
    "decode bf16 D128 MQA64 page32": _decode("bf16", 128, 64, 32, 32),
    "split reduce bf16 16x512": _reduce("bf16", 16, 512),
    "combine bf16 KVP256 D512": _combine("bf16", 256, 512),
    "combine fp32 KVP4 D128": _combine("fp32", 4, 128),
    "mla bf16 512+64": _mla("bf16", 512, 64),
    "mla fp32 32+16": _mla("fp32", 32, 16),
}


def compile_one(kernel, pointers: dict, constexprs: dict, num_warps: int, arch: int, workdir: str) -> dict:
    """Compile for sm_<arch>; other pointers are fp32 / int32 tables, scalars int32 (scale fp32)."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name in ("BlockTable", "SeqLens"):
            signature[name] = "*i32"
        elif name[0].isupper():
            signature[name] = "*fp32"
        else:
            signature[name] = "fp32" if name == "scale" else "i32"
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({"num_warps": num_warps, "num_stages": 2})
    compiled = triton.compile(
        triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=target,
        options=options.__dict__,
    )  # fmt: skip
    path = os.path.join(workdir, f"{kernel.__name__}_sm{arch}.cubin")
    with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
    usage = subprocess.run(
        [os.path.join(_BIN, "cuobjdump"), "--dump-resource-usage", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = dict(re.findall(r"(REG|LOCAL|SHARED):(\d+)", usage))
    return {
        "arch": f"sm_{arch}",
        "regs": int(found["REG"]),
        "local_bytes": int(found["LOCAL"]),
        "shared_bytes": compiled.metadata.shared,
        "num_warps": num_warps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90])
    args = parser.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    with tempfile.TemporaryDirectory() as workdir:
        for arch in args.arch:
            for name, (kernel, pointers, constexprs, num_warps) in CONFIGS.items():
                result = compile_one(kernel, pointers, constexprs, num_warps, arch, workdir)
                print(json.dumps({"config": name, "kernel": kernel.__name__, **result}), flush=True)


if __name__ == "__main__":
    main()
