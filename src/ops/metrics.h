// Metrics: the Prometheus metrics of a `rekey work` process (docs/operations.md lists them).
//
// Names follow the Prometheus conventions (rekey_ prefix, base units, _total for counters,
// _seconds for durations). Labels are bounded: no worker ids, batch numbers or row keys. Two
// labels grow with the data and are bounded on purpose:
//   key_id  only for keys that can still be used (enabled, primary, decrypt_only): retired and
//           destroyed keys drop out, so the series track the live keyring;
//   job_id  only for jobs that are not finished (active, verifying, awaiting_approval, paused,
//           failed); rotate-due's --max-jobs bounds how many run at once. The per-stage gauges
//           add stage (a job has a handful) and rotation_id (one per job);
//           rotation_id alone only for rotations not finished (one per scope at a time).
//
// Counters describe this process's own work since it started (sum them over pods); the gauges
// read from the database (keys, jobs) describe the whole deployment and are the same in every
// pod (use max() over pods).
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "rotation/brake.h"
#include "rotation/worker_observer.h"

namespace rekey::ops {

struct KeyAgeSample {
  int64_t key_id = 0;
  std::string scope;
  std::string status;
  double age_seconds = 0;
  std::optional<double> max_age_seconds;  // nullopt: no policy applies
};

struct JobProgressSample {
  int64_t job_id = 0;
  std::string state;
  double rows_total = 0;
  double rows_processed = 0;
  // Readers holding the job back (sql/schema/45_readers.sql): distinct lagging readers, and
  // seconds since the wait began; 0 while it does not wait.
  double lagging_readers = 0;
  double waiting_for_readers_seconds = 0;
};

// One stage of an unfinished job: the rows of its planned batches and of those done.
struct StageProgressSample {
  int64_t job_id = 0;
  std::string rotation_id;  // "" for a job created alone, not by `rekey rotate`
  int stage_no = 0;
  std::string kind;  // rollout, sweep or rollback
  double rows_total = 0;
  double rows_processed = 0;
};

// An unfinished rotation (jobs/rotation.h): the rollout rows of all its jobs.
struct RotationProgressSample {
  std::string rotation_id;
  std::string scope;
  double rows_total = 0;
  double rows_processed = 0;
};

// What the database says, read at scrape time (database_collector.h).
struct DatabaseSnapshot {
  std::vector<KeyAgeSample> keys;
  int64_t keys_overdue = 0;
  std::optional<double> last_rotation_completed;  // unix seconds
  std::map<std::string, int64_t> jobs_by_state;
  std::vector<JobProgressSample> jobs;
  std::vector<StageProgressSample> stages;
  std::vector<RotationProgressSample> rotations;
};

class Metrics : public rotation::WorkerObserver {
 public:
  Metrics();

  // rotation::WorkerObserver
  void OnBatch(const rotation::BatchEvent& event) override;
  void OnGate(const rotation::GateEvent& event) override;

  // One KMS call: operation is generate_data_key, wrap_data_key, unwrap_data_key,
  // rewrap_data_key, encrypt_blob or decrypt_blob (a Tink keyset); outcome is
  // success, transient_error (throttled, unavailable, breaker open), key_error (denied, disabled
  // key, wrong key) or error.
  void ObserveKmsCall(const std::string& provider, const std::string& operation,
                      const std::string& outcome, double seconds);
  // 0 closed, 1 open, 2 half-open (as circuit_breaker.h's states).
  void SetBreakerState(const std::string& provider, int state);
  // rekey_brake_active{reason}: 1 while the brake is engaged (reason: one of
  // rotation::kBrakeReasons, every one exported from the start at 0).
  void SetBrakeActive(const std::string& reason, bool active);
  // The data-key cache's running totals; the counters advance by the difference.
  void SetDataKeyCacheTotals(uint64_t hits, uint64_t misses);

  void SetDatabaseUp(bool up);
  // Replaces every database-derived gauge (series of keys and jobs no longer listed disappear).
  void SetDatabaseSnapshot(const DatabaseSnapshot& snapshot);

  // The Prometheus text exposition format (version 0.0.4) of every metric.
  std::string Serialize() const;
  prometheus::Registry& registry() { return *registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter& rows_reencrypted_;
  prometheus::Counter& rows_skipped_;
  prometheus::Counter& rows_quarantined_;
  prometheus::Family<prometheus::Counter>& batches_;
  prometheus::Histogram& batch_duration_;
  prometheus::Family<prometheus::Counter>& decrypt_errors_;
  prometheus::Family<prometheus::Counter>& gates_;
  prometheus::Family<prometheus::Counter>& kms_requests_;
  prometheus::Family<prometheus::Histogram>& kms_duration_;
  prometheus::Family<prometheus::Gauge>& breaker_state_;
  prometheus::Counter& cache_hits_;
  prometheus::Counter& cache_misses_;
  prometheus::Gauge& database_up_;
  prometheus::Family<prometheus::Gauge>& key_age_;
  prometheus::Family<prometheus::Gauge>& key_max_age_;
  prometheus::Gauge& keys_overdue_;
  prometheus::Gauge& last_rotation_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Gauge>& job_rows_total_;
  prometheus::Family<prometheus::Gauge>& job_rows_processed_;
  prometheus::Family<prometheus::Gauge>& job_lagging_readers_;
  prometheus::Family<prometheus::Gauge>& job_waiting_for_readers_;
  prometheus::Family<prometheus::Gauge>& stage_rows_total_;
  prometheus::Family<prometheus::Gauge>& stage_rows_processed_;
  prometheus::Family<prometheus::Gauge>& rotation_rows_total_;
  prometheus::Family<prometheus::Gauge>& rotation_rows_processed_;
  prometheus::Family<prometheus::Gauge>& brake_active_;

  std::mutex mu_;  // guards the fields below and the database-derived series
  uint64_t cache_hits_seen_ = 0;
  uint64_t cache_misses_seen_ = 0;
  std::vector<std::pair<prometheus::Family<prometheus::Gauge>*, prometheus::Gauge*>>
      snapshot_series_;
};

}  // namespace rekey::ops
