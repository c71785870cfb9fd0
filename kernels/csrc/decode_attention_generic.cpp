// SPDX-License-Identifier: Apache-2.0
// Portable instantiations of the CPU decode-attention kernel (decode_attention.h) on a plain-array vector of W
// lanes: the fallback for CPUs without AVX2, and — at W = 16 — the AVX-512 lane layout on any machine, so the
// algorithm behind the AVX-512 build is tested where the hardware is missing.

#include "decode_attention_common.h"

namespace helix_cpu {
namespace generic {

template <int N>
struct VecN {
  static constexpr int W = N;
  float v[N];

  static VecN zero() { return set1(0.f); }
  static VecN set1(float x) {
    VecN r;
    for (int i = 0; i < N; ++i) r.v[i] = x;
    return r;
  }
  static VecN load(const float* p) {
    VecN r;
    for (int i = 0; i < N; ++i) r.v[i] = p[i];
    return r;
  }
  static VecN load_cvt(const float* p) { return load(p); }
  static VecN load_cvt(const bf16* p) {
    VecN r;
    for (int i = 0; i < N; ++i) r.v[i] = to_float(p[i]);
    return r;
  }
  void store(float* p) const {
    for (int i = 0; i < N; ++i) p[i] = v[i];
  }
  template <class F>
  static VecN map2(VecN a, VecN b, F f) {
    VecN r;
    for (int i = 0; i < N; ++i) r.v[i] = f(a.v[i], b.v[i]);
    return r;
  }
  static VecN fma(VecN a, VecN b, VecN c) {
    VecN r;
    for (int i = 0; i < N; ++i) r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
    return r;
  }
  static VecN mul(VecN a, VecN b) { return map2(a, b, [](float x, float y) { return x * y; }); }
  static VecN add(VecN a, VecN b) { return map2(a, b, [](float x, float y) { return x + y; }); }
  static VecN sub(VecN a, VecN b) { return map2(a, b, [](float x, float y) { return x - y; }); }
  static VecN max(VecN a, VecN b) { return map2(a, b, [](float x, float y) { return x > y ? x : y; }); }
  static VecN mask_tail(VecN a, int n, float fill) {
    for (int i = n; i < N; ++i) a.v[i] = fill;
    return a;
  }
  static VecN exp2(VecN x) {  // the same range reduction and polynomial as the SIMD builds
    VecN r;
    for (int i = 0; i < N; ++i) {
      if (!(x.v[i] >= -126.f)) {
        r.v[i] = 0.f;
        continue;
      }
      const float xc = std::min(x.v[i], 127.f), xi = std::nearbyint(xc), f = xc - xi;
      float p = 1.535336188319500e-4f;
      p = std::fma(p, f, 1.339887440266574e-3f);
      p = std::fma(p, f, 9.618437357674640e-3f);
      p = std::fma(p, f, 5.550332471162809e-2f);
      p = std::fma(p, f, 2.402264791363012e-1f);
      p = std::fma(p, f, 6.931472028550421e-1f);
      p = std::fma(p, f, 1.f);
      r.v[i] = std::ldexp(p, static_cast<int>(xi));
    }
    return r;
  }
  template <int R, class E>
  static VecN bcast(const E* p) {  // lane j = p[j mod R]
    VecN r;
    for (int i = 0; i < N; ++i) r.v[i] = to_float(p[i % R]);
    return r;
  }
  static VecN fold_pairs(VecN a, VecN b) {  // r[i] = a[2i] + a[2i+1], r[N/2 + i] = b[2i] + b[2i+1]
    VecN r;
    for (int i = 0; i < N / 2; ++i) {
      r.v[i] = a.v[2 * i] + a.v[2 * i + 1];
      r.v[N / 2 + i] = b.v[2 * i] + b.v[2 * i + 1];
    }
    return r;
  }
  template <class F>
  static VecN allreduce(VecN a, int gp, F f) {
    VecN r;
    for (int i = 0; i < N; ++i) {
      float acc = a.v[i % gp];
      for (int j = i % gp + gp; j < N; j += gp) acc = f(acc, a.v[j]);
      r.v[i] = acc;
    }
    return r;
  }
  static VecN allreduce_max(VecN a, int gp) { return allreduce(a, gp, [](float x, float y) { return x > y ? x : y; }); }
  static VecN allreduce_sum(VecN a, int gp) { return allreduce(a, gp, [](float x, float y) { return x + y; }); }
};

}  // namespace generic

namespace generic8 {
using Vec = generic::VecN<8>;
}
namespace generic16 {
using Vec = generic::VecN<16>;
}

}  // namespace helix_cpu

#define HELIX_ISA_NAMESPACE generic8
#include "decode_attention.h"
#undef HELIX_ISA_NAMESPACE
#define HELIX_ISA_NAMESPACE generic16
#include "decode_attention.h"
#undef HELIX_ISA_NAMESPACE

namespace helix_cpu {
void decode_attention_generic8(const Params& p, DType dtype) {
  if (dtype == DType::kFloat) generic8::decode_attention<float>(p);
  else generic8::decode_attention<bf16>(p);
}
void decode_attention_generic16(const Params& p, DType dtype) {
  if (dtype == DType::kFloat) generic16::decode_attention<float>(p);
  else generic16::decode_attention<bf16>(p);
}
}  // namespace helix_cpu
