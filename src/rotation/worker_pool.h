// The claim loops of one `rekey work` process.
//
// Each of `concurrency` threads owns a PostgreSQL connection and repeats: claim a batch
// (rekey.claim_batch: FOR UPDATE SKIP LOCKED), re-encrypt it (BatchRotator), commit. Liveness
// comes from row locks, not leases: a worker killed at any instant loses its transaction, its
// batch row is unlocked at once, and any other worker claims it on its next poll.
//
// Between batches the loops also move staged jobs along: they close finished stages, run the
// verification gates (decrypting a sample of the rows moved so far), and open stages whose
// observation period after a passed gate is over.
//
// Run returns when the selected jobs have nothing left that a worker can do: no batch of an
// open stage is pending or running anywhere, no gate waits, and no observation period runs (so
// the process can exit 0, as a Kubernetes work queue expects; a job waiting for an operator's
// approval is left waiting). It also returns soon after `stop` turns true (the current batch is
// finished first; batches take milliseconds to seconds).
//
// A key the job writes under that is retired, destroyed or unknown (BatchRotator's key lock
// refuses it, KeyNotWritableError) pauses the job with the reason, releases the batch as a
// permanent error with nothing written, and stops the process with a StateError. Row-level
// security that hides rows of a job's table from the worker's role stops it with a ConfigError
// before its first claim (RefuseJobsWithHiddenRows), and before any batch or gate writes.
//
// While WorkerOptions::kms_available says the KMS is down, the loops claim nothing and wait; a
// KMS error that still reaches a batch (TransientError) releases it without consuming an attempt,
// so a KMS outage makes a job slower, never failed or quarantined.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

#include "rotation/batch_rotator.h"
#include "rotation/pacer.h"
#include "rotation/worker_observer.h"

namespace rekey::rotation {

struct WorkerOptions {
  std::optional<int64_t> job;                // nullopt: every active job
  int concurrency = 1;                       // claim loops, each with its own connection
  std::string worker_name;                   // default: <hostname>:<pid>; loops append /<n>
  std::chrono::milliseconds idle_poll{500};  // while other workers still hold batches
  // False while the KMS is known to be down (an open circuit breaker, kms::KmsRegistry::Available):
  // the loops then claim nothing, so no batch is started, failed or quarantined for an outage, and
  // they resume by themselves once it turns true. nullptr: always available.
  std::function<bool()> kms_available;
  // The Vault Transit service of vault-transit jobs (transit_service.h); nullptr: such jobs stop
  // the worker with a ConfigError.
  TransitClientSource transit;
  PacingOptions pacing;  // rate limit, chunking, replication lag (pacer.h)
  // The stored bytes of rotated values one chunk holds at most (BatchRotator::set_chunk_bytes).
  int64_t batch_bytes = BatchRotator::kDefaultChunkBytes;
  // The AWS KMS service of aws-kms jobs (aws_kms_rewriter.h); nullptr: such jobs stop the worker
  // with a ConfigError.
  AwsKmsSource aws_kms;
  WorkerObserver* observer = nullptr;  // not owned; must outlive Run(); may be null
};

struct WorkerStats {
  std::atomic<int64_t> batches_done{0};
  std::atomic<int64_t> batches_released{0};
  std::atomic<int64_t> rows_reencrypted{0};
  std::atomic<int64_t> rows_skipped{0};
  std::atomic<int64_t> rows_quarantined{0};
  std::atomic<int64_t> kms_pauses{0};  // times a loop found the KMS unavailable and waited
};

class WorkerPool {
 public:
  WorkerPool(std::string conninfo, WorkerOptions options, DataKeySource keys);

  // Runs the claim loops to completion (see the file comment). Throws the first permanent
  // key or configuration error any loop met (KeyError, ConfigError): those stop the whole
  // process before it touches another batch, and the batch in hand is released unharmed. Throws
  // StateError after pausing a job whose keys refused a write (see the file comment).
  void Run(const std::atomic<bool>& stop);

  const WorkerStats& stats() const { return stats_; }

 private:
  void ClaimLoop(int index, const std::atomic<bool>& stop);
  // Closes finished stages, runs waiting verification gates, and opens stages whose
  // observation period is over. Returns true iff a stage opened (there may be work to claim).
  bool AdvanceJobs(pqxx::connection& conn, const std::string& worker_id, const char* job_param);
  void SetFatal(std::exception_ptr error);
  void Observe(BatchOutcome outcome, const BatchResult* result);

  std::string conninfo_;
  WorkerOptions options_;
  DataKeySource keys_;
  WorkerStats stats_;
  std::mutex fatal_mu_;
  std::exception_ptr fatal_;
  std::atomic<bool> fatal_set_{false};
  Pacer pacer_;  // shared by the claim loops: the rate limit is per process
};

// <hostname>:<pid>, the default worker name (a Kubernetes pod's hostname is its name).
std::string DefaultWorkerName();

// Throws ConfigError ("job J: " and rekey.row_security_blocker's reason, which names the role and
// the grant that fixes it) iff row-level security hides rows of the table of a job (`job`, or
// any) that a worker could act on -- active, verifying or awaiting approval -- from the
// connection's role. Such a job must not run: a worker would skip the hidden rows as if they
// needed no work, and the job would complete with them still under the old key.
void RefuseJobsWithHiddenRows(pqxx::connection& conn, std::optional<int64_t> job);

// True iff some job (`job`, or any) still needs a worker: it is active (batches to run, or its
// stage's move to the gate or the next stage), verifying, or waiting out an observation period
// after which it advances by itself. A claim loop with nothing to claim exits iff this is false.
bool WorkRemains(pqxx::connection& conn, std::optional<int64_t> job);

}  // namespace rekey::rotation
