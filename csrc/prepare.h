// A step's per-tensor preparation before its chunk loop: every row validated, then the
// records, scalar sets and chunks filled, on the calling thread or, for many tensors, on the
// team (step_cpu.cpp; in a header of its own for the native tests).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <new>
#include <vector>

#include "chunking.h"
#include "partition.h"
#include "step_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastopt {

// The team a call's loop asks for: `threads` (<= 0: OpenMP's default), at most one per chunk.
inline int team_size(int threads, std::size_t n_chunks) {
#ifdef _OPENMP
  const int want = threads > 0 ? threads : omp_get_max_threads();
#else
  const int want = threads > 0 ? threads : 1;
#endif
  const std::size_t cap = std::max<std::size_t>(n_chunks, 1);
  return static_cast<std::size_t>(want) < cap ? want : static_cast<int>(cap);
}

// From how many tensors a step prepares them (validation, step counters, records, chunks) on
// its team rather than on the calling thread alone: the step counters and pointer rows of many
// small tensors are cold memory, read faster by two threads, while waking the team for a few
// tensors costs more than it saves.
inline constexpr int64_t kTeamPrepare = 1024;

// Runs body(s) for every s < segments on a team of `team` threads (1: on the calling thread).
// body must not throw.
template <typename Body>
void for_segments(int segments, int team, const Body& body) {
  if (team <= 1) {
    for (int s = 0; s < segments; ++s) body(s);
    return;
  }
#pragma omp parallel num_threads(team)
  {
    const TeamPosition at = team_position();
    for (int s = at.thread; s < segments; s += at.size) body(s);
  }
}

// What a step hands its kernel: a record per tensor, the scalar sets they point into (a list
// per segment), and the chunks.
template <typename Tensor, typename Set>
struct Prepared {
  std::unique_ptr<Tensor[]> tensors;
  std::vector<std::deque<Set>> sets;  // (a deque's elements stay where they are as it grows)
  std::unique_ptr<Chunk[]> chunks;
  int64_t n_chunks = 0;
};

// Prepares a step over n tensors, cut into contiguous segments, one per thread of the team
// (the calling thread alone below kTeamPrepare tensors): validate(i) throws what is wrong with
// row i; only once every row passed, fill(lo, hi, sets, tensors) fills the records of rows
// [lo, hi) with scalar sets kept in `sets`, and the chunks are laid out in row order, as
// make_chunks lays them (costs included). Throws row errors for the first bad row (nothing written then), or
// bad_alloc when a set list could not grow (the rows filled by then have stepped counters).
template <typename Tensor, typename Set, typename Validate, typename Fill>
Prepared<Tensor, Set> prepare_step(int64_t n, const int64_t* numels, int threads, const Validate& validate,
                                   const Fill& fill) {
  const int team = n >= kTeamPrepare ? team_size(threads, static_cast<std::size_t>(n)) : 1;
  const int segments = std::max(team, 1);  // (fixed here: the segments do not depend on the team OpenMP gives)
  const auto lo = [&](int s) { return n * s / segments; };
  const auto at = [](int s) { return static_cast<std::size_t>(s); };
  // per segment: its first bad row (n: none), then the chunks and their cost before it
  std::vector<int64_t> bad(at(segments), n), offsets(at(segments) + 1, 0), costs(at(segments) + 1, 0);
  for_segments(segments, team, [&](int s) {
    int64_t count = 0, cost = 0;
    for (int64_t i = lo(s); i < lo(s + 1); ++i) {
      try {
        validate(i);
      } catch (...) {
        bad[at(s)] = i;
        return;
      }
      count += chunks_of(numels[i]);
      cost += cost_of(numels[i]);
    }
    offsets[at(s) + 1] = count;
    costs[at(s) + 1] = cost;
  });
  const int64_t first_bad = *std::min_element(bad.begin(), bad.end());
  if (first_bad < n) validate(first_bad);  // throws that row's error
  for (int s = 0; s < segments; ++s) {
    offsets[at(s) + 1] += offsets[at(s)];
    costs[at(s) + 1] += costs[at(s)];
  }
  Prepared<Tensor, Set> out;
  out.n_chunks = offsets.back();
  out.tensors.reset(new Tensor[static_cast<std::size_t>(std::max<int64_t>(n, 1))]);
  out.chunks.reset(new Chunk[static_cast<std::size_t>(std::max<int64_t>(out.n_chunks, 1))]);
  out.sets.resize(static_cast<std::size_t>(segments));
  // Validated: from here on only a set list's growth can throw.
  std::atomic<bool> failed{false};
  for_segments(segments, team, [&](int s) {
    try {
      fill(lo(s), lo(s + 1), out.sets[at(s)], out.tensors.get());
    } catch (...) {
      failed = true;
      return;
    }
    lay_chunks(numels, lo(s), lo(s + 1), out.chunks.get() + offsets[at(s)], costs[at(s)]);
  });
  if (failed) throw std::bad_alloc();
  return out;
}

}  // namespace fastopt
