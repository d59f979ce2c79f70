// One rotation across a key's columns (issue 17, item 4; sql/schema/55_rotations.sql) against
// the real PostgreSQL, driven through the rekey binary: a rotation over three tables and four
// columns promotes its new key once, after the last job reached the promotion stage, and rolls
// back as one; bad input is refused with one line, writing nothing; rotate-due creates a
// rotation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

class RotationGroupTest : public PgTest {
 protected:
  // Roles are cluster-wide: a test's worker login (named after its database) goes with it.
  void TearDown() override {
    PgTest::TearDown();
    pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
    pqxx::nontransaction(admin).exec("DROP ROLE IF EXISTS " + dbname() + "_rotation_worker");
  }
  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }
  void Work(const std::vector<std::string>& which) {
    std::vector<std::string> args{"work", "--concurrency", "2"};
    args.insert(args.end(), which.begin(), which.end());
    ProcessResult r = Rekey(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // Keys `ids` in keyring scope `scope`, the first of them primary.
  void ScopeKeys(const std::string& scope, const std::vector<uint32_t>& ids) {
    auto kms = TestKms();
    pqxx::work txn(conn());
    for (uint32_t id : ids) keyring::ImportKey(txn, kms, id, scope, TestDataKey(id));
    txn.exec0("UPDATE rekey.keys SET status = 'primary' WHERE key_id = " + std::to_string(ids[0]));
    txn.commit();
  }
  void RegisterTarget(const std::string& table, const std::string& column,
                      const std::string& key_id_column) {
    Exec(
        "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, "
        "key_id_column) VALUES ('public', '" +
        table + "', 'id', '" + column + "', 'tink', '" + key_id_column + "')");
  }
  // public.people: two encrypted columns, each with its own key-id column (docs/safety.md: a
  // key-id column governs only the columns encrypted under it), values under key `key`.
  void SeedPeople(int rows, uint32_t key) {
    Exec(
        "CREATE TABLE public.people (id bigint PRIMARY KEY, ssn_key int, ssn bytea, dob_key int, "
        "dob bytea)");
    pqxx::work txn(conn());
    for (int id = 1; id <= rows; ++id) {
      txn.exec_params("INSERT INTO public.people VALUES ($1, $2, $3, $2, $4)", id, key,
                      pqxx::binarystring(TinkEncrypt(key, "ssn-" + std::to_string(id))),
                      pqxx::binarystring(TinkEncrypt(key, "dob-" + std::to_string(id))));
    }
    txn.commit();
    RegisterTarget("people", "ssn", "ssn_key");
    RegisterTarget("people", "dob", "dob_key");
  }
  // "column:key:plaintext-ok" problems of public.people: values not under `key`, or not
  // decrypting to what was written, or a key-id column out of step. Empty when all is well.
  std::vector<std::string> PeopleNotUnder(uint32_t key) {
    std::vector<std::string> problems;
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id, ssn_key, ssn, dob_key, dob FROM public.people")) {
      const int64_t id = row["id"].as<int64_t>();
      for (const char* col : {"ssn", "dob"}) {
        uint32_t kid = 0;
        const std::string pt = TinkDecrypt(pqxx::binarystring(row[col]).str(), &kid);
        const uint32_t label = row[std::string(col) + "_key"].as<uint32_t>();
        if (kid != key || label != key || pt != std::string(col) + "-" + std::to_string(id)) {
          problems.push_back(std::string(col) + ":" + std::to_string(id));
        }
      }
    }
    return problems;
  }
  // Rows of a SeedTinkTable table not under `key` with their original plaintext.
  int64_t CardsNotUnder(const std::string& table, uint32_t key) {
    int64_t bad = 0;
    for (const auto& [id, v] : DecryptAll(conn(), table)) {
      if (v.first != key || v.second != PlaintextFor(id)) ++bad;
    }
    return bad + Count("SELECT count(*) FROM " + table + " WHERE key_id <> " + std::to_string(key));
  }
  std::string KeyStatus(uint32_t key) {
    return Scalar("SELECT status FROM rekey.keys WHERE key_id = " + std::to_string(key));
  }
  // Three tables, four columns, all under key 1 of scope "pay"; key 2 enabled in "pay".
  void ThreeTablesFourColumns() {
    ScopeKeys("pay", {1, 2});
    SeedTinkTable(conn(), "public.cards_a", 300, 1);
    SeedTinkTable(conn(), "public.cards_b", 200, 1);
    RegisterTarget("cards_a", "token", "key_id");
    RegisterTarget("cards_b", "token", "key_id");
    SeedPeople(150, 1);
  }
};

TEST_F(RotationGroupTest, ARotationOverThreeTablesAndFourColumnsPromotesOnceAndRollsBackAsOne) {
  ThreeTablesFourColumns();
  ProcessResult r = Rekey({"rotate", "--scope", "pay", "--to", "2", "--stages", "50,100",
                           "--observe", "0s", "--batch-size", "64", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json created = json::parse(r.out);
  const std::string rotation = std::to_string(created["rotation_id"].get<int64_t>());
  EXPECT_EQ(created["state"], "rotating");
  EXPECT_EQ(created["targets"], 4) << "one job per table and key-id column";
  EXPECT_EQ(created["from_keys"], "1");
  EXPECT_EQ(Scalar("SELECT string_agg(j.table_name || coalesce('/' || j.key_id_column, '') || ':' "
                   "|| k.source_key_id || '->' || k.target_key_id || ':' || "
                   "array_to_string(j.stage_plan, ','), ' ' ORDER BY j.job_id) FROM rekey.jobs j "
                   "JOIN rekey.job_keys k USING (job_id) WHERE j.rotation_id = " +
                   rotation),
            "cards_a/key_id:1->2:50,100 cards_b/key_id:1->2:50,100 people/dob_key:1->2:50,100 "
            "people/ssn_key:1->2:50,100");
  std::vector<std::string> jobs;
  for (const auto& row : pqxx::read_transaction(conn()).exec(
           "SELECT job_id FROM rekey.jobs WHERE rotation_id = " + rotation + " ORDER BY job_id")) {
    jobs.push_back(row["job_id"].as<std::string>());
  }
  ASSERT_EQ(jobs.size(), 4u);

  // One job of a rotation is never rolled back alone.
  ProcessResult alone = Rekey({"job", "rollback", jobs[0]});
  EXPECT_EQ(alone.exit_code, 5);
  EXPECT_THAT(alone.err, HasSubstr("is part of rotation " + rotation));

  // The first three jobs run to their last gate and wait there: the key is not promoted while
  // the fourth has not reached the promotion stage.
  for (int i = 0; i < 3; ++i) Work({"--job", jobs[i]});
  EXPECT_EQ(KeyStatus(1), "primary");
  EXPECT_EQ(KeyStatus(2), "enabled");
  EXPECT_EQ(Scalar("SELECT string_agg(state, ',' ORDER BY job_id) FROM rekey.jobs"),
            "awaiting_approval,awaiting_approval,awaiting_approval,active");
  EXPECT_THAT(Scalar("SELECT state_reason FROM rekey.jobs WHERE job_id = " + jobs[2]),
              HasSubstr("waiting for rotation " + rotation + " to promote key 2: job(s) " +
                        jobs[3] + " have not"));
  EXPECT_EQ(Scalar("SELECT waiting FROM rekey.rotation_progress WHERE rotation_id = " + rotation),
            jobs[0] + "," + jobs[1] + "," + jobs[2]);
  ProcessResult advance = Rekey({"job", "advance", jobs[0]});
  EXPECT_THAT(advance.out + advance.err, HasSubstr("waiting for rotation"));
  EXPECT_EQ(KeyStatus(2), "enabled") << "approving a waiting job does not promote";

  // The fourth reaching the promotion stage promotes, once, and sends the others on.
  Work({"--job", jobs[3]});
  EXPECT_EQ(KeyStatus(2), "primary");
  EXPECT_EQ(KeyStatus(1), "decrypt_only");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'rotation.promoted'"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit a WHERE a.action = 'stage.opened' AND "
                  "(a.details->>'stage')::int = 2 AND a.audit_id > (SELECT audit_id FROM "
                  "rekey.audit WHERE action = 'rotation.promoted')"),
            0)
      << "every job had opened its promotion stage before the key was promoted";
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE scope = 'pay' AND status = 'primary'"), 1);
  EXPECT_THAT(Rekey({"status"}).out, HasSubstr("rotation " + rotation + " promoted"));
  Work({"--all"});
  EXPECT_EQ(Scalar("SELECT string_agg(state, ',' ORDER BY job_id) FROM rekey.jobs"),
            "completed,completed,completed,completed");
  EXPECT_EQ(Scalar("SELECT state || ' ' || rows_done || '/' || rows_total FROM "
                   "rekey.rotation_progress WHERE rotation_id = " +
                   rotation),
            "completed 800/800");
  EXPECT_EQ(CardsNotUnder("public.cards_a", 2), 0);
  EXPECT_EQ(CardsNotUnder("public.cards_b", 2), 0);
  EXPECT_THAT(PeopleNotUnder(2), ::testing::IsEmpty());

  ProcessResult status = Rekey({"rotation", "status", rotation});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("rotation " + rotation + " completed"));
  ProcessResult report = Rekey({"rotation", "report", rotation, "--json", "--no-store"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  json rep = json::parse(report.out);
  EXPECT_EQ(rep["rotation"]["state"], "completed");
  ASSERT_EQ(rep["jobs"].size(), 4u);
  for (const auto& j : rep["jobs"]) EXPECT_EQ(j["outcome"], "rotated");

  // The whole rotation rolls back as one: the old key is primary again at once, and every value
  // of the four columns goes back under it.
  r = Rekey({"rotation", "rollback", rotation, "--reason", "latency"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("rolling back 4 job(s)"));
  EXPECT_EQ(KeyStatus(1), "primary");
  EXPECT_EQ(KeyStatus(2), "decrypt_only");
  Work({"--all"});
  EXPECT_EQ(Scalar("SELECT string_agg(state, ',' ORDER BY job_id) FROM rekey.jobs"),
            "rolled_back,rolled_back,rolled_back,rolled_back");
  EXPECT_EQ(Scalar("SELECT state FROM rekey.rotations WHERE rotation_id = " + rotation),
            "rolled_back");
  EXPECT_EQ(CardsNotUnder("public.cards_a", 1), 0);
  EXPECT_EQ(CardsNotUnder("public.cards_b", 1), 0);
  EXPECT_THAT(PeopleNotUnder(1), ::testing::IsEmpty());
  EXPECT_EQ(KeyStatus(1), "primary");
  EXPECT_EQ(Rekey({"rotation", "rollback", rotation}).exit_code, 5) << "nothing left to roll back";
}

// Each refusal: one line on stderr, a non-zero exit, and nothing written.
// Readers (sql/schema/45_readers.sql) hold a rotation as they hold a job: while a live reader of
// the scope lacks the new key, no job of the rotation writes under it and the key is not
// promoted; once the reader reports it, the rotation runs to one promotion.
TEST_F(RotationGroupTest, ALaggingReaderHoldsTheWholeRotationUntilItReportsTheNewKey) {
  ThreeTablesFourColumns();
  Exec("SELECT rekey.reader_heartbeat('billing-pod-1', 'pay', '{1}')");
  ProcessResult r = Rekey({"rotate", "--scope", "pay", "--to", "2", "--stages", "50,100",
                           "--observe", "0s", "--batch-size", "64", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string rotation = std::to_string(json::parse(r.out)["rotation_id"].get<int64_t>());

  ChildProcess worker({REKEY_BINARY, "--db", conninfo(), "work", "--all", "--concurrency", "2"},
                      WorkerEnv());
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches b JOIN rekey.jobs j USING (job_id) "
                  "WHERE j.rotation_id = " +
                  rotation + " AND b.attempts > 0"),
            0)
      << "no batch of the rotation is claimed while billing-pod-1 lacks key 2";
  EXPECT_EQ(KeyStatus(2), "enabled");
  EXPECT_THAT(Scalar("SELECT string_agg(DISTINCT readers_waiting_for, ',') FROM rekey.jobs "
                     "WHERE rotation_id = " +
                     rotation),
              "first_batch");

  Exec("SELECT rekey.reader_heartbeat('billing-pod-1', 'pay', '{1,2}')");
  ProcessResult done = worker.Wait(240);
  ASSERT_EQ(done.exit_code, 0) << done.err;
  EXPECT_EQ(KeyStatus(2), "primary");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'rotation.promoted'"), 1);
  EXPECT_EQ(Scalar("SELECT string_agg(state, ',') FROM (SELECT DISTINCT state FROM rekey.jobs "
                   "WHERE rotation_id = " +
                   rotation + ") s"),
            "completed");
  EXPECT_EQ(CardsNotUnder("public.cards_a", 2), 0);
  EXPECT_EQ(CardsNotUnder("public.cards_b", 2), 0);
  EXPECT_THAT(PeopleNotUnder(2), ::testing::IsEmpty());
}

// One job of a rotation cancelled alone would hold the others' promotion forever (every job
// must reach its promotion stage): refused, naming the rotation; the rotation is cancelled as one.
TEST_F(RotationGroupTest, OneJobOfARotationIsNotCancelledAloneTheRotationIsCancelledAsOne) {
  ThreeTablesFourColumns();
  ProcessResult r = Rekey({"rotate", "--scope", "pay", "--to", "2", "--stages", "50,100",
                           "--observe", "0s", "--batch-size", "64", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string rotation = std::to_string(json::parse(r.out)["rotation_id"].get<int64_t>());
  const std::string first =
      Scalar("SELECT min(job_id) FROM rekey.jobs WHERE rotation_id = " + rotation);
  const std::string states =
      "SELECT string_agg(DISTINCT state, ',') FROM rekey.jobs WHERE rotation_id = " + rotation;
  const std::string before = Scalar(states);
  const int64_t audit_before = Count("SELECT count(*) FROM rekey.audit");

  ProcessResult cancel = Rekey({"job", "cancel", first});
  EXPECT_NE(cancel.exit_code, 0);
  EXPECT_THAT(cancel.err, HasSubstr("job " + first + " is part of rotation " + rotation +
                                    ": cancel the whole rotation (SELECT rekey.cancel_rotation(" +
                                    rotation + "))"));
  EXPECT_EQ(std::count(cancel.err.begin(), cancel.err.end(), '\n'), 1) << cancel.err;
  EXPECT_EQ(Scalar(states), before);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit"), audit_before);

  {
    pqxx::work txn(conn());
    EXPECT_EQ(
        txn.exec1("SELECT rekey.cancel_rotation(" + rotation + ", 'test')")[0].as<std::string>(),
        "rotation " + rotation + ": cancelled 4 job(s)");
    txn.commit();
  }
  EXPECT_EQ(Scalar(states), "cancelled");
  EXPECT_EQ(Scalar("SELECT state FROM rekey.rotations WHERE rotation_id = " + rotation),
            "cancelled");
  EXPECT_EQ(KeyStatus(1), "primary");
  EXPECT_EQ(KeyStatus(2), "enabled");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'rotation.cancel'"), 1);
  EXPECT_THROW(Exec("SELECT rekey.cancel_rotation(" + rotation + ")"), pqxx::sql_error);
  // A job of no rotation is cancelled as before.
  const int64_t alone = CreateJobSql(
      conn(), "'public.cards_a', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id'");
  pqxx::work txn(conn());
  EXPECT_THAT(
      txn.exec1("SELECT rekey.cancel_job(" + std::to_string(alone) + ")")[0].as<std::string>(),
      HasSubstr("-> cancelled"));
}

TEST_F(RotationGroupTest, BadInputIsRefusedWithOneLineAndNothingWritten) {
  ThreeTablesFourColumns();
  ScopeKeys("other", {5});
  ScopeKeys("idle", {6, 7});  // keys, but no values anywhere
  Exec(
      "INSERT INTO rekey.keys (key_id, scope, kms_provider, kms_key_ref, wrapped_key, status) "
      "SELECT 8, 'pay', kms_provider, kms_key_ref, wrapped_key, 'enabled' FROM rekey.keys WHERE "
      "key_id = 2; UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = 8");
  // A job of its own already moves cards_a to key 2 (promoting it only at its second stage).
  const int64_t busy = CreateJobSql(conn(),
                                    "'public.cards_a', ARRAY['token'], '{\"1\": 2}', "
                                    "p_key_id_column => 'key_id', p_stages => '{50,100}'");
  const int64_t audit_before = Count("SELECT count(*) FROM rekey.audit");
  const int64_t keys_before = Count("SELECT count(*) FROM rekey.keys");

  struct Case {
    std::vector<std::string> args;
    int exit_code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--scope", "nowhere", "--to", "2"}, 2, "scope 'nowhere' has no keys"},
      {{"--scope", "pay", "--to", "5"}, 2, "key 5 is in scope 'other', not 'pay'"},
      {{"--scope", "pay", "--to", "8"}, 2, "key 8 is decrypt_only"},
      {{"--scope", "pay", "--to", "99"}, 2, "unknown target key 99"},
      {{"--scope", "pay"}, 2, "--to KEY"},
      {{"--scope", "pay", "--to", "2", "--new-key"}, 2, "--to KEY"},
      {{"--scope", "idle", "--to", "7"}, 5, "scope 'idle' has no registered values"},
      {{"--scope", "pay", "--to", "2"},
       5,
       "job " + std::to_string(busy) + " (active) is still rotating public.cards_a.token"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args{"rotate"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    ProcessResult r = Rekey(args);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.says << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.says));
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.rotations"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit"), audit_before);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys"), keys_before);

  // An unregistered column holding values under the scope's key is named, and --register takes
  // it into the rotation.
  Exec("SELECT rekey.cancel_job(" + std::to_string(busy) + ")");
  SeedTinkTable(conn(), "public.legacy", 40, 1);
  ProcessResult r = Rekey({"rotate", "--scope", "pay", "--to", "2"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("column public.legacy.token holds 40 values under key 1 and is "
                               "not registered: register it with --register public.legacy.token"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.rotations"), 0);
  r = Rekey({"rotate", "--scope", "pay", "--to", "2", "--register", "public.legacy.token",
             "--stages", "100", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json created = json::parse(r.out);
  EXPECT_EQ(created["targets"], 5);
  r = Rekey({"rotate", "--scope", "pay", "--new-key"});
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_THAT(r.err, HasSubstr("rotation " + created["rotation_id"].dump() +
                               " of scope 'pay' is unfinished"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys"), keys_before) << "--new-key rolled back";
}

TEST_F(RotationGroupTest, RotateDueCreatesOneRotationPerScope) {
  ScopeKeys("due", {1});
  Exec("UPDATE rekey.keys SET max_age = '1 second' WHERE key_id = 1");
  SeedTinkTable(conn(), "public.cards_x", 120, 1);
  SeedTinkTable(conn(), "public.cards_y", 80, 1);
  RegisterTarget("cards_x", "token", "key_id");
  RegisterTarget("cards_y", "token", "key_id");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));

  ProcessResult r = Rekey({"rotate-due", "--observe", "0s", "--stages", "10,100", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json out = json::parse(r.out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0]["action"], "scheduled");
  EXPECT_EQ(out[0]["rotation"], 1);
  EXPECT_EQ(out[0]["jobs"], json::array({1, 2}));
  EXPECT_EQ(Scalar("SELECT string_agg(rotation_id::text, ',' ORDER BY job_id) FROM rekey.jobs"),
            "1,1");
  Work({"--all"});
  EXPECT_EQ(Scalar("SELECT state FROM rekey.rotations"), "completed");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'rotation.promoted'"), 1);
  EXPECT_EQ(KeyStatus(2), "primary");
  // Key 2 was generated by the KMS: its values are checked by their prefix and key-id column.
  for (const char* t : {"public.cards_x", "public.cards_y"}) {
    EXPECT_EQ(Count(std::string("SELECT count(*) FROM ") + t +
                    " WHERE substring(token from 2 for 4) <> int4send(2) OR key_id <> 2"),
              0);
  }
  ProcessResult status = Rekey({"status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
}

// The grants of sql/roles.sql suffice: a worker login (rekey_worker, and the job's own column
// grants) runs a rotation to its one promotion and completion.
TEST_F(RotationGroupTest, AWorkerWithLeastPrivilegeRunsARotationToItsPromotion) {
  std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
  std::stringstream roles;
  roles << in.rdbuf();
  Exec(roles.str());
  const std::string login = dbname() + "_rotation_worker";
  Exec("DROP ROLE IF EXISTS " + login + "; CREATE ROLE " + login + " LOGIN IN ROLE rekey_worker");
  ScopeKeys("pay", {1, 2});
  SeedTinkTable(conn(), "public.cards_a", 200, 1);
  SeedTinkTable(conn(), "public.cards_b", 100, 1);
  RegisterTarget("cards_a", "token", "key_id");
  RegisterTarget("cards_b", "token", "key_id");
  ProcessResult r =
      Rekey({"rotate", "--scope", "pay", "--to", "2", "--stages", "10,100", "--observe", "0s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  {
    pqxx::work txn(conn());
    for (const char* job : {"1", "2"}) {
      for (const auto& row : txn.exec(std::string("SELECT rekey.worker_grants(") + job + ")")) {
        txn.exec(row[0].as<std::string>());
      }
    }
    txn.commit();
  }
  r = RunRekey({"--db", conninfo() + " user=" + login, "work", "--all"}, WorkerEnv());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state || ' ' || (promoted_at IS NOT NULL) FROM rekey.rotations"),
            "completed true");
  EXPECT_EQ(KeyStatus(2), "primary");
  EXPECT_EQ(CardsNotUnder("public.cards_a", 2) + CardsNotUnder("public.cards_b", 2), 0);
}

}  // namespace
}  // namespace rekey::testing
