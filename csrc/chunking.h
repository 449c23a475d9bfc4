// Partition of many tensors into equal-size chunks (apex multi_tensor_apply style).
//
// All tensors of a step are cut into chunks of at most kChunkElems elements and
// one OpenMP loop runs over every chunk. Each thread takes a contiguous run of
// chunks of equal cost (elements, plus a fixed cost per chunk), not of equal
// count: the last chunk of every tensor is short, and a list where small tensors
// gather in one half would otherwise leave the other half's thread with more of
// the elements.
#pragma once

#include <cstdint>
#include <vector>

#include "step_kernels.h"

namespace fastopt {

// ~32K elements: large enough to amortise loop setup, small enough that a
// 2-core machine gets many chunks from a single big tensor.
constexpr int64_t kChunkElems = 32768;

// What starting on a chunk costs a thread, in elements streamed: a small tensor's arrays
// lie elsewhere in memory than the last one's, and their first lines come before any
// prefetcher runs ahead (about 200 elements' time per chunk on the machines measured).
constexpr int64_t kChunkStartCost = 256;

// The chunks of a tensor of `numel` elements.
inline int64_t chunks_of(int64_t numel, int64_t chunk = kChunkElems) { return numel > 0 ? (numel + chunk - 1) / chunk : 0; }

// What the chunks of a tensor of `numel` elements cost in all (see Chunk::upto).
inline int64_t cost_of(int64_t numel, int64_t chunk = kChunkElems) {
  return numel > 0 ? numel + chunks_of(numel, chunk) * kChunkStartCost : 0;
}

// Writes the chunks of tensors [from, to) at `out`, in order, the cost of the chunks before
// them being `before`; returns the end of what it wrote.
inline Chunk* lay_chunks(const int64_t* numels, int64_t from, int64_t to, Chunk* out, int64_t before = 0,
                         int64_t chunk = kChunkElems) {
  for (int64_t t = from; t < to; ++t)
    for (int64_t b = 0; b < numels[t]; b += chunk) {
      const int64_t e = b + chunk < numels[t] ? b + chunk : numels[t];
      before += e - b + kChunkStartCost;
      *out++ = {t, b, e, before};
    }
  return out;
}

inline std::vector<Chunk> make_chunks(const int64_t* numels, int64_t n, int64_t chunk = kChunkElems) {
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) total += chunks_of(numels[t], chunk);
  std::vector<Chunk> out(static_cast<std::size_t>(total));
  lay_chunks(numels, 0, n, out.data(), 0, chunk);
  return out;
}

}  // namespace fastopt
