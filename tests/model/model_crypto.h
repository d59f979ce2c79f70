// The key-safety model's own cryptography: AES-256-GCM straight from OpenSSL's EVP interface, the
// Tink and raw wire formats and the local KMS's key wrapping as docs/FORMAT.md specifies them.
// Deliberately independent of src/crypto and src/kms, so that the model checks the bytes rekey
// stored against the normative format rather than against rekey's own reading of it.
//
// Thread-safety: every function is pure (apart from RAND_bytes) and may be called from any thread.
#pragma once

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace rekey::testing::model {

using DataKey = std::array<uint8_t, 32>;

constexpr size_t kIvSize = 12;
constexpr size_t kTagSize = 16;
constexpr size_t kTinkPrefixSize = 5;  // 0x01 || key_id (uint32 big-endian)

inline std::string Uint32Be(uint32_t v) {
  return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

// AES-256-GCM of `plaintext` under `key` with `iv` and `ad`: ciphertext || tag.
inline std::string GcmSeal(const DataKey& key, const std::string& iv, const std::string& plaintext,
                           const std::string& ad) {
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      EVP_CIPHER_CTX_free);
  std::string out(plaintext.size() + kTagSize, '\0');
  int len = 0;
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(),
                         reinterpret_cast<const unsigned char*>(iv.data())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(ad.data()),
                        int(ad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), o, &len,
                        reinterpret_cast<const unsigned char*>(plaintext.data()),
                        int(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), o + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, int(kTagSize), o + plaintext.size()) !=
          1) {
    throw std::runtime_error("AES-256-GCM encryption failed in OpenSSL");
  }
  return out;
}

// The plaintext iff `sealed` (ciphertext || tag) authenticates under `key`, `iv` and `ad`.
inline std::optional<std::string> GcmOpen(const DataKey& key, const std::string& iv,
                                          const std::string& sealed, const std::string& ad) {
  if (sealed.size() < kTagSize || iv.size() != kIvSize) return std::nullopt;
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      EVP_CIPHER_CTX_free);
  const size_t n = sealed.size() - kTagSize;
  std::string out(n, '\0');
  std::string tag = sealed.substr(n);
  int len = 0;
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(),
                         reinterpret_cast<const unsigned char*>(iv.data())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(ad.data()),
                        int(ad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), o, &len, reinterpret_cast<const unsigned char*>(sealed.data()),
                        int(n)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, int(kTagSize), tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), o + len, &len) != 1) {
    return std::nullopt;
  }
  return out;
}

inline std::string RandomIv() {
  std::string iv(kIvSize, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(iv.data()), int(kIvSize)) != 1) {
    throw std::runtime_error("RAND_bytes failed");
  }
  return iv;
}

// docs/FORMAT.md section 1: 0x01 || key_id || IV || ciphertext || tag.
inline std::string SealTinkValue(uint32_t key_id, const DataKey& key, const std::string& plaintext,
                                 const std::string& ad) {
  const std::string iv = RandomIv();
  return std::string(1, '\x01') + Uint32Be(key_id) + iv + GcmSeal(key, iv, plaintext, ad);
}

// docs/FORMAT.md section 2: IV || ciphertext || tag; the key id lives in another column.
inline std::string SealRawValue(const DataKey& key, const std::string& plaintext,
                                const std::string& ad) {
  const std::string iv = RandomIv();
  return iv + GcmSeal(key, iv, plaintext, ad);
}

// The key id a Tink value names, iff it has the 5-byte 0x01 prefix.
inline std::optional<uint32_t> TinkKeyId(const std::string& value) {
  if (value.size() < kTinkPrefixSize || value[0] != '\x01') return std::nullopt;
  const auto* b = reinterpret_cast<const uint8_t*>(value.data());
  return uint32_t(b[1]) << 24 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 8 | uint32_t(b[4]);
}

inline std::optional<std::string> OpenTinkValue(const DataKey& key, const std::string& value,
                                                const std::string& ad) {
  if (value.size() < kTinkPrefixSize + kIvSize + kTagSize) return std::nullopt;
  return GcmOpen(key, value.substr(kTinkPrefixSize, kIvSize),
                 value.substr(kTinkPrefixSize + kIvSize), ad);
}

inline std::optional<std::string> OpenRawValue(const DataKey& key, const std::string& value,
                                               const std::string& ad) {
  if (value.size() < kIvSize + kTagSize) return std::nullopt;
  return GcmOpen(key, value.substr(0, kIvSize), value.substr(kIvSize), ad);
}

// docs/FORMAT.md section 6: a local-KMS wrapped data key is 0x01 || IV || GCM(master, key) || tag
// with associated data "rekey-local-wrap-v1" || key_id. nullopt iff it does not unwrap.
inline std::optional<DataKey> UnwrapLocal(const DataKey& master, uint32_t key_id,
                                          const std::string& wrapped) {
  if (wrapped.size() != 61 || wrapped[0] != '\x01') return std::nullopt;
  auto key = GcmOpen(master, wrapped.substr(1, kIvSize), wrapped.substr(1 + kIvSize),
                     std::string("rekey-local-wrap-v1") + Uint32Be(key_id));
  if (!key || key->size() != 32) return std::nullopt;
  DataKey out;
  std::copy(key->begin(), key->end(), out.begin());
  return out;
}

}  // namespace rekey::testing::model
