// The audit trail's key-safety properties (issue 15) against a real PostgreSQL: who and when are
// the server's whatever a client writes, the chain keeps sealing under any default isolation and
// says so when it does not, and the head a worker logs survives a server crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "audit/audit_chain.h"
#include "db/connection.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class AuditSafetyTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
    std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
    std::stringstream sql;
    sql << in.rdbuf();
    Exec(sql.str());
    // Roles are cluster-wide: the login carries the test's database name.
    Exec("DROP ROLE IF EXISTS " + Worker() + "; CREATE ROLE " + Worker() +
         " LOGIN IN ROLE rekey_worker");
  }
  void TearDown() override {
    PgTest::TearDown();
    pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
    pqxx::nontransaction txn(admin);
    txn.exec("DROP ROLE IF EXISTS " + Worker());
  }

  std::string Worker() { return dbname() + "_worker"; }
  // Runs `sql` in one transaction as the worker role's login.
  void ExecAsWorker(const std::string& sql) {
    pqxx::connection c(conninfo() + " user=" + Worker());
    pqxx::work txn(c);
    txn.exec(sql);
    txn.commit();
  }
  void SetDatabaseDefault(const std::string& setting) {
    Exec("ALTER DATABASE \"" + dbname() + "\" SET " + setting);
  }
  int64_t Unsealed() {
    return Count(
        "SELECT count(*) FROM rekey.audit a WHERE NOT EXISTS (SELECT 1 FROM rekey.audit_chain c "
        "WHERE c.audit_id = a.audit_id)");
  }
  // A single-stage job over `rows` fresh rows under key 1.
  int64_t Job(int rows) {
    SeedTinkTable(conn(), "public.cards", rows, 1);
    return CreateJobSql(
        conn(),
        "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
        "p_stages => '{100}', p_batch_size => 200");
  }
  ProcessResult Rekey(std::vector<std::string> args) {
    args.insert(args.begin(), {"--db", conninfo()});
    return RunRekey(args, WorkerEnv());
  }
};

TEST_F(AuditSafetyTest, TheServerSetsTheActorTimeAndTransactionOfEveryAuditRow) {
  const double before = std::stod(Scalar("SELECT extract(epoch FROM clock_timestamp())"));
  ExecAsWorker(
      "INSERT INTO rekey.audit (actor, at, action, details) "
      "VALUES ('alice', '2001-01-01', 'gate.approved', '{\"claimed_actor\": \"bob\"}')");
  EXPECT_EQ(Scalar("SELECT actor FROM rekey.audit WHERE action = 'gate.approved'"), Worker())
      << "the actor is the role that wrote the row, not the one the client named";
  EXPECT_EQ(Scalar("SELECT details->>'claimed_actor' FROM rekey.audit "
                   "WHERE action = 'gate.approved'"),
            "alice")
      << "the name the client gave is kept as a claim, and only the server writes that key";
  EXPECT_GE(std::stod(Scalar(
                "SELECT extract(epoch FROM at) FROM rekey.audit WHERE action = 'gate.approved'")),
            before)
      << "the time is the server's";

  // A worker naming itself through rekey.audit_event: a detail, never the actor.
  ExecAsWorker(
      "SELECT rekey.audit_event('rotation.batch.completed', NULL, '{}', 'success', 7, "
      "'postgres')");
  EXPECT_EQ(Scalar("SELECT actor || ' ' || (details->>'worker') FROM rekey.audit "
                   "WHERE action = 'rotation.batch.completed'"),
            Worker() + " postgres");

  // The fields the chain's proofs rest on cannot be chosen either: an old xid would make the row
  // look forged, a future one would keep it out of every seal, an id beyond the sequence would
  // make a later writer fail on the primary key.
  ExecAsWorker(
      "INSERT INTO rekey.audit (audit_id, action, xid) VALUES (1000000, 'chosen.fields', '3')");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE audit_id = 1000000"), 0);
  EXPECT_EQ(Scalar("SELECT xid::text <> '3' FROM rekey.audit WHERE action = 'chosen.fields'"), "t");
  for (int i = 0; i < 3; ++i) ExecAsWorker("SELECT rekey.audit_event('later.event', NULL)");

  EXPECT_EQ(Unsealed(), 0);
  const audit::Verification v = audit::Verify(conn());
  EXPECT_TRUE(v.ok()) << v.findings[0].detail;
}

TEST_F(AuditSafetyTest, TheServerSetsWhoVerifiedAndApprovedAGate) {
  const int64_t job = Job(100);
  const std::string j = std::to_string(job);
  // What a worker role can write into a gate directly: every who and when is replaced.
  ExecAsWorker(
      "INSERT INTO rekey.gates (job_id, stage_no, percent, values_checked, decrypt_errors, "
      "quarantined, error_rate, threshold, audit_complete, passed, verified_at, verified_by, "
      "approved_at, approved_by) VALUES (" +
      j + ", 1, 100, 10, 0, 0, 0, 0, true, true, '2001-01-01', 'pod-a/0', '2001-01-01', 'alice')");
  EXPECT_EQ(Scalar("SELECT verified_by || ' ' || (details->>'verified_by_worker') || ' ' || "
                   "approved_by || ' ' || (verified_at > '2020-01-01' AND approved_at > "
                   "'2020-01-01') FROM rekey.gates WHERE job_id = " +
                   j),
            Worker() + " pod-a/0 " + Worker() + " true");

  Exec(
      "INSERT INTO rekey.gates (job_id, stage_no, percent, values_checked, decrypt_errors, "
      "quarantined, error_rate, threshold, audit_complete, passed, verified_by) VALUES (" +
      j + ", 1, 100, 10, 0, 0, 0, 0, true, true, 'pod-b/0')");
  const std::string gate = Scalar("SELECT max(gate_id) FROM rekey.gates");
  // The approval the worker role's column grant allows: recorded as the worker role, now.
  ExecAsWorker(
      "UPDATE rekey.gates SET approved_by = 'alice', approved_at = '2001-01-01' "
      "WHERE gate_id = " +
      gate);
  EXPECT_EQ(Scalar("SELECT approved_by || ' ' || (approved_at > '2020-01-01') FROM rekey.gates "
                   "WHERE gate_id = " +
                   gate),
            Worker() + " true");
  // Once given, an approval and the verification are what they were, whoever updates them.
  Exec(
      "UPDATE rekey.gates SET approved_by = 'mallory', verified_by = 'mallory', details = '{}' "
      "WHERE gate_id = " +
      gate);
  EXPECT_EQ(Scalar("SELECT approved_by || ' ' || verified_by || ' ' || "
                   "(details->>'verified_by_worker') FROM rekey.gates WHERE gate_id = " +
                   gate),
            Worker() + " postgres pod-b/0");

  // The report shows the server-set approver, with the worker's own name beside it.
  const auto report = nlohmann::json::parse(Scalar("SELECT rekey.job_report(" + j + ")::text"));
  const auto& gates = report["stages"][0]["gates"];
  ASSERT_EQ(gates.size(), 2u) << report.dump();
  EXPECT_EQ(gates[1]["approved_by"], Worker());
  EXPECT_EQ(gates[1]["verified_by"], "postgres");
  EXPECT_EQ(gates[1]["verified_by_worker"], "pod-b/0");
}

TEST_F(AuditSafetyTest, AStagedRotationRecordsRolesAsActorsAndWorkersAsDetails) {
  const int64_t job = Job(1000);
  const std::string j = std::to_string(job);
  ProcessResult r = Rekey({"work", "--job", j, "--worker-name", "pod-x"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j +
                  " AND action = 'rotation.batch.completed' AND (actor <> 'postgres' OR "
                  "details->>'worker' NOT LIKE 'pod-x/%')"),
            0);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.gates WHERE job_id = " + j +
                  " AND (verified_by <> 'postgres' OR details->>'verified_by_worker' NOT LIKE "
                  "'pod-x/%')"),
            0);
  const auto report = nlohmann::json::parse(Scalar("SELECT rekey.job_report(" + j + ")::text"));
  EXPECT_THAT(report["stages"][0]["gates"][0]["verified_by_worker"].get<std::string>(),
              HasSubstr("pod-x/"));
}

TEST_F(AuditSafetyTest, RekeySessionsAreReadCommittedWhateverTheDatabaseDefault) {
  SetDatabaseDefault("default_transaction_isolation = 'serializable'");
  auto conn = db::Connect(conninfo());
  pqxx::work txn(*conn);
  EXPECT_EQ(txn.exec1("SHOW transaction_isolation")[0].as<std::string>(), "read committed");
}

class AuditIsolationTest : public AuditSafetyTest,
                           public ::testing::WithParamInterface<std::string> {};

TEST_P(AuditIsolationTest, TheChainSealsARotationUnderAnyDefaultIsolation) {
  const int64_t job = Job(2000);
  SetDatabaseDefault("default_transaction_isolation = '" + GetParam() + "'");
  // A session that is not rekey's, e.g. psql: its rows wait, with a warning, for the next seal.
  {
    pqxx::connection psql(conninfo());
    pqxx::work txn(psql);
    EXPECT_EQ(txn.exec1("SHOW transaction_isolation")[0].as<std::string>(), GetParam());
    txn.exec("SELECT rekey.audit_event('operator.note', NULL)");
    txn.commit();
  }
  EXPECT_EQ(Unsealed(), 1);

  ProcessResult r = Rekey({"work", "--job", std::to_string(job)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(job)),
            "completed");
  EXPECT_EQ(Unsealed(), 0) << "every row the rotation wrote, and the one it found, is sealed";
  EXPECT_GT(Count("SELECT count(*) FROM rekey.audit_chain"),
            Count("SELECT count(*) FROM rekey.batches"));
  r = Rekey({"audit", "verify", "--no-seal"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("0 not sealed yet"));
}

INSTANTIATE_TEST_SUITE_P(Isolations, AuditIsolationTest,
                         ::testing::Values("repeatable read", "serializable"),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return param.param == "serializable" ? "Serializable" : "RepeatableRead";
                         });

TEST_F(AuditSafetyTest, VerifyFailsWhenRowsStayUnsealed) {
  for (int i = 0; i < 3; ++i) Exec("SELECT rekey.audit_event('sealed.event', NULL)");
  // A row that no seal has covered for 20 minutes: what a database whose sessions never seal
  // (all of them REPEATABLE READ) accumulates. Written with the stamping trigger off to give it
  // its age; its transaction is newer than every seal, so it is not "inserted" but unsealed.
  Exec(
      "SET session_replication_role = replica; INSERT INTO rekey.audit (action, at) VALUES "
      "('stuck.event', now() - interval '20 minutes'); SET session_replication_role = origin");
  const std::string stuck = Scalar("SELECT audit_id FROM rekey.audit WHERE action = 'stuck.event'");
  ProcessResult r = Rekey({"audit", "verify", "--no-seal"});
  EXPECT_EQ(r.exit_code, 5) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("UNSEALED unsealed"));
  EXPECT_THAT(r.out, HasSubstr("audit row " + stuck + " (stuck.event"));
  EXPECT_THAT(r.out, HasSubstr("audit log NOT SEALED"));
  EXPECT_THAT(r.err, HasSubstr("rekey audit seal"));
  // A fresh unsealed row is only "not sealed yet".
  Exec(
      "SET session_replication_role = replica; INSERT INTO rekey.audit (action) VALUES "
      "('fresh.event'); SET session_replication_role = origin");
  r = Rekey({"audit", "verify", "--no-seal", "--json"});
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_THAT(r.out, HasSubstr("\"unsealed\":2"));
  // Sealing, as verify does first, covers them: intact again.
  r = Rekey({"audit", "verify"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("audit log intact"));
}

TEST_F(AuditSafetyTest, SealingOutsideReadCommittedWarnsAndLeavesRowsForTheNextSeal) {
  pqxx::connection psql(conninfo());
  struct Notices : pqxx::errorhandler {
    explicit Notices(pqxx::connection_base& c) : pqxx::errorhandler(c) {}
    bool operator()(const char msg[]) noexcept override {
      text += msg;
      return true;
    }
    std::string text;
  } notices(psql);
  {
    pqxx::transaction<pqxx::repeatable_read> txn(psql);
    txn.exec("SELECT rekey.audit_event('rr.event', NULL)");
    txn.commit();
  }
  EXPECT_THAT(notices.text, HasSubstr("not sealed in a REPEATABLE READ transaction"));
  EXPECT_EQ(Unsealed(), 1);
  try {
    pqxx::transaction<pqxx::repeatable_read> txn(psql);
    txn.exec("SELECT * FROM rekey.seal_audit_durably()");
    ADD_FAILURE() << "a durable head was sealed outside READ COMMITTED";
  } catch (const pqxx::sql_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("sealed only in READ COMMITTED"));
  }
  // Left, not skipped: the next seal takes the row.
  EXPECT_EQ(audit::Seal(conn()), 1);
  EXPECT_EQ(Unsealed(), 0);
  EXPECT_TRUE(audit::Verify(conn()).ok());
}

// The head a worker logs at exit must survive a server crash right after, though the batches
// that wrote the rows under it committed without waiting for their WAL. The test server runs
// with synchronous_commit = off everywhere, and its WAL writer is slowed to 10 s, so WAL that
// nobody flushes is still in shared memory when the server crashes.
TEST_F(AuditSafetyTest, TheHeadAWorkerLogsSurvivesAServerCrash) {
  const int64_t job = Job(2000);
  auto set_wal_writer_delay = [](const std::string& value) {
    pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
    pqxx::nontransaction txn(admin);
    txn.exec("ALTER SYSTEM SET wal_writer_delay = '" + value + "'");
    txn.exec("SELECT pg_reload_conf()");
  };
  set_wal_writer_delay("10s");
  struct Restore {
    std::function<void()> fn;
    ~Restore() { fn(); }
  } restore{[&] { set_wal_writer_delay("200ms"); }};
  // A hibernating WAL writer wakes at the first asynchronous commit: have it wake now, under the
  // new delay, and not at the worker's last commit.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Exec("SELECT rekey.audit_event('wake.wal_writer', NULL)");

  ProcessResult r = Rekey({"work", "--job", std::to_string(job)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string head;
  std::istringstream log(r.err);
  for (std::string line; std::getline(log, line);) {
    const auto json = nlohmann::json::parse(line, nullptr, false);
    if (json.is_object() && json.value("action", "") == "audit.sealed") {
      head = json.value("audit_head", "");
    }
  }
  ASSERT_FALSE(head.empty()) << r.err;
  ASSERT_NE(head.substr(0, 2), "0:");
  PgServer::Get().Restart(/*crash=*/true);

  r = Rekey({"audit", "verify", "--expect-head", head});
  EXPECT_EQ(r.exit_code, 0) << "the logged head " << head << " was lost in the crash:\n"
                            << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("audit log intact"));
}

}  // namespace
}  // namespace rekey::testing
