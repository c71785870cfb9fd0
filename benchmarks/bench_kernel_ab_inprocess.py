# SPDX-License-Identifier: Apache-2.0
"""Two versions of the native CPU decode kernel in ONE process, calls alternated: a kernel change measured
without the run-to-run drift of a shared VM (cross-process A/B, `bench_kernel_ab.py`, moved by ±30 % there).

Both checkouts' `kernels/csrc` are copied into a scratch folder, the `avx512bf16` translation unit of each is
renamed into its own namespace (`…_a`, `…_b`), and one C++ driver (g++ -O3, as the torch extension)
calls them in turn on the same inputs: per shape, `--rounds` rounds of `a` then `b`, each `calls` calls long,
one thread, KV cycling over `layers` copies (one copy: cache-resident; four 8 MiB copies: beyond a 32 MiB L3).
Reported per shape: the minimum µs per call of each, the median of the per-round ratios a / b (> 1: b is
faster) and the largest difference between their outputs (0 when the change keeps the arithmetic).

Needs a CPU with AVX-512 + AVX512-BF16 and g++. Prints ONE JSON line.

    python benchmarks/bench_kernel_ab_inprocess.py --a /path/to/old/checkout --b .
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (heads, kv_heads, keys, batch, layers, calls per round): Helix KVP 2 rank, stock TP 2 rank, a wide group,
# SmolLM2's 9/3, batch 8, and 32K keys in and beyond the L3
SHAPES = [
    (8, 1, 4096, 1, 1, 50),
    (4, 1, 8192, 1, 1, 50),
    (16, 1, 2048, 1, 1, 50),
    (9, 3, 4096, 1, 1, 50),
    (8, 1, 2048, 8, 1, 10),
    (8, 1, 32768, 1, 1, 10),
    (8, 1, 32768, 1, 4, 10),
]

DRIVER = r"""
#include "a/decode_attention_avx512bf16.cpp"
#include "b/decode_attention_avx512bf16.cpp"
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
using namespace helix_cpu;
static void serial(int64_t n, RangeFn fn, void* ctx) { fn(ctx, 0, n); }
int main(int argc, char** argv) {
  const int heads = atoi(argv[1]), kvh = atoi(argv[2]), keys = atoi(argv[3]), batch = atoi(argv[4]),
            layers = atoi(argv[5]), calls = atoi(argv[6]), rounds = atoi(argv[7]);
  const int D = 64, BS = 128, NB = keys / BS;
  const size_t per = (size_t)batch * NB * BS * kvh * D;  // one layer's K (or V), (blocks, BS, kvh, D)
  std::vector<bf16> k(per * layers), v(per * layers), q(batch * heads * D), out[2];
  std::vector<float> lse[2];
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (auto& x : k) x = from_float<bf16>(nd(rng));
  for (auto& x : v) x = from_float<bf16>(nd(rng));
  for (auto& x : q) x = from_float<bf16>(nd(rng));
  std::vector<int32_t> table(batch * NB);
  for (int i = 0; i < batch * NB; ++i) table[i] = i;
  std::vector<int64_t> lens(batch, keys);
  Params p{};
  p.q = q.data(); p.q_s = heads * D; p.q_h = D;
  p.k_b = BS * kvh * D; p.k_t = kvh * D; p.k_h = D;
  p.v_b = BS * kvh * D; p.v_t = kvh * D; p.v_h = D;
  p.block_table = table.data(); p.bt_s = NB; p.seq_lens = lens.data();
  p.o_s = heads * D; p.o_c = 0; p.o_h = D; p.l_s = heads * 4; p.l_c = 0; p.l_h = 4;
  p.heads_per_chunk = heads; p.mid = nullptr; p.num_seqs = batch; p.heads = heads; p.kv_heads = kvh;
  p.head_dim = D; p.v_dim = D; p.block_size = BS; p.num_splits = 1; p.scale = 0.125f; p.parallel = serial;
  for (int w = 0; w < 2; ++w) { out[w].resize(batch * heads * D); lse[w].resize(batch * heads); }
  auto run = [&](int w, int layer) {
    p.k = k.data() + layer * per; p.v = v.data() + layer * per;
    p.out = out[w].data(); p.lse = reinterpret_cast<char*>(lse[w].data());
    if (w == 0) decode_attention_avx512bf16_a(p, DType::kBFloat16);
    else decode_attention_avx512bf16_b(p, DType::kBFloat16);
  };
  run(0, 0); run(1, 0);
  float diff = 0.f;
  for (size_t i = 0; i < out[0].size(); ++i)
    diff = std::max(diff, std::fabs(to_float(out[0][i]) - to_float(out[1][i])));
  for (size_t i = 0; i < lse[0].size(); ++i) diff = std::max(diff, std::fabs(lse[0][i] - lse[1][i]));
  double best[2] = {1e30, 1e30};
  std::vector<double> ratios;
  for (int r = 0; r < rounds; ++r) {
    double t[2];
    for (int w = 0; w < 2; ++w) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) run(w, i % layers);
      t[w] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls;
      best[w] = std::min(best[w], t[w]);
    }
    ratios.push_back(t[0] / t[1]);
  }
  std::sort(ratios.begin(), ratios.end());
  printf("%.3f %.3f %.4f %.3g\n", best[0] * 1e6, best[1] * 1e6, ratios[ratios.size() / 2], diff);
}
"""


def stage(checkout: Path, dest: Path, tag: str) -> None:
    """Copy checkout/kernels/csrc to dest with the avx512bf16 unit renamed into namespace avx512bf16_<tag>."""
    shutil.copytree(checkout / "kernels" / "csrc", dest)
    unit = dest / "decode_attention_avx512bf16.cpp"
    src = unit.read_text()
    src = re.sub(r"\bnamespace avx512bf16\b", f"namespace avx512bf16_{tag}", src)
    src = re.sub(r"HELIX_ISA_NAMESPACE avx512bf16\b", f"HELIX_ISA_NAMESPACE avx512bf16_{tag}", src)
    src = src.replace("avx512bf16::decode_attention<", f"avx512bf16_{tag}::decode_attention<")
    src = src.replace("void decode_attention_avx512bf16(", f"void decode_attention_avx512bf16_{tag}(")
    unit.write_text(src)
    if tag == "b":  # one copy of the shared header (both define the same types)
        (dest / "decode_attention_common.h").write_text('#include "../a/decode_attention_common.h"\n')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="checkout of version a (the baseline)")
    ap.add_argument("--b", type=Path, default=REPO, help="checkout of version b (default: this one)")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to (taskset)")
    args = ap.parse_args()

    from vllm_helix.planner.ceilings import cpu_model

    with tempfile.TemporaryDirectory(prefix="helix-kernel-ab-") as tmp:
        work = Path(tmp)
        stage(args.a.resolve(), work / "a", "a")
        stage(args.b.resolve(), work / "b", "b")
        (work / "ab.cpp").write_text(DRIVER)
        exe = work / "ab"
        subprocess.run(["g++", "-O3", "-std=c++17", "-o", str(exe), str(work / "ab.cpp")], check=True)
        rows = []
        for heads, kvh, keys, batch, layers, calls in SHAPES:
            cmd = ["taskset", "-c", str(args.cpu), str(exe)]
            cmd += [str(x) for x in (heads, kvh, keys, batch, layers, calls, args.rounds)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            a_us, b_us, ratio, diff = line.split()
            rows.append(
                {
                    "shape": f"{heads}/{kvh} {keys} keys, batch {batch}, {layers} layer(s) of KV",
                    "a_us": float(a_us),
                    "b_us": float(b_us),
                    "a_over_b_median": float(ratio),
                    "max_output_diff": float(diff),
                }
            )
            print(f"[kernel_ab_inprocess] {rows[-1]}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "kernel_ab_inprocess",
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "cpu": cpu_model(),
                "a": str(args.a),
                "b": str(args.b),
                "rounds": args.rounds,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
