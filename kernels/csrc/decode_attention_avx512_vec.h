// SPDX-License-Identifier: Apache-2.0
// The AVX-512 (F/BW/VL/DQ) vector type of the CPU decode-attention kernel: 16 fp32 lanes. Included inside an ISA
// namespace by decode_attention_avx512.cpp and decode_attention_avx512bf16.cpp, after their target pragmas.

struct Vec {
  static constexpr int W = 16;
  __m512 v;

  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load_cvt(const float* p) { return load(p); }
  static Vec load_cvt(const bf16* p) {  // 16 bf16 → fp32: widen to 32 bits, shift into the high half
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static Vec add(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }

  static Vec mask_tail(Vec a, int n, float fill) {  // lanes ≥ n take `fill`
    const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1u);
    return {_mm512_mask_blend_ps(keep, _mm512_set1_ps(fill), a.v)};
  }

  static Vec exp2(Vec x) {  // as the AVX2 build: Cephes' polynomial, 0 for x < −126
    const __mmask16 valid = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(-126.f), _CMP_GE_OQ);
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x.v, _mm512_set1_ps(-126.f)), _mm512_set1_ps(127.f));
    const __m512 xi = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(xc, xi);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(xi), _mm512_set1_epi32(127)), 23);
    return {_mm512_maskz_mov_ps(valid, _mm512_mul_ps(p, _mm512_castsi512_ps(e)))};
  }

  // lane j = p[j mod R]: R consecutive elements of a row, repeated over the W / R lane groups (R | 16)
  template <int R>
  static Vec bcast(const float* p) {
    if constexpr (R == 1) return set1(*p);
    else if constexpr (R == 2) return {_mm512_castpd_ps(_mm512_set1_pd(*reinterpret_cast<const double*>(p)))};
    else if constexpr (R == 4) return {_mm512_broadcast_f32x4(_mm_loadu_ps(p))};
    else if constexpr (R == 8) return {_mm512_broadcast_f32x8(_mm256_loadu_ps(p))};
    else return load(p);
  }
  template <int R>
  static Vec bcast(const bf16* p) {  // the same from bf16, widened to fp32
    if constexpr (R == 1) return set1(to_float(*p));
    else if constexpr (R == 2) {
      const __m128i w = _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_cvtsi32_si128(*reinterpret_cast<const int*>(p))), 16);
      return {_mm512_castsi512_ps(_mm512_broadcastq_epi64(w))};
    } else if constexpr (R == 4) {
      const __m128i w = _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 16);
      return {_mm512_castsi512_ps(_mm512_broadcast_i32x4(w))};
    } else if constexpr (R == 8) {
      const __m256i w =
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
      return {_mm512_castsi512_ps(_mm512_broadcast_i64x4(w))};
    } else return load_cvt(p);
  }

  // r[i] = a[2i] + a[2i+1] and r[8 + i] = b[2i] + b[2i+1], i < 8: adjacent lanes summed, a's into the low half
  static Vec fold_pairs(Vec a, Vec b) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return {_mm512_add_ps(_mm512_permutex2var_ps(a.v, even, b.v), _mm512_permutex2var_ps(a.v, odd, b.v))};
  }

  static Vec rotate(Vec a, int s) {  // lane i → lane (i + s) mod 16
    const __m512i idx = _mm512_and_si512(
        _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(s)), _mm512_set1_epi32(15));
    return {_mm512_permutexvar_ps(idx, a.v)};
  }
  static Vec allreduce_max(Vec a, int gp) {
    for (int s = gp; s < W; s *= 2) a = max(a, rotate(a, s));
    return a;
  }
  static Vec allreduce_sum(Vec a, int gp) {
    for (int s = gp; s < W; s *= 2) a = add(a, rotate(a, s));
    return a;
  }
};

