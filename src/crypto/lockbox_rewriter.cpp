#include "crypto/lockbox_rewriter.h"

#include <openssl/crypto.h>

#include <utility>

#include "common/error.h"

namespace rekey::crypto {

LockboxRewriter::LockboxRewriter(const std::map<uint32_t, uint32_t>* moves,
                                 std::map<std::string, LockboxKeyNames> names,
                                 LockboxMasterKeySource masters)
    : moves_(moves),
      names_(names.begin(), names.end()),
      masters_(std::move(masters)),
      keys_([this](uint32_t id) {
        if (!opening_) return masters_(id);
        try {
          return masters_(id);
        } catch (const NoSuchKeyError&) {
          return Secret();  // an empty master: skipped (crypto/lockbox.h)
        }
      }),
      candidates_(SourcesThenTargets(*moves)),
      open_order_(TargetsThenSources(*moves)) {}

const LockboxKeyNames& LockboxRewriter::NamesOf(const StoredValue& value) const {
  const auto names = names_.find(value.column);
  if (names == names_.end()) {
    throw PermanentError("column " + std::string(value.column) +
                         " is not a lockbox column of the job");
  }
  return names->second;
}

void LockboxRewriter::OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) {
  keys_.Clear();
  opening_ = true;
  for (size_t i = 0; i < count; ++i) {
    const LockboxKeyNames& names = NamesOf(values[i]);
    if (values[i].size == 0) {
      out[i].Failed(OpenOutcome::kUnencrypted, "");
      continue;
    }
    uint32_t key_id = 0;
    const DecodeStatus status = OpenLockboxTrial(values[i].data, values[i].size, open_order_, names,
                                                 keys_, &out[i].plaintext, &key_id);
    if (status == DecodeStatus::kOk) {
      out[i].Opened(key_id, /*with_plaintext=*/true);
    } else {
      out[i].Failed(OpenOutcome::kPoison, DecodeStatusName(status));
    }
  }
  // Attribute keys of skipped masters are not kept for a rewrite, which must not skip them.
  keys_.Clear();
  opening_ = false;
}

void LockboxRewriter::RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) {
  opening_ = false;  // even after an OpenBatch that threw
  keys_.Clear();
  for (size_t i = 0; i < count; ++i) Rewrite(values[i], &out[i]);
}

void LockboxRewriter::Rewrite(const StoredValue& value, RewrittenValue* out) {
  out->failed_key.reset();
  out->detail.clear();
  const LockboxKeyNames& names = NamesOf(value);
  if (value.size == 0) {
    // Lockbox stores an empty string as it is, unencrypted: under no key, nothing to move.
    out->outcome = RewriteOutcome::kUnchanged;
    return;
  }
  uint32_t key_id = 0;
  const DecodeStatus status =
      OpenLockboxTrial(value.data, value.size, candidates_, names, keys_, &plaintext_, &key_id);
  if (status != DecodeStatus::kOk) {
    out->outcome = RewriteOutcome::kPoison;
    out->error_class = std::string(DecodeStatusName(status));
    if (status == DecodeStatus::kAuthFailed) {
      out->detail = "no source or target key of the job opens it as Lockbox's attribute key of " +
                    names.table + "." + names.attribute +
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
  AesGcmKey* target = keys_.Get(move->second, names);
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
