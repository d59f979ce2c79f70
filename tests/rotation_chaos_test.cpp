// The chaos suite: four worker processes rotate a table through a staged job, with keys wrapped
// by the loopback AWS KMS (tests/kms/aws_kms_server.py), while
//   - a random worker is SIGKILLed every 0.5 to 2 seconds and restarted,
//   - PostgreSQL is restarted once (pg_ctl restart -m fast) in mid-run,
//   - the KMS throttles 20% of calls throughout and has one outage window,
//   - an application keeps updating random rows, encrypting under the scope's primary key,
//   - the job's canary is approved, and the job is rolled back partway and then driven forward.
// Afterwards: every row decrypts; every plaintext is the original or the application's latest
// write; no value is under the old key; each completed batch has exactly one completion audit
// event; no batch is stuck; the final workers exit 0; the audit chain verifies.
//
// REKEY_CHAOS_ROWS (default 120000) sets the table size, REKEY_CHAOS_SECONDS (default 120) caps
// the chaotic phase (it ends when the job completes), REKEY_CHAOS_SEED the
// random seed (default: time-based, printed so a failure can be replayed). The soak:
//   REKEY_CHAOS_SECONDS=600 REKEY_CHAOS_ROWS=2000000 build/rotation_chaos_test
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "kms/http_transport.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kPython[] = "/usr/bin/python3";

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

class ChaosTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    dir_ = MakeTempDir("rekey-chaos-");
    const std::string port_file = dir_ + "/port";
    kms_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        kPython, std::string(REKEY_SOURCE_DIR) + "/tests/kms/aws_kms_server.py", "--port-file",
        port_file, "--key", "alias/rekey"});
    const int port = WaitForPortFile(port_file, 20000);
    ASSERT_GT(port, 0) << "aws_kms_server.py did not start";
    kms_url_ = "http://127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override {
    kms_.reset();
    RunProcess({"rm", "-rf", dir_});
    PgTest::TearDown();
  }

  EnvOverrides Env() {
    return {{"AWS_REGION", "us-east-1"},
            {"AWS_ACCESS_KEY_ID", "AKIDREKEYTEST"},
            {"AWS_SECRET_ACCESS_KEY", "rekey/test/secret/key+0123456789"},
            {"AWS_SESSION_TOKEN", std::nullopt},
            {"AWS_ENDPOINT_URL_KMS", kms_url_},
            {"REKEY_AWS_KMS_KEY_ID", "alias/rekey"},
            {"REKEY_MASTER_KEY", std::nullopt},
            {"REKEY_MASTER_KEY_FILE", std::nullopt}};
  }
  nlohmann::json KmsControl(const nlohmann::json& cmd) {
    kms::HttpRequest r;
    r.url = kms_url_ + "/__control";
    r.body = cmd.dump();
    kms::HttpResponse resp = transport_.Post(r);
    EXPECT_EQ(resp.status, 200) << resp.body;
    return nlohmann::json::parse(resp.body);
  }
  ProcessResult Rekey(std::vector<std::string> args, const std::string& stdin_data = "") {
    args.insert(args.begin(), {"--db", conninfo()});
    return RunRekey(args, Env(), stdin_data);
  }
  std::unique_ptr<ChildProcess> StartWorker() {
    return std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", conninfo(), "work", "--job",
                                 std::to_string(job_)},
        Env());
  }
  // A fresh connection per query: the server restarts under the test.
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

  std::string dir_;
  std::string kms_url_;
  std::unique_ptr<ChildProcess> kms_;
  kms::CurlTransport transport_;
  int64_t job_ = 0;
};

// What the application last wrote to a row; `maybe` holds a write whose commit outcome is unknown
// (the connection broke during COMMIT), which may or may not have landed.
struct AppWrites {
  std::mutex mu;
  std::map<int64_t, std::string> latest;
  std::map<int64_t, std::set<std::string>> maybe;
};

void ApplicationWriter(const std::string& conninfo, int rows, uint64_t seed,
                       const std::atomic<bool>& stop, AppWrites* writes, std::atomic<int>* count) {
  std::mt19937_64 rng(seed);
  std::unique_ptr<pqxx::connection> conn;
  int n = 0;
  while (!stop) {
    const int64_t id = std::uniform_int_distribution<int64_t>(1, rows)(rng);
    const std::string pt = "app-" + std::to_string(seed % 1000) + "-" + std::to_string(n++);
    bool committing = false;
    try {
      if (!conn || !conn->is_open()) conn = std::make_unique<pqxx::connection>(conninfo);
      pqxx::work txn(*conn);
      // The application encrypts under its scope's primary key, as it reads it now; the share
      // lock orders the write before or after a promotion, never across it.
      const uint32_t key =
          txn.exec1(
                 "SELECT key_id FROM rekey.keys WHERE scope = 'default' AND status = 'primary' "
                 "FOR SHARE")[0]
              .as<uint32_t>();
      txn.exec_params("UPDATE public.cards SET token = $1, key_id = $2 WHERE id = $3",
                      pqxx::binarystring(TinkEncrypt(key, pt)), key, id);
      committing = true;
      txn.commit();
      std::lock_guard<std::mutex> lock(writes->mu);
      writes->latest[id] = pt;
      writes->maybe.erase(id);
      ++*count;
      std::this_thread::sleep_for(milliseconds(2));
    } catch (const std::exception&) {
      if (committing) {
        std::lock_guard<std::mutex> lock(writes->mu);
        writes->maybe[id].insert(pt);
      }
      conn.reset();
      std::this_thread::sleep_for(milliseconds(50));
    }
  }
}

TEST_F(ChaosTest, WorkersSurviveKillsRestartsKmsFaultsWritersAndARollback) {
  const int chaos_seconds = EnvInt("REKEY_CHAOS_SECONDS", 120);
  const uint64_t seed = EnvInt("REKEY_CHAOS_SEED", int(time(nullptr) % 100000));
  const int rows = EnvInt("REKEY_CHAOS_ROWS", 120000);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines as they happen
  std::printf("chaos: %d s at most, %d rows, seed %llu (REKEY_CHAOS_SEED to replay)\n",
              chaos_seconds, rows, (unsigned long long)seed);
  std::mt19937_64 rng(seed);

  SeedTinkTable(conn(), "public.cards", rows, 1);
  const auto original = DecryptAll(conn(), "public.cards");
  // The application's key 1 and the new key 2, both wrapped by the (test) AWS KMS.
  for (uint32_t id : {1u, 2u}) {
    Secret k = TestDataKey(id);
    ProcessResult r =
        Rekey({"keys", "import", "--key-id", std::to_string(id), "--kms", "aws-kms", "--stdin"},
              std::string(reinterpret_cast<const char*>(k.data()), k.size()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  ASSERT_EQ(Rekey({"keys", "promote", "1"}).exit_code, 0);
  ProcessResult created =
      Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--key-id-column",
             "key_id", "--map", "1:2", "--batch-size", "200", "--stages", "1,25,50,100"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  job_ = std::stoll(Query("SELECT max(job_id) FROM rekey.jobs"));
  const std::string j = std::to_string(job_);

  KmsControl({{"reset", true}, {"seed", int(seed % 1000)}, {"throttle_ratio", 0.2}});
  std::atomic<bool> stop_writer{false};
  AppWrites writes;
  std::atomic<int> app_writes{0};
  std::thread writer(ApplicationWriter, conninfo(), rows, seed, std::cref(stop_writer), &writes,
                     &app_writes);

  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < 4; ++i) workers.push_back(StartWorker());
  int kills = 0, pg_restarts = 0, outages = 0, advances = 0, rollbacks = 0, retries = 0;
  const auto start = Clock::now();
  auto next_kill = start + milliseconds(500);
  bool rolled_back = false;
  int faulted_while_working = 0;

  // The operator: approves the canary (and, after the rollback, the canary again), and rolls the
  // job back to the canary once it is past 25%.
  auto operate = [&] {
    const std::string state = Query("SELECT state FROM rekey.jobs WHERE job_id = " + j);
    if (state == "awaiting_approval") {
      if (Rekey({"job", "advance", j, "--observe", "0s"}).exit_code == 0) ++advances;
    } else if (state == "failed") {
      // A batch whose workers were all killed mid-batch max-attempts times is failed, by design
      // (it could be a poison batch); the DBA looks, sees kills, and retries.
      if (Rekey({"job", "retry-failed", j}).exit_code == 0) ++retries;
    } else if (!rolled_back && state == "active" &&
               std::stoi(Query("SELECT current_stage FROM rekey.jobs WHERE job_id = " + j)) >= 3) {
      ProcessResult r = Rekey({"job", "rollback", j, "--to-percent", "1", "--reason", "chaos"});
      if (r.exit_code == 0) {
        rolled_back = true;
        ++rollbacks;
      }
    }
    return state;
  };

  // Chaos lasts until the job completes (or the time is up: then the calm phase finishes it).
  double completed_at = -1;
  while (Clock::now() - start < seconds(chaos_seconds)) {
    std::this_thread::sleep_for(milliseconds(100));
    const auto now = Clock::now();
    const double t = std::chrono::duration<double>(now - start).count();
    if (now >= next_kill) {
      auto& victim = workers[std::uniform_int_distribution<size_t>(0, workers.size() - 1)(rng)];
      if (victim->Running()) {
        victim->Signal(SIGKILL);
        victim->Wait(10);
        ++kills;
      }
      victim = StartWorker();
      next_kill = now + milliseconds(std::uniform_int_distribution<int>(500, 2000)(rng));
    }
    // Workers that finished (queue empty for now, e.g. waiting for approval) come back too.
    for (auto& w : workers) {
      if (!w->Running()) w = StartWorker();
    }
    const std::string state = operate();
    // The faults strike while the job has work in flight: the restart once the canary is
    // approved, the outage once the rollback runs (or by the middle of the run at the latest).
    const int stage = std::stoi(Query("SELECT current_stage FROM rekey.jobs WHERE job_id = " + j));
    if (pg_restarts == 0 && ((state == "active" && stage >= 2) || t > chaos_seconds / 3.0)) {
      faulted_while_working += state != "completed";
      PgServer::Get().Restart();
      ++pg_restarts;
    }
    if (outages == 0 && (rolled_back || t > chaos_seconds / 2.0)) {
      faulted_while_working += state != "completed";
      KmsControl({{"outage_seconds", 3}});
      ++outages;
    }
    if (state == "completed" && outages > 0 && pg_restarts > 0) {
      completed_at = t;
      break;
    }
  }

  // Calm: no more faults; the application stops; the job is driven to completion.
  stop_writer = true;
  writer.join();
  KmsControl({{"reset", true}});
  const auto calm_deadline = Clock::now() + seconds(300);
  std::string state;
  while (Clock::now() < calm_deadline) {
    state = operate();
    if (state == "completed") break;
    for (auto& w : workers) {
      if (!w->Running()) {
        ProcessResult r = w->Wait(1);
        EXPECT_TRUE(r.term_signal == 0 && r.exit_code == 0) << r.err.substr(0, 2000);
        w = StartWorker();
      }
    }
    std::this_thread::sleep_for(milliseconds(200));
  }
  for (auto& w : workers) {
    ProcessResult r = w->Wait(120);
    EXPECT_EQ(r.term_signal, 0);
    EXPECT_EQ(r.exit_code, 0) << r.err.substr(r.err.size() > 3000 ? r.err.size() - 3000 : 0);
  }
  std::printf("%s\n", Query("SELECT string_agg(action || ' x' || n, ', ') FROM (SELECT action, "
                            "count(*) n FROM rekey.audit WHERE action LIKE 'job.%' GROUP BY 1) a")
                          .c_str());
  std::printf("chaos: the job completed %s\n",
              completed_at < 0
                  ? "in the calm phase"
                  : ("under chaos after " + std::to_string(int(completed_at)) + " s").c_str());
  std::printf(
      "chaos: %d kills, %d PostgreSQL restart, %d KMS outage, %d approvals, %d rollback, "
      "%d retries of failed batches, %d application writes\n",
      kills, pg_restarts, outages, advances, rollbacks, retries, app_writes.load());
  ASSERT_EQ(state, "completed")
      << Query(
             "SELECT state || ' at stage ' || current_stage || ': ' || coalesce(state_reason, '') "
             "FROM rekey.jobs WHERE job_id = " +
             j)
      << "\nbatches: "
      << Query(
             "SELECT string_agg(stage_no || '/' || state || ' x' || n, ', ') FROM (SELECT "
             "stage_no, state, count(*) n FROM rekey.batches WHERE job_id = " +
             j + " GROUP BY 1, 2 ORDER BY 1, 2) b")
      << "\nstages: "
      << Query(
             "SELECT string_agg(stage_no || ':' || kind || ':' || state, ', ' ORDER BY stage_no) "
             "FROM rekey.job_stages WHERE job_id = " +
             j)
      << "\ngates: "
      << Query(
             "SELECT string_agg(stage_no || ':' || passed || ':' || values_checked || '/' || "
             "decrypt_errors, ', ') FROM rekey.gates WHERE job_id = " +
             j)
      << "\nlast batch errors: "
      << Query(
             "SELECT string_agg(DISTINCT left(last_error, 300), ' | ') FROM rekey.batches "
             "WHERE job_id = " +
             j + " AND last_error IS NOT NULL");
  EXPECT_GE(kills, 3);
  EXPECT_EQ(pg_restarts, 1);
  EXPECT_EQ(faulted_while_working, 2) << "the job was done before the faults; enlarge the table";
  EXPECT_EQ(rollbacks, 1) << "the job finished before the rollback point; lengthen the run";

  // Every row decrypts under the new key to the original or the application's latest value.
  pqxx::connection fresh(conninfo());  // the fixture's connection died with the restart
  auto after = DecryptAll(fresh, "public.cards");
  ASSERT_EQ(after.size(), original.size());
  int app_rows = 0;
  for (const auto& [id, value] : after) {
    ASSERT_EQ(value.first, 2u) << "row " << id << " is not under the new key";
    auto latest = writes.latest.find(id);
    std::set<std::string> allowed;
    allowed.insert(latest != writes.latest.end() ? latest->second : original.at(id).second);
    for (const auto& m : writes.maybe[id]) allowed.insert(m);
    ASSERT_EQ(allowed.count(value.second), 1u) << "row " << id << " holds '" << value.second << "'";
    app_rows += latest != writes.latest.end();
  }
  EXPECT_GT(app_rows, 0);
  pqxx::read_transaction txn(fresh);
  EXPECT_EQ(txn.exec1("SELECT count(*) FROM public.cards WHERE key_id <> 2 OR "
                      "substring(token from 1 for 5) <> '\\x0100000002'::bytea")[0]
                .as<int>(),
            0);
  // No batch stuck; each completed batch run has exactly one completion event.
  EXPECT_EQ(txn.exec1("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                      " AND state IN ('pending', 'running')")[0]
                .as<int>(),
            0);
  EXPECT_EQ(txn.exec1("SELECT count(*) FROM rekey.batches b WHERE job_id = " + j +
                      " AND state = 'done' AND (SELECT count(*) FROM rekey.audit a WHERE a.job_id "
                      "= b.job_id AND a.batch_no = b.batch_no AND a.action = "
                      "'rotation.batch.completed' AND a.at >= b.claimed_at) <> 1")[0]
                .as<int>(),
            0);
  EXPECT_EQ(txn.exec1("SELECT count(*) FROM rekey.row_failures")[0].as<int>(), 0)
      << "KMS faults and kills must never quarantine a sound value";
  txn.commit();
  ProcessResult audit = Rekey({"audit", "verify"});
  EXPECT_EQ(audit.exit_code, 0) << audit.out << audit.err;
}

}  // namespace
}  // namespace rekey::testing
