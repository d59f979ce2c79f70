// sql/roles.sql against a real PostgreSQL: a staged rotation runs end to end with workers that
// are neither superuser nor table owner, the operator drives the job through its verbs, the
// monitor reads progress, and each role is refused what it must not do.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class RolesTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ApplyRoles();
    // Roles are cluster-wide: each test's logins carry its database name.
    for (const char* group : {"worker", "operator", "monitor"}) {
      const std::string login = Login(group);
      Exec("DROP ROLE IF EXISTS " + login + "; CREATE ROLE " + login + " LOGIN IN ROLE rekey_" +
           group);
    }
  }
  void TearDown() override {
    PgTest::TearDown();
    PgServer& server = PgServer::Get();
    pqxx::connection admin(server.ConnInfo("postgres"));
    pqxx::nontransaction txn(admin);
    for (const char* group : {"worker", "operator", "monitor"}) {
      txn.exec("DROP ROLE IF EXISTS " + Login(group));
    }
  }

  void ApplyRoles() {
    std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
    std::stringstream sql;
    sql << in.rdbuf();
    Exec(sql.str());
  }
  std::string Login(const std::string& group) { return dbname() + "_" + group; }
  std::string ConnInfoAs(const std::string& group) { return conninfo() + " user=" + Login(group); }
  // Runs `sql` as `group`'s login; returns "" or the server's error message.
  std::string TryAs(const std::string& group, const std::string& sql) {
    try {
      pqxx::connection c(ConnInfoAs(group));
      pqxx::work txn(c);
      txn.exec(sql);
      txn.commit();
      return "";
    } catch (const std::exception& e) {
      return e.what();
    }
  }
  ProcessResult RekeyAs(const std::string& group, std::vector<std::string> args) {
    args.insert(args.begin(), {"--db", ConnInfoAs(group)});
    return RunRekey(args, WorkerEnv());
  }
};

TEST_F(RolesTest, RolesFileIsIdempotentAndNoRoleIsPrivileged) {
  ApplyRoles();
  for (const char* group : {"worker", "operator", "monitor"}) {
    EXPECT_EQ(
        Scalar("SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls FROM pg_roles "
               "WHERE rolname = '" +
               Login(group) + "'"),
        "f");
  }
}

TEST_F(RolesTest, AStagedRotationRunsWithLeastPrivilege) {
  SeedTinkTable(conn(), "public.cards", 3000, 1);
  ImportTestKeys(conn(), {1, 2});
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  auto before = DecryptAll(conn(), "public.cards");
  // The operator plans the job: it reads the target's keys to cut batches.
  Exec(
      "GRANT USAGE ON SCHEMA public TO rekey_operator; GRANT SELECT ON public.cards TO "
      "rekey_operator");
  ProcessResult r = RekeyAs("operator", {"job", "create", "--table", "public.cards", "--column",
                                         "token", "--key-id-column", "key_id", "--map", "1:2",
                                         "--batch-size", "500", "--stages", "1,100"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = Scalar("SELECT max(job_id) FROM rekey.jobs");
  // Exactly the job's columns for the workers, as the DBA would with \gexec.
  {
    pqxx::work txn(conn());
    for (const auto& row : txn.exec("SELECT rekey.worker_grants(" + job + ")")) {
      txn.exec(row[0].as<std::string>());
    }
    txn.commit();
  }
  EXPECT_EQ(Scalar("SELECT has_column_privilege('" + Login("worker") +
                   "', 'public.cards', 'note', 'SELECT')"),
            "f");

  // Rows are written back by primary key: the grants leave out the system columns.
  EXPECT_EQ(Scalar("SELECT has_column_privilege('" + Login("worker") +
                   "', 'public.cards', 'ctid', 'SELECT')"),
            "f");

  r = RekeyAs("worker", {"work", "--job", job});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "awaiting_approval");
  r = RekeyAs("operator", {"job", "advance", job, "--observe", "0s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RekeyAs("worker", {"work", "--job", job});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 2"), "primary");
  auto after = DecryptAll(conn(), "public.cards");
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [id, value] : after) {
    ASSERT_EQ(value.first, 2u) << id;
    ASSERT_EQ(value.second, before[id].second) << id;
  }
  // Every batch the limited worker completed has its completion event, sealed in the chain.
  EXPECT_EQ(
      Scalar("SELECT count(*) FROM rekey.audit a JOIN rekey.audit_chain USING (audit_id) "
             "WHERE a.job_id = " +
             job + " AND a.action = 'rotation.batch.completed'"),
      Scalar("SELECT count(*) FROM rekey.batches WHERE job_id = " + job + " AND state = 'done'"));

  // The monitor reads progress, and nothing it must not.
  EXPECT_EQ(TryAs("monitor", "SELECT * FROM rekey.progress"), "");
  EXPECT_EQ(TryAs("monitor", "SELECT key_id, status FROM rekey.keys"), "");
  EXPECT_THAT(TryAs("monitor", "SELECT wrapped_key FROM rekey.keys"),
              HasSubstr("permission denied"));
  EXPECT_THAT(TryAs("monitor", "UPDATE rekey.jobs SET state_reason = 'x'"),
              HasSubstr("permission denied"));
  EXPECT_THAT(TryAs("monitor", "SELECT rekey.pause_job(" + job + ")"),
              HasSubstr("permission denied"));
  EXPECT_THAT(TryAs("monitor", "SELECT token FROM public.cards LIMIT 1"),
              HasSubstr("permission denied"));
}

TEST_F(RolesTest, NoRoleCanChangeTheAuditLogOrReachBeyondItsGrants) {
  Exec("SELECT rekey.audit_event('test.event', NULL)");
  SeedTinkTable(conn(), "public.cards", 10, 1);
  ImportTestKeys(conn(), {1, 2});
  for (const char* group : {"worker", "operator", "monitor"}) {
    for (const char* sql : {"UPDATE rekey.audit SET outcome = 'x'", "DELETE FROM rekey.audit",
                            "TRUNCATE rekey.audit", "DELETE FROM rekey.audit_chain",
                            "INSERT INTO rekey.audit_chain SELECT * FROM rekey.audit_chain LIMIT 1",
                            "DELETE FROM rekey.keys", "DROP TABLE rekey.jobs",
                            "UPDATE public.cards SET note = 'x'"}) {
      EXPECT_THAT(TryAs(group, sql),
                  ::testing::AnyOf(HasSubstr("permission denied"), HasSubstr("must be owner")))
          << group << ": " << sql;
    }
  }
  // A worker without its target grants stops at once with a usage error that says what to do,
  // and leaves the batch unharmed.
  Exec(
      "SELECT rekey.create_job('public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => "
      "'key_id', p_stages => '{100}')");
  ProcessResult r = RunRekey({"--db", ConnInfoAs("worker"), "work", "--all"}, WorkerEnv());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("lacks a privilege"));
  EXPECT_THAT(r.err, HasSubstr("rekey.worker_grants"));
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.batches WHERE state <> 'pending' OR attempts > 0"),
            "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM public.cards WHERE key_id <> 1"), "0");
  // The worker may not touch the keyring beyond a status change, nor define jobs.
  EXPECT_THAT(TryAs("worker", "UPDATE rekey.keys SET wrapped_key = '\\x00'"),
              HasSubstr("permission denied"));
  EXPECT_THAT(TryAs("worker", "SELECT rekey.worker_grants(1)"), HasSubstr("permission denied"));
  // Appending to the audit log is allowed, and sealed (through the one SECURITY DEFINER function).
  EXPECT_EQ(TryAs("worker", "SELECT rekey.audit_event('worker.event', NULL)"), "");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.audit a JOIN rekey.audit_chain c USING (audit_id) "
                   "WHERE a.action = 'worker.event' AND a.actor = '" +
                   Login("worker") + "'"),
            "1");
}

TEST_F(RolesTest, AWorkerMovesAJobAlongButCannotChangeWhatItIs) {
  SeedTinkTable(conn(), "public.cards", 100, 1, /*tenants=*/2);
  ImportTestKeys(conn(), {1, 2});
  const std::string job = std::to_string(
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
                   "p_scope_column => 'tenant_id', p_scope_value => '1', p_stages => '{50,100}'"));
  Exec(
      "INSERT INTO rekey.gates (job_id, stage_no, percent, values_checked, decrypt_errors, "
      "quarantined, error_rate, threshold, audit_complete, passed, verified_by) VALUES (" +
      job + ", 1, 50, 10, 5, 0, 0.5, 0.001, true, false, 'test')");
  const std::string where = " WHERE job_id = " + job;
  for (const std::string& sql : std::vector<std::string>{
           // Types pasted into SQL, the rows and keys a job touches, its limits and its plan.
           "UPDATE rekey.jobs SET pk_type = 'text'" + where,
           "UPDATE rekey.jobs SET scope_type = 'text'" + where,
           "UPDATE rekey.jobs SET scope_value = '0'" + where,
           "UPDATE rekey.jobs SET scope_column = 'id'" + where,
           "UPDATE rekey.jobs SET table_name = 'other'" + where,
           "UPDATE rekey.jobs SET pk_column = 'tenant_id'" + where,
           "UPDATE rekey.jobs SET batch_size = 1000000" + where,
           "UPDATE rekey.jobs SET error_threshold = 1" + where,
           "UPDATE rekey.jobs SET stage_plan = '{100}'" + where,
           "UPDATE rekey.jobs SET observe = '0 seconds'" + where,
           "UPDATE rekey.jobs SET max_attempts = 100" + where,
           "UPDATE rekey.job_stages SET bucket_hi = 10000" + where,
           "UPDATE rekey.batches SET lo = '1', hi = '2'" + where,
           "UPDATE rekey.batches SET planned_rows = 0" + where,
           "UPDATE rekey.gates SET passed = true" + where,
           "UPDATE rekey.gates SET decrypt_errors = 0, error_rate = 0" + where,
           "INSERT INTO rekey.job_keys VALUES (" + job + ", 2, 1)",
           "UPDATE rekey.job_keys SET target_key_id = 1" + where,
           "INSERT INTO rekey.job_columns SELECT job_id, 2, target_id FROM rekey.job_columns" +
               where,
           "UPDATE rekey.targets SET scope_value = '0'",
           "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec) "
           "VALUES ('public', 'cards', 'id', 'note', 'tink')",
       }) {
    EXPECT_THAT(TryAs("worker", sql), HasSubstr("permission denied")) << sql;
  }
  // What its own functions write stays writable: the state a job moves through.
  EXPECT_EQ(TryAs("worker", "SELECT rekey.pause_job(" + job + ", 'test')"), "");
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs" + where), "paused");
  EXPECT_EQ(Scalar("SELECT pk_type || ' ' || scope_value || ' ' || batch_size || ' ' || "
                   "error_threshold FROM rekey.jobs" +
                   where),
            "bigint 1 1000 0.001");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.gates WHERE passed AND job_id = " + job), "0");
}

}  // namespace
}  // namespace rekey::testing
