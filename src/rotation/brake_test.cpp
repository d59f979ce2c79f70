// The brake logic (brake.h) with fake signals: which brake engages, when it releases
// (hysteresis, minimum hold), what a Prometheus outage does, counted and timed engagements, and
// the byte-size grammar; and the Prometheus client's reading of the HTTP API's answers through a
// fake transport. The readers against the real servers: tests/brakes_pg_test.cpp.
#include "rotation/brake.h"

#include <gtest/gtest.h>

#include <deque>

#include "common/error.h"
#include "rotation/brake_prometheus.h"

namespace rekey::rotation {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::vector<std::string> Reasons(const std::vector<BrakeChange>& changes, bool active) {
  std::vector<std::string> out;
  for (const auto& c : changes) {
    if (c.active == active) out.push_back(c.reason);
  }
  return out;
}

BrakeOptions Quick() {
  BrakeOptions o;
  o.min_hold = 0ms;
  return o;
}

TEST(ParseByteSizeTest, UnitsArePowersOf1024AndABareNumberIsRefused) {
  EXPECT_EQ(ParseByteSize("20MB", "--max-wal-rate"), 20 * 1024 * 1024);
  EXPECT_EQ(ParseByteSize("512kB", "f"), 512 * 1024);
  EXPECT_EQ(ParseByteSize("1GiB", "f"), int64_t(1) << 30);
  EXPECT_EQ(ParseByteSize("1.5GB", "f"), int64_t(3) << 29);
  EXPECT_EQ(ParseByteSize("100B", "f"), 100);
  for (const char* bad :
       {"20", "-1MB", "MB", "20 MB", "20mb", "1.MB", ".5MB", "0MB", "1e3MB", ""}) {
    try {
      ParseByteSize(bad, "--max-slot-lag");
      ADD_FAILURE() << bad << " accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("--max-slot-lag"), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line";
    }
  }
}

TEST(BrakeOptionsTest, RefusesPartialPrometheusAndNonsense) {
  BrakeOptions o;
  o.prometheus_url = "http://p:9090";
  EXPECT_THROW(o.Validate(), ConfigError);
  o.prometheus_query = "up";
  o.prometheus_above = 1;
  EXPECT_NO_THROW(o.Validate());
  o.prometheus_url = "p:9090";
  EXPECT_THROW(o.Validate(), ConfigError);
  BrakeOptions n;
  n.max_archive_backlog = -1;
  EXPECT_THROW(n.Validate(), ConfigError);
  BrakeOptions w;
  w.max_wal_rate = 0;
  EXPECT_THROW(w.Validate(), ConfigError);
}

TEST(BrakeGovernorTest, WalRateIsTheSlopeOverTheWindowWithHysteresis) {
  BrakeOptions o = Quick();
  o.max_wal_rate = 1000;  // bytes/s
  o.wal_window = 4s;
  BrakeGovernor g(o);
  const auto t0 = Clock::now();
  auto feed = [&](int second, int64_t lsn) {
    DatabaseSignals s;
    s.at = t0 + std::chrono::seconds(second);
    s.wal_lsn = lsn;
    return g.Evaluate(s.at, s, std::nullopt);
  };
  EXPECT_TRUE(feed(0, 0).empty());
  EXPECT_TRUE(feed(1, 900).empty());                                              // 900 B/s: under
  EXPECT_EQ(Reasons(feed(2, 3000), true), std::vector<std::string>{"wal_rate"});  // 1500 B/s
  EXPECT_TRUE(g.engaged().count("wal_rate"));
  // No more WAL: 3000 B over 3 s is the limit itself, under it but above 80 %: held.
  EXPECT_TRUE(feed(3, 3000).empty());
  EXPECT_DOUBLE_EQ(*g.wal_rate(), 1000);
  // 3000 B over 4 s = 750 B/s, at most 80 % of the limit: released.
  EXPECT_EQ(Reasons(feed(4, 3000), false), std::vector<std::string>{"wal_rate"});
  // Samples older than the window go: after 4 flat seconds more the rate is 0.
  for (int second = 5; second <= 9; ++second) feed(second, 3000);
  EXPECT_DOUBLE_EQ(*g.wal_rate(), 0);
}

TEST(BrakeGovernorTest, SlotLagReleasesOnlyUnderEightyPercent) {
  BrakeOptions o = Quick();
  o.max_slot_lag = 1000;
  BrakeGovernor g(o);
  auto feed = [&](int64_t retained) {
    DatabaseSignals s;
    s.at = Clock::now();
    s.slot_retained_bytes = retained;
    s.slot_name = "cdc";
    return g.Evaluate(s.at, s, std::nullopt);
  };
  EXPECT_TRUE(feed(1000).empty()) << "at the limit is not over it";
  auto engaged = feed(1001);
  ASSERT_EQ(Reasons(engaged, true), std::vector<std::string>{"slot_lag"});
  EXPECT_EQ(engaged[0].detail["slot"], "cdc");
  EXPECT_TRUE(feed(900).empty()) << "under the limit but above 80 %: still braking";
  EXPECT_TRUE(g.engaged().count("slot_lag"));
  EXPECT_EQ(Reasons(feed(800), false), std::vector<std::string>{"slot_lag"});
  EXPECT_TRUE(g.engaged().empty());
}

TEST(BrakeGovernorTest, MinimumHoldKeepsABrakeEngaged) {
  BrakeOptions o;
  o.max_archive_backlog = 10;
  o.min_hold = 2s;
  BrakeGovernor g(o);
  const auto t0 = Clock::now();
  auto feed = [&](Clock::time_point at, int64_t ready) {
    DatabaseSignals s;
    s.at = at;
    s.archive_ready = ready;
    return g.Evaluate(at, s, std::nullopt);
  };
  EXPECT_EQ(Reasons(feed(t0, 11), true), std::vector<std::string>{"archive_backlog"});
  EXPECT_TRUE(feed(t0 + 1s, 0).empty()) << "released too soon";
  EXPECT_EQ(Reasons(feed(t0 + 2s, 0), false), std::vector<std::string>{"archive_backlog"});
}

TEST(BrakeGovernorTest, AutovacuumBrakesWhileItRunsAndNamesTheTable) {
  BrakeOptions o = Quick();
  o.pause_during_autovacuum = true;
  BrakeGovernor g(o);
  DatabaseSignals s;
  s.at = Clock::now();
  s.autovacuum = true;
  s.autovacuum_table = "public.cards";
  auto on = g.Evaluate(s.at, s, std::nullopt);
  ASSERT_EQ(Reasons(on, true), std::vector<std::string>{"autovacuum"});
  EXPECT_EQ(on[0].detail["autovacuum_table"], "public.cards");
  s.autovacuum = false;
  EXPECT_EQ(Reasons(g.Evaluate(s.at, s, std::nullopt), false),
            std::vector<std::string>{"autovacuum"});
}

TEST(BrakeGovernorTest, SignalsOfBrakesNotSetAreIgnored) {
  BrakeGovernor g(Quick());
  DatabaseSignals s;
  s.at = Clock::now();
  s.slot_retained_bytes = int64_t(1) << 40;
  s.autovacuum = true;
  s.archive_ready = 1000;
  EXPECT_TRUE(g.Evaluate(s.at, s, std::optional<std::optional<double>>(99.0)).empty());
}

TEST(BrakeGovernorTest, PrometheusAboveEngagesAndAnOutageBrakesFailSafe) {
  BrakeOptions o = Quick();
  o.prometheus_url = "http://p";
  o.prometheus_query = "job:p99:seconds";
  o.prometheus_above = 0.5;
  BrakeGovernor g(o);
  const auto now = Clock::now();
  using V = std::optional<std::optional<double>>;
  EXPECT_TRUE(g.Evaluate(now, std::nullopt, V(0.4)).empty());
  EXPECT_EQ(Reasons(g.Evaluate(now, std::nullopt, V(0.6)), true),
            std::vector<std::string>{"prometheus"});
  EXPECT_TRUE(g.Evaluate(now, std::nullopt, V(0.45)).empty()) << "hysteresis: 0.4 releases";
  EXPECT_EQ(Reasons(g.Evaluate(now, std::nullopt, V(0.4)), false),
            std::vector<std::string>{"prometheus"});
  // Unreachable: brake, and say why.
  auto outage = g.Evaluate(now, std::nullopt, std::nullopt, "connection refused");
  ASSERT_EQ(Reasons(outage, true), std::vector<std::string>{"prometheus"});
  EXPECT_EQ(outage[0].detail["error"], "connection refused");
  EXPECT_TRUE(g.Evaluate(now, std::nullopt, std::nullopt, "still down").empty());
  // An empty vector (nothing matches) is no reason to brake.
  EXPECT_EQ(Reasons(g.Evaluate(now, std::nullopt, V(std::in_place, std::nullopt)), false),
            std::vector<std::string>{"prometheus"});
}

TEST(BrakeGovernorTest, HoldsExpireAndSetIsExternal) {
  BrakeGovernor g(Quick());
  const auto t0 = Clock::now();
  EXPECT_EQ(Reasons(g.Hold("lock_wait", t0, t0 + 1s, {}), true),
            std::vector<std::string>{"lock_wait"});
  EXPECT_TRUE(g.Hold("lock_wait", t0, t0 + 2s, {}).empty()) << "extended, not engaged twice";
  EXPECT_TRUE(g.ExpireHolds(t0 + 1500ms).empty());
  EXPECT_EQ(Reasons(g.ExpireHolds(t0 + 2s), false), std::vector<std::string>{"lock_wait"});
  EXPECT_EQ(Reasons(g.Set("replication_lag", true, t0, {}), true),
            std::vector<std::string>{"replication_lag"});
  EXPECT_EQ(Reasons(g.Set("replication_lag", false, t0, {}), false),
            std::vector<std::string>{"replication_lag"});
}

class FakeReader : public BrakeSignalReader {
 public:
  explicit FakeReader(std::deque<int64_t>* slot) : slot_(slot) {}
  DatabaseSignals Read() override {
    if (slot_->empty()) throw std::runtime_error("connection lost");
    DatabaseSignals s;
    s.at = Clock::now();
    s.slot_retained_bytes = slot_->front();
    slot_->pop_front();
    return s;
  }

 private:
  std::deque<int64_t>* slot_;
};

TEST(BrakesTest, ListenersAndTheStateSinkHearEveryChangeAndCountsAreKept) {
  std::deque<int64_t> slot = {5000, 100};
  BrakeOptions o = Quick();
  o.max_slot_lag = 1000;
  Brakes brakes(o, std::make_unique<FakeReader>(&slot), nullptr);
  std::vector<std::pair<std::string, bool>> heard;
  std::vector<size_t> published;
  brakes.AddListener([&](const BrakeChange& c) { heard.emplace_back(c.reason, c.active); });
  brakes.SetStateSink([&](const auto& engaged) { published.push_back(engaged.size()); });
  brakes.PollOnce();
  EXPECT_TRUE(brakes.engaged());
  brakes.Engage("replication_lag", {});
  brakes.Engage("replication_lag", {});
  brakes.Release("replication_lag");
  EXPECT_TRUE(brakes.reasons().count("replication_lag")) << "one loop still paused";
  brakes.Release("replication_lag");
  brakes.PollOnce();
  EXPECT_FALSE(brakes.engaged());
  brakes.PollOnce();  // the reader fails: state kept, nothing thrown
  const std::vector<std::pair<std::string, bool>> expected = {{"slot_lag", true},
                                                              {"replication_lag", true},
                                                              {"replication_lag", false},
                                                              {"slot_lag", false}};
  EXPECT_EQ(heard, expected);
  EXPECT_EQ(published, (std::vector<size_t>{1, 2, 1, 0}));
  std::atomic<bool> stop{false};
  EXPECT_EQ(brakes.Wait(stop).count(), 0);
}

TEST(BrakesTest, WaitReturnsWhenAHoldExpiresOrOnStop) {
  Brakes brakes(Quick(), nullptr, nullptr);
  brakes.Hold("lock_wait", 150ms, {});
  std::atomic<bool> stop{false};
  const auto waited = brakes.Wait(stop);
  EXPECT_GE(waited.count(), 100);
  EXPECT_FALSE(brakes.engaged());
  brakes.Hold("lock_wait", 60s, {});
  stop = true;
  EXPECT_LT(brakes.Wait(stop).count(), 1000);
}

class FakeTransport : public kms::HttpTransport {
 public:
  FakeTransport(long status, std::string body, std::string* url)
      : status_(status), body_(std::move(body)), url_(url) {}
  kms::HttpResponse Post(const kms::HttpRequest& request) override {
    *url_ = request.url;
    if (status_ == 0) throw TransientError("cannot connect to http://p:9090");
    kms::HttpResponse r;
    r.status = status_;
    r.body = body_;
    return r;
  }

 private:
  long status_;
  std::string body_;
  std::string* url_;
};

std::optional<double> Ask(long status, const std::string& body, std::string* url = nullptr) {
  std::string seen;
  HttpPrometheusClient client("http://p:9090/",
                              std::make_unique<FakeTransport>(status, body, &seen));
  auto v = client.Query("histogram_quantile(0.99, x) > 0");
  if (url) *url = seen;
  return v;
}

TEST(HttpPrometheusClientTest, ReadsVectorsAndScalars) {
  std::string url;
  EXPECT_EQ(Ask(200,
                R"({"status":"success","data":{"resultType":"vector","result":[
                 {"metric":{"a":"1"},"value":[1,"0.2"]},{"metric":{"a":"2"},"value":[1,"0.7"]},
                 {"metric":{"a":"3"},"value":[1,"NaN"]}]}})",
                &url),
            0.7);
  EXPECT_EQ(url, "http://p:9090/api/v1/query?query=histogram_quantile%280.99%2C%20x%29%20%3E%200");
  EXPECT_EQ(Ask(200, R"({"status":"success","data":{"resultType":"scalar","result":[1,"3"]}})"), 3);
  EXPECT_EQ(Ask(200, R"({"status":"success","data":{"resultType":"vector","result":[]}})"),
            std::nullopt);
}

TEST(HttpPrometheusClientTest, ClassifiesFailures) {
  EXPECT_THROW(Ask(400, R"({"status":"error","errorType":"bad_data","error":"parse error"})"),
               ConfigError);
  EXPECT_THROW(Ask(200, R"({"status":"success","data":{"resultType":"matrix","result":[]}})"),
               ConfigError);
  EXPECT_THROW(Ask(503, "overloaded"), TransientError);
  EXPECT_THROW(Ask(0, ""), TransientError);
  std::string url;
  HttpPrometheusClient down("http://p:9090", std::make_unique<FakeTransport>(0, "", &url));
  try {
    ProbePrometheus(down, "http://p:9090", "up");
    ADD_FAILURE() << "an unreachable Prometheus passed the start check";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("http://p:9090"), std::string::npos);
  }
}

}  // namespace
}  // namespace rekey::rotation
