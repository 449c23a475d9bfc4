// The chunk loops of the multi-tensor steps, built once per instruction set
// (FASTOPT_ISA names the namespace; see step_kernels.h and CMakeLists.txt).
#include <cstdint>

#include "adam_math.h"
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
                          (M & kAdamModeScale) != 0>;
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
                         (M & kSgdModeScale) != 0>;
    return sgd_pick<S, M + 1>(mode);
  }
}

template <typename S>
void run_adam(const AdamTensor& t, const Chunk& c) {
  const uint64_t* r = t.ptrs;
  const auto* s = [&] {
    if constexpr (sizeof(typename OpMath<S>::type) == sizeof(double)) return &t.d; else return &t.f;
  }();
  adam_pick<S>(t.mode)(ptr<S>(r[0]), ptr<S>(r[1]), ptr<S>(r[2]), ptr<S>(r[3]), ptr<S>(r[4]), c.begin, c.end, *s);
}

template <typename S>
void run_sgd(const SgdTensor& t, const Chunk& c) {
  const uint64_t* r = t.ptrs;
  const auto* s = [&] {
    if constexpr (sizeof(typename OpMath<S>::type) == sizeof(double)) return &t.d; else return &t.f;
  }();
  sgd_pick<S>(t.mode)(ptr<S>(r[0]), ptr<S>(r[1]), ptr<S>(r[2]), c.begin, c.end, *s);
}

}  // namespace

namespace FASTOPT_ISA {

void adam_chunks(const AdamTensor* tensors, const Chunk* chunks, int64_t n_chunks) {
  // One parallel loop over the chunks of all tensors (static: chunks are equal-sized).
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const Chunk& ch = chunks[c];
    const AdamTensor& t = tensors[ch.tensor];
    switch (t.dtype) {
      case kFloat32: run_adam<float>(t, ch); break;
      case kFloat64: run_adam<double>(t, ch); break;
      case kBFloat16: run_adam<BFloat16>(t, ch); break;
      default: run_adam<Float16>(t, ch); break;
    }
  }
}

void sgd_chunks(const SgdTensor* tensors, const Chunk* chunks, int64_t n_chunks) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const Chunk& ch = chunks[c];
    const SgdTensor& t = tensors[ch.tensor];
    switch (t.dtype) {
      case kFloat32: run_sgd<float>(t, ch); break;
      case kFloat64: run_sgd<double>(t, ch); break;
      case kBFloat16: run_sgd<BFloat16>(t, ch); break;
      default: run_sgd<Float16>(t, ch); break;
    }
  }
}

}  // namespace FASTOPT_ISA
}  // namespace fastopt
