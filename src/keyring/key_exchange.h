// Keys handed over between rekey's keyring and an application's own key format (Tink keysets,
// keyring/tink_keyset.h; other formats add their codec beside it): adopting a set of keys into a
// scope, and collecting a scope's keys for export. Format-neutral: codecs turn files into
// ExchangedKeys and back, these functions turn ExchangedKeys into rows of rekey.keys and back.
//
// How adopted keys map onto the keyring's lifecycle (docs/keyring.md, "Tink keysets"):
//   * the format's primary key becomes the scope's primary if the scope has none, or if
//     `promote_primary` (the scope's primary is then demoted to decrypt_only, as `rekey keys
//     promote` does); otherwise it stays enabled, to be promoted by hand;
//   * every other key becomes decrypt_only: the application may hold values under it, so it must
//     stay readable, and rekey must never write under it (the lifecycle's "imported legacy key");
//   * a key id already in the keyring with the same material and scope is left as it is (a re-run
//     imports nothing twice); with other material, or in another scope, the whole adoption is
//     refused (StateError) before anything is written.
// Everything happens in the caller's transaction: a refusal of any key leaves nothing written once
// the caller rolls back (the CLI runs one transaction per command).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <pqxx/pqxx>

#include "common/secret.h"
#include "keyring/keyring.h"
#include "kms/kms_client.h"

namespace rekey::keyring {

// One data key in transit between rekey and an application's key format.
struct ExchangedKey {
  uint32_t key_id = 0;
  Secret key;  // 32 bytes
  bool primary = false;
};

// Returns the KMS client of a provider ("local", "aws-kms", "vault-transit"); for tests, a fixed
// client. The reference stays valid for the duration of the call it is passed to.
using KmsForProvider = std::function<kms::KmsClient&(const std::string& provider)>;

// Clients made by kms::MakeKmsClient from the process environment, one per provider, kept for the
// object's lifetime.
class EnvironmentKmsClients {
 public:
  kms::KmsClient& operator()(const std::string& provider);

 private:
  std::vector<std::pair<std::string, std::unique_ptr<kms::KmsClient>>> clients_;
};

struct AdoptOptions {
  std::string scope = kDefaultScope;
  bool promote_primary = false;
};

struct AdoptedKey {
  uint32_t key_id = 0;
  bool already_there = false;  // same id, scope and material were in the keyring: unchanged
  KeyStatus status = KeyStatus::kEnabled;  // after the adoption
};

struct AdoptResult {
  std::vector<AdoptedKey> keys;        // in the order given
  std::optional<uint32_t> demoted;     // the scope's previous primary, now decrypt_only
  std::optional<uint32_t> unpromoted;  // the format's primary, left enabled (scope has a primary)
};

// Adopts `keys` (exactly one marked primary) into options.scope, new keys wrapped by `wrap`.
// Existing key ids are unwrapped through `kms_for(their provider)` to compare material. Throws
// StateError for an id taken by other material or another scope, or a destroyed key of that id;
// KeyError for a key that is not 32 bytes; ConfigError for an empty scope; what the KMS throws.
AdoptResult AdoptKeys(pqxx::transaction_base& txn, kms::KmsClient& wrap,
                      const KmsForProvider& kms_for, const std::vector<ExchangedKey>& keys,
                      const AdoptOptions& options);

// The keys of `scope` an application may decrypt with (primary, decrypt_only and enabled; not
// retired or destroyed), unwrapped through `kms_for`, in key id order, the scope's primary marked.
// Throws StateError if the scope has no primary (an exported key set must say which key encrypts),
// KeyError if a key does not unwrap.
std::vector<ExchangedKey> DecryptableKeys(pqxx::transaction_base& txn, const std::string& scope,
                                          const KmsForProvider& kms_for);

}  // namespace rekey::keyring
