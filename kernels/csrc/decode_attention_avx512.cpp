// SPDX-License-Identifier: Apache-2.0
// AVX-512 (F/BW/VL/DQ) instantiation of the CPU decode-attention kernel (decode_attention.h): 16 fp32 lanes.
// Compiled for AVX-512 through a target pragma (only this file's own functions); chosen at run time when the CPU
// has it. The lane layout is the one the portable 16-lane build (decode_attention_generic.cpp) runs everywhere.

#include "decode_attention_common.h"

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")

namespace helix_cpu {
namespace avx512 {

#include "decode_attention_avx512_vec.h"

}  // namespace avx512
}  // namespace helix_cpu

#define HELIX_ISA_NAMESPACE avx512
#include "decode_attention.h"
#undef HELIX_ISA_NAMESPACE

namespace helix_cpu {
void decode_attention_avx512(const Params& p, DType dtype) {
  if (dtype == DType::kFloat) avx512::decode_attention<float>(p);
  else avx512::decode_attention<bf16>(p);
}
}  // namespace helix_cpu

#pragma GCC pop_options
