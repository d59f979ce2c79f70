#include "crypto/aead_rewriters.h"

#include <openssl/crypto.h>

#include <stdexcept>
#include <utility>

#include "common/error.h"

namespace rekey::crypto {

AeadRewriter::AeadRewriter(CodecKind kind, TableBinding table, KeyMoves keys)
    : kind_(kind), table_(std::move(table)), keys_(std::move(keys)) {
  if (kind_ != CodecKind::kTink && kind_ != CodecKind::kRaw) {
    throw std::logic_error("AeadRewriter serves the tink and raw codecs only");
  }
  source_lookup_ = [this](uint32_t id) -> AesGcmKey* {
    return keys_.moves->count(id) ? keys_.keys(id) : nullptr;
  };
  any_lookup_ = [this](uint32_t id) -> AesGcmKey* {
    try {
      return keys_.keys(id);
    } catch (const NoSuchKeyError&) {
      return nullptr;
    }
  };
}

ValueRewriter::KeyNaming AeadRewriter::key_naming() const {
  return kind_ == CodecKind::kTink ? KeyNaming::kKeyInValue : KeyNaming::kKeyInRow;
}

void AeadRewriter::RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) {
  for (size_t i = 0; i < count; ++i) Rewrite(values[i], &out[i]);
}

std::optional<uint32_t> AeadRewriter::SourceKey(const StoredValue& value, bool* ours) const {
  if (kind_ == CodecKind::kTink) {
    const std::optional<uint32_t> id = TinkKeyId(value.data, value.size);
    // A prefix that does not parse is ours: opening it says what is wrong with the value.
    *ours = !id || keys_.moves->count(*id);
    return id;
  }
  *ours = value.row_key_id && keys_.moves->count(*value.row_key_id);
  return value.row_key_id;
}

void AeadRewriter::RenderAssociatedData(const StoredValue& value) {
  if (!table_.associated_data->empty()) {
    table_.associated_data->Render(table_.schema, table_.table, value.column, value.pk, &ad_);
  } else {
    ad_.clear();
  }
}

void AeadRewriter::OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) {
  for (size_t i = 0; i < count; ++i) Open(values[i], &out[i]);
}

void AeadRewriter::Open(const StoredValue& value, OpenedValue* out) {
  RenderAssociatedData(value);
  const auto* ad = reinterpret_cast<const uint8_t*>(ad_.data());
  uint32_t key_id = 0;
  DecodeStatus status = DecodeStatus::kUnknownKey;
  std::optional<uint32_t> named;
  if (kind_ == CodecKind::kTink) {
    named = TinkKeyId(value.data, value.size);
    status =
        OpenTink(value.data, value.size, any_lookup_, ad, ad_.size(), &out->plaintext, &key_id);
  } else if (value.row_key_id) {
    named = key_id = *value.row_key_id;
    status = OpenRaw(value.data, value.size, any_lookup_(key_id), ad, ad_.size(), &out->plaintext);
  }
  if (status == DecodeStatus::kOk) {
    out->Opened(key_id, /*with_plaintext=*/true);
    return;
  }
  out->Failed(status == DecodeStatus::kUnknownKey ? OpenOutcome::kKeyMissing : OpenOutcome::kPoison,
              DecodeStatusName(status), named);
}

void AeadRewriter::Rewrite(const StoredValue& value, RewrittenValue* out) {
  bool ours = false;
  const std::optional<uint32_t> source = SourceKey(value, &ours);
  if (!ours) {
    out->outcome = RewriteOutcome::kUnchanged;
    return;
  }
  RenderAssociatedData(value);
  const auto* ad = reinterpret_cast<const uint8_t*>(ad_.data());
  const DecodeStatus status =
      kind_ == CodecKind::kTink
          ? OpenTink(value.data, value.size, source_lookup_, ad, ad_.size(), &plaintext_, nullptr)
          : OpenRaw(value.data, value.size, keys_.keys(*source), ad, ad_.size(), &plaintext_);
  if (status != DecodeStatus::kOk) {
    out->outcome =
        status == DecodeStatus::kUnknownKey ? RewriteOutcome::kKeyMissing : RewriteOutcome::kPoison;
    out->error_class = std::string(DecodeStatusName(status));
    out->failed_key = source;
    out->detail.clear();
    return;
  }
  const uint32_t target = keys_.moves->at(*source);
  out->value.clear();
  if (kind_ == CodecKind::kTink) {
    SealTink(target, *keys_.keys(target), plaintext_.data(), plaintext_.size(), ad, ad_.size(),
             &out->value);
  } else {
    SealRaw(*keys_.keys(target), plaintext_.data(), plaintext_.size(), ad, ad_.size(), &out->value);
  }
  OPENSSL_cleanse(plaintext_.data(), plaintext_.size());
  out->outcome = RewriteOutcome::kRewritten;
  out->from_key = *source;
  out->to_key = target;
}

}  // namespace rekey::crypto
