// The KMS interface: a key management service wraps (encrypts) and unwraps data keys, so the
// keyring table rekey.keys only ever holds data keys in wrapped form.
//
// Providers: "local" (a master key from the environment, local_kms.h) now; "aws-kms" and
// "vault-transit" later. Every error a provider throws is a rekey::Error: TransientError for
// throttling, HTTP 5xx and timeouts (a retry may help), KeyError for access denied, a disabled KMS
// key or the wrong key (a person must act). Error messages never contain key material.
//
// Thread-safety: implementations are thread-safe; one client serves a whole process.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "common/bytes.h"
#include "common/secret.h"

namespace rekey::kms {

// Size of every rekey data key (AES-256).
constexpr size_t kDataKeySize = 32;

struct GeneratedDataKey {
  Secret plaintext;         // the data key itself; never stored, never printed
  Bytes wrapped;            // what rekey.keys.wrapped_key stores
  std::string kms_key_ref;  // what rekey.keys.kms_key_ref stores: the KMS key that wrapped it
};

// How providers read their configuration: returns the value of an environment variable, or nullopt
// iff it is unset. Injectable so tests need not mutate the process environment.
using GetenvFn = std::function<std::optional<std::string>(const char* name)>;
// The real process environment (std::getenv).
std::optional<std::string> ProcessGetenv(const char* name);
// The value of integer variable `name`, or `fallback` iff it is unset or empty. Throws
// ConfigError naming the variable unless it is a decimal integer of at least `minimum`.
int64_t GetenvInteger(const GetenvFn& getenv, const char* name, int64_t fallback, int64_t minimum);

class KmsClient {
 public:
  virtual ~KmsClient() = default;

  // "local", "aws-kms" or "vault-transit": the value of rekey.keys.kms_provider.
  virtual std::string provider() const = 0;
  // The KMS key that new data keys are wrapped under.
  virtual std::string default_key_ref() const = 0;

  // A fresh random 32-byte data key for `key_id`, wrapped under default_key_ref(). The wrapping
  // is bound to `key_id`, so a wrapped key moved to another row does not unwrap.
  virtual GeneratedDataKey GenerateDataKey(uint32_t key_id) = 0;
  // Wraps an existing data key (import). The result's plaintext is a Clone of `plaintext`.
  virtual GeneratedDataKey WrapDataKey(uint32_t key_id, const Secret& plaintext) = 0;
  // Returns the 32-byte data key iff `wrapped` was produced for `key_id` under `kms_key_ref`;
  // throws KeyError naming the key id otherwise, TransientError if the KMS is unreachable.
  virtual Secret UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                               const Bytes& wrapped) = 0;

  // One line for `rekey keys list` and health output: provider and key ref, never material.
  virtual std::string Describe() = 0;

  // Master-key rotation inside one provider (`rekey keys rewrap`): returns data key `key_id`,
  // now wrapped by `source_key_ref` as `wrapped`, wrapped under `destination_key_ref` instead,
  // bound to the same `key_id`. Providers that can re-wrap without exposing the plaintext override
  // it (AWS ReEncrypt, Vault rewrap). The default unwraps here and wraps again, which works only
  // if `destination_key_ref` is default_key_ref() (a provider wraps new keys under one key); for
  // any other destination it throws ConfigError. The result's plaintext is empty.
  virtual GeneratedDataKey RewrapDataKey(uint32_t key_id, const std::string& source_key_ref,
                                         const Bytes& wrapped,
                                         const std::string& destination_key_ref);

  // The form rekey.keys.kms_key_ref stores for `key_ref` under this provider (AWS: the key ARN
  // an alias or key id names, after checking the key is enabled), so a re-run of a rewrap can
  // tell keys already under the destination. The default returns `key_ref` unchanged.
  virtual std::string CanonicalKeyRef(const std::string& key_ref) { return key_ref; }

  // Tink's KMS Aead (a keyset's key-encryption key, keyring/tink_keyset.h): encrypts a small
  // blob (< 4 KiB; a serialized keyset) under KMS key `key_ref` exactly as Tink's Aead for this
  // KMS does, so Tink opens the result with KeysetHandle.read(reader, <that Aead>):
  //   local          raw AES-256-GCM under the master key (IV(12) || ciphertext || tag); key_ref
  //                  must be default_key_ref(), i.e. name this master key
  //   aws-kms        AwsKmsAead: Encrypt {KeyId, Plaintext, EncryptionContext {"associatedData":
  //                  lowercase hex(ad)} only if ad is non-empty}; the CiphertextBlob
  //   vault-transit  tink-go-hcvault: <mount>/encrypt/<name> {plaintext: base64, context:
  //                  base64(ad) only if ad is non-empty}; the bytes of the "vault:vN:..." string
  // Nothing binds the blob to a rekey key id: Tink reads it. Errors as every call of the
  // provider (KeyError for a key that is missing, disabled or not this master key).
  virtual Bytes EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                            const Bytes& associated_data);
  // The inverse: the plaintext iff `ciphertext` was made by EncryptBlob under `key_ref` with the
  // same associated data. Throws KeyError otherwise (another key, altered bytes; AWS: a reply
  // naming another KeyId than a key ARN `key_ref`), TransientError as every call.
  virtual Secret DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                             const Bytes& associated_data);

  // False iff calls are failing fast now without reaching the KMS (an open circuit breaker), so
  // callers should pause rather than start work that needs the KMS. Cheap and thread-safe; it
  // turns true again by itself when the breaker lets a probe through.
  virtual bool Available() const { return true; }
};

}  // namespace rekey::kms
