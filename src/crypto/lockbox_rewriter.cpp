#include "crypto/lockbox_rewriter.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <utility>

#include "common/error.h"

namespace rekey::crypto {

LockboxRewriter::LockboxRewriter(const std::map<uint32_t, uint32_t>* moves,
                                 std::map<std::string, LockboxKeyNames> names,
                                 LockboxMasterKeySource masters)
    : moves_(moves), names_(names.begin(), names.end()), keys_(std::move(masters)) {
  for (const auto& entry : *moves_) candidates_.push_back(entry.first);
  for (const auto& entry : *moves_) {
    if (std::find(candidates_.begin(), candidates_.end(), entry.second) == candidates_.end()) {
      candidates_.push_back(entry.second);
    }
  }
}

void LockboxRewriter::RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) {
  keys_.Clear();
  for (size_t i = 0; i < count; ++i) Rewrite(values[i], &out[i]);
}

void LockboxRewriter::Rewrite(const StoredValue& value, RewrittenValue* out) {
  out->failed_key.reset();
  out->detail.clear();
  const auto names = names_.find(value.column);
  if (names == names_.end()) {
    // A column the job did not declare as Lockbox's: a caller's bug, not the value's.
    throw PermanentError("column " + std::string(value.column) +
                         " is not a lockbox column of the job");
  }
  if (value.size == 0) {
    // Lockbox stores an empty string as it is, unencrypted: under no key, nothing to move.
    out->outcome = RewriteOutcome::kUnchanged;
    return;
  }
  uint32_t key_id = 0;
  const DecodeStatus status = OpenLockboxTrial(value.data, value.size, candidates_, names->second,
                                               keys_, &plaintext_, &key_id);
  if (status != DecodeStatus::kOk) {
    out->outcome = RewriteOutcome::kPoison;
    out->error_class = std::string(DecodeStatusName(status));
    if (status == DecodeStatus::kAuthFailed) {
      out->detail = "no source or target key of the job opens it as Lockbox's attribute key of " +
                    names->second.table + "." + names->second.attribute +
                    " (another key's or attribute's, or tampered)";
    } else if (status == DecodeStatus::kTruncated) {
      out->detail = "shorter than Lockbox's 29 bytes (nonce 12, ciphertext 1+, tag 16)";
    }
    return;
  }
  const auto move = moves_->find(key_id);
  if (move == moves_->end()) {
    OPENSSL_cleanse(plaintext_.data(), plaintext_.size());
    out->outcome = RewriteOutcome::kUnchanged;  // under a target key: already moved
    return;
  }
  AesGcmKey* target = keys_.Get(move->second, names->second);
  if (target == nullptr) {
    OPENSSL_cleanse(plaintext_.data(), plaintext_.size());
    throw KeyError("target key " + std::to_string(move->second) + " is not available");
  }
  SealLockbox(*target, plaintext_.data(), plaintext_.size(), &out->value);
  OPENSSL_cleanse(plaintext_.data(), plaintext_.size());
  out->outcome = RewriteOutcome::kRewritten;
  out->from_key = key_id;
  out->to_key = move->second;
}

}  // namespace rekey::crypto
