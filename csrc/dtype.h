// Storage types the step kernels take; bindings.cpp exports the codes as _C.DTYPE_CODES.
// Math runs in opmath_t: float for fp32/bf16/fp16 storage, double for fp64.
#pragma once

#include <cstdint>

namespace fastopt {

enum DType : int32_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3, kNumDTypes = 4 };

// The conversion helpers and kernels are compiled once per instruction set
// (step_kernels.cpp); internal linkage keeps each copy to its own object file.
namespace {

// bfloat16 as raw bits; conversion rounds to nearest even like torch (NaN stays NaN).
struct BFloat16 {
  uint16_t bits;
};

// IEEE half as raw bits, converted by hand: _Float16 arithmetic may keep excess
// precision, which would skip the roundings torch performs.
struct Float16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
}

inline float to_float(BFloat16 v) { return bits_to_float(static_cast<uint32_t>(v.bits) << 16); }

inline BFloat16 from_float_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{0x7fc0};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}

inline float to_float(Float16 v) {
  const uint32_t h = v.bits;
  uint32_t u = (h & 0x7fffu) << 13;          // exponent and mantissa in place
  const uint32_t exp = u & (0x7c00u << 13);
  u += (127u - 15u) << 23;                    // rebias the exponent
  float f;
  if (exp == (0x7c00u << 13)) {               // inf / NaN
    f = bits_to_float(u + ((128u - 16u) << 23));
  } else if (exp == 0) {                      // zero / subnormal: renormalise via float arithmetic
    f = bits_to_float(u + (1u << 23)) - bits_to_float(113u << 23);
  } else {
    f = bits_to_float(u);
  }
  return bits_to_float(float_to_bits(f) | ((h & 0x8000u) << 16));
}

inline Float16 from_float_fp16(float value) {
  uint32_t f = float_to_bits(value);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint32_t h;
  if (f >= 0x47800000u) {                     // overflow to inf, or NaN
    h = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (f < 0x38800000u) {               // half subnormal or zero: round by float addition
    const uint32_t magic = 126u << 23;        // 0.5f: aligns the half subnormal ulp
    h = float_to_bits(bits_to_float(f) + bits_to_float(magic)) - magic;
  } else {                                    // normal: rebias and round to nearest even
    const uint32_t odd = (f >> 13) & 1u;
    f += ((15u - 127u) << 23) + 0xfffu + odd;
    h = f >> 13;
  }
  return Float16{static_cast<uint16_t>(h | (sign >> 16))};
}

// Load storage as opmath, store opmath as storage.
template <typename O, typename S>
inline O load(S v) { return static_cast<O>(v); }
template <>
inline float load<float, BFloat16>(BFloat16 v) { return to_float(v); }
template <>
inline float load<float, Float16>(Float16 v) { return to_float(v); }

template <typename S, typename O>
inline S store(O v) { return static_cast<S>(v); }
template <>
inline BFloat16 store<BFloat16, float>(float v) { return from_float_bf16(v); }
template <>
inline Float16 store<Float16, float>(float v) { return from_float_fp16(v); }

// Round an opmath value to storage precision and back: where torch runs an
// element-wise op on a low-precision tensor, the result is rounded once per op.
// The identity for float/double storage.
template <typename S, typename O>
inline O round_to(O v) { return load<O>(store<S>(v)); }

template <typename S> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

inline float sqrt_op(float v) { return __builtin_sqrtf(v); }
inline double sqrt_op(double v) { return __builtin_sqrt(v); }
// a * b + c rounded once, where torch's CPU kernels fuse it (add with alpha, lerp,
// addcmul). Correctly rounded in every build, so results stay identical across ISAs.
inline float fma_op(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline double fma_op(double a, double b, double c) { return __builtin_fma(a, b, c); }
// NaN-propagating max, as torch.maximum.
template <typename O> inline O max_op(O a, O b) {
  const O m = a < b ? b : a;  // a NaN: m is a
  return b != b ? b : m;
}
template <typename O> inline O abs_op(O a) { return a < O(0) ? -a : a; }

// The gradient a step reads: unscaled under a GradScaler, multiplied by the clip coefficient
// (rounded to storage as torch's in-place mul_ rounds it), then negated for maximize. The
// gradient tensor is written only under a GradScaler (below); without one it is left as it was.
template <bool kScale, bool kMult, typename O, typename S>
inline O step_grad(S& g, O grad_scale, O grad_mult, O sign) {
  O gi = load<O>(g);
  if constexpr (kScale) gi = gi / grad_scale;
  if constexpr (kMult) gi = round_to<S>(gi * grad_mult);
  // Under a loss scale the gradient goes back unscaled, and clipped when there is a
  // coefficient: what GradScaler's unscale_ and an in-place clip leave in it (and what torch's
  // fused kernels store when the coefficient is folded into their grad_scale).
  if constexpr (kScale) g = store<S>(gi);
  return gi * sign;
}

}  // namespace

}  // namespace fastopt
