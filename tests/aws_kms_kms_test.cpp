// AwsKmsClient over libcurl against tests/kms/aws_kms_server.py (a loopback AWS KMS + STS that
// verifies SigV4), and the server's own fidelity suite driven by boto3.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "common/error.h"
#include "harness/process.h"
#include "kms/aws_kms.h"
#include "kms/http_transport.h"
#include "kms/kms_factory.h"
#include "kms/resilient_kms.h"

namespace rekey::kms {
namespace {

using rekey::testing::ChildProcess;
using rekey::testing::MakeTempDir;
using rekey::testing::ProcessResult;
using rekey::testing::RunProcess;
using rekey::testing::WaitForPortFile;

constexpr char kPython[] = "/usr/bin/python3";
constexpr char kAccess[] = "AKIDREKEYTEST";
constexpr char kSecret[] = "rekey/test/secret/key+0123456789";

// One server per test suite; the tests reset its faults.
class AwsKmsServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("rekey-awskms-"));
    std::string port_file = *dir_ + "/port";
    server_ = new ChildProcess(
        {kPython, std::string(REKEY_SOURCE_DIR) + "/tests/kms/aws_kms_server.py", "--port-file",
         port_file, "--key", "alias/rekey", "--key", "alias/other", "--sts-duration", "2"});
    const int port = WaitForPortFile(port_file, 20000);
    ASSERT_GT(port, 0) << "aws_kms_server.py did not start";
    url_ = new std::string("http://127.0.0.1:" + std::to_string(port));
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    RunProcess({"rm", "-rf", *dir_});
  }

  void SetUp() override {
    Control({{"reset", true}, {"seed", 7}});
    Control({{"key_state", {{"key", "alias/rekey"}, {"state", "Enabled"}}}});
  }

  nlohmann::json Control(const nlohmann::json& cmd) {
    HttpRequest r;
    r.url = *url_ + "/__control";
    r.body = cmd.dump();
    HttpResponse resp = transport_->Post(r);
    EXPECT_EQ(resp.status, 200) << resp.body;
    return nlohmann::json::parse(resp.body);
  }

  // TCP connections the server has accepted since the last reset.
  int64_t Connections() {
    HttpRequest r;
    r.method = "GET";
    r.url = *url_ + "/__stats";
    return nlohmann::json::parse(transport_->Post(r).body)["connections"].get<int64_t>();
  }

  std::unique_ptr<AwsKmsClient> Client(std::shared_ptr<AwsCredentialsProvider> creds = nullptr,
                                       const std::string& key = "alias/rekey") {
    AwsKmsConfig c;
    c.region = "us-east-1";
    c.endpoint = *url_;
    c.key_id = key;
    c.timeout = std::chrono::seconds(10);
    if (!creds) {
      creds = std::make_shared<StaticCredentialsProvider>(
          AwsCredentials{kAccess, kSecret, "", std::nullopt});
    }
    return std::make_unique<AwsKmsClient>(c, transport_, creds);
  }

  static std::string* dir_;
  static std::string* url_;
  static ChildProcess* server_;
  std::shared_ptr<HttpTransport> transport_ = std::make_shared<CurlTransport>();
};

std::string* AwsKmsServerTest::dir_ = nullptr;
std::string* AwsKmsServerTest::url_ = nullptr;
ChildProcess* AwsKmsServerTest::server_ = nullptr;

std::string Bytes32(const Secret& s) {
  return HexEncode(s.data(), s.size());
}

TEST_F(AwsKmsServerTest, RoundTripEveryOperation) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(3);
  ASSERT_EQ(k.plaintext.size(), 32u);
  EXPECT_EQ(k.kms_key_ref.rfind("arn:aws:kms:us-east-1:", 0), 0u) << k.kms_key_ref;
  EXPECT_EQ(Bytes32(kms->UnwrapDataKey(3, k.kms_key_ref, k.wrapped)), Bytes32(k.plaintext));
  // Bound to the key id through the encryption context.
  EXPECT_THROW(kms->UnwrapDataKey(4, k.kms_key_ref, k.wrapped), KeyError);

  Secret imported(32);
  imported.mutable_data()[0] = 0x42;
  GeneratedDataKey w = kms->WrapDataKey(9, imported);
  EXPECT_EQ(Bytes32(kms->UnwrapDataKey(9, w.kms_key_ref, w.wrapped)), Bytes32(imported));

  ReWrappedKey re = kms->ReEncrypt(3, k.kms_key_ref, k.wrapped, "alias/other");
  EXPECT_NE(re.kms_key_ref, k.kms_key_ref);
  EXPECT_EQ(Bytes32(kms->UnwrapDataKey(3, re.kms_key_ref, re.wrapped)), Bytes32(k.plaintext));
  // Pinned: the old key ref no longer matches the re-wrapped blob.
  EXPECT_THROW(kms->UnwrapDataKey(3, k.kms_key_ref, re.wrapped), KeyError);

  std::string line = kms->Describe();
  EXPECT_NE(line.find("Enabled"), std::string::npos) << line;
}

// A KMS call per value (the aws-kms codec's ReEncrypt) must not cost a TCP and TLS handshake
// each: calls reuse the transport's kept-alive connections, one per call in flight.
TEST_F(AwsKmsServerTest, CallsReuseKeptAliveConnectionsOnePerCallInFlight) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(3);
  const int64_t before = Connections();
  for (int i = 0; i < 20; ++i) kms->UnwrapDataKey(3, k.kms_key_ref, k.wrapped);
  EXPECT_EQ(Connections() - before, 0) << "20 sequential calls opened new connections";

  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) kms->UnwrapDataKey(3, k.kms_key_ref, k.wrapped);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_LE(Connections() - before, kThreads) << "40 calls from 4 threads";
}

TEST_F(AwsKmsServerTest, EveryFlippedBitOfAWrappedKeyIsAKeyError) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(1);
  for (size_t i = 0; i < k.wrapped.size(); i += 5) {
    Bytes bad = k.wrapped;
    bad[i] ^= 0x80;
    EXPECT_THROW(kms->UnwrapDataKey(1, k.kms_key_ref, bad), KeyError) << i;
  }
}

TEST_F(AwsKmsServerTest, AccessDeniedAndDisabledAreKeyErrorsNamingTheKey) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(5);
  Control({{"access_denied", true}});
  try {
    kms->UnwrapDataKey(5, k.kms_key_ref, k.wrapped);
    ADD_FAILURE();
  } catch (const KeyError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("lacks kms:Decrypt on " + k.kms_key_ref), std::string::npos) << what;
    EXPECT_NE(what.find("docs/kms.md"), std::string::npos) << what;
  }
  Control(
      {{"access_denied", false}, {"key_state", {{"key", "alias/rekey"}, {"state", "Disabled"}}}});
  try {
    kms->UnwrapDataKey(5, k.kms_key_ref, k.wrapped);
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find(k.kms_key_ref + " is disabled"), std::string::npos)
        << e.what();
  }
  try {
    kms->Describe();
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("Disabled"), std::string::npos) << e.what();
  }
  // Through the resilient layer: a KeyError is never retried.
  ResilientKms resilient(Client(), ResilienceOptions{});
  EXPECT_THROW(resilient.UnwrapDataKey(5, k.kms_key_ref, k.wrapped), KeyError);
  EXPECT_EQ(resilient.attempts(), 1u);
}

TEST_F(AwsKmsServerTest, WrongSecretIsAConfigError) {
  auto creds = std::make_shared<StaticCredentialsProvider>(
      AwsCredentials{kAccess, "not-the-secret", "", std::nullopt});
  EXPECT_THROW(Client(creds)->GenerateDataKey(1), ConfigError);
  auto unknown = std::make_shared<StaticCredentialsProvider>(
      AwsCredentials{"AKIDNOBODY", kSecret, "", std::nullopt});
  EXPECT_THROW(Client(unknown)->GenerateDataKey(1), ConfigError);
}

TEST_F(AwsKmsServerTest, ThrottlingStormAtHalfCompletesWithBoundedRetries) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(8);
  Control({{"throttle_ratio", 0.5}});
  ResilienceOptions o;
  o.max_attempts = 12;
  o.base_backoff = std::chrono::milliseconds(1);
  o.max_backoff = std::chrono::milliseconds(20);
  o.breaker_failures = 1000;
  ResilientKms resilient(Client(), o);
  const int kCalls = 40;
  for (int i = 0; i < kCalls; i++) {
    EXPECT_EQ(Bytes32(resilient.UnwrapDataKey(8, k.kms_key_ref, k.wrapped)), Bytes32(k.plaintext));
  }
  EXPECT_GT(resilient.retries(), 0u);
  EXPECT_LE(resilient.attempts(), static_cast<uint64_t>(kCalls * o.max_attempts));
}

TEST_F(AwsKmsServerTest, OutageOpensTheBreakerWhichFailsFast) {
  Control({{"outage_seconds", 60}});
  ResilienceOptions o;
  o.max_attempts = 3;
  o.base_backoff = std::chrono::milliseconds(1);
  o.max_backoff = std::chrono::milliseconds(2);
  o.breaker_failures = 3;
  o.breaker_cool_down = std::chrono::seconds(60);
  ResilientKms resilient(Client(), o);
  EXPECT_THROW(resilient.GenerateDataKey(1), TransientError);
  EXPECT_EQ(resilient.state(), BreakerState::kOpen);
  uint64_t attempts = resilient.attempts();
  try {
    resilient.GenerateDataKey(1);
    ADD_FAILURE();
  } catch (const TransientError& e) {
    EXPECT_NE(std::string(e.what()).find("circuit breaker is open"), std::string::npos) << e.what();
  }
  EXPECT_EQ(resilient.attempts(), attempts);  // nothing was sent
}

TEST_F(AwsKmsServerTest, WebIdentityCredentialsAreRefreshed) {
  std::string token_file = *dir_ + "/token";
  std::ofstream(token_file) << "jwt-first";
  std::map<std::string, std::string> env = {
      {"AWS_REGION", "us-east-1"},
      {"REKEY_AWS_KMS_KEY_ID", "alias/rekey"},
      {"AWS_ENDPOINT_URL_KMS", *url_},
      {"AWS_ENDPOINT_URL_STS", *url_},
      {"AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/rekey"},
      {"AWS_WEB_IDENTITY_TOKEN_FILE", token_file}};
  GetenvFn getenv = [&](const char* n) -> std::optional<std::string> {
    auto it = env.find(n);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  // The server issues 2-second credentials, always inside the 5-minute refresh margin, so every
  // call exchanges the (re-read) token again.
  std::unique_ptr<KmsClient> kms = MakeKmsClient("aws-kms", getenv);
  GeneratedDataKey k = kms->GenerateDataKey(2);
  std::ofstream(token_file) << "jwt-second";
  EXPECT_EQ(Bytes32(kms->UnwrapDataKey(2, k.kms_key_ref, k.wrapped)), Bytes32(k.plaintext));
  HttpRequest stats;
  stats.url = *url_ + "/__stats";
  nlohmann::json s = nlohmann::json::parse(transport_->Post(stats).body);
  EXPECT_EQ(s["web_identity_tokens"], nlohmann::json({"jwt-first", "jwt-second"})) << s.dump();
}

TEST(AwsKmsFidelity, Boto3AgreesWithTheTestServer) {
  ProcessResult r =
      RunProcess({kPython, std::string(REKEY_SOURCE_DIR) + "/tests/kms/boto3_fidelity_test.py"},
                 {{"AWS_PROFILE", std::nullopt},
                  {"AWS_CONFIG_FILE", "/dev/null"},
                  {"AWS_SHARED_CREDENTIALS_FILE", "/dev/null"}},
                 "", 300);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find("OK"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace rekey::kms
