// Multi-tensor CPU steps: every tensor of every param group in one call.
#pragma once

#include <cstdint>
#include <string>

namespace fastopt {

// Per-tensor flags (exported as _C.STEP_FLAGS; fastopt/_kernels.py reads them by name).
enum StepFlag : int32_t {
  kMaximize = 1 << 0,
  kAmsgrad = 1 << 1,     // Adam
  kDecoupledWd = 1 << 2, // Adam: AdamW-style decay
  kNesterov = 1 << 3,    // SGD
  kFirstStep = 1 << 4,   // SGD: momentum buffer created this step
};

// Columns of the per-tensor pointer and hyperparameter tables (exported as _C.*_COLUMNS, _C.*_HYPERS).
enum AdamPtr : int { kAdamParam = 0, kAdamGrad, kAdamExpAvg, kAdamExpAvgSq, kAdamMaxExpAvgSq, kAdamStep, kAdamPtrs };
enum AdamHyper : int { kAdamLr = 0, kAdamBeta1, kAdamBeta2, kAdamEps, kAdamWd, kAdamHypers };
enum SgdPtr : int { kSgdParam = 0, kSgdGrad, kSgdBuf, kSgdPtrs };
enum SgdHyper : int { kSgdLr = 0, kSgdMomentum, kSgdDampening, kSgdWd, kSgdHypers };

// Threads: each call below runs one parallel loop over the chunks of all its tensors on
// `threads` threads (<= 0: OpenMP's default, omp_get_max_threads()), never more than there are
// chunks. The chunks depend on the sizes only, so every thread count gives the same bits.

// n tensors; ptrs is n x kAdamPtrs (row-major), hyper n x kAdamHypers; step
// counters (float32 scalars) are incremented here. grad_scale <= 0: none; grad_mult: the
// clip coefficient every gradient is multiplied by as it is read (1: none).
void adam_step_cpu(int64_t n, const uint64_t* ptrs, const int64_t* numels, const int32_t* dtypes,
                   const int32_t* flags, const double* hyper, double grad_scale, double grad_mult,
                   int threads = 0);

// n tensors; ptrs is n x kSgdPtrs, hyper n x kSgdHypers; the buffer pointer may be
// 0 when momentum is 0.
void sgd_step_cpu(int64_t n, const uint64_t* ptrs, const int64_t* numels, const int32_t* dtypes,
                  const int32_t* flags, const double* hyper, double grad_scale, double grad_mult,
                  int threads = 0);

// The norm of n gradients taken together (2-norm, or the largest magnitude when inf), in
// double, and whether any element is inf or NaN.
struct GradNorm {
  double norm;
  bool nonfinite;
};
GradNorm grad_norm_cpu(int64_t n, const uint64_t* ptrs, const int64_t* numels, const int32_t* dtypes, bool inf,
                       int threads = 0);

// The number of threads the parallel loop of the calling thread's last adam_step_cpu,
// sgd_step_cpu or grad_norm_cpu call ran on (0 before the first call).
int last_num_threads();

// Name of the kernel build in use ("avx512", "avx2" or "baseline").
const char* cpu_isa();

// Switch kernel builds (for tests and comparisons); throws if unavailable here. Safe while
// other threads step: a call reads the active build once, and runs wholly on the build it read.
void set_cpu_isa(const std::string& name);

}  // namespace fastopt
