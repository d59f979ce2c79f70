// The "local" KMS provider: data keys are wrapped with AES-256-GCM under a 32-byte master key
// that the operator supplies through the environment. For development, tests and small
// deployments; production should use a real KMS (aws-kms, vault-transit).
//
// Master key (exactly one of):
//   REKEY_MASTER_KEY       base64 of 32 random bytes
//   REKEY_MASTER_KEY_FILE  a file holding 32 raw bytes, or the base64 text of them
//
// Wrapping format (normative; docs/FORMAT.md):
//   wrapped     = 0x01 || IV(12) || AES-256-GCM ciphertext(32) || tag(16)      (61 bytes)
//   AD          = ASCII "rekey-local-wrap-v1" || key_id (4 bytes, big-endian)
//   kms_key_ref = "local:" || lowercase hex(first 8 bytes of SHA-256(master key))
//
// Thread-safety: all methods are thread-safe (the master key is only read; each call keys its own
// cipher context).
#pragma once

#include <string>

#include "crypto/aes_gcm.h"
#include "kms/kms_client.h"

namespace rekey::kms {

constexpr char kLocalProvider[] = "local";
constexpr char kMasterKeyEnv[] = "REKEY_MASTER_KEY";
constexpr char kMasterKeyFileEnv[] = "REKEY_MASTER_KEY_FILE";
constexpr uint8_t kLocalWrapVersion = 0x01;
constexpr size_t kLocalWrappedSize = 1 + 12 + kDataKeySize + 16;  // 61
constexpr char kLocalWrapAdPrefix[] = "rekey-local-wrap-v1";

class LocalKms : public KmsClient {
 public:
  // Reads the master key through `getenv`. Throws ConfigError if neither or both variables are
  // set, the file cannot be read, or the value is not 32 bytes (raw or base64); messages never
  // contain the value.
  explicit LocalKms(const GetenvFn& getenv = ProcessGetenv);
  // Uses `master_key` directly; `source` names its origin in error messages (e.g. a variable
  // name). Throws ConfigError unless it is 32 bytes.
  LocalKms(Secret master_key, std::string source);

  std::string provider() const override { return kLocalProvider; }
  std::string default_key_ref() const override { return key_ref_; }
  GeneratedDataKey GenerateDataKey(uint32_t key_id) override;
  GeneratedDataKey WrapDataKey(uint32_t key_id, const Secret& plaintext) override;
  // KeyError if `wrapped` does not authenticate; the message says whether the master key differs
  // from the one named by `kms_key_ref` (the usual cause) or the stored wrapped key is corrupt.
  Secret UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                       const Bytes& wrapped) override;
  std::string Describe() override;
  // Raw AES-256-GCM under the master key (Tink's AesGcm; see KmsClient). KeyError unless `key_ref`
  // is default_key_ref(): another master key cannot be reached from this one.
  Bytes EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                    const Bytes& associated_data) override;
  Secret DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                     const Bytes& associated_data) override;

  // The master key as an AES-256-GCM Aead (Tink's raw AesGcm): the key-encryption key of Tink
  // encrypted keysets (keyring/tink_keyset.h). The material stays in Secrets.
  crypto::AesGcmKey MasterKeyAead() const { return crypto::AesGcmKey(master_key_.Clone()); }

  // "local:" + hex of the first 8 bytes of SHA-256(master_key).
  static std::string KeyRefFor(const Secret& master_key);

 private:
  Secret master_key_;
  std::string source_;   // the variable the key came from, e.g. "REKEY_MASTER_KEY_FILE"
  std::string path_;     // REKEY_MASTER_KEY_FILE's path, or empty
  std::string key_ref_;  // KeyRefFor(master_key_)
};

// The associated data binding a local wrapping to `key_id` (exposed for tests and FORMAT.md).
Bytes LocalWrapAssociatedData(uint32_t key_id);

}  // namespace rekey::kms
