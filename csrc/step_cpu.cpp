#include "step_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "chunking.h"
#include "dtype.h"
#include "prefetch.h"
#include "prepare.h"
#include "step_kernels.h"

namespace fastopt {

namespace {

// ---- instruction-set dispatch ----------------------------------------------------------

using AdamChunks = int (*)(const AdamTensor*, const Chunk*, int64_t, int);
using SgdChunks = int (*)(const SgdTensor*, const Chunk*, int64_t, int);
using NormChunks = int (*)(const NormTensor*, const Chunk*, int64_t, bool, NormPartial*, int);

struct Kernels {
  const char* name;
  AdamChunks adam;
  SgdChunks sgd;
  NormChunks norm;
};

constexpr Kernels kBaseline{"baseline", &isa_baseline::adam_chunks, &isa_baseline::sgd_chunks,
                            &isa_baseline::norm_chunks};
#ifdef FASTOPT_X86_ISAS
constexpr Kernels kAvx2{"avx2", &isa_avx2::adam_chunks, &isa_avx2::sgd_chunks, &isa_avx2::norm_chunks};
constexpr Kernels kAvx512{"avx512", &isa_avx512::adam_chunks, &isa_avx512::sgd_chunks, &isa_avx512::norm_chunks};
#endif

#ifdef FASTOPT_X86_ISAS
// What this CPU runs, read once (the first caller initialises it; later ones only read).
struct CpuFeatures {
  bool avx2;
  bool avx512;
};

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    __builtin_cpu_init();
    CpuFeatures out{};
    out.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    out.avx512 = out.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    return out;
  }();
  return f;
}
#endif

bool supported(const std::string& name) {
  if (name == "baseline") return true;
#ifdef FASTOPT_X86_ISAS
  if (name == "avx2") return cpu_features().avx2;
  if (name == "avx512") return cpu_features().avx512;
#endif
  return false;
}

const Kernels* by_name(const std::string& name) {
  if (name == "baseline") return &kBaseline;
#ifdef FASTOPT_X86_ISAS
  if (name == "avx2") return &kAvx2;
  if (name == "avx512") return &kAvx512;
#endif
  return nullptr;
}

const Kernels* best() {
  // FASTOPT_CPU_ISA caps the choice (e.g. to compare variants or rule one out).
  const char* env = std::getenv("FASTOPT_CPU_ISA");
  if (env != nullptr && *env != 0) {
    const Kernels* k = by_name(env);
    if (k != nullptr && supported(env)) return k;
  }
  for (const char* name : {"avx512", "avx2"})
    if (supported(name)) return by_name(name);
  return &kBaseline;
}

// The kernel build in use. set_cpu_isa may replace it while other threads step: each call
// loads it once and uses only what it loaded (every build stays valid for the process's life).
std::atomic<const Kernels*>& active() {
  static std::atomic<const Kernels*> k{best()};
  return k;
}

const Kernels* load_active() { return active().load(std::memory_order_acquire); }

// How many rows ahead a step's preparation prefetches the step counters it increments: each is
// a scalar tensor's element of its own, a cold line per tensor.
constexpr int64_t kStepAhead = 16;

// Threads of the calling thread's last parallel loop (last_num_threads).
thread_local int last_team = 0;

void check_dtype(int32_t d, int64_t tensor) {
  if (d < 0 || d >= kNumDTypes)
    throw std::invalid_argument("tensor " + std::to_string(tensor) + ": unsupported dtype code " + std::to_string(d));
}

void check_numel(int64_t numel, int64_t tensor) {
  if (numel < 0)
    throw std::invalid_argument("tensor " + std::to_string(tensor) + ": negative size " + std::to_string(numel));
}

void check_ptr(uint64_t p, int64_t numel, int64_t tensor, const char* what) {
  if (p == 0 && numel > 0)
    throw std::invalid_argument("tensor " + std::to_string(tensor) + ": null " + what + " pointer");
}

// Whether two hyperparameter rows hold the same bits (then the scalars made from them agree).
bool same_row(const double* a, const double* b, int n) {
  return std::memcmp(a, b, sizeof(double) * static_cast<std::size_t>(n)) == 0;
}

template <typename O>
AdamScalars<O> adam_scalars(const double* h, int32_t flags, double step, double grad_scale, double grad_mult) {
  const double lr = h[kAdamLr], beta1 = h[kAdamBeta1], beta2 = h[kAdamBeta2], wd = h[kAdamWd];
  const double bc1 = 1.0 - std::pow(beta1, step);
  const double bc2 = 1.0 - std::pow(beta2, step);
  AdamScalars<O> s{};
  s.neg_step_size = static_cast<O>(-(lr / bc1));
  s.bc2_sqrt = static_cast<O>(std::sqrt(bc2));
  s.eps = static_cast<O>(h[kAdamEps]);
  s.lerp_weight = static_cast<O>(1.0 - beta1);
  s.beta2 = static_cast<O>(beta2);
  s.one_minus_beta2 = static_cast<O>(1.0 - beta2);
  s.decay = static_cast<O>(1.0 - lr * wd);
  s.l2 = static_cast<O>(wd);
  s.grad_scale = static_cast<O>(grad_scale);
  s.grad_mult = static_cast<O>(grad_mult);
  s.sign = (flags & kMaximize) ? O(-1) : O(1);
  return s;
}

template <typename O>
SgdScalars<O> sgd_scalars(const double* h, int32_t flags, double grad_scale, double grad_mult) {
  SgdScalars<O> s{};
  s.neg_lr = static_cast<O>(-h[kSgdLr]);
  s.wd = static_cast<O>(h[kSgdWd]);
  s.momentum = static_cast<O>(h[kSgdMomentum]);
  s.one_minus_dampening = static_cast<O>(1.0 - h[kSgdDampening]);
  s.grad_scale = static_cast<O>(grad_scale);
  s.grad_mult = static_cast<O>(grad_mult);
  s.sign = (flags & kMaximize) ? O(-1) : O(1);
  s.first = (flags & kFirstStep) != 0;
  return s;
}

}  // namespace

const char* cpu_isa() { return load_active()->name; }

int last_num_threads() { return last_team; }

void set_cpu_isa(const std::string& name) {
  const Kernels* k = by_name(name);
  if (k == nullptr || !supported(name))
    throw std::invalid_argument("instruction set '" + name + "' is not built in or not supported by this CPU");
  active().store(k, std::memory_order_release);
}

void adam_step_cpu(int64_t n, const uint64_t* ptrs, const int64_t* numels, const int32_t* dtypes,
                   const int32_t* flags, const double* hyper, double grad_scale, double grad_mult,
                   int threads) {
  const auto validate = [&](int64_t i) {
    const uint64_t* row = ptrs + i * kAdamPtrs;
    check_dtype(dtypes[i], i);
    check_numel(numels[i], i);
    check_ptr(row[kAdamParam], numels[i], i, "param");
    check_ptr(row[kAdamGrad], numels[i], i, "grad");
    check_ptr(row[kAdamExpAvg], numels[i], i, "exp_avg");
    check_ptr(row[kAdamExpAvgSq], numels[i], i, "exp_avg_sq");
    if (flags[i] & kAmsgrad) check_ptr(row[kAdamMaxExpAvgSq], numels[i], i, "max_exp_avg_sq");
    if (row[kAdamStep] == 0) throw std::invalid_argument("tensor " + std::to_string(i) + ": null step pointer");
  };
  const auto fill = [&](int64_t lo, int64_t hi, std::deque<AdamSet>& sets, AdamTensor* tensors) {
    double last_step = 0.0;
    for (int64_t i = lo; i < std::min(lo + kStepAhead, hi); ++i)
      prefetch(reinterpret_cast<const char*>(static_cast<uintptr_t>(ptrs[i * kAdamPtrs + kAdamStep])));
    for (int64_t i = lo; i < hi; ++i) {
      if (i + kStepAhead < hi)
        prefetch(reinterpret_cast<const char*>(static_cast<uintptr_t>(ptrs[(i + kStepAhead) * kAdamPtrs + kAdamStep])));
      const uint64_t* row = ptrs + i * kAdamPtrs;
      const double* h = hyper + i * kAdamHypers;
      const int32_t fl = flags[i];
      // The step counter is a float32 scalar tensor, as torch keeps it.
      auto* step_ptr = reinterpret_cast<float*>(static_cast<uintptr_t>(row[kAdamStep]));
      *step_ptr += 1.0f;
      const double step = static_cast<double>(*step_ptr);
      AdamTensor& t = tensors[i];
      t.ptrs = row;
      t.dtype = dtypes[i];
      const bool wd = h[kAdamWd] != 0.0;
      t.mode = ((wd && !(fl & kDecoupledWd)) ? kAdamModeL2 : 0) | ((wd && (fl & kDecoupledWd)) ? kAdamModeDecoupled : 0) |
               ((fl & kAmsgrad) ? kAdamModeAmsgrad : 0) | (grad_scale > 0 ? kAdamModeScale : 0) |
               (grad_mult != 1.0 ? kAdamModeMult : 0);
      // the previous tensor's inputs (a group's tensors, one step count): the same scalars
      if (i == lo || fl != flags[i - 1] || step != last_step || !same_row(h, h - kAdamHypers, kAdamHypers))
        sets.push_back({adam_scalars<float>(h, fl, step, grad_scale, grad_mult),
                        adam_scalars<double>(h, fl, step, grad_scale, grad_mult)});
      t.s = &sets.back();
      last_step = step;
    }
  };
  const auto prep = prepare_step<AdamTensor, AdamSet>(n, numels, threads, validate, fill);
  const Kernels* k = load_active();
  last_team = k->adam(prep.tensors.get(), prep.chunks.get(), prep.n_chunks,
                      team_size(threads, static_cast<std::size_t>(prep.n_chunks)));
}

void sgd_step_cpu(int64_t n, const uint64_t* ptrs, const int64_t* numels, const int32_t* dtypes,
                  const int32_t* flags, const double* hyper, double grad_scale, double grad_mult,
                  int threads) {
  const auto validate = [&](int64_t i) {
    const uint64_t* row = ptrs + i * kSgdPtrs;
    check_dtype(dtypes[i], i);
    check_numel(numels[i], i);
    check_ptr(row[kSgdParam], numels[i], i, "param");
    check_ptr(row[kSgdGrad], numels[i], i, "grad");
    if (hyper[i * kSgdHypers + kSgdMomentum] != 0.0) check_ptr(row[kSgdBuf], numels[i], i, "momentum_buffer");
  };
  const auto fill = [&](int64_t lo, int64_t hi, std::deque<SgdSet>& sets, SgdTensor* tensors) {
    for (int64_t i = lo; i < hi; ++i) {
      const double* h = hyper + i * kSgdHypers;
      const bool momentum = h[kSgdMomentum] != 0.0;
      SgdTensor& t = tensors[i];
      t.ptrs = ptrs + i * kSgdPtrs;
      t.dtype = dtypes[i];
      t.mode = (h[kSgdWd] != 0.0 ? kSgdModeWd : 0) | (momentum ? kSgdModeMomentum : 0) |
               ((momentum && (flags[i] & kNesterov)) ? kSgdModeNesterov : 0) | (grad_scale > 0 ? kSgdModeScale : 0) |
               (grad_mult != 1.0 ? kSgdModeMult : 0);
      if (i == lo || flags[i] != flags[i - 1] || !same_row(h, h - kSgdHypers, kSgdHypers))
        sets.push_back({sgd_scalars<float>(h, flags[i], grad_scale, grad_mult),
                        sgd_scalars<double>(h, flags[i], grad_scale, grad_mult)});
      t.s = &sets.back();
    }
  };
  const auto prep = prepare_step<SgdTensor, SgdSet>(n, numels, threads, validate, fill);
  const Kernels* k = load_active();
  last_team = k->sgd(prep.tensors.get(), prep.chunks.get(), prep.n_chunks,
                     team_size(threads, static_cast<std::size_t>(prep.n_chunks)));
}

GradNorm grad_norm_cpu(int64_t n, const uint64_t* ptrs, const int64_t* numels, const int32_t* dtypes, bool inf,
                       int threads) {
  std::vector<NormTensor> tensors(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    check_dtype(dtypes[i], i);
    check_numel(numels[i], i);
    check_ptr(ptrs[i], numels[i], i, "grad");
    tensors[static_cast<std::size_t>(i)] = {ptrs[i], dtypes[i]};
  }
  const std::vector<Chunk> chunks = make_chunks(numels, n);
  std::vector<NormPartial> partials(chunks.size());
  const Kernels* k = load_active();
  last_team = k->norm(tensors.data(), chunks.data(), static_cast<int64_t>(chunks.size()), inf, partials.data(),
                      team_size(threads, chunks.size()));
  // The chunks depend on the sizes only, and their partials are combined in chunk order:
  // the same result for any number of threads.
  double total = 0.0;
  for (const NormPartial& part : partials)
    total = inf ? (part.value != part.value || total < part.value ? part.value : total) : total + part.value;
  // an inf or NaN gradient makes the sum of squares (or the maximum) inf or NaN
  return {inf ? total : std::sqrt(total), !std::isfinite(total)};
}

}  // namespace fastopt
