#include "crypto/rails_rewriter.h"

#include <utility>

namespace rekey::crypto {

RailsRewriter::RailsRewriter(const std::map<uint32_t, uint32_t>* moves, RailsKeyLookup keys)
    : moves_(moves),
      keys_(std::move(keys)),
      candidates_(SourcesThenTargets(*moves)),
      open_order_(TargetsThenSources(*moves)) {}

std::string_view RailsRewriter::ParseAndOpen(const StoredValue& value,
                                             const std::vector<uint32_t>& key_ids,
                                             uint32_t* key_id) {
  const std::string_view failure =
      message_.Parse(std::string_view(reinterpret_cast<const char*>(value.data), value.size));
  return failure.empty() ? message_.Open(key_ids, keys_, key_id) : failure;
}

void RailsRewriter::OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) {
  for (size_t i = 0; i < count; ++i) {
    uint32_t key_id = 0;
    const std::string_view failure = ParseAndOpen(values[i], open_order_, &key_id);
    if (!failure.empty()) {
      out[i].Failed(
          failure == kRailsUnknownKeyClass ? OpenOutcome::kKeyMissing : OpenOutcome::kPoison,
          failure);
      continue;
    }
    const Bytes& plaintext = message_.plaintext();
    out[i].plaintext.assign(plaintext.begin(), plaintext.end());
    out[i].Opened(key_id, /*with_plaintext=*/true);
  }
}

void RailsRewriter::RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) {
  for (size_t i = 0; i < count; ++i) Rewrite(values[i], &out[i]);
}

void RailsRewriter::Rewrite(const StoredValue& value, RewrittenValue* out) {
  out->failed_key.reset();
  out->detail.clear();
  uint32_t key_id = 0;
  const std::string_view failure = ParseAndOpen(value, candidates_, &key_id);
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
