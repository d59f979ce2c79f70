// Lockbox master keys in the form applications configure them (docs/FORMAT.md, "lockbox"): a
// master key is 64 hex characters (Lockbox.generate_key, the LOCKBOX_MASTER_KEY variable); the
// configuration that reads a rotation's values is the master key and the previous versions Lockbox
// tries after it. rekey keeps a Lockbox master key in its keyring as the 32-byte data key it is
// (attribute keys are derived from it per column, crypto/lockbox.h), so `rekey keys import
// --format lockbox` only reads the form.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/secret.h"

namespace rekey::keyring {

// One master key: 64 hex digits, either case (as Lockbox's Utils.decode_key takes them),
// surrounding whitespace ignored. Throws KeyError (one line, never echoing key material) for
// anything else.
Secret ParseLockboxMasterKey(std::string_view text);

// The master key as Lockbox.generate_key writes it: 64 lower-case hex digits.
std::string LockboxMasterKeyText(const Secret& key);

// The configuration Lockbox reads, as a Rails initializer (config/initializers/lockbox.rb):
//   Lockbox.master_key = "<primary>"
//   Lockbox.default_options[:previous_versions] = [{master_key: "<other>"}, ...]
// `keys` is the primary first, then the previous versions in the order Lockbox is to try them.
std::string LockboxInitializer(const std::vector<const Secret*>& keys);

}  // namespace rekey::keyring
