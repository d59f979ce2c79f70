// ActiveRecord::Encryption keys in the form Rails applications hold them (docs/FORMAT.md,
// "rails", "Keys").
//
// Import reads one key from the YAML of the application's credentials, as
// `bin/rails db:encryption:init` prints it, plus the digest the application derives with:
//
//   active_record_encryption:            # optional: the credentials' section line
//     primary_key: EGY8WhulUOXixybod7ZWwMIL68R9o5kC     # or deterministic_key: (one of the two)
//     key_derivation_salt: xEY0dt6TZcAMg52K7O84wYzkjvbA62Hz
//     hash_digest_class: SHA256          # SHA1 (Rails 7.0, and the framework default) or SHA256
//                                        # (load_defaults 7.1+); required, never guessed
//
// and derives the key as Rails does (crypto/rails.h, DeriveRailsKey). rekey's keyring keeps the
// derived 32-byte key (Rails' Key#secret, what AES-256-GCM is keyed with), so the derivation
// parameters are applied at import and kept nowhere else: a key in the keyring is complete, and a
// key rekey generates itself is as good a Rails key as a derived one.
//
// Export writes what config.active_record.encryption takes for keys given as such: a
// KeyProvider over the keys, the primary (encrypting) key last, as Rails' KeyProvider uses the
// last. The primary_key strings cannot be recovered from derived keys, and are not needed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/secret.h"

namespace rekey::keyring {

// The derived key of the one primary_key (or deterministic_key) of `text`. Throws KeyError (one
// line, never echoing key material) for anything else: no key or two, a list of keys (one per
// --key-id), no salt, a digest missing or not SHA1/SHA256, a line that is not `name: value`.
Secret ParseRailsKeyFile(std::string_view text);

// The Ruby line configuring a KeyProvider over `keys`, given in the order Rails takes them (the
// primary last), each as the hex of its 32 bytes.
std::string RailsKeyProviderConfig(const std::vector<const Secret*>& keys);

}  // namespace rekey::keyring
