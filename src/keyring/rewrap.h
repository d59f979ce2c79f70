// Master-key rotation: re-wraps data keys in rekey.keys under another KMS key or provider
// without touching a single data row (the data keys themselves do not change, so no value needs
// re-encrypting).
//
// Per key, in its own transaction (the key row locked FOR UPDATE meanwhile):
//   * already wrapped by the destination provider under the destination key: skipped, so an
//     interrupted run is resumed by running it again;
//   * destroyed: skipped (there is nothing left to wrap);
//   * same provider, not "local": destination.RewrapDataKey (AWS ReEncrypt, Vault rewrap: the
//     plaintext never leaves the KMS);
//   * otherwise (another provider, or local -> local with another master key): unwrapped by the
//     source client, wrapped by the destination, and the new wrapping unwrapped once more and
//     compared before it replaces the old one.
// The UPDATE of kms_provider/kms_key_ref/wrapped_key is audited by the database itself
// ('key.rewrapped', sql/schema/20_audit.sql); a summary row 'keys.rewrap' follows the run.
//
// Errors: whatever the KMS or database throws, after the keys before it were committed; a key
// whose provider no client here can unwrap is a ConfigError from `source`.
//
// `rekey keys rewrap` (worker/keys_command.cpp) only turns flags into the calls below and prints
// the outcomes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <pqxx/pqxx>

#include "kms/kms_client.h"

namespace rekey::keyring {

struct RewrapOutcome {
  enum class What { kRewrapped, kAlreadyThere, kDestroyed };
  uint32_t key_id = 0;
  What what = What::kRewrapped;
  std::string from;  // "<provider>:<kms_key_ref>" before
  std::string to;    // "<provider>:<kms_key_ref>" after (== from unless rewrapped)
};

// The client that can unwrap data keys wrapped by `provider` under `key_ref`.
using SourceClientFn =
    std::function<kms::KmsClient&(const std::string& provider, const std::string& key_ref)>;

// The previous local master key, for re-wrapping local keys under a new one.
constexpr char kOldMasterKeyEnv[] = "REKEY_OLD_MASTER_KEY";
constexpr char kOldMasterKeyFileEnv[] = "REKEY_OLD_MASTER_KEY_FILE";

// The provider to re-wrap `key_ids` (empty: every key) with when none is named: the one their
// wrappings already use (a master-key rotation in place); local if none is wrapped. Throws
// ConfigError if they use several.
std::string CurrentProvider(pqxx::connection& conn, const std::vector<uint32_t>& key_ids);

// Where a rewrap goes.
struct RewrapDestination {
  std::unique_ptr<kms::KmsClient> client;  // wraps new keys under key_ref
  std::string key_ref;                     // canonical (client->CanonicalKeyRef)
  kms::GetenvFn env;                       // what the client was configured from
};

// A client of `provider` that wraps new keys under `key_ref`: the provider's key variable is
// overridden (aws-kms: REKEY_AWS_KMS_KEY_ID; vault-transit: the mount and name of a
// <mount>/keys/<name> ref); local's key is its master key, whose ref must be `key_ref`. Throws
// ConfigError for a ref the provider cannot take, and whatever the KMS throws if the key is
// unusable -- before any key is touched.
RewrapDestination MakeRewrapDestination(const std::string& provider, const std::string& key_ref,
                                        const kms::GetenvFn& getenv = kms::ProcessGetenv);

// The clients that unwrap the keys' current wrappings (a SourceClientFn): the destination for its
// own key, one client per other provider (configured from the destination's environment), and
// for local keys the master key of REKEY_MASTER_KEY(_FILE) or of REKEY_OLD_MASTER_KEY(_FILE).
// Throws ConfigError for a local key under neither. Owns the clients it makes; must outlive the
// RewrapKeys call it serves. Not thread-safe.
class SourceClients {
 public:
  explicit SourceClients(const RewrapDestination& destination) : destination_(destination) {}
  kms::KmsClient& operator()(const std::string& provider, const std::string& key_ref);

 private:
  const RewrapDestination& destination_;
  std::map<std::string, std::unique_ptr<kms::KmsClient>> clients_;
};

// Re-wraps `key_ids` (empty: every key) under `destination_key_ref` of `destination` (a ref in
// the form kms_key_ref stores: destination.CanonicalKeyRef's result). `destination` must wrap new
// keys (WrapDataKey) under that same key: configure it so (the CLI overrides its key variable).
// `on_each` is called after each key's transaction committed. Returns the outcomes in key id order.
std::vector<RewrapOutcome> RewrapKeys(pqxx::connection& conn, kms::KmsClient& destination,
                                      const std::string& destination_key_ref,
                                      const SourceClientFn& source,
                                      const std::vector<uint32_t>& key_ids,
                                      const std::function<void(const RewrapOutcome&)>& on_each);

}  // namespace rekey::keyring
