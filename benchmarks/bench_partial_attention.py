# SPDX-License-Identifier: Apache-2.0
"""The Helix CPU attention hot path (`paged_partial_attention`) now vs an earlier revision, one thread, side
by side.

The earlier revision is read with `git show REV:vllm_helix/partial_attention.py` (read-only) and imported from
a temporary file; the two alternate within every repetition. Cases: decode (one query token per sequence) over
a KVP-2 rank's local shard in the vLLM CPU cache layout, and one prefill chunk. MQA (8 query heads, 1 KV
head), head_dim 64, block 128, bf16. Also times the bare CPU flash kernel on contiguous K/V (a floor for this
path).

Prints ONE JSON line. Example: python benchmarks/bench_partial_attention.py --before a88466e
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_revision(rev: str):
    src = subprocess.run(
        ["git", "show", f"{rev}:vllm_helix/partial_attention.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "partial_attention_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("partial_attention_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.paged_partial_attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="2d99c6e", help="git revision of the earlier implementation")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()

    import torch

    from vllm_helix.attention.torch_attention import paged_partial_attention as after

    torch.set_num_threads(1)
    before = load_revision(args.before)
    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    dim, bs, heads, kvh, dtype = 64, 128, 8, 1, getattr(torch, args.dtype)
    rows = []
    for n_kv, batch, nq in [
        (2048, 1, 1),
        (8192, 1, 1),
        (32768, 1, 1),
        (8192, 8, 1),
        (32768, 8, 1),
        (16384, 1, 512),
    ]:
        nb = n_kv // bs
        kv = torch.randn(nb * batch, kvh, 2 * bs, dim).to(dtype)  # vLLM CPU layout: K|V per block
        kc, vc = kv.chunk(2, dim=2)
        kct, vct = kc.transpose(1, 2), vc.transpose(1, 2)  # what the backend passed up to 2d99c6e
        kcn, vcn = kct.contiguous(), vct.contiguous()  # token-major (blocks, bs, kvh, D): what it passes now
        bt = torch.arange(nb * batch, dtype=torch.int32).view(batch, nb)
        lens, qsl = torch.full((batch,), n_kv), torch.arange(batch + 1) * nq
        q = torch.randn(batch * nq, heads, dim).to(dtype)
        pos = torch.cat([torch.arange(2 * n_kv - nq, 2 * n_kv) for _ in range(batch)])  # KVP 2, rank 0
        call_before = (q, kct, vct, bt, lens, qsl, dim**-0.5, pos, 0, 2)
        call = (q, kcn, vcn, bt, lens, qsl, dim**-0.5, pos, 0, 2)
        kk, vv = torch.randn(1, kvh, n_kv, dim).to(dtype), torch.randn(1, kvh, n_kv, dim).to(dtype)
        qq = q[:nq].view(nq, kvh, heads, dim).permute(1, 0, 2, 3).reshape(1, kvh, nq * heads, dim)
        fns = {
            "before": functools.partial(before, *call_before),
            "after": functools.partial(after, *call),
            "flash_kernel_contiguous_floor": lambda qq=qq, kk=kk, vv=vv, batch=batch: [
                sdpa(qq, kk, vv, scale=dim**-0.5) for _ in range(batch)
            ],
        }
        times = {k: [] for k in fns}
        for rep in range(args.reps + 1):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if rep:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        kv_bytes = 2 * n_kv * batch * kvh * dim * kv.element_size()
        rows.append(
            {
                "local_kv_tokens": n_kv,
                "batch": batch,
                "query_tokens_per_seq": nq,
                "before_ms": round(med["before"], 3),
                "after_ms": round(med["after"], 3),
                "speedup": round(med["before"] / med["after"], 2),
                "flash_floor_ms": round(med["flash_kernel_contiguous_floor"], 3),
                "after_kv_GBps": round(kv_bytes / med["after"] / 1e6, 2),
            }
        )
        print(f"[bench_partial_attention] {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "partial_attention",
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "before_rev": args.before,
                "dtype": args.dtype,
                "threads": 1,
                "loadavg": os.getloadavg(),
                "reps": args.reps,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
