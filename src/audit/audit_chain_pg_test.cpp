// The audit chain against a real PostgreSQL: each kind of tampering a superuser can do with the
// append-only triggers out of the way (session_replication_role = replica) is caught, and
// concurrent writers leave a complete, intact chain.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "audit/audit_chain.h"
#include "harness/pg_server.h"
#include "harness/process.h"

namespace rekey::audit {
namespace {

using rekey::testing::PgTest;
using rekey::testing::ProcessResult;
using rekey::testing::RunRekey;
using ::testing::HasSubstr;

class AuditChainPgTest : public PgTest {
 protected:
  void Events(int n, const std::string& action = "test.event") {
    for (int i = 0; i < n; ++i) {
      Exec("SELECT rekey.audit_event('" + action + "', " + std::to_string(i) +
           ", jsonb_build_object('i', " + std::to_string(i) + "))");
    }
  }
  // As a superuser with every trigger off: what an attacker with full access can do.
  void Tamper(const std::string& sql) {
    Exec("SET session_replication_role = replica; " + sql +
         "; SET session_replication_role = origin");
  }
  std::vector<std::string> Kinds(const Verification& v) {
    std::vector<std::string> kinds;
    for (const auto& f : v.findings) kinds.push_back(f.kind);
    return kinds;
  }
  ProcessResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), {"--db", conninfo(), "audit"});
    return RunRekey(args);
  }
};

TEST_F(AuditChainPgTest, EveryWriteIsSealedAndTheChainVerifies) {
  Events(25);
  // Sealed as written: no catch-up seal needed.
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit a WHERE NOT EXISTS "
                  "(SELECT 1 FROM rekey.audit_chain c WHERE c.audit_id = a.audit_id)"),
            0);
  Verification v = Verify(conn());
  EXPECT_TRUE(v.ok()) << v.findings[0].detail;
  EXPECT_EQ(v.rows_checked, Count("SELECT count(*) FROM rekey.audit"));
  EXPECT_EQ(v.head.seq, Count("SELECT max(seq) FROM rekey.audit_chain"));
  // The head as read, and as sealed durably (nothing left to seal), is the one verified.
  EXPECT_EQ(FormatHead(CurrentHead(conn())), FormatHead(v.head));
  EXPECT_EQ(FormatHead(SealDurably(conn())), FormatHead(v.head));
  // The SQL sealer and this code agree on every digest, including odd text.
  Exec(
      R"(SELECT rekey.audit_event('odd', NULL, '{"s": "ä,1:\"x\"\n", "n": null}', 'failure', 7, 'é'))");
  v = Verify(conn());
  EXPECT_TRUE(v.ok());
  EXPECT_EQ(v.head.seq, Count("SELECT max(seq) FROM rekey.audit_chain"));
}

TEST_F(AuditChainPgTest, AnAlteredRowIsFoundAndOnlyThatOne) {
  Events(10);
  Tamper("UPDATE rekey.audit SET details = '{\"i\": 99}' WHERE job_id = 4");
  Verification v = Verify(conn());
  ASSERT_EQ(v.findings.size(), 1u);
  EXPECT_EQ(v.findings[0].kind, "altered");
  EXPECT_EQ(*v.findings[0].audit_id, Count("SELECT audit_id FROM rekey.audit WHERE job_id = 4"));
  // Each column counts.
  for (const char* change : {"actor = 'someone-else'", "outcome = 'failure'",
                             "at = at + interval '1 us'", "batch_no = 1", "action = 'x'"}) {
    Tamper(std::string("UPDATE rekey.audit SET ") + change + " WHERE job_id = 6");
    EXPECT_GE(Verify(conn()).findings.size(), 2u) << change;
  }
}

TEST_F(AuditChainPgTest, ADeletedRowIsFound) {
  Events(10);
  Tamper("DELETE FROM rekey.audit WHERE job_id = 3");
  EXPECT_THAT(Kinds(Verify(conn())), ::testing::ElementsAre("deleted"));
}

TEST_F(AuditChainPgTest, InsertedRowsAreFoundWhetherOldOrBackdated) {
  Events(5);
  // A row claiming an old transaction: older than the horizon of seals that would have seen it.
  Tamper("INSERT INTO rekey.audit (action, job_id, xid) VALUES ('forged.old_xid', 1, '3')");
  Verification v = Verify(conn());
  EXPECT_THAT(Kinds(v), ::testing::ElementsAre("inserted"));
  // A row with a fresh transaction but a time long before seals that did not see it: it gets
  // sealed like a new event, and is still flagged as backdated.
  Exec("SELECT pg_sleep(0)");
  Tamper("DELETE FROM rekey.audit WHERE action = 'forged.old_xid'");
  Tamper(
      "INSERT INTO rekey.audit (action, job_id, at) VALUES ('forged.backdated', 1, now() - "
      "interval '2 days')");
  Seal(conn());
  EXPECT_THAT(Kinds(Verify(conn())), ::testing::ElementsAre("inserted"));
  EXPECT_THAT(Verify(conn()).findings[0].detail, HasSubstr("backdated"));
}

TEST_F(AuditChainPgTest, AReorderedOrRewrittenChainIsFound) {
  Events(8);
  // Hiding an alteration by also replacing its sealed digest breaks the link.
  Tamper(
      "UPDATE rekey.audit SET outcome = 'failure' WHERE job_id = 2;"
      "UPDATE rekey.audit_chain c SET row_digest = sha256(rekey.audit_row_bytes(a)) FROM "
      "rekey.audit a "
      "WHERE a.audit_id = c.audit_id AND a.job_id = 2");
  EXPECT_THAT(Kinds(Verify(conn())), ::testing::Contains("chain_broken"));
}

TEST_F(AuditChainPgTest, AMissingChainLinkIsAGap) {
  Events(8);
  Tamper("DELETE FROM rekey.audit_chain WHERE seq = (SELECT max(seq) - 3 FROM rekey.audit_chain)");
  EXPECT_THAT(Kinds(Verify(conn())), ::testing::Contains("gap"));
}

TEST_F(AuditChainPgTest, ARecordedHeadCatchesACutOffHistory) {
  Events(6);
  const Head head = Verify(conn()).head;
  Events(3);
  EXPECT_TRUE(Verify(conn(), head).ok());
  // Cutting off the newest rows with their links leaves a consistent but shorter chain.
  const std::string from = std::to_string(head.seq);
  Tamper(
      "DELETE FROM rekey.audit WHERE audit_id IN "
      "(SELECT audit_id FROM rekey.audit_chain WHERE seq >= " +
      from + ");" + "DELETE FROM rekey.audit_chain WHERE seq >= " + from);
  EXPECT_TRUE(Verify(conn()).ok()) << "undetectable without a recorded head";
  EXPECT_THAT(Kinds(Verify(conn(), head)), ::testing::ElementsAre("head_mismatch"));
}

TEST_F(AuditChainPgTest, ARecordedHeadCatchesARewrittenHistory) {
  Events(6);
  const Head head = Verify(conn()).head;
  // Alter an early row and reseal the whole chain from genesis: self-consistent again.
  Tamper(
      "UPDATE rekey.audit SET outcome = 'failure' WHERE job_id = 1; DELETE FROM rekey.audit_chain");
  Seal(conn());
  EXPECT_TRUE(Verify(conn()).ok()) << "undetectable without a recorded head";
  EXPECT_THAT(Kinds(Verify(conn(), head)), ::testing::ElementsAre("head_mismatch"));
}

TEST_F(AuditChainPgTest, ConcurrentWritersLeaveACompleteIntactChain) {
  constexpr int kThreads = 6, kEach = 60;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      pqxx::connection c(conninfo());
      for (int i = 0; i < kEach; ++i) {
        pqxx::work txn(c);
        txn.exec_params("SELECT rekey.audit_event('concurrent', $1::bigint)", t);
        txn.exec_params("SELECT rekey.audit_event('concurrent.second', $1::bigint)", t);
        txn.commit();
      }
    });
  }
  for (auto& t : threads) t.join();
  Seal(conn());  // what lost the race to seal is sealed now
  Verification v = Verify(conn());
  EXPECT_TRUE(v.ok());
  EXPECT_EQ(v.unsealed, 0);
  EXPECT_EQ(v.rows_checked, Count("SELECT count(*) FROM rekey.audit"));
  EXPECT_GE(v.rows_checked, 2 * kThreads * kEach);
}

TEST_F(AuditChainPgTest, CliVerifiesPrintsTheHeadAndExitsFiveWhenTampered) {
  Events(4);
  ProcessResult r = Cli({"verify"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("audit log intact"));
  const std::string head = r.out.substr(r.out.rfind("head ") + 5, std::string::npos);
  r = Cli({"verify", "--json", "--expect-head", head.substr(0, head.find('\n'))});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"ok\":true"));
  Tamper("UPDATE rekey.audit SET actor = 'mallory' WHERE job_id = 1");
  r = Cli({"verify"});
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_THAT(r.out, HasSubstr("TAMPERED altered"));
  EXPECT_THAT(r.err, HasSubstr("security incident"));
  EXPECT_EQ(Cli({"verify", "--expect-head", "nonsense"}).exit_code, 2);
  r = Cli({"seal"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace rekey::audit
