#include "matcher.h"

#include <algorithm>
#include <numeric>
#include <queue>

namespace fastopt {

std::size_t utf8_length(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0u) != 0x80u;  // skip continuation bytes
  return n;
}

KeyMatcher::KeyMatcher(const std::vector<std::string>& keys) {
  const auto n_keys = static_cast<int32_t>(keys.size());
  // Priority: longest first, then alphabetical (the reference sorts
  // alphabetically, then stably by length in reverse).
  key_of_rank_.resize(keys.size());
  std::iota(key_of_rank_.begin(), key_of_rank_.end(), 0);
  std::vector<std::size_t> lengths(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) lengths[i] = utf8_length(keys[i]);
  std::sort(key_of_rank_.begin(), key_of_rank_.end(), [&](int32_t a, int32_t b) {
    const auto ua = static_cast<std::size_t>(a), ub = static_cast<std::size_t>(b);
    if (lengths[ua] != lengths[ub]) return lengths[ua] > lengths[ub];
    return keys[ua] < keys[ub];
  });
  rank_.assign(keys.size(), 0);
  for (int32_t r = 0; r < n_keys; ++r) rank_[static_cast<std::size_t>(key_of_rank_[static_cast<std::size_t>(r)])] = r;

  // Trie: -1 marks a missing edge until the failure links fill it in.
  delta_.assign(kAlphabet, -1);
  best_.assign(1, kNone);
  for (int32_t k = 0; k < n_keys; ++k) {
    int32_t state = 0;
    for (unsigned char c : keys[static_cast<std::size_t>(k)]) {
      auto& next = delta_[static_cast<std::size_t>(state) * kAlphabet + c];
      if (next < 0) {
        next = static_cast<int32_t>(best_.size());
        best_.push_back(kNone);
        delta_.resize(delta_.size() + kAlphabet, -1);
      }
      state = delta_[static_cast<std::size_t>(state) * kAlphabet + c];
    }
    auto& b = best_[static_cast<std::size_t>(state)];
    b = std::min(b, rank_[static_cast<std::size_t>(k)]);
  }

  // Breadth-first: complete the DFA and fold each state's failure chain
  // into best_, so scanning needs one table lookup per byte.
  std::vector<int32_t> fail(best_.size(), 0);
  std::queue<int32_t> queue;
  for (int c = 0; c < kAlphabet; ++c) {
    auto& next = delta_[static_cast<std::size_t>(c)];
    if (next < 0) {
      next = 0;
    } else {
      fail[static_cast<std::size_t>(next)] = 0;
      queue.push(next);
    }
  }
  while (!queue.empty()) {
    const int32_t s = queue.front();
    queue.pop();
    const auto su = static_cast<std::size_t>(s);
    best_[su] = std::min(best_[su], best_[static_cast<std::size_t>(fail[su])]);
    for (int c = 0; c < kAlphabet; ++c) {
      auto& next = delta_[su * kAlphabet + static_cast<std::size_t>(c)];
      const int32_t via_fail = delta_[static_cast<std::size_t>(fail[su]) * kAlphabet + static_cast<std::size_t>(c)];
      if (next < 0) {
        next = via_fail;
      } else {
        fail[static_cast<std::size_t>(next)] = via_fail;
        queue.push(next);
      }
    }
  }
}

int32_t KeyMatcher::best_match(const std::string& name) const {
  if (key_of_rank_.empty()) return -1;
  int32_t state = 0;
  int32_t best = best_[0];  // the empty key matches every name
  for (unsigned char c : name) {
    state = delta_[static_cast<std::size_t>(state) * kAlphabet + c];
    best = std::min(best, best_[static_cast<std::size_t>(state)]);
  }
  return best == kNone ? -1 : key_of_rank_[static_cast<std::size_t>(best)];
}

}  // namespace fastopt
