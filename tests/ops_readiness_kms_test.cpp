// /readyz and the KMS metrics of `rekey work --listen` when the KMS goes away: keys wrapped by
// the loopback AWS KMS test server (tests/kms/aws_kms_server.py, real SigV4 and JSON protocol),
// an outage injected into it, the circuit breaker opening, the worker reporting unready, and
// ready again once the KMS is back and the rotation finishes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class OpsReadinessKmsTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    dir_ = MakeTempDir("rekey-ops-kms-");
    const std::string port_file = dir_ + "/port";
    server_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        "/usr/bin/python3", std::string(REKEY_SOURCE_DIR) + "/tests/kms/aws_kms_server.py",
        "--port-file", port_file, "--key", "alias/rekey"});
    kms_port_ = WaitForPortFile(port_file, 20000);
    ASSERT_GT(kms_port_, 0) << "aws_kms_server.py did not start";
  }
  void TearDown() override {
    server_.reset();
    RunProcess({"rm", "-rf", dir_});
    PgTest::TearDown();
  }

  EnvOverrides Env() {
    EnvOverrides env = WorkerEnv();
    env["AWS_REGION"] = "us-east-1";
    env["AWS_ENDPOINT_URL_KMS"] = "http://127.0.0.1:" + std::to_string(kms_port_);
    env["AWS_ACCESS_KEY_ID"] = "AKIDREKEYTEST";
    env["AWS_SECRET_ACCESS_KEY"] = "rekey/test/secret/key+0123456789";
    env["REKEY_AWS_KMS_KEY_ID"] = "alias/rekey";
    env["REKEY_KMS_MAX_ATTEMPTS"] = "2";
    env["REKEY_KMS_BREAKER_FAILURES"] = "2";
    env["REKEY_KMS_BREAKER_COOLDOWN_MS"] = "1000";
    return env;
  }

  // Test data keys 1 and 2 imported through `rekey keys import --kms aws-kms`.
  void ImportKeysWrappedByAwsKms() {
    for (uint32_t id : {1u, 2u}) {
      Secret key = TestDataKey(id);
      ProcessResult r = RunRekey({"--db", conninfo(), "keys", "import", "--key-id",
                                  std::to_string(id), "--kms", "aws-kms", "--stdin"},
                                 Env(), Base64Encode(key.data(), key.size()));
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
  }

  void Control(const std::string& json) {
    HttpResult r = HttpGet(kms_port_, "/__control", json);
    ASSERT_EQ(r.status, 200) << r.body;
  }

  std::string dir_;
  int kms_port_ = 0;
  std::unique_ptr<ChildProcess> server_;
};

TEST_F(OpsReadinessKmsTest, ReadyzTurnsDownWhileTheKmsBreakerIsOpenAndUpWhenItRecovers) {
  ASSERT_NO_FATAL_FAILURE(ImportKeysWrappedByAwsKms());
  SeedTinkTable(conn(), "public.cards", 2000, 1);
  Exec(
      "SELECT rekey.create_job('public.cards', ARRAY['token'], '{\"1\": 2}', p_stages => '{100}', "
      "p_batch_size => 500)");
  Control(R"({"outage_seconds": 600})");

  ChildProcess worker({REKEY_BINARY, "--db", conninfo(), "work", "--job", "1", "--listen",
                       "127.0.0.1:0", "--linger", "120"},
                      Env());
  auto started = WaitForLog(worker, "serving /metrics");
  ASSERT_TRUE(started) << ReadFile(worker.stderr_path());
  const int port = ListenPort(*started);

  // The worker keeps retrying its batch; between probes the breaker is open.
  std::optional<nlohmann::json> down;
  for (int i = 0; i < 1200 && !down; i++) {
    HttpResult r = HttpGet(port, "/readyz");
    if (r.status == 503) {
      down = nlohmann::json::parse(r.body);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  }
  ASSERT_TRUE(down) << ReadFile(worker.stderr_path());
  EXPECT_EQ((*down)["status"], "DOWN");
  EXPECT_EQ((*down)["checks"][0]["status"], "UP") << "the database is fine";
  const auto& kms = (*down)["checks"][1];
  EXPECT_EQ(kms["name"], "kms");
  EXPECT_EQ(kms["status"], "DOWN");
  EXPECT_EQ(kms["data"]["providers"][0]["provider"], "aws-kms");
  EXPECT_EQ(kms["data"]["providers"][0]["breaker"], "open");
  EXPECT_EQ(HttpGet(port, "/healthz").status, 200) << "alive, only not ready";
  const std::string during = HttpGet(port, "/metrics").body;
  EXPECT_GE(Sample(during,
                   "rekey_kms_requests_total{operation=\"unwrap_data_key\","
                   "outcome=\"transient_error\",provider=\"aws-kms\"}")
                .value_or(0),
            1)
      << during;
  EXPECT_EQ(Sample(during, "rekey_rows_reencrypted_total"), 0);

  // The KMS comes back: the next probe closes the breaker and the rotation completes.
  Control(R"({"reset": true})");
  auto lingering = WaitForLog(worker, "lingering so the final metrics", 120);
  ASSERT_TRUE(lingering) << ReadFile(worker.stderr_path());
  HttpResult up = HttpGet(port, "/readyz");
  EXPECT_EQ(up.status, 200) << up.body;
  EXPECT_THAT(up.body, HasSubstr("\"breaker\":\"closed\""));
  const std::string after = HttpGet(port, "/metrics").body;
  EXPECT_EQ(Sample(after, "rekey_kms_breaker_state{provider=\"aws-kms\"}"), 0);
  EXPECT_EQ(Sample(after, "rekey_rows_reencrypted_total"), 2000);
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(30).exit_code, 0);
}

TEST_F(OpsReadinessKmsTest, ReadyzTurnsDownWhenTheKmsServerIsGone) {
  ASSERT_NO_FATAL_FAILURE(ImportKeysWrappedByAwsKms());
  SeedTinkTable(conn(), "public.cards", 500, 1);
  Exec(
      "SELECT rekey.create_job('public.cards', ARRAY['token'], '{\"1\": 2}', p_stages => '{100}')");
  server_->Signal(SIGKILL);  // the KMS is gone: connections are refused
  server_->Wait(10);

  ChildProcess worker(
      {REKEY_BINARY, "--db", conninfo(), "work", "--job", "1", "--listen", "127.0.0.1:0"}, Env());
  auto started = WaitForLog(worker, "serving /metrics");
  ASSERT_TRUE(started) << ReadFile(worker.stderr_path());
  const int port = ListenPort(*started);
  HttpResult r;
  for (int i = 0; i < 1200 && r.status != 503; i++) {
    r = HttpGet(port, "/readyz");
    if (r.status != 503) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_EQ(r.status, 503) << r.body << ReadFile(worker.stderr_path());
  nlohmann::json body = nlohmann::json::parse(r.body);
  EXPECT_EQ(body["checks"][1]["status"], "DOWN");
  EXPECT_EQ(body["checks"][1]["data"]["providers"][0]["breaker"], "open");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE state = 'failed'"), 0)
      << "a KMS outage does not use up batch attempts";
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(30).exit_code, 0) << "stops cleanly while the KMS is away";
}

}  // namespace
}  // namespace rekey::testing
