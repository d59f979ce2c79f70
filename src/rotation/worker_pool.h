// The claim loops of one `rekey work` process.
//
// Each of `concurrency` threads owns a PostgreSQL connection and repeats: claim a batch
// (rekey.claim_batch: FOR UPDATE SKIP LOCKED), re-encrypt it (BatchRotator), commit. Liveness
// comes from row locks, not leases: a worker killed at any instant loses its transaction, its
// batch row is unlocked at once, and any other worker claims it on its next poll.
//
// Run returns when no batch of the selected jobs is pending or running anywhere (so the process
// can exit 0, as a Kubernetes work queue expects), or soon after `stop` turns true (the current
// batch is finished first; batches take milliseconds to seconds).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>

#include "rotation/batch_rotator.h"

namespace rekey::rotation {

struct WorkerOptions {
  std::optional<int64_t> job;   // nullopt: every active job
  int concurrency = 1;          // claim loops, each with its own connection
  std::string worker_name;      // default: <hostname>:<pid>; loops append /<n>
  std::chrono::milliseconds idle_poll{500};  // while other workers still hold batches
};

struct WorkerStats {
  std::atomic<int64_t> batches_done{0};
  std::atomic<int64_t> batches_released{0};
  std::atomic<int64_t> rows_reencrypted{0};
  std::atomic<int64_t> rows_skipped{0};
  std::atomic<int64_t> rows_quarantined{0};
};

class WorkerPool {
 public:
  WorkerPool(std::string conninfo, WorkerOptions options, DataKeySource keys);

  // Runs the claim loops to completion (see the file comment). Throws the first permanent
  // key or configuration error any loop met (KeyError, ConfigError): those stop the whole
  // process before it touches another batch, and the batch in hand is released unharmed.
  void Run(const std::atomic<bool>& stop);

  const WorkerStats& stats() const { return stats_; }

 private:
  void ClaimLoop(int index, const std::atomic<bool>& stop);
  void SetFatal(std::exception_ptr error);

  std::string conninfo_;
  WorkerOptions options_;
  DataKeySource keys_;
  WorkerStats stats_;
  std::mutex fatal_mu_;
  std::exception_ptr fatal_;
  std::atomic<bool> fatal_set_{false};
};

// <hostname>:<pid>, the default worker name (a Kubernetes pod's hostname is its name).
std::string DefaultWorkerName();

}  // namespace rekey::rotation
