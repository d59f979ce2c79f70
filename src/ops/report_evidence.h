// Evidence `rekey report` and `rekey job verify` take beside the database's own records: the
// audit chain's state and the decryption of every value of a job's target. Times are the
// database's clock (src/ops/queries/report_evidence.sql), as in the rest of the report.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "jobs/job.h"
#include "rotation/batch_rotator.h"
#include "rotation/verifier.h"

namespace rekey::ops {

// The report's "audit_chain": the chain's head (the value an auditor keeps outside the database),
// the rows checked, whether the chain up to the head is intact and what was found if not, and
// when. Reads on `conn` in transactions of its own.
nlohmann::json AuditChainEvidence(pqxx::connection& conn);

// A job and what decrypting every value of its target found.
struct VerifiedJob {
  jobs::JobDefinition job;
  rotation::VerifyReport report;
  int64_t under_source_keys = 0;  // values under the job's source keys
  // Values under its target keys; for a vault-transit job, every value that decrypted (the
  // failures are the values below the target version).
  int64_t under_target_keys = 0;
};

// Loads job `job_id` and decrypts every value of its target (rotation::VerifyJob), each in a read
// transaction of its own on `conn`. `keys` is called once the job is loaded and returns the
// data-key source to decrypt with, which must stay valid until this returns. Throws the
// db::Classified errors of loading ("cannot load the job") and verifying ("verification
// failed"); failures to decrypt are counted, not thrown.
VerifiedJob VerifyJobValues(pqxx::connection& conn, int64_t job_id,
                            const std::function<rotation::DataKeySource()>& keys);

// The report's "verification": VerifyJobValues' counts (with "not_proven": the aws-kms values
// that read but whose KMS key only KMS can tell) and plaintext digest, when it ran, and,
// given the digest `rekey job verify --json` printed before the rotation
// (`plaintext_sha256_before`, "" for none), whether the plaintext is unchanged.
nlohmann::json VerificationEvidence(pqxx::connection& conn, int64_t job_id,
                                    const std::function<rotation::DataKeySource()>& keys,
                                    const std::string& plaintext_sha256_before);

// The report's "side_effects" (rekey.job_side_effects_report; docs/operations.md, "Side effects
// of a rewrite"): the job's choices for the table's triggers and --vacuum-after, what
// `rekey job create` declared before the first batch, the table's counters at the job's start and
// end and what they give (dead tuples created, the share of HOT updates, WAL bytes per rewritten
// row, table growth: null until both readings exist), and the vacuum run.
nlohmann::json SideEffectsEvidence(pqxx::transaction_base& txn, int64_t job_id);

}  // namespace rekey::ops
