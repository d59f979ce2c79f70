// RotationScheduler: `rekey rotate` and `rekey rotate-due`, what a CronJob runs.
//
// StartRotation creates one rotation of a scope (jobs/rotation.h): optionally a new data key
// first, wrapped by the KMS provider of the scope's primary, then the rotation and its jobs.
//
// RotateDue: for each scope whose primary key is past its maximum age (rekey.rotation_due, oldest
// due first) and that no unfinished job is already rotating, it creates a new data key in that
// scope (wrapped by the same KMS provider as the old one) and one rotation moving the scope's
// registered targets from its current keys to the new one (rekey.create_rotation: registered
// columns found by identity and whole-column usage, one unscoped job per table and key-id
// column, the new key promoted once, when every job reached the promotion stage). A scope whose
// keys hold no registered values gets its new key promoted directly.
//
// At most max_jobs scopes are rotated per run, so a thousand overdue tenants are spread over
// successive runs instead of hitting the KMS and the database in one burst; the rest are
// reported as deferred; `stagger` spaces the scopes of one run. Each scope is handled in its own
// transaction (a KMS or database failure in one leaves the others alone) and audited as
// rotation.scheduled. Runs are serialized by an advisory lock: a second concurrent run does nothing
// (TransientError).
//
// Thread-safety: uses only the connection it is given.
#pragma once

#include <pqxx/pqxx>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "jobs/rotation.h"
#include "kms/kms_client.h"

namespace rekey::rotation {

struct RotateDueOptions {
  int max_jobs = 10;  // scopes rotated per run
  bool dry_run = false;
  std::string stages = "{1,25,50,75,100}";
  std::optional<std::string> observe = "10 minutes";  // nullopt: every gate waits for approval
  int batch_size = 1000;
  // Pause between two scopes of one run, so their key generation and job planning (which reads
  // the target tables) do not hit the KMS and the database back to back.
  std::chrono::seconds stagger{0};
};

struct ScopeRotation {
  std::string scope;
  uint32_t old_key = 0;
  std::string due_at;
  // scheduled, promoted (no registered values under the old key), in_flight (a job already
  // runs), deferred (beyond max_jobs), would_schedule (dry run), failed.
  std::string action;
  std::optional<uint32_t> new_key;
  std::optional<int64_t> rotation;  // of a scheduled scope
  std::vector<int64_t> jobs;
  std::vector<std::string> targets;  // "schema.table (columns; n values)"
  std::string detail;                // e.g. the error of a failed scope
  int exit_code = 0;                 // of a failed scope: rekey::ExitCodeFor its error
};

using KmsResolver = std::function<kms::KmsClient&(const std::string& provider)>;

struct RotateRequest {
  jobs::RotationSpec spec;  // spec.to_key is ignored with new_key
  bool new_key = false;     // generate the target key, through the scope primary's KMS provider
};

// Creates the rotation in `txn` (the caller commits), after the new key if asked. Throws
// ConfigError for new_key in a scope without a primary key, whatever the KMS throws, and the
// database's refusals (jobs/rotation.h).
jobs::Rotation StartRotation(pqxx::transaction_base& txn, const KmsResolver& kms,
                             RotateRequest request);

// Returns one entry per overdue scope. Throws TransientError if another run holds the lock.
std::vector<ScopeRotation> RotateDue(pqxx::connection& conn, const KmsResolver& kms,
                                     const RotateDueOptions& options);

}  // namespace rekey::rotation
