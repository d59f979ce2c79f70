// Key-age policy, `rekey keys status`, `rekey rotate-due` and `rekey report` against the real
// PostgreSQL, driven through the rekey binary.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

class OpsSchedulingTest : public PgTest {
 protected:
  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }
  json RekeyJson(const std::vector<std::string>& args) {
    ProcessResult r = Rekey(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    json out = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(out.is_discarded()) << r.out;
    return out;
  }
  int64_t CreateJob(const std::string& args) {
    pqxx::work txn(conn());
    int64_t id = txn.exec1("SELECT rekey.create_job(" + args + ")")[0].as<int64_t>();
    txn.commit();
    return id;
  }
  void WorkAll() {
    ProcessResult r =
        RunRekey({"--db", conninfo(), "work", "--all", "--concurrency", "2"}, WorkerEnv());
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  void Work(int64_t job) {
    ProcessResult r =
        RunRekey({"--db", conninfo(), "work", "--job", std::to_string(job), "--concurrency", "2"},
                 WorkerEnv());
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  // A table of `rows` values under test key `key`, registered as a target, and `key` made the
  // primary of `scope` with a max age of one second.
  void ScopeWithData(const std::string& scope, uint32_t key, const std::string& table, int rows) {
    {
      auto kms = TestKms();
      pqxx::work txn(conn());
      keyring::ImportKey(txn, kms, key, scope, TestDataKey(key));
      txn.exec0("UPDATE rekey.keys SET status = 'primary', max_age = '1 second' WHERE key_id = " +
                std::to_string(key));
      txn.commit();
    }
    if (rows == 0) return;
    SeedTinkTable(conn(), table, rows, key);
    Exec(
        "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec,"
        " key_id_column) VALUES ('public', '" +
        table.substr(7) + "', 'id', 'token', 'tink', 'key_id')");
  }
};

std::vector<std::string> Actions(const json& result) {
  std::vector<std::string> out;
  for (const auto& r : result) {
    out.push_back(r["scope"].get<std::string>() + ":" + r["action"].get<std::string>());
  }
  return out;
}

TEST_F(OpsSchedulingTest, RotateDueRotatesOverdueScopesAFewPerRunThroughStagedJobs) {
  Exec("INSERT INTO rekey.key_policies (scope, max_age) VALUES ('*', '90 days')");
  ScopeWithData("a", 1, "public.cards_a", 300);
  ScopeWithData("b", 2, "public.cards_b", 300);
  ScopeWithData("c", 3, "public.cards_c", 300);
  ScopeWithData("e", 5, "", 0);  // no registered values under key 5
  {
    auto kms = TestKms();
    pqxx::work txn(conn());
    keyring::ImportKey(txn, kms, 4, "d", TestDataKey(4));  // primary, within its policy
    txn.exec0("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 4");
    txn.commit();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // past the 1 s max age

  json status = RekeyJson({"keys", "status", "--json"});
  std::vector<std::string> overdue;
  for (const auto& k : status) {
    if (k["overdue"].get<bool>()) overdue.push_back(std::to_string(k["key_id"].get<int>()));
  }
  EXPECT_EQ(overdue, (std::vector<std::string>{"1", "2", "3", "5"}));
  EXPECT_EQ(status[3]["scope"], "d");
  EXPECT_EQ(status[3]["max_age_seconds"], 90 * 86400);
  EXPECT_EQ(status[3]["max_age_source"], "default");
  ProcessResult table = Rekey({"keys", "status"});
  EXPECT_THAT(table.out, HasSubstr("4 primary keys overdue"));

  // A dry run changes nothing and says what the real run would do.
  json dry = RekeyJson({"rotate-due", "--max-jobs", "2", "--dry-run", "--json"});
  EXPECT_EQ(Actions(dry), (std::vector<std::string>{"a:would_schedule", "b:would_schedule",
                                                    "c:deferred", "e:deferred"}));
  EXPECT_THAT(dry[0]["targets"][0].get<std::string>(), HasSubstr("public.cards_a"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys"), 5);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 0);

  // Two scopes per run, oldest due first.
  json first = RekeyJson(
      {"rotate-due", "--max-jobs", "2", "--observe", "0s", "--stages", "10,100", "--json"});
  EXPECT_EQ(Actions(first),
            (std::vector<std::string>{"a:scheduled", "b:scheduled", "c:deferred", "e:deferred"}));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 2);
  EXPECT_EQ(Scalar("SELECT string_agg(k.source_key_id || '->' || k.target_key_id || ' ' || "
                   "j.schema_name || '.' || j.table_name || ' ' || array_to_string(j.stage_plan, "
                   "','), '; ' ORDER BY j.job_id) FROM rekey.jobs j JOIN rekey.job_keys k USING "
                   "(job_id)"),
            "1->6 public.cards_a 10,100; 2->7 public.cards_b 10,100");
  EXPECT_EQ(Scalar("SELECT scope || ':' || status FROM rekey.keys WHERE key_id = 6"), "a:enabled");
  // One rotation per scope, holding its jobs (tests/rotation_group_pg_test.cpp for more tables).
  EXPECT_EQ(Scalar("SELECT string_agg(r.scope || ':' || r.to_key || ':' || j.job_id, ' ' ORDER BY "
                   "r.rotation_id) FROM rekey.rotations r JOIN rekey.jobs j USING (rotation_id)"),
            "a:6:1 b:7:2");
  EXPECT_EQ(first[0]["rotation"], 1);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'rotation.scheduled'"), 2);

  // The exporter shows the scheduled jobs' progress (nothing processed yet) and the overdue keys.
  {
    ChildProcess exporter(
        {REKEY_BINARY, "--db", conninfo(), "exporter", "--listen", "127.0.0.1:0"});
    auto started = WaitForLog(exporter, "serving /metrics");
    ASSERT_TRUE(started) << ReadFile(exporter.stderr_path());
    const std::string m = HttpGet(ListenPort(*started), "/metrics").body;
    EXPECT_EQ(Sample(m, "rekey_job_rows{job_id=\"1\",state=\"active\"}"), 300) << m;
    EXPECT_EQ(Sample(m, "rekey_job_rows_processed{job_id=\"1\",state=\"active\"}"), 0);
    EXPECT_EQ(Sample(m, "rekey_jobs{state=\"active\"}"), 2);
    EXPECT_EQ(Sample(m, "rekey_keys_overdue"), 4) << "still primary until their jobs promote";
    EXPECT_EQ(Sample(m, "rekey_key_max_age_seconds{key_id=\"1\",scope=\"a\",status=\"primary\"}"),
              1);
    exporter.Signal(SIGTERM);
    EXPECT_EQ(exporter.Wait(30).exit_code, 0);
  }

  json second =
      RekeyJson({"rotate-due", "--max-jobs", "2", "--observe", "0s", "--stagger", "1", "--json"});
  EXPECT_EQ(Actions(second),
            (std::vector<std::string>{"a:in_flight", "b:in_flight", "c:scheduled", "e:promoted"}));
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 5"), "decrypt_only");
  EXPECT_EQ(Scalar("SELECT max(at) - min(at) >= interval '1 second' FROM rekey.audit WHERE action "
                   "= 'rotation.scheduled' AND details->>'scope' IN ('c', 'e')"),
            "t")
      << "--stagger spaces the scopes of one run";
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE scope = 'e' AND key_id <> 5"), "primary");

  json third = RekeyJson({"rotate-due", "--max-jobs", "2", "--json"});
  EXPECT_EQ(Actions(third),
            (std::vector<std::string>{"a:in_flight", "b:in_flight", "c:in_flight"}));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 3);

  WorkAll();
  EXPECT_EQ(Scalar("SELECT string_agg(state, ',') FROM rekey.jobs"),
            "completed,completed,completed");
  EXPECT_EQ(Scalar("SELECT string_agg(state, ',' ORDER BY rotation_id) FROM rekey.rotations"),
            "completed,completed,completed");
  for (const char* t : {"public.cards_a", "public.cards_b", "public.cards_c"}) {
    EXPECT_EQ(Count(std::string("SELECT count(*) FROM ") + t +
                    " WHERE substring(token from 2 for 4) <> int4send(key_id)"),
              0);
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.key_age WHERE overdue"), 0);
  EXPECT_EQ(Rekey({"rotate-due"}).out, "no key is overdue\n");
  EXPECT_THAT(Rekey({"keys", "status"}).out, HasSubstr("no key is overdue"));
}

TEST_F(OpsSchedulingTest, AScopeThatFailsLeavesTheOthersScheduled) {
  ScopeWithData("a", 1, "public.cards_a", 100);
  // Scope x's key is wrapped by AWS KMS, which this environment cannot reach (no region).
  Exec(
      "INSERT INTO rekey.keys (key_id, scope, kms_provider, kms_key_ref, wrapped_key, status, "
      "max_age) VALUES (9, 'x', 'aws-kms', 'alias/rekey', '\\x00', 'enabled', '1 second');"
      "UPDATE rekey.keys SET status = 'primary' WHERE key_id = 9");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  ProcessResult r = Rekey({"rotate-due", "--json"});
  EXPECT_EQ(r.exit_code, 2) << "a configuration problem: " << r.err;
  json out = json::parse(r.out);
  EXPECT_EQ(Actions(out), (std::vector<std::string>{"a:scheduled", "x:failed"}));
  EXPECT_THAT(out[1]["detail"].get<std::string>(), HasSubstr("AWS_REGION"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE scope = 'x'"), 1)
      << "the failed scope's transaction left nothing behind";
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 1);
}

// Two keyring scopes whose values share one column: a column has one unfinished job at a time,
// so the second scope's rotation waits for the first instead of failing the run (a CronJob that
// exits non-zero on every run while a rotation is in progress pages someone for nothing).
TEST_F(OpsSchedulingTest, AKeyWhoseColumnAnotherRotationIsMovingWaitsForTheNextRun) {
  ScopeWithData("a", 1, "public.cards", 100);
  ScopeWithData("b", 2, "", 0);
  SeedTinkTable(conn(), "public.cards_b", 100, 2);
  Exec(
      "INSERT INTO public.cards (id, tenant_id, key_id, token) SELECT id + 100, tenant_id, "
      "key_id, token FROM public.cards_b; DROP TABLE public.cards_b");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));

  ProcessResult r = Rekey({"rotate-due", "--observe", "0s", "--stages", "100", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json first = json::parse(r.out);
  EXPECT_EQ(Actions(first), (std::vector<std::string>{"a:scheduled", "b:in_flight"}));
  EXPECT_THAT(first[1]["detail"].get<std::string>(), HasSubstr("being rotated by job 1"));
  EXPECT_EQ(first[1]["jobs"], json::array({1}));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE scope = 'b'"), 1)
      << "no key is created for a rotation that waits";

  Work(1);
  json second = RekeyJson({"rotate-due", "--observe", "0s", "--stages", "100", "--json"});
  EXPECT_EQ(Actions(second), (std::vector<std::string>{"b:scheduled"}));
  Work(2);
  EXPECT_EQ(Scalar("SELECT string_agg(state, ',' ORDER BY job_id) FROM rekey.jobs"),
            "completed,completed");
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE substring(token from 2 for 4) IN "
                  "(int4send(1), int4send(2))"),
            0);
}

TEST_F(OpsSchedulingTest, PoliciesAreSetAuditedAndValidated) {
  ProcessResult r = Rekey({"keys", "policy", "set", "--scope", "payments", "--max-age", "30d"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("keys in scope payments now rotate after 30 days"));
  r = Rekey({"keys", "policy", "set", "--max-age", "90 days"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(Rekey({"keys", "policy", "list"}).out, HasSubstr("payments         30 days"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'key_policy.set'"), 2);
  for (const char* bad : {"soon", "-5d", "0s"}) {
    r = Rekey({"keys", "policy", "set", "--max-age", bad});
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("is not a positive PostgreSQL interval")) << bad;
  }
}

class ReportTest : public OpsSchedulingTest {
 protected:
  void SetUp() override {
    OpsSchedulingTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }
  void ExpectNoKeyMaterial(const std::string& text) {
    for (uint32_t id : {1u, 2u}) {
      Secret k = TestDataKey(id);
      Bytes b(k.data(), k.data() + k.size());
      EXPECT_EQ(text.find(HexEncode(b)), std::string::npos);
      EXPECT_EQ(text.find(Base64Encode(b)), std::string::npos);
    }
  }
};

TEST_F(ReportTest, ACompletedStagedJobHasFullEvidence) {
  SeedTinkTable(conn(), "public.cards", 5000, 1);
  // Two values that cannot decrypt, beyond the canary: quarantined, below the 1% threshold.
  Exec(
      "UPDATE public.cards SET token = set_byte(token, 10, get_byte(token, 10) # 255) WHERE id IN "
      "(SELECT id FROM public.cards WHERE rekey.stage_bucket(id::text) >= 5000 ORDER BY id LIMIT "
      "2)");
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', p_stages => "
      "'{1,50,100}', p_error_threshold => 0.01, p_batch_size => 400");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j, "--observe", "0s"}).exit_code, 0);
  Work(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");

  ProcessResult r = Rekey({"report", j, "--format", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("stored in rekey.reports (sha256 "));
  json report = json::parse(r.out);
  EXPECT_EQ(report["outcome"], "rotated");
  EXPECT_EQ(report["job"]["target"], "public.cards");
  EXPECT_EQ(report["job"]["columns"], json::array({"token"}));
  ASSERT_EQ(report["keys"].size(), 1u);
  EXPECT_EQ(report["keys"][0]["before"]["key_id"], 1);
  EXPECT_EQ(report["keys"][0]["before"]["status_now"], "decrypt_only");
  EXPECT_EQ(report["keys"][0]["after"]["key_id"], 2);
  EXPECT_EQ(report["keys"][0]["after"]["status_now"], "primary");
  EXPECT_EQ(report["keys"][0]["after"]["kms_provider"], "local");
  EXPECT_THAT(report["keys"][0]["after"]["kms_key_ref"].get<std::string>(), HasSubstr("local:"));
  std::vector<std::string> timeline;
  for (const auto& s : report["stages"]) {
    std::string gate =
        s["gates"].empty() ? "-" : (s["gates"].back()["passed"].get<bool>() ? "passed" : "failed");
    timeline.push_back(s["kind"].get<std::string>() + ":" + s["state"].get<std::string>() + ":" +
                       gate);
  }
  EXPECT_EQ(timeline, (std::vector<std::string>{"rollout:passed:passed", "rollout:passed:passed",
                                                "rollout:passed:passed", "sweep:done:-"}));
  EXPECT_EQ(report["stages"][0]["gates"][0]["approved_by"], "postgres")
      << "the canary was approved by a person";
  EXPECT_FALSE(report["stages"][0]["gates"][0]["approved_at"].is_null());
  EXPECT_EQ(report["rows"]["total"], 5000);
  EXPECT_EQ(report["rows"]["reencrypted"], 4998);
  EXPECT_EQ(report["rows"]["quarantined"], 2);
  EXPECT_EQ(report["quarantine"]["values"], 2);
  EXPECT_DOUBLE_EQ(report["decrypt_error_rate"].get<double>(), 0.0004);
  EXPECT_EQ(report["audit"]["complete"], true);
  EXPECT_EQ(report["audit"]["batches_done"], report["audit"]["batches_with_audit_row"]);
  EXPECT_GT(report["job"]["duration_seconds"].get<double>(), 0);
  bool approved = false;
  for (const auto& a : report["approvals"]) {
    approved = approved || (a["action"] == "job.advanced" && a["actor"] == "postgres");
  }
  EXPECT_TRUE(approved);
  ExpectNoKeyMaterial(r.out);

  // Stored, with a digest anyone can recompute, and append-only.
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.reports WHERE job_id = " + j +
                  " AND sha256 = encode(sha256(convert_to(body::text, 'UTF8')), 'hex')"),
            1);
  EXPECT_ANY_THROW(Exec("UPDATE rekey.reports SET markdown = 'edited'"));

  ProcessResult md = Rekey({"report", j, "--format", "markdown", "--no-store"});
  ASSERT_EQ(md.exit_code, 0) << md.err;
  EXPECT_THAT(md.out, HasSubstr("# Key rotation report: job " + j));
  EXPECT_THAT(md.out, HasSubstr("| Outcome | **rotated**"));
  EXPECT_THAT(md.out, HasSubstr("**Complete**"));
  EXPECT_THAT(md.out, HasSubstr("postgres at "));
  ExpectNoKeyMaterial(md.out);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.reports"), 1) << "--no-store stores nothing";

  // A completion audit row that went missing (only a superuser bypassing the triggers can do
  // that) is reported.
  Exec(
      "ALTER TABLE rekey.audit DISABLE TRIGGER audit_append_only;"
      "DELETE FROM rekey.audit WHERE audit_id = (SELECT min(audit_id) FROM rekey.audit WHERE "
      "action = 'rotation.batch.completed');"
      "ALTER TABLE rekey.audit ENABLE TRIGGER audit_append_only");
  report = json::parse(Rekey({"report", j, "--format", "json", "--no-store"}).out);
  EXPECT_EQ(report["audit"]["complete"], false);
  EXPECT_EQ(report["audit"]["batches_missing_audit_row"].size(), 1u);
}

TEST_F(ReportTest, ARolledBackJobSaysSo) {
  SeedTinkTable(conn(), "public.cards", 3000, 1);
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  int64_t job = CreateJob(
      "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', p_stages => "
      "'{1,50,100}', p_batch_size => 300");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(job);
  ProcessResult r = Rekey({"job", "rollback", j, "--reason", "canary latency"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "rolled_back");

  r = Rekey({"report", j, "--format", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json report = json::parse(r.out);
  EXPECT_EQ(report["outcome"], "rolled_back");
  EXPECT_EQ(report["keys"][0]["before"]["status_now"], "primary");
  EXPECT_EQ(report["keys"][0]["after"]["status_now"], "decrypt_only");
  EXPECT_GT(report["rows"]["restored_by_rollback"].get<int64_t>(), 1000);
  EXPECT_EQ(report["stages"].back()["kind"], "rollback");
  EXPECT_EQ(report["audit"]["complete"], true);
  std::vector<std::string> actions;
  for (const auto& a : report["approvals"]) actions.push_back(a["action"]);
  EXPECT_THAT(actions, ::testing::Contains("job.rollback_started"));
  EXPECT_THAT(actions, ::testing::Contains("job.rolled_back"));
  EXPECT_EQ(Count("SELECT count(*) FROM public.cards WHERE key_id <> 1"), 0);
  ProcessResult md = Rekey({"report", j});
  EXPECT_THAT(md.out, HasSubstr("| Outcome | **rolled_back**"));
  EXPECT_THAT(md.out, HasSubstr("| rollback |"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.reports WHERE job_id = " + j), 2);
}

}  // namespace
}  // namespace rekey::testing
