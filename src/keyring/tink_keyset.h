// Tink keysets: Tink's own serialization of a set of keys (google.crypto.tink.Keyset, tink.proto),
// in its binary form (the serialized protobuf) and its JSON form (JsonKeysetWriter's: the proto3
// JSON mapping, enums by name, bytes in base64), cleartext or encrypted (EncryptedKeyset). rekey
// reads and writes them so that a Tink application hands its keys over, and takes them back, in
// the form Tink loads. Only the codec lives here; adopting keys into rekey.keys and collecting a
// scope's keys is keyring/key_exchange.h.
//
// The messages (tink.proto, aes_gcm.proto):
//   Keyset          { uint32 primary_key_id = 1; repeated Key key = 2; }
//   Keyset.Key      { KeyData key_data = 1; KeyStatusType status = 2; uint32 key_id = 3;
//                     OutputPrefixType output_prefix_type = 4; }
//   KeyData         { string type_url = 1; bytes value = 2; KeyMaterialType key_material_type = 3;
//   } EncryptedKeyset { bytes encrypted_keyset = 2; KeysetInfo keyset_info = 3; } KeysetInfo      {
//   uint32 primary_key_id = 1; repeated KeyInfo key_info = 2; } KeyInfo         { string type_url =
//   1; KeyStatusType status = 2; uint32 key_id = 3;
//                     OutputPrefixType output_prefix_type = 4; }
//   AesGcmKey       { uint32 version = 1; AesGcmParams params = 2 (empty); bytes key_value = 3; }
//
// Why a hand-written protobuf reader and writer rather than libprotobuf: these are seven small
// messages of varints and length-delimited fields, and the build image has neither protoc nor
// libprotobuf-dev; adding both (install-deps, CMake, generated code, a second copy of Tink's .proto
// files to keep in step) would cost more than the ~150 lines here. The code is held to Tink's
// bytes by vectors that tink-crypto itself produced (tests/tink/vectors.json, from
// tests/tink/make_vectors.mjs) and by tests/tink_keyset_pg_test.cpp, where tink-crypto reads what
// rekey writes. The reader skips unknown fields (every wire type but the deprecated groups), so a
// keyset from a newer Tink with added fields still reads.
//
// An encrypted keyset is what Tink's KeysetHandle.write(writer, masterKeyAead) writes (Java, C++,
// Go, Python; tink-crypto 0.1.1 leaves it unimplemented): encrypted_keyset =
// masterKeyAead.Encrypt(serialized Keyset, associated data = empty), and keyset_info the keys'
// metadata without material. The key-encryption key is a KMS key (KeysetKek below): with --kms
// local a raw AES-256-GCM Aead under the master key (Tink's subtle AesGcm: IV(12) || ciphertext ||
// tag, no output prefix; in Tink aesGcmFromRawKey(key) (JS), AesGcmJce(key) (Java)), with aws-kms
// and vault-transit the KMS's own Encrypt call as Tink's KMS Aeads make it.
//
// Key material: cleartext keysets, AesGcmKey values and decrypted keysets are held in Secret only.
//
// Errors: KeyError (exit 4) for a file that is no keyset, an unsupported key, or an encrypted
// keyset the key-encryption key does not open; each message says what to do.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"
#include "keyring/key_exchange.h"
#include "kms/kms_client.h"

namespace rekey::keyring::tink {

// The enums of tink.proto, by their wire numbers.
enum class KeyStatus : uint32_t { kUnknown = 0, kEnabled = 1, kDisabled = 2, kDestroyed = 3 };
enum class OutputPrefix : uint32_t { kUnknown = 0, kTink = 1, kLegacy = 2, kRaw = 3, kCrunchy = 4 };
enum class KeyMaterial : uint32_t {
  kUnknown = 0,
  kSymmetric = 1,
  kAsymmetricPrivate = 2,
  kAsymmetricPublic = 3,
  kRemote = 4
};

constexpr char kAesGcmTypeUrl[] = "type.googleapis.com/google.crypto.tink.AesGcmKey";

struct Key {
  std::string type_url;  // of key_data; empty iff the key has no key_data (a destroyed key)
  Secret value;          // key_data.value: the serialized key proto (e.g. an AesGcmKey)
  KeyMaterial material = KeyMaterial::kUnknown;
  KeyStatus status = KeyStatus::kUnknown;
  uint32_t key_id = 0;
  OutputPrefix prefix = OutputPrefix::kUnknown;
};

struct Keyset {
  uint32_t primary_key_id = 0;
  std::vector<Key> keys;
};

struct EncryptedKeyset {
  Bytes encrypted_keyset;  // the serialized Keyset, sealed by the key-encryption key
  Keyset info;             // keyset_info: every Key without value (no material)
};

// What a keyset file holds: exactly one of the two.
struct KeysetFile {
  std::optional<Keyset> cleartext;
  std::optional<EncryptedKeyset> encrypted;
};

// Reads a keyset file: JSON iff its first non-blank byte is '{' (encrypted iff it has
// "encryptedKeyset"), else the binary protobuf (encrypted iff it has field 3, keyset_info, or it
// does not read as a Keyset of keys with type URLs but does as an EncryptedKeyset). Throws KeyError
// saying which form was expected and where it broke, never quoting the contents.
KeysetFile ReadKeysetFile(std::string_view contents);

// The binary protobuf of `keyset` (Tink's BinaryKeysetWriter; fields in number order, zero
// values omitted as proto3 does). Holds key material, hence a Secret.
Secret SerializeKeyset(const Keyset& keyset);
// `keyset` in Tink's JSON form, one object, keys in Tink's order: {"primaryKeyId", "key": [{
// "keyData": {"typeUrl", "value", "keyMaterialType"}, "status", "keyId", "outputPrefixType"}]}.
Secret KeysetJson(const Keyset& keyset);

// Seals `keyset` under `kek` as Tink's KeysetHandle.write does (see above).
EncryptedKeyset EncryptKeyset(const Keyset& keyset, crypto::AesGcmKey& kek);
// Opens and parses it. Throws KeyError iff `kek` does not open it (another key-encryption key, or
// altered bytes), or what it holds is no keyset.
Keyset DecryptKeyset(const EncryptedKeyset& encrypted, crypto::AesGcmKey& kek);
// Binary protobuf and JSON ({"encryptedKeyset": base64, "keysetInfo": {"primaryKeyId",
// "keyInfo": [{"typeUrl", "status", "keyId", "outputPrefixType"}]}}) of an encrypted keyset.
Bytes SerializeEncryptedKeyset(const EncryptedKeyset& encrypted);
std::string EncryptedKeysetJson(const EncryptedKeyset& encrypted);

// The keys of `keyset` rekey can adopt, in keyset order: every ENABLED key must be an AesGcmKey of
// version 0 with a 32-byte key and output prefix TINK; DESTROYED keys (no material) are left out.
// Throws KeyError naming the first key that is none of these (another type, AES-128, RAW or
// LEGACY prefix, DISABLED or unknown status), a primary_key_id naming no ENABLED key, a key id
// listed twice, or a keyset with no key to adopt. Each message says what to do in Tink.
// Each is an ExchangedKey: the Tink key id is rekey's key id, and the key's ciphertexts are
// rekey's tink wire format (0x01 || key id || IV || ciphertext || tag, docs/FORMAT.md).
std::vector<ExchangedKey> AdoptableAesGcmKeys(const Keyset& keyset);

// The Keyset for `keys` (every key ENABLED, TINK prefix, AesGcmKey version 0), the key marked
// primary as its primary. Throws PermanentError unless exactly one key is marked primary.
Keyset AesGcmKeyset(const std::vector<ExchangedKey>& keys);

// The key-encryption key of an encrypted keyset: a KMS key through that provider's Tink Aead
// (kms::KmsClient::EncryptBlob), as Tink's KeysetHandle.write(writer, kmsAead) uses it:
//   local          the master key as a raw AES-256-GCM Aead (the same bytes as EncryptKeyset's
//                  AesGcmKey form above)
//   aws-kms        Tink's AwsKmsAead on that key (aws-kms://<key ARN>)
//   vault-transit  tink-go-hcvault's Aead on that Transit key (not derived: Tink sends no context)
struct KeysetKek {
  std::unique_ptr<kms::KmsClient> kms;
  std::string key_ref;  // the KMS key: local:<hex>, a key ARN or alias, <mount>/keys/<name>
};
// Made only when a keyset is encrypted or decrypted, so a cleartext keyset needs no KMS.
using KekSource = std::function<KeysetKek()>;

// Seals `keyset` under `kek` (associated data empty, as Tink's KeysetHandle.write).
EncryptedKeyset EncryptKeyset(const Keyset& keyset, const KeysetKek& kek);
// Opens and parses it. Throws KeyError iff the KMS key does not open it (another key, altered
// bytes, a key the caller may not use) or what it holds is no keyset; TransientError as the KMS.
Keyset DecryptKeyset(const EncryptedKeyset& encrypted, const KeysetKek& kek);

// The keys a keyset file hands over: ReadKeysetFile, DecryptKeyset under kek() if the file is
// encrypted, then AdoptableAesGcmKeys.
std::vector<ExchangedKey> KeysOfKeysetFile(std::string_view contents, const KekSource& kek);

enum class KeysetEncoding { kJson, kBinary };

// A keyset file of `keys`: the EncryptedKeyset under kek(), or the cleartext Keyset iff
// `cleartext`, in `encoding`.
Secret KeysetFileOf(const std::vector<ExchangedKey>& keys, bool cleartext, KeysetEncoding encoding,
                    const KekSource& kek);

}  // namespace rekey::keyring::tink
