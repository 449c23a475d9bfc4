#include "rules.h"

#include <unordered_map>

#include "matcher.h"

namespace fastopt {

namespace {

bool has(uint32_t bits, uint32_t flag) { return (bits & flag) != 0; }

int32_t lr_rule(uint32_t f, uint32_t c) {
  const bool mmengine = has(c, kMmengine);
  // mmcv applies the default multipliers (1.0); mmengine only given ones.
  int32_t rule = kLrNone;
  if (has(f, kIsBias) && !has(f, kIsNorm) && !has(f, kInDcn) && (!mmengine || has(c, kBiasLr)))
    rule = kLrBias;
  if (has(f, kConvOffset) && has(f, kInDcn) && has(f, kIsConv2d) && (!mmengine || has(c, kDcnLr)))
    rule = kLrDcnOffset;  // assigned after the bias rule, so it wins
  return rule;
}

int32_t wd_rule(uint32_t f, uint32_t c) {
  if (!has(c, kHasWd)) return kWdNone;
  if (!has(c, kMmengine)) {  // mmcv 1.x: norm, dwconv, bias; multipliers default 1.0
    if (has(f, kIsNorm)) return kWdNorm;
    if (has(f, kIsDwconv)) return kWdDwconv;
    if (has(f, kIsBias) && !has(f, kInDcn)) return kWdBias;
    return kWdNone;
  }
  // mmengine: norm, bias, dwconv, flat; a rule applies only if its multiplier is set.
  if (has(f, kIsNorm) && has(c, kNormDecay)) return kWdNorm;
  if (has(f, kIsBias) && !has(f, kInDcn) && has(c, kBiasDecay)) return kWdBias;
  if (has(f, kIsDwconv) && has(c, kDwconvDecay)) return kWdDwconv;
  if (has(f, kIsFlat) && !has(f, kInDcn) && has(c, kFlatDecay)) return kWdFlat;
  return kWdNone;
}

struct SignatureHash {
  std::size_t operator()(const Signature& s) const {
    auto h = static_cast<std::size_t>(s.key) * 1000003u;
    h ^= static_cast<std::size_t>(s.lr) << 8;
    h ^= static_cast<std::size_t>(s.wd) << 16;
    h ^= static_cast<std::size_t>(s.kind) << 24;
    return h;
  }
};

}  // namespace

Signature decide(int32_t key, uint32_t f, uint32_t c) {
  const bool mmengine = has(c, kMmengine);
  const bool dup = has(f, kDuplicate);
  const bool frozen = has(f, kFrozen);
  // mmcv tests requires_grad before duplicates (a frozen tied tensor is added
  // twice). mmengine tests duplicates first (bypass_duplicate skips a repeat),
  // then requires_grad: up to 0.10.3 a frozen tensor is kept as a bare group (so
  // a frozen repeat without bypass is added twice), from 0.10.4 on it is dropped.
  if (!mmengine && frozen)
    return {-1, kLrNone, kWdNone, dup ? kDuplicateError : kFrozenKept};
  const bool keep_frozen = has(c, kKeepFrozen);
  if (dup) {
    if (has(c, kBypassDup) || (frozen && !keep_frozen)) return {-1, kLrNone, kWdNone, kSkipped};
    return {-1, kLrNone, kWdNone, kDuplicateError};
  }
  if (frozen) return {-1, kLrNone, kWdNone, keep_frozen ? kFrozenKept : kSkipped};
  if (key >= 0)  // a custom key switches every other rule off
    return {key, kLrCustom, has(c, kHasWd) ? kWdCustom : kWdNone, kTrainable};
  return {-1, lr_rule(f, c), wd_rule(f, c), kTrainable};
}

Assignment assign(const std::vector<std::string>& names, const uint32_t* flags,
                  const std::vector<std::string>& keys, uint32_t config) {
  const KeyMatcher matcher(keys);
  Assignment out;
  out.ids.resize(names.size());
  std::unordered_map<Signature, int32_t, SignatureHash> seen;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const uint32_t f = flags[i];
    // Only trainable, first-visit tensors consult the custom keys.
    const bool plain = !has(f, kFrozen) && !has(f, kDuplicate);
    const Signature sig = decide(plain ? matcher.best_match(names[i]) : -1, f, config);
    auto it = seen.find(sig);
    if (it == seen.end()) {
      it = seen.emplace(sig, static_cast<int32_t>(out.table.size())).first;
      out.table.push_back(sig);
    }
    out.ids[i] = it->second;
  }
  return out;
}

}  // namespace fastopt
