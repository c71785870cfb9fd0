// SPDX-License-Identifier: Apache-2.0
// Shared, ISA-free part of the CPU decode-attention op: call parameters, element types, scalar conversions.
// Included by the torch-facing op (decode_attention_op.cpp) and by every ISA translation unit; it must stay free
// of torch headers so that the ISA units can be compiled for their instruction set without touching torch code.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace helix_cpu {

constexpr int kMaxDim = 256;  // largest head_dim / v_dim the kernel takes (multiple of the vector width)

struct bf16 {
  uint16_t bits;
};

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <class E>
inline E from_float(float f);
template <>
inline float from_float<float>(float f) { return f; }
template <>
inline bf16 from_float<bf16>(float f) {  // round to nearest even, as torch's float → bfloat16
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7FFF + ((u >> 16) & 1);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
using ParallelFn = void (*)(int64_t n, RangeFn fn, void* ctx);  // runs fn over [0, n) in chunks, on the op's threads

// One call. Strides are in elements; every tensor's last dimension is contiguous.
struct Params {
  const void* q;          // (S, H, D)            the query, same dtype as the caches
  int64_t q_s, q_h;
  const void* k;          // (NB, BS, KVH, D)     paged key cache, token-major
  int64_t k_b, k_t, k_h;
  const void* v;          // (NB, BS, KVH, DV)
  int64_t v_b, v_t, v_h;
  const int32_t* block_table;  // (S, max_blocks)  local block ids
  int64_t bt_s;
  const int64_t* seq_lens;     // (S,)             keys this rank holds per sequence
  // Results of head h = c·hc + i (chunk c of hc heads) go to out + s·o_s + c·o_c + i·o_h (elements, the query's
  // dtype) and, as fp32 (natural log), to lse + s·l_s + c·l_c + i·l_h (bytes). Plain (S, H, DV) / (S, H) outputs
  // have one chunk; the Helix exchange layout (KVP, S, H/KVP, DV + e) has KVP chunks with the LSE bits in the row.
  void* out;
  int64_t o_s, o_c, o_h;
  char* lse;
  int64_t l_s, l_c, l_h;
  int heads_per_chunk;
  float* mid;             // (S, H, num_splits, DV + 1) fp32 split partials [O | LSE]; used when num_splits > 1
  int num_seqs, heads, kv_heads, head_dim, v_dim, block_size, num_splits;
  float scale;
  ParallelFn parallel;

  template <class E>
  E* out_row(int seq, int h) const {
    return static_cast<E*>(out) + seq * o_s + (h / heads_per_chunk) * o_c + (h % heads_per_chunk) * o_h;
  }
  void store_lse(int seq, int h, float value) const {
    std::memcpy(lse + seq * l_s + (h / heads_per_chunk) * l_c + (h % heads_per_chunk) * l_h, &value, sizeof value);
  }

  template <class F>
  void parallel_for(int64_t n, F&& f) const {
    using Fn = std::remove_reference_t<F>;
    parallel(n, [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
             const_cast<void*>(static_cast<const void*>(&f)));
  }
};

enum class DType : int { kFloat = 0, kBFloat16 = 1 };

// Entry points of the ISA translation units.
void decode_attention_generic8(const Params& p, DType dtype);
void decode_attention_generic16(const Params& p, DType dtype);
void decode_attention_avx2(const Params& p, DType dtype);
void decode_attention_avx512(const Params& p, DType dtype);
void decode_attention_avx512bf16(const Params& p, DType dtype);

}  // namespace helix_cpu
