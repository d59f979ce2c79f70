// The Grafana dashboard (jobs/grafana/rekey.json) proven against a real Prometheus: Debian's
// prometheus server scrapes a `rekey work --listen` during a staged rotation and a `rekey
// exporter`; then every panel's query, with the dashboard's variables substituted, must parse
// (promtool check rules) and return data through /api/v1/query at some moment of the rotation,
// and every metric it names must be one rekey exported. A panel whose metric is renamed, or whose
// query does not parse or matches nothing, fails the test.
//
// REKEY_DASHBOARD_JSON points the test at another copy of the dashboard (to show that a broken
// copy fails). Skipped (not passed) only when /usr/bin/prometheus is absent.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "aws_kms_support.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "harness/prometheus_server.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

const char* const kPrometheus = kPrometheusBinary;
const char* const kPromtool = kPromtoolBinary;

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

struct PanelQuery {
  std::string panel;
  std::string ref;
  std::string expr;  // variables substituted
};

// Every target of every panel (rows' nested panels included); a panel without a query is
// reported as an empty expression so that the test fails on it.
void CollectQueries(const json& panels, const std::map<std::string, std::string>& variables,
                    std::vector<PanelQuery>* out) {
  for (const auto& p : panels) {
    if (p.value("type", "") == "row") {
      if (p.contains("panels")) CollectQueries(p["panels"], variables, out);
      continue;
    }
    const std::string title = p.value("title", "<untitled>");
    if (!p.contains("targets") || p["targets"].empty()) {
      out->push_back({title, "-", ""});
      continue;
    }
    for (const auto& t : p["targets"]) {
      std::string expr = t.value("expr", "");
      for (const auto& [name, value] : variables) {
        expr = Replace(expr, "${" + name + "}", value);
        expr = Replace(expr, "$" + name, value);
      }
      out->push_back({title, t.value("refId", "?"), expr});
    }
  }
}

// The data keys are wrapped by the loopback AWS KMS server (tests/kms/aws_kms_server.py): the
// local KMS has no circuit breaker, so only a remote provider exports rekey_kms_breaker_state.
class DashboardPrometheusTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    kms_ = std::make_unique<AwsKmsTestServer>(std::vector<std::string>{"--key", "alias/rekey"});
    env_ = With(kms_->Env(), WorkerEnv());
  }
  void TearDown() override {
    kms_.reset();
    PgTest::TearDown();
  }
  ProcessResult Rekey(const std::vector<std::string>& args, const std::string& stdin_data = "") {
    std::vector<std::string> full{REKEY_BINARY, "--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunProcess(full, env_, stdin_data, 120);
  }
  std::unique_ptr<AwsKmsTestServer> kms_;
  EnvOverrides env_;
};

TEST_F(DashboardPrometheusTest, EveryPanelQueryReturnsDataFromARealPrometheusDuringARotation) {
  if (access(kPrometheus, X_OK) != 0) {
    GTEST_SKIP() << kPrometheus << " is absent (Debian package prometheus; make test installs it)";
  }
  ASSERT_EQ(access(kPromtool, X_OK), 0) << "promtool ships with the prometheus package";
  const char* override_path = std::getenv("REKEY_DASHBOARD_JSON");
  const std::string path = override_path != nullptr
                               ? std::string(override_path)
                               : std::string(REKEY_SOURCE_DIR) + "/jobs/grafana/rekey.json";
  const json dashboard = json::parse(ReadFile(path), nullptr, false);
  ASSERT_FALSE(dashboard.is_discarded()) << path << " is not JSON";
  ASSERT_TRUE(dashboard.contains("panels") && dashboard["panels"].is_array()) << path;
  std::set<std::string> variable_names;
  for (const auto& v : dashboard["templating"]["list"]) variable_names.insert(v["name"]);
  EXPECT_TRUE(variable_names.count("job") && variable_names.count("scope") &&
              variable_names.count("rotation"))
      << "the dashboard selects a rotation job, a key scope and a rotation";

  // A staged rotation slow enough for many scrapes: 20,000 rows at 2,500 rows/s, three stages
  // advancing on their own, two values quarantined, and a key-age policy so the policy gauges
  // exist. The job's threshold is 1%: a batch that quarantines values judges the stage's rate
  // over the batches done so far, and with two claim loops the poisoned batch may find just
  // 1,000 values done (0.2%, which would pause the job at the default 0.1%) or only its own.
  for (uint32_t id : {1u, 2u}) {
    Secret key = TestDataKey(id);
    ProcessResult r =
        Rekey({"keys", "import", "--kms", "aws-kms", "--key-id", std::to_string(id), "--stdin"},
              std::string(reinterpret_cast<const char*>(key.data()), key.size()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  ASSERT_EQ(Rekey({"keys", "policy", "set", "--max-age", "90d"}).exit_code, 0);
  SeedTinkTable(conn(), "public.cards", 20000, 1);
  Exec(
      "UPDATE public.cards SET token = set_byte(token, 10, get_byte(token, 10) # 255) WHERE id IN "
      "(SELECT id FROM public.cards WHERE rekey.stage_bucket(id::text) >= 5000 ORDER BY id LIMIT "
      "2)");
  // The job is the one job of a rotation (`rekey rotate`), so that the rotation's gauges exist.
  Exec(
      "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, "
      "key_id_column) VALUES ('public', 'cards', 'id', 'token', 'tink', 'key_id')");
  std::string rotation;
  {
    pqxx::work txn(conn());
    rotation = txn.exec1(
                      "SELECT rekey.create_rotation('default', 2, '{1,50,100}', '0 seconds', 500, "
                      "p_error_threshold => 0.01)")[0]
                   .as<std::string>();
    txn.commit();
  }
  const std::string j = Scalar("SELECT job_id FROM rekey.jobs WHERE rotation_id = " + rotation);

  const int worker_port = FreePort(), exporter_port = FreePort();
  ChildProcess exporter({REKEY_BINARY, "--db", conninfo(), "exporter", "--listen",
                         "127.0.0.1:" + std::to_string(exporter_port)},
                        env_);
  ASSERT_TRUE(WaitForLog(exporter, "serving /metrics", 60)) << ReadFile(exporter.stderr_path());
  PrometheusServer prometheus({{"rekey-worker", {"127.0.0.1:" + std::to_string(worker_port)}},
                               {"rekey-exporter", {"127.0.0.1:" + std::to_string(exporter_port)}}});
  ASSERT_TRUE(prometheus.WaitReady(60)) << prometheus.Log();

  // A brake engages during the rotation, so the "Brakes active" panel has data: a replication
  // slot that retains WAL (as a stalled CDC consumer's would) past --max-slot-lag, dropped once
  // the worker brakes on it and Prometheus has scraped that.
  Exec("SELECT pg_create_physical_replication_slot('dashboard_brake', true)");
  const double start = UnixNow();
  ChildProcess worker({REKEY_BINARY, "--db", conninfo(), "work", "--job", j, "--concurrency", "2",
                       "--listen", "127.0.0.1:" + std::to_string(worker_port), "--linger", "4",
                       "--max-rows-per-second", "2500", "--max-slot-lag", "512kB"},
                      env_);
  const bool braked = WaitForLog(worker, "braking: slot_lag", 300).has_value();
  // The worker brakes from its first moment, before Prometheus's first scrape of it: the slot
  // stays until Prometheus has seen the brake.
  bool scraped = false;
  for (int i = 0; braked && i < 600 && !scraped; ++i) {
    json r = prometheus.Api(
        "/api/v1/query",
        "query=" + UrlEncode("rekey_brake_active{job=\"rekey-worker\",reason=\"slot_lag\"} == 1"));
    scraped = r.value("status", "") == "success" && !r["data"]["result"].empty();
    if (!scraped) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Exec("SELECT pg_drop_replication_slot('dashboard_brake')");
  ProcessResult work = worker.Wait(600);
  ASSERT_TRUE(braked) << work.err;
  EXPECT_TRUE(scraped) << "Prometheus never scraped the engaged brake";
  ASSERT_EQ(work.exit_code, 0) << work.err;
  EXPECT_THAT(work.err, HasSubstr("brake released: slot_lag"));
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  std::this_thread::sleep_for(std::chrono::seconds(2));  // the exporter's scrapes after the end
  const double end = UnixNow();

  // The variables' own queries find the rotation's job and the keys' scope.
  auto label_values = [&](const std::string& label, const std::string& metric) {
    json r = prometheus.Api("/api/v1/label/" + label + "/values",
                            "match[]=" + UrlEncode(metric) + "&start=" + std::to_string(start) +
                                "&end=" + std::to_string(end));
    std::set<std::string> out;
    for (const auto& v : r["data"]) out.insert(v.get<std::string>());
    return out;
  };
  EXPECT_TRUE(label_values("job_id", "rekey_job_rows").count(j)) << "variable job";
  EXPECT_TRUE(label_values("scope", "rekey_key_age_seconds").count("default")) << "variable scope";
  EXPECT_TRUE(label_values("rotation_id", "rekey_rotation_rows").count(rotation))
      << "variable rotation";
  const std::set<std::string> exported = label_values("__name__", "{__name__=~\"rekey_.+\"}");
  ASSERT_FALSE(exported.empty()) << "Prometheus scraped no rekey metric:\n" << prometheus.Log();

  std::vector<PanelQuery> queries;
  CollectQueries(dashboard["panels"],
                 {{"job", j},
                  {"scope", "default"},
                  {"rotation", rotation},
                  {"__rate_interval", "10s"},
                  {"__interval", "1s"},
                  {"__range", "5m"}},
                 &queries);
  ASSERT_GE(queries.size(), 15u) << "every panel the issue names that rekey has metrics for";

  // promtool parses every query, as recording rules.
  {
    std::ofstream rules(prometheus.dir() + "/dashboard_rules.yml");
    rules << "groups:\n  - name: rekey_dashboard\n    rules:\n";
    for (size_t i = 0; i < queries.size(); ++i) {
      rules << "      - record: rekey_dashboard:query_" << i << "\n        expr: '"
            << Replace(queries[i].expr, "'", "''") << "'\n";
    }
  }
  ProcessResult check =
      RunProcess({kPromtool, "check", "rules", prometheus.dir() + "/dashboard_rules.yml"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;

  const std::regex metric_name("rekey_[a-z0-9_]+");
  for (const PanelQuery& q : queries) {
    SCOPED_TRACE("panel \"" + q.panel + "\" query " + q.ref + ": " + q.expr);
    ASSERT_FALSE(q.expr.empty()) << "a panel without a query";
    for (auto it = std::sregex_iterator(q.expr.begin(), q.expr.end(), metric_name);
         it != std::sregex_iterator(); ++it) {
      EXPECT_TRUE(exported.count(it->str())) << it->str() << " is not a metric rekey exports";
    }
    // The query answers with data at some moment of the rotation (a gauge of an unfinished job
    // exists only while it runs; a counter's rate only while it moves).
    bool data = false;
    std::string last_error;
    for (double t = start; t <= end + 0.5 && !data; t += 0.5) {
      json r = prometheus.Api("/api/v1/query",
                              "query=" + UrlEncode(q.expr) + "&time=" + std::to_string(t));
      if (r.value("status", "") != "success") {
        last_error = r.dump();
        break;
      }
      data = !r["data"]["result"].empty();
    }
    EXPECT_TRUE(last_error.empty()) << last_error;
    EXPECT_TRUE(data) << "no data at any moment between " << start << " and " << end;
  }

  // The decrypt error rate is drawn against the 0.1% threshold at which a job pauses by default.
  bool threshold = false;
  for (const auto& p : dashboard["panels"]) {
    if (p.value("title", "").find("Decrypt error rate") == std::string::npos) continue;
    for (const auto& step : p["fieldConfig"]["defaults"]["thresholds"]["steps"]) {
      threshold = threshold || (step["value"].is_number() && step["value"].get<double>() == 0.001);
    }
  }
  EXPECT_TRUE(threshold);

  exporter.Signal(SIGTERM);
  EXPECT_EQ(exporter.Wait(30).exit_code, 0);
}

}  // namespace
}  // namespace rekey::testing
