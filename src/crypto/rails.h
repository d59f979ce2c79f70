// ActiveRecord::Encryption messages (Rails 7.0+, `encrypts :attr`): what a Rails application
// stores in an encrypted attribute's text column. docs/FORMAT.md, "rails", is the normative
// description here and cites the Rails source each rule comes from.
//
//   message  JSON text {"p": b64(ciphertext), "h": {"iv": b64(12), "at": b64(16) [, "e": b64(name
//            of the plaintext's Ruby encoding)] [, "k": <message: the data key, sealed>]
//            [, "i": b64(key reference)] [, "c": true]}}; b64 is strict, padded standard base64
//   cipher   AES-256-GCM, no associated data; the IV random, or for deterministic attributes
//            HMAC-SHA256(key, plaintext)[0, 12)
//   key      32 bytes: Rails' Key#secret, PBKDF2-HMAC(primary_key, key_derivation_salt, 2**16, 32)
//            with SHA1 (Rails 7.0; the framework default) or SHA256 (load_defaults 7.1+)
//   "i"      the first 4 hex digits of SHA1(key), written when store_key_references is on
//   "k"      envelope encryption: the payload is sealed under a random data key, and "k" is that
//            data key sealed under the primary key as a nested message (one level only)
//
// A message names its key only when it holds "i" (and then only up to a 16-bit reference):
// readers try their keys (trial decryption), restricted to those whose reference matches "i".
// Opening never throws for malformed input; the class says what is wrong (the stable
// rekey.row_failures.error_class strings below, never renamed).
//
// What is opened is the bytes Rails encrypted: when "c" is set they are zlib-deflated, and they
// are kept deflated here, since a rotation re-seals exactly those bytes and keeps "c" (and "e").
//
// Thread-safety: a RailsKey holds cipher state (crypto/aes_gcm.h); one per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"

namespace rekey::crypto {

// Stable error classes of a value that cannot be opened as a Rails message.
inline constexpr std::string_view kRailsEmptyClass = "empty";
inline constexpr std::string_view kRailsNotJsonClass = "not_json";
inline constexpr std::string_view kRailsNotMessageClass = "not_rails_message";
inline constexpr std::string_view kRailsTruncatedClass = "truncated";
inline constexpr std::string_view kRailsBadEncodingClass = "bad_encoding";
inline constexpr std::string_view kRailsUnknownKeyClass = "unknown_key";
inline constexpr std::string_view kRailsAuthFailedClass = "auth_failed";

// Iterations and length of Rails' key derivation (ActiveSupport::KeyGenerator defaults).
constexpr int kRailsPbkdf2Iterations = 1 << 16;
constexpr size_t kRailsKeySize = 32;

enum class RailsDigest { kSha1, kSha256 };
// "SHA1" or "SHA256", also as Ruby names them ("OpenSSL::Digest::SHA256"), any case; else nullopt.
std::optional<RailsDigest> ParseRailsDigest(std::string_view name);
std::string_view RailsDigestName(RailsDigest digest);  // "SHA1" or "SHA256"

// Rails' Key.derive_from(password): PBKDF2-HMAC-<digest>(password, salt, 2**16 iterations, 32
// bytes). Costs tens of milliseconds by design: derive once, at import.
Secret DeriveRailsKey(std::string_view password, std::string_view salt, RailsDigest digest);

// Key#id: the first 4 hex digits (lower case) of SHA1(key), the "i" header's decoded text.
std::string RailsKeyReference(const Secret& key);

class RailsKey {
 public:
  // Takes ownership of the 32-byte key (Rails' Key#secret). Throws KeyError for another size.
  explicit RailsKey(Secret key);

  const std::string& reference() const { return reference_; }

  // Opens ciphertext `payload` with `iv` (12) and `tag` (16) into *plaintext (replaced); false,
  // with *plaintext cleared, iff it does not authenticate under this key.
  bool Open(const Bytes& iv, const Bytes& payload, const Bytes& tag, Bytes* plaintext);
  // Seals `plaintext` into *iv, *payload, *tag (replaced): the IV random, or when `deterministic`
  // the deterministic IV, as Rails' Aes256Gcm#generate_iv chooses.
  void Seal(const Bytes& plaintext, bool deterministic, Bytes* iv, Bytes* payload, Bytes* tag);
  // HMAC-SHA256(key, plaintext)[0, 12): the IV of a deterministic attribute's value.
  Bytes DeterministicIv(const Bytes& plaintext) const;

 private:
  Secret secret_;
  AesGcmKey aead_;
  std::string reference_;
  Bytes sealed_;  // IV || ciphertext || tag, AesGcmKey's layout
};

// This thread's key for a key id; nullptr iff not available here (it is then skipped).
using RailsKeyLookup = std::function<RailsKey*(uint32_t key_id)>;

// One stored message, parsed. Only what a rotation changes is held apart; every other header is
// kept in `json_` as it was read, in its order.
class RailsMessage {
 public:
  // Parses `text`. Returns "" on success, else the value's error class (empty, not_json,
  // not_rails_message, truncated, bad_encoding). A text that begins as a message does but does
  // not parse is "truncated"; any other unparsable text "not_json".
  std::string_view Parse(std::string_view text);
  ~RailsMessage() { Wipe(); }

  bool envelope() const { return envelope_; }
  const std::optional<std::string>& key_reference() const { return key_reference_; }

  // Trial decryption: opens the message under the first of `key_ids` whose key opens it (only
  // those whose reference matches "i", if the message has one), setting *key_id. Returns "" or
  // unknown_key (an "i" that no available key of `key_ids` has) or auth_failed (no candidate
  // opens it; for an envelope, also a data key that opens but does not open the payload).
  std::string_view Open(const std::vector<uint32_t>& key_ids, const RailsKeyLookup& keys,
                        uint32_t* key_id);
  // After a successful Open: the payload's plaintext, the bytes Rails encrypted (deflated if
  // "c"). Wiped by the next Parse and by the destructor.
  const Bytes& plaintext() const { return plaintext_; }

  // After a successful Open: the message sealed under `to` instead, its other headers kept, into
  // *text (replaced). A plain message is re-encrypted with a fresh IV, or with `to`'s
  // deterministic IV if its IV was the deterministic one under the key that opened it; an
  // envelope message keeps its payload and re-seals only its data key ("k"). "i" is rewritten
  // to `to`'s reference iff the message had one.
  void Reseal(RailsKey& to, std::string* text);

 private:
  struct Sealed {
    Bytes payload, iv, tag;
  };
  // Reads {"p", "h": {"iv", "at"}} of a message object at nesting `level` (1 = the value).
  static std::string_view ParseSealed(const nlohmann::ordered_json& object, int level, Sealed* out);
  void Wipe();
  static void WriteSealed(const Sealed& sealed, nlohmann::ordered_json* object);

  nlohmann::ordered_json json_;  // the message as read; Reseal changes only what it must
  Sealed outer_;                 // the value's payload and headers
  Sealed data_key_;              // "k": the data key, sealed under the primary key
  bool envelope_ = false;
  std::optional<std::string> key_reference_;
  // Filled by Open.
  Bytes plaintext_;                  // the payload's plaintext
  Bytes data_key_plain_;             // an envelope's data key
  RailsKey* opened_with_ = nullptr;  // the key that opened the value (or its "k")
};

}  // namespace rekey::crypto
