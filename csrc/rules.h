// Rule assignment and signature deduplication for paramwise_cfg.
//
// One Python walk of the model produces, per parameter, its full name
// (f"{prefix}.{name}") and a bit set of facts about it and its module. Here
// every parameter gets the rule that decides its lr and weight decay, exactly
// as mmcv 1.3-1.7.2 / mmengine 0.7.0-0.10.7 DefaultOptimizerConstructor order them, and
// equal rule outcomes are deduplicated into signatures in first-seen order.
// Python turns each (few) signature into hyperparameters and merges equal ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastopt {

// Facts about one parameter (bit set; exported as _C.PARAM_FLAGS, mirrored in fastopt/_rules.py).
enum ParamFlag : uint32_t {
  kIsBias = 1u << 0,        // local name == "bias"
  kIsNorm = 1u << 1,        // owner is a norm layer
  kIsDwconv = 1u << 2,      // owner is Conv2d with in_channels == groups
  kIsConv2d = 1u << 3,      // owner is a Conv2d
  kInDcn = 1u << 4,         // owner's parent is an mmcv.ops DCN module
  kConvOffset = 1u << 5,    // owner's prefix contains "conv_offset"
  kIsFlat = 1u << 6,        // ndim == 1
  kFrozen = 1u << 7,        // requires_grad is False
  kDuplicate = 1u << 8,     // the same tensor was already visited
};

// What the paramwise_cfg sets (bit set; exported as _C.CONFIG_FLAGS, mirrored in fastopt/_rules.py).
enum ConfigFlag : uint32_t {
  kMmengine = 1u << 0,      // mmengine semantics (else mmcv 1.x)
  kHasWd = 1u << 1,         // optimizer cfg has weight_decay
  kBypassDup = 1u << 2,     // bypass_duplicate
  kBiasLr = 1u << 3,        // bias_lr_mult given (mmcv: always applies)
  kBiasDecay = 1u << 4,
  kNormDecay = 1u << 5,
  kDwconvDecay = 1u << 6,
  kFlatDecay = 1u << 7,     // mmengine only
  kDcnLr = 1u << 8,         // dcn_offset_lr_mult given
  kKeepFrozen = 1u << 9,    // mmengine <= 0.10.3: a frozen parameter is kept as a bare group
                            // (after the bypass_duplicate test); mmcv keeps them regardless
};

enum LrRule : int32_t { kLrNone = 0, kLrCustom, kLrBias, kLrDcnOffset };
enum WdRule : int32_t { kWdNone = 0, kWdCustom, kWdNorm, kWdBias, kWdDwconv, kWdFlat };
enum Kind : int32_t {
  kTrainable = 0,   // gets a group with the rule's overrides
  kFrozenKept,      // frozen, in a group with no overrides (mmcv; mmengine <= 0.10.3)
  kSkipped,         // not in any group (mmengine >= 0.10.4 frozen, bypassed duplicate)
  kDuplicateError,  // would be added twice: the reference lets torch raise
};

// The outcome of the rules for one parameter.
struct Signature {
  int32_t key;   // winning custom key index, -1 if none
  int32_t lr;    // LrRule
  int32_t wd;    // WdRule
  int32_t kind;  // Kind
  bool operator==(const Signature& o) const {
    return key == o.key && lr == o.lr && wd == o.wd && kind == o.kind;
  }
};

// Rules for one parameter given its winning custom key (-1 if none).
Signature decide(int32_t key, uint32_t flags, uint32_t config);

// Deduplicated rule outcomes: `ids[i]` indexes `table` for parameter i;
// table rows are in order of first appearance.
struct Assignment {
  std::vector<int32_t> ids;
  std::vector<Signature> table;
};

Assignment assign(const std::vector<std::string>& names, const uint32_t* flags,
                  const std::vector<std::string>& keys, uint32_t config);

}  // namespace fastopt
