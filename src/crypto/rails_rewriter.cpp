#include "crypto/rails_rewriter.h"

#include <algorithm>
#include <utility>

namespace rekey::crypto {

RailsRewriter::RailsRewriter(const std::map<uint32_t, uint32_t>* moves, RailsKeyLookup keys)
    : moves_(moves), keys_(std::move(keys)) {
  for (const auto& entry : *moves_) candidates_.push_back(entry.first);
  for (const auto& entry : *moves_) {
    if (std::find(candidates_.begin(), candidates_.end(), entry.second) == candidates_.end()) {
      candidates_.push_back(entry.second);
    }
  }
}

void RailsRewriter::RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) {
  for (size_t i = 0; i < count; ++i) Rewrite(values[i], &out[i]);
}

void RailsRewriter::Rewrite(const StoredValue& value, RewrittenValue* out) {
  out->failed_key.reset();
  out->detail.clear();
  std::string_view failure =
      message_.Parse(std::string_view(reinterpret_cast<const char*>(value.data), value.size));
  uint32_t key_id = 0;
  if (failure.empty()) failure = message_.Open(candidates_, keys_, &key_id);
  if (!failure.empty()) {
    out->outcome =
        failure == kRailsUnknownKeyClass ? RewriteOutcome::kKeyMissing : RewriteOutcome::kPoison;
    out->error_class = std::string(failure);
    if (failure == kRailsUnknownKeyClass) {
      out->detail = "its key reference \"i\" = " + *message_.key_reference() +
                    " is none of the job's keys' (Key#id, docs/FORMAT.md \"rails\")";
    } else if (failure == kRailsAuthFailedClass) {
      out->detail = "no source or target key of the job opens it (another key's, or tampered)";
    }
    return;
  }
  const auto move = moves_->find(key_id);
  if (move == moves_->end()) {
    out->outcome = RewriteOutcome::kUnchanged;  // under a target key: already moved
    return;
  }
  message_.Reseal(*keys_(move->second), &text_);
  out->value.assign(text_.begin(), text_.end());
  out->outcome = RewriteOutcome::kRewritten;
  out->from_key = key_id;
  out->to_key = move->second;
}

}  // namespace rekey::crypto
