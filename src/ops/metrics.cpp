#include "ops/metrics.h"

#include <prometheus/text_serializer.h>

#include <sstream>

namespace rekey::ops {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

// Batches take milliseconds to tens of seconds; KMS calls a millisecond (local) to seconds.
const prometheus::Histogram::BucketBoundaries kBatchBuckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                               1,    2.5,   5,    10,  30,   60};
const prometheus::Histogram::BucketBoundaries kKmsBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

const char* const kJobStates[] = {"active",    "verifying", "awaiting_approval", "paused",
                                  "completed", "failed",    "cancelled",         "rolled_back"};

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      rows_reencrypted_(BuildCounter()
                            .Name("rekey_rows_reencrypted_total")
                            .Help("Values re-encrypted under their target key by this process")
                            .Register(*registry_)
                            .Add({})),
      rows_skipped_(BuildCounter()
                        .Name("rekey_rows_skipped_total")
                        .Help("Rows of claimed batches that needed no change")
                        .Register(*registry_)
                        .Add({})),
      rows_quarantined_(BuildCounter()
                            .Name("rekey_rows_quarantined_total")
                            .Help("Values that failed to decrypt and were left untouched in "
                                  "rekey.row_failures")
                            .Register(*registry_)
                            .Add({})),
      batches_(BuildCounter()
                   .Name("rekey_batches_total")
                   .Help("Batches handled by this process, by outcome (completed, lost, "
                         "job_not_active, released)")
                   .Register(*registry_)),
      batch_duration_(BuildHistogram()
                          .Name("rekey_batch_duration_seconds")
                          .Help("Time to re-encrypt and commit one batch")
                          .Register(*registry_)
                          .Add({}, kBatchBuckets)),
      decrypt_errors_(BuildCounter()
                          .Name("rekey_decrypt_errors_total")
                          .Help("Values that failed to decrypt, by phase (rotation: quarantined "
                                "by a batch; gate: found by a verification gate)")
                          .Register(*registry_)),
      gates_(BuildCounter()
                 .Name("rekey_gates_total")
                 .Help("Verification gates run by this process, by result")
                 .Register(*registry_)),
      kms_requests_(BuildCounter()
                        .Name("rekey_kms_requests_total")
                        .Help("KMS calls, by provider, operation and outcome")
                        .Register(*registry_)),
      kms_duration_(BuildHistogram()
                        .Name("rekey_kms_request_duration_seconds")
                        .Help("KMS call latency, retries and rate limiting included")
                        .Register(*registry_)),
      breaker_state_(BuildGauge()
                         .Name("rekey_kms_breaker_state")
                         .Help("KMS circuit breaker: 0 closed, 1 open, 2 half-open")
                         .Register(*registry_)),
      cache_hits_(BuildCounter()
                      .Name("rekey_data_key_cache_hits_total")
                      .Help("Data-key lookups served from the process cache")
                      .Register(*registry_)
                      .Add({})),
      cache_misses_(BuildCounter()
                        .Name("rekey_data_key_cache_misses_total")
                        .Help("Data-key lookups that had to load and unwrap the key")
                        .Register(*registry_)
                        .Add({})),
      database_up_(BuildGauge()
                       .Name("rekey_database_up")
                       .Help("1 iff the last scrape could read the rekey schema")
                       .Register(*registry_)
                       .Add({})),
      key_age_(BuildGauge()
                   .Name("rekey_key_age_seconds")
                   .Help("Age of each usable data key (enabled, primary, decrypt_only)")
                   .Register(*registry_)),
      key_max_age_(BuildGauge()
                       .Name("rekey_key_max_age_seconds")
                       .Help("Maximum age of each usable data key under its scope's policy")
                       .Register(*registry_)),
      keys_overdue_(BuildGauge()
                        .Name("rekey_keys_overdue")
                        .Help("Primary keys older than their maximum age")
                        .Register(*registry_)
                        .Add({})),
      last_rotation_(BuildGauge()
                         .Name("rekey_last_rotation_completed_timestamp_seconds")
                         .Help("When the latest rotation job completed (unix time; 0: never)")
                         .Register(*registry_)
                         .Add({})),
      jobs_(BuildGauge().Name("rekey_jobs").Help("Rotation jobs by state").Register(*registry_)),
      job_rows_total_(BuildGauge()
                          .Name("rekey_job_rows")
                          .Help("Rows a running job's rollout covers")
                          .Register(*registry_)),
      job_rows_processed_(BuildGauge()
                              .Name("rekey_job_rows_processed")
                              .Help("Rows of a running job's rollout processed so far")
                              .Register(*registry_)),
      job_lagging_readers_(
          BuildGauge()
              .Name("rekey_job_lagging_readers")
              .Help("Live readers of a job's scope that cannot decrypt the key it waits to write "
                    "under (0: the job does not wait for readers)")
              .Register(*registry_)),
      job_waiting_for_readers_(
          BuildGauge()
              .Name("rekey_job_waiting_for_readers_seconds")
              .Help("How long a job has waited for lagging readers (0: it does not wait)")
              .Register(*registry_)),
      stage_rows_total_(BuildGauge()
                            .Name("rekey_job_stage_rows")
                            .Help("Rows of a running job's stage (its planned batches)")
                            .Register(*registry_)),
      stage_rows_processed_(BuildGauge()
                                .Name("rekey_job_stage_rows_processed")
                                .Help("Rows of a running job's stage processed so far")
                                .Register(*registry_)),
      rotation_rows_total_(BuildGauge()
                               .Name("rekey_rotation_rows")
                               .Help("Rows the rollouts of an unfinished rotation's jobs cover")
                               .Register(*registry_)),
      rotation_rows_processed_(
          BuildGauge()
              .Name("rekey_rotation_rows_processed")
              .Help("Rows of an unfinished rotation's rollouts processed so far")
              .Register(*registry_)),
      brake_active_(BuildGauge()
                        .Name("rekey_brake_active")
                        .Help("1 while this process holds back on a brake, by reason "
                              "(rotation/brake.h)")
                        .Register(*registry_)) {
  // Every outcome and state is exported from the start, so rate() and absent() behave.
  for (auto outcome : {rotation::BatchOutcome::kCompleted, rotation::BatchOutcome::kLost,
                       rotation::BatchOutcome::kJobNotActive, rotation::BatchOutcome::kReleased}) {
    batches_.Add({{"outcome", rotation::BatchOutcomeName(outcome)}});
  }
  decrypt_errors_.Add({{"phase", "rotation"}});
  decrypt_errors_.Add({{"phase", "gate"}});
  gates_.Add({{"result", "passed"}});
  gates_.Add({{"result", "failed"}});
  for (const char* state : kJobStates) jobs_.Add({{"state", state}});
  for (const char* reason : rotation::kBrakeReasons) brake_active_.Add({{"reason", reason}});
}

void Metrics::OnBatch(const rotation::BatchEvent& event) {
  batches_.Add({{"outcome", rotation::BatchOutcomeName(event.outcome)}}).Increment();
  if (event.outcome != rotation::BatchOutcome::kCompleted) return;
  rows_reencrypted_.Increment(double(event.rows_reencrypted));
  rows_skipped_.Increment(double(event.rows_skipped));
  rows_quarantined_.Increment(double(event.rows_quarantined));
  decrypt_errors_.Add({{"phase", "rotation"}}).Increment(double(event.rows_quarantined));
  batch_duration_.Observe(event.duration_seconds);
}

void Metrics::OnGate(const rotation::GateEvent& event) {
  gates_.Add({{"result", event.passed ? "passed" : "failed"}}).Increment();
  decrypt_errors_.Add({{"phase", "gate"}}).Increment(double(event.decrypt_errors));
}

void Metrics::ObserveKmsCall(const std::string& provider, const std::string& operation,
                             const std::string& outcome, double seconds) {
  kms_requests_.Add({{"provider", provider}, {"operation", operation}, {"outcome", outcome}})
      .Increment();
  kms_duration_.Add({{"provider", provider}, {"operation", operation}}, kKmsBuckets)
      .Observe(seconds);
}

void Metrics::SetBreakerState(const std::string& provider, int state) {
  breaker_state_.Add({{"provider", provider}}).Set(state);
}

void Metrics::SetBrakeActive(const std::string& reason, bool active) {
  brake_active_.Add({{"reason", reason}}).Set(active ? 1 : 0);
}

void Metrics::SetDataKeyCacheTotals(uint64_t hits, uint64_t misses) {
  std::lock_guard<std::mutex> lock(mu_);
  if (hits > cache_hits_seen_) cache_hits_.Increment(double(hits - cache_hits_seen_));
  if (misses > cache_misses_seen_) cache_misses_.Increment(double(misses - cache_misses_seen_));
  cache_hits_seen_ = std::max(cache_hits_seen_, hits);
  cache_misses_seen_ = std::max(cache_misses_seen_, misses);
}

void Metrics::SetDatabaseUp(bool up) {
  database_up_.Set(up ? 1 : 0);
}

void Metrics::SetDatabaseSnapshot(const DatabaseSnapshot& snapshot) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [family, gauge] : snapshot_series_) family->Remove(gauge);
  snapshot_series_.clear();
  auto add = [this](prometheus::Family<prometheus::Gauge>& family, const prometheus::Labels& labels,
                    double value) {
    prometheus::Gauge& g = family.Add(labels);
    g.Set(value);
    snapshot_series_.emplace_back(&family, &g);
  };
  for (const KeyAgeSample& k : snapshot.keys) {
    prometheus::Labels labels = {
        {"key_id", std::to_string(k.key_id)}, {"scope", k.scope}, {"status", k.status}};
    add(key_age_, labels, k.age_seconds);
    if (k.max_age_seconds) add(key_max_age_, labels, *k.max_age_seconds);
  }
  for (const JobProgressSample& j : snapshot.jobs) {
    prometheus::Labels labels = {{"job_id", std::to_string(j.job_id)}, {"state", j.state}};
    add(job_rows_total_, labels, j.rows_total);
    add(job_rows_processed_, labels, j.rows_processed);
    add(job_lagging_readers_, labels, j.lagging_readers);
    add(job_waiting_for_readers_, labels, j.waiting_for_readers_seconds);
  }
  for (const StageProgressSample& s : snapshot.stages) {
    prometheus::Labels labels = {{"job_id", std::to_string(s.job_id)},
                                 {"rotation_id", s.rotation_id},
                                 {"stage", std::to_string(s.stage_no)},
                                 {"kind", s.kind}};
    add(stage_rows_total_, labels, s.rows_total);
    add(stage_rows_processed_, labels, s.rows_processed);
  }
  for (const RotationProgressSample& r : snapshot.rotations) {
    prometheus::Labels labels = {{"rotation_id", r.rotation_id}, {"scope", r.scope}};
    add(rotation_rows_total_, labels, r.rows_total);
    add(rotation_rows_processed_, labels, r.rows_processed);
  }
  keys_overdue_.Set(double(snapshot.keys_overdue));
  last_rotation_.Set(snapshot.last_rotation_completed.value_or(0));
  for (const char* state : kJobStates) {
    auto it = snapshot.jobs_by_state.find(state);
    jobs_.Add({{"state", state}}).Set(it == snapshot.jobs_by_state.end() ? 0 : double(it->second));
  }
}

std::string Metrics::Serialize() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

}  // namespace rekey::ops
