// Aho–Corasick matcher over the custom_keys of a paramwise_cfg.
//
// For every parameter name it returns the custom key that mmcv/mmengine's
// DefaultOptimizerConstructor would pick: among the keys that occur as a
// substring of the name, the longest one (length in Unicode code points, as
// Python's len()), ties broken alphabetically (code point order). Names and
// keys are UTF-8; byte-wise matching and byte-wise comparison agree with code
// point semantics for valid UTF-8.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastopt {

class KeyMatcher {
 public:
  explicit KeyMatcher(const std::vector<std::string>& keys);

  // Index (into the constructor's `keys`) of the winning key, or -1.
  int32_t best_match(const std::string& name) const;

 private:
  static constexpr int32_t kNone = INT32_MAX;
  static constexpr int kAlphabet = 256;

  std::vector<int32_t> rank_;        // key index -> priority rank
  std::vector<int32_t> key_of_rank_; // priority rank -> key index
  std::vector<int32_t> delta_;       // full DFA: state * 256 + byte -> state
  std::vector<int32_t> best_;        // state -> best rank ending here (kNone)
};

// Number of Unicode code points in a UTF-8 string.
std::size_t utf8_length(const std::string& s);

}  // namespace fastopt
