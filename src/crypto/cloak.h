// Cloak strings: what npm @47ng/cloak (1.2.0; prisma-field-encryption's cipher) stores in a text
// column. docs/FORMAT.md, "cloak", is the normative description here; it was read off the
// library's own source (dist/key.js, message.js, ciphers/aes-gcm.js), and src/crypto/cloak_test.cpp
// holds strings the library wrote (tests/cloak/make_vectors.mjs).
//
//   key         32 bytes, configured as the text "k1.aesgcm256." || base64url(key) with '='
//               padding (57 characters, as the library's generateKey writes it)
//   fingerprint the first 8 hex digits (lower case) of SHA-256 over that key text: a public hash
//               that names the key, not key material
//   value       "v1.aesgcm256." || fingerprint || "." || base64url(IV, 12 bytes: 16 characters)
//               || "." || base64url(AES-256-GCM ciphertext || tag (16), '='-padded)
//               No associated data is bound: a value may be moved between rows or columns.
//
// A value names its key through the fingerprint; the key with that fingerprint opens it.
// Opening never throws for malformed input: the status says what is wrong, in stable classes.
//
// Thread-safety: a CloakKey holds cipher state (crypto/aes_gcm.h): one per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"

namespace rekey::crypto {

inline constexpr std::string_view kCloakValuePrefix = "v1.aesgcm256.";
inline constexpr std::string_view kCloakKeyPrefix = "k1.aesgcm256.";
constexpr size_t kCloakFingerprintSize = 8;  // hex digits
constexpr size_t kCloakIvTextSize = 16;      // base64url of the 12-byte IV, never padded

// The outcome of reading one stored string. CloakStatusName gives the stable error classes stored
// in rekey.row_failures.error_class: "ok", "empty", "not_cloak", "bad_prefix", "truncated",
// "unknown_fingerprint", "auth_failed". Never rename them.
enum class CloakStatus {
  kOk,
  kEmpty,               // ''
  kNotCloak,            // not a cloak string: plaintext, another format, characters out of place
  kBadPrefix,           // five dot-separated parts, but not "v1" "aesgcm256": another version
  kTruncated,           // "v1.aesgcm256." then too little: a part missing, cut short
  kUnknownFingerprint,  // a well-formed value whose fingerprint is none of the keys at hand
  kAuthFailed,          // the key of its fingerprint does not open it: tampered with
};
std::string_view CloakStatusName(CloakStatus status);

// A parsed value: what it says about itself.
struct CloakValue {
  std::string_view fingerprint;  // 8 hex digits, as written (points into the parsed text)
  Bytes sealed;                  // IV || ciphertext || tag, as crypto/aes_gcm.h opens it
};

// Parses the structure of `text` (size bytes) into *out. Status precedence: size 0 -> kEmpty;
// not starting with "v1.aesgcm256.": kBadPrefix if it has five dot-separated parts and begins
// with 'v', else kNotCloak; fewer than three parts after the prefix, an IV shorter than 16
// characters or a ciphertext of an impossible base64 length or shorter than the tag ->
// kTruncated; more parts, a fingerprint that is not 8 hex digits, an IV longer than 16
// characters, characters outside base64url (or '=' anywhere but at the end) -> kNotCloak.
CloakStatus ParseCloakValue(const uint8_t* text, size_t size, CloakValue* out);

class CloakKey {
 public:
  // Takes ownership of `key`. Throws KeyError unless it is exactly 32 bytes.
  explicit CloakKey(Secret key);

  // The key's fingerprint (8 lower-case hex digits).
  const std::string& fingerprint() const { return fingerprint_; }

  // Opens a parsed value (whose fingerprint the caller matched with this key's). Returns true and
  // replaces *plaintext iff GCM authenticates it; else clears *plaintext.
  bool Open(const CloakValue& value, Bytes* plaintext);

  // Replaces *out with the string of `plaintext` under this key, with a fresh random IV, exactly
  // as the library writes it.
  void Seal(const uint8_t* plaintext, size_t size, Bytes* out);
  // TEST ONLY: Seal with a caller-chosen IV (12 bytes), to reproduce the library's strings.
  void SealWithIv(const uint8_t* iv, const uint8_t* plaintext, size_t size, Bytes* out);

 private:
  void Format(Bytes* out);  // sealed_ (IV || ciphertext || tag) as a string, into *out

  AesGcmKey key_;
  std::string fingerprint_;
  Bytes sealed_;
};

// This thread's cloak key for a key id; nullptr iff the key is not available here (skipped).
using CloakKeyLookup = std::function<CloakKey*(uint32_t key_id)>;

// Opens `text` with the first of `key_ids` (in order) whose key has the value's fingerprint and
// opens it (two keys may share a 32-bit fingerprint: each is tried), setting *key_id. A
// structural failure is returned at once; kUnknownFingerprint iff no available key has the
// fingerprint; kAuthFailed iff some do and none opens it (*key_id is then the first of them).
CloakStatus OpenCloak(const uint8_t* text, size_t size, const std::vector<uint32_t>& key_ids,
                      const CloakKeyLookup& keys, Bytes* plaintext, uint32_t* key_id);

// The text form of a key: "k1.aesgcm256." || base64url, '='-padded (57 characters).
std::string CloakKeyText(const Secret& key);
// The fingerprint of a key's text form, as the library computes it.
std::string CloakFingerprint(std::string_view key_text);
// A key in the exact text form CloakKeyText writes (surrounding whitespace ignored); nullopt for
// anything else, the unpadded form included: the fingerprint is a hash of the text, so a key
// written without its '=' names itself otherwise and rekey would write values the application
// cannot find the key of.
std::optional<Secret> ParseCloakKeyText(std::string_view text);

}  // namespace rekey::crypto
