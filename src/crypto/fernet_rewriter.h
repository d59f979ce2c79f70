// ValueRewriter (crypto/value_rewriter.h) for Fernet tokens (crypto/fernet.h). A token names no
// key, so each is tried under the keys of the direction (trial decryption): the source keys in
// the key map's order, then the target keys. One that opens under a source key is sealed under
// the key that source maps to, with a fresh IV and the token's own timestamp, as
// MultiFernet.rotate does (an application's TTL checks see the same age); one that opens under a
// target key is kUnchanged. One that opens under none is kPoison: its structure's class
// (empty, bad_prefix, truncated) or "auth_failed" -- under a key the job does not hold, or
// tampered with. Fernet binds no associated data: the job's template, if any, is not used.
//
// OpenBatch tries the target keys, then the source keys (a key `keys` answers nullptr for is
// skipped); a token no key opens fails with the same classes.
//
// Cost: a wrong key is rejected by its HMAC-SHA256 over the token, before any decryption, so a
// value costs at most one HMAC per key of the job (bench/fernet_bench.cpp measures it).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "crypto/fernet.h"
#include "crypto/value_rewriter.h"

namespace rekey::crypto {

class FernetRewriter : public ValueRewriter {
 public:
  // `moves` (source key id -> target key id) must outlive the rewriter; `keys` answers for every
  // key id on either side of it.
  FernetRewriter(const std::map<uint32_t, uint32_t>* moves, FernetKeyLookup keys);

  KeyNaming key_naming() const override { return KeyNaming::kTrialDecryption; }
  void RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) override;
  void OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) override;

 private:
  void Rewrite(const StoredValue& value, RewrittenValue* out);

  const std::map<uint32_t, uint32_t>* moves_;
  FernetKeyLookup keys_;
  const std::vector<uint32_t> candidates_;  // SourcesThenTargets
  const std::vector<uint32_t> open_order_;  // TargetsThenSources
  Bytes plaintext_;
};

}  // namespace rekey::crypto
