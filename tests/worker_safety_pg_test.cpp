// Key safety of the batch path, against the real PostgreSQL with real `rekey work` processes: no
// value is ever written under a key that is retired or destroyed, a batch waits for a retire or
// destroy in progress on a key it writes under, row-level security that hides rows stops the
// worker, its gates and `rekey job verify` before they count hidden rows as absent, and the worker
// never pastes the types stored in rekey.jobs into its SQL; and the batch's compare-and-swap keeps
// an application's write made between the batch's read and its UPDATE (docs/safety.md,
// invariant 3).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "crypto/text_encoding.h"
#include "db/identifiers.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation/gate.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class WorkerSafetyTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
    Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  }
  void TearDown() override {
    PgTest::TearDown();
    if (!login_.empty()) {
      pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
      pqxx::nontransaction txn(admin);
      txn.exec("DROP ROLE IF EXISTS " + login_);
    }
  }

  std::string Job(const std::string& args) { return std::to_string(CreateJobSql(conn(), args)); }
  ProcessResult Rekey(const std::string& db, const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", db};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }
  std::unique_ptr<ChildProcess> StartWorker(const std::string& job) {
    return std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", conninfo(), "work", "--job", job},
        WorkerEnv());
  }

  // A login role in rekey_worker (sql/roles.sql) with job `job`'s target grants: neither superuser
  // nor the table's owner, so row-level security applies to it. Returns its conninfo.
  std::string WorkerLogin(const std::string& job) {
    std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
    std::stringstream sql;
    sql << in.rdbuf();
    Exec(sql.str());
    login_ = dbname() + "_worker";
    Exec("DROP ROLE IF EXISTS " + login_ + "; CREATE ROLE " + login_ +
         " LOGIN IN ROLE rekey_worker");
    pqxx::work txn(conn());
    for (const auto& row : txn.exec("SELECT rekey.worker_grants(" + job + ")")) {
      txn.exec(row[0].as<std::string>());
    }
    txn.commit();
    return conninfo() + " user=" + login_;
  }

  // Every value of public.cards: how many are under `key`, and whether all still decrypt to what
  // SeedTinkTable wrote.
  int64_t ValuesUnder(uint32_t key) {
    int64_t n = 0;
    for (const auto& [id, value] : DecryptAll(conn(), "public.cards")) {
      EXPECT_EQ(value.second, PlaintextFor(id)) << "row " << id;
      if (value.first == key) ++n;
    }
    return n;
  }

  // Waits until `worker`'s backend waits for a lock (a row the test's open transaction holds).
  void WaitUntilBlocked(ChildProcess* worker) {
    bool blocked = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!blocked && worker->Running() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      blocked = Count(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'rekey-worker%' AND wait_event_type = 'Lock'") > 0;
    }
    ASSERT_TRUE(blocked) << worker->Wait(5).err;
  }

  // Sets key `key` retired with the table's triggers off, as a superuser could: the status
  // change the lifecycle trigger would refuse.
  void RetireBehindTheLifecycleTrigger(uint32_t key) {
    Exec(
        "SET LOCAL session_replication_role = replica; UPDATE rekey.keys SET status = 'retired' "
        "WHERE key_id = " +
        std::to_string(key));
  }

  std::string login_;
};

TEST_F(WorkerSafetyTest, NoValueIsWrittenUnderATargetKeyRetiredAfterTheJobWasCreated) {
  SeedTinkTable(conn(), "public.cards", 3000, 1);
  // Staged: key 2 stays enabled until the last stage opens.
  const std::string job =
      Job("'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
          "p_batch_size => 500, p_stages => '{50,100}', p_observe => '0 seconds'");
  // The lifecycle trigger refuses this retire (an unfinished job names key 2:
  // KeyRetireSafetyTest.AnUnfinishedJobNamingTheKeyBlocksRetire). The worker's own check is the
  // second line of defence, for a status changed behind the trigger's back (a superuser with
  // triggers disabled, a restore), so the test changes it so.
  RetireBehindTheLifecycleTrigger(2);

  ProcessResult r = Rekey(conninfo(), {"work", "--job", job});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err, HasSubstr("job " + job + " paused: batch " + job + "/"));
  EXPECT_THAT(r.err, HasSubstr("key 2 is retired: rekey writes no value under it"));
  EXPECT_EQ(ValuesUnder(2), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id <> 1"), 0);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "paused");
  EXPECT_THAT(Scalar("SELECT state_reason FROM rekey.jobs WHERE job_id = " + job),
              HasSubstr("key 2 is retired"));
  // The batch in hand was released as a permanent error, and nothing else was claimed.
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + job +
                  " AND (state <> 'pending' OR rows_done > 0)"),
            0);
  EXPECT_EQ(Scalar("SELECT string_agg(batch_no || ':' || attempts, ',') FROM rekey.batches WHERE "
                   "job_id = " +
                   job + " AND last_error LIKE '%key 2 is retired%'"),
            Scalar("SELECT min(batch_no) || ':1' FROM rekey.batches WHERE job_id = " + job));

  // The way back the reason names: the key readable again, the job resumed, and it completes.
  Exec("UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = 2");
  ASSERT_EQ(Rekey(conninfo(), {"job", "resume", job}).exit_code, 0);
  r = Rekey(conninfo(), {"work", "--job", job});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  EXPECT_EQ(ValuesUnder(2), 3000);
}

TEST_F(WorkerSafetyTest, ABatchWaitsForARetireInProgressOnItsKeyAndThenWritesNothing) {
  SeedTinkTable(conn(), "public.cards", 2000, 1);
  const std::string job =
      Job("'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
          "p_batch_size => 500, p_stages => '{50,100}'");
  // A retire of key 2 in progress: it holds the key's lifecycle lock until it commits.
  pqxx::connection lifecycle(conninfo());
  pqxx::work retire(lifecycle);
  retire.exec("SELECT rekey.lock_key_for_lifecycle(2)");

  auto worker = StartWorker(job);
  bool waiting = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!waiting && worker->Running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    waiting = Count(
                  "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND application_name LIKE 'rekey-worker%' AND wait_event_type = 'Lock' "
                  "AND wait_event = 'advisory'") > 0;
  }
  ASSERT_TRUE(waiting) << "the batch did not wait for the key's lifecycle lock: "
                       << worker->Wait(5).err;
  // While it waits it has locked nothing of the batch and written nothing.
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id <> 1"), 0);
  EXPECT_EQ(
      Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + job + " AND state = 'done'"), 0);

  // Behind the lifecycle trigger, which refuses it while job 1 is unfinished (see above).
  retire.exec("SET LOCAL session_replication_role = replica");
  retire.exec("UPDATE rekey.keys SET status = 'retired' WHERE key_id = 2");
  retire.commit();
  ProcessResult r = worker->Wait(60);
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err, HasSubstr("key 2 is retired"));
  EXPECT_EQ(ValuesUnder(2), 0);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "paused");
  EXPECT_EQ(
      Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + job + " AND state <> 'pending'"),
      0);
}

TEST_F(WorkerSafetyTest, ARollbackLocksTheSourceKeysItWritesUnder) {
  ImportTestKeys(conn(), {3});
  SeedTinkTable(conn(), "public.cards", 1000, 1);
  const std::string first =
      Job("'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
          "p_batch_size => 250, p_stages => '{100}'");
  ASSERT_EQ(Rekey(conninfo(), {"work", "--job", first}).exit_code, 0);
  ASSERT_EQ(ValuesUnder(2), 1000);
  ASSERT_EQ(Rekey(conninfo(), {"job", "rollback", first}).exit_code, 0);
  // A rollback writes under key 1; key 2, which it moves values away from, is not locked.
  {
    pqxx::connection lifecycle(conninfo());
    pqxx::work hold(lifecycle);
    hold.exec("SELECT rekey.lock_key_for_lifecycle(2)");
    ProcessResult r = Rekey(conninfo(), {"work", "--job", first});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + first), "rolled_back");
    EXPECT_EQ(ValuesUnder(1), 1000);
  }

  const std::string second =
      Job("'public.cards', ARRAY['token'], '{\"1\": 3}', p_key_id_column => 'key_id', "
          "p_batch_size => 250, p_stages => '{100}'");
  ASSERT_EQ(Rekey(conninfo(), {"work", "--job", second}).exit_code, 0);
  ASSERT_EQ(ValuesUnder(3), 1000);
  ASSERT_EQ(Rekey(conninfo(), {"job", "rollback", second}).exit_code, 0);
  // rollback_job made key 1 primary again; it is retired behind the lifecycle trigger (which
  // refuses it while the rolling-back job names key 1) before the workers run.
  Exec("UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = 1");
  RetireBehindTheLifecycleTrigger(1);
  ProcessResult r = Rekey(conninfo(), {"work", "--job", second});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err, HasSubstr("key 1 is retired"));
  EXPECT_EQ(ValuesUnder(1), 0);
  EXPECT_EQ(ValuesUnder(3), 1000);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + second), "paused");
}

TEST_F(WorkerSafetyTest, ABatchWhoseStageClosedBeforeItCommittedIsLostNotFailed) {
  SeedTinkTable(conn(), "public.cards", 1000, 1);
  const std::string job =
      Job("'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
          "p_batch_size => 500, p_stages => '{100}'");
  // What rekey.checkpoint_batch and rekey.complete_batch answer for a batch whose stage is no
  // longer the job's open stage: SQLSTATE 40001, "no longer claimed".
  Exec(R"sql(
    CREATE FUNCTION public.refuse_closed_stage() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.stage_no <> (SELECT current_stage FROM rekey.jobs WHERE job_id = NEW.job_id) THEN
        RAISE EXCEPTION 'batch %/% is no longer claimed by worker %', NEW.job_id, NEW.batch_no,
          NEW.worker_id USING ERRCODE = 'serialization_failure';
      END IF;
      RETURN NEW;
    END $$;
    CREATE TRIGGER refuse_closed_stage BEFORE UPDATE ON rekey.batches FOR EACH ROW
      WHEN (OLD.state = 'running' AND NEW.state IN ('running', 'done')
            AND NEW.worker_id = OLD.worker_id)
      EXECUTE FUNCTION public.refuse_closed_stage();)sql");
  // The worker's first batch blocks on a row the application holds; meanwhile the job is rolled
  // back, which closes the batch's stage.
  pqxx::connection application(conninfo());
  auto hold = std::make_unique<pqxx::work>(application);
  hold->exec("SELECT 1 FROM public.cards WHERE id = 250 FOR UPDATE");
  auto worker = StartWorker(job);
  WaitUntilBlocked(worker.get());
  ProcessResult r = Rekey(conninfo(), {"job", "rollback", job});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  hold->commit();

  r = worker->Wait(60);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("batch attempt failed")));
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "rolled_back");
  EXPECT_EQ(ValuesUnder(1), 1000);
  // Nothing of the lost batch was written, and it is not marked as having failed.
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.batches WHERE job_id = " + job +
                   " AND (last_error IS NOT NULL OR state = 'failed')"),
            "0");
}

// The batch reads its rows without locking them and writes each back only if it still holds the
// value read. The application's write here comes between the two, deterministically: its
// transaction has updated row 250 but not committed, so the batch's SELECT reads the row's
// committed value and its UPDATE waits for the row; then the application commits. The UPDATE
// re-checks the row's newest version and must leave it as the application wrote it. Without the
// compare-and-swap the UPDATE would match the row by key alone and put the old plaintext back
// under key 2: the application's write would be lost.
TEST_F(WorkerSafetyTest, AnApplicationWriteBetweenTheBatchsReadAndItsUpdateWins) {
  SeedTinkTable(conn(), "public.cards", 1000, 1);
  const std::string job =
      Job("'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
          "p_batch_size => 500, p_stages => '{100}'");
  pqxx::connection application(conninfo());
  auto write = std::make_unique<pqxx::work>(application);
  write->exec_params("UPDATE public.cards SET token = $1 WHERE id = 250",
                     pqxx::binarystring(TinkEncrypt(1, "written-by-the-application")));
  auto worker = StartWorker(job);
  WaitUntilBlocked(worker.get());
  write->commit();
  ProcessResult r = worker->Wait(60);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  // The first batch read row 250 and did not write it: it counts as skipped, not done.
  EXPECT_EQ(
      Scalar("SELECT rows_done || ' ' || rows_skipped FROM rekey.batches WHERE job_id = " + job +
             " AND batch_no = (SELECT min(batch_no) FROM rekey.batches WHERE job_id = " + job +
             ")"),
      "499 1");
  // The application's value survived, and the sweep moved it to key 2 afterwards.
  for (const auto& [id, value] : DecryptAll(conn(), "public.cards")) {
    ASSERT_EQ(value.second, id == 250 ? "written-by-the-application" : PlaintextFor(id))
        << "row " << id;
    ASSERT_EQ(value.first, 2u) << "row " << id;
  }
}

// A JSON column is compared by the string at its path, not by the document: the application's
// write to another field of the document between the read and the UPDATE neither stops the
// field's rotation (the row is written, not skipped) nor is undone (jsonb_set writes into the
// row's newest version); its write to the field itself wins as for any column.
TEST_F(WorkerSafetyTest, AJsonColumnComparesTheFieldSoWritesToOtherFieldsDoNotSkipTheRow) {
  auto token = [](const std::string& plaintext) {
    std::string text;
    const std::string binary = TinkEncrypt(1, plaintext);
    crypto::EncodeText(crypto::TextEncoding::kBase64,
                       reinterpret_cast<const uint8_t*>(binary.data()), binary.size(),
                       crypto::TextStyle{true}, &text);
    return text;
  };
  {
    std::vector<std::string> ids, docs;
    for (int id = 1; id <= 100; ++id) {
      ids.push_back(std::to_string(id));
      docs.push_back(
          nlohmann::json({{"payment", {{"token", token(PlaintextFor(id))}}}, {"counter", 0}})
              .dump());
    }
    pqxx::work txn(conn());
    txn.exec0("CREATE TABLE public.docs (id bigint PRIMARY KEY, doc jsonb)");
    txn.exec_params("INSERT INTO public.docs SELECT * FROM unnest($1::bigint[], $2::jsonb[])",
                    db::TextArrayLiteral(ids), db::TextArrayLiteral(docs));
    txn.commit();
  }
  const std::string job =
      Job("'public.docs', ARRAY['doc'], '{\"1\": 2}', p_json_path => '{payment,token}', "
          "p_encoding => 'base64', p_batch_size => 100, p_stages => '{100}'");
  pqxx::connection application(conninfo());
  auto write = std::make_unique<pqxx::work>(application);
  write->exec("UPDATE public.docs SET doc = jsonb_set(doc, '{counter}', '1') WHERE id = 10");
  write->exec_params(
      "UPDATE public.docs SET doc = jsonb_set(doc, '{payment,token}', to_jsonb($1::text)) WHERE id "
      "= 20",
      token("written-by-the-application"));
  auto worker = StartWorker(job);
  WaitUntilBlocked(worker.get());
  write->commit();
  ProcessResult r = worker->Wait(60);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  // Only row 20, whose field the application wrote, was skipped by the rollout's batch.
  EXPECT_EQ(
      Scalar("SELECT rows_done || ' ' || rows_skipped FROM rekey.batches WHERE job_id = " + job +
             " AND batch_no = (SELECT min(batch_no) FROM rekey.batches WHERE job_id = " + job +
             ")"),
      "99 1");
  pqxx::read_transaction txn(conn());
  for (const auto& row : txn.exec("SELECT id, doc::text AS doc FROM public.docs ORDER BY id")) {
    const int64_t id = row["id"].as<int64_t>();
    const nlohmann::json doc = nlohmann::json::parse(row["doc"].as<std::string>());
    EXPECT_EQ(doc["counter"].get<int>(), id == 10 ? 1 : 0) << "row " << id;
    Bytes binary;
    ASSERT_TRUE(crypto::DecodeText(crypto::TextEncoding::kBase64,
                                   doc["payment"]["token"].get<std::string>(), &binary));
    uint32_t key_id = 0;
    EXPECT_EQ(TinkDecrypt(std::string(binary.begin(), binary.end()), &key_id),
              id == 20 ? "written-by-the-application" : PlaintextFor(id))
        << "row " << id;
    EXPECT_EQ(key_id, 2u) << "row " << id;
  }
}

class RowSecurityTest : public WorkerSafetyTest {
 protected:
  // public.cards with 2000 rows under key 1, a staged job on it, and a policy that shows only the
  // even ids to everyone but the owner (this test's superuser).
  void SetUp() override {
    WorkerSafetyTest::SetUp();
    SeedTinkTable(conn(), "public.cards", 2000, 1);
    job_ =
        Job("'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
            "p_batch_size => 250, p_stages => '{50,100}'");
    worker_ = WorkerLogin(job_);
    Exec(
        "ALTER TABLE public.cards ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY even_rows ON public.cards USING (id % 2 = 0)");
  }

  void ExpectRowSecurityRefusal(const ProcessResult& r) {
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_THAT(r.err, HasSubstr("row-level security on cards hides rows from role " + login_ +
                                 ": ALTER ROLE " + login_ + " BYPASSRLS"));
  }

  std::string job_;
  std::string worker_;
};

TEST_F(RowSecurityTest, JobCreateRefusesATableWhosePoliciesHideRowsFromItsRole) {
  // An operator that is neither the owner nor BYPASSRLS would plan only the rows it sees.
  Exec("GRANT rekey_operator TO " + login_);
  for (const char* create :
       {"rekey.create_job('public.cards', ARRAY['token'], '{\"1\": 2}', "
        "p_key_id_column => 'key_id')",
        "rekey.create_transit_job('public.cards', ARRAY['token'], 'transit/keys/app', 1)"}) {
    pqxx::work txn(conn());
    txn.exec("SET LOCAL ROLE " + login_);
    try {
      txn.exec(std::string("SELECT ") + create);
      ADD_FAILURE() << create << " planned through a policy that hides half of the rows";
    } catch (const pqxx::sql_error& e) {
      EXPECT_EQ(e.sqlstate(), "42P16") << e.what();
      EXPECT_THAT(e.what(), HasSubstr("row-level security on cards hides rows from role " + login_ +
                                      ": ALTER ROLE " + login_ + " BYPASSRLS"));
    }
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 1);
}

TEST_F(RowSecurityTest, AWorkerWhoseRoleCannotSeeEveryRowClaimsNothing) {
  ProcessResult r = Rekey(worker_, {"work", "--job", job_});
  ExpectRowSecurityRefusal(r);
  EXPECT_EQ(ValuesUnder(1), 2000);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + job_ +
                  " AND (state <> 'pending' OR attempts > 0)"),
            0);
  r = Rekey(worker_, {"work", "--all"});
  ExpectRowSecurityRefusal(r);

  // With the grant the message names, the same role rotates every row.
  Exec("ALTER ROLE " + login_ + " BYPASSRLS; UPDATE rekey.jobs SET observe = '0 seconds'");
  r = Rekey(worker_, {"work", "--job", job_});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job_), "completed");
  EXPECT_EQ(ValuesUnder(2), 2000);
}

TEST_F(RowSecurityTest, JobVerifyRefusesToCountThroughAPolicy) {
  ProcessResult r = Rekey(worker_, {"job", "verify", job_});
  ExpectRowSecurityRefusal(r);
  EXPECT_EQ(r.out, "");
  r = Rekey(worker_, {"job", "verify", job_, "--json"});
  ExpectRowSecurityRefusal(r);
  // The owner sees every row.
  r = Rekey(conninfo(), {"job", "verify", job_});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("2000 values: 0 under target keys, 2000 under source keys"));
}

TEST_F(RowSecurityTest, AGateRefusesToVerifyThroughAPolicyAndRecordsNothing) {
  // The owner, to whom no policy applies, moves the first stage; its gate passes.
  ProcessResult r = Rekey(conninfo(), {"work", "--job", job_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job_), "awaiting_approval");
  // The stage waits for its gate again (as after a failed gate and a resume), and the limited
  // role's worker picks it up.
  Exec("UPDATE rekey.jobs SET state = 'verifying' WHERE job_id = " + job_);
  const int64_t gates = Count("SELECT count(*) FROM rekey.gates WHERE job_id = " + job_);
  pqxx::connection limited(worker_);
  const rotation::DataKeySource keys = [](uint32_t id) { return TestDataKey(id); };
  try {
    rotation::RunNextGate(limited, std::stoll(job_), keys, "gate-test");
    ADD_FAILURE() << "the gate verified through a policy that hides half of the rows";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("row-level security on cards hides rows from role " + login_));
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.gates WHERE job_id = " + job_), gates);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job_), "verifying");
}

TEST_F(WorkerSafetyTest, TheTypesStoredInAJobAreNeverPastedIntoTheWorkersSql) {
  SeedTinkTable(conn(), "public.cards", 1200, 1, /*tenants=*/3);
  const std::string job =
      Job("'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
          "p_scope_column => 'tenant_id', p_scope_value => '1', p_batch_size => 100, "
          "p_stages => '{100}'");
  // What a role allowed to UPDATE rekey.jobs could write: the worker casts with the catalog's
  // types and refuses a job whose recorded type disagrees, so the text never runs.
  Exec(
      "UPDATE rekey.jobs SET scope_type = 'integer OR true' WHERE "
      "job_id = " +
      job);
  ProcessResult r = Rekey(conninfo(), {"work", "--job", job});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cannot load job " + job +
                               ": the job records type 'integer OR "
                               "true'"));
  EXPECT_THAT(r.err, HasSubstr("rekey.jobs was edited"));
  // A definition problem, not the batches' fault: the job waits for a person, no attempt used.
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "active");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + job +
                  " AND (state <> 'pending' OR attempts > 0)"),
            0);
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE tenant_id <> 1 AND key_id <> 1"), 0)
      << "rows outside the job's scope were rewritten";
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id <> 1"), 0);
  r = Rekey(conninfo(), {"job", "verify", job});
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.err, HasSubstr("rekey.jobs was edited"));
}

}  // namespace
}  // namespace rekey::testing
