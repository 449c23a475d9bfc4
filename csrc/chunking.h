// Partition of many tensors into equal-size chunks (apex multi_tensor_apply style).
//
// All tensors of a step are cut into chunks of at most kChunkElems elements and
// one OpenMP loop runs over every chunk, so a few huge tensors and thousands of
// tiny ones balance across cores alike.
#pragma once

#include <cstdint>
#include <vector>

#include "step_kernels.h"

namespace fastopt {

// ~32K elements: large enough to amortise loop setup, small enough that a
// 2-core machine gets many chunks from a single big tensor.
constexpr int64_t kChunkElems = 32768;

// The chunks of a tensor of `numel` elements.
inline int64_t chunks_of(int64_t numel, int64_t chunk = kChunkElems) { return numel > 0 ? (numel + chunk - 1) / chunk : 0; }

// Writes the chunks of tensors [from, to) at `out`, in order; returns the end of what it wrote.
inline Chunk* lay_chunks(const int64_t* numels, int64_t from, int64_t to, Chunk* out, int64_t chunk = kChunkElems) {
  for (int64_t t = from; t < to; ++t)
    for (int64_t b = 0; b < numels[t]; b += chunk) *out++ = {t, b, b + chunk < numels[t] ? b + chunk : numels[t]};
  return out;
}

inline std::vector<Chunk> make_chunks(const int64_t* numels, int64_t n, int64_t chunk = kChunkElems) {
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) total += chunks_of(numels[t], chunk);
  std::vector<Chunk> out(static_cast<std::size_t>(total));
  lay_chunks(numels, 0, n, out.data(), chunk);
  return out;
}

}  // namespace fastopt
