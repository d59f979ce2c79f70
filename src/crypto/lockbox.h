// Ruby Lockbox's encrypted attributes (github ankane/lockbox; what `has_encrypted :email` writes to
// `email_ciphertext`). docs/FORMAT.md, "lockbox", is the normative description here, with the
// Lockbox file each rule comes from.
//
//   master key     32 bytes; applications keep it as 64 hex characters (Lockbox.generate_key,
//                  LOCKBOX_MASTER_KEY)
//   attribute key  HKDF-SHA384(ikm = master key, salt = key table, info = 0xB4 x 32 || key
//                  attribute, length 32); the key table is the model's table name and the key
//                  attribute the ciphertext column's name ("email_ciphertext"), unless the model
//                  sets key_table / key_attribute
//   value          nonce (12) || AES-256-GCM ciphertext || tag (16), no associated data; stored as
//                  strict base64 text (the column's stored form, crypto/text_encoding.h, decodes
//                  it; these functions see the bytes), or as the bytes with `encode: false`
//
// A value names no key: Lockbox tries its master key's attribute key, then each previous
// version's, in order (trial decryption), which is what OpenLockboxTrial does with a job's keys.
// Opening never throws for malformed input; the status says what is wrong, in crypto/codec.h's
// stable classes.
//
// Thread-safety: LockboxAttributeKeys holds AesGcmKeys (crypto/aes_gcm.h): one per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"
#include "crypto/codec.h"

namespace rekey::crypto {

constexpr size_t kLockboxMasterKeySize = 32;
constexpr size_t kLockboxNonceSize = 12;
constexpr size_t kLockboxTagSize = 16;
// Lockbox's AES_GCM#decrypt refuses an empty ciphertext, so the shortest value it opens holds one
// byte of it (and its model never encrypts "": it stores the empty string as it is).
constexpr size_t kLockboxMinValueSize = kLockboxNonceSize + 1 + kLockboxTagSize;  // 29
static_assert(kLockboxNonceSize == kGcmIvSize && kLockboxTagSize == kGcmTagSize,
              "Lockbox's AES-GCM layout is rekey's raw layout");

// The names an attribute key is derived from (Lockbox.attribute_key's table: and attribute:).
struct LockboxKeyNames {
  std::string table;      // the model's table_name, or its key_table option
  std::string attribute;  // the ciphertext column ("email_ciphertext"), or its key_attribute
};

// Lockbox::KeyGenerator#attribute_key: HKDF-SHA384 of `master` with salt `names.table` and info
// 0xB4 x 32 || `names.attribute`, 32 bytes. Throws KeyError if the master key is not 32 bytes or
// either name is empty (Lockbox raises for both).
Secret LockboxAttributeKey(const Secret& master, const LockboxKeyNames& names);

// A job's master keys by key id; an empty Secret iff the key is not available here (it is then
// skipped). May throw if a key cannot be had now (a KMS failure).
using LockboxMasterKeySource = std::function<Secret(uint32_t key_id)>;

// The attribute keys derived from a source's master keys, derived once per (key, names) until
// Clear(): a caller that must see a revoked key stop working clears it as it refetches keys.
class LockboxAttributeKeys {
 public:
  explicit LockboxAttributeKeys(LockboxMasterKeySource masters);

  // This thread's attribute key of `key_id` for `names`; nullptr iff the master key is not
  // available. Throws as the source does.
  AesGcmKey* Get(uint32_t key_id, const LockboxKeyNames& names);
  void Clear() { keys_.clear(); }

 private:
  LockboxMasterKeySource masters_;
  std::map<std::tuple<uint32_t, std::string, std::string>, std::unique_ptr<AesGcmKey>> keys_;
};

// Trial decryption, as Lockbox's Encryptor#decrypt tries its boxes: opens `value` under the
// attribute key (for `names`) of the first of `key_ids`, in order, that opens it, setting *key_id
// to it. Status precedence: size 0 -> kEmpty; size < 29 -> kTruncated (the same under every key,
// returned at once); kAuthFailed iff no available key opens it (another key's, or tampered). On
// kOk *plaintext holds the plaintext; otherwise it is cleared.
DecodeStatus OpenLockboxTrial(const uint8_t* value, size_t size,
                              const std::vector<uint32_t>& key_ids, const LockboxKeyNames& names,
                              LockboxAttributeKeys& keys, Bytes* plaintext, uint32_t* key_id);

// Replaces *out with a Lockbox value of `plaintext` (size >= 1) under `attribute_key`, with a
// fresh random nonce.
void SealLockbox(AesGcmKey& attribute_key, const uint8_t* plaintext, size_t size, Bytes* out);

}  // namespace rekey::crypto
