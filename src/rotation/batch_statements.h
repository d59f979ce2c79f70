// The statements of one job's batches that are assembled from the job's identifiers (table, key,
// columns, scope; quoted with db/identifiers.h), built once per job and prepared per connection by
// BatchRotator. Pure: no database is needed to build or test them (batch_statements_test.cpp).
// The fixed statements of the batch path are named queries (queries/batch_rotator.sql).
//
// The row SELECT (it locks nothing: the UPDATE compares and swaps) returns the key's text
// ("row_id", jobs/key_shape.h), each rotated column as c<i> in its stored form
// (rotation/stored_form.h: the text at a JSON column's path, with j<i> the kind of JSON value
// there), and the key-id column (if any) as row_key_id, for the rows of the batch that still need
// work -- a column still under a source key (rekey.transit_version below the target for Transit;
// for Tink also a value whose prefix does not parse, or whose text head is not of its encoding, so
// it is quarantined rather than ignored; for Fernet, which names no key, every value) -- ordered by
// key, LIMIT rows. Its parameters, in order: the bounds (SelectVariant, in the order of the bits
// below), the scope value if the job has a scope, the source Tink prefixes (bytea[]), the source
// key ids (bigint[]; for Transit, {target version}), and the LIMIT.
//
// The UPDATE writes a batch's new values where the rows still hold what the SELECT read (a
// compare-and-swap; docs/safety.md, invariant 3): $1 the keys (KeyShape::ArrayType(): the key's
// type[] for one column, the key texts for a composite key), then per rotated column two arrays
// (bytea[]; text[] for Transit and text forms): its new values (NULL elements keep the stored
// value; a JSON column's element is set at its path with jsonb_set) and the values read (NULL:
// none; a JSON column's, the string at its path), and for a bytea column (ComparesByDigest) a
// third, the SHA-256 of each value read larger than kCompareDigestAbove bytes (bytea[]; the
// value read is then NULL, and NULL here means "compared by value"); then, if the job has a
// key-id column, the new key ids and the key ids read (bigint[]). It returns the key text of
// each row written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "jobs/job.h"
#include "rotation/claimed_batch.h"

namespace rekey::rotation {

// Variants of the row SELECT, by which batch bounds exist (a generic plan with
// "$1 IS NULL OR key >= $1" could not use the key's index), and whether the batch is
// restricted to a stage's buckets, and to the keys its plan recorded (kKeys). kAfter (a chunk
// resuming after the batch's checkpoint) replaces kLo.
enum SelectVariant {
  kNoBounds = 0,
  kLo = 1,
  kHi = 2,
  kBuckets = 4,
  kAfter = 8,
  kKeys = 16,
  kAllSelectVariants = 32
};

// Values read larger than this are compared by the UPDATE through their SHA-256, not sent back
// whole: a value and its new form would together pass PostgreSQL's 1 GB message limit from
// 512 MiB, and a large value's copy is most of the UPDATE's memory (docs/safety.md,
// invariant 3). Smaller ones, most of them, are compared by value, which costs no hashing.
inline constexpr size_t kCompareDigestAbove = size_t(1) << 20;
// Whether the UPDATE has the digest array for `column`: its values are bytea (text values keep
// comparing as text, in the session's encoding).
bool ComparesByDigest(const jobs::JobColumn& column);

// The key moves of one direction: source -> target, and the SELECT's parameters for "still under
// a source key".
struct Direction {
  std::map<uint32_t, uint32_t> key_map;
  std::string source_prefixes_literal;  // {"\\x0100000001",...} for the Tink filter
  std::string source_ids_literal;       // {1,3} for the key-id column filter
  std::string target_ids_literal;       // {2,4}: the keys written, locked for the transaction
};
Direction MakeDirection(std::map<uint32_t, uint32_t> key_map);

// What the batch's queue row says about where the batch resumes (rekey.batches).
struct BatchProgress {
  std::optional<std::string> resume_after;  // the checkpoint of earlier chunks
  std::optional<std::string>
      planned_keys;  // the keys its plan recorded: key texts, a text[] literal
};

// One execution of the row SELECT: which variant, with which parameters.
struct SelectCall {
  int variant = kNoBounds;
  std::vector<std::string> params;
};

class BatchStatements {
 public:
  // The statements over `relation` (quoted; a leaf partition of the job's table, rekey.batches
  // .partition_name), or over the job's table itself when nullopt.
  explicit BatchStatements(const jobs::JobDefinition& job,
                           const std::optional<std::string>& relation = std::nullopt);

  // The row SELECT of `variant`.
  std::string Select(int variant) const;
  // The sizes of the rows the SELECT of `variant` would read, in its order, without reading
  // their values: value_bytes, the stored size (pg_column_size, which reads no TOASTed value) of
  // the row's rotated columns together. Same parameters as Select(variant). BatchRotator asks it
  // before a chunk to keep the chunk within its bytes (BatchRotator::set_chunk_bytes).
  std::string Sizes(int variant) const;
  // The SELECT call that reads at most max_rows + 1 rows of `batch` (one more than a chunk
  // handles says whether the batch goes on after it).
  SelectCall SelectFor(const ClaimedBatch& batch, const BatchProgress& progress,
                       const Direction& direction, int max_rows) const;
  // The UPDATE that writes the new values where the rows still hold what was read, and returns
  // the key text ("row_id") of each row it wrote (see the file comment).
  const std::string& update() const { return update_; }
  // The rows of the UPDATE's parameters that still hold what was read, by key text ("row_id"),
  // with the same parameters. Asked only when the UPDATE wrote fewer rows than it was given: a
  // row not written that still holds the value read was skipped by something other than a
  // concurrent write (a trigger), and the batch must not commit.
  const std::string& still_as_read() const { return still_as_read_; }

 private:
  std::string NeedsWork() const;
  std::string SelectList() const;
  std::string RowSource() const;  // the UPDATE's parameters as rows, aliased v
  std::string AsRead() const;     // v's row is t's, and t still holds what was read
  std::string Update() const;
  std::string StillAsRead() const;
  std::string Bounds(int variant, int* n) const;
  // Select's and Sizes' statement: `list` from the rows of `variant` that need work, in key
  // order, LIMIT, then `suffix`.
  std::string RowsNeedingWork(int variant, const std::string& list,
                              const std::string& suffix) const;

  const jobs::JobDefinition& job_;  // outlives the statements (the rotator owns both)
  std::string table_;               // "schema"."table", or the batch's leaf partition
  jobs::KeyShape key_;
  std::string key_id_;      // the quoted key-id column, "" if none
  std::string needs_work_;  // with $P and $K for the key parameters
  std::string select_list_;
  std::string update_;
  std::string still_as_read_;
};

}  // namespace rekey::rotation
