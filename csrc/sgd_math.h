// SGD element update, mirroring torch.optim.sgd._single_tensor_sgd (torch 2.13),
// math in opmath_t O:
//
//   g   = grad / grad_scale               (only with a GradScaler; stored back)
//   g   = maximize ? -g : g
//   g   = g + wd * p                      (wd != 0)
//   buf = first ? g : buf * momentum + (1 - dampening) * g      (momentum != 0)
//   g   = nesterov ? g + momentum * buf : buf                   (momentum != 0)
//   p   = p - lr * g
//
// With bf16/fp16 storage each intermediate is rounded where torch's tensor ops
// would round it (round_to).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "step_kernels.h"

namespace fastopt {
namespace {  // internal linkage: one copy per instruction-set build

template <typename S, bool kWd, bool kMomentum, bool kNesterov, bool kScale>
void sgd_kernel(S* __restrict p, S* __restrict g, S* __restrict buf, int64_t begin, int64_t end,
                const SgdScalars<typename OpMath<S>::type>& s) {
  using O = typename OpMath<S>::type;
  const bool first = s.first;
  for (int64_t i = begin; i < end; ++i) {
    O gi = load<O>(g[i]);
    if constexpr (kScale) {
      gi = gi / s.grad_scale;
      g[i] = store<S>(gi);
    }
    gi = gi * s.sign;
    O pi = load<O>(p[i]);
    if constexpr (kWd) gi = round_to<S>(gi + s.wd * pi);
    if constexpr (kMomentum) {
      // Rounded to storage after each op (mul_, add_), as torch's tensor ops do.
      const O bi = first ? gi : round_to<S>(round_to<S>(load<O>(buf[i]) * s.momentum) + s.one_minus_dampening * gi);
      buf[i] = store<S>(bi);
      if constexpr (kNesterov) gi = round_to<S>(gi + s.momentum * bi);
      else gi = bi;
    }
    pi = pi + s.neg_lr * gi;
    p[i] = store<S>(pi);
  }
}

}  // namespace
}  // namespace fastopt
