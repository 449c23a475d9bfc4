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

inline std::vector<Chunk> make_chunks(const int64_t* numels, int64_t n, int64_t chunk = kChunkElems) {
  std::vector<Chunk> out;
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) total += (numels[t] + chunk - 1) / chunk;
  out.reserve(static_cast<std::size_t>(total));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < numels[t]; b += chunk)
      out.push_back({t, b, b + chunk < numels[t] ? b + chunk : numels[t]});
  return out;
}

}  // namespace fastopt
