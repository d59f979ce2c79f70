// The "vault-transit" KMS provider: data keys are generated and wrapped by HashiCorp Vault's
// Transit secrets engine (JSON over HTTPS through an HttpTransport), authenticated by VaultAuth.
//
// Configuration (VaultTransitConfigFromEnv):
//   VAULT_ADDR                   https://vault.example:8200 (required)
//   REKEY_VAULT_TRANSIT_KEY      the Transit key data keys are wrapped under (required)
//   REKEY_VAULT_TRANSIT_MOUNT    where Transit is mounted (default "transit")
//   VAULT_NAMESPACE              Vault Enterprise namespace, sent as X-Vault-Namespace (optional)
//   VAULT_CACERT                 PEM bundle of trusted CAs (optional)
//   authentication, first match wins (see vault_auth.h for the lifecycle):
//     REKEY_VAULT_K8S_ROLE [+ REKEY_VAULT_K8S_MOUNT (default "kubernetes"),
//                           REKEY_VAULT_K8S_JWT_FILE (default the pod's service-account token)]
//     VAULT_TOKEN_FILE
//     VAULT_TOKEN
//
// kms_key_ref (rekey.keys.kms_key_ref) is "<mount>/keys/<name>", the path of the Transit key in
// Vault's API (e.g. "transit/keys/rekey"); the mount may contain slashes, the name may not.
// wrapped_key holds the Transit ciphertext as Vault returns it ("vault:v3:<base64>"), so its key
// version is visible.
//
// Key-id binding. Transit's associated_data cannot be used: datakey and rewrap do not accept it.
// Instead every call carries the Transit derivation context base64("rekey_key_id=<id>"): with a
// derived key (created with derived=true) each context gets its own AES key, so a wrapped key moved
// to another row fails to decrypt ("message authentication failed"), and rewrap keeps the binding.
// A non-derived key would silently ignore the context, so GenerateDataKey and WrapDataKey first
// check (once per process, GET <mount>/keys/<name>) that the key is derived, and refuse with a
// KeyError otherwise. Unwrapping makes exactly one call (decrypt), never a check.
//
// Operations:
//   GenerateDataKey  POST <mount>/datakey/wrapped/<name> {bits: 256, context}: Vault generates the
//                    key; then POST <mount>/decrypt/<name> for the plaintext the caller needs. The
//                    decrypt also proves, before the key is stored, that it unwraps under its
//                    binding, and the policy needs no datakey/plaintext capability.
//   WrapDataKey      POST <mount>/encrypt/<name> {plaintext, context} (import)
//   UnwrapDataKey    POST <mount>/decrypt/<name> {ciphertext, context}
//   Describe         GET  <mount>/keys/<name>
//   Rewrap           POST <mount>/rewrap/<name> when the destination is the same Transit key
//                    (re-encrypts under its latest version inside Vault); decrypt + encrypt when
//                    it is another key (Transit cannot rewrap across keys).
//
// Each method makes the calls above (plus token lookup, renewal or login when due; after a 403
// one retry with a fresh token, see VaultAuth). Retries, rate limiting and circuit breaking belong
// to ResilientKms. Errors are mapped by ThrowVaultError (vault_errors.h); a response that cannot
// be parsed is a PermanentError, never a crash.
//
// Thread-safety: all methods are thread-safe if the transport is.
#pragma once

#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kms/aws_kms.h"  // ReWrappedKey (shared with the AWS provider's ReEncrypt)
#include "kms/http_transport.h"
#include "kms/kms_client.h"
#include "kms/vault_auth.h"

namespace rekey::kms {

constexpr char kVaultTransitProvider[] = "vault-transit";

struct VaultTransitConfig {
  VaultConnection connection;
  VaultAuthConfig auth;
  std::string mount = "transit";  // no leading or trailing slash
  std::string key;                // Transit key name
};

// Throws ConfigError naming the missing or malformed variable. With require_key false (the
// vault-transit column codec, whose jobs name their own Transit key), REKEY_VAULT_TRANSIT_KEY is
// optional.
VaultTransitConfig VaultTransitConfigFromEnv(const GetenvFn& getenv, bool require_key = true);

// A kms_key_ref split into mount and key name; nullopt iff it is not "<mount>/keys/<name>".
struct TransitKeyRef {
  std::string mount;
  std::string name;
};
std::optional<TransitKeyRef> ParseTransitKeyRef(const std::string& kms_key_ref);

// base64 of the derivation context that binds a data key to rekey key id `key_id`.
std::string TransitContext(uint32_t key_id);

// The key version N of a Transit ciphertext "vault:vN:<base64>"; nullopt iff `value` is not one.
std::optional<int> TransitCiphertextVersion(std::string_view value);

// An application value to rewrap (RewrapValues): the stored ciphertext, and the base64 derivation
// context it was encrypted with (empty for a non-derived key).
struct TransitRewrapItem {
  std::string ciphertext;
  std::string context;
};
struct TransitRewrapResult {
  std::string ciphertext;  // the rewrapped value; empty iff the item failed
  std::string error;       // Vault's error for this item (e.g. "cipher: message authentication
                           // failed"); empty iff it succeeded
  int key_version = 0;     // the version it is now under
};

constexpr size_t kTransitBatchSize = 250;

class VaultTransitClient : public KmsClient {
 public:
  VaultTransitClient(VaultTransitConfig config, std::shared_ptr<HttpTransport> transport,
                     VaultClock clock = std::chrono::steady_clock::now);

  std::string provider() const override { return kVaultTransitProvider; }
  // "<mount>/keys/<name>"
  std::string default_key_ref() const override;
  GeneratedDataKey GenerateDataKey(uint32_t key_id) override;
  GeneratedDataKey WrapDataKey(uint32_t key_id, const Secret& plaintext) override;
  Secret UnwrapDataKey(uint32_t key_id, const std::string& kms_key_ref,
                       const Bytes& wrapped) override;
  // "vault-transit (key transit/keys/rekey, aes256-gcm96, derived, latest version 2, at <addr>,
  // namespace <ns>, token from ...)". Throws KeyError naming the key iff it does not exist, is not
  // derived or cannot encrypt.
  std::string Describe() override;

  // tink-go-hcvault's Aead (see KmsClient::EncryptBlob): <mount>/encrypt|decrypt/<name> of
  // Transit key `key_ref` (<mount>/keys/<name>), plaintext in base64, "context" = base64(ad) iff ad
  // is non-empty, the ciphertext the bytes of Vault's "vault:vN:..." string. With empty associated
  // data (keysets) the key must not be derived: Vault answers 400 "missing 'context'", since
  // Tink sends none. ConfigError for a malformed `key_ref`.
  Bytes EncryptBlob(const std::string& key_ref, const Secret& plaintext,
                    const Bytes& associated_data) override;
  Secret DecryptBlob(const std::string& key_ref, const Bytes& ciphertext,
                     const Bytes& associated_data) override;

  // Rewrap() through the generic interface (`rekey keys rewrap`).
  GeneratedDataKey RewrapDataKey(uint32_t key_id, const std::string& source_key_ref,
                                 const Bytes& wrapped,
                                 const std::string& destination_key_ref) override;

  // Re-wraps data key `key_id` from `source_key_ref` to `destination_key_ref` (see the file
  // comment): for master-key rotation and Transit key-version upgrades.
  ReWrappedKey Rewrap(uint32_t key_id, const std::string& source_key_ref, const Bytes& wrapped,
                      const std::string& destination_key_ref);

  // Rewraps application values stored as Transit ciphertexts ("vault:vN:...") to the latest
  // version of Transit key `key_ref` (<mount>/keys/<name>) inside Vault, with batch_input in
  // requests of at most kTransitBatchSize items: rekey never sees their plaintext. Returns one
  // result per item, in order. An item that fails (not a Transit value, does not decrypt, version
  // below min_decryption_version) gets its error and no ciphertext; the other items go on.
  // Throws (like every call) for a failure of the whole request: 403, 429, 5xx, no such key.
  // The building block of the vault-transit column codec (rotation/batch_rotator.h).
  std::vector<TransitRewrapResult> RewrapValues(const std::string& key_ref,
                                                const std::vector<TransitRewrapItem>& items);

  // What the vault-transit column codec needs to know of Transit key `key_ref`
  // (GET <mount>/keys/<name>). Throws ConfigError for a malformed ref, KeyError if the key does
  // not exist or cannot encrypt, and as every call for the rest.
  struct KeyInfo {
    bool derived = false;
    int latest_version = 0;
    int min_decryption_version = 1;
  };
  KeyInfo ReadTransitKey(const std::string& key_ref);

  VaultAuth& auth() { return auth_; }

 private:
  // Sends one Vault call (retried once with a fresh token after a 403); returns the parsed 2xx
  // body or throws. `operation` is the Transit path segment ("decrypt", "datakey/wrapped", ...).
  // With `batch`, a 400 whose data holds batch_results is returned rather than thrown.
  nlohmann::json Call(const std::string& method, const TransitKeyRef& key,
                      const std::string& operation, std::string body,
                      const std::string& data_key_id, bool batch = false);
  // GET <mount>/keys/<name> -> its "data"; throws KeyError if it does not exist.
  nlohmann::json ReadKey(const TransitKeyRef& key);
  // KeyError unless `key` is a derived Transit key that can encrypt (checked once per process for
  // the default key).
  void RequireDerived(const TransitKeyRef& key, const nlohmann::json& data) const;
  void CheckDefaultKeyDerived();
  std::string Encrypt(const TransitKeyRef& key, uint32_t key_id, const Secret& plaintext);
  Secret Decrypt(const TransitKeyRef& key, uint32_t key_id, const std::string& ciphertext);

  const VaultTransitConfig config_;
  const TransitKeyRef default_key_;
  std::shared_ptr<HttpTransport> transport_;
  VaultAuth auth_;
  std::atomic<bool> default_key_checked_{false};
};

}  // namespace rekey::kms
