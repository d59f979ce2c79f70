// What `rekey work --job J` runs (worker/work_command.cpp), on a thread of the model test's own
// process: rotation::WorkerPool with a fresh data-key cache in front of the local KMS, then the
// durable audit seal a worker makes at exit. Spawning the binary costs a process start, a
// connection and a key unwrap per step; the model keeps spawned children only for the steps
// that SIGKILL a worker mid-batch, which no thread can imitate.
//
// A worker of a job that waits out an observation period idles until it ends (WorkRemains). The
// model's jobs observe for 0 s or rotate-due's 10 minutes; a spawned worker of the latter was
// killed after the step's limit, doing nothing meanwhile. Wait() stops such a worker as soon as
// the wait is seen to outlast the limit: the same outcome, without the idle seconds.
//
// Header-only (like model_crypto.h): the test executable is built from its one .cpp file.
// Thread-safety: one InProcessWorker is used by one thread at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include <pqxx/pqxx>

#include "audit/audit_chain.h"
#include "common/error.h"
#include "db/connection.h"
#include "harness/process.h"
#include "keyring/data_key_cache.h"
#include "rotation/worker_pool.h"
#include "rotation_support.h"

namespace rekey::testing::model {

class InProcessWorker {
 public:
  // Starts the pool at once. `name` must be unique among the workers of the database (two
  // pools of one process would otherwise share DefaultWorkerName's <host>:<pid>).
  InProcessWorker(std::string conninfo, int64_t job, std::string name)
      : conninfo_(std::move(conninfo)), job_(job), name_(std::move(name)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~InProcessWorker() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  InProcessWorker(const InProcessWorker&) = delete;
  InProcessWorker& operator=(const InProcessWorker&) = delete;

  int64_t job() const { return job_; }

  // Waits for the pool to return, as the binary's exit: exit_code as `rekey work` would return
  // it, err as it would print it. Stops the pool (as SIGTERM would: the batch in hand is
  // finished) once `limit` has passed, term_signal = SIGTERM then, or as soon as the job waits
  // for an observation period that ends after `limit` (the pool has nothing else to do; `out`
  // says so); `conn`, the caller's connection to the database (outside any transaction), looks.
  // May be called again; later calls return the same result.
  ProcessResult Wait(std::chrono::seconds limit, pqxx::connection& conn) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    bool look = true;
    while (!Finished()) {
      if (std::chrono::steady_clock::now() >= deadline) {
        stopped_for_ = SIGTERM;
        break;
      }
      try {
        if (look && IdlesBeyond(conn, deadline)) {
          result_.out = "idle: the job observes past the limit";
          break;
        }
      } catch (const std::exception&) {
        look = false;  // only an optimisation: without it, the limit still ends the wait
      }
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(50), [this] { return done_; });
    }
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    result_.term_signal = stopped_for_;
    if (stopped_for_) result_.exit_code = -1;
    return result_;
  }

 private:
  void Run() {
    int code = kExitOk;
    std::string err;
    try {
      kms::LocalKms kms = TestKms();
      keyring::DataKeyCache cache(conninfo_, kms);
      rotation::WorkerOptions options;
      options.job = job_;
      options.worker_name = name_;
      rotation::WorkerPool pool(conninfo_, options,
                                [&cache](uint32_t key_id) { return cache.Get(key_id); });
      pool.Run(stop_);
      // As LogAuditHead in worker/work_command.cpp (a session of rekey's, READ COMMITTED
      // whatever the default); a failure here is only logged there.
      try {
        audit::SealDurably(*db::Connect(conninfo_, "rekey-worker"));
      } catch (const std::exception&) {
      }
    } catch (const std::exception& e) {
      code = ExitCodeFor(e);
      err = std::string("rekey: error: ") + e.what();
    }
    std::lock_guard<std::mutex> lock(mu_);
    result_.exit_code = code;
    result_.err = err;
    done_ = true;
    cv_.notify_all();
  }

  bool Finished() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  // True iff the job awaits approval with an observation period (so the pool waits for
  // rekey.advance_due, migrations/0002_jobs.sql) that no passed gate of its stage ends before
  // `deadline`.
  bool IdlesBeyond(pqxx::connection& conn, std::chrono::steady_clock::time_point deadline) {
    const double seconds_left =
        std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    pqxx::read_transaction txn(conn);
    const pqxx::result r = txn.exec_params(
        "SELECT j.state = 'awaiting_approval' AND j.observe IS NOT NULL AND NOT EXISTS ("
        " SELECT 1 FROM rekey.gates g WHERE g.job_id = j.job_id AND g.stage_no = j.current_stage"
        " AND g.passed AND g.verified_at + j.observe <= now() + make_interval(secs => $2))"
        " AS idles FROM rekey.jobs j WHERE j.job_id = $1",
        job_, seconds_left);
    return !r.empty() && r[0]["idles"].as<bool>();
  }

  const std::string conninfo_;
  const int64_t job_;
  const std::string name_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;     // guarded by mu_
  ProcessResult result_;  // exit_code and err guarded by mu_ until done_
  int stopped_for_ = 0;
  std::thread thread_;
};

}  // namespace rekey::testing::model
