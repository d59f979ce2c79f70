// WorkerPool against a real PostgreSQL: the KMS-availability seam and KMS errors mid-run.
#include "rotation/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "common/error.h"
#include "harness/pg_server.h"
#include "rotation_support.h"

namespace rekey::rotation {
namespace {

using testing::DecryptAll;
using testing::PlaintextFor;
using testing::SeedTinkTable;
using testing::TestDataKey;

class WorkerPoolTest : public testing::PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    testing::ImportTestKeys(conn(), {1, 2});
    SeedTinkTable(conn(), "public.cards", 1000, 1);
    pqxx::work txn(conn());
    job_ = txn.exec1(
                  "SELECT rekey.create_job('public.cards', ARRAY['token'], '{\"1\": 2}', "
                  "p_batch_size => 100, p_stages => '{100}')")[0]
               .as<int64_t>();
    txn.commit();
  }

  void ExpectCompletedCleanly() {
    const std::string j = std::to_string(job_);
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
    EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures"), "0");
    EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                     " AND (state <> 'done' OR attempts <> 1)"),
              "0");
    for (const auto& [id, value] : DecryptAll(conn(), "public.cards")) {
      ASSERT_EQ(value.first, 2u) << id;
      ASSERT_EQ(value.second, PlaintextFor(id)) << id;
    }
  }

  WorkerOptions Options() {
    WorkerOptions o;
    o.job = job_;
    o.concurrency = 2;
    o.idle_poll = std::chrono::milliseconds(20);
    return o;
  }

  int64_t job_ = 0;
};

TEST_F(WorkerPoolTest, ClaimsNothingWhileTheKmsIsUnavailableAndResumesByItself) {
  std::atomic<bool> available{false};
  std::atomic<int> asked{0};
  WorkerOptions o = Options();
  o.kms_available = [&] {
    asked++;
    return available.load();
  };
  WorkerPool pool(conninfo(), o, [](uint32_t id) { return TestDataKey(id); });
  std::atomic<bool> stop{false};
  std::thread run([&] { pool.Run(stop); });
  while (asked < 20) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // Both loops asked many times and were told no: nothing may have been claimed.
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.batches WHERE state <> 'pending' OR attempts > 0"),
            "0");
  EXPECT_GE(pool.stats().kms_pauses.load(), 1);  // once per loop that got to ask
  EXPECT_LE(pool.stats().kms_pauses.load(), 2);
  available = true;
  run.join();
  ExpectCompletedCleanly();
}

TEST_F(WorkerPoolTest, TransientKmsErrorsReleaseBatchesWithoutUsingAttemptsOrQuarantining) {
  // Eight key lookups in a row fail as an unreachable KMS would: each ends an attempt at once,
  // and the released batch is claimed again first, so one batch meets more failures than its
  // max_attempts (3) would allow if they counted.
  std::atomic<int> lookups{0};
  WorkerPool pool(conninfo(), Options(), [&](uint32_t id) {
    const int n = ++lookups;
    if (n >= 3 && n < 11) throw TransientError("KMS Decrypt failed 8 times in a row");
    return TestDataKey(id);
  });
  std::atomic<bool> stop{false};
  pool.Run(stop);
  EXPECT_GT(pool.stats().batches_released.load(), 0);
  ExpectCompletedCleanly();
}

TEST_F(WorkerPoolTest, AKeyErrorStopsThePoolAndLeavesTheBatchUntouched) {
  WorkerPool pool(conninfo(), Options(), [](uint32_t id) -> Secret {
    throw KeyError("AWS KMS Decrypt for data key " + std::to_string(id) + " failed: denied");
  });
  std::atomic<bool> stop{false};
  EXPECT_THROW(pool.Run(stop), KeyError);
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.batches WHERE state <> 'pending' OR attempts > 0"),
            "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures"), "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM public.cards WHERE substring(token from 1 for 5) = "
                   "'\\x0100000001'::bytea"),
            "1000");
}

TEST_F(WorkerPoolTest, IdleLoopsWakeWhenAStageOpensOrTheJobEnds) {
  // A staged job that advances by itself. Whichever loop finds nothing to claim while the other
  // finishes a stage waits for the next one; with an idle poll of an hour it can only wake on the
  // job's notification (rekey_jobs), and the pool returns when the job ends only if it does.
  // The fixture's job first: a column has one unfinished job at a time.
  Exec("UPDATE rekey.jobs SET state = 'cancelled' WHERE job_id = " + std::to_string(job_));
  const int64_t staged =
      testing::CreateJobSql(conn(),
                            "'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 100, "
                            "p_stages => '{1,50,100}', p_observe => '0s'");
  WorkerOptions o = Options();
  o.job = staged;
  o.idle_poll = std::chrono::hours(1);
  WorkerPool pool(conninfo(), o, [](uint32_t id) { return TestDataKey(id); });
  std::atomic<bool> stop{false};
  std::atomic<bool> returned{false};
  std::thread run([&] {
    pool.Run(stop);
    returned = true;
  });
  // Not a timing bar: a generous deadline that turns "waits for an hour" into a failure.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!returned && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(returned.load()) << "a claim loop slept through the job's stage changes";
  stop = true;
  run.join();
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(staged)),
            "completed");
  for (const auto& [id, value] : DecryptAll(conn(), "public.cards")) {
    ASSERT_EQ(value.first, 2u) << id;
    ASSERT_EQ(value.second, PlaintextFor(id)) << id;
  }
}

TEST_F(WorkerPoolTest, WorkRemainsUntilNoJobNeedsAWorker) {
  const std::string j = std::to_string(job_);
  auto remains = [&] { return WorkRemains(conn(), job_); };
  EXPECT_TRUE(remains()) << "pending batches";
  // The moment after another worker committed the stage's last batch, before it moves the job
  // on: nothing to claim, yet the job is not done.
  Exec("UPDATE rekey.batches SET state = 'done' WHERE job_id = " + j);
  EXPECT_TRUE(remains()) << "an active job whose stage is finished still needs its move";
  Exec("UPDATE rekey.jobs SET state = 'verifying' WHERE job_id = " + j);
  EXPECT_TRUE(remains()) << "a gate to run";
  Exec("UPDATE rekey.jobs SET state = 'awaiting_approval', observe = '0s' WHERE job_id = " + j);
  EXPECT_TRUE(remains()) << "advances by itself";
  Exec("UPDATE rekey.jobs SET observe = NULL WHERE job_id = " + j);
  EXPECT_FALSE(remains()) << "waits for a person";
  Exec("UPDATE rekey.jobs SET state = 'paused' WHERE job_id = " + j);
  EXPECT_FALSE(remains());
  EXPECT_FALSE(WorkRemains(conn(), job_ + 1)) << "no such job";
  EXPECT_FALSE(WorkRemains(conn(), std::nullopt)) << "no job needs a worker";
  // From the finished-stage moment, one loop moves the job on to its gate, which refuses it:
  // the batches were only marked done, so their audit rows are missing.
  Exec("UPDATE rekey.jobs SET state = 'active' WHERE job_id = " + j);
  WorkerOptions o = Options();
  o.concurrency = 1;
  WorkerPool pool(conninfo(), o, [](uint32_t id) { return TestDataKey(id); });
  std::atomic<bool> stop{false};
  pool.Run(stop);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "paused");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.gates WHERE job_id = " + j +
                   " AND NOT passed AND NOT audit_complete"),
            "1");
  EXPECT_FALSE(remains());
}

}  // namespace
}  // namespace rekey::rotation
