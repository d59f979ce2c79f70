// Metrics, the KMS decorator and the readiness verdict, without a database: what each event
// does to the exposed series, from tables.
#include "ops/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>

#include "common/error.h"
#include "kms/local_kms.h"
#include "kms/resilient_kms.h"
#include "ops/database_collector.h"
#include "ops/instrumented_kms.h"
#include "ops/readiness.h"

namespace rekey::ops {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::optional<double> Sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

TEST(Metrics, BatchEventsMoveTheCountersAndTheHistogram) {
  Metrics m;
  m.OnBatch({rotation::BatchOutcome::kCompleted, 100, 3, 2, 0.2});
  m.OnBatch({rotation::BatchOutcome::kCompleted, 50, 0, 0, 3.0});
  m.OnBatch({rotation::BatchOutcome::kReleased, 0, 0, 0, 0});
  m.OnBatch({rotation::BatchOutcome::kLost, 0, 0, 0, 0});
  m.OnGate({true, 1000, 0});
  m.OnGate({false, 500, 4});
  const std::string text = m.Serialize();
  const std::vector<std::pair<std::string, double>> expected = {
      {"rekey_rows_reencrypted_total", 150},
      {"rekey_rows_skipped_total", 3},
      {"rekey_rows_quarantined_total", 2},
      {"rekey_batches_total{outcome=\"completed\"}", 2},
      {"rekey_batches_total{outcome=\"released\"}", 1},
      {"rekey_batches_total{outcome=\"lost\"}", 1},
      {"rekey_batches_total{outcome=\"job_not_active\"}", 0},
      {"rekey_batch_duration_seconds_count", 2},
      {"rekey_batch_duration_seconds_bucket{le=\"0.25\"}", 1},
      {"rekey_batch_duration_seconds_bucket{le=\"5\"}", 2},
      {"rekey_decrypt_errors_total{phase=\"rotation\"}", 2},
      {"rekey_decrypt_errors_total{phase=\"gate\"}", 4},
      {"rekey_gates_total{result=\"passed\"}", 1},
      {"rekey_gates_total{result=\"failed\"}", 1},
  };
  for (const auto& [series, value] : expected) EXPECT_EQ(Sample(text, series), value) << series;
  EXPECT_THAT(text, HasSubstr("# TYPE rekey_batch_duration_seconds histogram"));
  EXPECT_THAT(text, HasSubstr("# TYPE rekey_rows_reencrypted_total counter"));
}

TEST(Metrics, CacheTotalsAdvanceCountersByTheirDifference) {
  Metrics m;
  m.SetDataKeyCacheTotals(10, 2);
  m.SetDataKeyCacheTotals(25, 2);
  const std::string text = m.Serialize();
  EXPECT_EQ(Sample(text, "rekey_data_key_cache_hits_total"), 25);
  EXPECT_EQ(Sample(text, "rekey_data_key_cache_misses_total"), 2);
}

TEST(Metrics, ADatabaseSnapshotReplacesTheSeriesOfTheLastOne) {
  Metrics m;
  DatabaseSnapshot first;
  first.keys = {{1, "default", "primary", 100, 90.0 * 86400},
                {2, "t1", "enabled", 5, std::nullopt}};
  first.keys_overdue = 1;
  first.jobs = {{7, "active", 1000, 10, 2, 90}};
  first.stages = {{7, "3", 1, "rollout", 10, 10}, {7, "3", 2, "rollout", 490, 0}};
  first.rotations = {{"3", "default", 1500, 10}};
  first.jobs_by_state = {{"active", 1}};
  m.SetDatabaseSnapshot(first);
  std::string text = m.Serialize();
  EXPECT_EQ(
      Sample(text, "rekey_key_age_seconds{key_id=\"1\",scope=\"default\",status=\"primary\"}"),
      100);
  EXPECT_EQ(
      Sample(text, "rekey_key_max_age_seconds{key_id=\"1\",scope=\"default\",status=\"primary\"}"),
      90.0 * 86400);
  EXPECT_FALSE(
      Sample(text, "rekey_key_max_age_seconds{key_id=\"2\",scope=\"t1\",status=\"enabled\"}"))
      << "no policy, no max age series";
  EXPECT_EQ(Sample(text, "rekey_keys_overdue"), 1);
  EXPECT_EQ(Sample(text, "rekey_job_rows{job_id=\"7\",state=\"active\"}"), 1000);
  EXPECT_EQ(Sample(text, "rekey_job_lagging_readers{job_id=\"7\",state=\"active\"}"), 2);
  EXPECT_EQ(Sample(text, "rekey_job_waiting_for_readers_seconds{job_id=\"7\",state=\"active\"}"),
            90);
  EXPECT_EQ(Sample(text, "rekey_jobs{state=\"active\"}"), 1);
  EXPECT_EQ(Sample(text, "rekey_jobs{state=\"paused\"}"), 0);
  EXPECT_EQ(
      Sample(text,
             "rekey_job_stage_rows{job_id=\"7\",kind=\"rollout\",rotation_id=\"3\",stage=\"2\"}"),
      490);
  EXPECT_EQ(Sample(text,
                   "rekey_job_stage_rows_processed{job_id=\"7\",kind=\"rollout\","
                   "rotation_id=\"3\",stage=\"1\"}"),
            10);
  EXPECT_EQ(Sample(text, "rekey_rotation_rows{rotation_id=\"3\",scope=\"default\"}"), 1500);
  EXPECT_EQ(Sample(text, "rekey_rotation_rows_processed{rotation_id=\"3\",scope=\"default\"}"), 10);

  DatabaseSnapshot second;
  second.keys = {{2, "t1", "primary", 6, std::nullopt}};
  second.last_rotation_completed = 1700000000;
  second.jobs_by_state = {{"completed", 1}};
  m.SetDatabaseSnapshot(second);
  text = m.Serialize();
  EXPECT_THAT(text, Not(HasSubstr("key_id=\"1\""))) << "retired keys drop out";
  EXPECT_THAT(text, Not(HasSubstr("job_id=\"7\""))) << "finished jobs drop out";
  EXPECT_THAT(text, Not(HasSubstr("rotation_id=\"3\""))) << "finished rotations drop out";
  EXPECT_EQ(Sample(text, "rekey_key_age_seconds{key_id=\"2\",scope=\"t1\",status=\"primary\"}"), 6);
  EXPECT_EQ(Sample(text, "rekey_keys_overdue"), 0);
  EXPECT_EQ(Sample(text, "rekey_last_rotation_completed_timestamp_seconds"), 1700000000);
  EXPECT_EQ(Sample(text, "rekey_jobs{state=\"active\"}"), 0);
}

TEST(WithConnectTimeout, AddsTheOptionInEitherSyntax) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"host=db dbname=app", "host=db dbname=app connect_timeout=3"},
      {"", "connect_timeout=3"},
      {"postgresql://u@db/app", "postgresql://u@db/app?connect_timeout=3"},
      {"postgres://u@db/app?sslmode=require",
       "postgres://u@db/app?sslmode=require&connect_timeout=3"},
      {"host=db connect_timeout=10", "host=db connect_timeout=10"},
  };
  for (const auto& [in, out] : cases) EXPECT_EQ(WithConnectTimeout(in, 3), out) << in;
}

// A KMS that fails the way it is told to.
class ScriptedKms : public kms::KmsClient {
 public:
  std::string provider() const override { return "aws-kms"; }
  std::string default_key_ref() const override { return "alias/test"; }
  kms::GeneratedDataKey GenerateDataKey(uint32_t) override {
    Fail();
    return {};
  }
  kms::GeneratedDataKey WrapDataKey(uint32_t, const Secret&) override {
    Fail();
    return {};
  }
  Secret UnwrapDataKey(uint32_t, const std::string&, const Bytes&) override {
    Fail();
    uint8_t k[32] = {};
    return Secret(k, 32);
  }
  std::string Describe() override { return "scripted"; }
  std::string next = "ok";

 private:
  void Fail() {
    if (next == "transient") throw TransientError("KMS unavailable (503)");
    if (next == "key") throw KeyError("access denied to alias/test");
    if (next == "other") throw std::runtime_error("boom");
  }
};

TEST(InstrumentedKms, CountsEachCallByOutcomeAndReportsTheBreaker) {
  Metrics metrics;
  KmsWatch watch;
  auto scripted = std::make_unique<ScriptedKms>();
  ScriptedKms* script = scripted.get();
  kms::ResilienceOptions o;
  o.max_attempts = 1;
  o.breaker_failures = 2;
  o.breaker_cool_down = std::chrono::hours(1);
  o.calls_per_second = 0;
  InstrumentedKms client(std::make_unique<kms::ResilientKms>(std::move(scripted), o), metrics,
                         watch);
  ASSERT_EQ(watch.Snapshot().size(), 1u);
  EXPECT_EQ(KmsCheck(watch.Snapshot())["status"], "UP");

  client.UnwrapDataKey(1, "alias/test", Bytes{});
  script->next = "key";
  EXPECT_THROW(client.UnwrapDataKey(1, "alias/test", Bytes{}), KeyError);
  script->next = "transient";
  EXPECT_THROW(client.GenerateDataKey(1), TransientError);
  EXPECT_THROW(client.GenerateDataKey(1), TransientError);
  EXPECT_EQ(client.breaker_state(), kms::BreakerState::kOpen);
  nlohmann::json check = KmsCheck(watch.Snapshot());
  EXPECT_EQ(check["status"], "DOWN");
  EXPECT_EQ(check["data"]["providers"][0]["breaker"], "open");
  EXPECT_EQ(check["data"]["providers"][0]["key_ref"], "alias/test");

  const std::string text = metrics.Serialize();
  const std::string p = "provider=\"aws-kms\"";
  EXPECT_EQ(
      Sample(text, "rekey_kms_requests_total{operation=\"unwrap_data_key\",outcome=\"success\"," +
                       p + "}"),
      1);
  EXPECT_EQ(
      Sample(text, "rekey_kms_requests_total{operation=\"unwrap_data_key\",outcome=\"key_error\"," +
                       p + "}"),
      1);
  EXPECT_EQ(
      Sample(
          text,
          "rekey_kms_requests_total{operation=\"generate_data_key\",outcome=\"transient_error\"," +
              p + "}"),
      2);
  EXPECT_EQ(
      Sample(text,
             "rekey_kms_request_duration_seconds_count{operation=\"generate_data_key\"," + p + "}"),
      2);
}

TEST(KmsCheck, IsDownIffSomeBreakerIsOpen) {
  using kms::BreakerState;
  struct Case {
    std::vector<KmsStatus> providers;
    std::string status;
  };
  const std::vector<Case> cases = {
      {{}, "UP"},
      {{{"local", "local:ab", std::nullopt}}, "UP"},
      {{{"aws-kms", "alias/a", BreakerState::kClosed}}, "UP"},
      {{{"aws-kms", "alias/a", BreakerState::kHalfOpen}}, "UP"},
      {{{"aws-kms", "alias/a", BreakerState::kOpen}}, "DOWN"},
      {{{"local", "local:ab", std::nullopt}, {"aws-kms", "alias/a", BreakerState::kOpen}}, "DOWN"},
  };
  for (size_t i = 0; i < cases.size(); i++) {
    EXPECT_EQ(KmsCheck(cases[i].providers)["status"], cases[i].status) << "case " << i;
  }
}

}  // namespace
}  // namespace rekey::ops
