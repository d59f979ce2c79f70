// Fernet tokens (https://github.com/fernet/spec, Spec.md; what Python's cryptography.fernet,
// Django and Airflow write). docs/FORMAT.md, "fernet", is the normative description here.
//
//   key    32 bytes: signing key (16) || encryption key (16); applications keep it as base64url
//          text (44 characters, padded)
//   token  0x80 (version) || timestamp (uint64 big-endian, seconds since the epoch) || IV (16)
//          || AES-128-CBC ciphertext of the plaintext, PKCS#7-padded || HMAC-SHA256 (32) over
//          everything before it, with the signing key; stored as base64url text (the column's
//          stored form, crypto/text_encoding.h, decodes it; these functions see the bytes)
//
// A token names no key: a reader tries its keys in turn (trial decryption), which the HMAC makes
// cheap -- a wrong key fails at the HMAC, before any decryption. Opening never throws for
// malformed input; the status says what is wrong, in crypto/codec.h's stable classes.
//
// Thread-safety: a FernetKey holds no cipher state between calls; it may be shared read-only.
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
#include "crypto/codec.h"

namespace rekey::crypto {

constexpr uint8_t kFernetVersion = 0x80;
constexpr size_t kFernetKeySize = 32;
constexpr size_t kFernetIvSize = 16;
constexpr size_t kFernetHmacSize = 32;
constexpr size_t kFernetHeaderSize = 1 + 8 + kFernetIvSize;  // version, timestamp, IV
// The shortest token: one block of ciphertext (PKCS#7 pads an empty plaintext to a whole block).
constexpr size_t kFernetMinTokenSize = kFernetHeaderSize + 16 + kFernetHmacSize;  // 73

class FernetKey {
 public:
  // Takes ownership of `key`. Throws KeyError unless it is exactly 32 bytes.
  explicit FernetKey(Secret key);

  // Opens a token (its bytes, not its base64url text). Status precedence: size 0 -> kEmpty;
  // first byte != 0x80 -> kBadPrefix; size < 73 or a ciphertext that is not whole blocks ->
  // kTruncated; HMAC mismatch (another key, or tampered bytes) or bad padding -> kAuthFailed;
  // else kOk. On kOk *plaintext holds the plaintext and *timestamp (if not null) the token's;
  // otherwise *plaintext is cleared. No TTL is checked: rotation keeps a token's age, it does not
  // judge it.
  DecodeStatus Open(const uint8_t* token, size_t size, Bytes* plaintext,
                    uint64_t* timestamp = nullptr) const;

  // Replaces *out with a token of `plaintext` carrying `timestamp`, with a fresh random IV.
  void Seal(uint64_t timestamp, const uint8_t* plaintext, size_t size, Bytes* out) const;
  // TEST ONLY: Seal with a caller-chosen IV (kFernetIvSize bytes), to reproduce the spec's
  // vectors byte for byte.
  void SealWithIv(uint64_t timestamp, const uint8_t* iv, const uint8_t* plaintext, size_t size,
                  Bytes* out) const;

 private:
  Secret key_;  // signing key || encryption key
};

// This thread's Fernet key for a key id; nullptr iff the key is not available here (it is then
// skipped). May throw if the key cannot be had now (a KMS failure).
using FernetKeyLookup = std::function<const FernetKey*(uint32_t key_id)>;

// Trial decryption: opens `token` under the first of `key_ids` (in order) whose key opens it,
// setting *key_id to it (and *timestamp, if not null). A structural failure (kEmpty, kBadPrefix,
// kTruncated) is the same under every key and returned at once; kAuthFailed iff no available key
// opens it.
DecodeStatus OpenFernetTrial(const uint8_t* token, size_t size,
                             const std::vector<uint32_t>& key_ids, const FernetKeyLookup& keys,
                             Bytes* plaintext, uint64_t* timestamp, uint32_t* key_id);

// A Fernet key in the applications' text form (base64url of 32 bytes, padding optional;
// surrounding whitespace ignored), nullopt for anything else.
std::optional<Secret> ParseFernetKeyText(std::string_view text);
// The text form Fernet.generate_key() writes: base64url, padded (44 characters).
std::string FernetKeyText(const Secret& key);

}  // namespace rekey::crypto
