// Full rotations through the aws-kms provider: the real `rekey` binary against a real PostgreSQL
// and tests/kms/aws_kms_server.py (SigV4-verifying AWS KMS), with the server's faults -- a
// throttling storm, an outage in mid-run, bad credentials, a wrong region, a disabled key, an
// expired session token -- and master-key rotation with `rekey keys rewrap`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "aws_kms_support.h"
#include "common/error.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

class AwsRotationTest : public PgTest {
 protected:
  static void SetUpTestSuite() {
    server_ = new AwsKmsTestServer({"--key", "alias/rekey", "--key", "alias/other"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override {
    PgTest::SetUp();
    server_->Control({{"reset", true}, {"seed", 7}});
    for (const char* alias : {"alias/rekey", "alias/other"}) {
      server_->Control({{"key_state", {{"key", alias}, {"state", "Enabled"}}}});
    }
  }

  static EnvOverrides Env(const EnvOverrides& extra = {}) {
    return With(With(server_->Env(), WorkerEnv()), extra);
  }

  ProcessResult Rekey(std::vector<std::string> args, const EnvOverrides& env = Env(),
                      const std::string& stdin_data = "") {
    args.insert(args.begin(), {REKEY_BINARY, "--db", conninfo()});
    return RunProcess(args, env, stdin_data, 120);
  }

  // Imports test data keys `ids` wrapped by the test server's alias/rekey.
  void ImportAwsKeys(const std::vector<uint32_t>& ids) {
    for (uint32_t id : ids) {
      Secret key = TestDataKey(id);
      ProcessResult r =
          Rekey({"keys", "import", "--kms", "aws-kms", "--key-id", std::to_string(id), "--stdin"},
                Env(), std::string(reinterpret_cast<const char*>(key.data()), key.size()));
      ASSERT_EQ(r.exit_code, kExitOk) << r.err;
    }
  }

  int64_t CreateJob(const std::string& table, const std::string& map, int batch_size) {
    pqxx::work txn(conn());
    int64_t id =
        txn.exec1("SELECT rekey.create_job('" + table + "', ARRAY['token'], '" + map +
                  "', p_batch_size => " + std::to_string(batch_size) + ", p_stages => '{100}')")[0]
            .as<int64_t>();
    txn.commit();
    return id;
  }

  std::unique_ptr<ChildProcess> StartWorker(int64_t job, const EnvOverrides& env,
                                            int concurrency = 2) {
    return std::make_unique<ChildProcess>(
        std::vector<std::string>{REKEY_BINARY, "--db", conninfo(), "work", "--job",
                                 std::to_string(job), "--concurrency", std::to_string(concurrency)},
        env);
  }

  // Every value of `table` decrypts to its original plaintext under `key`.
  void ExpectAllUnder(const std::string& table, uint32_t key, int64_t rows) {
    auto after = DecryptAll(conn(), table);
    ASSERT_EQ(static_cast<int64_t>(after.size()), rows);
    for (const auto& [id, value] : after) {
      ASSERT_EQ(value.first, key) << "row " << id;
      ASSERT_EQ(value.second, PlaintextFor(id)) << "row " << id;
    }
  }

  // The job finished, nothing quarantined or failed, and no KMS trouble consumed an attempt.
  void ExpectCleanCompletion(int64_t job) {
    const std::string j = std::to_string(job);
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.row_failures WHERE job_id = " + j), 0);
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                    " AND (state <> 'done' OR attempts <> 1 OR rows_failed <> 0)"),
              0)
        << Scalar(
               "SELECT string_agg(batch_no || ' ' || state || ' attempts=' || attempts, ', ') "
               "FROM rekey.batches WHERE job_id = " +
               j + " AND (state <> 'done' OR attempts <> 1)");
  }

  // Nothing happened to the job: every batch pending with no attempt, no row moved.
  void ExpectUntouched(int64_t job, const std::string& table, int64_t rows) {
    const std::string j = std::to_string(job);
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + j +
                    " AND (state <> 'pending' OR attempts <> 0)"),
              0);
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.row_failures"), 0);
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "active");
    EXPECT_EQ(Count("SELECT count(*) FROM " + table +
                    " WHERE substring(token from 1 for 5) = '\\x0100000001'::bytea"),
              rows);
  }

  static int64_t LogCount(const std::string& err, const std::string& needle) {
    int64_t n = 0;
    for (size_t at = err.find(needle); at != std::string::npos; at = err.find(needle, at + 1)) n++;
    return n;
  }

  static AwsKmsTestServer* server_;
};

AwsKmsTestServer* AwsRotationTest::server_ = nullptr;

TEST_F(AwsRotationTest, FullRotationCostsAtMostTwoKmsCallsPerKeyPerProcess) {
  ImportAwsKeys({1, 2});
  ProcessResult created = Rekey({"keys", "create", "--kms", "aws-kms"});
  ASSERT_EQ(created.exit_code, kExitOk) << created.err;
  EXPECT_THAT(created.out, StartsWith("created key 3 in scope default"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE kms_provider = 'aws-kms' AND "
                  "kms_key_ref LIKE 'arn:aws:kms:us-east-1:%:key/%'"),
            3);
  EXPECT_EQ(server_->Calls("GenerateDataKey"), 1);
  EXPECT_EQ(server_->Calls("Encrypt"), 2);

  SeedTinkTable(conn(), "public.cards", 6000, 1);
  const int64_t job = CreateJob("public.cards", R"({"1": 2})", 200);
  server_->Control({{"reset", true}});  // count the job's calls only

  constexpr int kProcesses = 2;
  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < kProcesses; ++i) workers.push_back(StartWorker(job, Env()));
  for (auto& w : workers) {
    ProcessResult r = w->Wait(300);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    // Each process's own account: one unwrap per distinct key at most twice.
    EXPECT_THAT(r.err, ::testing::ContainsRegex("\"kms_calls\":[0-4][,}]")) << r.err;
  }
  ExpectAllUnder("public.cards", 2, 6000);
  ExpectCleanCompletion(job);

  nlohmann::json stats = server_->Stats();
  const int64_t decrypts = AwsKmsTestServer::Count(stats, "calls", "Decrypt");
  EXPECT_GE(decrypts, 2) << stats.dump();                   // both keys came from the KMS
  EXPECT_LE(decrypts, 2 * 2 * kProcesses) << stats.dump();  // never one per row or batch
  EXPECT_EQ(AwsKmsTestServer::Count(stats, "calls", "GenerateDataKey"), 0);
  EXPECT_EQ(AwsKmsTestServer::Count(stats, "calls", "Encrypt"), 0);
  EXPECT_TRUE(stats["errors"].empty()) << stats.dump();

  ProcessResult verify = Rekey({"job", "verify", std::to_string(job)});
  EXPECT_EQ(verify.exit_code, 0) << verify.err;
  EXPECT_THAT(verify.out, HasSubstr("6000 under target keys, 0 under source keys, 0 failed"));
}

TEST_F(AwsRotationTest, ThrottlingStormAtHalfCompletesWithBoundedRetriesAndNothingQuarantined) {
  ImportAwsKeys({1, 2});
  SeedTinkTable(conn(), "public.cards", 4000, 1);
  const int64_t job = CreateJob("public.cards", R"({"1": 2})", 100);
  constexpr int kMaxAttempts = 12;
  // A one-entry cache makes every batch unwrap both keys again: ~80 KMS calls into the storm.
  EnvOverrides env = Env({{"REKEY_KEY_CACHE_MAX_ENTRIES", "1"},
                          {"REKEY_KMS_MAX_ATTEMPTS", std::to_string(kMaxAttempts)},
                          {"REKEY_KMS_BREAKER_FAILURES", "1000"}});
  server_->Control({{"reset", true}, {"seed", 11}, {"throttle_ratio", 0.5}});

  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < 2; ++i) workers.push_back(StartWorker(job, env));
  for (auto& w : workers) {
    ProcessResult r = w->Wait(300);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  ExpectAllUnder("public.cards", 2, 4000);
  ExpectCleanCompletion(job);

  nlohmann::json stats = server_->Stats();
  const int64_t calls = AwsKmsTestServer::Count(stats, "calls", "Decrypt");
  const int64_t throttled = AwsKmsTestServer::Count(stats, "errors", "ThrottlingException");
  EXPECT_GE(throttled, 20) << "the storm did not happen: " << stats.dump();
  EXPECT_GE(calls - throttled, 40) << "every batch should have needed the KMS: " << stats.dump();
  // Bounded: no unwrap took more than kMaxAttempts calls.
  EXPECT_LE(calls, (calls - throttled) * kMaxAttempts) << stats.dump();
}

TEST_F(AwsRotationTest, KmsOutageMidRunOpensTheBreakerPausesWorkersAndTheyResume) {
  ImportAwsKeys({1, 2});
  constexpr int64_t kRows = 20000;
  SeedTinkTable(conn(), "public.cards", kRows, 1);
  const int64_t job = CreateJob("public.cards", R"({"1": 2})", 100);
  EnvOverrides env = Env({{"REKEY_KEY_CACHE_MAX_ENTRIES", "1"},
                          {"REKEY_KMS_MAX_ATTEMPTS", "2"},
                          {"REKEY_KMS_BREAKER_FAILURES", "3"},
                          {"REKEY_KMS_BREAKER_COOLDOWN_MS", "1000"}});
  server_->Control({{"latency_ms", 10}});

  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < 2; ++i) workers.push_back(StartWorker(job, env));
  const std::string done_sql =
      "SELECT count(*) FROM rekey.batches WHERE state = 'done' AND job_id = " + std::to_string(job);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (Count(done_sql) < 10 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const int64_t done_before = Count(done_sql);
  ASSERT_LT(done_before, 200) << "the job finished before the outage could start";
  server_->Control({{"outage_seconds", 4}});

  std::string logs;
  for (auto& w : workers) {
    ProcessResult r = w->Wait(300);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    logs += r.err;
  }
  EXPECT_GE(AwsKmsTestServer::Count(server_->Stats(), "errors", "ServiceUnavailableException"), 1);
  EXPECT_GE(LogCount(logs, "\"action\":\"kms.pause\""), 1) << "no worker paused: " << logs;
  EXPECT_GE(LogCount(logs, "\"action\":\"kms.resume\""), 1) << "no worker resumed: " << logs;
  EXPECT_EQ(LogCount(logs, "\"rows_quarantined\":1"), 0);
  ExpectAllUnder("public.cards", 2, kRows);
  ExpectCleanCompletion(job);
}

TEST_F(AwsRotationTest, FullRotationWithWebIdentityCredentialsThatKeepExpiring) {
  // A server whose STS hands out 2-second credentials: always inside the refresh margin, so
  // every KMS call of the run exchanges the (re-read) token first, as pods on EKS do over hours.
  AwsKmsTestServer irsa({"--key", "alias/rekey", "--sts-duration", "2"});
  const std::string token_file = irsa.dir() + "/token";
  std::ofstream(token_file) << "eyJ-projected-service-account-token";
  EnvOverrides env = With(With(irsa.Env(), WorkerEnv()),
                          {{"AWS_ACCESS_KEY_ID", std::nullopt},
                           {"AWS_SECRET_ACCESS_KEY", std::nullopt},
                           {"AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/rekey-worker"},
                           {"AWS_WEB_IDENTITY_TOKEN_FILE", token_file},
                           {"REKEY_KEY_CACHE_MAX_ENTRIES", "1"}});
  for (uint32_t id : {1u, 2u}) {
    Secret key = TestDataKey(id);
    ProcessResult r =
        Rekey({"keys", "import", "--kms", "aws-kms", "--key-id", std::to_string(id), "--stdin"},
              env, std::string(reinterpret_cast<const char*>(key.data()), key.size()));
    ASSERT_EQ(r.exit_code, kExitOk) << r.err;
  }
  SeedTinkTable(conn(), "public.cards", 1000, 1);
  const int64_t job = CreateJob("public.cards", R"({"1": 2})", 100);
  ProcessResult r = Rekey({"work", "--job", std::to_string(job)}, env);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectAllUnder("public.cards", 2, 1000);
  ExpectCleanCompletion(job);
  nlohmann::json stats = irsa.Stats();
  EXPECT_GE(stats["sts_calls"].get<int64_t>(), 20) << stats.dump();
  EXPECT_TRUE(stats["errors"].empty()) << stats.dump();
}

struct FaultCase {
  const char* name;
  nlohmann::json control;  // sent to the server before the run
  EnvOverrides env;
  int exit_code;
  std::vector<std::string> says;  // in the one-line error, besides the key
};

TEST_F(AwsRotationTest,
       BadCredentialsRegionDisabledKeyAndExpiredTokenStopWithOneLineAndTouchNothing) {
  ImportAwsKeys({1, 2});
  SeedTinkTable(conn(), "public.cards", 500, 1);
  const int64_t job = CreateJob("public.cards", R"({"1": 2})", 100);
  const std::string key_arn = Scalar("SELECT kms_key_ref FROM rekey.keys WHERE key_id = 1");

  const std::vector<FaultCase> cases = {
      {"wrong secret key",
       {},
       {{"AWS_SECRET_ACCESS_KEY", "not-the-secret"}},
       kExitUsage,
       {"InvalidSignatureException", "check AWS_SECRET_ACCESS_KEY"}},
      {"unknown access key",
       {},
       {{"AWS_ACCESS_KEY_ID", "AKIDNOBODY"}},
       kExitUsage,
       {"UnrecognizedClientException", "check AWS_ACCESS_KEY_ID"}},
      {"wrong region",
       {},
       {{"AWS_REGION", "eu-west-1"}},
       kExitUsage,
       {"InvalidSignatureException", "AWS_REGION"}},
      {"disabled key",
       {{"key_state", {{"key", "alias/rekey"}, {"state", "Disabled"}}}},
       {},
       kExitKey,
       {"DisabledException", "is disabled; enable it (aws kms enable-key"}},
      {"access denied",
       {{"access_denied", true}},
       {},
       kExitKey,
       {"AccessDeniedException", "lacks kms:Decrypt", "docs/kms.md"}},
      {"expired session token",
       {{"add_credentials",
         {{"access_key", "ASIAEXPIRED"},
          {"secret_key", "expired/secret"},
          {"session_token", "expired-token"},
          {"expires_at", 1}}}},
       {{"AWS_ACCESS_KEY_ID", "ASIAEXPIRED"},
        {"AWS_SECRET_ACCESS_KEY", "expired/secret"},
        {"AWS_SESSION_TOKEN", "expired-token"}},
       kExitUsage,
       {"ExpiredTokenException", "has expired; export fresh temporary credentials"}},
  };
  for (const FaultCase& c : cases) {
    SCOPED_TRACE(c.name);
    server_->Control({{"reset", true}});
    server_->Control({{"key_state", {{"key", "alias/rekey"}, {"state", "Enabled"}}}});
    if (!c.control.is_null()) server_->Control(c.control);
    ProcessResult r = Rekey({"work", "--job", std::to_string(job)}, Env(c.env));
    EXPECT_EQ(r.exit_code, c.exit_code) << r.err;
    // The last line is the error: one line, naming the data key and the KMS key.
    std::string err = r.err;
    while (!err.empty() && err.back() == '\n') err.pop_back();
    const std::string last =
        err.substr(err.rfind('\n') == std::string::npos ? 0 : err.rfind('\n') + 1);
    EXPECT_THAT(last, StartsWith("rekey: error: AWS KMS Decrypt for data key 1 on " + key_arn));
    for (const std::string& s : c.says) EXPECT_THAT(last, HasSubstr(s));
    EXPECT_THAT(last, ::testing::Not(HasSubstr("expired/secret")));
    EXPECT_THAT(last, ::testing::Not(HasSubstr("not-the-secret")));
    ExpectUntouched(job, "public.cards", 500);
    // Creating a key fails the same way and adds no key row.
    ProcessResult create = Rekey({"keys", "create", "--kms", "aws-kms"}, Env(c.env));
    EXPECT_EQ(create.exit_code, c.exit_code) << create.err;
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys"), 2);
  }

  // Once fixed, the same job runs from where it was: nothing was spent on the failures.
  server_->Control({{"reset", true}});
  server_->Control({{"key_state", {{"key", "alias/rekey"}, {"state", "Enabled"}}}});
  ProcessResult ok = Rekey({"work", "--job", std::to_string(job)});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  ExpectAllUnder("public.cards", 2, 500);
  ExpectCleanCompletion(job);
}

TEST_F(AwsRotationTest, RewrapUsesReEncryptIsResumableAuditedAndTouchesNoDataRow) {
  ImportAwsKeys({1, 2});
  ASSERT_EQ(Rekey({"keys", "create", "--kms", "aws-kms"}).exit_code, 0);  // key 3
  // Key 4 wrapped locally, moved to AWS below.
  Secret key4 = TestDataKey(4);
  ASSERT_EQ(Rekey({"keys", "import", "--key-id", "4", "--stdin"}, Env(),
                  std::string(reinterpret_cast<const char*>(key4.data()), key4.size()))
                .exit_code,
            0);
  SeedTinkTable(conn(), "public.cards", 300, 1);
  SeedTinkTable(conn(), "public.legacy", 200, 4);
  const std::string digest_sql =
      "SELECT md5(string_agg(c.token::text, ',' ORDER BY c.id)) || md5(string_agg(l.token::text, "
      "',' ORDER BY l.id)) FROM public.cards c FULL JOIN public.legacy l USING (id)";
  const std::string digest = Scalar(digest_sql);
  const std::string old_ref = Scalar("SELECT kms_key_ref FROM rekey.keys WHERE key_id = 1");

  // Same provider: ReEncrypt, the plaintext never leaves KMS.
  server_->Control({{"reset", true}});
  // Without --to-kms the keys must share a provider; key 4 is local.
  ProcessResult r = Rekey({"keys", "rewrap", "--to-kms-key", "alias/other"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_THAT(r.err, HasSubstr("--to-kms"));
  r = Rekey({"keys", "rewrap", "--to-kms-key", "alias/other", "--key-id", "1", "--key-id", "2",
             "--key-id", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json stats = server_->Stats();
  EXPECT_EQ(AwsKmsTestServer::Count(stats, "calls", "ReEncrypt"), 3) << stats.dump();
  EXPECT_EQ(AwsKmsTestServer::Count(stats, "calls", "GenerateDataKey"), 0);
  const std::string new_ref = Scalar("SELECT kms_key_ref FROM rekey.keys WHERE key_id = 1");
  EXPECT_NE(new_ref, old_ref);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE kms_key_ref = '" + new_ref + "'"), 3);
  EXPECT_THAT(r.out, HasSubstr("key 1: re-wrapped aws-kms:" + old_ref + " -> aws-kms:" + new_ref));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'key.rewrapped'"), 3);

  // Re-running skips what is done (resumable), with no ReEncrypt at all.
  r = Rekey({"keys", "rewrap", "--to-kms", "aws-kms", "--to-kms-key", "alias/other", "--key-id",
             "1", "--key-id", "2", "--key-id", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("key 2: already under aws-kms:" + new_ref + ", skipped"));
  EXPECT_THAT(r.out, HasSubstr("re-wrapped 0 key(s)"));
  EXPECT_EQ(server_->Calls("ReEncrypt"), 3);

  // Cross-provider: local -> aws-kms (unwrap locally, Encrypt under the destination).
  r = Rekey(
      {"keys", "rewrap", "--to-kms", "aws-kms", "--to-kms-key", "alias/rekey", "--key-id", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT kms_provider || ' ' || (kms_key_ref = '" + old_ref +
                   "') FROM rekey.keys WHERE key_id = 4"),
            "aws-kms true");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.audit WHERE action = 'keys.rewrap'"), 3);
  EXPECT_EQ(Scalar(digest_sql), digest) << "a data row was touched";

  // The re-wrapped keys still are the same data keys: rotate both tables with them.
  const int64_t a = CreateJob("public.cards", R"({"1": 2})", 100);
  const int64_t b = CreateJob("public.legacy", R"({"4": 3})", 100);
  ProcessResult work = Rekey({"work", "--all"}, Env({{"REKEY_MASTER_KEY", std::nullopt}}));
  ASSERT_EQ(work.exit_code, 0) << work.err;
  ExpectAllUnder("public.cards", 2, 300);
  ExpectCleanCompletion(a);
  EXPECT_EQ(Count("SELECT count(*) FROM public.legacy WHERE substring(token from 1 for 5) = "
                  "'\\x0100000003'::bytea"),
            200);
  ExpectCleanCompletion(b);

  // A disabled destination is refused before any key is touched.
  server_->Control({{"key_state", {{"key", "alias/rekey"}, {"state", "Disabled"}}}});
  r = Rekey({"keys", "rewrap", "--to-kms-key", "alias/rekey"});
  EXPECT_EQ(r.exit_code, kExitKey) << r.err;
  EXPECT_THAT(r.err, HasSubstr("alias/rekey"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE kms_key_ref = '" + new_ref + "'"), 3);
}

// The verifier (gates and `rekey job verify`) counts values under a key the keyring lacks as
// undecryptable, but a KMS refusing to unwrap is the environment's fault: it stops verification
// with the KMS's own error instead of reporting every value as failed.
TEST_F(AwsRotationTest, AKmsRefusalDuringVerificationIsAKeyErrorNotFailedValues) {
  ImportAwsKeys({1, 2});
  SeedTinkTable(conn(), "public.cards", 300, 1);
  const int64_t job = CreateJob("public.cards", R"({"1": 2})", 100);
  auto worker = StartWorker(job, Env());
  ASSERT_EQ(worker->Wait(120).exit_code, kExitOk);
  ProcessResult r = Rekey({"job", "verify", std::to_string(job)});
  ASSERT_EQ(r.exit_code, kExitOk) << r.out << r.err;

  server_->Control({{"access_denied", true}});
  r = Rekey({"job", "verify", std::to_string(job)});
  EXPECT_EQ(r.exit_code, kExitKey) << r.out << r.err;
  EXPECT_NE(r.err.find("kms:Decrypt"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("failed"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace rekey::testing
