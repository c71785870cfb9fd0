// SPDX-License-Identifier: Apache-2.0
// torch ops `helix_cpu::shm_all_to_all` and `helix_cpu::shm_all_reduce`: collectives between the processes of one
// machine through a shared memory region, without a socket round trip and without vLLM's CPU shared-memory ops
// (absent from its AVX2 build). The all-to-all carries the Helix KVP exchange; the all-reduce (sum) the TP group's.
//
// Region (one per process group, mapped by every peer; see kernels/cpu_shm_collectives.py):
//     header   world × 64 B            peer r's posted round seq_r (uint32) and its waiter count, one cache line each
//     data     2 × world × slot_bytes  double buffer: round s uses buffer s mod 2; peer r writes its slot there
// Round s on peer k with send (world, …) — chunk j is for peer j:
//     copy send into slot (s mod 2, k); post seq_k = s; wait until seq_r ≥ s for every r;
//     recv[r] = chunk k of slot (s mod 2, r).
// The all-reduce posts its whole input the same way and every peer sums all slots in peer order 0, 1, … (fp32
// accumulation), so every peer ends with the same bits.
// Double buffering is safe: a peer writes buffer s mod 2 only after round s − 1 completed everywhere, and every peer
// finished reading round s − 2 (the same buffer) before it posted s − 1.
// Waiting spins briefly, then yields, then sleeps on a futex the poster wakes (only when someone sleeps), so a peer
// that is waiting for a descheduled one gives its core away instead of burning it. A peer that does not arrive within
// `timeout_s` makes the op raise.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstring>
#include <ctime>

#include "decode_attention_common.h"  // bf16, to_float / from_float

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HELIX_PAUSE() _mm_pause()
#else
#define HELIX_PAUSE() ((void)0)
#endif

namespace helix_cpu {
namespace {

constexpr int64_t kHeaderLine = 64;

struct PeerLine {
  std::atomic<uint32_t> seq;
  std::atomic<uint32_t> waiters;
};
static_assert(sizeof(PeerLine) <= kHeaderLine, "peer header must fit one cache line");

PeerLine* peer(uint8_t* base, int64_t r) { return reinterpret_cast<PeerLine*>(base + r * kHeaderLine); }

long futex(std::atomic<uint32_t>* addr, int op, uint32_t value, const timespec* timeout) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), op, value, timeout, nullptr, 0);
}

bool reached(uint32_t have, uint32_t want) { return static_cast<int32_t>(have - want) >= 0; }  // wraps at 2^32

// Wait until peer line `p` has posted round `want`.
void wait_for(PeerLine* p, uint32_t want, double timeout_s, int64_t spins) {
  for (int64_t i = 0; i < spins; ++i) {
    if (reached(p->seq.load(std::memory_order_acquire), want)) return;
    HELIX_PAUSE();
  }
  for (int i = 0; i < 8; ++i) {
    if (reached(p->seq.load(std::memory_order_acquire), want)) return;
    sched_yield();
  }
  const auto start = std::chrono::steady_clock::now();
  const timespec slice{0, 50 * 1000 * 1000};  // re-check the clock every 50 ms of sleep
  while (true) {
    p->waiters.fetch_add(1, std::memory_order_seq_cst);
    const uint32_t seen = p->seq.load(std::memory_order_seq_cst);
    if (!reached(seen, want)) futex(&p->seq, FUTEX_WAIT, seen, &slice);
    p->waiters.fetch_sub(1, std::memory_order_seq_cst);
    if (reached(p->seq.load(std::memory_order_acquire), want)) return;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    TORCH_CHECK(waited < timeout_s, "helix_cpu.shm_all_to_all: a KVP peer did not reach round ", want, " within ",
                timeout_s, " s (peer stopped or hung)");
  }
}

}  // namespace

void check_region(const at::Tensor& region, int64_t rank, int64_t world, int64_t seq, int64_t bytes,
                  int64_t slot_bytes) {
  TORCH_CHECK(region.scalar_type() == at::kByte && region.is_contiguous() && region.device().is_cpu(),
              "helix_cpu shm collective: region must be a contiguous uint8 CPU tensor");
  TORCH_CHECK(0 <= rank && rank < world && seq > 0, "helix_cpu shm collective: bad rank/world/seq");
  TORCH_CHECK(bytes <= slot_bytes, "helix_cpu shm collective: message of ", bytes, " B exceeds the slot of ",
              slot_bytes, " B");
  TORCH_CHECK(region.numel() >= world * kHeaderLine + 2 * world * slot_bytes,
              "helix_cpu shm collective: region too small");
}

// Copy `bytes` from src into this peer's slot of round `seq`, post the round, return the round's data buffer.
uint8_t* post(const at::Tensor& region, const void* src, int64_t bytes, int64_t rank, int64_t world, uint32_t s,
              int64_t slot_bytes) {
  uint8_t* base = region.data_ptr<uint8_t>();
  uint8_t* data = base + world * kHeaderLine + (s % 2) * world * slot_bytes;
  std::memcpy(data + rank * slot_bytes, src, bytes);
  PeerLine* me = peer(base, rank);
  me->seq.store(s, std::memory_order_seq_cst);
  if (me->waiters.load(std::memory_order_seq_cst) > 0) futex(&me->seq, FUTEX_WAKE, INT_MAX, nullptr);
  return data;
}

template <class E>
void sum_slots(const uint8_t* data, int64_t slot_bytes, int64_t world, E* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float acc = 0.f;
    for (int64_t r = 0; r < world; ++r) acc += to_float(reinterpret_cast<const E*>(data + r * slot_bytes)[i]);
    out[i] = from_float<E>(acc);
  }
}

// region: uint8 tensor over the mapped shared memory; send: (world, …) contiguous, chunk j for peer j.
// → recv (world, …): recv[r] = what peer r sent to this peer (its chunk `rank`).
at::Tensor shm_all_to_all(const at::Tensor& region, const at::Tensor& send, int64_t rank, int64_t world,
                          int64_t seq, int64_t slot_bytes, double timeout_s, int64_t spins) {
  TORCH_CHECK(send.is_contiguous() && send.device().is_cpu() && send.dim() >= 1 && send.size(0) == world,
              "helix_cpu.shm_all_to_all: send must be a contiguous CPU tensor of shape (world, …)");
  const int64_t bytes = send.numel() * send.element_size(), chunk = bytes / world;
  check_region(region, rank, world, seq, bytes, slot_bytes);
  uint8_t* base = region.data_ptr<uint8_t>();
  const uint32_t s = static_cast<uint32_t>(seq);
  uint8_t* data = post(region, send.data_ptr(), bytes, rank, world, s, slot_bytes);

  at::Tensor recv = at::empty_like(send);
  uint8_t* out = static_cast<uint8_t*>(recv.data_ptr());
  for (int64_t r = 0; r < world; ++r) {
    if (r != rank) wait_for(peer(base, r), s, timeout_s, spins);
    std::memcpy(out + r * chunk, data + r * slot_bytes + rank * chunk, chunk);
  }
  return recv;
}

// x (any shape, contiguous, fp32 / bf16) ← Σ over peers of x, in place; the same bits on every peer.
void shm_all_reduce(const at::Tensor& region, at::Tensor x, int64_t rank, int64_t world, int64_t seq,
                    int64_t slot_bytes, double timeout_s, int64_t spins) {
  TORCH_CHECK(x.is_contiguous() && x.device().is_cpu() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "helix_cpu.shm_all_reduce: x must be a contiguous float32 or bfloat16 CPU tensor");
  const int64_t bytes = x.numel() * x.element_size();
  check_region(region, rank, world, seq, bytes, slot_bytes);
  uint8_t* base = region.data_ptr<uint8_t>();
  const uint32_t s = static_cast<uint32_t>(seq);
  const uint8_t* data = post(region, x.data_ptr(), bytes, rank, world, s, slot_bytes);
  for (int64_t r = 0; r < world; ++r)
    if (r != rank) wait_for(peer(base, r), s, timeout_s, spins);
  if (x.scalar_type() == at::kFloat) sum_slots(data, slot_bytes, world, x.data_ptr<float>(), x.numel());
  else sum_slots(data, slot_bytes, world, static_cast<bf16*>(x.data_ptr()), x.numel());
}

}  // namespace helix_cpu

TORCH_LIBRARY_FRAGMENT(helix_cpu, m) {
  m.def("shm_all_to_all(Tensor region, Tensor send, int rank, int world, int seq, int slot_bytes, float timeout_s, "
        "int spins) -> Tensor");
  m.def("shm_all_reduce(Tensor region, Tensor(a!) x, int rank, int world, int seq, int slot_bytes, "
        "float timeout_s, int spins) -> ()");
}

TORCH_LIBRARY_IMPL(helix_cpu, CPU, m) {
  m.impl("shm_all_to_all", &helix_cpu::shm_all_to_all);
  m.impl("shm_all_reduce", &helix_cpu::shm_all_reduce);
}
