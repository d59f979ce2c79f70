// The per-batch control-plane functions read a bounded number of buffers however much of a job is
// done and however long the audit history is (migrations/0009_control_plane_speed.sql).
// Buffers, not time: EXPLAIN (ANALYZE, BUFFERS) counts the pages a call touched, nested
// statements and triggers included, which is deterministic where a timing is not. Each check
// runs under every plan_cache_mode, because PL/pgSQL switches to a cached generic plan after
// five calls, and that plan is the one a long rotation runs with. Also the notification that
// wakes idle workers when a job changes.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "harness/pg_server.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

const char* const kPlanCacheModes[] = {"auto", "force_generic_plan", "force_custom_plan"};

// The shared buffers (hit + read) a statement's execution touched.
int64_t BuffersOf(pqxx::transaction_base& txn, const std::string& sql) {
  const auto plan = nlohmann::json::parse(
      txn.exec1("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)[0].as<std::string>());
  const auto& top = plan.at(0).at("Plan");
  return top.at("Shared Hit Blocks").get<int64_t>() + top.at("Shared Read Blocks").get<int64_t>();
}

class ControlPlaneTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }

  // A job over `rows` rows in batches of 2, so `rows / 2` batches in one stage.
  int64_t JobWithBatches(const std::string& table, int64_t rows) {
    SeedTinkTable(conn(), table, rows, 1);
    return CreateJobSql(conn(), "'" + table +
                                    "', ARRAY['token'], '{\"1\": 2}', p_batch_size => 2, "
                                    "p_stages => '{100}'");
  }
};

TEST_F(ControlPlaneTest, AClaimReadsAFewPagesHoweverManyBatchesArePendingOrDone) {
  // Statistics as autovacuum leaves them after an earlier rotation finished: every batch done.
  const int64_t earlier = JobWithBatches("public.cards0", 6000);
  Exec("UPDATE rekey.batches SET state = 'done' WHERE job_id = " + std::to_string(earlier) +
       "; ANALYZE rekey.batches");
  int table = 0;
  for (const char* mode : kPlanCacheModes) {
    const int64_t job = JobWithBatches("public.cards" + std::to_string(++table), 6000);
    const std::string where = "job_id = " + std::to_string(job) + " AND batch_no ";
    ASSERT_EQ(Scalar("SELECT count(*) FROM rekey.batches WHERE job_id = " + std::to_string(job)),
              "3000");
    pqxx::connection session(conninfo());
    pqxx::nontransaction(session).exec0(std::string("SET plan_cache_mode = ") + mode);
    // Ten claims (and completions) with 3,000 batches pending, then ten with 2,900 done; the
    // later claims of a session run on cached plans.
    int next = 1;
    for (int i = 0; i < 20; ++i, ++next) {
      if (i == 10) {
        Exec("UPDATE rekey.batches SET state = 'done' WHERE " + where + "<= 2900");
        next = 2901;
      }
      pqxx::work txn(session);
      const int64_t buffers =
          BuffersOf(txn, "SELECT * FROM rekey.claim_batch('w', " + std::to_string(job) + ")");
      // The claimed batch is the next pending one in batch order.
      EXPECT_EQ(txn.exec1("SELECT state || ':' || worker_id FROM rekey.batches WHERE " + where +
                          "= " + std::to_string(next))[0]
                    .as<std::string>(),
                "running:w")
          << mode << " claim " << i;
      // A claim that sorted the pending batches, or skipped the done ones, would read hundreds
      // to thousands of pages, more as the job grows. Not checked: the first call of a session,
      // which reads the catalogs (~900 pages), and the first after the bulk update, which meets
      // the 2,900 index entries it left behind and marks them dead for the claims after it.
      if (i != 0 && i != 10) {
        EXPECT_LT(buffers, 150) << mode << " claim " << i;
      }
      txn.exec0("UPDATE rekey.batches SET state = 'done' WHERE " + where + "= " +
                std::to_string(next));
      txn.commit();
    }
  }
}

TEST_F(ControlPlaneTest, AClaimSkipsBatchesLiveWorkersHoldAndGoesOnToTheNextJob) {
  const int64_t first = JobWithBatches("public.cards", 6);
  const int64_t second = JobWithBatches("public.cards2", 4);
  // A live worker holds batch 1 of the first job (its session keeps the advisory lock).
  pqxx::connection other(conninfo());
  {
    pqxx::work txn(other);
    EXPECT_EQ(txn.exec1("SELECT job_id || '/' || batch_no FROM rekey.claim_batch('other')")[0]
                  .as<std::string>(),
              std::to_string(first) + "/1");
    txn.commit();
  }
  std::vector<std::string> claimed;
  pqxx::connection session(conninfo());
  for (int i = 0; i < 5; ++i) {
    pqxx::work txn(session);
    const auto r = txn.exec("SELECT job_id || '/' || batch_no FROM rekey.claim_batch('w')");
    if (r.empty()) break;
    const std::string batch = r[0][0].as<std::string>();
    claimed.push_back(batch);
    txn.exec0("UPDATE rekey.batches SET state = 'done' WHERE job_id || '/' || batch_no = " +
              txn.quote(batch));
    txn.commit();
  }
  const std::string a = std::to_string(first) + "/";
  const std::string b = std::to_string(second) + "/";
  EXPECT_EQ(claimed, (std::vector<std::string>{a + "2", a + "3", b + "1", b + "2"}));
  // Once the holder is gone, its batch is claimable again (an attempt of a dead worker). The
  // server ends the backend, and frees its advisory lock, a moment after the client closes.
  const int other_pid = other.backendpid();
  other.disconnect();
  for (int i = 0; i < 1000 && Count("SELECT count(*) FROM pg_stat_activity WHERE pid = " +
                                    std::to_string(other_pid)) > 0;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  pqxx::work txn(session);
  EXPECT_EQ(txn.exec1("SELECT job_id || '/' || batch_no || ' attempt ' || attempt FROM "
                      "rekey.claim_batch('w')")[0]
                .as<std::string>(),
            a + "1 attempt 2");
}

TEST_F(ControlPlaneTest, SealingReadsAFewPagesHoweverLongTheAuditChain) {
  // 10,000 sealed audit rows of history (one statement, sealed by its own trigger).
  Exec("INSERT INTO rekey.audit (action) SELECT 'test.history' FROM generate_series(1, 10000)");
  ASSERT_EQ(Scalar("SELECT count(*) FROM rekey.audit_chain"),
            Scalar("SELECT count(*) FROM rekey.audit"));
  for (const char* mode : kPlanCacheModes) {
    pqxx::connection session(conninfo());
    pqxx::nontransaction(session).exec0(std::string("SET plan_cache_mode = ") + mode);
    for (int i = 0; i < 10; ++i) {
      pqxx::work txn(session);
      const int64_t buffers = BuffersOf(txn, "SELECT rekey.audit_event('test.event', NULL)");
      // The first call of a session reads the catalogs to compile the functions, and the first
      // seal after the bulk insert re-reads that transaction's rows (its xid is still at the
      // newest seal's horizon); after that the chain, about 200 pages, must not be scanned.
      if (i >= 2) {
        EXPECT_LT(buffers, 60) << mode << " event " << i;
      }
      txn.commit();
    }
  }
  // Every event was sealed.
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.audit a WHERE NOT EXISTS (SELECT 1 FROM "
                   "rekey.audit_chain c WHERE c.audit_id = a.audit_id)"),
            "0");
}

TEST_F(ControlPlaneTest, AJobNotifiesWhenItIsCreatedOrChangesStateOrStage) {
  pqxx::connection listener(conninfo());
  std::vector<std::string> heard;
  struct Receiver : pqxx::notification_receiver {
    Receiver(pqxx::connection& c, std::vector<std::string>* sink)
        : notification_receiver(c, "rekey_jobs"), out(sink) {}
    void operator()(const std::string& payload, int) override { out->push_back(payload); }
    std::vector<std::string>* out;
  } receiver(listener, &heard);
  auto drain = [&] {
    std::vector<std::string> got;
    while (listener.await_notification(0, 200000) > 0) {
    }
    got.swap(heard);
    return got;
  };
  SeedTinkTable(conn(), "public.cards", 10, 1);
  const int64_t job = CreateJobSql(conn(), "'public.cards', ARRAY['token'], '{\"1\": 2}'");
  const std::string id = std::to_string(job);
  // One notification per transaction and job (PostgreSQL folds duplicates within one).
  EXPECT_EQ(drain(), std::vector<std::string>{id});
  Exec("UPDATE rekey.jobs SET updated_at = now() WHERE job_id = " + id);
  EXPECT_TRUE(drain().empty()) << "neither the state nor the stage changed";
  Exec("SELECT rekey.pause_job(" + id + ")");
  EXPECT_EQ(drain(), std::vector<std::string>{id});
  Exec("SELECT rekey.resume_job(" + id + ")");
  EXPECT_EQ(drain(), std::vector<std::string>{id});
  Exec("UPDATE rekey.jobs SET current_stage = current_stage + 1 WHERE job_id = " + id);
  EXPECT_EQ(drain(), std::vector<std::string>{id});
}

}  // namespace
}  // namespace rekey::testing
