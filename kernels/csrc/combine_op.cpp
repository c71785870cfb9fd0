// SPDX-License-Identifier: Apache-2.0
// torch op `helix_cpu::combine_packed`: the Helix LSE combine read straight from the exchange's receive buffer.
//
// recv (KVP, T, hc, D + e) holds, for each token t and head h of this rank's chunk, the KVP peers' partials as rows
// [O_i | LSE_i as fp32 bits in e = 4 / itemsize elements] (vllm_helix.attention.exchange.pack_partials). Written into `out`
// (T, hc, D), any strides with a contiguous last dimension, in its dtype:
//
//     M = max_i LSE_i,   w_i = exp(LSE_i − M),   O = Σ_i w_i · O_i / Σ_i w_i     (fp32; O = 0 if every LSE_i = −inf)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "decode_attention_common.h"

namespace helix_cpu {
namespace {

template <class E>
void combine_rows(const at::Tensor& recv, at::Tensor& out) {
  const int64_t kvp = recv.size(0), T = recv.size(1), hc = recv.size(2), row = recv.size(3);
  const int64_t D = out.size(2);
  const E* base = static_cast<const E*>(recv.data_ptr());
  E* dst = static_cast<E*>(out.data_ptr());
  const int64_t peer_stride = T * hc * row, o_t = out.stride(0), o_h = out.stride(1);
  at::parallel_for(0, T * hc, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> w(kvp), acc(D);
    for (int64_t i = begin; i < end; ++i) {
      const E* rows = base + i * row;  // peer p's row: rows + p·peer_stride
      float mx = -INFINITY;
      for (int64_t p = 0; p < kvp; ++p) {
        std::memcpy(&w[p], rows + p * peer_stride + D, sizeof(float));
        mx = std::max(mx, w[p]);
      }
      E* o = dst + (i / hc) * o_t + (i % hc) * o_h;
      if (mx == -INFINITY) {
        for (int64_t d = 0; d < D; ++d) o[d] = from_float<E>(0.f);
        continue;
      }
      float total = 0.f;
      for (int64_t p = 0; p < kvp; ++p) total += (w[p] = std::exp(w[p] - mx));
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t p = 0; p < kvp; ++p) {
        const E* src = rows + p * peer_stride;
        const float wp = w[p] / total;
        for (int64_t d = 0; d < D; ++d) acc[d] += wp * to_float(src[d]);
      }
      for (int64_t d = 0; d < D; ++d) o[d] = from_float<E>(acc[d]);
    }
  });
}

}  // namespace

void combine_packed(const at::Tensor& recv, at::Tensor out) {
  TORCH_CHECK(recv.dim() == 4 && out.dim() == 3 && recv.device().is_cpu() && out.device().is_cpu(),
              "helix_cpu.combine_packed: recv (KVP, T, heads, D + e), out (T, heads, D) on the CPU");
  const auto dt = recv.scalar_type();
  TORCH_CHECK((dt == at::kFloat || dt == at::kBFloat16) && out.scalar_type() == dt,
              "helix_cpu.combine_packed: recv and out must both be float32 or both bfloat16");
  const int64_t e = 4 / recv.element_size();
  TORCH_CHECK(recv.is_contiguous() && recv.size(1) == out.size(0) && recv.size(2) == out.size(1) &&
                  recv.size(3) == out.size(2) + e && out.stride(2) == 1,
              "helix_cpu.combine_packed: shapes recv ", recv.sizes(), " and out ", out.sizes(), " disagree");
  if (dt == at::kFloat) combine_rows<float>(recv, out);
  else combine_rows<bf16>(recv, out);
}

}  // namespace helix_cpu

TORCH_LIBRARY_FRAGMENT(helix_cpu, m) { m.def("combine_packed(Tensor recv, Tensor(a!) out) -> ()"); }

TORCH_LIBRARY_IMPL(helix_cpu, CPU, m) { m.impl("combine_packed", &helix_cpu::combine_packed); }
