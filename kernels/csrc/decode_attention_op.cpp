// SPDX-License-Identifier: Apache-2.0
// torch op `helix_cpu::decode_attention`: checks, output allocation, the split choice and the run-time ISA choice
// for the CPU decode-attention kernel (algorithm: decode_attention.h; ISA builds: decode_attention_<isa>.cpp).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "decode_attention_common.h"

namespace helix_cpu {
namespace {

constexpr int64_t kMaxSplits = 64;
constexpr int64_t kMinSplitTokens = 256;  // a split shorter than this costs more to merge than it saves

void run_parallel(int64_t n, RangeFn fn, void* ctx) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { fn(ctx, begin, end); });
}

bool cpu_has(const char* feature);

std::string best_isa() {
  if (cpu_has("avx512f") && cpu_has("avx512bw") && cpu_has("avx512vl") && cpu_has("avx512dq"))
    return cpu_has("avx512bf16") ? "avx512bf16" : "avx512";
  if (cpu_has("avx2") && cpu_has("fma")) return "avx2";
  return "generic8";
}

bool cpu_has(const char* feature) {
  __builtin_cpu_init();
  const std::string f(feature);
  if (f == "avx512f") return __builtin_cpu_supports("avx512f");
  if (f == "avx512bf16") return __builtin_cpu_supports("avx512bf16");
  if (f == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (f == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (f == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (f == "avx2") return __builtin_cpu_supports("avx2");
  if (f == "fma") return __builtin_cpu_supports("fma");
  return false;
}

int lanes(const std::string& isa) {
  return (isa == "avx512bf16" || isa == "avx512" || isa == "generic16") ? 16 : 8;
}

}  // namespace

std::string isa_name(c10::string_view requested) {
  const std::string isa(requested);
  if (isa == "auto") return best_isa();
  TORCH_CHECK(isa == "avx512bf16" || isa == "avx512" || isa == "avx2" || isa == "generic8" || isa == "generic16",
              "helix_cpu: isa must be auto, avx512bf16, avx512, avx2, generic8 or generic16, got ", isa);
  TORCH_CHECK(isa != "avx512bf16" || best_isa() == "avx512bf16",
              "helix_cpu: isa=avx512bf16 but this CPU lacks AVX-512 F/BW/VL/DQ + AVX512-BF16");
  TORCH_CHECK(isa != "avx512" || best_isa().rfind("avx512", 0) == 0,
              "helix_cpu: isa=avx512 but this CPU lacks AVX-512 F/BW/VL/DQ");
  TORCH_CHECK(isa != "avx2" || best_isa() != "generic8", "helix_cpu: isa=avx2 but this CPU lacks AVX2/FMA");
  return isa;
}

namespace {

// Checks the inputs, picks the ISA and the split count, fills everything of Params but the outputs.
struct Call {
  Params p{};
  std::string isa;
  at::Tensor table, lens, mid;
  DType dtype;
};

Call prepare(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
             const at::Tensor& block_table, const at::Tensor& seq_lens, double scale, int64_t num_splits,
             c10::string_view isa_request) {
  Call c;
  c.isa = isa_name(isa_request);
  const int W = lanes(c.isa);
  TORCH_CHECK(query.dim() == 3 && key_cache.dim() == 4 && value_cache.dim() == 4,
              "helix_cpu.decode_attention: query (S, H, D), caches (blocks, block_size, kv_heads, D)");
  TORCH_CHECK(query.device().is_cpu() && key_cache.device().is_cpu() && value_cache.device().is_cpu(),
              "helix_cpu.decode_attention: CPU tensors only");
  const auto dt = query.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16, "helix_cpu.decode_attention: float32 or bfloat16, got ", dt);
  TORCH_CHECK(key_cache.scalar_type() == dt && value_cache.scalar_type() == dt,
              "helix_cpu.decode_attention: query and caches must share a dtype");
  const int64_t S = query.size(0), H = query.size(1), D = query.size(2);
  const int64_t BS = key_cache.size(1), KVH = key_cache.size(2), DV = value_cache.size(3);
  TORCH_CHECK(key_cache.size(3) == D && value_cache.size(0) == key_cache.size(0) && value_cache.size(1) == BS &&
                  value_cache.size(2) == KVH,
              "helix_cpu.decode_attention: cache shapes disagree: k ", key_cache.sizes(), ", v ", value_cache.sizes());
  TORCH_CHECK(KVH > 0 && H % KVH == 0, "helix_cpu.decode_attention: heads ", H, " not a multiple of kv_heads ", KVH);
  TORCH_CHECK(D % W == 0 && DV % W == 0 && D <= kMaxDim && DV <= kMaxDim,
              "helix_cpu.decode_attention: head_dim ", D, " / v_dim ", DV, " must be multiples of ", W,
              " and at most ", kMaxDim, " for isa ", c.isa);
  TORCH_CHECK(query.stride(2) == 1 && key_cache.stride(3) == 1 && value_cache.stride(3) == 1,
              "helix_cpu.decode_attention: the last dimension of query and caches must be contiguous");
  TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == S && seq_lens.dim() == 1 && seq_lens.size(0) == S,
              "helix_cpu.decode_attention: block_table (S, max_blocks), seq_lens (S,) with S = ", S);
  c.table = block_table.scalar_type() == at::kInt ? block_table : block_table.to(at::kInt);
  TORCH_CHECK(c.table.stride(1) == 1, "helix_cpu.decode_attention: block_table rows must be contiguous");
  c.lens = seq_lens.scalar_type() == at::kLong && seq_lens.is_contiguous() ? seq_lens
                                                                          : seq_lens.to(at::kLong).contiguous();

  const int64_t G = H / KVH, passes = (G + W - 1) / W, items = S * KVH * passes;
  if (num_splits <= 0) {  // flash-decoding only when there are fewer work items than threads
    const int64_t threads = at::get_num_threads();
    const int64_t longest = (S && items < threads) ? c.lens.max().item<int64_t>() : 0;
    num_splits = items >= threads ? 1 : std::min((threads + items - 1) / items, longest / kMinSplitTokens);
  }
  num_splits = std::max<int64_t>(1, std::min(num_splits, kMaxSplits));
  if (num_splits > 1) c.mid = at::empty({S, H, num_splits, DV + 1}, query.options().dtype(at::kFloat));

  Params& p = c.p;
  p.q = query.data_ptr();
  p.q_s = query.stride(0), p.q_h = query.stride(1);
  p.k = key_cache.data_ptr();
  p.k_b = key_cache.stride(0), p.k_t = key_cache.stride(1), p.k_h = key_cache.stride(2);
  p.v = value_cache.data_ptr();
  p.v_b = value_cache.stride(0), p.v_t = value_cache.stride(1), p.v_h = value_cache.stride(2);
  p.block_table = c.table.data_ptr<int32_t>();
  p.bt_s = c.table.stride(0);
  p.seq_lens = c.lens.data_ptr<int64_t>();
  p.mid = num_splits > 1 ? c.mid.data_ptr<float>() : nullptr;
  p.num_seqs = static_cast<int>(S), p.heads = static_cast<int>(H), p.kv_heads = static_cast<int>(KVH);
  p.head_dim = static_cast<int>(D), p.v_dim = static_cast<int>(DV), p.block_size = static_cast<int>(BS);
  p.num_splits = static_cast<int>(num_splits);
  p.scale = static_cast<float>(scale);
  p.parallel = run_parallel;
  c.dtype = dt == at::kFloat ? DType::kFloat : DType::kBFloat16;
  return c;
}

void run(const Call& c) {
  if (c.p.num_seqs == 0) return;
  if (c.isa == "avx512bf16") decode_attention_avx512bf16(c.p, c.dtype);
  else if (c.isa == "avx512") decode_attention_avx512(c.p, c.dtype);
  else if (c.isa == "avx2") decode_attention_avx2(c.p, c.dtype);
  else if (c.isa == "generic16") decode_attention_generic16(c.p, c.dtype);
  else decode_attention_generic8(c.p, c.dtype);
}

}  // namespace

// → O (S, H, DV) in the query's dtype, LSE (S, H) fp32.
std::tuple<at::Tensor, at::Tensor> decode_attention(
    const at::Tensor& query,        // (S, H, D)
    const at::Tensor& key_cache,    // (NB, BS, KVH, D)
    const at::Tensor& value_cache,  // (NB, BS, KVH, DV)
    const at::Tensor& block_table,  // (S, max_blocks) int32
    const at::Tensor& seq_lens,     // (S,) int32 / int64
    double scale, int64_t num_splits, c10::string_view isa) {
  Call c = prepare(query, key_cache, value_cache, block_table, seq_lens, scale, num_splits, isa);
  const int64_t S = query.size(0), H = query.size(1), DV = value_cache.size(3);
  at::Tensor out = at::empty({S, H, DV}, query.options());
  at::Tensor lse = at::empty({S, H}, query.options().dtype(at::kFloat));
  c.p.out = out.data_ptr();
  c.p.o_s = out.stride(0), c.p.o_c = 0, c.p.o_h = out.stride(1);
  c.p.lse = static_cast<char*>(lse.data_ptr());
  c.p.l_s = lse.stride(0) * 4, c.p.l_c = 0, c.p.l_h = lse.stride(1) * 4;
  c.p.heads_per_chunk = static_cast<int>(H);
  run(c);
  return {out, lse};
}

// The same attention written straight into the Helix exchange's send layout (vllm_helix.attention.exchange.pack_partials):
// → (chunks, S, H / chunks, DV + e) in the query's dtype; row = [O | LSE as fp32 bits in e = 4 / itemsize elements];
// chunk j holds heads [j·H/chunks, (j+1)·H/chunks), the part KVP peer j combines.
at::Tensor decode_attention_packed(const at::Tensor& query, const at::Tensor& key_cache,
                                   const at::Tensor& value_cache, const at::Tensor& block_table,
                                   const at::Tensor& seq_lens, double scale, int64_t chunks, int64_t num_splits,
                                   c10::string_view isa) {
  Call c = prepare(query, key_cache, value_cache, block_table, seq_lens, scale, num_splits, isa);
  const int64_t S = query.size(0), H = query.size(1), DV = value_cache.size(3);
  const int64_t item = query.element_size(), e = 4 / item;
  TORCH_CHECK(chunks > 0 && H % chunks == 0, "helix_cpu.decode_attention_packed: heads ", H,
              " not a multiple of chunks ", chunks);
  TORCH_CHECK(((DV + e) * item) % 4 == 0 && (DV * item) % 4 == 0,
              "helix_cpu.decode_attention_packed: rows must keep the fp32 LSE 4-byte aligned");
  const int64_t hc = H / chunks, row = DV + e;
  at::Tensor packed = at::empty({chunks, S, hc, row}, query.options());
  c.p.out = packed.data_ptr();
  c.p.o_s = hc * row, c.p.o_c = S * hc * row, c.p.o_h = row;
  c.p.lse = static_cast<char*>(packed.data_ptr()) + DV * item;
  c.p.l_s = hc * row * item, c.p.l_c = S * hc * row * item, c.p.l_h = row * item;
  c.p.heads_per_chunk = static_cast<int>(hc);
  run(c);
  return packed;
}

std::string resolved_isa(c10::string_view requested) { return isa_name(requested); }

}  // namespace helix_cpu

TORCH_LIBRARY(helix_cpu, m) {
  m.def("decode_attention(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_table, "
        "Tensor seq_lens, float scale, int num_splits=0, str isa='auto') -> (Tensor, Tensor)");
  m.def("decode_attention_packed(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_table, "
        "Tensor seq_lens, float scale, int chunks, int num_splits=0, str isa='auto') -> Tensor");
  m.def("resolved_isa(str isa='auto') -> str", &helix_cpu::resolved_isa);
}

TORCH_LIBRARY_IMPL(helix_cpu, CPU, m) {
  m.impl("decode_attention", &helix_cpu::decode_attention);
  m.impl("decode_attention_packed", &helix_cpu::decode_attention_packed);
}
