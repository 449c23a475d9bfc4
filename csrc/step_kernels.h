// Per-instruction-set step kernels: the chunk loops of csrc/step_cpu.cpp.
//
// step_kernels.cpp is compiled once per instruction set (baseline x86-64, AVX2,
// AVX-512) into its own namespace; step_cpu.cpp picks one at run time. Only
// plain structs cross between them, and everything with code inside the kernel
// build has internal linkage, so no AVX-512 instruction can leak into the
// baseline path.
#pragma once

#include <cstdint>

namespace fastopt {

// A contiguous range of one tensor, and the cost of every chunk up to and including it (see
// chunking.h): the threads of a loop take contiguous runs of chunks of equal cost.
struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
  int64_t upto;
};

template <typename O>
struct AdamScalars {
  O neg_step_size;   // -lr / bias_correction1
  O bc2_sqrt;        // sqrt(bias_correction2)
  O eps;
  O lerp_weight;     // 1 - beta1
  O beta2;
  O one_minus_beta2;
  O decay;           // 1 - lr * wd (decoupled)
  O l2;              // wd (L2)
  O grad_scale;
  O grad_mult;       // clip coefficient, applied to the unscaled gradient
  O sign;            // -1 when maximize
};

template <typename O>
struct SgdScalars {
  O neg_lr;
  O wd;
  O momentum;
  O one_minus_dampening;
  O grad_scale;
  O grad_mult;
  O sign;
  bool first;  // momentum buffer created this step: it becomes a copy of g
};

// Kernel variants: each bit is a compile-time switch of the loop (step_kernels.cpp picks the
// instantiation, step_cpu.cpp sets the bits per tensor).
enum AdamMode : int32_t {
  kAdamModeL2 = 1, kAdamModeDecoupled = 2, kAdamModeAmsgrad = 4, kAdamModeScale = 8, kAdamModeMult = 16
};
enum SgdMode : int32_t {
  kSgdModeWd = 1, kSgdModeMomentum = 2, kSgdModeNesterov = 4, kSgdModeScale = 8, kSgdModeMult = 16
};
constexpr int32_t kModes = 32;  // every combination of the five bits

// A step's scalars in both opmath types; tensors with the same inputs (a group's tensors at one
// step count) share one.
template <template <typename> class Scalars>
struct ScalarSet {
  Scalars<float> f;
  Scalars<double> d;
};
using AdamSet = ScalarSet<AdamScalars>;
using SgdSet = ScalarSet<SgdScalars>;

// One tensor of a step: small, so that a step over many small tensors reads little besides them.
struct AdamTensor {
  const uint64_t* ptrs;  // row of the pointer table (step_cpu.h AdamPtr)
  const AdamSet* s;      // its scalars
  int32_t dtype;
  int32_t mode;          // AdamMode bits
};

struct SgdTensor {
  const uint64_t* ptrs;  // row of the pointer table (step_cpu.h SgdPtr)
  const SgdSet* s;
  int32_t dtype;
  int32_t mode;          // SgdMode bits
};

// One gradient of a global norm, and what one chunk of it contributes: the sum of squares
// (2-norm) or the largest magnitude (inf-norm), in double.
struct NormTensor {
  uint64_t ptr;
  int32_t dtype;
};
struct NormPartial {
  double value;
};

// Each runs one parallel loop over the chunks on a team of `threads` (at least 1) and returns
// the number of threads the team had (1 without OpenMP).
#define FASTOPT_DECLARE_KERNELS(isa)                                                                      \
  namespace isa {                                                                                         \
  int adam_chunks(const AdamTensor* tensors, const Chunk* chunks, int64_t n_chunks, int threads);         \
  int sgd_chunks(const SgdTensor* tensors, const Chunk* chunks, int64_t n_chunks, int threads);           \
  int norm_chunks(const NormTensor* tensors, const Chunk* chunks, int64_t n_chunks, bool inf,             \
                  NormPartial* partials, int threads);                                                    \
  }

FASTOPT_DECLARE_KERNELS(isa_baseline)
FASTOPT_DECLARE_KERNELS(isa_avx2)
FASTOPT_DECLARE_KERNELS(isa_avx512)

}  // namespace fastopt
