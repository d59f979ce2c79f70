// Value rewriting: the one interface through which a rotation (and later verification and the
// census) turns a column's stored value into its form under the target key, whatever the
// ciphertext format. rekey's own AES-GCM codecs implement it in crypto/aead_rewriters.h, Vault
// Transit in rotation/transit_rewriter.h, Fernet in crypto/fernet_rewriter.h; a new format
// (issue #18: cloak, Lockbox, Rails, AWS KMS blobs) is one more implementation, and the batch path
// does not change. Rewriters see binary values: a column's text form (rotation/stored_form.h) is
// decoded before and encoded after them.
//
// A rewriter answers for the columns of one codec of one job's table in one direction (source keys
// -> target keys, or back for a rollback). It never throws for what a value holds: a value it
// cannot open is an expected outcome (kPoison or kKeyMissing), quarantined by the caller while the
// rest of the batch goes on. It throws only when no value of the batch can be rewritten now (a KMS
// or Vault request that failed as a whole: TransientError, KeyError), and then nothing of the batch
// may be written.
//
// Thread-safety: a rewriter holds per-thread cipher state (crypto/aes_gcm.h); each claim loop owns
// its rewriters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/bytes.h"

namespace rekey::crypto {

// One non-NULL stored value of a batch, as its row holds it. The bytes must stay valid for the
// RewriteBatch call that reads them.
struct StoredValue {
  const uint8_t* data = nullptr;  // the value: bytea contents, or the text of a text column
  size_t size = 0;
  std::string_view column;             // the column's name as the catalog has it
  std::string_view pk;                 // the row's primary key as pk::text (associated data)
  std::optional<uint32_t> row_key_id;  // the row's key-id column, for kKeyInRow codecs
};

enum class RewriteOutcome {
  kUnchanged,   // nothing to do: already under a target key, or under a key the job leaves alone
  kRewritten,   // `value` holds the new stored form
  kKeyMissing,  // it names a key that is not available here (error class "unknown_key")
  kPoison,      // it cannot be opened: empty, truncated, not of this format, forged, refused
};

// What became of one value. Buffers are reused: a caller that keeps its vector of results across
// batches allocates only while values grow.
struct RewrittenValue {
  RewriteOutcome outcome = RewriteOutcome::kUnchanged;
  Bytes value;            // kRewritten: the new stored form (for a text column, its bytes)
  uint32_t from_key = 0;  // kRewritten: the key (or key version) it was under, for the audit
  uint32_t to_key = 0;    // kRewritten: the key (or key version) it is under now
  // kKeyMissing, kPoison: the stable class stored in rekey.row_failures.error_class (never
  // renamed; crypto/codec.h's DecodeStatusName and "vault_rejected"), the key the failure
  // concerns if the value named one, and a detail line for people ("" for none).
  std::string error_class;
  std::optional<uint32_t> failed_key;
  std::string detail;
};

class ValueRewriter {
 public:
  // How a value's current key is found: this decides what a rotation's SELECT can filter on.
  enum class KeyNaming {
    kKeyInValue,       // the value names its key (Tink's prefix, a Transit version)
    kKeyInRow,         // the row's key-id column names it (raw); StoredValue::row_key_id
    kTrialDecryption,  // neither: each of the job's source keys is tried in turn
  };

  virtual ~ValueRewriter() = default;

  virtual KeyNaming key_naming() const = 0;

  // Rewrites values[0, count) into out[0, count) (out[i] answers values[i]). Values are handed
  // over together so a codec that asks a remote service (Transit) makes one request per batch,
  // not one per value. Throws only as the file comment says.
  virtual void RewriteBatch(const StoredValue* values, size_t count, RewrittenValue* out) = 0;
};

}  // namespace rekey::crypto
