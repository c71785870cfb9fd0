// SPDX-License-Identifier: Apache-2.0
// AVX-512 + AVX512-BF16 instantiation of the CPU decode-attention kernel (decode_attention.h): the AVX-512 build
// (16 fp32 lanes, decode_attention_avx512_vec.h) whose bf16 scores q·k use VDPBF16PS — 32 bf16 products summed
// pairwise into 16 fp32 lanes per instruction, straight from the cache's bf16 rows: half the multiply-adds of
// the widening path and no bf16 → fp32 conversion of K. Products of two bf16 values are exact in fp32; the sums
// are fp32 (the instruction flushes denormal inputs and outputs to zero). Values and softmax stay as in the
// AVX-512 build. Chosen at run time when the CPU has AVX512-BF16 (Intel Cooper Lake, Sapphire Rapids and later,
// AMD Zen 4 and later).

#include "decode_attention_common.h"

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")

namespace helix_cpu {
namespace avx512bf16 {

#include "decode_attention_avx512_vec.h"

// acc lane i += a[2i]·b[2i] + a[2i+1]·b[2i+1] for 32 bf16 values a, b (kBf16DotPairs = 2·W elements).
constexpr int kBf16DotElems = 32;
inline Vec dot_bf16(Vec acc, const bf16* a, const bf16* b) {
  const __m512i va = _mm512_loadu_si512(a), vb = _mm512_loadu_si512(b);
  return {_mm512_dpbf16_ps(acc.v, reinterpret_cast<const __m512bh&>(va), reinterpret_cast<const __m512bh&>(vb))};
}

}  // namespace avx512bf16
}  // namespace helix_cpu

#define HELIX_ISA_NAMESPACE avx512bf16
#define HELIX_BF16_DOT 1
#include "decode_attention.h"
#undef HELIX_BF16_DOT
#undef HELIX_ISA_NAMESPACE

namespace helix_cpu {
void decode_attention_avx512bf16(const Params& p, DType dtype) {
  if (dtype == DType::kFloat) avx512bf16::decode_attention<float>(p);
  else avx512bf16::decode_attention<bf16>(p);
}
}  // namespace helix_cpu

#pragma GCC pop_options
