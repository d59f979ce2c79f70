// Proves where a job's target stands: decrypts every value of its columns (in its scope), in
// primary-key order, and reports how many values sit under each key, which ones fail to decrypt
// and why, and a digest of all plaintexts. The digest lets an operator show that a rotation
// changed no plaintext: take it before and after, and compare.
//
// A vault-transit column is checked without Vault and without plaintext: values_by_key counts its
// values by Transit key version, and a value below the job's target version
// ("below_target_version") or not a Transit ciphertext ("bad_prefix") is a failure. Such values
// add nothing to the digest.
//
// An aws-kms column is checked without KMS: a blob names its key only to KMS (ReEncrypt or Decrypt
// would tell, and Decrypt would put the plaintext in this process), so a value that reads in its
// stored form and is not empty counts in not_proven, not in values_by_key; one that does not is a
// failure ("bad_encoding", "empty"). Such values add nothing to the digest. docs/kms.md says what
// this leaves unproven.
//
// Values are read in their column's stored form (rotation/stored_form.h): text decoded, JSON
// fields at their path; one that cannot be read so is a failure of its class ("bad_encoding",
// "json_path_missing", "json_not_string"). Transit ciphertexts and Rails messages are taken as the
// column's text. Each value is then opened through its codec's rewriter, built as the batch path
// builds it (rotation/column_rewriters.h; crypto/value_rewriter.h, OpenBatch): the key it is under,
// its plaintext, or its failure with the class a rotation would quarantine it with. Codecs that
// name no key (Fernet, Lockbox, Rails without "i") are opened by trial decryption with the job's
// target keys, then its source keys. An empty Lockbox value is stored unencrypted by Lockbox: it is
// not counted.
//
// Plaintext digest (docs/operations.md): SHA-256 over, for each row in primary-key order and
// each job column in job order whose value is not NULL and decrypts:
//   pk text || 0x00 || column name || 0x00 || uint32 big-endian plaintext length || plaintext
// A sample (sample_percent < 100) is read in the table's physical order instead: its digest is
// not comparable across time, only a whole read's.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "jobs/job.h"
#include "rotation/batch_rotator.h"

namespace rekey::rotation {

struct VerifyReport {
  int64_t rows = 0;                           // rows in scope
  int64_t values = 0;                         // non-NULL values examined
  int64_t failures = 0;                       // values that did not decrypt
  std::map<uint32_t, int64_t> values_by_key;  // decrypted values per key id
  int64_t not_proven = 0;  // aws-kms values: readable blobs whose key only KMS can tell
  // crypto::DecodeStatusName, or a stored-form class (rotation/stored_form.h) -> count
  std::map<std::string, int64_t> failures_by_class;
  std::vector<std::string> failure_samples;  // "pk/column: class", at most 20
  std::string plaintext_sha256;              // hex

  // Values under any of `keys`.
  int64_t ValuesUnder(const std::vector<uint32_t>& keys) const;
};

struct VerifyOptions {
  // Only rows with rekey.stage_bucket(pk) < bucket_below (the rows a rollout moved so far).
  std::optional<int> bucket_below;
  // Read a deterministic sample of about this percent of the table's pages
  // (TABLESAMPLE SYSTEM ... REPEATABLE), through a cursor; 100 reads every row.
  double sample_percent = 100;
  int page_size = 5000;
  // Past its first row, a page holds at most this many bytes of stored values (pg_column_size),
  // so memory stays flat whatever the values' sizes. Values arrive in binary (db/binary_result.h):
  // a page's result holds about its values' bytes (more where a compressed value is inflated).
  int64_t page_bytes = int64_t(16) << 20;
  // Only the rows whose keys the plan of this rollout stage recorded (rekey.batches.keys), read
  // batch by batch by key instead of by scanning the table -- iff every batch of the stage has
  // its keys; otherwise (a completed job's, say) this option is ignored.
  std::optional<int> planned_keys_of_stage;
};

// Reads in pages of `page_size` rows and `page_bytes` within `txn`, so memory stays flat whatever
// the table's size and its values' sizes; in binary, so a value is read up to PostgreSQL's 1 GB
// limit (its hex text passes that limit from 512 MiB). Read errors throw as libpqxx's would.
// Keys the keyring does not know count as unknown_key failures; other key errors propagate.
// Throws ConfigError, before reading any row, iff row-level security hides rows of the table from
// the transaction's role (rekey.row_security_blocker's reason: the role and the grant to give).
// A report that silently left them out would prove nothing.
VerifyReport VerifyJob(pqxx::dbtransaction& txn, const jobs::JobDefinition& job,
                       const DataKeySource& keys, const VerifyOptions& options = {});

}  // namespace rekey::rotation
