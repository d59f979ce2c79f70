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
// ('key.rewrapped', migrations/0002_jobs.sql); a summary row 'keys.rewrap' follows the run.
//
// Errors: whatever the KMS or database throws, after the keys before it were committed; a key
// whose provider no client here can unwrap is a ConfigError from `source`.
#pragma once

#include <cstdint>
#include <functional>
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
