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

  // lane i of the result = sum of the lanes of a[i]: fold each vector to 8 lanes, then the AVX2 tree per half
  static __m256 fold(__m512 a) {
    return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
  }
  static __m256 tree8(const __m256* h) {
    const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
    const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
  }
  static Vec reduce_lanes(const Vec* a) {
    __m256 h[16];
    for (int i = 0; i < 16; ++i) h[i] = fold(a[i].v);
    return {_mm512_insertf32x8(_mm512_castps256_ps512(tree8(h)), tree8(h + 8), 1)};
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

