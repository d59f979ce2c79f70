// ValueRewriter (crypto/value_rewriter.h) for cloak strings (crypto/cloak.h). A value names its
// key through its fingerprint, so no trial decryption: the job's keys are matched by fingerprint
// (computed from the key material when the batch starts; two keys that share a 32-bit fingerprint
// are both tried). A value under a source key is sealed under the key that source maps to, with a
// fresh IV, as the application's library writes it; one under a target key is kUnchanged without
// being decrypted (verification, rotation/verifier.h, opens those). Poison: the structure's class
// (empty, not_cloak, bad_prefix, truncated), "auth_failed" (the key of its fingerprint does not
// open it: tampered with); kKeyMissing "unknown_fingerprint": its fingerprint is none of the
// job's keys. Cloak binds no associated data: the job's template, if any, is not used.
//
// OpenBatch opens every value under the key of its fingerprint among the target keys, then the
// source keys (no shortcut for target keys); a key the source does not know (NoSuchKeyError)
// matches no fingerprint, so its values fail "unknown_fingerprint" (kKeyMissing).
//
// The rows' values are the strings as stored (rotation/stored_form.h hands them over as they are).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "common/secret.h"
#include "crypto/cloak.h"
#include "crypto/value_rewriter.h"

namespace rekey::crypto {

class CloakRewriter : public ValueRewriter {
 public:
  // `moves` (source key id -> target key id) must outlive the rewriter. `keys` hands over the
  // material of a key id (rotation::DataKeySource); it is asked again at each RewriteBatch, so a
  // key revoked since is not used from a copy kept here. It may throw (a KMS failure): then no
  // value of the batch is rewritten.
  CloakRewriter(const std::map<uint32_t, uint32_t>* moves, std::function<Secret(uint32_t)> keys);

  KeyNaming key_naming() const override { return KeyNaming::kKeyInValue; }
  void RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) override;
  void OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) override;

 private:
  void Rewrite(const StoredValue& value, RewrittenValue* out);
  // Throws as the key source does; OpenBatch's lookup instead answers nullptr for a key the
  // source does not know.
  CloakKey* KeyFor(uint32_t key_id);

  const std::map<uint32_t, uint32_t>* moves_;
  std::function<Secret(uint32_t)> key_source_;
  const std::vector<uint32_t> candidates_;  // SourcesThenTargets
  const std::vector<uint32_t> open_order_;  // TargetsThenSources
  // Of the current batch; nullptr for a key the source does not know (OpenBatch only).
  std::unordered_map<uint32_t, std::unique_ptr<CloakKey>> keys_;
  CloakKeyLookup lookup_;
  CloakKeyLookup open_lookup_;
  Bytes plaintext_;
};

}  // namespace rekey::crypto
