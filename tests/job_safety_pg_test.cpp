// Job definitions that cannot lose data (issue 15, "Key safety"), against the real PostgreSQL and
// real `rekey` processes: canonical scope values, key-id columns that govern several columns,
// jobs that would collide, batches that would overtake a rollback, and the rollback's sweeps.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class JobSafetyTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }

  void ImportKeyInScope(uint32_t id, const std::string& scope) {
    auto kms = TestKms();
    pqxx::work txn(conn());
    keyring::ImportKey(txn, kms, id, scope, TestDataKey(id));
    txn.commit();
  }

  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }

  void Work(int64_t job) {
    ProcessResult r = Rekey({"work", "--job", std::to_string(job)});
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }

  std::string JobState(int64_t job) {
    return Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(job));
  }

  // Every value of public.cards decrypts under `key` to its expected plaintext.
  void ExpectAllUnder(uint32_t key, const std::map<int64_t, std::string>& rewritten = {}) {
    for (const auto& [id, value] : DecryptAll(conn(), "public.cards")) {
      auto it = rewritten.find(id);
      ASSERT_EQ(value.first, key) << "row " << id;
      ASSERT_EQ(value.second, it == rewritten.end() ? PlaintextFor(id) : it->second)
          << "row " << id;
    }
  }

  // Rewrites the rows of public.cards with ids in [lo, hi) (NULL bounds: unbounded) under `key`,
  // in `txn`, as a worker's chunk would. Returns the last id written.
  int64_t RewriteRange(pqxx::transaction_base& txn, const pqxx::field& lo, const pqxx::field& hi,
                       uint32_t key) {
    int64_t last = 0;
    for (const auto& row : txn.exec_params(
             "SELECT id FROM public.cards WHERE ($1::bigint IS NULL OR id >= $1::bigint)"
             " AND ($2::bigint IS NULL OR id < $2::bigint) ORDER BY id",
             lo.is_null() ? nullptr : lo.c_str(), hi.is_null() ? nullptr : hi.c_str())) {
      last = row[0].as<int64_t>();
      txn.exec_params("UPDATE public.cards SET token = $1, key_id = $2 WHERE id = $3",
                      pqxx::binarystring(TinkEncrypt(key, PlaintextFor(last))), key, last);
    }
    return last;
  }
};

// The key census compares the scope column's text form with the stored scope value. A scope
// typed in another spelling of the same value ('8F14E45F-...' for a uuid, '042' for an integer)
// used to be stored as typed: the job rotated the scope's rows (the workers compare typed
// values), but the census counted nothing under the old key, so retiring it looked safe.
TEST_F(JobSafetyTest, ScopeValuesAreStoredInTheTypesOwnTextForm) {
  SeedTinkTable(conn(), "public.cards", 300, 1, 3);
  Exec("ALTER TABLE public.cards ADD COLUMN tenant uuid");
  Exec(
      "UPDATE public.cards SET tenant = CASE WHEN tenant_id = 1 THEN "
      "'8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e'::uuid ELSE gen_random_uuid() END");
  const int64_t tenant_rows = Count("SELECT count(*) FROM public.cards WHERE tenant_id = 1");
  ProcessResult r =
      Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--map", "1:2",
             "--scope", "tenant=8F14E45F-CEEA-467F-A0E6-0D3C5A3B1B2E", "--stages", "100"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT scope_value FROM rekey.jobs"), "8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e");
  EXPECT_EQ(Scalar("SELECT scope_value FROM rekey.targets"),
            "8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e");
  EXPECT_GT(tenant_rows, 0);
  EXPECT_EQ(Count("SELECT coalesce(sum(n), 0) FROM rekey.key_usage(1)"),
            Count("SELECT count(*) FROM public.cards"))
      << "key usage counts the whole column under key 1, the scope's values included";
  ASSERT_EQ(Rekey({"job", "cancel", "1"}).exit_code, 0);

  // An integer scope: '042' is tenant 42, and a second job on it reuses the same target.
  Exec("UPDATE public.cards SET tenant_id = 42 WHERE tenant_id = 2");
  const int64_t job = CreateJobSql(conn(),
                                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_scope_column "
                                   "=> 'tenant_id', p_scope_value => '042', p_stages => '{100}'");
  EXPECT_EQ(Scalar("SELECT scope_value FROM rekey.jobs WHERE job_id = " + std::to_string(job)),
            "42");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.targets WHERE scope_column = 'tenant_id' AND "
                  "scope_value = '42'"),
            1);
  Work(job);
  EXPECT_EQ(JobState(job), "completed");
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id = 1 AND tenant_id = 42 AND "
                  "substring(token from 2 for 4) = '\\x00000001'::bytea"),
            0);

  // Not a value of the type, or one only after the type modifier changed it: refused, exit 2.
  Exec("ALTER TABLE public.cards ADD COLUMN region varchar(2)");
  r = Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--map", "1:2",
             "--scope", "region=abc", "--dry-run"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("scope value 'abc' is not a valid character varying(2)"));
}

// rekey.jobs' recorded types used to be pasted into SQL as they were: whoever could update the
// row chose the SQL (here a scope condition that selects every row).
TEST_F(JobSafetyTest, ATamperedRecordedTypeRaisesInsteadOfRunning) {
  SeedTinkTable(conn(), "public.cards", 200, 1, 2);
  const int64_t job =
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_scope_column => 'tenant_id', "
                   "p_scope_value => '1', p_stages => '{100}'");
  const std::string j = std::to_string(job);
  Exec("UPDATE rekey.jobs SET scope_type = 'integer OR true' WHERE job_id = " + j);
  try {
    Scalar("SELECT rekey.scope_condition(j) FROM rekey.jobs j WHERE job_id = " + j);
    ADD_FAILURE() << "a tampered scope type was pasted into SQL";
  } catch (const pqxx::sql_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("not a type name"));
  }
  // The worker stops at once (a definition problem, exit 2) with nothing written and no
  // attempt used: the job waits for a person to cancel it and create it again.
  ProcessResult r = Rekey({"work", "--job", j});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("not a type name"));
  EXPECT_EQ(JobState(job), "active");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j + " AND attempts > 0"),
            0);
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE substring(token from 2 for 4) = "
                  "'\\x00000002'::bytea"),
            0)
      << "nothing was written";

  Exec("UPDATE rekey.jobs SET scope_type = 'integer', pk_type = 'text' WHERE job_id = " + j);
  r = Rekey({"work", "--job", j});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(
      r.err, HasSubstr("records type text for column public.cards.id but the catalog says bigint"));
  EXPECT_EQ(JobState(job), "active");
}

// cards(id, key_id, pan, cvv): both raw values under the row's key_id. A job on pan alone set
// key_id = 2 on every row, and cvv no longer decrypted with its row's key.
TEST_F(JobSafetyTest, AJobThatRewritesAKeyIdColumnRotatesEveryColumnItGoverns) {
  Exec(
      "CREATE TABLE public.cards (id bigint PRIMARY KEY, key_id int, pan bytea, cvv bytea, "
      "nickname text, empty_note text)");
  Exec(
      "INSERT INTO public.cards SELECT i, 1, '\\x0102'::bytea, '\\x0304'::bytea, NULL, NULL FROM "
      "generate_series(1, 100) i");
  const std::vector<std::string> pan_only{
      "job",     "create", "--table",         "public.cards", "--column", "pan",
      "--codec", "raw",    "--key-id-column", "key_id",       "--map",    "1:2"};
  ProcessResult r = Rekey(pan_only);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("may also govern cvv"));
  EXPECT_THAT(r.err, HasSubstr("--not-governed cvv"));
  EXPECT_THAT(r.err, Not(HasSubstr("empty_note"))) << "a column without values governs nothing";
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  std::vector<std::string> dry = pan_only;
  dry.push_back("--dry-run");
  r = Rekey(dry);
  EXPECT_EQ(r.exit_code, 2) << "a dry run shows the same refusal";
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 0);

  // A column that holds values counts once it does.
  Exec("UPDATE public.cards SET nickname = 'visa' WHERE id = 7");
  r = Rekey({"job", "create", "--table", "public.cards", "--column", "pan", "--column", "cvv",
             "--codec", "raw", "--key-id-column", "key_id", "--map", "1:2", "--dry-run"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("may also govern nickname"));

  r = Rekey({"job", "create", "--table", "public.cards", "--column", "pan", "--column", "cvv",
             "--codec", "raw", "--key-id-column", "key_id", "--map", "1:2", "--not-governed",
             "nickname"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT not_governed::text FROM rekey.jobs"), "{nickname}");
  ASSERT_EQ(Rekey({"job", "cancel", "1"}).exit_code, 0);

  // The columns registered under the key-id column are governed by it, whatever the data says.
  r = Rekey({"job", "create", "--table", "public.cards", "--column", "pan", "--codec", "raw",
             "--key-id-column", "key_id", "--map", "1:2", "--not-governed", "nickname,cvv"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("also governs cvv, registered under it"));
}

// Two unfinished jobs on one column, or on one key mapped two ways, undo each other's work and
// leave the keyring wrong; a rollback of one part of a rotation leaves the other part's scope
// without its primary.
TEST_F(JobSafetyTest, UnfinishedJobsCannotCollide) {
  ImportKeyInScope(3, "other");
  ImportKeyInScope(4, "default");
  SeedTinkTable(conn(), "public.cards", 100, 1);
  SeedTinkTable(conn(), "public.cards2", 100, 1);
  SeedTinkTable(conn(), "public.cards3", 100, 1);
  const int64_t first =
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_scope_column => "
                   "'tenant_id', p_scope_value => '0'");
  const std::string f = std::to_string(first);
  // The same column, another scope and another target key: refused, naming the job (exit 5).
  ProcessResult r = Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--map",
                           "1:4", "--dry-run"});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err, HasSubstr("job " + f + " (active) is still rotating public.cards.token"));
  // Another table, key 1 mapped elsewhere: refused.
  r = Rekey({"job", "create", "--table", "public.cards2", "--column", "token", "--map", "1:4"});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err, HasSubstr("job " + f + " (active) already rotates keys 1->2"));
  // Key 2 as the source of another move while it is a target: refused.
  r = Rekey({"job", "create", "--table", "public.cards2", "--column", "token", "--map", "2:4"});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  // Another part of the same rotation: accepted.
  r = Rekey({"job", "create", "--table", "public.cards2", "--column", "token", "--map", "1:2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string second = Scalar("SELECT max(job_id) FROM rekey.jobs");
  // Rolling back one part while the other runs: refused, naming it.
  r = Rekey({"job", "rollback", f});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err, HasSubstr("job " + second + " (active) shares key"));
  ASSERT_EQ(Rekey({"job", "cancel", second}).exit_code, 0);
  r = Rekey({"job", "rollback", f});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Rekey({"job", "cancel", f}).exit_code, 0);

  // A target key outside the source key's keyring scope needs --cross-scope (exit 2 otherwise).
  r = Rekey({"job", "create", "--table", "public.cards3", "--column", "token", "--map", "1:3"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("target key 3 is in keyring scope 'other'"));
  r = Rekey({"job", "create", "--table", "public.cards3", "--column", "token", "--map", "1:3",
             "--cross-scope"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT cross_scope FROM rekey.jobs WHERE table_name = 'cards3'"), "t");

  // Transit jobs: one unfinished job per column too.
  Exec("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)");
  Exec("INSERT INTO public.notes VALUES (1, 'vault:v1:QUJD')");
  {
    pqxx::work txn(conn());
    txn.exec(
        "SELECT rekey.create_transit_job('public.notes', ARRAY['body'], 'transit/keys/app', 2)");
    txn.commit();
  }
  try {
    pqxx::work again(conn());
    again.exec(
        "SELECT rekey.create_transit_job('public.notes', ARRAY['body'], 'transit/keys/app', 3)");
    ADD_FAILURE() << "a second unfinished job on notes.body was accepted";
  } catch (const pqxx::sql_error& e) {
    EXPECT_EQ(e.sqlstate(), "55000");
    EXPECT_THAT(e.what(), HasSubstr("is still rotating public.notes.body"));
  }
}

// A forward chunk whose rows are written but not committed when a rollback starts used to commit
// afterwards (its ownership check looked at the batch, not at the job's stage): after the
// rollback had passed its range, leaving those values under the target key.
TEST_F(JobSafetyTest, AForwardChunkCannotCommitAfterARollbackStarted) {
  SeedTinkTable(conn(), "public.cards", 2000, 1);
  const int64_t job =
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
                   "p_stages => '{100}', p_batch_size => 500");
  const std::string j = std::to_string(job);
  pqxx::connection worker(conninfo());
  pqxx::row claimed = [&] {
    pqxx::work txn(worker);
    pqxx::row row = txn.exec1("SELECT batch_no, lo, hi FROM rekey.claim_batch('chunk', " + j + ")");
    txn.commit();
    return row;
  }();
  const std::string batch = claimed[0].as<std::string>();

  // The chunk: its rows rewritten under key 2, not yet committed.
  auto chunk = std::make_unique<pqxx::work>(worker);
  chunk->exec("SELECT 1 FROM rekey.batches WHERE job_id = " + j + " AND batch_no = " + batch +
              " FOR UPDATE");
  int64_t last = RewriteRange(*chunk, claimed[1], claimed[2], 2);
  ASSERT_GT(last, 0);

  ProcessResult r = Rekey({"job", "rollback", j});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(job);  // the rollback passes the chunk's range, which it still sees under key 1
  ASSERT_EQ(JobState(job), "rolled_back");

  try {
    chunk->exec_params("SELECT rekey.checkpoint_batch($1, $2, 'chunk', $3, 500, 0, 0, 1.0)", job,
                       std::stoi(batch), std::to_string(last));
    chunk->commit();
    ADD_FAILURE() << "the chunk committed after the rollback";
  } catch (const pqxx::serialization_failure& e) {  // SQLSTATE 40001
    EXPECT_THAT(e.what(), HasSubstr("no longer claimed"));
  }
  chunk.reset();
  // The batch's last chunk, completing it: refused as well.
  {
    pqxx::work txn(worker);
    RewriteRange(txn, claimed[1], claimed[2], 2);
    try {
      txn.exec_params("SELECT rekey.complete_batch($1, $2, 'chunk', 500, 0, 0, 1.0, '{}')", job,
                      std::stoi(batch));
      txn.commit();
      ADD_FAILURE() << "the batch completed after the rollback";
    } catch (const pqxx::serialization_failure& e) {  // SQLSTATE 40001
      EXPECT_THAT(e.what(), HasSubstr("no longer claimed"));
    }
  }
  ExpectAllUnder(1);
}

// The other order: the chunk reached its commit first. The rollback waits for it, and moves its
// values back.
TEST_F(JobSafetyTest, ARollbackWaitsForAChunkThatIsCommitting) {
  SeedTinkTable(conn(), "public.cards", 2000, 1);
  const int64_t job =
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
                   "p_stages => '{100}', p_batch_size => 500");
  const std::string j = std::to_string(job);
  pqxx::connection worker(conninfo());
  pqxx::row claimed = [&] {
    pqxx::work txn(worker);
    pqxx::row row = txn.exec1("SELECT batch_no, lo, hi FROM rekey.claim_batch('chunk', " + j + ")");
    txn.commit();
    return row;
  }();
  auto chunk = std::make_unique<pqxx::work>(worker);
  const int64_t last = RewriteRange(*chunk, claimed[1], claimed[2], 2);
  chunk->exec_params("SELECT rekey.checkpoint_batch($1, $2, 'chunk', $3, 500, 0, 0, 1.0)", job,
                     claimed[0].as<int>(), std::to_string(last));

  ChildProcess rollback({REKEY_BINARY, "--db", conninfo(), "job", "rollback", j}, WorkerEnv());
  bool waited = false;
  for (int i = 0; i < 600 && !waited; ++i) {
    waited = Count(
                 "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                 "query LIKE '%rollback_job%'") > 0;
    if (!waited) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(waited) << "the rollback waits for the committing chunk";
  chunk->commit();
  chunk.reset();
  ProcessResult r = rollback.Wait(60);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(job);
  ASSERT_EQ(JobState(job), "rolled_back");
  ExpectAllUnder(1);
}

// An application still writing under the target key (its cached primary) while the rollback's
// first pass runs: the rows it writes in ranges already passed used to stay under the target
// key, and the job ended rolled_back.
TEST_F(JobSafetyTest, ARollbackEndsWithSweepsThatCatchLateTargetKeyWrites) {
  SeedTinkTable(conn(), "public.cards", 20000, 1);
  const int64_t job =
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
                   "p_stages => '{100}', p_batch_size => 100, p_observe => '0s'");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(JobState(job), "completed");
  ASSERT_EQ(Rekey({"job", "rollback", j}).exit_code, 0);
  const std::string first_pass = Scalar("SELECT current_stage FROM rekey.jobs WHERE job_id = " + j);
  {
    ChildProcess w(
        {REKEY_BINARY, "--db", conninfo(), "work", "--job", j, "--max-rows-per-second", "2000"},
        WorkerEnv());
    for (int i = 0; i < 1000 && Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                                      " AND stage_no = " + first_pass + " AND state = 'done'") < 5;
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    w.Signal(SIGKILL);
    w.Wait(10);
  }
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            first_pass + ":active")
      << "the first pass is unfinished";
  // Rows of ranges the first pass has done, written again under key 2.
  std::map<int64_t, std::string> rewritten;
  {
    pqxx::work txn(conn());
    for (const auto& row : txn.exec(
             "SELECT c.id FROM public.cards c JOIN rekey.batches b ON b.job_id = " + j +
             " AND b.stage_no = " + first_pass +
             " AND b.state = 'done' AND (b.lo IS NULL OR c.id >= b.lo::bigint) AND (b.hi IS NULL "
             "OR c.id < b.hi::bigint) ORDER BY c.id LIMIT 25")) {
      const int64_t id = row[0].as<int64_t>();
      rewritten[id] = "written-late-" + std::to_string(id);
      txn.exec_params("UPDATE public.cards SET token = $1, key_id = 2 WHERE id = $2",
                      pqxx::binarystring(TinkEncrypt(2, rewritten[id])), id);
    }
    txn.commit();
  }
  ASSERT_EQ(rewritten.size(), 25u);
  Work(job);
  EXPECT_EQ(JobState(job), "rolled_back");
  ExpectAllUnder(1, rewritten);
  EXPECT_GE(Count("SELECT coalesce(sum(b.rows_done), 0) FROM rekey.batches b WHERE b.job_id = " +
                  j + " AND b.stage_no > " + first_pass),
            25)
      << "a sweep of the rollback moved the late values";
  EXPECT_EQ(Scalar("SELECT string_agg(kind || ':' || state, ',' ORDER BY stage_no) FROM "
                   "rekey.job_stages WHERE job_id = " +
                   j + " AND stage_no > " + first_pass),
            "rollback:done,rollback:done")
      << "sweeps until one finds nothing";
}

}  // namespace
}  // namespace rekey::testing
