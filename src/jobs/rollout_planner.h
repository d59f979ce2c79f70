// Planning a staged job's rollout stages in the client, for speed. The queries are
// src/jobs/queries/rollout_planner.sql.
//
// The plan is the one rekey.plan_rollout computes in the database
// (sql/schema/50_stages.sql, docs/operations.md "Staged rollout"): every row of the
// job's table (or scope) falls in the stage whose bucket range holds rekey.stage_bucket(key text,
// docs/FORMAT.md), the first 4 bytes of its MD5 read big-endian, mod kStageBuckets; each stage is
// cut every batch_size of its rows in key order into half-open ranges [lo, hi) (the first starts at
// NULL, the last ends at NULL, a stage without rows gets one empty batch); a stage that ends below
// 100% records each batch's keys; batches are numbered after the job's existing ones, stage by
// stage. The database orders the keys (by the primary key's own collation) and this process only
// hashes and cuts them, so both planners give the same batches, byte for byte.
//
// What differs is the cost. PostgreSQL 15's md5() sets up an OpenSSL digest per call and the
// planning query numbers each stage's rows in one backend: 2.3 to 2.8 s per million rows. Here the
// server only streams the keys from the primary-key index (about 0.2 s per million), while this
// process hashes them with one reused digest context.
#pragma once

#include <openssl/types.h>
#include <pqxx/pqxx>

#include <cstdint>
#include <memory>
#include <string_view>

namespace rekey::jobs {

// rekey.stage_bucket for many keys: the digest is fetched once and one context reused, where
// OpenSSL 3's per-call set-up (which md5() in the database pays for every row: about 1.9 us per
// row of a stage test) is most of an MD5 of a short key. Not thread-safe: one per thread.
class StageBucketHasher {
 public:
  StageBucketHasher();
  // True iff OpenSSL offers MD5 in this process (a FIPS provider does not).
  bool available() const { return md_ && ctx_; }
  // rekey.stage_bucket(pk_text). Throws PermanentError if !available() or OpenSSL fails.
  int Bucket(std::string_view pk_text);

 private:
  std::unique_ptr<EVP_MD, void (*)(EVP_MD*)> md_;
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

// rekey.stage_bucket(pk_text): the first 4 bytes of MD5(pk_text), big-endian, mod kStageBuckets
// (jobs/stage_bucket.h).
// Throws PermanentError if OpenSSL offers no MD5 (a FIPS provider).
int StageBucket(std::string_view pk_text);

// If this process can compute MD5 (an OpenSSL FIPS provider does not offer it), asks the
// database to leave staged jobs' rollout stages unplanned for the rest of `txn`
// (SET LOCAL rekey.defer_rollout_planning) and returns true; the caller must then call
// PlanRolloutInClient for every job it creates in `txn` before committing (the database refuses
// to commit a stage without batches). Otherwise returns false and the database plans.
bool DeferRolloutPlanning(pqxx::transaction_base& txn);

// Plans every rollout stage of job `job_id` that has no batches yet, in `txn`. Returns the
// number of batches written: 0 if no stage was waiting. The table is read once, in key order,
// through a cursor: on `reader` if given (another connection to the same database, used by a
// thread of this call and by nothing else meanwhile; it reads ahead while this thread hashes
// and writes), else in `txn`. Memory holds one open batch per stage and at most two pages of
// keys, whatever the table's size. Errors are the database's (pqxx exceptions); nothing is
// half-written unless the caller commits anyway.
int64_t PlanRolloutInClient(pqxx::transaction_base& txn, int64_t job_id,
                            pqxx::connection* reader = nullptr);

}  // namespace rekey::jobs
