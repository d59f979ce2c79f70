#include "crypto/codec.h"

namespace rekey::crypto {

std::optional<CodecKind> ParseCodecKind(std::string_view name) {
  if (name == "tink") return CodecKind::kTink;
  if (name == "raw") return CodecKind::kRaw;
  if (name == "vault-transit") return CodecKind::kVaultTransit;
  if (name == "fernet") return CodecKind::kFernet;
  if (name == "rails") return CodecKind::kRails;
  if (name == "lockbox") return CodecKind::kLockbox;
  if (name == "aws-kms") return CodecKind::kAwsKms;
  if (name == "cloak") return CodecKind::kCloak;
  return std::nullopt;
}

std::string_view CodecKindName(CodecKind kind) {
  switch (kind) {
    case CodecKind::kTink:
      return "tink";
    case CodecKind::kRaw:
      return "raw";
    case CodecKind::kVaultTransit:
      return "vault-transit";
    case CodecKind::kFernet:
      return "fernet";
    case CodecKind::kRails:
      return "rails";
    case CodecKind::kLockbox:
      return "lockbox";
    case CodecKind::kAwsKms:
      return "aws-kms";
    case CodecKind::kCloak:
      return "cloak";
  }
  return "unknown";
}

std::string_view DecodeStatusName(DecodeStatus status) {
  switch (status) {
    case DecodeStatus::kOk:
      return "ok";
    case DecodeStatus::kEmpty:
      return "empty";
    case DecodeStatus::kTruncated:
      return "truncated";
    case DecodeStatus::kBadPrefix:
      return "bad_prefix";
    case DecodeStatus::kUnknownKey:
      return "unknown_key";
    case DecodeStatus::kAuthFailed:
      return "auth_failed";
  }
  return "unknown";
}

std::optional<uint32_t> TinkKeyId(const uint8_t* value, size_t size) {
  if (size < kTinkPrefixSize || value[0] != kTinkVersionByte) return std::nullopt;
  return GetUint32BigEndian(value + 1);
}

DecodeStatus OpenTink(const uint8_t* value, size_t size, const KeyLookup& keys, const uint8_t* ad,
                      size_t ad_size, Bytes* plaintext, uint32_t* key_id) {
  plaintext->clear();
  if (size == 0) return DecodeStatus::kEmpty;
  if (size < kTinkPrefixSize) return DecodeStatus::kTruncated;
  if (value[0] != kTinkVersionByte) return DecodeStatus::kBadPrefix;
  const uint32_t id = GetUint32BigEndian(value + 1);
  if (key_id != nullptr) *key_id = id;
  // The key is resolved before the length check so that a short value under a key this process
  // does not hold is reported as a key problem, which an operator can act on.
  AesGcmKey* key = keys(id);
  if (key == nullptr) return DecodeStatus::kUnknownKey;
  if (size < kTinkOverhead) return DecodeStatus::kTruncated;
  if (!key->Open(value + kTinkPrefixSize, size - kTinkPrefixSize, ad, ad_size, plaintext)) {
    return DecodeStatus::kAuthFailed;
  }
  return DecodeStatus::kOk;
}

DecodeStatus OpenRaw(const uint8_t* value, size_t size, AesGcmKey* key, const uint8_t* ad,
                     size_t ad_size, Bytes* plaintext) {
  plaintext->clear();
  if (size == 0) return DecodeStatus::kEmpty;
  if (key == nullptr) return DecodeStatus::kUnknownKey;
  if (size < kRawOverhead) return DecodeStatus::kTruncated;
  if (!key->Open(value, size, ad, ad_size, plaintext)) return DecodeStatus::kAuthFailed;
  return DecodeStatus::kOk;
}

void SealTinkWithIv(uint32_t key_id, AesGcmKey& key, const uint8_t* iv, const uint8_t* plaintext,
                    size_t size, const uint8_t* ad, size_t ad_size, Bytes* out) {
  const size_t start = out->size();
  out->resize(start + kTinkPrefixSize);
  (*out)[start] = kTinkVersionByte;
  PutUint32BigEndian(key_id, out->data() + start + 1);
  try {
    key.SealWithIv(iv, plaintext, size, ad, ad_size, out);
  } catch (...) {
    out->resize(start);  // leave `out` as it was: no half-written value
    throw;
  }
}

void SealTink(uint32_t key_id, AesGcmKey& key, const uint8_t* plaintext, size_t size,
              const uint8_t* ad, size_t ad_size, Bytes* out) {
  uint8_t iv[kGcmIvSize];
  RandomIv(iv);
  SealTinkWithIv(key_id, key, iv, plaintext, size, ad, ad_size, out);
}

void SealRaw(AesGcmKey& key, const uint8_t* plaintext, size_t size, const uint8_t* ad,
             size_t ad_size, Bytes* out) {
  key.Seal(plaintext, size, ad, ad_size, out);
}

}  // namespace rekey::crypto
