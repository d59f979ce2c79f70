// Gentleness flags of `rekey work` (src/rotation/pacer.h) against the real PostgreSQL: the rate
// limit, batches processed in adaptive chunks with checkpoints, and the replication-lag pause.
// Every guarantee of an unpaced rotation must still hold: all values moved once, plaintexts kept,
// exactly one completion audit row per batch, resumption after a worker dies mid-batch.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <memory>
#include <sstream>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "jobs/job.h"
#include "rotation/batch_rotator.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PacingTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }

  int64_t CreateJob(int rows, int batch_size, const std::string& extra = "") {
    SeedTinkTable(conn(), "public.cards", rows, 1);
    pqxx::work txn(conn());
    const int64_t id = txn.exec1(
                              "SELECT rekey.create_job('public.cards', ARRAY['token'], "
                              "'{\"1\": 2}', p_key_id_column => 'key_id', p_stages => '{100}', "
                              "p_batch_size => " +
                              std::to_string(batch_size) + extra + ")")[0]
                           .as<int64_t>();
    txn.commit();
    return id;
  }

  ProcessResult Work(int64_t job, const std::vector<std::string>& flags, int concurrency = 1) {
    std::vector<std::string> args{REKEY_BINARY,    "--db",
                                  conninfo(),      "work",
                                  "--job",         std::to_string(job),
                                  "--concurrency", std::to_string(concurrency)};
    args.insert(args.end(), flags.begin(), flags.end());
    ChildProcess worker(args, WorkerEnv());
    return worker.Wait(300);
  }

  // The worker's final log line ("no work left"), as JSON.
  static nlohmann::json FinalLine(const std::string& err) {
    std::istringstream lines(err);
    nlohmann::json last;
    for (std::string line; std::getline(lines, line);) {
      if (line.find("no work left") != std::string::npos) last = nlohmann::json::parse(line);
    }
    return last;
  }

  void ExpectRotatedAndConsistent(int64_t job, int rows) {
    const std::string j = std::to_string(job);
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
    auto after = DecryptAll(conn(), "public.cards");
    ASSERT_EQ(after.size(), size_t(rows));
    for (const auto& [id, value] : after) {
      ASSERT_EQ(value.first, 2u) << "row " << id;
      ASSERT_EQ(value.second, PlaintextFor(id)) << "row " << id;
    }
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                    " AND (state <> 'done' OR last_error IS NOT NULL)"),
              0);
    EXPECT_EQ(Count("SELECT sum(rows_done) FROM rekey.batches WHERE job_id = " + j), rows);
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches b WHERE job_id = " + j +
                    " AND (SELECT count(*) FROM rekey.audit a WHERE a.job_id = b.job_id AND "
                    "a.batch_no = b.batch_no AND a.action = 'rotation.batch.completed') <> 1"),
              0)
        << "each batch has exactly one completion audit row";
    EXPECT_EQ(Count("SELECT sum((details->>'rows_reencrypted')::int) FROM rekey.audit WHERE "
                    "job_id = " +
                    j + " AND action = 'rotation.batch.completed'"),
              rows)
        << "the completion audit rows count each value once";
  }
};

TEST_F(PacingTest, TheRateLimitHoldsTheProcessBelowItsRowsPerSecond) {
  const int64_t job = CreateJob(3000, 250);
  const auto started = std::chrono::steady_clock::now();
  ProcessResult r = Work(job, {"--max-rows-per-second", "1000"}, 2);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json final_line = FinalLine(r.err);
  ASSERT_FALSE(final_line.is_null()) << r.err;
  const int64_t rows = final_line["rows_reencrypted"].get<int64_t>();
  EXPECT_EQ(rows, 3000);
  // A lower bound only: 3000 rows at 1000 rows/s with one chunk's burst (50 rows) need 2.95 s
  // at least, however fast or slow the machine is (both claim loops share the one limit).
  EXPECT_GE(seconds, 2.9) << rows << " rows in " << seconds << " s";
  ExpectRotatedAndConsistent(job, 3000);
}

TEST_F(PacingTest, AGentleWorkerWaitsForItsWalFlushesAFastOneDoesNot) {
  // Which synchronous_commit each batch's transaction ran with, seen by a trigger on the batch's
  // completion, with the database's default on as in production.
  Exec("ALTER DATABASE \"" + dbname() +
       "\" SET synchronous_commit = on; "
       "CREATE TABLE public.commit_modes (job bigint, mode text); "
       "CREATE FUNCTION public.record_mode() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
       "INSERT INTO public.commit_modes VALUES (NEW.job_id, "
       "current_setting('synchronous_commit')); RETURN NULL; END $$; "
       "CREATE TRIGGER record_mode AFTER UPDATE OF state ON rekey.batches FOR EACH ROW "
       "WHEN (NEW.state = 'done') EXECUTE FUNCTION public.record_mode()");
  const int64_t fast = CreateJob(2000, 500);
  ASSERT_EQ(Work(fast, {}).exit_code, 0);
  EXPECT_EQ(Scalar("SELECT string_agg(DISTINCT mode, ',') FROM public.commit_modes WHERE job = " +
                   std::to_string(fast)),
            "off");
  Exec("DROP TABLE public.cards");
  for (const std::vector<std::string>& brake :
       {std::vector<std::string>{"--max-rows-per-second", "100000"},
        std::vector<std::string>{"--target-batch-ms", "100"},
        std::vector<std::string>{"--max-replication-lag", "10s"}}) {
    const int64_t gentle = CreateJob(2000, 500);
    ASSERT_EQ(Work(gentle, brake).exit_code, 0) << brake[0];
    EXPECT_EQ(Scalar("SELECT string_agg(DISTINCT mode, ',') FROM public.commit_modes WHERE job = " +
                     std::to_string(gentle)),
              "on")
        << brake[0];
    Exec("DROP TABLE public.cards");
  }
}

TEST_F(PacingTest, AdaptiveChunksKeepEveryGuarantee) {
  const int64_t job = CreateJob(12000, 2000, ", p_per_row_audit => true");
  // Chunks start at 2 x 10 rows and adapt towards 20 ms: batches of 2000 rows are always split.
  ProcessResult r = Work(
      job, {"--target-batch-ms", "20", "--min-chunk-rows", "10", "--max-chunk-rows", "700"}, 2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectRotatedAndConsistent(job, 12000);
  const std::string j = std::to_string(job);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j +
                  " AND action = 'rotation.batch.completed' AND "
                  "(details->>'resumed_from_checkpoint')::boolean"),
            Count("SELECT count(*) FROM rekey.batches WHERE rows_done > 0 AND job_id = " + j))
      << "every batch with work was processed in several chunks";
  // Per-row audit: each value exactly once, whichever chunk moved it.
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.value_audit WHERE job_id = " + j), 12000);
  EXPECT_EQ(Count("SELECT count(DISTINCT pk) FROM rekey.value_audit WHERE job_id = " + j), 12000);
}

TEST_F(PacingTest, AWorkerThatDiesBetweenChunksLosesNothingAndItsBatchResumes) {
  // 2 poison values in 1000 are tolerated under a 1% threshold.
  const int64_t job = CreateJob(1000, 1000, ", p_error_threshold => 0.01");
  // Two poison values, one before the first checkpoint and one after it: each is quarantined
  // once, and the batch's counts add up across the two holders.
  Exec("UPDATE public.cards SET token = '\\x0100000001deadbeef'::bytea WHERE id IN (50, 700)");
  {
    pqxx::connection dying(conninfo());
    {
      pqxx::work txn(dying);
      EXPECT_EQ(txn.exec1("SELECT batch_no FROM rekey.claim_batch('dying', " + std::to_string(job) +
                          ")")[0]
                    .as<int>(),
                1);
      txn.commit();
    }
    jobs::JobDefinition definition;
    {
      pqxx::read_transaction txn(dying);
      definition = jobs::LoadJob(txn, job);
    }
    rotation::BatchRotator rotator(definition, [](uint32_t id) { return TestDataKey(id); });
    rotation::ClaimedBatch batch;
    batch.job_id = job;
    batch.batch_no = 1;
    batch.attempt = 1;
    for (int i = 0; i < 2; ++i) {
      rotation::ChunkResult chunk = rotator.ProcessChunk(dying, batch, "dying", 150);
      ASSERT_EQ(chunk.batch.outcome, rotation::BatchResult::Outcome::kDone);
      EXPECT_FALSE(chunk.batch_finished);
      EXPECT_EQ(chunk.rows_locked, 150);
    }
    // The connection closes here: the worker is gone after two committed chunks.
  }
  EXPECT_EQ(Scalar("SELECT resume_after || ' ' || rows_done || ' ' || rows_failed || ' ' || state "
                   "FROM rekey.batches WHERE batch_no = 1 AND job_id = " +
                   std::to_string(job)),
            "300 299 1 running");
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id = 2"), 299);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'rotation.batch.completed'"), 0);

  ProcessResult r = Work(job, {"--target-batch-ms", "50"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string j = std::to_string(job);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Scalar("SELECT rows_done || ' ' || rows_failed || ' ' || attempts FROM rekey.batches "
                   "WHERE batch_no = 1 AND job_id = " +
                   j),
            "998 2 2");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.row_failures WHERE job_id = " + j), 2);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'rotation.batch.completed' AND "
                  "batch_no = 1"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id = 2"), 998);
  auto after = DecryptAll(conn(), "public.cards");
  for (const auto& [id, value] : after) {
    if (id == 50 || id == 700) continue;
    ASSERT_EQ(value.first, 2u) << "row " << id;
    ASSERT_EQ(value.second, PlaintextFor(id)) << "row " << id;
  }
}

TEST_F(PacingTest, RequeuedBatchesForgetTheirCheckpoint) {
  const int64_t job = CreateJob(400, 400);
  ProcessResult r = Work(job, {"--target-batch-ms", "50", "--min-chunk-rows", "20"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string j = std::to_string(job);
  const std::string last = Scalar("SELECT max(batch_no) FROM rekey.batches WHERE job_id = " + j);
  // A finished batch with a checkpoint near its end, and a value early in its range that the
  // application wrote under the old key afterwards.
  pqxx::work txn(conn());
  txn.exec0("UPDATE rekey.batches SET resume_after = '399' WHERE job_id = " + j +
            " AND batch_no = " + last);
  txn.exec_params("UPDATE public.cards SET token = $1, key_id = 1 WHERE id = 3",
                  pqxx::binarystring(TinkEncrypt(1, PlaintextFor(3))));
  txn.exec1("SELECT rekey.requeue(" + j + ", " + last + ", " + last + ")");
  txn.commit();
  EXPECT_EQ(Scalar("SELECT coalesce(resume_after, 'none') || ' ' || state FROM rekey.batches "
                   "WHERE job_id = " +
                   j + " AND batch_no = " + last),
            "none pending");
  r = Work(job, {"--target-batch-ms", "50", "--min-chunk-rows", "20"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id = 1"), 0)
      << "the requeued batch was checked from its start";
}

TEST_F(PacingTest, SigtermBetweenChunksHandsTheBatchBackWithItsCheckpoint) {
  const int64_t job = CreateJob(3000, 3000);
  const std::string j = std::to_string(job);
  // 300 rows/s in chunks of at most 100 rows: the one batch takes about 10 s.
  ChildProcess worker(
      {REKEY_BINARY, "--db", conninfo(), "work", "--job", j, "--max-rows-per-second", "300",
       "--target-batch-ms", "1000", "--min-chunk-rows", "10", "--max-chunk-rows", "100"},
      WorkerEnv());
  for (int i = 0; i < 400 && Scalar("SELECT coalesce(resume_after, '') FROM rekey.batches WHERE "
                                    "batch_no = 1 AND job_id = " +
                                    j) == "";
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  worker.Signal(SIGTERM);
  ProcessResult r = worker.Wait(60);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const int64_t done_before = Count(
      "SELECT rows_done FROM rekey.batches WHERE batch_no = 1 AND "
      "job_id = " +
      j);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.batches WHERE batch_no = 1 AND job_id = " + j),
            "pending")
      << "the batch is handed back at once, not held until it is finished";
  EXPECT_GT(done_before, 0);
  EXPECT_LT(done_before, 3000);
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id = 2"), done_before);

  r = Work(job, {"--target-batch-ms", "50"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectRotatedAndConsistent(job, 3000);
}

TEST_F(PacingTest, AStagedRolloutAndItsRollbackRunInChunks) {
  SeedTinkTable(conn(), "public.cards", 8000, 1);
  int64_t job = 0;
  {
    pqxx::work txn(conn());
    job = txn.exec1(
                 "SELECT rekey.create_job('public.cards', ARRAY['token'], '{\"1\": 2}', "
                 "p_key_id_column => 'key_id', p_batch_size => 1000, p_observe => '0 s')")[0]
              .as<int64_t>();
    txn.commit();
  }
  const std::string j = std::to_string(job);
  const std::vector<std::string> chunked = {"--target-batch-ms", "20", "--min-chunk-rows", "10",
                                            "--max-chunk-rows",  "200"};
  ProcessResult r = Work(job, chunked, 2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id <> 2"), 0);
  // Stage buckets and chunk checkpoints together: each row moved exactly once.
  EXPECT_EQ(Count("SELECT sum(rows_done) FROM rekey.batches WHERE job_id = " + j), 8000);
  EXPECT_GT(Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j +
                  " AND (details->>'resumed_from_checkpoint')::boolean"),
            0);
  EXPECT_EQ(
      Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j + " AND action = 'gate.passed'"),
      5);

  r = RunRekey({"--db", conninfo(), "job", "rollback", j}, WorkerEnv());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Work(job, chunked, 2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "rolled_back");
  auto after = DecryptAll(conn(), "public.cards");
  for (const auto& [id, value] : after) {
    ASSERT_EQ(value.first, 1u) << "row " << id;
    ASSERT_EQ(value.second, PlaintextFor(id)) << "row " << id;
  }
}

TEST_F(PacingTest, NoReplicasNoPause) {
  const int64_t job = CreateJob(2000, 500);
  EXPECT_EQ(Count("SELECT count(*) FROM pg_stat_replication"), 0);
  ProcessResult r = Work(job, {"--max-replication-lag", "1s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, Not(HasSubstr("replication lag exceeds")));
  ExpectRotatedAndConsistent(job, 2000);
}

TEST_F(PacingTest, BadFlagsAreUsageErrors) {
  const int64_t job = CreateJob(10, 10);
  for (const auto& flags : std::vector<std::vector<std::string>>{
           {"--max-replication-lag", "soon"},
           {"--max-rows-per-second", "-5"},
           {"--min-chunk-rows", "0", "--target-batch-ms", "10"}}) {
    ProcessResult r = Work(job, flags);
    EXPECT_EQ(r.exit_code, 2) << flags[0] << ": " << r.err;
  }
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id = 2"), 0);
}

}  // namespace
}  // namespace rekey::testing
