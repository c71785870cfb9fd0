# SPDX-License-Identifier: Apache-2.0
"""GPU benchmark of the Helix Triton kernels: achieved HBM bandwidth vs the GPU's peak; prints one JSON line.

NOT RUN HERE: this repository was developed without a GPU, so no number from this script is recorded anywhere.
The kernels were verified only in Triton's interpreter mode on CPU (tests/kernels). On a CUDA machine:

    python benchmarks/bench_kernels_gpu.py --op decode --batch 8 --heads 32 --kv-heads 8 --head-dim 128 \\
        --context 131072 --kvp 4 --peak-gbps 3350          # H100 SXM spec-sheet HBM peak
    python benchmarks/bench_kernels_gpu.py --op mla --batch 8 --heads 16 --context 131072 --kvp 8 \\
        --peak-gbps 4800                                    # H200 SXM spec-sheet HBM peak
    python benchmarks/bench_kernels_gpu.py --op combine --kvp 8 --batch 64 --heads 128 --head-dim 512

Bandwidth counts the bytes the op must move (KV shard, queries, outputs; for the combine the partials in and
O out), not the split scratch; time is the median of `triton.testing.do_bench` (L2 flushed between runs). The
JSON also carries the max abs error against the torch reference on the same inputs (skip with --no-check).
Exits with code 2 when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _paged_inputs(args, device, dtype, row_dim: int | None, latent_dim: int | None):
    """Random paged cache(s) holding `context // kvp` tokens per sequence, blocks scattered."""
    local_len = args.context // args.kvp
    blocks_per_seq = -(-local_len // args.block_size)
    num_blocks = args.batch * blocks_per_seq
    table = torch.randperm(num_blocks, device=device, dtype=torch.int32).view(args.batch, blocks_per_seq)
    lens = torch.full((args.batch,), local_len, dtype=torch.int32, device=device)
    if latent_dim is not None:
        cache = torch.randn(num_blocks, args.block_size, latent_dim, device=device, dtype=dtype)
        return cache, table, lens, local_len
    k = torch.randn(num_blocks, args.block_size, args.kv_heads, row_dim, device=device, dtype=dtype)
    v = torch.randn(num_blocks, args.block_size, args.kv_heads, row_dim, device=device, dtype=dtype)
    return (k, v), table, lens, local_len


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    finite = torch.isfinite(b)
    return (a.float()[finite] - b.float()[finite]).abs().max().item()


def bench(args, device: torch.device | None = None, timer=None) -> dict:
    """Run one op on `device` (CUDA by default); `timer(fn) -> ms` defaults to triton's do_bench (median)."""
    import triton.testing

    from vllm_helix.attention.lse_combine import combine_partials as combine_reference
    from vllm_helix.attention.torch_attention import (
        decode_attention_reference as partial_decode_attention_reference,
    )
    from vllm_helix.kernels.triton_combine import combine
    from vllm_helix.kernels.triton_decode_attention import partial_decode_attention
    from vllm_helix.kernels.triton_mla_decode_attention import (
        mla_partial_decode_attention,
        mla_partial_decode_attention_reference,
    )

    device, dtype = device or torch.device("cuda"), _DTYPES[args.dtype]
    if timer is None:

        def timer(fn):
            return triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")

    elt = torch.tensor([], dtype=dtype).element_size()
    result = {"op": args.op, "dtype": args.dtype, "batch": args.batch, "heads": args.heads, "kvp": args.kvp}
    if args.op == "decode":
        (k, v), table, lens, local_len = _paged_inputs(args, device, dtype, args.head_dim, None)
        q = torch.randn(args.batch, args.heads, args.head_dim, device=device, dtype=dtype)
        call_args = (q, k, v, table, lens, args.head_dim**-0.5)
        fn = lambda: partial_decode_attention(*call_args, num_splits=args.num_splits)  # noqa: E731
        ref = lambda: partial_decode_attention_reference(*call_args)  # noqa: E731
        nbytes = (
            args.batch * local_len * args.kv_heads * 2 * args.head_dim * elt  # K and V shard
            + 2 * q.numel() * elt
            + args.batch * args.heads * 4
        )  # q in, O out, LSE out
        result.update(kv_heads=args.kv_heads, head_dim=args.head_dim, local_len=local_len)
    elif args.op == "mla":
        latent = args.kv_lora_rank + args.rope_dim
        kv, table, lens, local_len = _paged_inputs(args, device, dtype, None, latent)
        q_nope = torch.randn(args.batch, args.heads, args.kv_lora_rank, device=device, dtype=dtype)
        q_pe = torch.randn(args.batch, args.heads, args.rope_dim, device=device, dtype=dtype)
        call_args = (q_nope, q_pe, kv, table, lens, (args.qk_head_dim or latent) ** -0.5)
        fn = lambda: mla_partial_decode_attention(*call_args, num_splits=args.num_splits)  # noqa: E731
        ref = lambda: mla_partial_decode_attention_reference(*call_args)  # noqa: E731
        nbytes = (
            args.batch * local_len * latent * elt
            + (q_nope.numel() + q_pe.numel()) * elt
            + q_nope.numel() * elt
            + args.batch * args.heads * 4
        )
        result.update(kv_lora_rank=args.kv_lora_rank, rope_dim=args.rope_dim, local_len=local_len)
    else:  # combine: batch = decode tokens
        partial_out = torch.randn(args.kvp, args.batch, args.heads, args.head_dim, device=device, dtype=dtype)
        partial_lse = torch.randn(args.kvp, args.batch, args.heads, device=device)
        fn = lambda: combine(partial_out, partial_lse)  # noqa: E731
        ref = lambda: combine_reference(partial_out, partial_lse)  # noqa: E731
        nbytes = (
            partial_out.numel() * elt
            + partial_lse.numel() * 4  # partials in
            + partial_out[0].numel() * elt
            + partial_lse[0].numel() * 4
        )  # O and LSE out
        result.update(head_dim=args.head_dim)

    if args.check:
        (out, lse), (ref_out, ref_lse) = fn(), ref()
        result["max_abs_err_o"] = _max_err(out, ref_out)
        result["max_abs_err_lse"] = _max_err(lse, ref_lse)
    ms = timer(fn)
    gbps = nbytes / (ms * 1e-3) / 1e9
    result.update(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        time_us=ms * 1e3,
        bytes=nbytes,
        achieved_gbps=gbps,
        peak_gbps=args.peak_gbps,
        fraction_of_peak=(gbps / args.peak_gbps) if args.peak_gbps else None,
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=["decode", "mla", "combine"], default="decode")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, default=8, help="decode sequences (tokens for --op combine)")
    parser.add_argument("--heads", type=int, default=32, help="query heads on this rank")
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--kv-lora-rank", type=int, default=512)
    parser.add_argument("--rope-dim", type=int, default=64)
    parser.add_argument("--qk-head-dim", type=int, default=None, help="MLA scale dim (default: latent)")
    parser.add_argument("--context", type=int, default=32768, help="global context length per sequence")
    parser.add_argument("--kvp", type=int, default=1, help="KV-parallel size: each rank holds context / kvp")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-splits", type=int, default=None)
    parser.add_argument("--peak-gbps", type=float, default=None, help="HBM peak in GB/s (spec sheet)")
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=200)
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the reference check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench_kernels_gpu.py needs a CUDA device; none found (torch.cuda.is_available() is False). "
            "The kernels' CPU verification (Triton interpreter) is `pytest tests/kernels`.",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(bench(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
