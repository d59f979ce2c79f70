#include "crypto/cloak.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <utility>

#include "common/error.h"
#include "crypto/text_encoding.h"

namespace rekey::crypto {
namespace {

bool IsBase64UrlChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

bool IsHexDigit(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// base64url characters, then at most two '=' at the end.
bool IsBase64UrlText(std::string_view text) {
  size_t end = text.size();
  while (end > 0 && text.size() - end < 2 && text[end - 1] == '=') --end;
  for (size_t i = 0; i < end; ++i) {
    if (!IsBase64UrlChar(text[i])) return false;
  }
  return true;
}

std::vector<std::string_view> SplitDots(std::string_view text) {
  std::vector<std::string_view> parts;
  for (size_t at = 0;;) {
    const size_t dot = text.find('.', at);
    parts.push_back(text.substr(at, dot == std::string_view::npos ? dot : dot - at));
    if (dot == std::string_view::npos) return parts;
    at = dot + 1;
  }
}

std::string_view Trim(std::string_view text) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  return text;
}

}  // namespace

std::string_view CloakStatusName(CloakStatus status) {
  switch (status) {
    case CloakStatus::kOk:
      return "ok";
    case CloakStatus::kEmpty:
      return "empty";
    case CloakStatus::kNotCloak:
      return "not_cloak";
    case CloakStatus::kBadPrefix:
      return "bad_prefix";
    case CloakStatus::kTruncated:
      return "truncated";
    case CloakStatus::kUnknownFingerprint:
      return "unknown_fingerprint";
    case CloakStatus::kAuthFailed:
      return "auth_failed";
  }
  return "unknown";
}

CloakStatus ParseCloakValue(const uint8_t* data, size_t size, CloakValue* out) {
  out->fingerprint = {};
  out->sealed.clear();
  if (size == 0) return CloakStatus::kEmpty;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (text.substr(0, kCloakValuePrefix.size()) != kCloakValuePrefix) {
    // Five parts led by a version: a cloak string of a version or cipher rekey does not read.
    const bool shaped = SplitDots(text).size() == 5 && text[0] == 'v';
    return shaped ? CloakStatus::kBadPrefix : CloakStatus::kNotCloak;
  }
  const std::vector<std::string_view> parts = SplitDots(text.substr(kCloakValuePrefix.size()));
  if (parts.size() > 3) return CloakStatus::kNotCloak;
  const std::string_view fingerprint = parts[0];
  for (char c : fingerprint) {
    if (!IsHexDigit(c)) return CloakStatus::kNotCloak;
  }
  if (fingerprint.size() > kCloakFingerprintSize) return CloakStatus::kNotCloak;
  if (parts.size() < 3 || fingerprint.size() < kCloakFingerprintSize) {
    return CloakStatus::kTruncated;
  }
  const std::string_view iv = parts[1];
  const std::string_view ciphertext = parts[2];
  for (char c : iv) {
    if (!IsBase64UrlChar(c)) return CloakStatus::kNotCloak;
  }
  if (iv.size() > kCloakIvTextSize) return CloakStatus::kNotCloak;
  if (!IsBase64UrlText(ciphertext)) return CloakStatus::kNotCloak;
  if (iv.size() < kCloakIvTextSize) return CloakStatus::kTruncated;
  Bytes body;
  // The alphabet is right, so a failed decode is a length no base64 text has: cut short.
  if (!DecodeText(TextEncoding::kBase64Url, iv, &out->sealed) ||
      !DecodeText(TextEncoding::kBase64Url, ciphertext, &body) || body.size() < kGcmTagSize) {
    out->sealed.clear();
    return CloakStatus::kTruncated;
  }
  out->sealed.insert(out->sealed.end(), body.begin(), body.end());
  out->fingerprint = fingerprint;
  return CloakStatus::kOk;
}

CloakKey::CloakKey(Secret key) : key_(key.Clone()) {
  std::string text = CloakKeyText(key);
  fingerprint_ = CloakFingerprint(text);
  WipeAndClear(&text);
}

bool CloakKey::Open(const CloakValue& value, Bytes* plaintext) {
  return key_.Open(value.sealed.data(), value.sealed.size(), nullptr, 0, plaintext);
}

void CloakKey::Seal(const uint8_t* plaintext, size_t size, Bytes* out) {
  sealed_.clear();
  key_.Seal(plaintext, size, nullptr, 0, &sealed_);
  Format(out);
}

void CloakKey::SealWithIv(const uint8_t* iv, const uint8_t* plaintext, size_t size, Bytes* out) {
  sealed_.clear();
  key_.SealWithIv(iv, plaintext, size, nullptr, 0, &sealed_);
  Format(out);
}

void CloakKey::Format(Bytes* out) {
  // The library writes Node's base64 with '+' '/' swapped for '-' '_': padded.
  const TextStyle padded{true};
  std::string iv, body;
  EncodeText(TextEncoding::kBase64Url, sealed_.data(), kGcmIvSize, padded, &iv);
  EncodeText(TextEncoding::kBase64Url, sealed_.data() + kGcmIvSize, sealed_.size() - kGcmIvSize,
             padded, &body);
  out->clear();
  out->reserve(kCloakValuePrefix.size() + kCloakFingerprintSize + iv.size() + body.size() + 2);
  auto append = [out](std::string_view s) { out->insert(out->end(), s.begin(), s.end()); };
  append(kCloakValuePrefix);
  append(fingerprint_);
  append(".");
  append(iv);
  append(".");
  append(body);
}

CloakStatus OpenCloak(const uint8_t* text, size_t size, const std::vector<uint32_t>& key_ids,
                      const CloakKeyLookup& keys, Bytes* plaintext, uint32_t* key_id) {
  plaintext->clear();
  CloakValue value;
  const CloakStatus parsed = ParseCloakValue(text, size, &value);
  if (parsed != CloakStatus::kOk) return parsed;
  bool named = false;
  for (uint32_t id : key_ids) {
    CloakKey* key = keys(id);
    if (key == nullptr || key->fingerprint() != value.fingerprint) continue;
    if (!named) *key_id = id;
    named = true;
    if (key->Open(value, plaintext)) {
      *key_id = id;
      return CloakStatus::kOk;
    }
  }
  return named ? CloakStatus::kAuthFailed : CloakStatus::kUnknownFingerprint;
}

std::string CloakKeyText(const Secret& key) {
  std::string encoded;
  EncodeText(TextEncoding::kBase64Url, key.data(), key.size(), TextStyle{true}, &encoded);
  std::string text = std::string(kCloakKeyPrefix) + encoded;
  WipeAndClear(&encoded);
  return text;
}

std::string CloakFingerprint(std::string_view key_text) {
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(key_text.data()), key_text.size(), digest);
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string fingerprint;
  for (size_t i = 0; i < kCloakFingerprintSize / 2; ++i) {
    fingerprint += kDigits[digest[i] >> 4];
    fingerprint += kDigits[digest[i] & 0x0f];
  }
  OPENSSL_cleanse(digest, sizeof digest);
  return fingerprint;
}

std::optional<Secret> ParseCloakKeyText(std::string_view text) {
  text = Trim(text);
  if (text.substr(0, kCloakKeyPrefix.size()) != kCloakKeyPrefix) return std::nullopt;
  const std::string_view encoded = text.substr(kCloakKeyPrefix.size());
  // 32 bytes are 43 base64url characters and one '='.
  if (encoded.size() != 44 || encoded.back() != '=') return std::nullopt;
  Bytes raw;
  if (!DecodeText(TextEncoding::kBase64Url, encoded, &raw) || raw.size() != kAesKeySize) {
    WipeAndClear(&raw);
    return std::nullopt;
  }
  Secret key(raw.data(), raw.size());
  WipeAndClear(&raw);
  return key;
}

}  // namespace rekey::crypto
