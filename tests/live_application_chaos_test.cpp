// A live application through a staged rotation and its rollback while workers are SIGKILLed
// (issue 17, item 5). scripts/demo_app.py -- written from docs/applications.md alone -- reads
// and re-saves random rows the whole time as the least-privileged rekey_application login: it
// unwraps its keys from rekey.application_keys through AWS KMS (the loopback test server, with
// boto3), reports as a reader, hears of the new key by NOTIFY but loads it seconds later (a slow
// rollout), and follows the promotion and the rollback by NOTIFY. Three workers are killed every
// 0.2 to 0.8 s and restarted; PostgreSQL is restarted once after the canary (every connection
// breaks: the application listens again and re-reads its keys); the operator approves the
// canary, lets the job complete, and rolls it back.
// Afterwards: the application never failed a read and read values under both keys; the job
// waited for the application before writing under the new key; every row decrypts under the
// old key to its original plaintext.
//
// REKEY_LIVE_APP_SEED replays a run (default: time-based, printed).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "application_support.h"
#include "aws_kms_support.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;

constexpr int kRows = 50000;
constexpr int kAppLoadDelaySeconds = 3;

class LiveApplicationChaosTest : public ApplicationTest {
 protected:
  void SetUp() override {
    ApplicationTest::SetUp();
    kms_ = std::make_unique<AwsKmsTestServer>(std::vector<std::string>{"--key", "alias/rekey"});
    dir_ = MakeTempDir("rekey-live-app-");
  }
  void TearDown() override {
    kms_.reset();
    RunProcess({"rm", "-rf", dir_});
    ApplicationTest::TearDown();
  }

  ProcessResult Rekey(std::vector<std::string> args, const std::string& stdin_data = "") {
    args.insert(args.begin(), {"--db", conninfo()});
    return RunRekey(args, kms_->Env(), stdin_data);
  }
  std::unique_ptr<ChildProcess> StartWorker(const std::string& job) {
    return std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", conninfo(), "work", "--job", job},
        kms_->Env());
  }
  // A fresh connection per query, retried while the server restarts under the test.
  std::string Query(const std::string& sql) {
    for (int attempt = 0;; ++attempt) {
      try {
        pqxx::connection c(conninfo());
        pqxx::read_transaction txn(c);
        auto r = txn.exec1(sql);
        return r[0].is_null() ? "" : r[0].as<std::string>();
      } catch (const pqxx::broken_connection&) {
        if (attempt > 100) throw;
        std::this_thread::sleep_for(milliseconds(100));
      }
    }
  }
  std::string ReadFile(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::unique_ptr<AwsKmsTestServer> kms_;
  std::string dir_;
};

TEST_F(LiveApplicationChaosTest, NoReadFailsThroughARotationAndRollbackWithKilledWorkers) {
  const char* seed_env = std::getenv("REKEY_LIVE_APP_SEED");
  const uint64_t seed = seed_env && *seed_env ? std::atoll(seed_env) : uint64_t(time(nullptr));
  std::printf("live application chaos: seed %llu (REKEY_LIVE_APP_SEED to replay)\n",
              (unsigned long long)seed);
  std::mt19937_64 rng(seed);

  SeedTinkTable(conn(), "public.cards", kRows, 1);
  const auto original = DecryptAll(conn(), "public.cards");
  GrantTableToApp("public.cards");
  Secret k1 = TestDataKey(1);
  ProcessResult r = Rekey({"keys", "import", "--key-id", "1", "--kms", "aws-kms", "--stdin"},
                          std::string(reinterpret_cast<const char*>(k1.data()), k1.size()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Rekey({"keys", "promote", "1"}).exit_code, 0);

  // The application goes live with key 1 (its AWS credentials are the test server's).
  const std::string ready = dir_ + "/ready", stats_file = dir_ + "/stats.json";
  EnvOverrides app_env = kms_->Env();
  app_env["AWS_DEFAULT_REGION"] = kAwsTestRegion;
  ChildProcess app(
      DemoApp("public.cards",
              {"--reader", "chaos-app", "--load-delay", std::to_string(kAppLoadDelaySeconds),
               "--heartbeat-interval", "1", "--rate", "400", "--write-ratio", "0.3", "--stats-file",
               stats_file, "--ready-file", ready}),
      app_env);
  for (int i = 0; i < 300 && !std::ifstream(ready) && app.Running(); ++i) {
    std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_TRUE(std::ifstream(ready)) << app.Wait(5).out << app.Wait(5).err;

  // The new key: the application hears of it now, and loads it kAppLoadDelaySeconds later.
  r = Rekey({"keys", "create", "--kms", "aws-kms"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--key-id-column",
             "key_id", "--map", "1:2", "--batch-size", "200", "--stages", "1,25,50,100"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = Scalar("SELECT max(job_id) FROM rekey.jobs");

  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < 3; ++i) workers.push_back(StartWorker(job));
  int kills = 0, advances = 0, retries = 0, pg_restarts = 0;
  bool waited_for_reader = false, rolled_back = false;
  std::string state;
  const auto start = Clock::now();
  auto next_kill = start + milliseconds(200);
  while (Clock::now() - start < seconds(50)) {
    std::this_thread::sleep_for(milliseconds(100));
    ASSERT_TRUE(app.Running()) << app.Wait(5).out << app.Wait(5).err;
    state = Query("SELECT state FROM rekey.jobs WHERE job_id = " + job);
    waited_for_reader |=
        Query("SELECT readers_waiting_for FROM rekey.jobs WHERE job_id = " + job) == "first_batch";
    if (pg_restarts == 0 && state == "active" &&
        std::stoi(Query("SELECT current_stage FROM rekey.jobs WHERE job_id = " + job)) >= 2) {
      PgServer::Get().Restart();
      ++pg_restarts;
      continue;
    }
    if (state == "awaiting_approval") {
      advances += Rekey({"job", "advance", job, "--observe", "0s"}).exit_code == 0;
    } else if (state == "failed") {
      // A batch whose workers were all killed mid-batch max-attempts times fails by design.
      retries += Rekey({"job", "retry-failed", job}).exit_code == 0;
    } else if (state == "completed" && !rolled_back) {
      rolled_back =
          Rekey({"job", "rollback", job, "--reason", "live application chaos"}).exit_code == 0;
    } else if (state == "rolled_back") {
      break;
    }
    if (Clock::now() >= next_kill) {
      auto& victim = workers[std::uniform_int_distribution<size_t>(0, workers.size() - 1)(rng)];
      if (victim->Running()) {
        victim->Signal(SIGKILL);
        RecordSigkilledChild(victim->pid(), victim->Wait(10).term_signal);
        ++kills;
      }
      victim = StartWorker(job);
      next_kill = Clock::now() + milliseconds(std::uniform_int_distribution<int>(200, 800)(rng));
    }
    for (auto& w : workers) {
      if (!w->Running()) w = StartWorker(job);
    }
  }
  for (auto& w : workers) w->Signal(SIGTERM);
  workers.clear();
  std::this_thread::sleep_for(milliseconds(500));  // the application's last writes under key 1
  app.Signal(SIGTERM);
  const ProcessResult app_result = app.Wait(30);
  const size_t summary = app_result.out.rfind("app: reads=");
  std::printf(
      "live application chaos: %d kills, %d PostgreSQL restart, %d approvals, %d retries; %s\n",
      kills, pg_restarts, advances, retries,
      summary == std::string::npos ? "no summary" : app_result.out.substr(summary).c_str());

  ASSERT_EQ(state, "rolled_back") << Query(
      "SELECT state || ' at stage ' || current_stage || ': ' || coalesce(state_reason, '') FROM "
      "rekey.jobs WHERE job_id = " +
      job);
  EXPECT_GE(kills, 3);
  EXPECT_EQ(pg_restarts, 1);
  EXPECT_TRUE(waited_for_reader) << "the job never waited for the application to load key 2";

  // The application: every read decrypted, under both keys, and it followed both key changes.
  EXPECT_EQ(app_result.exit_code, 0) << app_result.out << app_result.err;
  const auto stats = nlohmann::json::parse(ReadFile(stats_file));
  EXPECT_EQ(stats["failed_reads"], 0) << stats.dump();
  EXPECT_GE(stats["reconnects"], 1) << stats.dump();
  EXPECT_GT(stats["reads_by_key"].value("1", 0), 0) << stats.dump();
  EXPECT_GT(stats["reads_by_key"].value("2", 0), 0) << stats.dump();
  EXPECT_GT(stats["writes_by_key"].value("2", 0), 0) << stats.dump();
  EXPECT_THAT(app_result.out, HasSubstr("NOTIFY key 2 added"));
  EXPECT_THAT(app_result.out, HasSubstr("NOTIFY key 2 promoted"));
  EXPECT_THAT(app_result.out, HasSubstr("NOTIFY key 1 rolled_back"));
  const size_t to_2 = app_result.out.find("primary key is now 2");
  ASSERT_NE(to_2, std::string::npos) << app_result.out;
  EXPECT_NE(app_result.out.find("primary key is now 1", to_2), std::string::npos) << app_result.out;

  // The table: every value back under key 1, with its original plaintext (the application
  // re-saved what it read).
  pqxx::connection fresh(conninfo());  // conn() broke with the restart
  const auto after = DecryptAll(fresh, "public.cards");
  ASSERT_EQ(after.size(), original.size());
  for (const auto& [id, value] : after) {
    ASSERT_EQ(value.first, 1u) << "row " << id;
    ASSERT_EQ(value.second, original.at(id).second) << "row " << id;
  }
}

}  // namespace
}  // namespace rekey::testing
