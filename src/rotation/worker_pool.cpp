#include "rotation/worker_pool.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "db/connection.h"
#include "db/named_query.h"
#include "jobs/after_rewrite.h"
#include "rotation/gate.h"

namespace rekey::rotation {
namespace {

const std::string& Query(const char* name) {
  return db::Query(std::string("rotation/worker_pool.") + name);
}

// The job filter of worker_pool.sql's queries: the job's id, or NULL for every job.
std::optional<std::string> JobParam(std::optional<int64_t> job) {
  return job ? std::optional<std::string>(std::to_string(*job)) : std::nullopt;
}

ClaimedBatch ClaimedBatchOf(const pqxx::row& row) {
  ClaimedBatch b;
  b.job_id = row["job_id"].as<int64_t>();
  b.batch_no = row["batch_no"].as<int>();
  if (!row["lo"].is_null()) b.lo = row["lo"].as<std::string>();
  if (!row["hi"].is_null()) b.hi = row["hi"].as<std::string>();
  b.attempt = row["attempt"].as<int>();
  b.stage_no = row["stage_no"].as<int>();
  if (!row["bucket_lo"].is_null()) b.bucket_lo = row["bucket_lo"].as<int>();
  if (!row["bucket_hi"].is_null()) b.bucket_hi = row["bucket_hi"].as<int>();
  b.rollback = row["rollback"].as<bool>();
  if (!row["relation"].is_null()) b.relation = row["relation"].as<std::string>();
  return b;
}

// Sleeps up to `duration`, waking early when `stop` turns true.
void SleepUnlessStopped(std::chrono::milliseconds duration, const std::atomic<bool>& stop,
                        const std::atomic<bool>& fatal) {
  const auto until = std::chrono::steady_clock::now() + duration;
  while (!stop && !fatal && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Notices that a job changed state or stage (rekey.jobs' trigger notifies kJobsChannel, see
// sql/schema/40_jobs.sql): an idle claim loop wakes at once instead of at the end of its idle poll.
constexpr const char* kJobsChannel = "rekey_jobs";

class JobChangeListener : public pqxx::notification_receiver {
 public:
  explicit JobChangeListener(pqxx::connection& conn) : notification_receiver(conn, kJobsChannel) {}
  void operator()(const std::string& /*payload*/, int /*backend_pid*/) override { heard_ = true; }
  // True iff a notification arrived since the last call.
  bool TakeHeard() { return std::exchange(heard_, false); }

 private:
  bool heard_ = false;
};

// Waits up to `duration` for a job change on `conn` (outside any transaction), waking early when
// one is heard or `stop` turns true. A notification that arrived while the loop was busy counts.
void WaitForJobChange(pqxx::connection& conn, JobChangeListener& listener,
                      std::chrono::milliseconds duration, const std::atomic<bool>& stop,
                      const std::atomic<bool>& fatal) {
  const auto until = std::chrono::steady_clock::now() + duration;
  conn.get_notifs();
  while (!listener.TakeHeard() && !stop && !fatal && std::chrono::steady_clock::now() < until) {
    conn.await_notification(0, 20000);  // short slices, so a stop is seen within 20 ms
  }
}

std::chrono::milliseconds Backoff(int failures, std::mt19937& rng) {
  // Exponential with full jitter, capped: a crowd of workers must not retry in lockstep.
  const int64_t cap = std::min<int64_t>(5000, 100LL << std::min(failures, 6));
  return std::chrono::milliseconds(std::uniform_int_distribution<int64_t>(cap / 2, cap)(rng));
}

// The job's pause reason when a key it writes under was refused: what happened and what to do.
std::string KeyRefusalReason(const KeyNotWritableError& e, int64_t job) {
  const std::string j = std::to_string(job);
  return std::string(e.what()) +
         "; a retired key can be made decrypt_only again and the job resumed (rekey job resume " +
         j + "); otherwise rekey job rollback " + j + " or rekey job cancel " + j;
}

}  // namespace

void RefuseJobsWithHiddenRows(pqxx::connection& conn, std::optional<int64_t> job) {
  pqxx::read_transaction txn(conn);
  const pqxx::result blocked = txn.exec_params(Query("hidden_rows"), JobParam(job));
  if (!blocked.empty()) {
    throw ConfigError("job " + blocked[0]["job_id"].as<std::string>() + ": " +
                      blocked[0]["reason"].as<std::string>());
  }
}

bool WorkRemains(pqxx::connection& conn, std::optional<int64_t> job) {
  pqxx::read_transaction txn(conn);
  // An active job always has something left: batches of its open stage, or, once they are all
  // done, the move to its gate or next stage (rekey.finish_stages), which the worker that ends a
  // stage makes a moment after its commit. Counting only unfinished batches let a loop that
  // looked in that moment exit and leave the rest of the job to the others.
  return txn.exec_params1(Query("work_remains"), JobParam(job))["work_remains"].as<bool>();
}

std::string DefaultWorkerName() {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  return std::string(host) + ":" + std::to_string(getpid());
}

WorkerPool::WorkerPool(std::string conninfo, WorkerOptions options, DataKeySource keys)
    : conninfo_(std::move(conninfo)),
      options_(std::move(options)),
      keys_(std::move(keys)),
      pacer_(options_.pacing) {
  if (options_.concurrency < 1) throw ConfigError("--concurrency must be at least 1");
  if (options_.worker_name.empty()) options_.worker_name = DefaultWorkerName();
}

void WorkerPool::SetFatal(std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(fatal_mu_);
  if (!fatal_) fatal_ = error;
  fatal_set_ = true;
}

void WorkerPool::Observe(BatchOutcome outcome, const BatchResult* result) {
  if (!options_.observer) return;
  BatchEvent event;
  event.outcome = outcome;
  if (result) {
    event.rows_reencrypted = result->rows_done;
    event.rows_skipped = result->rows_skipped;
    event.rows_quarantined = result->rows_failed;
    event.duration_seconds = result->duration_ms / 1000.0;
  }
  options_.observer->OnBatch(event);
}

void WorkerPool::Run(const std::atomic<bool>& stop) {
  std::vector<std::thread> loops;
  for (int i = 0; i < options_.concurrency; ++i) {
    loops.emplace_back([this, i, &stop] {
      try {
        ClaimLoop(i, stop);
      } catch (...) {
        SetFatal(std::current_exception());
      }
    });
  }
  for (auto& t : loops) t.join();
  if (fatal_) std::rethrow_exception(fatal_);
}

bool WorkerPool::AdvanceJobs(pqxx::connection& conn, const std::string& worker_id,
                             const char* job_param) {
  bool moved = false;
  std::vector<int64_t> completed;
  {
    pqxx::work txn(conn);
    for (const auto& row : txn.exec_params(Query("finish_stages"), job_param)) {
      const std::string state = row["state"].as<std::string>();
      log::Info("job moved on", {{"job", row["job_id"].as<int64_t>()},
                                 {"state", state},
                                 {"worker", worker_id},
                                 {"action", "job.finish_stage"}});
      moved = moved || state == "active";
      if (state == "completed") completed.push_back(row["job_id"].as<int64_t>());
    }
    txn.commit();
  }
  // The job's end counters and its --vacuum-after, by the worker that completed it.
  for (int64_t job : completed) jobs::AfterJobCompleted(conn, job, worker_id);
  std::optional<int64_t> job;
  if (job_param != nullptr) job = std::stoll(job_param);
  while (auto gate = RunNextGate(conn, job, keys_, worker_id)) {
    log::Audit(gate->passed ? "gate.passed" : "gate.failed", gate->passed ? "success" : "failure",
               {{"job", gate->job_id},
                {"stage", gate->stage_no},
                {"worker", worker_id},
                {"values_checked", gate->values_checked},
                {"decrypt_errors", gate->decrypt_errors},
                {"job_state", gate->job_state},
                {"reason", gate->state_reason}});
    if (options_.observer) {
      options_.observer->OnGate({gate->passed, gate->values_checked, gate->decrypt_errors});
    }
    moved = moved || gate->job_state == "active";
  }
  {
    pqxx::work txn(conn);
    const int advanced = txn.exec_params1(Query("advance_due"), job_param)["opened"].as<int>();
    txn.commit();
    if (advanced > 0) {
      log::Info("stages opened after their observation period",
                {{"jobs", advanced}, {"worker", worker_id}});
      moved = true;
    }
  }
  return moved;
}

void WorkerPool::ClaimLoop(int index, const std::atomic<bool>& stop) {
  const std::string worker_id = options_.worker_name + "/" + std::to_string(index);
  std::mt19937 rng(std::random_device{}() + index);
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<JobChangeListener> listener;  // on `conn`; destroyed before it
  // Opens a new connection and its listener: both or, if either fails, neither.
  auto reconnect = [&] {
    listener.reset();
    conn.reset();
    conn = db::Connect(conninfo_, "rekey-worker " + worker_id);
    try {
      listener = std::make_unique<JobChangeListener>(*conn);
    } catch (...) {
      conn.reset();
      throw;
    }
  };
  // Per job, and per leaf partition of a partitioned table (its statements name the leaf).
  std::map<std::pair<int64_t, std::string>, std::unique_ptr<BatchRotator>> rotators;
  std::map<int64_t, ChunkSizer> sizers;  // per job: chunk sizes adapt to each table's speed
  int consecutive_failures = 0;
  const char* job_param = nullptr;
  std::string job_text;
  if (options_.job) {
    job_text = std::to_string(*options_.job);
    job_param = job_text.c_str();
  }

  bool kms_paused = false;
  while (!stop && !fatal_set_) {
    if (options_.kms_available && !options_.kms_available()) {
      // The KMS is down: a claim now could only end in a released batch. Wait, claim nothing.
      if (!kms_paused) {
        ++stats_.kms_pauses;
        log::Warn("KMS unavailable (circuit breaker open); pausing claims until it recovers",
                  {{"worker", worker_id}, {"action", "kms.pause"}});
        kms_paused = true;
      }
      SleepUnlessStopped(options_.idle_poll, stop, fatal_set_);
      continue;
    }
    if (kms_paused) {
      log::Info("KMS available again; resuming claims",
                {{"worker", worker_id}, {"action", "kms.resume"}});
      kms_paused = false;
    }
    std::optional<ClaimedBatch> batch;
    try {
      if (!conn || !conn->is_open()) {
        rotators.clear();  // prepared statements live on the old connection
        reconnect();
        RefuseJobsWithHiddenRows(*conn, options_.job);
      }
      pacer_.WaitForReplicas(ReplicationLagOf(*conn), stop, worker_id,
                             [&](auto pause) { SleepUnlessStopped(pause, stop, fatal_set_); });
      pacer_.WaitForBrakes(stop, worker_id);
      if (stop) break;
      {
        pqxx::work txn(*conn);
        // Without waiting for its WAL flush (worker_pool.sql says why): this saves one of the
        // two fsyncs per batch.
        txn.exec0(Query("claim_without_flush"));
        pqxx::result r = txn.exec_params(Query("claim_batch"), worker_id, job_param);
        txn.commit();
        if (!r.empty()) batch = ClaimedBatchOf(r[0]);
      }
      if (!batch) {
        if (AdvanceJobs(*conn, worker_id, job_param)) continue;  // a stage opened: claim again
        const bool remaining = WorkRemains(*conn, options_.job);
        {
          pqxx::work txn(*conn);
          txn.exec_params(Query("leave"), worker_id, !remaining);
          txn.commit();
        }
        if (!remaining) return;
        // Other workers hold the rest: wait until one of them opens the next stage (or ends the
        // job), polling in case one of them dies.
        WaitForJobChange(*conn, *listener, options_.idle_poll, stop, fatal_set_);
        continue;
      }

      auto& rotator = rotators[{batch->job_id, batch->relation.value_or("")}];
      if (!rotator) {
        pqxx::read_transaction txn(*conn);
        rotator =
            std::make_unique<BatchRotator>(jobs::LoadJob(txn, batch->job_id), keys_,
                                           options_.transit, options_.aws_kms, batch->relation);
        txn.commit();
        rotator->set_wait_for_flush(options_.pacing.gentle());
        rotator->set_chunk_bytes(options_.batch_bytes);
        rotator->LoadKeys();
      }
      auto sizer =
          sizers.try_emplace(batch->job_id, pacer_.MakeSizer(rotator->job().batch_size)).first;
      BatchResult result =
          pacer_.RunBatch(*rotator, *conn, *batch, worker_id, &sizer->second, stop);
      switch (result.outcome) {
        case BatchResult::Outcome::kDone:
          ++stats_.batches_done;
          stats_.rows_reencrypted += result.rows_done;
          stats_.rows_skipped += result.rows_skipped;
          stats_.rows_quarantined += result.rows_failed;
          log::Audit("rotation.batch.completed", "success",
                     {{"job", batch->job_id},
                      {"batch", batch->batch_no},
                      {"worker", worker_id},
                      {"rows_reencrypted", result.rows_done},
                      {"rows_skipped", result.rows_skipped},
                      {"rows_quarantined", result.rows_failed},
                      {"duration_ms", int64_t(result.duration_ms)}});
          Observe(BatchOutcome::kCompleted, &result);
          if (result.rows_failed > 0) {
            log::Warn("values quarantined", {{"job", batch->job_id},
                                             {"batch", batch->batch_no},
                                             {"worker", worker_id},
                                             {"rows", result.rows_failed},
                                             {"action", "quarantine"}});
          }
          break;
        case BatchResult::Outcome::kLost:
          Observe(BatchOutcome::kLost, nullptr);
          break;
        case BatchResult::Outcome::kJobNotActive: {
          pqxx::work txn(*conn);
          ReleaseBatch(txn, *batch, worker_id, "job is no longer active", true);
          txn.commit();
          Observe(BatchOutcome::kJobNotActive, nullptr);
          break;
        }
      }
      consecutive_failures = 0;
    } catch (const std::exception& e) {
      const auto* refused_key = batch ? dynamic_cast<const KeyNotWritableError*>(&e) : nullptr;
      bool paused_job = false;
      // The error table (common/error_table.h) decides: a key, configuration, privilege or schema
      // problem stops the worker; neither it nor a transient error uses up the batch's attempt.
      const db::Classification verdict = db::Classify(e);
      const bool key_problem = verdict.batch == BatchAction::kStop;
      const bool transient = key_problem || verdict.error_class == ErrorClass::kTransient;
      ++consecutive_failures;
      nlohmann::json fields = {{"worker", worker_id},
                               {"error", e.what()},
                               {"transient", transient},
                               {"action", "rotation.batch.attempt"},
                               {"outcome", key_problem || refused_key ? "stopped"
                                           : transient                ? "retry"
                                                                      : "failure"}};
      if (batch) {
        fields["job"] = batch->job_id;
        fields["batch"] = batch->batch_no;
        ++stats_.batches_released;
        Observe(BatchOutcome::kReleased, nullptr);
        // Give the batch back so another attempt (here or elsewhere) can take it. A key problem
        // is not the batch's fault, so it does not consume an attempt.
        try {
          if (!conn || !conn->is_open()) reconnect();
          rotators.clear();
          pqxx::work txn(*conn);
          const std::string state = ReleaseBatch(txn, *batch, worker_id,
                                                 std::string(e.what()).substr(0, 2000), transient);
          if (refused_key) {
            // Every other batch of the job would be refused the same way: pausing stops all
            // workers at once with the reason in rekey.progress, where failing batch after batch
            // would only use up their attempts and end the job 'failed'. Whoever paused it first
            // keeps the reason; a job an operator moved on meanwhile is left as it is.
            paused_job = !txn.exec_params(Query("pause_for_key"), batch->job_id,
                                          KeyRefusalReason(*refused_key, batch->job_id))
                              .empty();
          }
          txn.commit();
          fields["batch_state"] = state;
        } catch (const std::exception& release_error) {
          // The batch stays 'running' and unlocked: the next claim anywhere picks it up.
          fields["release_error"] = release_error.what();
          listener.reset();
          conn.reset();
        }
      } else if (!conn || !conn->is_open() || verdict.error_class == ErrorClass::kTransient) {
        listener.reset();
        conn.reset();
      }
      if (refused_key) {
        fields["job_paused"] = paused_job;
        log::Error("stopping: the job would write under a key that is not writable", fields);
        throw StateError((paused_job ? "job " + std::to_string(batch->job_id) + " paused: " : "") +
                         KeyRefusalReason(*refused_key, batch->job_id));
      }
      if (key_problem) {
        log::Error("stopping: key or configuration problem", fields);
        // A database error's row says what it means and what to do (a missing grant, a target
        // gone); rekey's own errors already do.
        if (verdict.rule != nullptr && !verdict.rule->summary.empty()) {
          throw ConfigError(std::string(verdict.rule->summary) + ": " + db::PrimaryMessage(e) +
                            "; " + std::string(verdict.rule->remedy));
        }
        throw;
      }
      log::Warn(transient ? "batch attempt failed; will retry" : "batch attempt failed", fields);
      SleepUnlessStopped(Backoff(consecutive_failures, rng), stop, fatal_set_);
    }
  }
}

}  // namespace rekey::rotation
