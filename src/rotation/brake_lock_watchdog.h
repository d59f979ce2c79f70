// The lock_wait brake (brake.h, --max-lock-wait MS): rekey must never make the application wait
// on a lock rekey holds for longer than MS.
//
// A watchdog thread with its own connection polls, every MS/5 (5 ms to 200 ms), for sessions
// waiting on a lock held by one of this process's claim loops (pg_blocking_pids; the loops are
// known by their application_name, 'rekey-worker <name>/<n>'; other rekey sessions are not
// application sessions and do not count). Once such a wait reaches MS/2 the watchdog makes the
// claim loop yield:
//   - a backend running a statement is cancelled (pg_cancel_backend): the statement fails with
//     query_canceled, its transaction rolls back, the row locks go, and the worker releases the
//     batch as a transient failure (no attempt used up) to retry it later from its checkpoint;
//   - a backend idle in its transaction (the worker computing between statements) ignores a
//     cancel, so it is terminated (pg_terminate_backend): the same rollback, and the claim loop
//     reconnects; so is a backend still blocking one poll after it was cancelled.
// Then the lock_wait brake is held for a cool-down (10 x MS, 1 s to 30 s) so the application's
// transaction can finish before the rows are tried again. Half of MS, plus a poll, plus the
// rollback, is the budget that keeps the application's wait under MS (tests/brakes_pg_test.cpp
// measures it).
//
// Nothing is lost: a rolled-back chunk wrote nothing, committed chunks are under the new key and
// the batch checkpoint says where to resume (rotation/pacer.h).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include <pqxx/pqxx>

#include "rotation/brake.h"

namespace rekey::rotation {

class LockWaitWatchdog {
 public:
  // worker_name: the process's worker name (WorkerOptions::worker_name, resolved). brakes: where
  // the lock_wait brake is held after a yield (not owned; outlives the watchdog).
  LockWaitWatchdog(std::string conninfo, std::string worker_name,
                   std::chrono::milliseconds max_lock_wait, Brakes* brakes);
  ~LockWaitWatchdog();  // stops the thread

  void Start();
  void Stop();
  // One poll (the thread's step; public for tests). Returns the number of backends signalled.
  int PollOnce();
  int64_t yields() const { return yields_.load(); }

 private:
  std::string conninfo_;
  std::string prefix_;
  std::chrono::milliseconds limit_;
  std::chrono::milliseconds poll_;
  Brakes* brakes_;
  std::unique_ptr<pqxx::connection> conn_;
  // Backends cancelled at the last poll: terminated if they still block now.
  std::set<int> cancelled_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> yields_{0};
  std::thread thread_;
};

}  // namespace rekey::rotation
