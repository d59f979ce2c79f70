// ValueRewriter (crypto/value_rewriter.h) for ActiveRecord::Encryption messages (crypto/rails.h),
// stored as JSON text. A message names its key only through the optional "i" reference, so the
// batch's SELECT cannot filter by key: every value is read, and each is opened by trial decryption
// under the keys of the direction -- the source keys in the key map's order, then the targets --
// narrowed to the keys whose reference matches "i" when the message has one (as Rails'
// KeyProvider#decryption_keys does). One that opens under a source key is re-sealed under the
// key that source maps to, keeping every other header (compression "c", encoding "e", its own
// determinism, the envelope form; crypto/rails.h, RailsMessage::Reseal); one that opens under a
// target key is kUnchanged. Failures are kPoison with crypto/rails.h's classes, except an "i" that
// none of the job's keys has, kKeyMissing ("unknown_key").
//
// OpenBatch tries the target keys, then the source keys (narrowed by "i" the same way; a key
// `keys` answers nullptr for is skipped); its plaintext is the bytes Rails encrypted, and a
// message that does not open fails with the same classes.
//
// Cost: a wrong key costs one AES-GCM open of the value (the tag fails), so a value without "i"
// costs at most one open per key of the job; with "i" usually one.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "crypto/rails.h"
#include "crypto/value_rewriter.h"

namespace rekey::crypto {

class RailsRewriter : public ValueRewriter {
 public:
  // `moves` (source key id -> target key id) must outlive the rewriter; `keys` answers for every
  // key id on either side of it.
  RailsRewriter(const std::map<uint32_t, uint32_t>* moves, RailsKeyLookup keys);

  KeyNaming key_naming() const override { return KeyNaming::kTrialDecryption; }
  void RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) override;
  void OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) override;
  bool reads_stored_text() const override { return true; }

 private:
  void Rewrite(const StoredValue& value, RewrittenValue* out);
  // Parses `value` into message_ and opens it under the first of `key_ids` that does: "" and
  // *key_id, or the failure's class.
  std::string_view ParseAndOpen(const StoredValue& value, const std::vector<uint32_t>& key_ids,
                                uint32_t* key_id);

  const std::map<uint32_t, uint32_t>* moves_;
  RailsKeyLookup keys_;
  const std::vector<uint32_t> candidates_;  // SourcesThenTargets
  const std::vector<uint32_t> open_order_;  // TargetsThenSources
  RailsMessage message_;
  std::string text_;
};

}  // namespace rekey::crypto
