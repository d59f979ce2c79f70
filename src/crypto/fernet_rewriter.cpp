#include "crypto/fernet_rewriter.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <utility>

namespace rekey::crypto {

FernetRewriter::FernetRewriter(const std::map<uint32_t, uint32_t>* moves, FernetKeyLookup keys)
    : moves_(moves), keys_(std::move(keys)) {
  for (const auto& entry : *moves_) candidates_.push_back(entry.first);
  for (const auto& entry : *moves_) {
    if (std::find(candidates_.begin(), candidates_.end(), entry.second) == candidates_.end()) {
      candidates_.push_back(entry.second);
    }
  }
}

void FernetRewriter::RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) {
  for (size_t i = 0; i < count; ++i) Rewrite(values[i], &out[i]);
}

void FernetRewriter::Rewrite(const StoredValue& value, RewrittenValue* out) {
  out->failed_key.reset();
  out->detail.clear();
  uint64_t timestamp = 0;
  uint32_t key_id = 0;
  const DecodeStatus status =
      OpenFernetTrial(value.data, value.size, candidates_, keys_, &plaintext_, &timestamp, &key_id);
  if (status != DecodeStatus::kOk) {
    out->outcome = RewriteOutcome::kPoison;
    out->error_class = std::string(DecodeStatusName(status));
    if (status == DecodeStatus::kAuthFailed) {
      out->detail = "no source or target key of the job opens it (another key's, or tampered)";
    }
    return;
  }
  const auto move = moves_->find(key_id);
  if (move == moves_->end()) {
    OPENSSL_cleanse(plaintext_.data(), plaintext_.size());
    out->outcome = RewriteOutcome::kUnchanged;  // under a target key: already moved
    return;
  }
  keys_(move->second)->Seal(timestamp, plaintext_.data(), plaintext_.size(), &out->value);
  OPENSSL_cleanse(plaintext_.data(), plaintext_.size());
  out->outcome = RewriteOutcome::kRewritten;
  out->from_key = key_id;
  out->to_key = move->second;
}

}  // namespace rekey::crypto
