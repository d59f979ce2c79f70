// The vault-transit column codec end to end: the real rekey binary, a real PostgreSQL and the
// loopback Vault (tests/kms/vault_server.py). Values are encrypted by Vault itself (through its
// HTTP API, as an application would), the Transit key is rotated, and `rekey job create --codec
// vault-transit` plus workers rewrap them inside Vault. Checked: every value ends under the new
// version and still decrypts (through Vault) to its plaintext; values Vault refuses are
// quarantined with Vault's reason while the rest complete; no plaintext reaches rekey's output;
// rollback and unfit keys are refused with one line; a Vault outage quarantines nothing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/bytes.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "kms/http_transport.h"
#include "kms/vault_transit.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

constexpr char kPython[] = "/usr/bin/python3";
constexpr char kRootToken[] = "s.rekey-test-root";
constexpr int kRows = 60;

std::string B64(const std::string& s) {
  return Base64Encode(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// The application's plaintext of row `id` (distinctive, so a leak into any output is found).
std::string Plaintext(int id) {
  return "PAN-4111-" + std::to_string(100000 + id * 7919);
}

class VaultCodecTest : public PgTest {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("rekey-vault-codec-"));
    std::string port_file = *dir_ + "/port";
    server_ =
        new ChildProcess({kPython, std::string(REKEY_SOURCE_DIR) + "/tests/kms/vault_server.py",
                          "--port-file", port_file, "--root-token", kRootToken});
    const int port = WaitForPortFile(port_file, 30000);
    ASSERT_GT(port, 0) << "vault_server.py did not start";
    url_ = new std::string("http://127.0.0.1:" + std::to_string(port));
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    RunProcess({"rm", "-rf", *dir_});
  }

  void SetUp() override {
    PgTest::SetUp();
    // Fresh keys per test: "app" (derived), "plainapp" (not derived), "other" (derived).
    Control({{"reset", true}});
    Control({{"create_key", {{"name", "app"}, {"derived", true}}}});
    Control({{"create_key", {{"name", "plainapp"}, {"derived", false}}}});
    Control({{"create_key", {{"name", "other"}, {"derived", true}}}});
  }

  nlohmann::json Control(const nlohmann::json& cmd) {
    kms::HttpRequest r;
    r.url = *url_ + "/__control";
    r.body = cmd.dump();
    kms::HttpResponse resp = transport_->Post(r);
    EXPECT_EQ(resp.status, 200) << resp.body;
    return nlohmann::json::parse(resp.body);
  }

  // A Transit call as an application makes it, with the root token.
  nlohmann::json Vault(const std::string& path, const nlohmann::json& body) {
    kms::HttpRequest r;
    r.url = *url_ + "/v1/" + path;
    r.headers = {{"X-Vault-Token", kRootToken}, {"Content-Type", "application/json"}};
    r.body = body.dump();
    kms::HttpResponse resp = transport_->Post(r);
    EXPECT_EQ(resp.status, 200) << path << ": " << resp.body;
    return nlohmann::json::parse(resp.body);
  }

  static std::string Context(int id) { return B64("secrets:" + std::to_string(id)); }

  std::string Encrypt(const std::string& key, int id) {
    return Vault("transit/encrypt/" + key,
                 {{"plaintext", B64(Plaintext(id))}, {"context", Context(id)}})["data"]
        .at("ciphertext")
        .get<std::string>();
  }

  std::string Decrypt(const std::string& ciphertext, int id) {
    std::string b64 =
        Vault("transit/decrypt/app", {{"ciphertext", ciphertext}, {"context", Context(id)}})["data"]
            .at("plaintext")
            .get<std::string>();
    std::optional<Bytes> plain = Base64Decode(b64);
    return plain ? std::string(plain->begin(), plain->end()) : "";
  }

  EnvOverrides Env() {
    return {{"VAULT_ADDR", *url_},
            {"VAULT_TOKEN", std::string(kRootToken)},
            {"VAULT_TOKEN_FILE", std::nullopt},
            {"REKEY_VAULT_K8S_ROLE", std::nullopt},
            {"VAULT_NAMESPACE", std::nullopt},
            {"REKEY_VAULT_TRANSIT_KEY", std::nullopt},
            {"DATABASE_URL", std::nullopt}};
  }

  ProcessResult Rekey(std::vector<std::string> args) {
    args.insert(args.begin(), {"--db", conninfo()});
    return RunRekey(args, Env());
  }

  // public.secrets: rows 1..kRows under app v1 (context "secrets:<id>"); then a value Vault
  // cannot authenticate, a value under another key, a value that is no Transit ciphertext at
  // all, and a NULL.
  void SeedTable() {
    Exec("CREATE TABLE public.secrets (id bigint PRIMARY KEY, payload text, note text)");
    pqxx::work txn(conn());
    for (int id = 1; id <= kRows; id++) {
      txn.exec_params("INSERT INTO public.secrets VALUES ($1, $2, 'ok')", id, Encrypt("app", id));
    }
    std::string corrupt = Encrypt("app", kRows + 1);
    size_t at = corrupt.size() - 6;
    corrupt[at] = corrupt[at] == 'A' ? 'B' : 'A';
    txn.exec_params("INSERT INTO public.secrets VALUES ($1, $2, 'corrupt')", kRows + 1, corrupt);
    txn.exec_params("INSERT INTO public.secrets VALUES ($1, $2, 'other key')", kRows + 2,
                    Encrypt("other", kRows + 2));
    txn.exec_params("INSERT INTO public.secrets VALUES ($1, 'not-a-ciphertext', 'garbage')",
                    kRows + 3);
    txn.exec_params("INSERT INTO public.secrets VALUES ($1, NULL, 'null')", kRows + 4);
    txn.commit();
  }

  std::vector<std::string> CreateArgs() {
    return {"job",
            "create",
            "--table",
            "public.secrets",
            "--column",
            "payload",
            "--codec",
            "vault-transit",
            "--transit-key",
            "transit/keys/app",
            "--ad-template",
            "{table}:{pk}",
            "--stages",
            "100",
            "--batch-size",
            "16",
            "--error-threshold",
            "0.3"};
  }

  static std::string* dir_;
  static std::string* url_;
  static ChildProcess* server_;
  std::shared_ptr<kms::HttpTransport> transport_ = std::make_shared<kms::CurlTransport>();
};

std::string* VaultCodecTest::dir_ = nullptr;
std::string* VaultCodecTest::url_ = nullptr;
ChildProcess* VaultCodecTest::server_ = nullptr;

TEST_F(VaultCodecTest, RewrapsEveryValueInsideVaultAndQuarantinesWhatVaultRefuses) {
  SeedTable();
  EXPECT_EQ(Vault("transit/keys/app/rotate", nlohmann::json::object())["data"]["latest_version"],
            2);

  ProcessResult created = Rekey(CreateArgs());
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string job = Scalar("SELECT max(job_id) FROM rekey.jobs");
  EXPECT_EQ(Scalar("SELECT transit_key_ref || ' v' || transit_min_version FROM rekey.jobs"),
            "transit/keys/app v2");
  EXPECT_EQ(Scalar("SELECT codec FROM rekey.targets"), "vault-transit");

  ProcessResult work =
      RunRekey({"--db", conninfo(), "work", "--job", job, "--concurrency", "2"}, Env());
  ASSERT_EQ(work.exit_code, 0) << work.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs"), "completed")
      << Scalar("SELECT state_reason FROM rekey.jobs");

  // Every good value is now under v2 and decrypts, in its row's context, to its plaintext.
  {
    pqxx::read_transaction txn(conn());
    int checked = 0;
    for (const auto& row : txn.exec_params(
             "SELECT id, payload FROM public.secrets WHERE id <= $1 ORDER BY id", kRows)) {
      const int id = row[0].as<int>();
      const std::string value = row[1].as<std::string>();
      ASSERT_EQ(value.rfind("vault:v2:", 0), 0u) << "row " << id << ": " << value;
      ASSERT_EQ(Decrypt(value, id), Plaintext(id)) << "row " << id;
      checked++;
    }
    EXPECT_EQ(checked, kRows);
  }
  // The refused values are untouched and quarantined with their reason; the NULL is left alone.
  EXPECT_EQ(Scalar("SELECT string_agg(pk || ':' || error_class, ',' ORDER BY pk) FROM "
                   "rekey.row_failures"),
            std::to_string(kRows + 1) + ":vault_rejected," + std::to_string(kRows + 2) +
                ":vault_rejected," + std::to_string(kRows + 3) + ":bad_prefix");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures WHERE error_class = "
                   "'vault_rejected' AND detail LIKE 'v1: %authentication failed%'"),
            "2")
      << Scalar("SELECT string_agg(detail, ' | ') FROM rekey.row_failures");
  EXPECT_EQ(Scalar("SELECT count(*) FROM public.secrets WHERE payload LIKE 'vault:v1:%'"), "2");
  EXPECT_EQ(Scalar("SELECT count(*) FROM public.secrets WHERE payload IS NULL"), "1");
  // One audit row per batch, counting the versions moved.
  EXPECT_EQ(Scalar("SELECT sum((details->'keys'->>'vault:v1->vault:v2')::int) FROM rekey.audit "
                   "WHERE action = 'rotation.batch.completed'"),
            std::to_string(kRows));

  // rekey never saw a plaintext, so none can be in what it printed.
  for (const std::string& output : {created.out, created.err, work.out, work.err}) {
    for (int id = 1; id <= kRows + 2; id++) {
      ASSERT_EQ(output.find(Plaintext(id)), std::string::npos) << output;
      ASSERT_EQ(output.find(B64(Plaintext(id))), std::string::npos) << output;
    }
  }

  // A transit target holds no keyring key's values: key usage (retire, destroy) skips it.
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.key_usage(1)"), "0");

  // verify: versions, no plaintext; the three quarantined values fail it.
  ProcessResult verify = Rekey({"job", "verify", job});
  EXPECT_EQ(verify.exit_code, 5) << verify.err;
  EXPECT_NE(verify.out.find(std::to_string(kRows) + " under target keys"), std::string::npos)
      << verify.out;

  // The compliance report of such a job builds too.
  ProcessResult report = Rekey({"report", job, "--format", "json"});
  EXPECT_EQ(report.exit_code, 0) << report.err;
  EXPECT_EQ(report.out.find(Plaintext(1)), std::string::npos);

  // No rollback: one line saying why, exit 5, nothing changed.
  ProcessResult rollback = Rekey({"job", "rollback", job});
  EXPECT_EQ(rollback.exit_code, 5) << rollback.err;
  EXPECT_NE(rollback.err.find("cannot be rolled back"), std::string::npos) << rollback.err;
  const size_t at = rollback.err.find("rekey: error: ");
  ASSERT_NE(at, std::string::npos) << rollback.err;
  EXPECT_EQ(rollback.err.find('\n', at), rollback.err.size() - 1) << rollback.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs"), "completed");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.job_stages WHERE kind = 'rollback'"), "0");
}

TEST_F(VaultCodecTest, VaultOutageMidBatchWritesNothingAndQuarantinesNothing) {
  constexpr int kFewRows = 24;
  Exec("CREATE TABLE public.secrets (id bigint PRIMARY KEY, payload text, note text)");
  {
    pqxx::work txn(conn());
    for (int id = 1; id <= kFewRows; id++) {
      txn.exec_params("INSERT INTO public.secrets VALUES ($1, $2, 'ok')", id, Encrypt("app", id));
    }
    txn.commit();
  }
  Vault("transit/keys/app/rotate", nlohmann::json::object());
  ProcessResult created = Rekey(CreateArgs());
  ASSERT_EQ(created.exit_code, 0) << created.err;
  // The worker reads the key, then blocks on a row this test holds locked: it is inside its
  // batch's transaction. Vault then goes down (503 for two seconds) and the row is let go, so the
  // worker's rewrap request fails with the batch's rows locked: nothing may be written, the batch
  // is released without using an attempt, and it completes once Vault is back.
  pqxx::connection holder(conninfo());
  auto hold = std::make_unique<pqxx::work>(holder);
  hold->exec("SELECT 1 FROM public.secrets WHERE id = 1 FOR UPDATE");
  ChildProcess worker({REKEY_BINARY, "--db", conninfo(), "work", "--job",
                       Scalar("SELECT max(job_id) FROM rekey.jobs")},
                      Env());
  bool blocked = false;
  for (int i = 0; i < 1200 && !blocked && worker.Running(); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    blocked = Scalar(
                  "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND wait_event_type = 'Lock'") != "0";
  }
  ASSERT_TRUE(blocked) << "the worker never reached the locked row: " << worker.Wait(10).err;
  Control({{"outage_seconds", 2}});
  hold->commit();
  hold.reset();
  ProcessResult work = worker.Wait(120);
  kms::HttpRequest get;
  get.method = "GET";
  get.url = *url_ + "/__stats";
  nlohmann::json stats = nlohmann::json::parse(transport_->Post(get).body);
  ASSERT_EQ(work.exit_code, 0) << work.err;
  EXPECT_GE(stats["errors"].value("503", 0), 1) << stats.dump();
  EXPECT_NE(work.err.find("Vault Transit rewrap on transit/keys/app failed (HTTP 503"),
            std::string::npos)
      << work.err;
  EXPECT_EQ(Scalar("SELECT max(attempts) FROM rekey.batches"), "1");
  EXPECT_NE(work.err.find("\"transient\":true"), std::string::npos) << work.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs"), "completed")
      << Scalar("SELECT state_reason FROM rekey.jobs");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.row_failures"), "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.batches WHERE state <> 'done'"), "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM public.secrets WHERE payload LIKE 'vault:v2:%'"),
            std::to_string(kFewRows));
  pqxx::read_transaction txn(conn());
  for (const auto& row : txn.exec("SELECT id, payload FROM public.secrets ORDER BY id")) {
    ASSERT_EQ(Decrypt(row[1].as<std::string>(), row[0].as<int>()), Plaintext(row[0].as<int>()));
  }
}

TEST_F(VaultCodecTest, CreateRefusesUnfitTransitKeysWithOneLine) {
  SeedTable();
  const std::vector<CreateRefusal> cases = {
      {{"--transit-key", "transit/keys/absent"}, 4, "transit/keys/absent does not exist"},
      {{"--transit-key", "transit/keys/plainapp"}, 4, "is not derived"},
      {{"--ad-template", ""}, 4, "is derived"},
      {{"--transit-key", "transit/app"}, 2, "not a Vault Transit key path"},
      {{"--to-version", "5"}, 2, "beyond Transit key transit/keys/app's latest version 1"},
      {{"--map", "1:2"}, 2, "--map does not apply"},
  };
  ExpectCreateRefusals(CreateArgs(), cases,
                       [&](const std::vector<std::string>& args) { return Rekey(args); });
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.jobs"), "0");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.targets"), "0");
}

// The SQL filter (rekey.transit_version) and the C++ parser agree on what a Transit ciphertext
// and its version are.
TEST_F(VaultCodecTest, SqlAndClientAgreeOnTransitVersions) {
  const std::vector<std::string> values = {
      "vault:v1:abc=", "vault:v12:QUJD", "vault:v123456789:YQ==", "vault:v1234567890:YQ==",
      "vault:v:abc",   "vault:v1:",      "vault:v1:ab c",         "Vault:v1:abc",
      "vault:1:abc",   "vault:v01:abc",  "xvault:v1:abc",         ""};
  pqxx::read_transaction txn(conn());
  for (const std::string& v : values) {
    std::optional<int> cpp = kms::TransitCiphertextVersion(v);
    pqxx::row r = txn.exec_params1("SELECT rekey.transit_version($1)", v);
    if (cpp) {
      ASSERT_FALSE(r[0].is_null()) << v;
      EXPECT_EQ(r[0].as<int>(), *cpp) << v;
    } else {
      EXPECT_TRUE(r[0].is_null()) << v;
    }
  }
}

}  // namespace
}  // namespace rekey::testing
