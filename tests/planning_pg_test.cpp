// How jobs are planned (migrations/0008_one_pass_planning.sql), checked against plans computed
// here from the documented rules: the rollout stages of a staged job, planned in one pass, cut
// every batch_size rows of each stage in key order, by the database (rekey.create_job from SQL)
// and by the client (jobs::CreateJob, what `rekey job create` runs: jobs/rollout_planner.h); a
// sweep, planned without reading the values, tiles the key space with ranges of about
// 100 x batch_size table rows (every 100th boundary of the rollout's plan).
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness/pg_server.h"
#include "jobs/job.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

struct PlannedBatch {
  int stage = 0;
  std::optional<std::string> lo, hi;
  int64_t rows = 0;
  std::optional<std::string> keys;  // the recorded keys, comma-separated
  bool operator==(const PlannedBatch& o) const {
    return stage == o.stage && lo == o.lo && hi == o.hi && rows == o.rows && keys == o.keys;
  }
};

std::ostream& operator<<(std::ostream& os, const PlannedBatch& b) {
  return os << "{stage " << b.stage << " [" << b.lo.value_or("NULL") << ", "
            << b.hi.value_or("NULL") << ") rows " << b.rows
            << (b.keys ? " keys " + b.keys->substr(0, 40) + "..." : "") << "}";
}

class PlanningTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }

  int64_t CreateJob(const std::string& args) {
    GiveUpUnfinishedJobs();
    return CreateJobSql(conn(), args);
  }

  // A column has one unfinished job at a time (migrations/0014_key_safety_jobs.sql): the tests
  // that plan one table several times cancel the earlier job first. Its batches stay.
  void GiveUpUnfinishedJobs() {
    Exec(
        "SELECT rekey.cancel_job(job_id) FROM rekey.jobs WHERE state NOT IN ('completed', "
        "'cancelled', 'rolled_back')");
  }

  // What `rekey job create` runs: jobs::CreateJob, which plans a staged job in this process,
  // reading the keys ahead on a second connection as the CLI does, or (`read_ahead` false) in the
  // planning transaction itself.
  int64_t CreateJobInClient(const std::string& table, const std::string& stages, int batch_size,
                            const std::string& scope_column = "",
                            const std::string& scope_value = "", bool read_ahead = true) {
    jobs::JobSpec spec;
    spec.table = table;
    spec.columns = {"token"};
    spec.key_map = {{1, 2}};
    spec.key_id_column = "key_id";
    spec.batch_size = batch_size;
    spec.stages = stages;
    if (!scope_column.empty()) {
      spec.scope_column = scope_column;
      spec.scope_value = scope_value;
    }
    GiveUpUnfinishedJobs();
    std::unique_ptr<pqxx::connection> reader;
    if (read_ahead) reader = std::make_unique<pqxx::connection>(conninfo());
    pqxx::work txn(conn());
    const int64_t job = jobs::CreateJob(txn, spec, reader.get());
    txn.commit();
    return job;
  }

  // The job's batches in batch_no order; batch numbers must run 1, 2, 3, ... without gaps.
  std::vector<PlannedBatch> Batches(int64_t job, const std::string& stage_filter = "true") {
    pqxx::read_transaction txn(conn());
    std::vector<PlannedBatch> out;
    int64_t expected_no = 0;
    for (const auto& row :
         txn.exec("SELECT batch_no, stage_no, lo, hi, planned_rows, array_to_string(keys, ',') "
                  "FROM rekey.batches WHERE "
                  "job_id = " +
                  std::to_string(job) + " AND " + stage_filter + " ORDER BY batch_no")) {
      if (expected_no == 0) expected_no = row[0].as<int64_t>();
      EXPECT_EQ(row[0].as<int64_t>(), expected_no++) << "batch numbers are consecutive";
      PlannedBatch b;
      b.stage = row[1].as<int>();
      if (!row[2].is_null()) b.lo = row[2].as<std::string>();
      if (!row[3].is_null()) b.hi = row[3].as<std::string>();
      b.rows = row[4].as<int64_t>();
      if (!row[5].is_null()) b.keys = row[5].as<std::string>();
      out.push_back(b);
    }
    return out;
  }

  // The plan of a staged job by the documented rule, from each row's stage_bucket in key order
  // (the database sorts, so text keys follow its collation): per stage, the rows whose bucket
  // lies in [bucket_lo, bucket_hi), cut every batch_size rows; a stage without rows gets one
  // empty batch over everything. A stage that ends below 100% records each batch's keys.
  std::vector<PlannedBatch> ExpectedRolloutPlan(int64_t job, const std::string& table,
                                                const std::string& pk, int batch_size,
                                                const std::string& where = "true") {
    pqxx::read_transaction txn(conn());
    std::vector<std::pair<std::string, int>> rows;
    // ORDER BY the qualified column: the bare name would sort the text output column.
    for (const auto& r :
         txn.exec("SELECT t." + pk + "::text, rekey.stage_bucket(t." + pk + "::text) FROM " +
                  table + " AS t WHERE " + where + " ORDER BY t." + pk)) {
      rows.emplace_back(r[0].as<std::string>(), r[1].as<int>());
    }
    std::vector<PlannedBatch> plan;
    for (const auto& st : txn.exec("SELECT stage_no, bucket_lo, bucket_hi FROM rekey.job_stages "
                                   "WHERE kind = 'rollout' AND job_id = " +
                                   std::to_string(job) + " ORDER BY stage_no")) {
      const int stage = st[0].as<int>(), lo = st[1].as<int>(), hi = st[2].as<int>();
      std::vector<std::string> keys;
      for (const auto& [key, bucket] : rows) {
        if (bucket >= lo && bucket < hi) keys.push_back(key);
      }
      if (keys.empty()) {
        plan.push_back({stage, std::nullopt, std::nullopt, 0, std::nullopt});
        continue;
      }
      for (size_t at = 0; at < keys.size(); at += size_t(batch_size)) {
        PlannedBatch b;
        b.stage = stage;
        if (at > 0) b.lo = keys[at];
        if (at + size_t(batch_size) < keys.size()) b.hi = keys[at + size_t(batch_size)];
        b.rows = int64_t(std::min(keys.size() - at, size_t(batch_size)));
        if (hi < 10000) {
          b.keys = "";
          for (size_t i = at; i < at + size_t(b.rows); ++i) {
            *b.keys += (i > at ? "," : "") + keys[i];
          }
        }
        plan.push_back(b);
      }
    }
    return plan;
  }
};

// A staged job's rollout, planned by the database (rekey.create_job from psql) and by the client
// (jobs::CreateJob, what `rekey job create` and `rekey rotate-due` run): both must give the plan
// of the documented rule.
enum class Planner { kDatabase, kClient, kClientReadingAhead };

const char* PlannerName(Planner p) {
  switch (p) {
    case Planner::kDatabase:
      return "Database";
    case Planner::kClient:
      return "Client";
    case Planner::kClientReadingAhead:
      return "ClientReadingAhead";
  }
  return "?";
}

std::ostream& operator<<(std::ostream& os, Planner p) {
  return os << PlannerName(p);
}

class RolloutPlanningTest : public PlanningTest, public ::testing::WithParamInterface<Planner> {
 protected:
  int64_t CreateStaged(const std::string& table, const std::string& stages, int batch_size,
                       const std::string& scope_column = "", const std::string& scope_value = "") {
    if (GetParam() == Planner::kDatabase) {
      std::string args = "'" + table + "', ARRAY['token'], '{\"1\": 2}', p_key_id_column => " +
                         "'key_id', p_batch_size => " + std::to_string(batch_size) +
                         ", p_stages => '{" + stages + "}'";
      if (!scope_column.empty()) {
        args +=
            ", p_scope_column => '" + scope_column + "', p_scope_value => '" + scope_value + "'";
      }
      return CreateJob(args);
    }
    return CreateJobInClient(table, stages, batch_size, scope_column, scope_value,
                             GetParam() == Planner::kClientReadingAhead);
  }
};

INSTANTIATE_TEST_SUITE_P(Planners, RolloutPlanningTest,
                         ::testing::Values(Planner::kDatabase, Planner::kClient,
                                           Planner::kClientReadingAhead),
                         [](const auto& param_info) { return PlannerName(param_info.param); });

TEST_P(RolloutPlanningTest, AStagedJobIsPlannedStageByStageAsDocumented) {
  // Keys with gaps, and enough rows that every stage has several batches.
  Exec(
      "CREATE TABLE public.cards (id bigint PRIMARY KEY, key_id int, token bytea); "
      "INSERT INTO public.cards SELECT 3 * i + (i % 7), 1, '\\x0100000001'::bytea "
      "FROM generate_series(1, 30000) i");
  const int64_t job = CreateStaged("public.cards", "1,25,50,75,100", 250);
  std::vector<PlannedBatch> expected = ExpectedRolloutPlan(job, "public.cards", "id", 250);
  ASSERT_GT(expected.size(), 100u);
  EXPECT_EQ(Batches(job), expected);
}

TEST_P(RolloutPlanningTest, TextKeysCustomStagesAndAScopeArePlannedAsDocumented) {
  Exec(
      "CREATE TABLE public.accounts (ref text PRIMARY KEY, tenant int, key_id int, "
      "token bytea); INSERT INTO public.accounts SELECT 'acct-' || md5(i::text), i % 3, 1, "
      "'\\x0100000001'::bytea FROM generate_series(1, 12000) i");
  const int64_t job = CreateStaged("public.accounts", "5,10,60,100", 97, "tenant", "1");
  std::vector<PlannedBatch> expected =
      ExpectedRolloutPlan(job, "public.accounts", "ref", 97, "tenant = 1");
  ASSERT_GT(expected.size(), 40u);
  EXPECT_EQ(Batches(job), expected);
}

TEST_P(RolloutPlanningTest, AScopeValueInAnotherSpellingIsPlannedAsItsCanonicalValue) {
  Exec(
      "CREATE TABLE public.accounts (id bigint PRIMARY KEY, tenant uuid, key_id int, token bytea);"
      " INSERT INTO public.accounts SELECT i, CASE WHEN i % 3 = 0 THEN "
      "'8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e'::uuid ELSE md5(i::text)::uuid END, 1, "
      "'\\x0100000001'::bytea FROM generate_series(1, 9000) i");
  const int64_t job = CreateStaged("public.accounts", "1,25,50,75,100", 40, "tenant",
                                   "8F14E45F-CEEA-467F-A0E6-0D3C5A3B1B2E");
  EXPECT_EQ(Scalar("SELECT scope_value FROM rekey.jobs WHERE job_id = " + std::to_string(job)),
            "8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e");
  const std::vector<PlannedBatch> expected = ExpectedRolloutPlan(
      job, "public.accounts", "id", 40, "tenant = '8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e'");
  ASSERT_GT(expected.size(), 70u);
  EXPECT_EQ(Batches(job), expected);
}

TEST_P(RolloutPlanningTest, AStageWithoutRowsGetsOneEmptyBatch) {
  // Three rows: most of the stages of 1,2,3,50,100 are empty; an empty table, all of them.
  Exec(
      "CREATE TABLE public.cards (id bigint PRIMARY KEY, key_id int, token bytea); "
      "INSERT INTO public.cards SELECT i, 1, '\\x0100000001'::bytea FROM generate_series(1, 3) "
      "i; CREATE TABLE public.nothing (id bigint PRIMARY KEY, key_id int, token bytea)");
  int64_t job = CreateStaged("public.cards", "1,2,3,50,100", 1000);
  std::vector<PlannedBatch> batches = Batches(job);
  EXPECT_EQ(batches, ExpectedRolloutPlan(job, "public.cards", "id", 1000));
  EXPECT_EQ(batches.size(), 5u) << "one batch per stage";
  int64_t rows = 0;
  for (const auto& b : batches) rows += b.rows;
  EXPECT_EQ(rows, 3);
  job = CreateStaged("public.nothing", "1,25,50,75,100", 1000);
  EXPECT_EQ(Batches(job), ExpectedRolloutPlan(job, "public.nothing", "id", 1000));
  EXPECT_EQ(Batches(job).size(), 5u);
}

TEST_P(RolloutPlanningTest, AStageOfEveryRowIsWalkedInBatchSizeSteps) {
  // A single stage is walked along the primary key (rekey.plan_stage): the same cuts as the
  // rule, with exactly divisible, scoped and empty tables.
  Exec(
      "CREATE TABLE public.cards (id bigint PRIMARY KEY, key_id int, token bytea); "
      "INSERT INTO public.cards SELECT 3 * i + (i % 7), 1, '\\x0100000001'::bytea "
      "FROM generate_series(1, 30000) i; "
      "CREATE TABLE public.accounts (ref text PRIMARY KEY, tenant int, key_id int, token bytea); "
      "INSERT INTO public.accounts SELECT 'acct-' || md5(i::text), i % 3, 1, "
      "'\\x0100000001'::bytea FROM generate_series(1, 12000) i; "
      "CREATE TABLE public.nothing (id bigint PRIMARY KEY, key_id int, token bytea)");
  int64_t job = CreateStaged("public.cards", "100", 250);
  std::vector<PlannedBatch> batches = Batches(job);
  EXPECT_EQ(batches.size(), 120u) << "30,000 rows in batches of 250";
  EXPECT_EQ(batches, ExpectedRolloutPlan(job, "public.cards", "id", 250));
  job = CreateStaged("public.cards", "100", 7);
  EXPECT_EQ(Batches(job), ExpectedRolloutPlan(job, "public.cards", "id", 7));
  job = CreateStaged("public.accounts", "100", 97, "tenant", "2");
  EXPECT_EQ(Batches(job), ExpectedRolloutPlan(job, "public.accounts", "ref", 97, "tenant = 2"));
  job = CreateStaged("public.nothing", "100", 1000);
  EXPECT_EQ(Batches(job), ExpectedRolloutPlan(job, "public.nothing", "id", 1000));
}

TEST_P(RolloutPlanningTest, LongTextKeysOverSeveralFetchesAndWrites) {
  // 60,000 keys of about 40 characters: the client reads them in three FETCHes and writes the
  // partial stages' keys (1.8 MB) in more than one statement.
  Exec(
      "CREATE TABLE public.cards (id text PRIMARY KEY, key_id int, token bytea); "
      "INSERT INTO public.cards SELECT 'key-' || md5(i::text) || '-' || i % 10, 1, "
      "'\\x0100000001'::bytea FROM generate_series(1, 60000) i");
  const int64_t job = CreateStaged("public.cards", "1,25,50,75,100", 300);
  const std::vector<PlannedBatch> expected = ExpectedRolloutPlan(job, "public.cards", "id", 300);
  ASSERT_GT(expected.size(), 200u);
  EXPECT_EQ(Batches(job), expected);
}

TEST_P(RolloutPlanningTest, KeysThatNeedQuotingAndUuids) {
  // Characters with a meaning in array literals or SQL; the empty string; non-ASCII text.
  Exec(
      "CREATE TABLE public.cards (id text PRIMARY KEY, key_id int, token bytea); "
      "INSERT INTO public.cards SELECT k, 1, '\\x0100000001'::bytea FROM unnest(ARRAY["
      "'', ' ', 'a,b', '{x}', '\"q\"', 'back\\slash', 'NULL', 'null', 'caf\xc3\xa9', "
      "E'tab\\tkey', E'new\\nline', E'\\\\\\\\', '''', '}{', ',']) k; "
      "INSERT INTO public.cards SELECT 'k' || i || repeat(',', i % 3) || repeat('\"', i % 2), 1, "
      "'\\x0100000001'::bytea FROM generate_series(1, 3000) i; "
      "CREATE TABLE public.ucards (id uuid PRIMARY KEY, key_id int, token bytea); "
      "INSERT INTO public.ucards SELECT md5(i::text)::uuid, 1, '\\x0100000001'::bytea "
      "FROM generate_series(1, 5000) i");
  ASSERT_EQ(Count("SELECT count(*) FROM public.cards"), 3015);
  int64_t job = CreateStaged("public.cards", "1,25,50,75,100", 7);
  EXPECT_EQ(Batches(job), ExpectedRolloutPlan(job, "public.cards", "id", 7));
  job = CreateStaged("public.ucards", "1,25,50,75,100", 50);
  EXPECT_EQ(Batches(job), ExpectedRolloutPlan(job, "public.ucards", "id", 50));
}

TEST_F(PlanningTest, RowsInsertedAfterPlanningAreMovedAndTheKeysAreClearedAtTheEnd) {
  SeedTinkTable(conn(), "public.cards", 20000, 1);
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
      "p_batch_size => 200, p_observe => '0s'");
  const std::string j = std::to_string(job);
  {
    pqxx::read_transaction txn(conn());
    EXPECT_GT(
        txn.exec1("SELECT count(*) FROM rekey.batches WHERE keys IS NOT NULL AND job_id = " + j)[0]
            .as<int64_t>(),
        0);
  }
  // Rows the plan does not know of, inside planned ranges: a third of the rows move to negative
  // keys (their planned keys vanish; they now lie in each stage's first range), and new rows
  // follow the last key.
  Exec(
      "UPDATE public.cards SET id = -id WHERE id % 3 = 0; "
      "INSERT INTO public.cards (id, tenant_id, key_id, token) SELECT id + 20000, tenant_id, "
      "key_id, token FROM public.cards WHERE id BETWEEN 1 AND 500");
  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < 2; ++i) {
    workers.push_back(std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", conninfo(), "work", "--job", j},
        WorkerEnv()));
  }
  for (auto& w : workers) {
    ProcessResult r = w->Wait(300);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  pqxx::read_transaction txn(conn());
  EXPECT_EQ(txn.exec1("SELECT state FROM rekey.jobs WHERE job_id = " + j)[0].as<std::string>(),
            "completed");
  EXPECT_EQ(txn.exec1("SELECT count(*) FROM public.cards WHERE substring(token from 1 for 5) <> "
                      "'\\x0100000002'::bytea")[0]
                .as<int64_t>(),
            0)
      << "every value, planned or not, is under the new key";
  EXPECT_EQ(
      txn.exec1("SELECT count(*) FROM rekey.batches WHERE keys IS NOT NULL AND job_id = " + j)[0]
          .as<int64_t>(),
      0)
      << "a completed job keeps no keys";
}

TEST_F(PlanningTest, BothPlannersGiveTheSamePlan) {
  // Both planners, the same table: the same batches, each job numbered from 1.
  SeedTinkTable(conn(), "public.cards", 7000, 1);
  const int64_t by_database = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
      "p_batch_size => 100");
  const int64_t by_client = CreateJobInClient("public.cards", "1,25,50,75,100", 100);
  ASSERT_NE(by_database, by_client);
  const std::vector<PlannedBatch> database = Batches(by_database);
  ASSERT_GT(database.size(), 60u);
  EXPECT_EQ(Batches(by_client), database);
  EXPECT_EQ(
      Count("SELECT min(batch_no) FROM rekey.batches WHERE job_id = " + std::to_string(by_client)),
      1);
}

TEST_F(PlanningTest, AFailedReadOrWriteFailsTheWholePlan) {
  // The client reads ahead and writes on threads of their own: a failure on either side must
  // surface as the failure of jobs::CreateJob, with nothing committed.
  SeedTinkTable(conn(), "public.cards", 20000, 1);
  jobs::JobSpec spec;
  spec.table = "public.cards";
  spec.columns = {"token"};
  spec.key_map = {{1, 2}};
  spec.key_id_column = "key_id";
  spec.batch_size = 50;
  {
    // The reader: connected to a database without the table.
    pqxx::connection elsewhere("host=" + PgServer::Get().socket_dir() +
                               " port=" + std::to_string(PgServer::Get().port()) +
                               " user=postgres dbname=postgres");
    pqxx::work txn(conn());
    EXPECT_THROW(jobs::CreateJob(txn, spec, &elsewhere), pqxx::undefined_table);
  }
  {
    // The writer: one batch of the plan is refused.
    Exec(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'refused batch' USING ERRCODE = 'check_violation'; END $$; "
        "CREATE TRIGGER refuse BEFORE INSERT ON rekey.batches FOR EACH ROW "
        "WHEN (NEW.stage_no = 3) EXECUTE FUNCTION public.refuse()");
    pqxx::connection reader(conninfo());
    pqxx::work txn(conn());
    EXPECT_THROW(jobs::CreateJob(txn, spec, &reader), pqxx::check_violation);
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches"), 0);
}

TEST_F(PlanningTest, AStageLeftUnplannedCannotBeCommitted) {
  SeedTinkTable(conn(), "public.cards", 100, 1);
  {
    pqxx::work txn(conn());
    txn.exec0("SET LOCAL rekey.defer_rollout_planning = on");
    txn.exec(
        "SELECT rekey.create_job('public.cards', ARRAY['token'], '{\"1\": 2}', "
        "p_key_id_column => 'key_id')");
    EXPECT_EQ(txn.exec1("SELECT count(*) FROM rekey.batches")[0].as<int>(), 0)
        << "planning was deferred";
    try {
      txn.commit();
      ADD_FAILURE() << "a job whose stages have no batches was committed";
    } catch (const pqxx::sql_error& e) {
      EXPECT_NE(std::string(e.what()).find("was never planned"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 0);
}

class SweepPlanningTest : public PlanningTest {
 protected:
  // Adds a sweep stage to `job` the way the job's own functions do and returns its batches.
  std::vector<PlannedBatch> PlanSweep(int64_t job) {
    pqxx::work txn(conn());
    int stage =
        txn.exec1("SELECT rekey.add_stage(" + std::to_string(job) + ", 'sweep', 100, 0, 10000)")[0]
            .as<int>();
    txn.commit();
    return Batches(job, "stage_no = " + std::to_string(stage));
  }

  // The sweep's plan over public.cards (pk `id` bigint): ranges that tile the key space, each
  // holding at most max_table_rows rows of the table (default 100 x batch_size: the bound is
  // every 100th boundary of the rollout's plan), none with a planned row count (the plan does
  // not read the values; what a sweep batch moves is counted when it runs).
  void ExpectSweepPlan(const std::vector<PlannedBatch>& batches, int batch_size,
                       int64_t max_table_rows = 0) {
    if (max_table_rows == 0) max_table_rows = 100 * int64_t(batch_size);
    ASSERT_FALSE(batches.empty());
    EXPECT_FALSE(batches.front().lo.has_value()) << "the first batch starts at the beginning";
    EXPECT_FALSE(batches.back().hi.has_value()) << "the last batch runs to the end";
    pqxx::read_transaction txn(conn());
    for (size_t i = 0; i < batches.size(); ++i) {
      const PlannedBatch& b = batches[i];
      if (i + 1 < batches.size()) {
        ASSERT_TRUE(b.hi.has_value()) << b;
        EXPECT_EQ(b.hi, batches[i + 1].lo) << "batch " << i << " ends where the next starts";
      }
      std::string range = "true";
      if (b.lo) range += " AND id >= " + *b.lo;
      if (b.hi) range += " AND id < " + *b.hi;
      EXPECT_LE(txn.exec1("SELECT count(*) FROM public.cards WHERE " + range)[0].as<int64_t>(),
                max_table_rows)
          << b;
      EXPECT_EQ(b.rows, 0) << b;
      EXPECT_FALSE(b.keys.has_value()) << b;
    }
  }
};

TEST_F(SweepPlanningTest, IsEveryHundredthRolloutBoundaryWhateverTheValues) {
  Exec(
      "CREATE TABLE public.cards (id bigint PRIMARY KEY, key_id int, token bytea); "
      "INSERT INTO public.cards SELECT i, 2, '\\x0100000002aabbcc'::bytea "
      "FROM generate_series(1, 25000) i");
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 100, p_stages => '{100}'");
  std::vector<PlannedBatch> nothing_pending = PlanSweep(job);
  ExpectSweepPlan(nothing_pending, 100);
  EXPECT_EQ(nothing_pending.size(), 3u) << "25,000 rows in ranges of at most 10,000";
  // The same table with a dense cluster of values under the source key, corrupt values, a NULL:
  // the plan does not look at them.
  Exec(
      "UPDATE public.cards SET token = '\\x0100000001aabbcc' WHERE id BETWEEN 10 AND 260 "
      "OR id IN (5000, 24999); "
      "UPDATE public.cards SET token = '\\x01' WHERE id = 9001; "
      "UPDATE public.cards SET token = NULL WHERE id = 9002");
  std::vector<PlannedBatch> some_pending = PlanSweep(job);
  ASSERT_EQ(some_pending.size(), nothing_pending.size());
  for (size_t i = 0; i < some_pending.size(); ++i) {
    EXPECT_EQ(some_pending[i].lo, nothing_pending[i].lo);
    EXPECT_EQ(some_pending[i].hi, nothing_pending[i].hi);
  }
}

TEST_F(SweepPlanningTest, AStagedJobsSweepIsBoundedByItsStagesBoundaries) {
  Exec(
      "CREATE TABLE public.cards (id bigint PRIMARY KEY, key_id int, token bytea); "
      "INSERT INTO public.cards SELECT i, 2, '\\x0100000002aabbcc'::bytea "
      "FROM generate_series(1, 40000) i");
  int64_t job = CreateJob("'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 50");
  std::vector<PlannedBatch> batches = PlanSweep(job);
  // The stages' boundaries together lie about batch_size rows apart, not exactly.
  ExpectSweepPlan(batches, 50, 150 * 50);
  EXPECT_GE(batches.size(), 40000u / (150 * 50));
}

TEST_F(SweepPlanningTest, TextKeysAreCutInTheirOwnOrder) {
  Exec(
      "CREATE TABLE public.cards (code text PRIMARY KEY, token bytea); "
      "INSERT INTO public.cards SELECT md5(i::text), '\\x0100000002aabbcc'::bytea "
      "FROM generate_series(1, 3000) i");
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 10, p_stages => '{100}'");
  std::vector<PlannedBatch> batches = PlanSweep(job);
  ASSERT_EQ(batches.size(), 3u) << "3,000 rows in ranges of at most 1,000";
  pqxx::read_transaction txn(conn());
  for (const auto& b : batches) {
    std::string range = "true";
    if (b.lo) range += " AND code >= " + txn.quote(*b.lo);
    if (b.hi) range += " AND code < " + txn.quote(*b.hi);
    EXPECT_EQ(txn.exec1("SELECT count(*) FROM public.cards WHERE " + range)[0].as<int64_t>(), 1000)
        << b;
  }
}

TEST_F(SweepPlanningTest, AnEmptyTableGetsOneBatch) {
  Exec("CREATE TABLE public.cards (id bigint PRIMARY KEY, key_id int, token bytea)");
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 100, p_stages => '{100}'");
  std::vector<PlannedBatch> batches = PlanSweep(job);
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0],
            (PlannedBatch{batches[0].stage, std::nullopt, std::nullopt, 0, std::nullopt}));
}

}  // namespace
}  // namespace rekey::testing
