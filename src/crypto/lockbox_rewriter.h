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
// OpenBatch tries the target keys, then the source keys (a master the source does not know,
// NoSuchKeyError, is skipped); an empty value is kUnencrypted, and one no key opens fails with the
// same classes.
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
  // Derives attribute keys afresh too.
  void OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) override;

 private:
  void Rewrite(const StoredValue& value, RewrittenValue* out);
  // The names of the value's column; throws PermanentError for a column the job did not declare
  // as Lockbox's (a caller's bug, not the value's).
  const LockboxKeyNames& NamesOf(const StoredValue& value) const;

  const std::map<uint32_t, uint32_t>* moves_;
  std::map<std::string, LockboxKeyNames, std::less<>> names_;
  LockboxMasterKeySource masters_;
  bool opening_ = false;  // within OpenBatch: a master the source does not know is skipped
  LockboxAttributeKeys keys_;
  const std::vector<uint32_t> candidates_;  // SourcesThenTargets
  const std::vector<uint32_t> open_order_;  // TargetsThenSources
  Bytes plaintext_;
};

}  // namespace rekey::crypto
