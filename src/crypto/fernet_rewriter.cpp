#include "crypto/fernet_rewriter.h"

#include <openssl/crypto.h>

#include <utility>

namespace rekey::crypto {

FernetRewriter::FernetRewriter(const std::map<uint32_t, uint32_t>* moves, FernetKeyLookup keys)
    : moves_(moves),
      keys_(std::move(keys)),
      candidates_(SourcesThenTargets(*moves)),
      open_order_(TargetsThenSources(*moves)) {}

void FernetRewriter::RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) {
  for (size_t i = 0; i < count; ++i) Rewrite(values[i], &out[i]);
}

void FernetRewriter::OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) {
  for (size_t i = 0; i < count; ++i) {
    uint32_t key_id = 0;
    const DecodeStatus status = OpenFernetTrial(values[i].data, values[i].size, open_order_, keys_,
                                                &out[i].plaintext, nullptr, &key_id);
    if (status == DecodeStatus::kOk) {
      out[i].Opened(key_id, /*with_plaintext=*/true);
    } else {
      out[i].Failed(OpenOutcome::kPoison, DecodeStatusName(status));
    }
  }
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
