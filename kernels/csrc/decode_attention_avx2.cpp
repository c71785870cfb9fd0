// SPDX-License-Identifier: Apache-2.0
// AVX2 + FMA instantiation of the CPU decode-attention kernel (decode_attention.h): 8 fp32 lanes.
// Compiled for AVX2 through a target pragma (only this file's own functions); chosen at run time when the CPU has it.

#include "decode_attention_common.h"

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace helix_cpu {
namespace avx2 {

struct Vec {
  static constexpr int W = 8;
  __m256 v;

  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load_cvt(const float* p) { return load(p); }
  static Vec load_cvt(const bf16* p) {  // 8 bf16 → fp32: widen to 32 bits, shift into the high half
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static Vec add(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }

  // lanes ≥ n take `fill`
  static Vec mask_tail(Vec a, int n, float fill) {
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return {_mm256_blendv_ps(_mm256_set1_ps(fill), a.v, _mm256_castsi256_ps(keep))};
  }

  // 2^x: round-to-nearest range reduction, Cephes' degree-6 polynomial on [−½, ½] (≈ 2 ulp); 0 for x < −126
  // (also −inf), which is what the online softmax needs for masked keys and the first tile's α.
  static Vec exp2(Vec x) {
    const __m256 valid = _mm256_cmp_ps(x.v, _mm256_set1_ps(-126.f), _CMP_GE_OQ);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x.v, _mm256_set1_ps(-126.f)), _mm256_set1_ps(127.f));
    const __m256 xi = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(xc, xi);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(xi), _mm256_set1_epi32(127)), 23);
    return {_mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), valid)};
  }

  // lane j = p[j mod R]: R consecutive elements of a row, repeated over the W / R lane groups (R | 8)
  template <int R>
  static Vec bcast(const float* p) {
    if constexpr (R == 1) return set1(*p);
    else if constexpr (R == 2) return {_mm256_castpd_ps(_mm256_set1_pd(*reinterpret_cast<const double*>(p)))};
    else if constexpr (R == 4) return {_mm256_broadcast_ps(reinterpret_cast<const __m128*>(p))};
    else return load(p);
  }
  template <int R>
  static Vec bcast(const bf16* p) {  // the same from bf16, widened to fp32
    if constexpr (R == 1) return set1(to_float(*p));
    else if constexpr (R == 2) {
      const __m128i w = _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_cvtsi32_si128(*reinterpret_cast<const int*>(p))), 16);
      return {_mm256_castsi256_ps(_mm256_broadcastq_epi64(w))};
    } else if constexpr (R == 4) {
      const __m128i w = _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 16);
      return {_mm256_castsi256_ps(_mm256_broadcastsi128_si256(w))};
    } else return load_cvt(p);
  }

  // r[i] = a[2i] + a[2i+1] and r[4 + i] = b[2i] + b[2i+1], i < 4: adjacent lanes summed, a's into the low half
  static Vec fold_pairs(Vec a, Vec b) {  // hadd: a01 a23 b01 b23 | a45 a67 b45 b67 → 64-bit lanes 0 2 1 3
    return {_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_hadd_ps(a.v, b.v)), 0xD8))};
  }

  // lane i → lane (i + s) mod 8
  static Vec rotate(Vec a, int s) {
    const __m256i idx = _mm256_and_si256(_mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                          _mm256_set1_epi32(s)), _mm256_set1_epi32(7));
    return {_mm256_permutevar8x32_ps(a.v, idx)};
  }
  // every lane: max / sum over the lanes congruent to it mod gp (gp a power of two ≤ 8)
  static Vec allreduce_max(Vec a, int gp) {
    for (int s = gp; s < W; s *= 2) a = max(a, rotate(a, s));
    return a;
  }
  static Vec allreduce_sum(Vec a, int gp) {
    for (int s = gp; s < W; s *= 2) a = add(a, rotate(a, s));
    return a;
  }
};

}  // namespace avx2
}  // namespace helix_cpu

#define HELIX_ISA_NAMESPACE avx2
#include "decode_attention.h"
#undef HELIX_ISA_NAMESPACE

namespace helix_cpu {
void decode_attention_avx2(const Params& p, DType dtype) {
  if (dtype == DType::kFloat) avx2::decode_attention<float>(p);
  else avx2::decode_attention<bf16>(p);
}
}  // namespace helix_cpu

#pragma GCC pop_options
