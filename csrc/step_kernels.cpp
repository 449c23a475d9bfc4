// The chunk loops of the multi-tensor steps, built once per instruction set
// (FASTOPT_ISA names the namespace; see step_kernels.h and CMakeLists.txt).
#include <cstdint>

#include "adam_math.h"
#include "partition.h"
#include "prefetch.h"
#include "sgd_math.h"
#include "step_kernels.h"

#ifndef FASTOPT_ISA
#error "FASTOPT_ISA must name the instruction-set namespace (isa_baseline, isa_avx2, isa_avx512)"
#endif

namespace fastopt {
namespace {

template <typename T>
T* ptr(uint64_t v) { return reinterpret_cast<T*>(static_cast<uintptr_t>(v)); }

template <typename S>
using AdamFn = void (*)(S*, S*, S*, S*, S*, int64_t, int64_t, const AdamScalars<typename OpMath<S>::type>&);
template <typename S>
using SgdFn = void (*)(S*, S*, S*, int64_t, int64_t, const SgdScalars<typename OpMath<S>::type>&);

// mode bits -> the kernel instantiation with those compile-time switches
template <typename S, int M = 0>
AdamFn<S> adam_pick(int32_t mode) {
  if constexpr (M == kModes) {
    return nullptr;
  } else {
    if (mode == M)
      return &adam_kernel<S, (M & kAdamModeL2) != 0, (M & kAdamModeDecoupled) != 0, (M & kAdamModeAmsgrad) != 0,
                          (M & kAdamModeScale) != 0, (M & kAdamModeMult) != 0>;
    return adam_pick<S, M + 1>(mode);
  }
}

template <typename S, int M = 0>
SgdFn<S> sgd_pick(int32_t mode) {
  if constexpr (M == kModes) {
    return nullptr;
  } else {
    if (mode == M)
      return &sgd_kernel<S, (M & kSgdModeWd) != 0, (M & kSgdModeMomentum) != 0, (M & kSgdModeNesterov) != 0,
                         (M & kSgdModeScale) != 0, (M & kSgdModeMult) != 0>;
    return sgd_pick<S, M + 1>(mode);
  }
}

template <typename S>
void run_adam(const AdamTensor& t, const Chunk& c) {
  const uint64_t* r = t.ptrs;
  const auto* s = [&] {
    if constexpr (sizeof(typename OpMath<S>::type) == sizeof(double)) return &t.s->d; else return &t.s->f;
  }();
  adam_pick<S>(t.mode)(ptr<S>(r[0]), ptr<S>(r[1]), ptr<S>(r[2]), ptr<S>(r[3]), ptr<S>(r[4]), c.begin, c.end, *s);
}

template <typename S>
void run_sgd(const SgdTensor& t, const Chunk& c) {
  const uint64_t* r = t.ptrs;
  const auto* s = [&] {
    if constexpr (sizeof(typename OpMath<S>::type) == sizeof(double)) return &t.s->d; else return &t.s->f;
  }();
  sgd_pick<S>(t.mode)(ptr<S>(r[0]), ptr<S>(r[1]), ptr<S>(r[2]), c.begin, c.end, *s);
}

// One chunk of a global gradient norm, in a fixed order (so the loop vectorises without
// reassociating anything): kLanes interleaved accumulators in opmath over blocks of kBlock
// elements per lane, each block then added to a double accumulator, the lanes combined last.
// A block sums only kBlock squares in float, so the partials keep about float precision
// relative to their size and the total double precision over blocks. inf and NaN need no
// separate test: they make the sum of squares, or the NaN-propagating maximum, non-finite.
template <typename S, bool kInf>
NormPartial norm_range(const S* g, int64_t begin, int64_t end) {
  using O = typename OpMath<S>::type;
  constexpr int kLanes = 64;  // four vectors of independent sums: no single dependency chain
  constexpr int64_t kBlock = 16;
  const auto add = [](auto a, decltype(a) x) {
    if constexpr (kInf) {
      const auto ax = x < 0 ? -x : x;
      return (ax > a || ax != ax) ? ax : a;  // NaN propagates, as torch's inf-norm
    } else {
      return a + x * x;
    }
  };
  double acc[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes * kBlock <= end; i += kLanes * kBlock) {
    O block[kLanes] = {};
    for (int64_t b = 0; b < kBlock; ++b)
      for (int l = 0; l < kLanes; ++l) block[l] = add(block[l], load<O>(g[i + b * kLanes + l]));
    for (int l = 0; l < kLanes; ++l)
      acc[l] = kInf ? add(acc[l], static_cast<double>(block[l])) : acc[l] + static_cast<double>(block[l]);
  }
  // The rest (under kLanes * kBlock elements): whole rows of kLanes into one more float block,
  // then the last few elements straight into the double lanes. Every chunk but a tensor's last
  // ends on a block, so this runs once per tensor.
  O block[kLanes] = {};
  for (; i + kLanes <= end; i += kLanes)
    for (int l = 0; l < kLanes; ++l) block[l] = add(block[l], load<O>(g[i + l]));
  for (int l = 0; l < kLanes; ++l)
    acc[l] = kInf ? add(acc[l], static_cast<double>(block[l])) : acc[l] + static_cast<double>(block[l]);
  for (int l = 0; i < end; ++i, ++l) acc[l] = add(acc[l], static_cast<double>(load<O>(g[i])));
  double total = acc[0];
  for (int l = 1; l < kLanes; ++l) total = kInf ? add(total, acc[l]) : total + acc[l];
  return {total};
}

template <typename S>
NormPartial run_norm(const NormTensor& t, const Chunk& c, bool inf) {
  const S* g = ptr<S>(t.ptr);
  return inf ? norm_range<S, true>(g, c.begin, c.end) : norm_range<S, false>(g, c.begin, c.end);
}

// How many chunks ahead a thread touches the first lines of each array of a chunk, and how
// many lines: a small tensor's arrays lie on pages of their own, and the first touch of each
// costs a page walk and a miss before any prefetcher runs ahead; begun four chunks early they
// overlap the chunks between (AdamW over 100,000 tensors of 80 elements: the kernel alone
// 14.4 -> 12.2 ms; 40,000 of 200: 10.4 -> 9.3 ms; 4,000 of 2,000 and one chunk ahead: no change).
constexpr int64_t kAheadChunks = 4;
constexpr int64_t kAheadLines = 2;

// Touches the first kAheadLines lines of the first `arrays` arrays of chunk c (their addresses
// in the tensor's pointer row; 0: no array), if c is before `end`.
template <typename T>
void prefetch_chunk(const T* tensors, const Chunk* chunks, int64_t c, int64_t end, int arrays) {
  if (c >= end) return;
  const Chunk& ch = chunks[c];
  const T& t = tensors[ch.tensor];
  const int64_t size = t.dtype == kFloat64 ? 8 : t.dtype == kFloat32 ? 4 : 2;
  const int64_t bytes = (ch.end - ch.begin) * size;
  for (int a = 0; a < arrays; ++a) {
    if (t.ptrs[a] == 0) continue;
    const char* first = reinterpret_cast<const char*>(static_cast<uintptr_t>(t.ptrs[a])) + ch.begin * size;
    for (int64_t k = 0; k < kAheadLines && 64 * k < bytes; ++k) prefetch(first + 64 * k);
  }
}

// One parallel loop over the chunks, body(c, end) per chunk, on a team of `threads`: each
// thread takes a contiguous run of chunks of about equal cost (first_chunk_of), `end` the end
// of its run. Returns the size of the team that ran it.
template <typename Body>
int parallel_chunks(const Chunk* chunks, int64_t n_chunks, int threads, const Body& body) {
  int team = 1;
#ifndef _OPENMP
  (void)threads;
#endif
#pragma omp parallel num_threads(threads)
  {
    const TeamPosition at = team_position();
    if (at.thread == 0) team = at.size;
    const int64_t end = first_chunk_of(chunks, n_chunks, at.thread + 1, at.size);
    for (int64_t c = first_chunk_of(chunks, n_chunks, at.thread, at.size); c < end; ++c) body(c, end);
  }
  return team;
}

}  // namespace

namespace FASTOPT_ISA {

int norm_chunks(const NormTensor* tensors, const Chunk* chunks, int64_t n_chunks, bool inf,
                NormPartial* partials, int threads) {
  return parallel_chunks(chunks, n_chunks, threads, [&](int64_t c, int64_t) {
    const Chunk& ch = chunks[c];
    const NormTensor& t = tensors[ch.tensor];
    switch (t.dtype) {
      case kFloat32: partials[c] = run_norm<float>(t, ch, inf); break;
      case kFloat64: partials[c] = run_norm<double>(t, ch, inf); break;
      case kBFloat16: partials[c] = run_norm<BFloat16>(t, ch, inf); break;
      default: partials[c] = run_norm<Float16>(t, ch, inf); break;
    }
  });
}

int adam_chunks(const AdamTensor* tensors, const Chunk* chunks, int64_t n_chunks, int threads) {
  return parallel_chunks(chunks, n_chunks, threads, [&](int64_t c, int64_t end) {
    prefetch_chunk(tensors, chunks, c + kAheadChunks, end, 4);  // param, grad, exp_avg, exp_avg_sq
    const Chunk& ch = chunks[c];
    const AdamTensor& t = tensors[ch.tensor];
    switch (t.dtype) {
      case kFloat32: run_adam<float>(t, ch); break;
      case kFloat64: run_adam<double>(t, ch); break;
      case kBFloat16: run_adam<BFloat16>(t, ch); break;
      default: run_adam<Float16>(t, ch); break;
    }
  });
}

int sgd_chunks(const SgdTensor* tensors, const Chunk* chunks, int64_t n_chunks, int threads) {
  return parallel_chunks(chunks, n_chunks, threads, [&](int64_t c, int64_t end) {
    prefetch_chunk(tensors, chunks, c + kAheadChunks, end, 3);  // param, grad, momentum buffer
    const Chunk& ch = chunks[c];
    const SgdTensor& t = tensors[ch.tensor];
    switch (t.dtype) {
      case kFloat32: run_sgd<float>(t, ch); break;
      case kFloat64: run_sgd<double>(t, ch); break;
      case kBFloat16: run_sgd<BFloat16>(t, ch); break;
      default: run_sgd<Float16>(t, ch); break;
    }
  });
}

}  // namespace FASTOPT_ISA
}  // namespace fastopt
