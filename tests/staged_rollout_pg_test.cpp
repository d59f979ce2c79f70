// Staged rollouts against the real PostgreSQL: canary and stages, gates, promotion, the sweep,
// rollback, and dry runs, driven through real `rekey` processes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>

#include <chrono>
#include <memory>
#include <random>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class StagedRolloutTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }

  int64_t CreateJob(const std::string& args) {
    pqxx::work txn(conn());
    int64_t id = txn.exec1("SELECT rekey.create_job(" + args + ")")[0].as<int64_t>();
    txn.commit();
    return id;
  }

  ProcessResult Work(int64_t job, int processes = 2) {
    std::vector<std::unique_ptr<ChildProcess>> workers;
    for (int i = 0; i < processes; ++i) {
      workers.push_back(std::make_unique<ChildProcess>(
          std::vector<std::string>{REKEY_BINARY, "--db", conninfo(), "work", "--job",
                                   std::to_string(job)},
          WorkerEnv()));
    }
    ProcessResult last;
    for (auto& w : workers) {
      last = w->Wait(300);
      EXPECT_EQ(last.exit_code, 0) << last.err;
    }
    return last;
  }

  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }

  std::string JobState(int64_t job) {
    return Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(job));
  }
  int64_t UnderKey(uint32_t key) {
    return Count(
        "SELECT count(*) FROM public.cards WHERE substring(token from 2 for 4) = '\\x0000000" +
        std::to_string(key) + "'::bytea");
  }

  void ExpectAllUnder(uint32_t key) {
    for (const auto& [id, value] : DecryptAll(conn(), "public.cards")) {
      ASSERT_EQ(value.first, key) << "row " << id;
      ASSERT_EQ(value.second, PlaintextFor(id)) << "row " << id;
    }
  }
};

// The documented bucket: first 4 bytes of MD5(pk text), big-endian, mod 10000.
int Bucket(const std::string& pk) {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(pk.data(), pk.size(), digest, &n, EVP_md5(), nullptr);
  uint32_t v =
      uint32_t(digest[0]) << 24 | uint32_t(digest[1]) << 16 | uint32_t(digest[2]) << 8 | digest[3];
  return int(v % 10000);
}

TEST_F(StagedRolloutTest, StageBucketIsTheDocumentedFunction) {
  for (const std::string pk :
       {"1", "42", "1000000", "8f14e45f-ceea-467f-a0e6-5b9c1f1c2a3b", "tenant-a", ""}) {
    EXPECT_EQ(Count("SELECT rekey.stage_bucket(" + conn().quote(pk) + ")"), Bucket(pk)) << pk;
  }
}

TEST_F(StagedRolloutTest, TheCanaryMovesOnePercentAndEachStageContainsTheEarlierOnes) {
  SeedTinkTable(conn(), "public.cards", 100000, 1);
  int64_t job =
      CreateJob("'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id'");
  const std::string j = std::to_string(job);
  // A 1% stage costs about 1% of the batches.
  EXPECT_LE(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j + " AND stage_no = 1"),
            2);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.job_stages WHERE job_id = " + j), 5);

  Work(job);
  EXPECT_EQ(JobState(job), "awaiting_approval");
  const int64_t canary = UnderKey(2);
  EXPECT_GE(canary, 800);
  EXPECT_LE(canary, 1200);
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE (rekey.stage_bucket(id::text) < 100) <> "
                  "(key_id = 2)"),
            0)
      << "the rows moved are exactly the documented canary set";
  EXPECT_EQ(Scalar("SELECT passed || ':' || values_checked || ':' || decrypt_errors FROM "
                   "rekey.gates WHERE job_id = " +
                   j),
            "true:" + std::to_string(canary) + ":0")
      << "the canary gate decrypts every moved row";
  ProcessResult status = Rekey({"status", j});
  EXPECT_THAT(status.out, HasSubstr("awaiting_approval"));
  EXPECT_THAT(status.out, HasSubstr("last gate: stage 1 passed"));
  EXPECT_THAT(Scalar("SELECT state_reason FROM rekey.progress WHERE job_id = " + j),
              HasSubstr("approve with rekey job advance " + j));
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 2"), "enabled")
      << "not promoted before the last stage";

  ProcessResult r = Rekey({"job", "advance", j});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("stage 2 (25%) opened"));
  Work(job);
  EXPECT_EQ(JobState(job), "awaiting_approval");
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE (rekey.stage_bucket(id::text) < 2500) "
                  "<> (key_id = 2)"),
            0);
  EXPECT_NEAR(double(UnderKey(2)), 25000.0, 1000.0);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.gates WHERE job_id = " + j + " AND passed"), 2);
  EXPECT_EQ(Scalar("SELECT approved_by FROM rekey.gates WHERE job_id = " + j + " AND stage_no = 1"),
            "postgres");

  // From here on advance on its own: the rest runs to completion, with promotion and the sweep.
  r = Rekey({"job", "advance", j, "--observe", "0s"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  Work(job);
  EXPECT_EQ(JobState(job), "completed");
  ExpectAllUnder(2);
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 2"), "primary");
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 1"), "decrypt_only");
  EXPECT_EQ(
      Scalar("SELECT string_agg(kind || ':' || state, ',' ORDER BY stage_no) FROM rekey.job_stages "
             "WHERE job_id = " +
             j),
      "rollout:passed,rollout:passed,rollout:passed,rollout:passed,rollout:passed,sweep:done");
  EXPECT_EQ(
      Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j + " AND action = 'gate.passed'"),
      5);
  // The old key can now be retired: the database checks that no value references it.
  r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// A later stage's gate reads a sample of pages through a cursor and tests the stage's buckets in
// the worker, not in the database: it must check exactly the values the documented SQL selects
// on those pages, in the job's scope.
TEST_F(StagedRolloutTest, ASampledGateChecksExactlyTheScopedStageRowsOfItsSampledPages) {
  SeedTinkTable(conn(), "public.cards", 40000, 1, 2);
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
      "p_scope_column => 'tenant_id', p_scope_value => '1', p_stages => '{1,30,100}', "
      "p_gate_sample_size => 500");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(JobState(job), "awaiting_approval");
  ProcessResult r = Rekey({"job", "advance", j});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(job);
  ASSERT_EQ(JobState(job), "awaiting_approval");
  // Nothing has written to the table since the gate of stage 2: its sample is still there.
  const std::string gate = " FROM rekey.gates WHERE job_id = " + j + " AND stage_no = 2";
  const std::string percent = Scalar(
      "SELECT to_char((details->>'sample_percent')::numeric, "
      "'FM990.000000')" +
      gate);
  ASSERT_LT(std::stod(percent), 100) << "the gate read a sample";
  const int64_t expected = Count(
      "SELECT count(*) FROM public.cards TABLESAMPLE SYSTEM (" + percent + ") REPEATABLE (" + j +
      ") WHERE tenant_id = 1 AND rekey.stage_bucket(id::text) < 3000 AND token IS NOT NULL");
  EXPECT_GT(expected, 100);
  EXPECT_EQ(Scalar("SELECT values_checked || ':' || decrypt_errors || ':' || passed" + gate),
            std::to_string(expected) + ":0:true");
}

TEST_F(StagedRolloutTest, CorruptValuesStopTheJobAtTheGateWithTheReason) {
  SeedTinkTable(conn(), "public.cards", 100000, 1);
  // Corrupt a few canary values (their tag), enough to pass the 0.1% threshold.
  Exec(
      "UPDATE public.cards SET token = set_byte(token, octet_length(token) - 1, get_byte(token, "
      "octet_length(token) - 1) # 255)"
      " WHERE id IN (SELECT id FROM public.cards WHERE rekey.stage_bucket(id::text) < 100 ORDER BY "
      "id LIMIT 5)");
  int64_t job = CreateJob("'public.cards', ARRAY['token'], '{\"1\": 2}', p_observe => '0s'");
  const std::string j = std::to_string(job);
  Work(job);
  EXPECT_EQ(JobState(job), "paused");
  const std::string reason = Scalar("SELECT state_reason FROM rekey.progress WHERE job_id = " + j);
  EXPECT_THAT(reason, HasSubstr("error rate"));
  EXPECT_THAT(reason, HasSubstr("threshold 0.100%"));
  EXPECT_EQ(Scalar("SELECT current_stage FROM rekey.jobs WHERE job_id = " + j), "1")
      << "stopped in the canary";
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.row_failures WHERE job_id = " + j), 5);
  EXPECT_LT(UnderKey(2), 1200) << "nothing beyond the canary moved";
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 2"), "enabled");
  EXPECT_GE(
      Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j + " AND action = 'job.paused'"),
      1);
}

TEST_F(StagedRolloutTest, RollbackFromFiftyPercentRestoresEveryValue) {
  SeedTinkTable(conn(), "public.cards", 20000, 1);
  int64_t job = CreateJob("'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 500");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(job);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "3:awaiting_approval");
  EXPECT_NEAR(double(UnderKey(2)), 10000.0, 600.0);

  ProcessResult r = Rekey({"job", "rollback", j, "--reason", "canary errors in the app"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("rolling back to 0%"));
  Work(job);
  EXPECT_EQ(JobState(job), "rolled_back");
  ExpectAllUnder(1);
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 2"), "decrypt_only");
  EXPECT_EQ(
      Scalar("SELECT string_agg(action, ',' ORDER BY audit_id) FROM rekey.audit WHERE job_id = " +
             j + " AND action IN ('job.rollback_started', 'job.rolled_back')"),
      "job.rollback_started,job.rolled_back");
  EXPECT_EQ(Count("SELECT sum(rows_done) FROM rekey.batches b JOIN rekey.job_stages s USING "
                  "(job_id, stage_no)"
                  " WHERE job_id = " +
                  j + " AND s.kind = 'rollback'"),
            Count("SELECT sum(rows_done) FROM rekey.batches b JOIN rekey.job_stages s USING "
                  "(job_id, stage_no)"
                  " WHERE job_id = " +
                  j + " AND s.kind = 'rollout'"));
  EXPECT_GE(Count("SELECT count(*) FROM rekey.audit WHERE job_id = " + j +
                  " AND action = 'rotation.batch.completed' AND details->>'rollback' = 'true'"),
            1);
  EXPECT_THAT(Scalar("SELECT details::text FROM rekey.audit WHERE job_id = " + j +
                     " AND action = 'job.rollback_started'"),
              HasSubstr("canary errors in the app"));
}

TEST_F(StagedRolloutTest, RollbackToAnEarlierStageKeepsThoseRowsAndCanGoForwardAgain) {
  SeedTinkTable(conn(), "public.cards", 20000, 1);
  int64_t job = CreateJob("'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 500");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(job);  // at 25%
  ASSERT_EQ(Rekey({"job", "rollback", j, "--to-percent", "1"}).exit_code, 0);
  Work(job);
  EXPECT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE (rekey.stage_bucket(id::text) < 100) <>"
                  " (substring(token from 2 for 4) = '\\x00000002'::bytea)"),
            0)
      << "back to exactly the canary";
  ASSERT_EQ(Rekey({"job", "advance", j, "--observe", "0s"}).exit_code, 0);
  Work(job);
  EXPECT_EQ(JobState(job), "completed")
      << Scalar("SELECT state_reason FROM rekey.jobs WHERE job_id = " + j);
  ExpectAllUnder(2);
}

TEST_F(StagedRolloutTest, RollbackAfterCompletionRestoresValuesAndKeyring) {
  SeedTinkTable(conn(), "public.cards", 20000, 1);
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 500, p_observe => '0s'");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(JobState(job), "completed");
  EXPECT_EQ(
      Scalar("SELECT string_agg(key_id || ':' || status, ',' ORDER BY key_id) FROM rekey.keys"),
      "1:decrypt_only,2:primary");

  ASSERT_EQ(Rekey({"job", "rollback", j}).exit_code, 0);
  // Interrupt the rollback with SIGKILL; a fresh worker resumes and finishes it.
  {
    ChildProcess w({REKEY_BINARY, "--db", conninfo(), "work", "--job", j}, WorkerEnv());
    for (int i = 0;
         i < 400 &&
         Count(
             "SELECT count(*) FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)"
             " WHERE job_id = " +
             j + " AND s.kind = 'rollback' AND b.state = 'done'") < 5;
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    w.Signal(SIGKILL);
    w.Wait(10);
  }
  EXPECT_EQ(JobState(job), "active") << "the rollback is unfinished";
  Work(job);
  EXPECT_EQ(JobState(job), "rolled_back");
  ExpectAllUnder(1);
  EXPECT_EQ(
      Scalar("SELECT string_agg(key_id || ':' || status, ',' ORDER BY key_id) FROM rekey.keys"),
      "1:primary,2:decrypt_only");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                  " AND state IN ('pending', 'running')"),
            0);
}

TEST_F(StagedRolloutTest, TheSweepCatchesValuesApplicationsWroteUnderTheOldKey) {
  SeedTinkTable(conn(), "public.cards", 20000, 1);
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 200, p_observe => '0s'");
  const std::string j = std::to_string(job);
  std::map<int64_t, std::string> latest;
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    // An application that has not picked up the new primary key yet: it writes under key 1 until
    // the rollout reaches its sweep.
    pqxx::connection app(conninfo());
    std::mt19937 rng(11);
    for (int n = 0; !stop; ++n) {
      int64_t id = std::uniform_int_distribution<int64_t>(1, 20000)(rng);
      std::string pt = "written-by-app-" + std::to_string(n);
      // The stage is read first, with the job's row share-locked until the write commits: the
      // sweep cannot open between the two, so a write under key 1 is always one the sweep sees.
      // (Writing first and reading the stage after let one write land behind a sweep batch that
      // had already passed its row: a value the contract does not ask the sweep to catch.)
      pqxx::work txn(app);
      const std::string kind = txn.exec1(CurrentStageKindSharingJob(j))[0].as<std::string>();
      if (kind == "sweep") break;
      txn.exec_params("UPDATE public.cards SET token = $1 WHERE id = $2",
                      pqxx::binarystring(TinkEncrypt(1, pt)), id);
      txn.commit();
      latest[id] = pt;
    }
  });
  Work(job);
  stop = true;
  writer.join();
  EXPECT_EQ(JobState(job), "completed");
  EXPECT_EQ(UnderKey(1), 0) << "no value is left under the old key";
  EXPECT_GT(Count("SELECT coalesce(sum(rows_done), 0) FROM rekey.batches b JOIN rekey.job_stages s "
                  "USING (job_id, stage_no)"
                  " WHERE job_id = " +
                  j + " AND s.kind = 'sweep'"),
            0)
      << "the sweep re-encrypted what the application wrote under the old key";
  for (const auto& [id, value] : DecryptAll(conn(), "public.cards")) {
    auto it = latest.find(id);
    ASSERT_EQ(value.second, it == latest.end() ? PlaintextFor(id) : it->second) << "row " << id;
  }
}

TEST_F(StagedRolloutTest, DryRunReportsStagesAndWritesNothing) {
  SeedTinkTable(conn(), "public.cards", 10000, 1);
  ProcessResult r = Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--map",
                           "1:2", "--batch-size", "500", "--dry-run"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("would create job"));
  EXPECT_THAT(r.out, HasSubstr("10000 rows"));
  EXPECT_THAT(r.out, HasSubstr("stage 1 (up to 1%)"));
  EXPECT_THAT(r.out, HasSubstr("stage 5 (up to 100%)"));
  EXPECT_THAT(r.out, HasSubstr("new key becomes primary"));
  EXPECT_THAT(r.out, HasSubstr("nothing was written"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action LIKE 'job.%'"), 0);
  // A bad plan is refused with a clear message.
  r = Rekey({"job", "create", "--table", "public.cards", "--column", "token", "--map", "1:2",
             "--stages", "1,50,25,100"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("percentages must increase"));
}

}  // namespace
}  // namespace rekey::testing
