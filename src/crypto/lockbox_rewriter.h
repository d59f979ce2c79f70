// ValueRewriter (crypto/value_rewriter.h) for Ruby Lockbox's encrypted attributes
// (crypto/lockbox.h). A value names no key, so each is tried under the keys of the direction
// (trial decryption), as Lockbox tries its master key and then its previous versions: the source
// keys in the key map's order, then the target keys, each as the attribute key its column derives
// from it (the column's LockboxKeyNames). One that opens under a source key is sealed under the
// attribute key of the key that source maps to, with a fresh nonce; one that opens under a target
// key is kUnchanged, as is an empty value (Lockbox's models store "" as it is, unencrypted). One
// that opens under none is kPoison: "truncated" (shorter than 29
// bytes, which Lockbox cannot open either) or "auth_failed" -- under a key the job does not hold,
// derived for another table or attribute, or tampered with. Lockbox's models bind no associated
// data: the job's template, if any, is not used (rekey.create_job refuses one for lockbox).
//
// Cost: a wrong key is rejected by the GCM tag after decrypting the value, so a value costs at
// most one AES-GCM open per key of the job; attribute keys are derived once per key and column
// per batch (HKDF-SHA384: two HMACs).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "crypto/lockbox.h"
#include "crypto/value_rewriter.h"

namespace rekey::crypto {

class LockboxRewriter : public ValueRewriter {
 public:
  // `moves` (source key id -> target key id) must outlive the rewriter; `masters` answers for
  // every key id on either side of it (a job's data keys are Lockbox master keys); `names` gives
  // each Lockbox column of the job (by name) the names its attribute keys derive from.
  LockboxRewriter(const std::map<uint32_t, uint32_t>* moves,
                  std::map<std::string, LockboxKeyNames> names, LockboxMasterKeySource masters);

  KeyNaming key_naming() const override { return KeyNaming::kTrialDecryption; }
  // Derives attribute keys afresh for each batch, from masters fetched again, so a key revoked
  // since the last batch is not used.
  void RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) override;

 private:
  void Rewrite(const StoredValue& value, RewrittenValue* out);

  const std::map<uint32_t, uint32_t>* moves_;
  std::map<std::string, LockboxKeyNames, std::less<>> names_;
  LockboxAttributeKeys keys_;
  std::vector<uint32_t> candidates_;  // the source key ids in order, then the distinct targets
  Bytes plaintext_;
};

}  // namespace rekey::crypto
