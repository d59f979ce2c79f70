// Cloak keys in the form applications configure them (docs/FORMAT.md, "cloak"): one key is the
// text "k1.aesgcm256.<base64url of 32 bytes, '='-padded>" (the library's generateKey); a
// keychain is a comma-separated list of them, as prisma-field-encryption's
// PRISMA_FIELD_DECRYPTION_KEYS takes it, and the key new values are written under is
// PRISMA_FIELD_ENCRYPTION_KEY. rekey keeps a cloak key as the 32-byte AES-256-GCM key it is.
//
// A key file for `rekey keys import --format cloak` is either the two lines the export writes
//   PRISMA_FIELD_ENCRYPTION_KEY=k1.aesgcm256....
//   PRISMA_FIELD_DECRYPTION_KEYS=k1.aesgcm256....,k1.aesgcm256....
// (the encryption key is the primary; the keychain may repeat it), or one bare key or keychain
// (its first key the primary). Items may also be separated by newlines; blank lines are skipped.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "keyring/key_exchange.h"

namespace rekey::keyring {

inline constexpr std::string_view kCloakEncryptionKeyVariable = "PRISMA_FIELD_ENCRYPTION_KEY";
inline constexpr std::string_view kCloakDecryptionKeysVariable = "PRISMA_FIELD_DECRYPTION_KEYS";

// The keys of a cloak key file, each once, the primary first then in the file's order. Their ids:
// `first_id`, first_id + 1, ... in that order when given (--key-id N); else each key's
// fingerprint read as a 32-bit number (6f28c026 -> 1865990182), so a re-import adopts the same
// ids and the ids say which values a key holds. Throws KeyError (one line, never echoing key
// material) for an item that is not a cloak key, an unknown variable, two encryption keys, an
// id past 4294967295, or a file without a key.
std::vector<ExchangedKey> ParseCloakKeyFile(std::string_view text,
                                            std::optional<uint32_t> first_id);

// The file the application configures: the encryption key (the primary; nullptr-free `keys`
// must hold exactly one) and the keychain of every key, primary first, in the form above.
std::string CloakKeyFile(const std::vector<ExchangedKey>& keys);

}  // namespace rekey::keyring
