// How the threads of a chunk loop share the chunks: each takes a contiguous run of about equal
// cost (Chunk::upto, chunking.h), so that short chunks gathered in one part of the list do
// not leave the rest to one thread.
#pragma once

#include <cstdint>

#include "step_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastopt {
namespace {  // internal linkage: one copy per instruction-set build (see step_kernels.h)

// The calling thread's number in its OpenMP team and the team's size ({0, 1} outside a
// parallel region or without OpenMP).
struct TeamPosition {
  int thread;
  int size;
};
inline TeamPosition team_position() {
#ifdef _OPENMP
  return {omp_get_thread_num(), omp_get_num_threads()};
#else
  return {0, 1};
#endif
}

// The first of `n` chunks that thread `t` of a team of `team` takes: the chunks whose middle
// lies at or past t / team of the total cost go to thread t or later (thread `team`: n).
inline int64_t first_chunk_of(const Chunk* chunks, int64_t n, int t, int team) {
  if (t <= 0 || n == 0) return 0;
  if (t >= team) return n;
  const int64_t total = chunks[n - 1].upto;
  int64_t lo = 0, hi = n;  // the first c with 2 * middle(c) * team >= 2 * t * total
  while (lo < hi) {
    const int64_t c = lo + (hi - lo) / 2;
    const int64_t twice_middle = (c > 0 ? chunks[c - 1].upto : 0) + chunks[c].upto;
    if (twice_middle * team >= 2 * total * t) hi = c; else lo = c + 1;
  }
  return lo;
}

}  // namespace
}  // namespace fastopt
