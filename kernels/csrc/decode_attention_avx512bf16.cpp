// SPDX-License-Identifier: Apache-2.0
// AVX-512 + AVX512-BF16 instantiation of the CPU decode-attention kernel (decode_attention.h): the AVX-512 build
// (16 fp32 lanes, decode_attention_avx512_vec.h) whose bf16 scores q·k use VDPBF16PS — 32 bf16 products summed
// pairwise into 16 fp32 lanes per instruction, with pairs of the cache's bf16 K rows broadcast as they are: half
// the multiply-adds of the widening path and no bf16 → fp32 conversion of K. P·V uses it too (HELIX_BF16_PV):
// the probabilities rounded to bf16 — as GPU flash attention and vLLM's own bf16 CPU kernels do — times value
// rows paired by tokens. Products of two bf16 values are exact in fp32; the sums are fp32 (the instruction
// flushes denormal inputs and outputs to zero). The softmax and its normaliser stay fp32. Chosen at run time when
// the CPU has AVX512-BF16 (Intel Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later).

#include "decode_attention_common.h"

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")

namespace helix_cpu {
namespace avx512bf16 {

#include "decode_attention_avx512_vec.h"

// Pairs of bf16 as one 32-bit lane: lane j of a QPairs vector holds the two bf16 values it multiplies.
struct QPairs {
  __m512i v;
  static QPairs load(const bf16* p) { return {_mm512_loadu_si512(p)}; }
};

// acc lane j += k[2r]·q_j[0] + k[2r+1]·q_j[1], r = j mod R: the R consecutive bf16 pairs of a K row at k,
// broadcast over the 16 / R lane groups, times the query pairs in q (VDPBF16PS).
template <int R>
inline Vec dot_pairs(Vec acc, const bf16* k, QPairs q) {
  __m512i kb;
  if constexpr (R == 1) kb = _mm512_set1_epi32(*reinterpret_cast<const int*>(k));
  else if constexpr (R == 2) kb = _mm512_set1_epi64(*reinterpret_cast<const long long*>(k));
  else if constexpr (R == 4) kb = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k)));
  else if constexpr (R == 8) kb = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k)));
  else kb = _mm512_loadu_si512(k);
  return {_mm512_dpbf16_ps(acc.v, reinterpret_cast<const __m512bh&>(kb), reinterpret_cast<const __m512bh&>(q.v))};
}

// acc lane j += p[0]·v_j[0] + p[1]·v_j[1]: one pair of bf16 probabilities (32 bits) times the pairs of v (gcc
// broadcasts the pair once and reuses it for both vectors of a 32-dimension chunk).
inline Vec dot_bcast(Vec acc, uint32_t p, QPairs v) {
  const __m512i pb = _mm512_set1_epi32(static_cast<int>(p));
  return {_mm512_dpbf16_ps(acc.v, reinterpret_cast<const __m512bh&>(v.v), reinterpret_cast<const __m512bh&>(pb))};
}

// The value rows r0, r1 (32 bf16 each) paired element by element, as VPUNPCKL/HWD order them: v[0] = dims 8l + i,
// v[1] = dims 8l + 4 + i, in lane 4l + i (l < 4, i < 4).
inline void pair_rows(const bf16* r0, const bf16* r1, QPairs* v) {
  const __m512i a = _mm512_loadu_si512(r0), b = _mm512_loadu_si512(r1);
  v[0].v = _mm512_unpacklo_epi16(a, b);
  v[1].v = _mm512_unpackhi_epi16(a, b);
}

// PP[u·GP + g] = (bf16(P[2u·GP + g]), bf16(P[(2u+1)·GP + g])) for u < pairs: the probabilities of token pairs,
// rounded to nearest even. Reads S in chunks of 32 floats (S holds them).
template <int GP>
inline void pair_probs(const float* S, int pairs, uint32_t* PP) {
  alignas(64) static const auto idx = [] {
    struct { uint16_t v[32]; } t{};
    for (int k = 0; k < 16; ++k)
      for (int e = 0; e < 2; ++e) t.v[2 * k + e] = static_cast<uint16_t>((2 * (k / GP) + e) * GP + k % GP);
    return t;
  }();
  const __m512i perm = _mm512_loadu_si512(idx.v);
  for (int i = 0; i < 2 * pairs * GP; i += 32) {
    const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(S + i + 16), _mm512_loadu_ps(S + i));
    _mm512_storeu_si512(PP + i / 2, _mm512_permutexvar_epi16(perm, reinterpret_cast<const __m512i&>(b)));
  }
}

}  // namespace avx512bf16
}  // namespace helix_cpu

#define HELIX_ISA_NAMESPACE avx512bf16
#define HELIX_BF16_DOT 1
#define HELIX_BF16_PV 1
#include "decode_attention.h"
#undef HELIX_BF16_PV
#undef HELIX_BF16_DOT
#undef HELIX_ISA_NAMESPACE

namespace helix_cpu {
void decode_attention_avx512bf16(const Params& p, DType dtype) {
  if (dtype == DType::kFloat) avx512bf16::decode_attention<float>(p);
  else avx512bf16::decode_attention<bf16>(p);
}
}  // namespace helix_cpu

#pragma GCC pop_options
