#include "crypto/cloak_rewriter.h"

#include <openssl/crypto.h>

#include <string>
#include <utility>

#include "common/error.h"

namespace rekey::crypto {

CloakRewriter::CloakRewriter(const std::map<uint32_t, uint32_t>* moves,
                             std::function<Secret(uint32_t)> keys)
    : moves_(moves),
      key_source_(std::move(keys)),
      candidates_(SourcesThenTargets(*moves)),
      open_order_(TargetsThenSources(*moves)) {
  lookup_ = [this](uint32_t id) { return KeyFor(id); };
  open_lookup_ = [this](uint32_t id) -> CloakKey* {
    try {
      return KeyFor(id);
    } catch (const NoSuchKeyError&) {
      return keys_.emplace(id, nullptr).first->second.get();
    }
  };
}

CloakKey* CloakRewriter::KeyFor(uint32_t key_id) {
  auto it = keys_.find(key_id);
  if (it == keys_.end()) {
    it = keys_.emplace(key_id, std::make_unique<CloakKey>(key_source_(key_id))).first;
  }
  return it->second.get();
}

void CloakRewriter::RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) {
  keys_.clear();  // each batch asks the key source again
  for (uint32_t id : candidates_) KeyFor(id);
  for (size_t i = 0; i < count; ++i) Rewrite(values[i], &out[i]);
}

void CloakRewriter::OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) {
  keys_.clear();  // each batch asks the key source again
  for (size_t i = 0; i < count; ++i) {
    uint32_t key_id = 0;
    const CloakStatus status = OpenCloak(values[i].data, values[i].size, open_order_, open_lookup_,
                                         &out[i].plaintext, &key_id);
    if (status == CloakStatus::kOk) {
      out[i].Opened(key_id, /*with_plaintext=*/true);
    } else {
      out[i].Failed(
          status == CloakStatus::kUnknownFingerprint ? OpenOutcome::kKeyMissing
                                                     : OpenOutcome::kPoison,
          CloakStatusName(status),
          status == CloakStatus::kAuthFailed ? std::optional<uint32_t>(key_id) : std::nullopt);
    }
  }
}

void CloakRewriter::Rewrite(const StoredValue& value, RewrittenValue* out) {
  out->failed_key.reset();
  out->detail.clear();
  CloakValue parsed;
  CloakStatus status = ParseCloakValue(value.data, value.size, &parsed);
  if (status == CloakStatus::kOk) {
    // Under a target key (and under no source key of the same fingerprint): already moved.
    bool source = false, target = false;
    for (uint32_t id : candidates_) {
      if (keys_.at(id)->fingerprint() != parsed.fingerprint) continue;
      (moves_->count(id) ? source : target) = true;
    }
    if (target && !source) {
      out->outcome = RewriteOutcome::kUnchanged;
      return;
    }
    uint32_t key_id = 0;
    status = OpenCloak(value.data, value.size, candidates_, lookup_, &plaintext_, &key_id);
    if (status == CloakStatus::kOk) {
      const auto move = moves_->find(key_id);
      if (move == moves_->end()) {
        OPENSSL_cleanse(plaintext_.data(), plaintext_.size());
        out->outcome = RewriteOutcome::kUnchanged;
        return;
      }
      KeyFor(move->second)->Seal(plaintext_.data(), plaintext_.size(), &out->value);
      OPENSSL_cleanse(plaintext_.data(), plaintext_.size());
      out->outcome = RewriteOutcome::kRewritten;
      out->from_key = key_id;
      out->to_key = move->second;
      return;
    }
    if (status == CloakStatus::kAuthFailed) {
      out->failed_key = key_id;
      out->detail = "the key of fingerprint " + std::string(parsed.fingerprint) +
                    " does not open it (tampered with)";
    }
  }
  out->outcome = status == CloakStatus::kUnknownFingerprint ? RewriteOutcome::kKeyMissing
                                                            : RewriteOutcome::kPoison;
  out->error_class = std::string(CloakStatusName(status));
  if (status == CloakStatus::kUnknownFingerprint) {
    out->detail = "fingerprint " + std::string(parsed.fingerprint) +
                  " is none of the job's source or target keys";
  }
}

}  // namespace rekey::crypto
