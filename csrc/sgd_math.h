// SGD element update, mirroring torch.optim.sgd._single_tensor_sgd (torch 2.13),
// math in opmath_t O:
//
//   g   = grad / grad_scale               (only with a GradScaler)
//   g   = g * grad_mult                   (only when clipping: the clip coefficient)
//   grad = g                              (only with a GradScaler: unscaled, and clipped if clipping)
//   g   = maximize ? -g : g
//   g   = fma(wd, p, g)                   (wd != 0)
//   buf = first ? g : fma(1 - dampening, g, buf * momentum)     (momentum != 0)
//   g   = nesterov ? fma(momentum, buf, g) : buf                (momentum != 0)
//   p   = fma(-lr, g, p)
//
// Every fma is a torch add with alpha, which rounds a * b + c once (p and buf bit-identical
// to torch's in fp32/fp64, tests/test_optim.py; with bf16/fp16 storage under 0.1% of elements
// differ, by a few ulps, where torch's scalar tail rounds every intermediate) and takes alpha
// in storage precision (bf16/fp16 round it); buf * momentum
// is a mul_ by a full-precision scalar. With bf16/fp16 storage each intermediate is
// rounded where torch's tensor ops would round it (round_to).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "step_kernels.h"

namespace fastopt {
namespace {  // internal linkage: one copy per instruction-set build

template <typename S, bool kWd, bool kMomentum, bool kNesterov, bool kScale, bool kMult>
void sgd_kernel(S* __restrict p, S* __restrict g, S* __restrict buf, int64_t begin, int64_t end,
                const SgdScalars<typename OpMath<S>::type>& s) {
  using O = typename OpMath<S>::type;
  const bool first = s.first;
  // add's alphas, in storage precision
  const O wd = round_to<S>(s.wd), damp = round_to<S>(s.one_minus_dampening);
  const O mom_alpha = round_to<S>(s.momentum), neg_lr = round_to<S>(s.neg_lr);
  for (int64_t i = begin; i < end; ++i) {
    O gi = step_grad<kScale, kMult>(g[i], s.grad_scale, s.grad_mult, s.sign);
    O pi = load<O>(p[i]);
    if constexpr (kWd) gi = round_to<S>(fma_op(wd, pi, gi));
    if constexpr (kMomentum) {
      // Rounded to storage after each op (mul_, add_), as torch's tensor ops do.
      const O bi = first ? gi : round_to<S>(fma_op(damp, gi, round_to<S>(load<O>(buf[i]) * s.momentum)));
      buf[i] = store<S>(bi);
      if constexpr (kNesterov) gi = round_to<S>(fma_op(mom_alpha, bi, gi));
      else gi = bi;
    }
    pi = fma_op(neg_lr, gi, pi);
    p[i] = store<S>(pi);
  }
}

}  // namespace
}  // namespace fastopt
