// End to end through the vault-transit provider: the real rekey binary, a real PostgreSQL and the
// loopback Vault (tests/kms/vault_server.py). Keys are imported and created with
// `rekey keys ... --kms vault-transit`, workers rotate a table, and the values are checked with the
// data key unwrapped independently. A second scenario has Vault expire the worker's token mid-run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "kms/http_transport.h"
#include "kms/vault_transit.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

constexpr char kPython[] = "/usr/bin/python3";
constexpr char kJwt[] = "eyJhbGciOiJSUzI1NiJ9.rekey-worker.sig";

class VaultRotationTest : public PgTest {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("rekey-vault-e2e-"));
    std::string port_file = *dir_ + "/port";
    server_ = new ChildProcess(
        {kPython, std::string(REKEY_SOURCE_DIR) + "/tests/kms/vault_server.py", "--port-file",
         port_file, "--key", "rekey", "--k8s-role", "rekey", "--k8s-jwt", kJwt});
    const int port = WaitForPortFile(port_file, 30000);
    ASSERT_GT(port, 0) << "vault_server.py did not start";
    url_ = new std::string("http://127.0.0.1:" + std::to_string(port));
    std::ofstream(*dir_ + "/jwt") << kJwt << "\n";
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    RunProcess({"rm", "-rf", *dir_});
  }

  void SetUp() override {
    PgTest::SetUp();
    Control({{"reset", true}});
  }

  nlohmann::json Control(const nlohmann::json& cmd) {
    kms::HttpRequest r;
    r.url = *url_ + "/__control";
    r.body = cmd.dump();
    kms::HttpResponse resp = transport_->Post(r);
    EXPECT_EQ(resp.status, 200) << resp.body;
    return nlohmann::json::parse(resp.body);
  }

  nlohmann::json Stats() {
    kms::HttpRequest r;
    r.method = "GET";
    r.url = *url_ + "/__stats";
    return nlohmann::json::parse(transport_->Post(r).body);
  }

  static int Count(const nlohmann::json& stats, const char* group, const char* name) {
    return stats[group].value(name, 0);
  }

  // A process that knows Vault (Kubernetes auth) and nothing of the local master key.
  std::map<std::string, std::string> VaultEnvMap() {
    return {{"VAULT_ADDR", *url_},
            {"REKEY_VAULT_TRANSIT_KEY", "rekey"},
            {"REKEY_VAULT_K8S_ROLE", "rekey"},
            {"REKEY_VAULT_K8S_JWT_FILE", *dir_ + "/jwt"}};
  }
  EnvOverrides VaultEnv() {
    EnvOverrides env = {{"REKEY_MASTER_KEY", std::nullopt}, {"REKEY_MASTER_KEY_FILE", std::nullopt},
                        {"VAULT_TOKEN", std::nullopt},      {"VAULT_TOKEN_FILE", std::nullopt},
                        {"VAULT_NAMESPACE", std::nullopt},  {"DATABASE_URL", std::nullopt}};
    for (const auto& [k, v] : VaultEnvMap()) env[k] = v;
    return env;
  }

  ProcessResult Rekey(std::vector<std::string> args) {
    args.insert(args.begin(), {"--db", conninfo()});
    return RunRekey(args, VaultEnv());
  }

  std::unique_ptr<ChildProcess> StartWorker(const std::vector<std::string>& selection) {
    std::vector<std::string> argv = {REKEY_BINARY, "--db", conninfo(), "work"};
    argv.insert(argv.end(), selection.begin(), selection.end());
    return std::make_unique<ChildProcess>(argv, VaultEnv());
  }

  // `rekey keys import --kms vault-transit` of the test's known data key `id`.
  void ImportThroughVault(uint32_t id) {
    std::string file = *dir_ + "/key" + std::to_string(id);
    Secret key = TestDataKey(id);
    std::ofstream(file, std::ios::binary)
        .write(reinterpret_cast<const char*>(key.data()), static_cast<std::streamsize>(key.size()));
    ProcessResult r = Rekey({"keys", "import", "--kms", "vault-transit", "--key-id",
                             std::to_string(id), "--file", file});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    RunProcess({"rm", "-f", file});
  }

  void CreateThroughVault(uint32_t id) {
    ProcessResult r =
        Rekey({"keys", "create", "--kms", "vault-transit", "--key-id", std::to_string(id)});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("transit/keys/rekey"), std::string::npos) << r.out;
  }

  int64_t CreateJob(const std::string& args) {
    pqxx::work txn(conn());
    int64_t id =
        txn.exec1("SELECT rekey.create_job(" + args + ", p_stages => '{100}')")[0].as<int64_t>();
    txn.commit();
    return id;
  }

  // Unwraps key `id` from rekey.keys with a client of the test's own, and checks that every row of
  // `table` in [lo, hi] decrypts under it to its original plaintext.
  void ExpectRowsUnder(const std::string& table, uint32_t id, int64_t lo, int64_t hi) {
    std::string ref, wrapped;
    {
      pqxx::read_transaction txn(conn());
      auto row = txn.exec_params1(
          "SELECT kms_provider, kms_key_ref, wrapped_key FROM rekey.keys WHERE key_id = $1",
          static_cast<int64_t>(id));
      EXPECT_EQ(row[0].as<std::string>(), "vault-transit");
      ref = row[1].as<std::string>();
      wrapped = pqxx::binarystring(row[2]).str();
    }
    EXPECT_EQ(ref, "transit/keys/rekey");
    EXPECT_EQ(wrapped.rfind("vault:v", 0), 0u) << wrapped;
    kms::VaultTransitClient vault(kms::VaultTransitConfigFromEnv([this](const char* n) {
                                    auto env = VaultEnvMap();
                                    auto it = env.find(n);
                                    return it == env.end() ? std::nullopt
                                                           : std::optional<std::string>(it->second);
                                  }),
                                  transport_);
    crypto::AesGcmKey key(vault.UnwrapDataKey(id, ref, ToBytes(wrapped)));
    pqxx::read_transaction txn(conn());
    int64_t checked = 0;
    for (const auto& row : txn.exec_params(
             "SELECT id, token FROM " + table + " WHERE id BETWEEN $1 AND $2 ORDER BY id", lo,
             hi)) {
      pqxx::binarystring token(row[1]);
      Bytes plaintext;
      uint32_t kid = 0;
      auto status = crypto::OpenTink(
          reinterpret_cast<const uint8_t*>(token.data()), token.size(),
          [&](uint32_t k) { return k == id ? &key : nullptr; }, nullptr, 0, &plaintext, &kid);
      ASSERT_EQ(status, crypto::DecodeStatus::kOk) << "row " << row[0].as<int64_t>();
      ASSERT_EQ(std::string(plaintext.begin(), plaintext.end()),
                PlaintextFor(row[0].as<int64_t>()));
      checked++;
    }
    EXPECT_EQ(checked, hi - lo + 1);
  }

  static std::string* dir_;
  static std::string* url_;
  static ChildProcess* server_;
  std::shared_ptr<kms::HttpTransport> transport_ = std::make_shared<kms::CurlTransport>();
};

std::string* VaultRotationTest::dir_ = nullptr;
std::string* VaultRotationTest::url_ = nullptr;
ChildProcess* VaultRotationTest::server_ = nullptr;

TEST_F(VaultRotationTest, FullRotationThroughVaultTransit) {
  ImportThroughVault(1);
  CreateThroughVault(2);
  SeedTinkTable(conn(), "public.cards", 3000, 1);
  int64_t job = CreateJob("'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 200");

  nlohmann::json before = Stats();
  std::unique_ptr<ChildProcess> worker =
      StartWorker({"--job", std::to_string(job), "--concurrency", "2"});
  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json after = Stats();
  // The cache: one process, two keys, one unwrap each, whatever the number of rows and threads.
  EXPECT_EQ(Count(after, "calls", "transit/decrypt") - Count(before, "calls", "transit/decrypt"), 2)
      << after.dump();
  EXPECT_EQ(after["logins"].get<int>() - before["logins"].get<int>(), 1) << after.dump();

  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(job)),
            "completed");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures"), "0");
  ExpectRowsUnder("public.cards", 2, 1, 3000);
  ProcessResult verify = Rekey({"job", "verify", std::to_string(job)});
  EXPECT_EQ(verify.exit_code, 0) << verify.err;
  EXPECT_NE(verify.out.find("3000 under target keys, 0 under source keys, 0 failed"),
            std::string::npos)
      << verify.out;
}

TEST_F(VaultRotationTest, TokenExpiredMidRunIsReplacedAndTheJobCompletes) {
  for (uint32_t id : {1u, 3u}) ImportThroughVault(id);
  for (uint32_t id : {2u, 4u}) CreateThroughVault(id);
  SeedTinkTable(conn(), "public.cards", 1000, 1);
  SeedTinkTable(conn(), "public.accounts", 1000, 3);
  int64_t first = CreateJob("'public.cards', ARRAY['token'], '{\"1\": 2}', p_batch_size => 100");

  // The worker logs in, unwraps keys 1 and 2 and then blocks on a row held locked here: it is in
  // mid-run. Vault then expires every token, and a second job needs keys 3 and 4, which the worker
  // has never unwrapped, so its next Vault calls carry the expired token.
  pqxx::connection holder(conninfo());
  auto hold = std::make_unique<pqxx::work>(holder);
  hold->exec("SELECT 1 FROM public.cards WHERE id = 500 FOR UPDATE");
  nlohmann::json before = Stats();
  std::unique_ptr<ChildProcess> worker = StartWorker({"--all"});
  bool blocked = false;
  for (int i = 0; i < 1200 && !blocked && worker->Running(); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    blocked = Scalar(
                  "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND wait_event_type = 'Lock'") != "0";
  }
  ASSERT_TRUE(blocked) << "the worker never reached the locked row: " << worker->Wait(10).err;
  EXPECT_EQ(Stats()["logins"].get<int>() - before["logins"].get<int>(), 1);
  Control({{"expire_tokens", true}});
  int64_t second =
      CreateJob("'public.accounts', ARRAY['token'], '{\"3\": 4}', p_batch_size => 100");
  hold->commit();
  hold.reset();

  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json after = Stats();
  EXPECT_EQ(after["logins"].get<int>() - before["logins"].get<int>(), 2) << after.dump();
  EXPECT_GE(Count(after, "errors", "403"), 1) << after.dump();
  for (int64_t job : {first, second}) {
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(job)),
              "completed");
  }
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures"), "0");
  ExpectRowsUnder("public.cards", 2, 1, 1000);
  ExpectRowsUnder("public.accounts", 4, 1, 1000);
}

TEST_F(VaultRotationTest, KeysCommandsFailWithOneLineNamingTheFix) {
  // No Transit key of that name: nothing is written, exit code 4 (key problem).
  EnvOverrides env = VaultEnv();
  env["REKEY_VAULT_TRANSIT_KEY"] = "absent";
  ProcessResult r = RunRekey({"--db", conninfo(), "keys", "create", "--kms", "vault-transit"}, env);
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_NE(r.err.find("transit/keys/absent does not exist"), std::string::npos) << r.err;
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.keys"), "0");
  // No VAULT_ADDR: a usage error naming it.
  env = VaultEnv();
  env["VAULT_ADDR"] = std::nullopt;
  r = RunRekey({"--db", conninfo(), "keys", "create", "--kms", "vault-transit"}, env);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("VAULT_ADDR"), std::string::npos) << r.err;
  // Vault sealed: exit code 3 (retry later), after the bounded retries.
  Control({{"sealed", true}});
  env = VaultEnv();
  env["REKEY_KMS_MAX_ATTEMPTS"] = "2";
  r = RunRekey({"--db", conninfo(), "keys", "create", "--kms", "vault-transit"}, env);
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("sealed"), std::string::npos) << r.err;
  Control({{"sealed", false}});
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.keys"), "0");
}

}  // namespace
}  // namespace rekey::testing
