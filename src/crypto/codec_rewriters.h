// The one place a local codec's ValueRewriter (crypto/value_rewriter.h) is chosen and built: the
// codecs whose values this process opens with keys it holds (tink, raw, fernet, cloak, lockbox,
// rails). Rotation builds a job's rewriters through rotation/column_rewriters.h, which adds the
// codecs a remote service rewrites (vault-transit, aws-kms); the census by trial decryption
// (keyring/trial_census.h) calls this directly.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

#include "common/secret.h"
#include "crypto/aead_rewriters.h"
#include "crypto/codec.h"
#include "crypto/fernet.h"
#include "crypto/lockbox.h"
#include "crypto/rails.h"
#include "crypto/value_rewriter.h"

namespace rekey::crypto {

// How the rewriters get their keys: this thread's key of an id, in each codec's form. The lookups
// answer as each rewriter's header asks (for a rewrite, every key id of the direction; for
// OpenBatch, nullptr for a key not available); `material` is the key's bytes as the data-key
// source hands them over (rotation::DataKeySource: NoSuchKeyError for an unknown key), for the
// codecs that derive their keys per batch (cloak, lockbox). The rewriters copy these functions;
// what they refer to must outlive the rewriters.
struct CodecKeys {
  KeyLookup aead;  // tink, raw
  FernetKeyLookup fernet;
  RailsKeyLookup rails;
  std::function<Secret(uint32_t)> material;  // cloak, lockbox
};

// Keys for OpenBatch (verification, the census) from a data-key source: each key made once per
// id, and kept; nullptr for an id the source does not know (NoSuchKeyError: unknown or destroyed),
// so its values count as opened by no key. Any other error of the source (the KMS denying access,
// a disabled KMS key) is the environment's fault, not the data's: it propagates. Not copyable
// (keys() refers to it); one thread at a time.
class OpeningKeys {
 public:
  explicit OpeningKeys(std::function<Secret(uint32_t)> source);
  OpeningKeys(const OpeningKeys&) = delete;
  OpeningKeys& operator=(const OpeningKeys&) = delete;

  const CodecKeys& keys() const { return keys_; }

 private:
  template <typename Key>
  Key* Made(std::unordered_map<uint32_t, std::unique_ptr<Key>>* made, uint32_t id);

  std::function<Secret(uint32_t)> source_;
  std::unordered_map<uint32_t, std::unique_ptr<AesGcmKey>> aead_;
  std::unordered_map<uint32_t, std::unique_ptr<FernetKey>> fernet_;
  std::unordered_map<uint32_t, std::unique_ptr<RailsKey>> rails_;
  CodecKeys keys_;
};

// The rewriter of `codec` for one direction (`moves`: source key id -> target key id, which must
// outlive it), or nullptr iff the codec is rewritten by a remote service (kVaultTransit, kAwsKms).
// `table` binds tink and raw values to their rows (crypto/aead_rewriters.h); `lockbox_names`
// gives each lockbox column of the job the names its attribute keys derive from.
std::unique_ptr<ValueRewriter> MakeLocalRewriter(
    CodecKind codec, const std::map<uint32_t, uint32_t>* moves, const TableBinding& table,
    const std::map<std::string, LockboxKeyNames>& lockbox_names, const CodecKeys& keys);

}  // namespace rekey::crypto
