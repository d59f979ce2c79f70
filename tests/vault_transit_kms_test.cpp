// VaultTransitClient over libcurl against tests/kms/vault_server.py (a loopback Vault with token
// TTLs, Kubernetes login and Transit), and the server's own fidelity suite driven by hvac.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "harness/process.h"
#include "kms/http_transport.h"
#include "kms/kms_factory.h"
#include "kms/resilient_kms.h"
#include "kms/vault_transit.h"

namespace rekey::kms {
namespace {

using rekey::testing::ChildProcess;
using rekey::testing::MakeTempDir;
using rekey::testing::ProcessResult;
using rekey::testing::RunProcess;
using rekey::testing::WaitForPortFile;

constexpr char kPython[] = "/usr/bin/python3";
constexpr char kRoot[] = "s.rekey-kms-test-root";
constexpr char kJwt[] = "eyJhbGciOiJSUzI1NiJ9.rekey-sa.sig";

// Starts vault_server.py with `extra` arguments; returns its base URL ("" if it did not start).
std::string StartVault(const std::string& dir, std::unique_ptr<ChildProcess>* server,
                       std::vector<std::string> extra = {}) {
  std::string port_file = dir + "/port";
  std::vector<std::string> argv = {
      kPython,        std::string(REKEY_SOURCE_DIR) + "/tests/kms/vault_server.py",
      "--port-file",  port_file,
      "--root-token", kRoot,
      "--key",        "rekey",
      "--key",        "other",
      "--key",        "plain:plain",
      "--k8s-role",   "rekey",
      "--k8s-jwt",    kJwt};
  argv.insert(argv.end(), extra.begin(), extra.end());
  *server = std::make_unique<ChildProcess>(argv);
  const int port = WaitForPortFile(port_file, 30000);
  return port > 0 ? "http://127.0.0.1:" + std::to_string(port) : "";
}

GetenvFn EnvOf(std::map<std::string, std::string> vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

// One server per test suite; the tests reset its faults.
class VaultServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("rekey-vault-"));
    server_ = new std::unique_ptr<ChildProcess>();
    url_ = new std::string(StartVault(*dir_, server_));
    ASSERT_FALSE(url_->empty()) << "vault_server.py did not start";
    std::ofstream(*dir_ + "/jwt") << kJwt << "\n";
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    RunProcess({"rm", "-rf", *dir_});
  }

  void SetUp() override { Control({{"reset", true}, {"seed", 11}, {"token_ttl", 3600}}); }

  nlohmann::json Control(const nlohmann::json& cmd, const std::string& url = "") {
    HttpRequest r;
    r.url = (url.empty() ? *url_ : url) + "/__control";
    r.body = cmd.dump();
    HttpResponse resp = transport_->Post(r);
    EXPECT_EQ(resp.status, 200) << resp.body;
    return nlohmann::json::parse(resp.body);
  }

  nlohmann::json Stats() {
    HttpRequest r;
    r.method = "GET";
    r.url = *url_ + "/__stats";
    return nlohmann::json::parse(transport_->Post(r).body);
  }

  // The environment of a process using Kubernetes auth (or, with `token`, VAULT_TOKEN).
  std::map<std::string, std::string> Env(const std::string& token = "") {
    std::map<std::string, std::string> env = {{"VAULT_ADDR", *url_},
                                              {"REKEY_VAULT_TRANSIT_KEY", "rekey"}};
    if (token.empty()) {
      env["REKEY_VAULT_K8S_ROLE"] = "rekey";
      env["REKEY_VAULT_K8S_JWT_FILE"] = *dir_ + "/jwt";
    } else {
      env["VAULT_TOKEN"] = token;
    }
    return env;
  }

  std::unique_ptr<VaultTransitClient> Client(std::map<std::string, std::string> env = {},
                                             VaultClock clock = std::chrono::steady_clock::now) {
    if (env.empty()) env = Env();
    return std::make_unique<VaultTransitClient>(VaultTransitConfigFromEnv(EnvOf(env)), transport_,
                                                std::move(clock));
  }

  static std::string* dir_;
  static std::string* url_;
  static std::unique_ptr<ChildProcess>* server_;
  std::shared_ptr<HttpTransport> transport_ = std::make_shared<CurlTransport>();
};

std::string* VaultServerTest::dir_ = nullptr;
std::string* VaultServerTest::url_ = nullptr;
std::unique_ptr<ChildProcess>* VaultServerTest::server_ = nullptr;

std::string Hex(const Secret& s) {
  return HexEncode(s.data(), s.size());
}

std::string Text(const Bytes& b) {
  return std::string(b.begin(), b.end());
}

TEST_F(VaultServerTest, RoundTripEveryOperation) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(3);
  ASSERT_EQ(k.plaintext.size(), 32u);
  EXPECT_EQ(k.kms_key_ref, "transit/keys/rekey");
  EXPECT_EQ(Text(k.wrapped).rfind("vault:v1:", 0), 0u) << Text(k.wrapped);
  EXPECT_EQ(Hex(kms->UnwrapDataKey(3, k.kms_key_ref, k.wrapped)), Hex(k.plaintext));
  // Bound to the key id through the derivation context.
  EXPECT_THROW(kms->UnwrapDataKey(4, k.kms_key_ref, k.wrapped), KeyError);

  Secret imported(32);
  imported.mutable_data()[0] = 0x42;
  GeneratedDataKey w = kms->WrapDataKey(9, imported);
  EXPECT_EQ(Hex(kms->UnwrapDataKey(9, w.kms_key_ref, w.wrapped)), Hex(imported));

  // Master-key rotation: a new Transit key version, then rewrap inside Vault.
  Control({{"rotate_key", "rekey"}});
  ReWrappedKey re = kms->Rewrap(3, k.kms_key_ref, k.wrapped, "transit/keys/rekey");
  EXPECT_EQ(Text(re.wrapped).rfind("vault:v2:", 0), 0u) << Text(re.wrapped);
  EXPECT_EQ(Hex(kms->UnwrapDataKey(3, re.kms_key_ref, re.wrapped)), Hex(k.plaintext));
  EXPECT_THROW(kms->Rewrap(4, k.kms_key_ref, k.wrapped, "transit/keys/rekey"), KeyError);
  // ... or to another Transit key.
  ReWrappedKey moved = kms->Rewrap(3, re.kms_key_ref, re.wrapped, "transit/keys/other");
  EXPECT_EQ(moved.kms_key_ref, "transit/keys/other");
  EXPECT_EQ(Hex(kms->UnwrapDataKey(3, moved.kms_key_ref, moved.wrapped)), Hex(k.plaintext));
  EXPECT_THROW(kms->UnwrapDataKey(3, "transit/keys/rekey", moved.wrapped), KeyError);

  std::string line = kms->Describe();
  EXPECT_NE(line.find("transit/keys/rekey"), std::string::npos) << line;
  EXPECT_NE(line.find("derived, latest version 2"), std::string::npos) << line;
  EXPECT_NE(line.find("kubernetes auth (role rekey"), std::string::npos) << line;
}

TEST_F(VaultServerTest, EveryFlippedByteOfAWrappedKeyIsAKeyError) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(1);
  const std::string text = Text(k.wrapped);
  const size_t colon = text.find(':', 7);
  for (size_t i = 0; i <= colon; i++) {  // the "vault:v1:" prefix
    std::string bad = text;
    bad[i] ^= 0x01;
    EXPECT_THROW(kms->UnwrapDataKey(1, k.kms_key_ref, ToBytes(bad)), KeyError) << i;
  }
  // Every byte of the sealed blob (nonce, ciphertext, tag) behind the base64.
  std::optional<Bytes> blob = Base64Decode(text.substr(colon + 1));
  ASSERT_TRUE(blob);
  for (size_t i = 0; i < blob->size(); i++) {
    Bytes bad = *blob;
    bad[i] ^= 0x80;
    std::string wrapped = text.substr(0, colon + 1) + Base64Encode(bad);
    EXPECT_THROW(kms->UnwrapDataKey(1, k.kms_key_ref, ToBytes(wrapped)), KeyError) << i;
  }
  EXPECT_EQ(Hex(kms->UnwrapDataKey(1, k.kms_key_ref, k.wrapped)), Hex(k.plaintext));
}

TEST_F(VaultServerTest, ExpiredTokenMeansOneReLoginAndTheCallSucceeds) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(5);
  EXPECT_EQ(Stats()["logins"], 1);
  Control({{"expire_tokens", true}});
  EXPECT_EQ(Hex(kms->UnwrapDataKey(5, k.kms_key_ref, k.wrapped)), Hex(k.plaintext));
  nlohmann::json s = Stats();
  EXPECT_EQ(s["logins"], 2) << s.dump();
  EXPECT_EQ(s["jwts"], nlohmann::json({kJwt, kJwt})) << s.dump();
  EXPECT_EQ(kms->auth().logins(), 2);
}

TEST_F(VaultServerTest, ConcurrentCallersShareOneReLogin) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(5);
  Control({{"expire_tokens", true}});
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; t++) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5; i++) {
        if (Hex(kms->UnwrapDataKey(5, k.kms_key_ref, k.wrapped)) == Hex(k.plaintext)) ok++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 40);
  EXPECT_EQ(Stats()["logins"], 2);  // the first login, then one for all eight threads
}

TEST_F(VaultServerTest, TokenIsRenewedBeforeItExpires) {
  // The server issues 30-second tokens; the client's clock is moved past 2/3 of that, so the next
  // call renews first (the token is still valid on the server: no sleeping, no 403).
  Control({{"token_ttl", 30}});
  auto now = std::chrono::steady_clock::now();
  auto kms = Client({}, [&now] { return now; });
  GeneratedDataKey k = kms->GenerateDataKey(6);
  now += std::chrono::seconds(21);
  EXPECT_EQ(Hex(kms->UnwrapDataKey(6, k.kms_key_ref, k.wrapped)), Hex(k.plaintext));
  nlohmann::json s = Stats();
  EXPECT_EQ(s["renewals"], 1) << s.dump();
  EXPECT_EQ(s["logins"], 1) << s.dump();
  EXPECT_EQ(s["errors"].value("403", 0), 0) << s.dump();
}

TEST_F(VaultServerTest, PermissionDeniedAfterReLoginIsAKeyErrorNamingThePolicy) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(5);
  Control({{"permission_denied", true}});
  try {
    kms->UnwrapDataKey(5, k.kms_key_ref, k.wrapped);
    ADD_FAILURE();
  } catch (const KeyError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("permission denied"), std::string::npos) << what;
    EXPECT_NE(what.find("transit/decrypt/rekey"), std::string::npos) << what;
    EXPECT_NE(what.find("docs/kms.md"), std::string::npos) << what;
    EXPECT_EQ(what.find("hvs."), std::string::npos) << what;
  }
  EXPECT_EQ(Stats()["logins"], 2);  // exactly one re-login, then one retry
  // Through the resilient layer: a KeyError is never retried.
  ResilientKms resilient(Client(), ResilienceOptions{});
  EXPECT_THROW(resilient.UnwrapDataKey(5, k.kms_key_ref, k.wrapped), KeyError);
  EXPECT_EQ(resilient.attempts(), 1u);
}

TEST_F(VaultServerTest, StaticTokensExpireIntoKeyErrorsNamingTheVariable) {
  std::string token = Control({{"create_token", {{"ttl", 600}, {"renewable", true}}}})["token"];
  auto kms = Client(Env(token));
  GeneratedDataKey k = kms->GenerateDataKey(2);
  Control({{"expire_tokens", true}});
  try {
    kms->UnwrapDataKey(2, k.kms_key_ref, k.wrapped);
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_EQ(std::string(e.what()).find(token), std::string::npos) << e.what();
  }
  try {
    Client(Env(token))->UnwrapDataKey(2, k.kms_key_ref, k.wrapped);
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("VAULT_TOKEN"), std::string::npos) << e.what();
  }
}

TEST_F(VaultServerTest, ErrorsAreClassified) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(8);
  Control({{"rate_limit_ratio", 1.0}});
  EXPECT_THROW(kms->UnwrapDataKey(8, k.kms_key_ref, k.wrapped), TransientError);
  Control({{"rate_limit_ratio", 0.0}, {"error_5xx_ratio", 1.0}});
  EXPECT_THROW(kms->UnwrapDataKey(8, k.kms_key_ref, k.wrapped), TransientError);
  Control({{"error_5xx_ratio", 0.0}, {"sealed", true}});
  try {
    kms->UnwrapDataKey(8, k.kms_key_ref, k.wrapped);
    ADD_FAILURE();
  } catch (const TransientError& e) {
    EXPECT_NE(std::string(e.what()).find("unseal"), std::string::npos) << e.what();
  }
  Control({{"sealed", false}});
  try {
    kms->UnwrapDataKey(8, "transit/keys/missing", k.wrapped);
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("transit/keys/missing does not exist"), std::string::npos)
        << e.what();
  }
  auto env = Env();
  env["REKEY_VAULT_TRANSIT_KEY"] = "plain";
  EXPECT_THROW(Client(env)->GenerateDataKey(1), KeyError);  // not derived
  env["REKEY_VAULT_TRANSIT_KEY"] = "absent";
  try {
    Client(env)->Describe();
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("derived=true"), std::string::npos) << e.what();
  }
  env = Env();
  env["REKEY_VAULT_K8S_ROLE"] = "wrong-role";
  try {
    Client(env)->Describe();
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("REKEY_VAULT_K8S_ROLE"), std::string::npos) << e.what();
  }
}

TEST_F(VaultServerTest, RateLimitStormAtHalfCompletesWithBoundedRetries) {
  auto kms = Client();
  GeneratedDataKey k = kms->GenerateDataKey(8);
  Control({{"rate_limit_ratio", 0.5}});
  ResilienceOptions o;
  o.max_attempts = 12;
  o.base_backoff = std::chrono::milliseconds(1);
  o.max_backoff = std::chrono::milliseconds(20);
  o.breaker_failures = 1000;
  ResilientKms resilient(Client(), o);
  const int kCalls = 40;
  for (int i = 0; i < kCalls; i++) {
    EXPECT_EQ(Hex(resilient.UnwrapDataKey(8, k.kms_key_ref, k.wrapped)), Hex(k.plaintext));
  }
  EXPECT_GT(resilient.retries(), 0u);
  EXPECT_LE(resilient.attempts(), static_cast<uint64_t>(kCalls * o.max_attempts));
  EXPECT_GT(Stats()["errors"].value("429", 0), 0);
}

TEST_F(VaultServerTest, OutageOpensTheBreakerWhichFailsFast) {
  auto kms = Client();
  kms->Describe();  // logged in before the outage
  Control({{"outage_seconds", 60}});
  ResilienceOptions o;
  o.max_attempts = 3;
  o.base_backoff = std::chrono::milliseconds(1);
  o.max_backoff = std::chrono::milliseconds(2);
  o.breaker_failures = 3;
  o.breaker_cool_down = std::chrono::seconds(60);
  ResilientKms resilient(std::move(kms), o);
  EXPECT_THROW(resilient.GenerateDataKey(1), TransientError);
  EXPECT_EQ(resilient.state(), BreakerState::kOpen);
  uint64_t attempts = resilient.attempts();
  EXPECT_THROW(resilient.GenerateDataKey(1), TransientError);
  EXPECT_EQ(resilient.attempts(), attempts);  // nothing was sent
  Control({{"outage_seconds", 0}});
}

TEST_F(VaultServerTest, FactoryBuildsAResilientClientFromTheEnvironment) {
  std::unique_ptr<KmsClient> kms = MakeKmsClient("vault-transit", EnvOf(Env()));
  EXPECT_EQ(kms->provider(), "vault-transit");
  GeneratedDataKey k = kms->GenerateDataKey(12);
  EXPECT_EQ(Hex(kms->UnwrapDataKey(12, k.kms_key_ref, k.wrapped)), Hex(k.plaintext));
  EXPECT_NE(dynamic_cast<ResilientKms*>(kms.get()), nullptr);
}

TEST_F(VaultServerTest, ApplicationValuesAreRewrappedInBatchesWithoutPlaintext) {
  // An application encrypting through Transit directly, with a derived key and a context per row.
  Control({{"create_key", {{"name", "app"}, {"derived", true}}}});
  VaultTransitConfig c = VaultTransitConfigFromEnv(EnvOf(Env(kRoot)));
  c.key = "app";
  VaultTransitClient app(c, transport_);
  std::vector<TransitRewrapItem> items;
  for (uint32_t row = 1; row <= 20; row++) {
    Secret value(32);
    value.mutable_data()[0] = static_cast<uint8_t>(row);
    GeneratedDataKey sealed = app.WrapDataKey(row, value);  // encrypt with context row
    items.push_back({Text(sealed.wrapped), TransitContext(row)});
  }
  Control({{"rotate_key", "app"}});
  items[7].context = TransitContext(999);  // this row's value does not decrypt
  std::vector<TransitRewrapResult> r = app.RewrapValues("transit/keys/app", items);
  ASSERT_EQ(r.size(), 20u);
  for (size_t i = 0; i < r.size(); i++) {
    if (i == 7) {
      EXPECT_TRUE(r[i].ciphertext.empty());
      EXPECT_EQ(r[i].error, "cipher: message authentication failed");
      continue;
    }
    EXPECT_TRUE(r[i].error.empty()) << i << ": " << r[i].error;
    EXPECT_EQ(r[i].key_version, 2) << r[i].ciphertext;
    Secret back = app.UnwrapDataKey(static_cast<uint32_t>(i + 1), "transit/keys/app",
                                    ToBytes(r[i].ciphertext));
    EXPECT_EQ(back.data()[0], i + 1);
  }
  EXPECT_EQ(Stats()["calls"].value("transit/rewrap", 0), 1);
}

TEST(VaultNamespace, HeaderIsSentAndRequired) {
  std::string dir = MakeTempDir("rekey-vault-ns-");
  std::unique_ptr<ChildProcess> server;
  std::string url = StartVault(dir, &server, {"--namespace", "team-a"});
  ASSERT_FALSE(url.empty());
  std::map<std::string, std::string> env = {
      {"VAULT_ADDR", url}, {"VAULT_TOKEN", kRoot}, {"REKEY_VAULT_TRANSIT_KEY", "rekey"}};
  auto transport = std::make_shared<CurlTransport>();
  try {
    VaultTransitClient(VaultTransitConfigFromEnv(EnvOf(env)), transport).GenerateDataKey(1);
    ADD_FAILURE();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("VAULT_NAMESPACE"), std::string::npos) << e.what();
  }
  env["VAULT_NAMESPACE"] = "team-a";
  VaultTransitClient kms(VaultTransitConfigFromEnv(EnvOf(env)), transport);
  GeneratedDataKey k = kms.GenerateDataKey(1);
  EXPECT_EQ(Hex(kms.UnwrapDataKey(1, k.kms_key_ref, k.wrapped)), Hex(k.plaintext));
  server.reset();
  RunProcess({"rm", "-rf", dir});
}

TEST(VaultTls, VaultCacertIsTrustedAndNothingElse) {
  std::string dir = MakeTempDir("rekey-vault-tls-");
  std::unique_ptr<ChildProcess> server;
  std::string url = StartVault(dir, &server, {"--tls-dir", dir});
  ASSERT_FALSE(url.empty());
  url.replace(0, 4, "https");
  std::map<std::string, std::string> env = {
      {"VAULT_ADDR", url}, {"VAULT_TOKEN", kRoot}, {"REKEY_VAULT_TRANSIT_KEY", "rekey"}};
  auto transport = std::make_shared<CurlTransport>();
  // The system store does not know the server's self-signed certificate: a configuration error.
  try {
    VaultTransitClient(VaultTransitConfigFromEnv(EnvOf(env)), transport).GenerateDataKey(1);
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(url), std::string::npos) << e.what();
  }
  env["VAULT_CACERT"] = dir + "/ca.pem";
  VaultTransitClient kms(VaultTransitConfigFromEnv(EnvOf(env)), transport);
  GeneratedDataKey k = kms.GenerateDataKey(1);
  EXPECT_EQ(Hex(kms.UnwrapDataKey(1, k.kms_key_ref, k.wrapped)), Hex(k.plaintext));
  server.reset();
  RunProcess({"rm", "-rf", dir});
}

TEST(VaultFidelity, HvacAgreesWithTheTestServer) {
  ProcessResult r =
      RunProcess({kPython, std::string(REKEY_SOURCE_DIR) + "/tests/kms/hvac_fidelity_test.py"},
                 {{"VAULT_ADDR", std::nullopt},
                  {"VAULT_TOKEN", std::nullopt},
                  {"VAULT_NAMESPACE", std::nullopt}},
                 "", 300);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find("OK"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace rekey::kms
