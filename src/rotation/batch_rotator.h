// Re-encrypts one claimed batch of one job, in one transaction.
//
// The transaction locks the batch's queue row, then the batch's target rows that are still under
// a source key (FOR UPDATE), decrypts each value with its source key and encrypts it under the
// mapped target key, writes the new values back with one UPDATE ... FROM unnest(...) (matching
// rows by primary key), records
// poison values in rekey.row_failures (leaving their rows untouched), and marks the batch done
// with its audit row (rekey.complete_batch). Rows, checkpoint and audit commit together or not
// at all. Because only values still under a source key are selected, and they stay locked until
// commit, a value the application changed is never overwritten and re-processing a batch never
// encrypts a value twice.
//
// Key locks: the transaction's first statement, before any row is locked, is
// rekey.lock_keys_for_write (migrations/0012) on every key the batch writes under -- the job's
// target keys, or for a rollback batch its source keys -- held to commit. A retire or destroy of
// such a key takes the same lock exclusively, so it waits for the batch and counts what it wrote;
// a batch that starts after it committed is refused (KeyNotWritableError) with nothing written.
// Vault-transit jobs write under Vault's keys, not the keyring's, and take no key lock.
//
// Row-level security: the same transaction asks rekey.row_security_blocker whether policies hide
// rows of the table from the worker's role. Hidden rows would be skipped as if they needed no
// work, and the job would complete with them still under the old key, so the batch is refused
// (ConfigError, the blocker's one-line reason with the grant that fixes it), nothing written.
//
// A paced worker (rotation/pacer.h) processes a batch in chunks instead (ProcessChunk): each
// chunk is one such transaction over the next rows after the batch's checkpoint; all but the
// last commit the rows with the advanced checkpoint and counts, the last completes the batch.
//
// A vault-transit job (jobs::JobDefinition::transit_key_ref) never decrypts: the SELECT takes the
// rows holding a value below the job's target Transit version (rekey.transit_version, or any
// value that is not a Transit ciphertext), the locked values go to Vault's rewrap in
// batch_input requests (kms::VaultTransitClient::RewrapValues, with the derivation context
// base64(associated-data template) when the job has one), and the answers are written back with
// the same UPDATE in the same transaction. An item Vault refuses is quarantined
// (error_class "vault_rejected", Vault's message in rekey.row_failures.detail; a value that is
// not a Transit ciphertext: "bad_prefix"); the rest of the batch goes on. A failure of the whole
// request (Vault down, sealed, throttling) throws TransientError with nothing written.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "common/secret.h"
#include "crypto/aes_gcm.h"
#include "jobs/job.h"
#include "kms/vault_transit.h"

namespace rekey::rotation {

struct ClaimedBatch {
  int64_t job_id = 0;
  int batch_no = 0;
  std::optional<std::string> lo;  // inclusive; nullopt = unbounded
  std::optional<std::string> hi;  // exclusive; nullopt = unbounded
  int attempt = 0;
  int stage_no = 1;
  // Only rows with rekey.stage_bucket(pk) in [bucket_lo, bucket_hi); nullopt = every row. A
  // forward batch whose bucket_hi is 10000 (the last rollout stage) takes every row that still
  // needs work, below bucket_lo too: those are earlier stages' rows written under the old key
  // since, or quarantined ones (counted as skipped again).
  std::optional<int> bucket_lo;
  std::optional<int> bucket_hi;
  bool rollback = false;  // move values from the job's target keys back to its source keys
};

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
    // open stage (the batch's checkpoint or completion said "no longer claimed", SQLSTATE 40001).
    // Not an error of the batch.
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

// The Vault Transit client of vault-transit jobs, built on first use (from VAULT_ADDR and the
// Vault authentication variables). Throws ConfigError when Vault is not configured. The client
// must outlive the rotators and be thread-safe (VaultTransitClient is).
using TransitClientSource = std::function<kms::VaultTransitClient&()>;

// Throws KeyError unless Transit key `key_ref` (whose `derived` flag was read from Vault) fits a
// job with or without a derivation context: a derived key needs one for every value, and a
// non-derived key would silently ignore one, so a job could not bind values to their rows.
void RequireTransitKeyFits(const std::string& key_ref, bool derived, bool has_context);

// The Transit derivation context of a value: base64 of the rendered associated-data template.
std::string TransitDerivationContext(const jobs::JobDefinition& job, const std::string& column,
                                     const std::string& pk);

// Not thread-safe: each claim loop owns its rotators (they hold per-thread cipher contexts and
// statements prepared on that loop's connection).
class BatchRotator {
 public:
  // `transit` is needed (and called) only for a vault-transit job.
  BatchRotator(jobs::JobDefinition job, DataKeySource keys, TransitClientSource transit = nullptr);

  const jobs::JobDefinition& job() const { return job_; }

  // Unwraps every source and target key of the job now, so a KMS or key problem stops the
  // worker before it claims anything. Throws as DataKeySource does. For a vault-transit job,
  // reads its Transit key once instead (RequireTransitKeyFits; KeyError if it is missing).
  void LoadKeys();

  // Whether a batch's (or chunk's) commit waits for its WAL flush. By default it does not: a
  // batch lost in a server crash is simply done again (batch_rotator.cpp says why that is safe),
  // and the flush per batch would leave a fast rotation's CPU idle. A gentle worker (paced,
  // rotation/pacer.h) waits: otherwise the application's next synchronous commit would flush
  // rekey's WAL for it and carry its latency.
  void set_wait_for_flush(bool wait) { wait_for_flush_ = wait; }

  // Processes `batch` (claimed by `worker_id`) on `conn`, in one transaction. Takes every key of
  // the job from the DataKeySource first, before the transaction opens, so a KMS error is thrown
  // before any row is locked and can never be mistaken for a poison value. Throws on database or
  // KMS errors, in which case nothing was committed; KeyNotWritableError when a key it would write
  // under is retired, destroyed or unknown; ConfigError when row-level security hides rows of the
  // table from the connection's role (see the file comment).
  BatchResult Process(pqxx::connection& conn, const ClaimedBatch& batch,
                      const std::string& worker_id);

  // Processes, in one transaction, at most `max_rows` (>= 1) of the rows of `batch` that still
  // need work after the batch's checkpoint (rekey.batches.resume_after). If rows remain after
  // them, commits them with the advanced checkpoint and the batch's running counts
  // (rekey.checkpoint_batch); otherwise completes the batch with its totals and its audit row
  // (batch_finished). Throws as Process does; then nothing of this chunk was committed.
  ChunkResult ProcessChunk(pqxx::connection& conn, const ClaimedBatch& batch,
                           const std::string& worker_id, int max_rows);

 private:
  // The key moves of one direction: source -> target, and the SQL filters for "still under a
  // source key".
  struct Direction {
    std::map<uint32_t, uint32_t> key_map;
    std::string source_prefixes_literal;  // {"\\x0100000001",...} for the Tink filter
    std::string source_ids_literal;       // {1,3} for the key-id column filter
    std::string target_ids_literal;       // {2,4}: the keys written, locked for the transaction
  };
  static Direction MakeDirection(std::map<uint32_t, uint32_t> key_map);
  void Prepare(pqxx::connection& conn);
  // The row-locking SELECT of `variant` (see batch_rotator.cpp), prepared on first use.
  const std::string& SelectStatement(pqxx::connection& conn, int variant);
  ChunkResult Run(pqxx::connection& conn, const ClaimedBatch& batch, const std::string& worker_id,
                  std::optional<int> max_rows);
  crypto::AesGcmKey* Key(uint32_t key_id);

  jobs::JobDefinition job_;
  DataKeySource key_source_;
  TransitClientSource transit_;
  bool transit_checked_ = false;
  std::unordered_map<uint32_t, std::unique_ptr<crypto::AesGcmKey>> keys_;
  std::string prefix_;  // prepared-statement name prefix, unique per job
  Direction forward_;
  Direction backward_;  // for rollback batches
  const pqxx::connection* prepared_on_ = nullptr;
  std::string select_list_;                // of the row-locking SELECT
  std::string needs_work_;                 // its filter, with $P and $K for the key parameters
  std::vector<std::string> select_names_;  // by variant; empty until prepared on this connection
  bool wait_for_flush_ = false;
};

}  // namespace rekey::rotation
