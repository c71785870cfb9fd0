// SPDX-License-Identifier: Apache-2.0
// Paged partial decode attention with LSE on the CPU: the ISA-independent algorithm.
//
// For query head h of sequence s (one decode token) over the n = seq_lens[s] keys this KVP rank holds:
//
//     s_j = scale · q·k_j        LSE = log Σ_j exp(s_j)        O = Σ_j exp(s_j − LSE) · v_j
//
// (LSE = −inf and O = 0 when n = 0.) Work item = (sequence, KV head, head pass, split): the up to W query heads
// of one GQA group that a pass covers read every K/V row of the split once. Keys are walked in tiles of at most
// kTile tokens that never cross a paged block (a block's rows are equally spaced: one row pointer per token);
// the online softmax runs in the log2 domain (exp2), fp32 throughout:
//
//   scores   S[t][g] = q_g·k_t            W lanes hold R = W/GP tokens × GP heads (GP = G padded to 2^k ≤ W),
//                                          computed by broadcasting R elements of a K row against the query
//                                          transposed (see tile_scores), so no transpose-reduce is needed
//   softmax  m' = max(m, max_t c·S),  α = 2^(m − m'),  P = 2^(c·S − m'),  l = α·l + Σ_t P,  c = scale·log2 e
//   values   O[g] = α_g·O[g] + Σ_t P[t][g]·v_t      (register blocks of 2 heads × 4 vectors; with a bf16 pair
//                                                    dot product, HELIX_BF16_PV: bf16 P, token pairs paired in
//                                                    registers, up to 8 heads × 32 dimensions)
//
// and at the end O /= l, LSE = (m + log2 l)·ln 2. Splits of one (sequence, head) are merged with the same rule
// the Helix combine uses across ranks. This header is included once per ISA (decode_attention_<isa>.cpp), each
// time after that file's `#pragma GCC target` and its `Vec` type, inside its own namespace.

#ifndef HELIX_ISA_NAMESPACE
#error "include decode_attention.h from an ISA translation unit (decode_attention_<isa>.cpp)"
#endif

namespace helix_cpu {
namespace HELIX_ISA_NAMESPACE {

constexpr int kTile = 32;       // tokens per tile (≤ one paged block)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

inline int pow2_at_least(int g) {
  int p = 1;
  while (p < g) p *= 2;
  return p;
}

// One row of K or V: element type E, loaded as fp32 vectors.
template <class E>
inline Vec load_row(const E* p) { return Vec::load_cvt(p); }

// Scores by broadcast: with R = W / GP, lane j = g·R + r of a vector stands for head g and dimension phase r.
// A K row is read R consecutive elements at a time, broadcast over the GP lane groups (`Vec::bcast<R>`), and
// multiplied by the query transposed to match, qT[s][g·R + r] = q_g[s·R + r]; after D / R steps lane g·R + r of a
// token's accumulator holds Σ_{d ≡ r (mod R)} q_g[d]·k[d]. R tokens' accumulators then fold (`Vec::fold_pairs`,
// log2 R levels of adjacent-lane sums) into one vector of lanes t·GP + g — the layout S keeps — with no
// transpose-reduce of W dot products. kGroup tokens are in flight so that independent accumulator chains hide the
// multiply-add latency.
constexpr int kGroup = 8;

// qT (D / R vectors of W, fp32) from the pass's G query rows q (row stride q_h; rows g ≥ G: zero).
template <int GP, class E>
inline void transpose_query(const E* q, int64_t q_h, int G, int D, float* qT) {
  constexpr int R = Vec::W / GP;
  for (int st = 0; st < D / R; ++st)
    for (int j = 0; j < Vec::W; ++j) {
      const int g = j / R;
      qT[st * Vec::W + j] = g < G ? to_float(q[g * q_h + st * R + j % R]) : 0.f;
    }
}

// Fold a[0..n) (n a power of two, accumulators of n consecutive tokens) into a[0]: lanes t·(W/n) + g.
template <int N>
inline Vec fold_tokens(Vec* a) {
  for (int n = N; n > 1; n /= 2)
    for (int i = 0; i < n / 2; ++i) a[i] = Vec::fold_pairs(a[2 * i], a[2 * i + 1]);
  return a[0];
}

// Store the folded scores of tokens [t, t + R) (lanes of tokens ≥ len: −inf), times c; nothing when t ≥ len.
template <int GP>
inline void store_scores(Vec s, int t, int len, float c, float* S) {
  if (t >= len) return;
  s = Vec::mul(s, Vec::set1(c));
  const int valid = (len - t) * GP;
  if (valid < Vec::W) s = Vec::mask_tail(s, valid, -INFINITY);
  s.store(S + t * GP);
}

// The K rows of tokens t0 .. t0 + T (a tail group re-reads the last row; its lanes are masked when stored) and T
// zeroed accumulators: the start of a group of tokens in flight.
template <int T, class E>
inline void start_group(const E* k0, int64_t kstride, int t0, int len, const E** rows, Vec* acc) {
  for (int tt = 0; tt < T; ++tt) rows[tt] = k0 + std::min(t0 + tt, len - 1) * kstride;
  for (int i = 0; i < T; ++i) acc[i] = Vec::zero();
}

// Scores of one tile: S[t·GP + g] = c·q_g·k_t for t < len, k_t = k0 + t·kstride. Tail tokens of a group re-read
// the last row; their lanes are masked. S holds ⌈len / T⌉·T·GP floats, T = max(kGroup, R).
template <int GP, class E>
inline void tile_scores(const float* qT, int D, const E* k0, int64_t kstride, int len, float c, float* S) {
  constexpr int R = Vec::W / GP, T = R > kGroup ? R : kGroup;
  const int steps = D / R;
  for (int t0 = 0; t0 < len; t0 += T) {
    const E* rows[T];
    Vec acc[T];
    start_group<T>(k0, kstride, t0, len, rows, acc);
    for (int st = 0; st < steps; ++st) {
      const Vec q = Vec::load(qT + st * Vec::W);
      for (int tt = 0; tt < T; ++tt) acc[tt] = Vec::fma(Vec::template bcast<R>(rows[tt] + st * R), q, acc[tt]);
    }
    for (int i = 0; i < T / R; ++i) store_scores<GP>(fold_tokens<R>(acc + i * R), t0 + i * R, len, c, S);
  }
}

#ifdef HELIX_BF16_DOT
// The same through the ISA's bf16 pair dot product (`dot_pairs<R>`: R pairs of a K row broadcast, times the
// query pairs, summed into each fp32 lane): steps of 2R dimensions, D a multiple of 2R. qP[st][j] = the pair
// (q_g[2(st·R + r)], q_g[2(st·R + r) + 1]) for lane j = g·R + r, as 2·W bf16 per step.
template <int GP>
inline void transpose_query_pairs(const bf16* q, int64_t q_h, int G, int D, bf16* qP) {
  constexpr int R = Vec::W / GP;
  for (int st = 0; st < D / (2 * R); ++st)
    for (int j = 0; j < Vec::W; ++j)
      for (int e = 0; e < 2; ++e) {
        const int g = j / R, d = 2 * (st * R + j % R) + e;
        qP[(st * Vec::W + j) * 2 + e] = g < G ? q[g * q_h + d] : bf16{0};
      }
}

template <int GP>
inline void tile_scores_dot(const bf16* qP, int D, const bf16* k0, int64_t kstride, int len, float c, float* S) {
  constexpr int R = Vec::W / GP, T = R > kGroup ? R : kGroup;
  const int steps = D / (2 * R);
  for (int t0 = 0; t0 < len; t0 += T) {
    const bf16* rows[T];
    Vec acc[T];
    start_group<T>(k0, kstride, t0, len, rows, acc);
    for (int st = 0; st < steps; ++st) {
      const QPairs q = QPairs::load(qP + st * 2 * Vec::W);
      for (int tt = 0; tt < T; ++tt) acc[tt] = dot_pairs<R>(acc[tt], rows[tt] + st * 2 * R, q);
    }
    for (int i = 0; i < T / R; ++i) store_scores<GP>(fold_tokens<R>(acc + i * R), t0 + i * R, len, c, S);
  }
}
#endif

// O[g][dv:dv+NV·W] = α_g·O[g] + Σ_t P[t·GP + g]·v_t for heads g..g+NG, fp32 rows v_t = v0 + t·vstride.
template <int NG, int NV>
inline void pv_block(float* O, int DV, const float* alpha, int g, int dv, const float* P, int GP,
                     const float* v0, int64_t vstride, int len) {
  Vec acc[NG][NV];
  for (int i = 0; i < NG; ++i) {
    const Vec a = Vec::set1(alpha[g + i]);
    for (int j = 0; j < NV; ++j) acc[i][j] = Vec::mul(Vec::load(O + (g + i) * DV + dv + j * Vec::W), a);
  }
  for (int t = 0; t < len; ++t) {
    Vec v[NV];
    for (int j = 0; j < NV; ++j) v[j] = Vec::load(v0 + t * vstride + dv + j * Vec::W);
    for (int i = 0; i < NG; ++i) {
      const Vec p = Vec::set1(P[t * GP + g + i]);
      for (int j = 0; j < NV; ++j) acc[i][j] = Vec::fma(p, v[j], acc[i][j]);
    }
  }
  for (int i = 0; i < NG; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j].store(O + (g + i) * DV + dv + j * Vec::W);
}

template <int NG>
inline void pv_heads(float* O, int DV, const float* alpha, int g, const float* P, int GP,
                     const float* v0, int64_t vstride, int len) {
  const int nvec = DV / Vec::W;
  int j = 0;
  for (; j + 4 <= nvec; j += 4) pv_block<NG, 4>(O, DV, alpha, g, j * Vec::W, P, GP, v0, vstride, len);
  switch (nvec - j) {
    case 3: pv_block<NG, 3>(O, DV, alpha, g, j * Vec::W, P, GP, v0, vstride, len); break;
    case 2: pv_block<NG, 2>(O, DV, alpha, g, j * Vec::W, P, GP, v0, vstride, len); break;
    case 1: pv_block<NG, 1>(O, DV, alpha, g, j * Vec::W, P, GP, v0, vstride, len); break;
    default: break;
  }
}

// Where dimension d of O sits while the bf16 pair dot product accumulates it (VPUNPCKL/HWD's lane order: per 32
// dimensions a vector of dims 8l + i, then one of dims 8l + 4 + i, in lane 4l + i); `interleaved` false: d.
inline int pv_lane(int d, bool interleaved) {
  if (!interleaved) return d;
  const int c = d / 32, r = d % 32;
  return (2 * c + (r % 8) / 4) * 16 + 4 * (r / 8) + r % 4;
}

#ifdef HELIX_BF16_PV
// P·V through the bf16 pair dot product (bf16 caches, DV a multiple of 32): PP[u·GP + g] holds the bf16
// probabilities of tokens 2u, 2u+1 for head g (`pair_probs`). Per 32 dimensions the value rows of each token pair
// are paired in registers (`pair_rows`: two vectors of 16 pairs, in VPUNPCKL/HWD's lane order) and multiplied into
// the NG heads g .. g + NG at once, so a row is loaded and paired once per NG heads. O is kept in that lane order
// during an item (`pv_lane`) and put back when the item writes it out. A missing partner of an odd tail token
// repeats the last row (finite, times P = 0).
template <int NG>
inline void pv_dot_rows(float* O, int DV, const float* alpha, int g, const uint32_t* PP, int GP, const bf16* vr,
                        int64_t vstride, int len) {
  const int pairs = (len + 1) / 2;
  for (int c = 0; c < DV / 32; ++c) {
    Vec acc[NG][2];
    for (int i = 0; i < NG; ++i) {
      const Vec a = Vec::set1(alpha[g + i]);
      for (int j = 0; j < 2; ++j) acc[i][j] = Vec::mul(Vec::load(O + (g + i) * DV + (2 * c + j) * Vec::W), a);
    }
    for (int u = 0; u < pairs; ++u) {
      const bf16* r0 = vr + 2 * u * vstride;
      QPairs v[2];
      pair_rows(r0 + 32 * c, (2 * u + 1 < len ? r0 + vstride : r0) + 32 * c, v);
      for (int i = 0; i < NG; ++i) {
        const uint32_t pp = PP[u * GP + g + i];
        for (int j = 0; j < 2; ++j) acc[i][j] = dot_bcast(acc[i][j], pp, v[j]);
      }
    }
    for (int i = 0; i < NG; ++i)
      for (int j = 0; j < 2; ++j) acc[i][j].store(O + (g + i) * DV + (2 * c + j) * Vec::W);
  }
}
#endif

// Per-thread scratch, sized for kTile tokens, GP ≤ W heads, D, DV ≤ kMaxDim.
struct Scratch {
  float qT[Vec::W * kMaxDim];  // the pass's query rows transposed for the broadcast scores
  float O[Vec::W * kMaxDim];
  float S[kTile * Vec::W];
  float Vf[kTile * kMaxDim];
  float alpha[Vec::W];
#ifdef HELIX_BF16_DOT
  bf16 qP[Vec::W * kMaxDim];  // the pass's query pairs in bf16 for the dot-product scores
#endif
#ifdef HELIX_BF16_PV
  uint32_t PP[kTile / 2 * Vec::W];  // the tile's probabilities paired by tokens, bf16
#endif
};

// One work item: heads [h0, h0 + G) of sequence `seq` (all reading KV head `kvh`) over local tokens
// [t_begin, t_end). Writes O (G rows of DV, normalised, fp32) and LSE (G values, natural log) to o_out/lse_out.
template <int GP, class E>
void attend_item(const Params& p, Scratch& sc, int seq, int kvh, int h0, int G, int64_t t_begin, int64_t t_end,
                 float* o_out, int64_t o_row_stride, float* lse_out) {
  const int D = p.head_dim, DV = p.v_dim;
  const E* q = static_cast<const E*>(p.q) + seq * p.q_s + h0 * p.q_h;  // the pass's first query row
  for (int i = 0; i < G * DV; ++i) sc.O[i] = 0.f;
#ifdef HELIX_BF16_DOT
  constexpr bool kBf16 = std::is_same<E, bf16>::value;
  const bool dot = kBf16 && D % (2 * Vec::W / GP) == 0;
  if constexpr (kBf16) {
    if (dot) transpose_query_pairs<GP>(q, p.q_h, G, D, sc.qP);
  }
  if (!dot) transpose_query<GP>(q, p.q_h, G, D, sc.qT);
#else
  transpose_query<GP>(q, p.q_h, G, D, sc.qT);
#endif
#ifdef HELIX_BF16_PV
  const bool dot_pv = std::is_same<E, bf16>::value && DV % 32 == 0;
#else
  constexpr bool dot_pv = false;
#endif
  const float c = p.scale * kLog2e;
  Vec m = Vec::set1(-INFINITY), l = Vec::zero();
  const int32_t* table = p.block_table + seq * p.bt_s;
  const E* kbase = static_cast<const E*>(p.k) + kvh * p.k_h;
  const E* vbase = static_cast<const E*>(p.v) + kvh * p.v_h;
  for (int64_t t = t_begin; t < t_end;) {
    const int64_t block = table[t / p.block_size];
    const int off = static_cast<int>(t % p.block_size);
    const int len = static_cast<int>(std::min<int64_t>({kTile, p.block_size - off, t_end - t}));
    const E* kr = kbase + block * p.k_b + off * p.k_t;  // the tile's rows: kr + i·k_t, vr + i·v_t
    const E* vr = vbase + block * p.v_b + off * p.v_t;
#ifdef HELIX_BF16_DOT
    if constexpr (kBf16) {
      if (dot) tile_scores_dot<GP>(sc.qP, D, kr, p.k_t, len, c, sc.S);
      else tile_scores<GP, E>(sc.qT, D, kr, p.k_t, len, c, sc.S);
    } else {
      tile_scores<GP, E>(sc.qT, D, kr, p.k_t, len, c, sc.S);
    }
#else
    tile_scores<GP, E>(sc.qT, D, kr, p.k_t, len, c, sc.S);
#endif
    // online softmax over the tile (lanes of one head share one max/alpha: reduce over lanes ≡ g mod GP)
    const int nvec = (len * GP + Vec::W - 1) / Vec::W;
    Vec mx = Vec::load(sc.S);
    for (int i = 1; i < nvec; ++i) mx = Vec::max(mx, Vec::load(sc.S + i * Vec::W));
    const Vec m_new = Vec::max(m, Vec::allreduce_max(mx, GP));
    const Vec alpha = Vec::exp2(Vec::sub(m, m_new));
    Vec sum = Vec::zero();
    for (int i = 0; i < nvec; ++i) {
      const Vec e = Vec::exp2(Vec::sub(Vec::load(sc.S + i * Vec::W), m_new));
      e.store(sc.S + i * Vec::W);
      sum = Vec::add(sum, e);
    }
    l = Vec::fma(l, alpha, sum);
    m = m_new;
    alpha.store(sc.alpha);  // lanes 0..GP-1: α of heads 0..GP-1
#ifdef HELIX_BF16_PV
    if constexpr (std::is_same<E, bf16>::value) {
      if (dot_pv) {
        const int pairs = (len + 1) / 2;
        if (len % 2)
          for (int g = 0; g < GP; ++g) sc.S[len * GP + g] = 0.f;  // the odd token's partner: P = 0
        pair_probs<GP>(sc.S, pairs, sc.PP);
        int g = 0;
        for (; g + 8 <= G; g += 8) pv_dot_rows<8>(sc.O, DV, sc.alpha, g, sc.PP, GP, vr, p.v_t, len);
        for (; g + 4 <= G; g += 4) pv_dot_rows<4>(sc.O, DV, sc.alpha, g, sc.PP, GP, vr, p.v_t, len);
        for (; g + 2 <= G; g += 2) pv_dot_rows<2>(sc.O, DV, sc.alpha, g, sc.PP, GP, vr, p.v_t, len);
        if (g < G) pv_dot_rows<1>(sc.O, DV, sc.alpha, g, sc.PP, GP, vr, p.v_t, len);
        t += len;
        continue;
      }
    }
#endif
    const float* v0;
    int64_t vstride;
    if constexpr (std::is_same<E, float>::value) {
      v0 = vr;
      vstride = p.v_t;
    } else {  // convert the tile's value rows to fp32 once, for all heads of the pass
      for (int i = 0; i < len; ++i)
        for (int d = 0; d < DV; d += Vec::W) load_row(vr + i * p.v_t + d).store(sc.Vf + i * DV + d);
      v0 = sc.Vf;
      vstride = DV;
    }
    int g = 0;
    for (; g + 2 <= G; g += 2) pv_heads<2>(sc.O, DV, sc.alpha, g, sc.S, GP, v0, vstride, len);
    if (g < G) pv_heads<1>(sc.O, DV, sc.alpha, g, sc.S, GP, v0, vstride, len);
    t += len;
  }
  float mv[Vec::W], lv[Vec::W];
  m.store(mv);
  Vec::allreduce_sum(l, GP).store(lv);
  for (int g = 0; g < G; ++g) {
    const bool empty = !(lv[g] > 0.f);
    const float inv = empty ? 0.f : 1.f / lv[g];
    float* o = o_out + g * o_row_stride;
    for (int d = 0; d < DV; ++d) o[d] = sc.O[g * DV + pv_lane(d, dot_pv)] * inv;
    lse_out[g] = empty ? -INFINITY : (mv[g] + std::log2(lv[g])) * kLn2;
  }
}

// attend_item for the pass's head count G ≤ W, padded to GP = the next power of two.
template <class E>
void attend(const Params& p, Scratch& sc, int seq, int kvh, int h0, int G, int64_t t0, int64_t t1, float* o_out,
            int64_t o_row_stride, float* lse_out) {
  switch (pow2_at_least(G)) {
    case 1: return attend_item<1, E>(p, sc, seq, kvh, h0, G, t0, t1, o_out, o_row_stride, lse_out);
    case 2: return attend_item<2, E>(p, sc, seq, kvh, h0, G, t0, t1, o_out, o_row_stride, lse_out);
    case 4: return attend_item<4, E>(p, sc, seq, kvh, h0, G, t0, t1, o_out, o_row_stride, lse_out);
    case 8: return attend_item<8, E>(p, sc, seq, kvh, h0, G, t0, t1, o_out, o_row_stride, lse_out);
    default: return attend_item<Vec::W, E>(p, sc, seq, kvh, h0, G, t0, t1, o_out, o_row_stride, lse_out);  // W = 16
  }
}

template <class E>
void run_items(const Params& p) {
  const int G_total = p.heads / p.kv_heads;
  const int passes = (G_total + Vec::W - 1) / Vec::W;
  const int64_t per_seq = static_cast<int64_t>(p.kv_heads) * passes * p.num_splits;
  const int64_t items = p.num_seqs * per_seq;
  const int64_t split_stride = p.num_splits > 1 ? p.v_dim + 1 : 0;
  p.parallel_for(items, [&](int64_t begin, int64_t end) {
    Scratch* sc = new Scratch;  // per chunk of items: ≈ (2·W + kTile)·kMaxDim floats
    for (int64_t it = begin; it < end; ++it) {
      const int seq = static_cast<int>(it / per_seq);
      int64_t r = it % per_seq;
      const int split = static_cast<int>(r % p.num_splits);
      r /= p.num_splits;
      const int pass = static_cast<int>(r % passes);
      const int kvh = static_cast<int>(r / passes);
      const int h0 = kvh * G_total + pass * Vec::W;
      const int G = std::min(Vec::W, G_total - pass * Vec::W);
      const int64_t n = p.seq_lens[seq];
      const int64_t per_split = (n + p.num_splits - 1) / p.num_splits;
      const int64_t t0 = std::min<int64_t>(n, split * per_split), t1 = std::min<int64_t>(n, t0 + per_split);
      if (p.num_splits == 1) {
        float o_tmp[Vec::W * kMaxDim], lse_tmp[Vec::W];
        attend<E>(p, *sc, seq, kvh, h0, G, t0, t1, o_tmp, p.v_dim, lse_tmp);
        for (int g = 0; g < G; ++g) {
          E* out = p.out_row<E>(seq, h0 + g);
          for (int d = 0; d < p.v_dim; ++d) out[d] = from_float<E>(o_tmp[g * p.v_dim + d]);
          p.store_lse(seq, h0 + g, lse_tmp[g]);
        }
      } else {  // split partial rows [O | LSE] of (seq, head, split) in p.mid
        float* row = p.mid + ((static_cast<int64_t>(seq) * p.heads + h0) * p.num_splits + split) * split_stride;
        float lse_tmp[Vec::W];
        attend<E>(p, *sc, seq, kvh, h0, G, t0, t1, row, p.num_splits * split_stride, lse_tmp);
        for (int g = 0; g < G; ++g) row[g * p.num_splits * split_stride + p.v_dim] = lse_tmp[g];
      }
    }
    delete sc;
  });
}

// Merge the split partials of every (sequence, head): the Helix combine rule over splits.
template <class E>
void merge_splits(const Params& p) {
  const int64_t stride = p.v_dim + 1;
  p.parallel_for(static_cast<int64_t>(p.num_seqs) * p.heads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int seq = static_cast<int>(i / p.heads), h = static_cast<int>(i % p.heads);
      const float* rows = p.mid + i * p.num_splits * stride;
      float mx = -INFINITY;
      for (int s = 0; s < p.num_splits; ++s) mx = std::max(mx, rows[s * stride + p.v_dim]);
      E* out = p.out_row<E>(seq, h);
      if (mx == -INFINITY) {
        for (int d = 0; d < p.v_dim; ++d) out[d] = from_float<E>(0.f);
        p.store_lse(seq, h, -INFINITY);
        continue;
      }
      float w[64], total = 0.f;
      for (int s = 0; s < p.num_splits; ++s) total += (w[s] = std::exp(rows[s * stride + p.v_dim] - mx));
      for (int d = 0; d < p.v_dim; ++d) {
        float acc = 0.f;
        for (int s = 0; s < p.num_splits; ++s) acc += w[s] * rows[s * stride + d];
        out[d] = from_float<E>(acc / total);
      }
      p.store_lse(seq, h, mx + std::log(total));
    }
  });
}

template <class E>
void decode_attention(const Params& p) {
  run_items<E>(p);
  if (p.num_splits > 1) merge_splits<E>(p);
}

}  // namespace HELIX_ISA_NAMESPACE
}  // namespace helix_cpu
