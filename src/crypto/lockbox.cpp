#include "crypto/lockbox.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <utility>

#include "common/error.h"

namespace rekey::crypto {
namespace {

// Lockbox's info prefix: 32 bytes of 0xB4 before the attribute name (key_generator.rb, "pattern
// ported from CipherSweet"), so an attribute key is never another HKDF use's output.
constexpr uint8_t kInfoByte = 0xB4;
constexpr size_t kInfoPrefixSize = 32;

}  // namespace

Secret LockboxAttributeKey(const Secret& master, const LockboxKeyNames& names) {
  if (master.size() != kLockboxMasterKeySize) {
    throw KeyError("a Lockbox master key is 32 bytes (64 hex digits), not " +
                   std::to_string(master.size()));
  }
  if (names.table.empty() || names.attribute.empty()) {
    throw KeyError("a Lockbox attribute key needs its table and attribute names");
  }
  std::string info(kInfoPrefixSize, char(kInfoByte));
  info += names.attribute;
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  EVP_KDF_free(kdf);
  if (!ctx) throw PermanentError("OpenSSL has no HKDF");
  char digest[] = "SHA384";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(master.data()),
                                        master.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(names.table.data()),
                                        names.table.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  Secret key(kAesKeySize);
  const int ok = EVP_KDF_derive(ctx, key.mutable_data(), key.size(), params);
  EVP_KDF_CTX_free(ctx);
  if (ok != 1) throw PermanentError("HKDF-SHA384 failed in OpenSSL");
  return key;
}

LockboxAttributeKeys::LockboxAttributeKeys(LockboxMasterKeySource masters)
    : masters_(std::move(masters)) {}

AesGcmKey* LockboxAttributeKeys::Get(uint32_t key_id, const LockboxKeyNames& names) {
  auto slot = std::make_tuple(key_id, names.table, names.attribute);
  auto it = keys_.find(slot);
  if (it != keys_.end()) return it->second.get();
  std::unique_ptr<AesGcmKey> key;
  Secret master = masters_(key_id);
  if (!master.empty()) {
    key = std::make_unique<AesGcmKey>(LockboxAttributeKey(master, names));
  }
  return keys_.emplace(std::move(slot), std::move(key)).first->second.get();
}

DecodeStatus OpenLockboxTrial(const uint8_t* value, size_t size,
                              const std::vector<uint32_t>& key_ids, const LockboxKeyNames& names,
                              LockboxAttributeKeys& keys, Bytes* plaintext, uint32_t* key_id) {
  plaintext->clear();
  if (size == 0) return DecodeStatus::kEmpty;
  if (size < kLockboxMinValueSize) return DecodeStatus::kTruncated;
  for (uint32_t id : key_ids) {
    AesGcmKey* key = keys.Get(id, names);
    if (key == nullptr) continue;
    if (key->Open(value, size, nullptr, 0, plaintext)) {
      *key_id = id;
      return DecodeStatus::kOk;
    }
  }
  return DecodeStatus::kAuthFailed;
}

void SealLockbox(AesGcmKey& attribute_key, const uint8_t* plaintext, size_t size, Bytes* out) {
  out->clear();
  attribute_key.Seal(plaintext, size, nullptr, 0, out);
}

}  // namespace rekey::crypto
