#include "crypto/fernet.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <memory>

#include "common/error.h"
#include "crypto/aes_gcm.h"
#include "crypto/text_encoding.h"

namespace rekey::crypto {
namespace {

constexpr size_t kHalf = 16;  // each of the signing and the encryption key
constexpr size_t kBlock = 16;

using CipherContext = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

CipherContext NewContext() {
  CipherContext ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  if (!ctx) throw PermanentError("OpenSSL: cannot allocate a cipher context");
  return ctx;
}

void Hmac(const uint8_t* signing_key, const uint8_t* data, size_t size, uint8_t* mac) {
  unsigned int n = 0;
  if (HMAC(EVP_sha256(), signing_key, int(kHalf), data, size, mac, &n) == nullptr ||
      n != kFernetHmacSize) {
    throw PermanentError("OpenSSL: HMAC-SHA256 failed");
  }
}

void PutUint64BigEndian(uint64_t v, uint8_t* out) {
  for (int i = 7; i >= 0; --i, v >>= 8) out[i] = uint8_t(v);
}

uint64_t GetUint64BigEndian(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | in[i];
  return v;
}

}  // namespace

FernetKey::FernetKey(Secret key) : key_(std::move(key)) {
  if (key_.size() != kFernetKeySize) {
    throw KeyError("a Fernet key is 32 bytes (signing 16 || encryption 16), got " +
                   std::to_string(key_.size()));
  }
}

DecodeStatus FernetKey::Open(const uint8_t* token, size_t size, Bytes* plaintext,
                             uint64_t* timestamp) const {
  plaintext->clear();
  if (size == 0) return DecodeStatus::kEmpty;
  if (token[0] != kFernetVersion) return DecodeStatus::kBadPrefix;
  if (size < kFernetMinTokenSize || (size - kFernetHeaderSize - kFernetHmacSize) % kBlock != 0) {
    return DecodeStatus::kTruncated;
  }
  // The HMAC first, in constant time: a wrong key or a tampered byte stops here, before the
  // cipher sees anything (the spec's order).
  const size_t signed_size = size - kFernetHmacSize;
  uint8_t mac[kFernetHmacSize];
  Hmac(key_.data(), token, signed_size, mac);
  if (CRYPTO_memcmp(mac, token + signed_size, kFernetHmacSize) != 0) {
    return DecodeStatus::kAuthFailed;
  }
  const uint8_t* iv = token + 9;
  const uint8_t* ciphertext = token + kFernetHeaderSize;
  const size_t ciphertext_size = signed_size - kFernetHeaderSize;
  CipherContext ctx = NewContext();
  plaintext->resize(ciphertext_size);
  int n = 0;
  int final_n = 0;
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_128_cbc(), nullptr, key_.data() + kHalf, iv) != 1 ||
      EVP_DecryptUpdate(ctx.get(), plaintext->data(), &n, ciphertext, int(ciphertext_size)) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), plaintext->data() + n, &final_n) != 1) {
    // Authenticated but badly padded: only a writer holding the key could have made it.
    OPENSSL_cleanse(plaintext->data(), plaintext->size());
    plaintext->clear();
    return DecodeStatus::kAuthFailed;
  }
  plaintext->resize(size_t(n + final_n));
  if (timestamp) *timestamp = GetUint64BigEndian(token + 1);
  return DecodeStatus::kOk;
}

void FernetKey::Seal(uint64_t timestamp, const uint8_t* plaintext, size_t size, Bytes* out) const {
  uint8_t iv[kFernetIvSize];
  RandomBytes(iv, sizeof iv);
  SealWithIv(timestamp, iv, plaintext, size, out);
}

void FernetKey::SealWithIv(uint64_t timestamp, const uint8_t* iv, const uint8_t* plaintext,
                           size_t size, Bytes* out) const {
  const size_t ciphertext_size = (size / kBlock + 1) * kBlock;
  out->resize(kFernetHeaderSize + ciphertext_size + kFernetHmacSize);
  uint8_t* p = out->data();
  p[0] = kFernetVersion;
  PutUint64BigEndian(timestamp, p + 1);
  std::copy(iv, iv + kFernetIvSize, p + 9);
  CipherContext ctx = NewContext();
  int n = 0;
  int final_n = 0;
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_128_cbc(), nullptr, key_.data() + kHalf, iv) != 1 ||
      EVP_EncryptUpdate(ctx.get(), p + kFernetHeaderSize, &n, plaintext, int(size)) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), p + kFernetHeaderSize + n, &final_n) != 1 ||
      size_t(n + final_n) != ciphertext_size) {
    throw PermanentError("OpenSSL: AES-128-CBC encryption failed");
  }
  const size_t signed_size = kFernetHeaderSize + ciphertext_size;
  Hmac(key_.data(), p, signed_size, p + signed_size);
}

DecodeStatus OpenFernetTrial(const uint8_t* token, size_t size,
                             const std::vector<uint32_t>& key_ids, const FernetKeyLookup& keys,
                             Bytes* plaintext, uint64_t* timestamp, uint32_t* key_id) {
  plaintext->clear();
  for (uint32_t id : key_ids) {
    const FernetKey* key = keys(id);
    if (key == nullptr) continue;
    const DecodeStatus status = key->Open(token, size, plaintext, timestamp);
    if (status == DecodeStatus::kAuthFailed) continue;  // another key's token: try the next
    if (status == DecodeStatus::kOk) *key_id = id;
    return status;
  }
  return DecodeStatus::kAuthFailed;
}

std::optional<Secret> ParseFernetKeyText(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t' || text.front() == '\n' ||
                           text.front() == '\r')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\n' ||
                           text.back() == '\r')) {
    text.remove_suffix(1);
  }
  Bytes raw;
  if (!DecodeText(TextEncoding::kBase64Url, text, &raw) || raw.size() != kFernetKeySize) {
    WipeAndClear(&raw);
    return std::nullopt;
  }
  Secret key(raw.data(), raw.size());
  WipeAndClear(&raw);
  return key;
}

std::string FernetKeyText(const Secret& key) {
  std::string text;
  EncodeText(TextEncoding::kBase64Url, key.data(), key.size(), TextStyle{true}, &text);
  return text;
}

}  // namespace rekey::crypto
