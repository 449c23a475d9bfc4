// Adam / AdamW element update, mirroring torch.optim.adam._single_tensor_adam
// (torch 2.13, capturable=False, differentiable=False), math in opmath_t O:
//
//   g  = grad / grad_scale                 (only with a GradScaler)
//   g  = g * grad_mult                     (only when clipping: the clip coefficient)
//   grad = g                               (only with a GradScaler: unscaled, and clipped if clipping)
//   g  = maximize ? -g : g
//   p  = p * (1 - lr * wd)                 (decoupled, AdamW)   |   g = fma(wd, p, g)   (L2, Adam)
//   m  = lerp(m, g, 1 - beta1)             fma(w, g - m, m), or fma(-(g - m), 1 - w, g) for w >= 0.5
//   v  = fma((1 - beta2) * g, g, v * beta2)                      (mul_, then addcmul_)
//   vmax = max(vmax, v); v_hat = amsgrad ? vmax : v
//   p  = p + (-(lr / (1 - beta1^t)) * m) / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)   (addcdiv_)
//
// fma marks where torch's CPU kernels round a * b + c once. Against torch's single-tensor
// step (tests/test_optim.py): in fp32, m, v and vmax are bit-identical (without L2 decay,
// whose g reads p) and p differs in under 0.3% of elements, by an ulp or two (the test allows a
// relative 4 * eps), because torch's CPU sqrt is not correctly rounded and this one is; with
// bf16/fp16 storage under 0.1% of elements differ, by at most 16 ulps (torch's scalar tail
// rounds every intermediate). Every instruction-set build and every thread count gives the
// same bits as every other. Per-tensor scalars are computed once per step in double (as
// Python does) and rounded to O, like torch's scalar arguments; add's alpha is rounded to
// the storage type, as torch does for bf16/fp16. With bf16/fp16 storage every intermediate
// torch materialises as a tensor is rounded to storage precision at the same point
// (round_to).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "step_kernels.h"

namespace fastopt {
namespace {  // internal linkage: one copy per instruction-set build

template <typename S, bool kL2, bool kDecoupled, bool kAmsgrad, bool kScale, bool kMult, bool kSmallWeight>
void adam_loop(S* __restrict p, S* __restrict g, S* __restrict m, S* __restrict v, S* __restrict vmax,
               int64_t begin, int64_t end, const AdamScalars<typename OpMath<S>::type>& s) {
  using O = typename OpMath<S>::type;
  const O w = s.lerp_weight, one_minus_w = O(1) - s.lerp_weight;
  const O l2 = round_to<S>(s.l2);  // add's alpha, in storage precision
  for (int64_t i = begin; i < end; ++i) {
    O gi = step_grad<kScale, kMult>(g[i], s.grad_scale, s.grad_mult, s.sign);
    O pi = load<O>(p[i]);
    if constexpr (kDecoupled) pi = round_to<S>(pi * s.decay);
    if constexpr (kL2) gi = round_to<S>(fma_op(l2, pi, gi));
    O mi = load<O>(m[i]);
    // torch's lerp switches formula at |weight| = 0.5 for accuracy.
    if constexpr (kSmallWeight) mi = round_to<S>(fma_op(w, gi - mi, mi));
    else mi = round_to<S>(fma_op(-(gi - mi), one_minus_w, gi));
    O vi = round_to<S>(load<O>(v[i]) * s.beta2);
    vi = round_to<S>(fma_op(s.one_minus_beta2 * gi, gi, vi));
    O vh = vi;
    if constexpr (kAmsgrad) {
      vh = max_op(load<O>(vmax[i]), vi);
      vmax[i] = store<S>(vh);
    }
    const O denom = round_to<S>(round_to<S>(round_to<S>(sqrt_op(vh)) / s.bc2_sqrt) + s.eps);
    pi = pi + (s.neg_step_size * mi) / denom;
    p[i] = store<S>(pi);
    m[i] = store<S>(mi);
    v[i] = store<S>(vi);
  }
}

template <typename S, bool kL2, bool kDecoupled, bool kAmsgrad, bool kScale, bool kMult>
void adam_kernel(S* p, S* g, S* m, S* v, S* vmax, int64_t begin, int64_t end,
                 const AdamScalars<typename OpMath<S>::type>& s) {
  using O = typename OpMath<S>::type;
  if (abs_op(s.lerp_weight) < O(0.5))
    adam_loop<S, kL2, kDecoupled, kAmsgrad, kScale, kMult, true>(p, g, m, v, vmax, begin, end, s);
  else
    adam_loop<S, kL2, kDecoupled, kAmsgrad, kScale, kMult, false>(p, g, m, v, vmax, begin, end, s);
}

}  // namespace
}  // namespace fastopt
