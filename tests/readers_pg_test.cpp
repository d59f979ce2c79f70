// Readers against the real PostgreSQL (issue 17, item 1): application instances report which keys
// they can decrypt (rekey.reader_heartbeat), and a job driven by real `rekey work` processes
// writes nothing under a key some live reader of its scope lacks -- not its first batch, not the
// promotion, not a rollback -- and says so while it waits; stale readers never block.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class ReadersTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
    SeedTinkTable(conn(), "public.cards", 3000, 1);
  }
  void TearDown() override {
    workers_.clear();  // SIGKILLs what a failed test left running
    PgTest::TearDown();
    if (!logins_.empty()) {
      pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
      pqxx::nontransaction txn(admin);
      for (const std::string& login : logins_) txn.exec("DROP ROLE IF EXISTS " + login);
    }
  }

  int64_t CreateJob(const std::string& extra) {
    return CreateJobSql(
        conn(), "'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 300" + extra);
  }

  void Heartbeat(const std::string& reader, const std::string& key_ids,
                 const std::string& scope = "default") {
    Exec("SELECT rekey.reader_heartbeat(" + conn().quote(reader) + ", " + conn().quote(scope) +
         ", '" + key_ids + "')");
  }

  // A `rekey work --job J` process in the background, as `db` (default: the test's superuser).
  ChildProcess& StartWorker(int64_t job, const std::string& db = "") {
    workers_.push_back(std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", db.empty() ? conninfo() : db, "work",
                                 "--job", std::to_string(job)},
        WorkerEnv()));
    return *workers_.back();
  }
  // Waits for every background worker to exit 0 (they exit when the job needs none).
  void WaitForWorkers() {
    for (auto& w : workers_) {
      ProcessResult r = w->Wait(300);
      EXPECT_EQ(r.exit_code, 0) << r.err;
    }
    workers_.clear();
  }
  // Runs `rekey work --job J` to its end.
  void Work(int64_t job) {
    StartWorker(job);
    WaitForWorkers();
  }

  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }

  // Polls `sql` (a scalar) until it returns `want`, for up to 60 s; returns the last value.
  std::string AwaitScalar(const std::string& sql, const std::string& want) {
    std::string got;
    for (int i = 0; i < 600; ++i) {
      got = Scalar(sql);
      if (got == want) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return got;
  }

  std::string JobField(int64_t job, const std::string& column) {
    return Scalar("SELECT " + column + " FROM rekey.jobs WHERE job_id = " + std::to_string(job));
  }
  int64_t UnderKey(uint32_t key) {
    return Count(
        "SELECT count(*) FROM public.cards WHERE substring(token from 2 for 4) = "
        "'\\x0000000" +
        std::to_string(key) + "'::bytea");
  }
  // Batches of `job` a worker ever claimed in stages of `kind`.
  int64_t Claimed(int64_t job, const std::string& kind) {
    return Count(
        "SELECT count(*) FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no) "
        "WHERE b.job_id = " +
        std::to_string(job) + " AND s.kind = '" + kind + "' AND b.attempts > 0");
  }
  void ExpectAllUnder(uint32_t key) {
    for (const auto& [id, value] : DecryptAll(conn(), "public.cards")) {
      ASSERT_EQ(value.first, key) << "row " << id;
      ASSERT_EQ(value.second, PlaintextFor(id)) << "row " << id;
    }
  }
  // Holds a job whose workers keep claiming for a while, to show nothing moves meanwhile.
  void LetWorkersTry() { std::this_thread::sleep_for(std::chrono::milliseconds(2500)); }

  // sql/roles.sql, then a login (named after the test's database: roles are cluster-wide) in
  // `group`.
  std::string LoginIn(const std::string& suffix, const std::string& group) {
    std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
    std::stringstream sql;
    sql << in.rdbuf();
    Exec(sql.str());
    const std::string login = dbname() + "_" + suffix;
    Exec("DROP ROLE IF EXISTS " + login + "; CREATE ROLE " + login + " LOGIN IN ROLE " + group);
    logins_.push_back(login);
    return login;
  }

 private:
  std::vector<std::unique_ptr<ChildProcess>> workers_;
  std::vector<std::string> logins_;
};

TEST_F(ReadersTest, ALaggingReaderHoldsTheFirstBatchUntilItReportsTheNewKey) {
  Heartbeat("checkout-7f9c", "{1}");
  Heartbeat("billing-2", "{1,2}");
  const int64_t job = CreateJob(", p_observe => '0s'");
  const std::string j = std::to_string(job);
  // The workers run as rekey_worker, with only the grants sql/roles.sql and worker_grants give:
  // recording the wait must not need more.
  const std::string worker = LoginIn("worker", "rekey_worker");
  {
    pqxx::work txn(conn());
    for (const auto& row : txn.exec("SELECT rekey.worker_grants(" + j + ")")) {
      txn.exec0(row[0].as<std::string>());
    }
    txn.commit();
  }
  StartWorker(job, conninfo() + " user=" + worker);
  StartWorker(job, conninfo() + " user=" + worker);

  EXPECT_EQ(AwaitScalar("SELECT readers_waiting_for FROM rekey.progress WHERE job_id = " + j,
                        "first_batch"),
            "first_batch");
  LetWorkersTry();
  EXPECT_EQ(UnderKey(2), 0) << "nothing is written under key 2 while checkout-7f9c lacks it";
  EXPECT_EQ(Claimed(job, "rollout"), 0);
  EXPECT_EQ(JobField(job, "state"), "active");
  EXPECT_EQ(Scalar("SELECT lagging_readers::text FROM rekey.progress WHERE job_id = " + j),
            Scalar("SELECT jsonb_build_array(jsonb_build_object('reader', 'checkout-7f9c', "
                   "'scope', 'default', 'key_id', 2, 'last_seen', last_seen))::text "
                   "FROM rekey.readers WHERE reader = 'checkout-7f9c'"))
      << "billing-2 lists key 2 and is not named";
  EXPECT_EQ(Scalar("SELECT string_agg(reader, ',') FROM rekey.lagging_readers(" + j + ", 2)"),
            "checkout-7f9c");
  ProcessResult status = Rekey({"status", j});
  EXPECT_THAT(status.out, HasSubstr("WAITING FOR READERS before its first batch"));
  EXPECT_THAT(status.out, HasSubstr("checkout-7f9c (scope default) lacks key 2"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j +
                  " AND action = 'job.waiting_for_readers'"),
            1)
      << "the wait is audited once, not at every claim";
  {
    ChildProcess exporter(
        {REKEY_BINARY, "--db", conninfo(), "exporter", "--listen", "127.0.0.1:0"});
    auto started = WaitForLog(exporter, "serving /metrics");
    ASSERT_TRUE(started) << ReadFile(exporter.stderr_path());
    const std::string m = HttpGet(ListenPort(*started), "/metrics").body;
    EXPECT_EQ(Sample(m, "rekey_job_lagging_readers{job_id=\"" + j + "\",state=\"active\"}"), 1)
        << m;
    EXPECT_GT(
        Sample(m, "rekey_job_waiting_for_readers_seconds{job_id=\"" + j + "\",state=\"active\"}")
            .value_or(0),
        1);
    exporter.Signal(SIGTERM);
    EXPECT_EQ(exporter.Wait(30).exit_code, 0);
  }

  Heartbeat("checkout-7f9c", "{1,2}");
  WaitForWorkers();
  EXPECT_EQ(JobField(job, "state"), "completed") << JobField(job, "coalesce(state_reason, '')");
  ExpectAllUnder(2);
  EXPECT_EQ(JobField(job, "(readers_waiting_for IS NULL AND readers_lagging IS NULL)::text"),
            "true");
  EXPECT_EQ(Scalar("SELECT string_agg(details->>'for', ',' ORDER BY audit_id) FROM rekey.audit "
                   "WHERE job_id = " +
                   j + " AND action = 'job.readers_checked'"),
            "first_batch,promotion");
  EXPECT_EQ(Scalar("SELECT details->'readers'->0->>'reader' || ',' || "
                   "(details->'readers'->1->>'reader') FROM rekey.audit WHERE job_id = " +
                   j + " AND action = 'job.readers_checked' AND details->>'for' = 'first_batch'"),
            "billing-2,checkout-7f9c");

  ProcessResult report = Rekey({"report", j, "--format", "markdown", "--no-store"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  EXPECT_THAT(report.out, HasSubstr("reader readiness: proven (readers checked: billing-2@default, "
                                    "checkout-7f9c@default)"));
}

TEST_F(ReadersTest, AStaleReaderDoesNotBlock) {
  Heartbeat("old-pod", "{1}");
  Exec("UPDATE rekey.readers SET last_seen = now() - interval '11 minutes'");
  Heartbeat("new-pod", "{1,2}");
  const int64_t job = CreateJob(", p_observe => '0s'");
  Work(job);
  EXPECT_EQ(JobField(job, "state"), "completed");
  ExpectAllUnder(2);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + std::to_string(job) +
                  " AND action = 'job.waiting_for_readers'"),
            0);
  // The same readers within a longer window hold the next rotation back.
  ImportTestKeys(conn(), {3});
  const int64_t second =
      CreateJobSql(conn(), "'public.cards', ARRAY['token'], '{\"2\": 3}', p_batch_size => 300");
  Exec("SELECT rekey.set_reader_window(" + std::to_string(second) + ", '1 hour')");
  StartWorker(second);
  EXPECT_EQ(AwaitScalar("SELECT readers_waiting_for FROM rekey.jobs WHERE job_id = " +
                            std::to_string(second),
                        "first_batch"),
            "first_batch");
  EXPECT_EQ(Scalar("SELECT string_agg(reader, ',' ORDER BY reader) FROM rekey.lagging_readers(" +
                   std::to_string(second) + ", 3)"),
            "new-pod,old-pod");
  Exec("SELECT rekey.cancel_job(" + std::to_string(second) + ")");
  WaitForWorkers();
}

TEST_F(ReadersTest, PromotionWaitsUntilEveryLiveReaderHasTheNewKey) {
  Heartbeat("api-1", "{1,2}");
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  const int64_t job = CreateJob(", p_stages => '{50,100}', p_promote_at_stage => 2");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(JobField(job, "current_stage || ':' || state"), "1:awaiting_approval");
  const int64_t stage1 = UnderKey(2);
  EXPECT_GT(stage1, 0);

  // A new instance on the old configuration appears before the promotion stage opens.
  Heartbeat("api-2", "{1}");
  ProcessResult advance = Rekey({"job", "advance", j});
  ASSERT_EQ(advance.exit_code, 0) << advance.err;
  EXPECT_EQ(JobField(job, "keys_promoted::text || ':' || readers_waiting_for"), "false:promotion");
  EXPECT_EQ(Scalar("SELECT string_agg(key_id || ':' || status, ',' ORDER BY key_id) FROM "
                   "rekey.keys"),
            "1:primary,2:enabled")
      << "key 2 is not primary while api-2 cannot decrypt it";
  StartWorker(job);
  LetWorkersTry();
  EXPECT_EQ(UnderKey(2), stage1) << "no batch of the promotion stage is written";
  EXPECT_EQ(Scalar("SELECT readers_waiting_for || ':' || (lagging_readers->0->>'reader') FROM "
                   "rekey.progress WHERE job_id = " +
                   j),
            "promotion:api-2");
  ProcessResult status = Rekey({"status", j});
  EXPECT_THAT(status.out, HasSubstr("WAITING FOR READERS before its promotion"));

  Heartbeat("api-2", "{1,2}");
  EXPECT_EQ(AwaitScalar("SELECT string_agg(key_id || ':' || status, ',' ORDER BY key_id) FROM "
                        "rekey.keys",
                        "1:decrypt_only,2:primary"),
            "1:decrypt_only,2:primary");
  WaitForWorkers();  // the last stage's gate opens the sweep by itself
  EXPECT_EQ(JobField(job, "state"), "completed") << JobField(job, "coalesce(state_reason, '')");
  ExpectAllUnder(2);
}

// Before the promotion a rollback changes no primary: its batches wait for the readers.
TEST_F(ReadersTest, ARollbackWaitsWhileAReaderLacksTheOldKey) {
  Heartbeat("web-1", "{1,2}");
  const int64_t job = CreateJob(", p_stages => '{50,100}', p_promote_at_stage => 2");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(JobField(job, "current_stage || ':' || state || ':' || keys_promoted"),
            "1:awaiting_approval:false");
  const int64_t moved = UnderKey(2);
  EXPECT_GT(moved, 0);

  // web-1 was redeployed with only the new key.
  Heartbeat("web-1", "{2}");
  ProcessResult r = Rekey({"job", "rollback", j});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  StartWorker(job);
  EXPECT_EQ(
      AwaitScalar("SELECT readers_waiting_for FROM rekey.progress WHERE job_id = " + j, "rollback"),
      "rollback");
  LetWorkersTry();
  EXPECT_EQ(UnderKey(2), moved) << "nothing is written back under key 1 while web-1 lacks it";
  EXPECT_EQ(Claimed(job, "rollback"), 0);
  EXPECT_EQ(Scalar("SELECT lagging_readers->0->>'key_id' FROM rekey.progress WHERE job_id = " + j),
            "1");

  Heartbeat("web-1", "{1,2}");
  WaitForWorkers();
  EXPECT_EQ(JobField(job, "state"), "rolled_back");
  ExpectAllUnder(1);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j +
                  " AND action = 'job.readers_checked' AND details->>'for' = 'rollback'"),
            1);
}

// After the promotion a rollback makes the old key primary again at once, and applications write
// under it: refused while a live reader lacks it, naming the reader; nothing changes.
TEST_F(ReadersTest, ARollbackThatWouldMakeAKeyPrimaryAgainIsRefusedWhileALiveReaderLacksIt) {
  Heartbeat("web-1", "{1,2}");
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  const int64_t job = CreateJob(", p_observe => '0s'");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(JobField(job, "state || ':' || keys_promoted"), "completed:true");
  const std::string keyring =
      "SELECT string_agg(key_id || ':' || status, ',' ORDER BY key_id) FROM rekey.keys";
  ASSERT_EQ(Scalar(keyring), "1:decrypt_only,2:primary");
  const int64_t audit_before = Count("SELECT count(*) FROM rekey.audit");

  Heartbeat("web-1", "{2}");
  ProcessResult r = Rekey({"job", "rollback", j});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("job " + j +
                               " cannot be rolled back now: it would make key 1 primary again "
                               "in scope default, which live reader web-1"));
  EXPECT_THAT(r.err, HasSubstr("roll back once every live reader lists key 1"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(Scalar(keyring), "1:decrypt_only,2:primary");
  EXPECT_EQ(JobField(job, "state || ':' || keys_promoted"), "completed:true");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit"), audit_before);

  // A stale reader does not hold it: web-1 last seen longer ago than the reader window.
  Exec("UPDATE rekey.readers SET last_seen = now() - interval '1 day' WHERE reader = 'web-1'");
  r = Rekey({"job", "rollback", j});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar(keyring), "1:primary,2:decrypt_only");
  Work(job);
  EXPECT_EQ(JobField(job, "state"), "rolled_back");
  ExpectAllUnder(1);
}

TEST_F(ReadersTest, BadHeartbeatsAreRefusedAndWriteNothing) {
  Exec(
      "INSERT INTO rekey.keys (key_id, scope, kms_provider, kms_key_ref, wrapped_key, status) "
      "SELECT 9, 'tenant-b', kms_provider, kms_key_ref, wrapped_key, 'enabled' FROM rekey.keys "
      "WHERE key_id = 1");
  Heartbeat("pod", "{1}");
  Exec("UPDATE rekey.readers SET last_seen = '2026-01-01', first_seen = '2026-01-01'");
  const std::string before = Scalar("SELECT array_agg(r::text) FROM rekey.readers r");
  struct Case {
    std::string call, error;
  };
  const std::vector<Case> cases = {
      {"'pod', 'no-such-scope', '{1}'", "no key belongs to scope 'no-such-scope'"},
      {"'pod', 'default', '{1,9}'", "key 9 is not a key of scope 'default'"},
      {"'pod', 'default', '{1,77}'", "key 77 is not a key of scope 'default'"},
      {"'pod', 'default', '{}'", "reported no key ids"},
      {"'pod', 'default', NULL", "reported no key ids"},
      {"'', 'default', '{1}'", "the reader name must be 1 to 200 characters"},
  };
  for (const Case& c : cases) {
    try {
      Exec("SELECT rekey.reader_heartbeat(" + c.call + ")");
      ADD_FAILURE() << c.call << " was accepted";
    } catch (const pqxx::sql_error& e) {
      EXPECT_THAT(e.what(), HasSubstr(c.error)) << c.call;
      EXPECT_EQ(e.sqlstate(), "22023") << c.call;
    }
  }
  EXPECT_EQ(Scalar("SELECT array_agg(r::text) FROM rekey.readers r"), before)
      << "a refused heartbeat neither adds a reader nor refreshes one";
  Exec("DELETE FROM rekey.readers");

  // The application role may call the heartbeat and nothing else.
  const std::string app = LoginIn("app", "rekey_application");
  pqxx::connection as_app(conninfo() + " user=" + app);
  {
    pqxx::work txn(as_app);
    txn.exec("SELECT rekey.reader_heartbeat('pod', 'tenant-b', '{9}')");
    txn.commit();
  }
  EXPECT_EQ(Scalar("SELECT reader || ':' || scope || ':' || key_ids::text || ':' || reported_by "
                   "FROM rekey.readers"),
            "pod:tenant-b:{9}:" + app);
  for (const std::string& sql :
       {std::string("SELECT * FROM rekey.readers"), std::string("SELECT key_id FROM rekey.keys"),
        std::string("DELETE FROM rekey.readers"),
        std::string("SELECT rekey.set_reader_window(1, '1s')")}) {
    pqxx::work txn(as_app);
    EXPECT_THROW(txn.exec(sql), pqxx::insufficient_privilege) << sql;
  }
}

TEST_F(ReadersTest, ReadersCommandListsReadersWithTheirAgeAndJobs) {
  Heartbeat("pod-a", "{1,2}");
  Heartbeat("pod-b", "{1}");
  Exec("UPDATE rekey.readers SET last_seen = now() - interval '1 hour' WHERE reader = 'pod-b'");
  const int64_t job = CreateJob("");

  ProcessResult r = Rekey({"readers", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json readers = nlohmann::json::parse(r.out);
  ASSERT_EQ(readers.size(), 2u) << r.out;
  EXPECT_EQ(readers[0]["reader"], "pod-a");
  EXPECT_EQ(readers[0]["scope"], "default");
  EXPECT_EQ(readers[0]["key_ids"], nlohmann::json({1, 2}));
  EXPECT_LT(readers[0]["age_seconds"].get<double>(), 60);
  EXPECT_EQ(readers[0]["live_for_jobs"], nlohmann::json({job}));
  EXPECT_EQ(readers[1]["reader"], "pod-b");
  EXPECT_GE(readers[1]["age_seconds"].get<double>(), 3600);
  EXPECT_EQ(readers[1]["live_for_jobs"], nlohmann::json::array()) << "stale for every job";

  ProcessResult other = Rekey({"readers", "--scope", "tenant-x", "--json"});
  ASSERT_EQ(other.exit_code, 0) << other.err;
  EXPECT_EQ(nlohmann::json::parse(other.out), nlohmann::json::array());
  ProcessResult table = Rekey({"readers"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("pod-a"));
  EXPECT_THAT(table.out, HasSubstr("1,2"));
}

TEST_F(ReadersTest, AScopeNoReaderReportedForIsSaidToBeUnproven) {
  ProcessResult create =
      Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--map", "1:2",
             "--observe", "0s", "--reader-window", "90s", "--batch-size", "500"});
  ASSERT_EQ(create.exit_code, 0) << create.err;
  EXPECT_THAT(create.out, HasSubstr("no reader has ever reported for scope default: reader "
                                    "readiness cannot be proven"));
  const int64_t job = Count("SELECT max(job_id) FROM rekey.jobs");
  EXPECT_EQ(JobField(job, "reader_window::text"), "00:01:30");
  ProcessResult bad = Rekey({"job", "create", "--table", "public.cards", "--column", "token",
                             "--map", "1:2", "--reader-window", "10 minutes"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.err, HasSubstr("--reader-window"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 1) << "nothing written";

  Work(job);
  ASSERT_EQ(JobField(job, "state"), "completed");
  ProcessResult report = Rekey({"report", std::to_string(job), "--format", "json", "--no-store"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  const nlohmann::json r = nlohmann::json::parse(report.out);
  EXPECT_EQ(r["reader_readiness"]["statement"],
            "reader readiness: not proven (no reader reported for scope default)");
  EXPECT_EQ(r["reader_readiness"]["proven"], false);

  // Once a reader reported, job create says nothing of it.
  Heartbeat("pod-a", "{1,2}");
  ImportTestKeys(conn(), {3});
  ProcessResult again = Rekey({"job", "create", "--table", "public.cards", "--column", "token",
                               "--map", "2:3", "--batch-size", "500"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_THAT(again.out, ::testing::Not(HasSubstr("reader readiness")));
}

}  // namespace
}  // namespace rekey::testing
