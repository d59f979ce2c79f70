// Re-encrypts one claimed batch of one job, in one transaction.
//
// The transaction locks the batch's queue row, reads the batch's target rows that are still under
// a source key (without locking them), decrypts each value with its source key and encrypts it
// under the mapped target key, writes the new values back with one UPDATE ... FROM unnest(...)
// that matches rows by primary key *and* by the values read (a compare-and-swap), records poison
// values in rekey.row_failures (leaving their rows untouched), and marks the batch done with its
// audit row (rekey.complete_batch). Rows, checkpoint and audit commit together or not at all.
//
// The application's write always wins (docs/safety.md, invariant 3): a row the application wrote
// after the SELECT read it no longer holds the value read, so the UPDATE -- which under READ
// COMMITTED re-checks its condition on the newest version of a row changed since its snapshot,
// after waiting for the writer to commit -- leaves it as the application wrote it, and the row
// counts as skipped (a sweep reads it again if it is still under a source key). A JSON column is
// compared by the string at its path, so writes to the document's other fields neither stop the
// rotation nor are undone (jsonb_set writes into the row's newest version). Because only values
// still under a source key are selected, and written only if unchanged, re-processing a batch
// never encrypts a value twice. Reading without FOR UPDATE takes the row locks out of the SELECT
// (about a fifth of a batch's server time, bench/README.md).
//
// Key locks: the transaction's first statement, before any row is read, is
// rekey.lock_keys_for_write (sql/schema/30_keyring.sql) on every key the batch writes under -- the
// job's target keys, or for a rollback batch its source keys -- held to commit. A retire or destroy
// of such a key takes the same lock exclusively, so it waits for the batch and counts what it
// wrote; a batch that starts after it committed is refused (KeyNotWritableError) with nothing
// written. Vault-transit jobs write under Vault's keys, not the keyring's, and take no key lock.
//
// Row-level security: the same transaction asks rekey.row_security_blocker whether policies hide
// rows of the table from the worker's role. Hidden rows would be skipped as if they needed no
// work, and the job would complete with them still under the old key, so the batch is refused
// (ConfigError, the blocker's one-line reason with the grant that fixes it), nothing written.
//
// A batch is processed in chunks (ProcessChunk; rotation/pacer.h chooses their size): each chunk
// is one such transaction over the next rows after the batch's checkpoint; all but the last commit
// the rows with the advanced checkpoint and counts, the last completes the batch. Unpaced, a chunk
// is the job's batch size, so a batch as planned is one transaction.
//
// A vault-transit job (jobs::JobDefinition::transit_key_ref) never decrypts: the SELECT takes the
// rows holding a value below the job's target Transit version (rekey.transit_version, or any
// value that is not a Transit ciphertext), the values read go to Vault's rewrap
// (rotation/transit_rewriter.h), and the answers are written back with the same UPDATE in the
// same transaction. An item Vault refuses is quarantined; the rest of the batch goes on. A failure
// of the whole request (Vault down, sealed, throttling) throws TransientError with nothing written.
// An aws-kms job (jobs::JobDefinition::aws_kms_key_arn) is the same with KMS ReEncrypt
// (rotation/aws_kms_rewriter.h), except that SQL cannot tell a blob's key: every value is selected.
//
// Triggers: a job created with --triggers skip (jobs/side_effects.h) runs the UPDATE, and only
// it, with session_replication_role = replica, restored right after it, so the table's ordinary
// triggers do not fire on the rewrite while rekey's own always do. The first prepare of a job on
// a connection refuses (ConfigError) a role that may not set it, and records the job's 'start'
// counters (jobs/after_rewrite.h).
//
// The pieces: the statements built from the job's identifiers are rotation/batch_statements.h,
// the fixed ones queries/batch_rotator.sql; each value is rewritten by the ValueRewriter of its
// codec (crypto/value_rewriter.h); this file holds the transaction's steps, in order: lock keys,
// lock the batch's queue row, read its rows, rewrite, write, quarantine, audit, and
// checkpoint or complete.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"
#include "crypto/fernet.h"
#include "crypto/rails.h"
#include "crypto/text_encoding.h"
#include "crypto/value_rewriter.h"
#include "db/binary_array.h"
#include "jobs/job.h"
#include "jobs/side_effects.h"
#include "rotation/aws_kms_rewriter.h"
#include "rotation/batch_statements.h"
#include "rotation/claimed_batch.h"
#include "rotation/transit_rewriter.h"
#include "rotation/transit_service.h"

namespace rekey::rotation {

// A key the batch would write under is retired, destroyed or unknown (rekey.lock_keys_for_write
// refused it, SQLSTATE 55000). Nothing of the batch was written, and no retry can help until a
// person acts on the key or the job: the job must stop writing (worker_pool.h pauses it).
class KeyNotWritableError : public StateError {
 public:
  using StateError::StateError;
};

struct BatchResult {
  enum class Outcome {
    kDone,  // committed: rows rewritten, batch done, audited
    // Nothing written: another worker owns the batch now, or its stage is no longer the job's
    // open stage (see "No longer claimed" at ProcessChunk). Not an error of the batch.
    kLost,
    kJobNotActive,  // the job was paused or cancelled meanwhile; nothing written
  };
  Outcome outcome = Outcome::kDone;
  int rows_done = 0;
  int rows_skipped = 0;
  int rows_failed = 0;
  double duration_ms = 0;
};

struct ChunkResult {
  BatchResult batch;            // the outcome, and the counts and time of this chunk alone
  bool batch_finished = false;  // this chunk completed the batch (outcome kDone)
  int rows_locked = 0;          // rows the chunk held (re-encrypted, skipped or quarantined)
};

// Resolves a rekey key id to its plaintext data key (normally keyring::DataKeyCache::Get).
// Throws KeyError when the key cannot be had, TransientError when the KMS may recover.
using DataKeySource = std::function<Secret(uint32_t key_id)>;

// Gives `batch`, held by `worker_id`, back to the queue in `txn` with `error`
// (rekey.release_batch). `transient`: the attempt does not count (a transient error, or none of
// the batch's making). Returns the batch's state after it ("pending", "failed"), or "not-owner"
// when `worker_id` no longer holds it.
std::string ReleaseBatch(pqxx::work& txn, const ClaimedBatch& batch, const std::string& worker_id,
                         const std::string& error, bool transient);

// Not thread-safe: each claim loop owns its rotators (they hold per-thread cipher contexts and
// statements prepared on that loop's connection).
class BatchRotator {
 public:
  // `transit` is needed (and called) only for a vault-transit job, `aws_kms` for an aws-kms job.
  // `relation`: the leaf partition whose batches this rotator processes (ClaimedBatch::relation),
  // nullopt for the job's table itself.
  BatchRotator(jobs::JobDefinition job, DataKeySource keys, TransitClientSource transit = nullptr,
               AwsKmsSource aws_kms = nullptr,
               const std::optional<std::string>& relation = std::nullopt);
  BatchRotator(const BatchRotator&) = delete;  // its statements and rewriters point at job_
  BatchRotator& operator=(const BatchRotator&) = delete;

  const jobs::JobDefinition& job() const { return job_; }

  // Unwraps every source and target key of the job now, so a KMS or key problem stops the
  // worker before it claims anything. Throws as DataKeySource does. For a vault-transit job,
  // reads its Transit key once instead (CheckTransitKey; KeyError if it is missing); for an
  // aws-kms job, its two KMS keys (CheckAwsKmsKeys).
  void LoadKeys();

  // Whether a batch's (or chunk's) commit waits for its WAL flush. By default it does not: a
  // batch lost in a server crash is simply done again (queries/batch_rotator.sql's lock_batch
  // and batch_rotator.cpp say why that is safe), and the flush per batch would leave a fast
  // rotation's CPU idle. A gentle worker (paced, rotation/pacer.h) waits: otherwise the
  // application's next synchronous commit would flush rekey's WAL for it and carry its latency.
  void set_wait_for_flush(bool wait) { wait_for_flush_ = wait; }

  // The bytes a chunk holds at most (0: no bound; default kDefaultChunkBytes): the stored size
  // of the rotated values of its rows, asked of the database before the rows are read
  // (BatchStatements::Sizes), so the worker's memory and each transaction stay bounded whatever
  // the values' sizes. A chunk always takes at least one row, whatever its size; the rest of the
  // batch follows in further chunks after a checkpoint, as under --target-batch-ms. The worker
  // holds about five times a chunk's bytes while it rewrites them (the hex text of the result,
  // the decoded values, the new values, the UPDATE's parameter).
  static constexpr int64_t kDefaultChunkBytes = int64_t(4) << 20;
  void set_chunk_bytes(int64_t bytes) { chunk_bytes_ = bytes; }

  // Processes, in one transaction on `conn`, at most `max_rows` (>= 1; less is taken as 1) of the
  // rows of `batch` (claimed by `worker_id`) that still need work after the batch's checkpoint
  // (rekey.batches.resume_after). If rows remain after them, commits them with the advanced
  // checkpoint and the chunk's counts (rekey.checkpoint_batch); otherwise completes the batch with
  // its totals and its audit row (batch_finished). An unpaced worker calls it with the job's batch
  // size, so a batch as planned is one chunk.
  //
  // Takes every key of the job from the DataKeySource first, before the transaction opens, so a
  // KMS error is thrown before any row is read and can never be mistaken for a poison value.
  // Throws on database or KMS errors, in which case nothing of the chunk was committed;
  // KeyNotWritableError when a key it would write under is retired, destroyed or unknown;
  // ConfigError when row-level security hides rows of the table from the connection's role
  // (see the file comment); PermanentError when the UPDATE left a row that still held the value
  // read unwritten (a trigger that skips updates).
  //
  // No longer claimed: rekey.checkpoint_batch and rekey.complete_batch (through
  // rekey.require_open_stage_batch) refuse a batch this worker no longer holds, or whose stage is
  // no longer the job's open stage, with SQLSTATE 40001 (serialization_failure) and a message
  // containing "no longer claimed". That signal, and only that one, is consumed here: the
  // transaction is rolled back and the outcome is kLost with no rows (the batch belongs
  // elsewhere). A 40001 without those words is a genuine serialization failure and is thrown, for
  // the caller to retry as transient.
  ChunkResult ProcessChunk(pqxx::connection& conn, const ClaimedBatch& batch,
                           const std::string& worker_id, int max_rows);

 private:
  // One direction's keys and the rewriter of each column.
  struct Side {
    Direction direction;
    std::vector<std::unique_ptr<crypto::ValueRewriter>> rewriters;  // one per codec in use
    std::vector<size_t> rewriter_of_column;                         // by column index
  };
  // The batch's queue row, locked (queries/batch_rotator.sql, lock_batch).
  struct LockedBatch {
    BatchProgress progress;
    int earlier_done = 0;
    int earlier_skipped = 0;
    int earlier_failed = 0;
    double earlier_ms = 0;
  };
  struct RowChanges;  // what a chunk writes, batch_rotator.cpp

  void MakeSide(std::map<uint32_t, uint32_t> key_map, Side* side);
  void Prepare(pqxx::connection& conn);
  crypto::AesGcmKey* Key(uint32_t key_id);
  const crypto::FernetKey* FernetKeyFor(uint32_t key_id);  // the same key material, as Fernet's
  crypto::RailsKey* RailsKeyFor(uint32_t key_id);          // ... as Rails' Key#secret

  // The transaction's steps, in order.
  void LockKeys(pqxx::work& txn, const Direction& direction, const ClaimedBatch& batch);
  std::optional<LockedBatch> LockBatch(pqxx::work& txn, const ClaimedBatch& batch,
                                       const std::string& worker_id, BatchResult* result);
  // For a batch over a leaf partition: locks the job's table so the leaf cannot be detached or
  // dropped before commit, and if it already was, completes the batch with no rows and the reason
  // (rekey.lock_batch_partition) and returns true: the caller commits and touches nothing else.
  bool EndedByGonePartition(pqxx::work& txn, const ClaimedBatch& batch,
                            const std::string& worker_id);
  // How many of the next max_rows rows the chunk takes within chunk_bytes_ (at least one);
  // *more is set when rows are known to follow them.
  int RowsWithinBytes(pqxx::work& txn, const ClaimedBatch& batch, const LockedBatch& locked,
                      const Direction& direction, int max_rows, bool* more);
  // Reads at most max_rows rows, and one more (to learn whether rows follow) if `one_more`.
  pqxx::result SelectRows(pqxx::work& txn, const ClaimedBatch& batch, const LockedBatch& locked,
                          const Direction& direction, int max_rows, bool one_more);
  void RewriteValues(const pqxx::result& rows, size_t handled, Side& side);
  void CollectRows(const pqxx::result& rows, size_t handled, const Side& side, RowChanges* changes,
                   BatchResult* result) const;
  // Adds rewritten row `r` of the chunk (row_values: per column, its new value or nullptr to keep
  // it).
  void AppendRow(const std::string& pk, const pqxx::row& row, size_t r,
                 const std::vector<const crypto::RewrittenValue*>& row_values,
                 std::optional<uint32_t> new_key_id, RowChanges* changes) const;
  // Appends the value of column i that row r of the chunk held when read, to *read.
  void AppendValueRead(size_t i, const pqxx::row& row, size_t r, db::BinaryArray* read) const;
  // Writes the rows that still hold what was read; a row the application wrote meanwhile is
  // not written and moves from result->rows_done to rows_skipped. Counts the values moved.
  void WriteRows(pqxx::work& txn, const ClaimedBatch& batch, RowChanges* changes,
                 BatchResult* result);
  void RecordFailures(pqxx::work& txn, const ClaimedBatch& batch, const std::string& worker_id,
                      const RowChanges& changes, BatchResult* result);
  void AuditValues(pqxx::work& txn, const ClaimedBatch& batch, const RowChanges& changes);
  // The key ARN of an aws-kms job's key number (kAwsKmsSourceKey, kAwsKmsDestinationKey).
  std::string AwsKmsKeyArn(uint32_t key) const;
  void Complete(pqxx::work& txn, const ClaimedBatch& batch, const std::string& worker_id,
                const LockedBatch& locked, const RowChanges& changes, const BatchResult& result);

  jobs::JobDefinition job_;
  DataKeySource key_source_;
  TransitClientSource transit_;
  bool transit_checked_ = false;
  AwsKmsSource aws_kms_;
  bool aws_kms_checked_ = false;
  std::unordered_map<uint32_t, std::unique_ptr<crypto::AesGcmKey>> keys_;
  std::unordered_map<uint32_t, std::unique_ptr<crypto::FernetKey>> fernet_keys_;
  std::unordered_map<uint32_t, std::unique_ptr<crypto::RailsKey>> rails_keys_;
  BatchStatements statements_;
  std::string prefix_;  // prepared-statement name prefix, unique per job
  Side forward_;
  Side backward_;  // for rollback batches
  const pqxx::connection* prepared_on_ = nullptr;
  bool update_prepared_ = false;  // prepared in a chunk's transaction, once its relation is checked
  std::vector<std::string> select_names_;  // by variant; empty until prepared on this connection
  bool wait_for_flush_ = false;
  int64_t chunk_bytes_ = kDefaultChunkBytes;
  std::vector<std::string> sizes_names_;  // by SelectVariant: the prepared Sizes statements
  bool skip_triggers_ = false;            // the job's --triggers skip (jobs/side_effects.h)
  // Reused across chunks: per rewriter, the values handed to it and what it made of them; per
  // (row, column), which of them it is (-1: NULL; -2 - k: unreadable_[k], a value not in its
  // column's stored form, rotation/stored_form.h); values decoded, and the text style each was read
  // in.
  std::vector<std::vector<crypto::StoredValue>> values_;
  std::vector<std::vector<crypto::RewrittenValue>> rewritten_;
  std::vector<int> slot_;
  std::vector<int> field_no_;      // of each column in the SELECT's result
  std::vector<int> json_kind_no_;  // of each JSON column's kind of value; -1 for other columns
  std::vector<Bytes> decoded_;
  std::vector<crypto::TextStyle> styles_;
  std::vector<crypto::RewrittenValue> unreadable_;
};

}  // namespace rekey::rotation
