// The codec boundary: the one interface through which a rotation turns a column's stored value
// into its form under the target key (RewriteBatch), and verification and the census open a value
// to learn which key it is under and its plaintext (OpenBatch), whatever the ciphertext format.
// rekey's own AES-GCM codecs implement it in crypto/aead_rewriters.h; Fernet, cloak, Lockbox and
// Rails in crypto/<codec>_rewriter.h; Vault Transit and AWS KMS blobs in
// rotation/transit_rewriter.h and rotation/aws_kms_rewriter.h. A new format is one more
// implementation and one case in crypto/codec_rewriters.cpp (or rotation/column_rewriters.cpp for
// one a remote service rewrites); its callers do not change. Rewriters see binary values: a
// column's text form (rotation/stored_form.h) is decoded before and encoded after them, unless
// reads_stored_text().
//
// A rewriter answers for the columns of one codec of one job's table in one direction (source keys
// -> target keys, or back for a rollback). It never throws for what a value holds: a value it
// cannot open is an expected outcome (kPoison or kKeyMissing), quarantined by the caller while the
// rest of the batch goes on (or counted as a failure by verification). It throws only when no value
// of the batch can be rewritten now (a KMS or Vault request that failed as a whole: TransientError,
// KeyError), and then nothing of the batch may be written.
//
// Thread-safety: a rewriter holds per-thread cipher state (crypto/aes_gcm.h) and reused buffers;
// one thread at a time calls it (each claim loop, each verification owns its rewriters).
// rotation/column_rewriters.h builds a job's rewriters, one per codec in use.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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

enum class OpenOutcome {
  kOpened,       // authentic under `key`; its plaintext in `plaintext` iff has_plaintext
  kUnproven,     // readable, but only a remote service could tell its key (aws-kms; see key_name)
  kUnencrypted,  // stored unencrypted by the format itself (Lockbox's ""): under no key
  kKeyMissing,   // it names a key that is not available here, or a key (version) it must not be
                 // under (Transit's "below_target_version")
  kPoison,       // it cannot be opened: empty, truncated, not of this format, forged
};

// What opening one value found. Buffers are reused as RewrittenValue's are.
struct OpenedValue {
  OpenOutcome outcome = OpenOutcome::kPoison;
  // kOpened: the key id it is under (for Transit, the key version).
  uint32_t key = 0;
  // kOpened: whether the codec yields a plaintext here -- every codec but Transit (rekey never
  // holds its key) and aws-kms (never kOpened: KMS alone can open it).
  bool has_plaintext = false;
  // has_plaintext: the value's plaintext. Owned by this OpenedValue and overwritten by the next
  // OpenBatch into it; the caller wipes it (OPENSSL_cleanse) once used.
  Bytes plaintext;
  // kUnproven: what the value says of its key without the service, "" when nothing (an AWS KMS
  // blob names its key only to KMS: docs/FORMAT.md, "The aws-kms codec").
  std::string key_name;
  // kKeyMissing, kPoison: as RewrittenValue's (the same stable classes as a rewrite of the value
  // records).
  std::string error_class;
  std::optional<uint32_t> failed_key;
  std::string detail;

  void Opened(uint32_t key_id, bool with_plaintext) {
    outcome = OpenOutcome::kOpened;
    key = key_id;
    has_plaintext = with_plaintext;
    if (!with_plaintext) plaintext.clear();
  }
  void Failed(OpenOutcome failure, std::string_view failure_class,
              std::optional<uint32_t> key_id = std::nullopt, std::string failure_detail = "") {
    outcome = failure;
    has_plaintext = false;
    plaintext.clear();
    error_class.assign(failure_class);
    failed_key = key_id;
    detail = std::move(failure_detail);
  }
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

  // Opens values[0, count) into out[0, count) without rewriting anything, and without a remote
  // service (no Vault, no KMS call): which key each is under, its plaintext where the codec yields
  // one, or why it does not open, with the error class a rewrite of it would record (a value
  // under a key the direction does not rotate still opens: every key the rewriter can be given is
  // a candidate, see each codec's header). Trial decryption tries the direction's target keys
  // first, then its source keys: a verified job's values are under the targets. A key its source
  // does not know (NoSuchKeyError) is one that opens nothing; any other error of the key source
  // (KMS away, access denied) propagates, and then `out` is partly filled. Like RewriteBatch, it
  // asks the key source again for each call.
  virtual void OpenBatch(const StoredValue* values, size_t count, OpenedValue* out) = 0;

  // Whether values are handed over as the column holds them (the text of a Transit ciphertext or
  // a Rails message) rather than decoded from the column's stored form (rotation/stored_form.h).
  virtual bool reads_stored_text() const { return false; }
};

// The key ids of `moves` in a rewrite's trial order: its source keys in the map's order, then its
// distinct target keys.
inline std::vector<uint32_t> SourcesThenTargets(const std::map<uint32_t, uint32_t>& moves) {
  std::vector<uint32_t> ids;
  for (const auto& entry : moves) ids.push_back(entry.first);
  for (const auto& entry : moves) {
    if (std::find(ids.begin(), ids.end(), entry.second) == ids.end()) ids.push_back(entry.second);
  }
  return ids;
}

// ... in OpenBatch's order: its distinct target keys, then its source keys not among them.
inline std::vector<uint32_t> TargetsThenSources(const std::map<uint32_t, uint32_t>& moves) {
  std::vector<uint32_t> ids;
  for (const auto& entry : moves) {
    if (std::find(ids.begin(), ids.end(), entry.second) == ids.end()) ids.push_back(entry.second);
  }
  for (const auto& entry : moves) {
    if (std::find(ids.begin(), ids.end(), entry.first) == ids.end()) ids.push_back(entry.first);
  }
  return ids;
}

}  // namespace rekey::crypto
