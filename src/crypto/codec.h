// Ciphertext codecs: how one encrypted column value is laid out in a bytea. docs/FORMAT.md is the
// normative description for applications in other languages; tests/vectors/*.json hold vectors
// produced by an independent Python implementation.
//
//   tink (default): 0x01 || key_id (uint32 big-endian) || IV (12) || ciphertext || tag (16)
//                   Tink's AES-256-GCM wire format with the TINK output prefix. As in Tink, the
//                   5-byte prefix is not part of the GCM associated data: a forged prefix can only
//                   select another key, under which the tag fails.
//   raw:            IV (12) || ciphertext || tag (16); the key id is an integer column of the row.
//
// The GCM associated data is the rendered associated-data template (crypto/associated_data.h),
// possibly empty. Opening is an expected-outcome operation: it returns a DecodeStatus and never
// throws for malformed input. Sealing throws only if OpenSSL itself fails.
//
// Thread-safety: the functions are stateless; they mutate the AesGcmKey they are given, so each
// thread must use its own keys (see crypto/aes_gcm.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "common/bytes.h"
#include "crypto/aes_gcm.h"

namespace rekey::crypto {

// kVaultTransit: a text column of Vault Transit ciphertexts ("vault:vN:..."), rotated inside Vault
// by rewrap (rotation/transit_rewrapper.h); rekey holds neither its key nor its plaintext.
// kFernet: Fernet tokens (crypto/fernet.h), which name no key: opened by trial decryption.
// kRails: ActiveRecord::Encryption's JSON messages (crypto/rails.h), stored as the column's text.
// kLockbox: Ruby Lockbox's AES-GCM values (crypto/lockbox.h), under keys derived per attribute;
// they name no key either.
// kAwsKms: AWS KMS ciphertext blobs (bytea or base64 text), rotated inside KMS by ReEncrypt
// (rotation/aws_kms_rewriter.h); rekey holds neither the KMS key nor the plaintext.
// kCloak: @47ng/cloak strings (crypto/cloak.h), text as stored, naming their key by fingerprint.
enum class CodecKind { kTink, kRaw, kVaultTransit, kFernet, kRails, kLockbox, kAwsKms, kCloak };

// Returns the codec named `name` ("tink", "raw", "vault-transit", "fernet", "rails", "lockbox",
// "aws-kms" or "cloak", exact lower case), nullopt for anything else.
std::optional<CodecKind> ParseCodecKind(std::string_view name);
// The name ParseCodecKind accepts for `kind`.
std::string_view CodecKindName(CodecKind kind);

// The outcome of opening one stored value. Strings from DecodeStatusName are stable error classes
// stored in the database (rekey.row_failures.error_class): "ok", "empty", "truncated",
// "bad_prefix", "unknown_key", "auth_failed". Never rename them.
enum class DecodeStatus {
  kOk,          // authenticated; the plaintext is valid
  kEmpty,       // zero-length value (an application wrote '' instead of NULL or a ciphertext)
  kTruncated,   // too short to be a value of this codec
  kBadPrefix,   // tink: the first byte is not the version byte 0x01 (not a Tink value)
  kUnknownKey,  // the key id names no key available to this process
  kAuthFailed,  // GCM rejected it: wrong key, wrong associated data, or corrupted/forged bytes
};
std::string_view DecodeStatusName(DecodeStatus status);

constexpr uint8_t kTinkVersionByte = 0x01;
constexpr size_t kTinkPrefixSize = 5;
constexpr size_t kTinkOverhead = kTinkPrefixSize + kGcmIvSize + kGcmTagSize;  // 33
constexpr size_t kRawOverhead = kGcmIvSize + kGcmTagSize;                     // 28
static_assert(kTinkOverhead == 33 && kRawOverhead == 28, "wire format sizes are normative");

// Key id of a Tink-format value; nullopt iff shorter than 5 bytes or the first byte is not 0x01.
std::optional<uint32_t> TinkKeyId(const uint8_t* value, size_t size);

// Resolves a key id to this thread's key; returns nullptr iff the key is not available. The
// returned key must stay valid for the duration of the Open call.
using KeyLookup = std::function<AesGcmKey*(uint32_t key_id)>;

// Opens a Tink value. Status precedence: size 0 → kEmpty; size < 5 → kTruncated; first byte
// != 0x01 → kBadPrefix; keys(key_id) == nullptr → kUnknownKey; size < 33 → kTruncated; GCM
// failure → kAuthFailed; else kOk. `*key_id` (if key_id is not null) is set whenever the prefix
// parsed, even if later steps fail, so the caller can report which key a failure concerns.
// `*plaintext` is replaced with the plaintext on kOk and cleared otherwise.
DecodeStatus OpenTink(const uint8_t* value, size_t size, const KeyLookup& keys, const uint8_t* ad,
                      size_t ad_size, Bytes* plaintext, uint32_t* key_id);

// Opens a raw value with the key named by the row's key-id column. Status precedence: size 0 →
// kEmpty; key == nullptr → kUnknownKey; size < 28 → kTruncated; GCM failure → kAuthFailed.
// `*plaintext` is replaced on kOk and cleared otherwise.
DecodeStatus OpenRaw(const uint8_t* value, size_t size, AesGcmKey* key, const uint8_t* ad,
                     size_t ad_size, Bytes* plaintext);

// Appends a Tink value (size + 33 bytes) sealing `plaintext` under `key`, which the caller
// asserts is the key with id `key_id`, with a fresh random IV.
void SealTink(uint32_t key_id, AesGcmKey& key, const uint8_t* plaintext, size_t size,
              const uint8_t* ad, size_t ad_size, Bytes* out);

// Appends a raw value (size + 28 bytes) with a fresh random IV.
void SealRaw(AesGcmKey& key, const uint8_t* plaintext, size_t size, const uint8_t* ad,
             size_t ad_size, Bytes* out);

// TEST ONLY: SealTink with a caller-chosen IV (kGcmIvSize bytes), to reproduce test vectors
// byte for byte. Reusing an IV under one key destroys GCM's security; production code must call
// SealTink.
void SealTinkWithIv(uint32_t key_id, AesGcmKey& key, const uint8_t* iv, const uint8_t* plaintext,
                    size_t size, const uint8_t* ad, size_t ad_size, Bytes* out);

}  // namespace rekey::crypto
