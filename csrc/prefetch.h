// A software prefetch the optimizer keeps.
#pragma once

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif

namespace fastopt {
namespace {  // internal linkage: each instruction-set build keeps its own copy (see step_kernels.h)

// Prefetches the cache line of p into every cache level (p may be null or anything: a prefetch
// never faults). An instruction the optimizer must keep: GCC takes a function whose only effect
// is __builtin_prefetch for one without effects (const) and deletes the calls to it, so the
// prefetching of a helper like this one would silently vanish.
inline void prefetch(const void* p) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  asm volatile("prefetcht0 (%0)" : : "r"(p));
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
  asm volatile("prfm pldl1keep, [%0]" : : "r"(p));
#else
  __builtin_prefetch(p);
#endif
}

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
// Whether this x86 CPU reports PREFETCHW (CPUID 0x80000001, ECX bit 8), read once.
inline bool has_prefetchw() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(0x80000001u, &a, &b, &c, &d) != 0 && (c & (1u << 8)) != 0;
  }();
  return yes;
}
#endif

// The same with intent to write (the line fetched for ownership: a following atomic update of it
// needs no second request); a plain prefetch where the CPU has no such instruction.
inline void prefetch_for_write(const void* p) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  if (has_prefetchw())
    asm volatile("prefetchw (%0)" : : "r"(p));
  else
    prefetch(p);
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
  asm volatile("prfm pstl1keep, [%0]" : : "r"(p));
#else
  __builtin_prefetch(p, 1);
#endif
}

}  // namespace
}  // namespace fastopt
