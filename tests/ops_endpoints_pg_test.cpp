// The operations endpoints of `rekey work --listen` against the real PostgreSQL and real worker
// processes: /metrics scraped during a rotation (checked by promtool, counters equal to the
// database's counts), /readyz when the database goes away, and the logs of a full run (JSON lines,
// audit events, and no key material in any encoding).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <nlohmann/json.hpp>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class OpsEndpointsTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }

  double Number(const std::string& sql) { return std::stod(Scalar(sql)); }
  int64_t CreateJob(const std::string& args) {
    pqxx::work txn(conn());
    int64_t id = txn.exec1("SELECT rekey.create_job(" + args + ")")[0].as<int64_t>();
    txn.commit();
    return id;
  }

  std::unique_ptr<ChildProcess> StartWorker(const std::string& db, int64_t job, int linger) {
    return std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", db, "work", "--job", std::to_string(job),
                                 "--concurrency", "2", "--listen", "127.0.0.1:0", "--linger",
                                 std::to_string(linger)},
        WorkerEnv());
  }
};

// promtool's verdict on a scrape ("" iff it passes).
std::string PromtoolProblems(const std::string& scrape) {
  ProcessResult r = RunProcess({"promtool", "check", "metrics"}, {}, scrape, 60);
  if (r.exit_code == 0) return "";
  return "exit " + std::to_string(r.exit_code) + ": " + r.out + r.err;
}

TEST_F(OpsEndpointsTest, MetricsDuringARotationPassPromtoolAndMatchTheDatabase) {
  SeedTinkTable(conn(), "public.cards", 30000, 1);
  // Seven values that cannot decrypt: they are quarantined, and counted as such.
  Exec(
      "UPDATE public.cards SET token = set_byte(token, 10, get_byte(token, 10) # 255)"
      " WHERE id IN (11, 222, 3333, 4444, 15555, 26666, 29999)");
  // Key 1 is the primary, long overdue; the job (one stage) promotes key 2 when it opens.
  Exec(
      "UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1;"
      // Due 2 seconds from now, however long seeding the table took since the key was created
      // (under a sanitizer, well over a second).
      "UPDATE rekey.keys SET max_age = now() - created_at + interval '2 seconds'"
      " WHERE key_id = 1;"
      "INSERT INTO rekey.key_policies (scope, max_age) VALUES ('*', '90 days')");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.key_age WHERE overdue"), "0")
      << "a key is overdue only once its max age has passed";
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  EXPECT_EQ(Scalar("SELECT string_agg(key_id::text, ',') FROM rekey.key_age WHERE overdue"), "1");
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_stages => '{100}', p_batch_size => 250, "
      "p_error_threshold => 0.5");
  const std::string j = std::to_string(job);

  auto worker = StartWorker(conninfo(), job, 120);
  auto started = WaitForLog(*worker, "serving /metrics");
  ASSERT_TRUE(started) << ReadFile(worker->stderr_path());
  const int port = ListenPort(*started);
  ASSERT_GT(port, 0) << *started;

  // Scrape while the rotation runs; each scrape must be valid on its own.
  std::vector<std::string> scrapes;
  std::string log;
  while (true) {
    log = ReadFile(worker->stderr_path());
    HttpResult m = HttpGet(port, "/metrics");
    ASSERT_EQ(m.status, 200) << m.body;
    scrapes.push_back(m.body);
    if (log.find("lingering so the final metrics") != std::string::npos) break;
    ASSERT_TRUE(worker->Running()) << log;
  }
  ASSERT_GE(scrapes.size(), 2u);
  EXPECT_EQ(PromtoolProblems(scrapes.front()), "");
  const std::string& final_scrape = scrapes.back();
  EXPECT_EQ(PromtoolProblems(final_scrape), "");

  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  const std::string batches = "FROM rekey.batches WHERE job_id = " + j;
  EXPECT_EQ(Sample(final_scrape, "rekey_rows_reencrypted_total"),
            Number("SELECT sum(rows_done) " + batches));
  EXPECT_EQ(Sample(final_scrape, "rekey_rows_quarantined_total"), 7);
  EXPECT_EQ(Number("SELECT count(*) FROM rekey.row_failures WHERE job_id = " + j), 7);
  EXPECT_EQ(Sample(final_scrape, "rekey_decrypt_errors_total{phase=\"rotation\"}"), 7);
  EXPECT_EQ(Sample(final_scrape, "rekey_batches_total{outcome=\"completed\"}"),
            Number("SELECT count(*) " + batches + " AND state = 'done'"));
  EXPECT_EQ(Sample(final_scrape, "rekey_batch_duration_seconds_count"),
            Number("SELECT count(*) " + batches + " AND state = 'done'"));
  EXPECT_EQ(Sample(final_scrape, "rekey_gates_total{result=\"passed\"}"),
            Number("SELECT count(*) FROM rekey.gates WHERE passed AND job_id = " + j));
  EXPECT_EQ(Sample(final_scrape, "rekey_jobs{state=\"completed\"}"), 1);
  EXPECT_EQ(Sample(final_scrape, "rekey_database_up"), 1);
  // Key 2 was promoted: nothing is overdue any more, and the rotation's end is recorded.
  EXPECT_EQ(Sample(final_scrape, "rekey_keys_overdue"), 0);
  EXPECT_GT(Sample(final_scrape, "rekey_last_rotation_completed_timestamp_seconds").value_or(0), 0);
  EXPECT_TRUE(Sample(final_scrape,
                     "rekey_key_age_seconds{key_id=\"2\",scope=\"default\",status=\"primary\"}"));
  EXPECT_EQ(Sample(final_scrape,
                   "rekey_key_max_age_seconds{key_id=\"2\",scope=\"default\","
                   "status=\"primary\"}"),
            90.0 * 86400);
  // Keys were unwrapped once each through the local KMS and then served from the cache.
  EXPECT_EQ(Sample(final_scrape,
                   "rekey_kms_requests_total{operation=\"unwrap_data_key\","
                   "outcome=\"success\",provider=\"local\"}"),
            2);
  EXPECT_EQ(Sample(final_scrape, "rekey_data_key_cache_misses_total"), 2);
  EXPECT_GT(Sample(final_scrape, "rekey_data_key_cache_hits_total").value_or(0), 0);

  HttpResult ready = HttpGet(port, "/readyz");
  EXPECT_EQ(ready.status, 200) << ready.body;
  HttpResult health = HttpGet(port, "/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(HttpGet(port, "/nope").status, 404);

  worker->Signal(SIGTERM);
  ProcessResult r = worker->Wait(30);
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // Logs: one JSON object per line, with time, level and message; the audit events mirror
  // rekey.audit's batch rows.
  int audit_batches = 0;
  std::istringstream lines(r.err);
  std::string line;
  while (std::getline(lines, line)) {
    nlohmann::json event = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(event.is_discarded()) << line;
    EXPECT_TRUE(event.contains("time") && event.contains("level") && event.contains("message"))
        << line;
    if (event.value("type", "") == "audit" &&
        event.value("action", "") == "rotation.batch.completed") {
      ++audit_batches;
      EXPECT_EQ(event.value("outcome", ""), "success");
      EXPECT_TRUE(event.contains("job") && event.contains("batch") && event.contains("worker"))
          << line;
    }
  }
  EXPECT_EQ(audit_batches, Number("SELECT count(*) " + batches + " AND state = 'done'"));

  // No key material in the logs or the endpoints' answers, in any encoding.
  std::string everything = r.out + r.err + ready.body + health.body;
  for (const auto& s : scrapes) everything += s;
  std::vector<std::pair<std::string, Bytes>> secrets;
  for (uint32_t id : {1u, 2u}) {
    Secret k = TestDataKey(id);
    secrets.emplace_back("data key " + std::to_string(id), Bytes(k.data(), k.data() + k.size()));
  }
  secrets.emplace_back("master key", *Base64Decode(TestMasterKeyBase64()));
  for (const auto& [name, bytes] : secrets) {
    std::string hex = HexEncode(bytes);
    std::string upper = hex;
    for (char& c : upper) c = char(std::toupper(c));
    for (const std::string& form :
         {std::string(bytes.begin(), bytes.end()), hex, upper, Base64Encode(bytes)}) {
      EXPECT_EQ(everything.find(form), std::string::npos) << name << " appears in the output";
    }
    // Also any 16-byte window of it (a partial dump), in hex.
    EXPECT_EQ(everything.find(hex.substr(16, 32)), std::string::npos) << name;
  }
}

TEST_F(OpsEndpointsTest, ReadyzTurnsDownWhenTheDatabaseGoesAway) {
  // A database of its own, so the test can drop it from under the worker.
  PgServer& server = PgServer::Get();
  const std::string db = server.CreateDatabase(true);
  const std::string info = server.ConnInfo(db);
  {
    pqxx::connection c(info);
    pqxx::work txn(c);
    auto kms = TestKms();
    keyring::ImportKey(txn, kms, 1, "default", TestDataKey(1));
    keyring::ImportKey(txn, kms, 2, "default", TestDataKey(2));
    txn.commit();
  }
  {
    pqxx::connection c(info);
    pqxx::work txn(c);
    txn.exec0("CREATE TABLE t (id bigint PRIMARY KEY, key_id int, token bytea)");
    txn.exec(
        "SELECT rekey.create_job('public.t', ARRAY['token'], '{\"1\": 2}', p_key_id_column => "
        "'key_id')");
    txn.commit();
  }
  auto worker = StartWorker(info, 1, 300);
  auto started = WaitForLog(*worker, "lingering so the final metrics");
  ASSERT_TRUE(started) << ReadFile(worker->stderr_path());
  const int port = ListenPort(*started);

  HttpResult up = HttpGet(port, "/readyz");
  EXPECT_EQ(up.status, 200) << up.body;
  nlohmann::json body = nlohmann::json::parse(up.body);
  EXPECT_EQ(body["status"], "UP");
  ASSERT_EQ(body["checks"].size(), 2u);
  EXPECT_EQ(body["checks"][0]["name"], "database");
  EXPECT_EQ(body["checks"][0]["status"], "UP");
  EXPECT_EQ(body["checks"][1]["name"], "kms");
  EXPECT_EQ(body["checks"][1]["status"], "UP");
  EXPECT_EQ(Sample(HttpGet(port, "/metrics").body, "rekey_database_up"), 1);

  server.DropDatabase(db);
  HttpResult down = HttpGet(port, "/readyz");
  EXPECT_EQ(down.status, 503) << down.body;
  body = nlohmann::json::parse(down.body);
  EXPECT_EQ(body["status"], "DOWN");
  EXPECT_EQ(body["checks"][0]["status"], "DOWN");
  EXPECT_THAT(body["checks"][0]["data"]["error"].get<std::string>(), HasSubstr(db));
  EXPECT_EQ(HttpGet(port, "/healthz").status, 200) << "liveness does not depend on the database";
  HttpResult metrics = HttpGet(port, "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_EQ(Sample(metrics.body, "rekey_database_up"), 0);

  worker->Signal(SIGTERM);
  EXPECT_EQ(worker->Wait(30).exit_code, 0);
}

TEST_F(OpsEndpointsTest, WithoutListenNothingIsServedAndTheWorkerExitsAsBefore) {
  Exec("CREATE TABLE t (id bigint PRIMARY KEY, key_id int, token bytea)");
  int64_t job = CreateJob("'public.t', ARRAY['token'], '{\"1\": 2}', p_stages => '{100}'");
  ProcessResult r =
      RunRekey({"--db", conninfo(), "work", "--job", std::to_string(job)}, WorkerEnv());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, Not(HasSubstr("serving /metrics")));
  EXPECT_THAT(r.err, HasSubstr("no work left"));
}

TEST_F(OpsEndpointsTest, AnAddressInUseIsAUsageError) {
  Exec("CREATE TABLE t (id bigint PRIMARY KEY, key_id int, token bytea)");
  Exec("SELECT rekey.create_job('public.t', ARRAY['token'], '{\"1\": 2}', p_stages => '{100}')");
  auto first = StartWorker(conninfo(), 1, 300);
  auto started = WaitForLog(*first, "serving /metrics");
  ASSERT_TRUE(started) << ReadFile(first->stderr_path());
  const int port = ListenPort(*started);
  ProcessResult r = RunRekey(
      {"--db", conninfo(), "work", "--job", "1", "--listen", "127.0.0.1:" + std::to_string(port)},
      WorkerEnv());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot listen on 127.0.0.1:" + std::to_string(port)));
  first->Signal(SIGTERM);
  first->Wait(30);
}

}  // namespace
}  // namespace rekey::testing
