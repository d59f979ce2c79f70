// The cloak codec (issue #18) proven both ways with the real @47ng/cloak, the library
// prisma-field-encryption encrypts with (npm, pinned in tests/cloak/package-lock.json, run by
// tests/cloak/cloak_app.mjs): strings it wrote are rotated by real `rekey work` processes in a
// staged job while the application writes, then read by the library configured with the new key
// alone; a rollback returns them to the old key, read by the library with the old key alone;
// tampered, truncated and foreign values are quarantined with their reason. Keys go in and out in
// the application's form (rekey keys import/export --format cloak). Skipped (GTEST_SKIP, never
// passed) when node, npm or the npm registry is unavailable (tests/cloak/run.sh exits 77).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "crypto/cloak.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

const std::string kCloakDir = std::string(REKEY_SOURCE_DIR) + "/tests/cloak";

class CloakTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ProcessResult install = RunProcess({kCloakDir + "/run.sh"}, {}, "", 600);
    if (install.exit_code == 77) GTEST_SKIP() << install.err;
    ASSERT_EQ(install.exit_code, 0) << install.err;
    ImportTestKeys(conn(), {1});
    key1_ = crypto::CloakKeyText(TestDataKey(1));  // the application's key so far
    dir_ = MakeTempDir("rekey-cloak");
  }

  // cloak_app.mjs `command` with `request` on stdin; its JSON reply.
  nlohmann::json App(const std::string& command, const nlohmann::json& request = {}) {
    ProcessResult r = RunProcess({kCloakDir + "/run.sh", "cloak_app.mjs", command}, {},
                                 request.is_null() ? "" : request.dump(), 600);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.exit_code == 0 ? r.out : "null");
  }

  void Work(int64_t job, int processes = 2) { WorkUntilDry(conninfo(), job, processes); }

  ProcessResult Rekey(const std::vector<std::string>& args) { return RekeyAt(conninfo(), args); }

  // The library's strings of PlaintextFor(1..rows) under `key`, plus `bad` (ids 900001..), in
  // public.users (id bigint pk, email text, visits int): a Prisma model's encrypted field.
  void Seed(int rows, const std::vector<std::string>& bad) {
    nlohmann::json items = nlohmann::json::object();
    for (int id = 1; id <= rows; ++id) items[std::to_string(id)] = PlaintextFor(id);
    const nlohmann::json made = App("encrypt", {{"key", key1_}, {"items", items}});
    pqxx::work txn(conn());
    SeedLibraryValues(
        txn, "CREATE TABLE public.users (id bigint PRIMARY KEY, email text, visits int DEFAULT 0)",
        "INSERT INTO public.users (id, email)", made, bad);
    txn.commit();
  }

  // What the library, configured with `keys`, reads in every row up to `rows`.
  nlohmann::json ReadBack(const std::vector<std::string>& keys, int rows) {
    nlohmann::json values = nlohmann::json::object();
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id, email FROM public.users WHERE id <= " +
                                    std::to_string(rows) + " ORDER BY id")) {
      values[row["id"].as<std::string>()] = row["email"].as<std::string>();
    }
    return App("read", {{"keys", keys}, {"values", values}});
  }

  std::string Quarantined(int64_t job) {
    return Scalar(
        "SELECT string_agg(pk || ':' || error_class, ',' ORDER BY pk) FROM "
        "rekey.row_failures WHERE job_id = " +
        std::to_string(job));
  }

  std::string key1_;
  std::string dir_;
};

// The application's own new key (generateKey), imported in its form; the old key's strings
// rotated in two stages while the application counts visits on random rows and writes new
// strings under the new key (its PRISMA_FIELD_ENCRYPTION_KEY already switched); then the library
// with the new key alone reads every row, and the export is the configuration it reads them with.
TEST_F(CloakTest, LibraryStringsRotatedWhileTheAppWritesAndReadWithTheNewKeyAlone) {
  const std::string key3 = App("generate").get<std::string>();
  const std::string fingerprint3 = App("fingerprint", {{"key", key3}}).get<std::string>();
  {
    // A keychain with one key in the wrong form: one line, nothing written.
    std::ofstream(dir_ + "/bad.env") << "PRISMA_FIELD_DECRYPTION_KEYS=" << key3 << ","
                                     << key3.substr(0, key3.size() - 1) << "\n";
    ProcessResult refused = Rekey(
        {"keys", "import", "--format", "cloak", "--key-id", "3", "--file", dir_ + "/bad.env"});
    EXPECT_NE(refused.exit_code, 0);
    EXPECT_THAT(refused.err,
                HasSubstr("item 2 of PRISMA_FIELD_DECRYPTION_KEYS is not a cloak key"));
    EXPECT_EQ(refused.err.find(key3.substr(13, 20)), std::string::npos) << "no key material";
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE key_id = 3"), 0) << "nothing written";
    std::ofstream(dir_ + "/new.env") << "PRISMA_FIELD_ENCRYPTION_KEY=" << key3 << "\n";
    ProcessResult imported = Rekey({"keys", "import", "--format", "cloak", "--key-id", "3",
                                    "--promote", "--file", dir_ + "/new.env"});
    ASSERT_EQ(imported.exit_code, 0) << imported.err;
  }
  constexpr int kRows = 1500;
  // A value under a key no job holds, made by the library itself.
  const std::string foreign =
      App("encrypt", {{"key", App("generate")}, {"items", {{"1", "x"}}}})["1"].get<std::string>();
  const std::string good =
      App("encrypt", {{"key", key1_}, {"items", {{"1", "y"}}}})["1"].get<std::string>();
  std::string tampered = good;
  tampered[40] = tampered[40] == 'A' ? 'B' : 'A';
  Seed(kRows,
       {tampered, good.substr(0, 30), "alice@example.com", foreign, "v2" + good.substr(2), ""});

  // The application's writes during the rotation: new strings under key 3, made beforehand by
  // the library (a node process per write would be the bottleneck, not the database).
  nlohmann::json updates = nlohmann::json::object();
  for (int id = 1; id <= kRows; ++id) updates[std::to_string(id)] = "new " + PlaintextFor(id);
  const nlohmann::json rewritten = App("encrypt", {{"key", key3}, {"items", updates}});

  const int64_t job =
      CreateJobSql(conn(),
                   "'public.users', ARRAY['email'], '{\"1\": 3}', p_codecs => '{cloak}', "
                   "p_stages => '{10,100}', p_batch_size => 100, p_error_threshold => 0.05");
  const std::string j = std::to_string(job);
  std::atomic<bool> stop{false};
  std::map<int, int> visits;
  std::map<int, bool> written;
  std::thread app([&] {
    pqxx::connection c(conninfo());
    std::mt19937 rng(18);
    std::uniform_int_distribution<int> pick(1, kRows);
    while (!stop.load()) {
      const int id = pick(rng);
      pqxx::nontransaction txn(c);
      if (id % 5 == 0) {
        txn.exec_params0("UPDATE public.users SET email = $2 WHERE id = $1", id,
                         rewritten[std::to_string(id)].get<std::string>());
        written[id] = true;
      } else {
        txn.exec_params0("UPDATE public.users SET visits = visits + 1 WHERE id = $1", id);
        ++visits[id];
      }
    }
  });
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(job);
  stop = true;
  app.join();
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Quarantined(job),
            "900001:auth_failed,900002:truncated,900003:not_cloak,900004:unknown_fingerprint,"
            "900005:bad_prefix,900006:empty");
  EXPECT_EQ(Scalar("SELECT email FROM public.users WHERE id = 900003"), "alice@example.com")
      << "a quarantined value is left as it is";

  const nlohmann::json seen = ReadBack({key3}, kRows);
  ASSERT_EQ(seen.size(), size_t(kRows));
  int app_writes = 0;
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = seen[std::to_string(id)];
    ASSERT_FALSE(v.contains("error")) << id << ": " << v.dump();
    ASSERT_EQ(v["fingerprint"], fingerprint3) << id;
    ASSERT_EQ(v["plaintext"], (written[id] ? "new " : "") + PlaintextFor(id))
        << "an application write was lost or a value changed, row " << id;
    app_writes += written[id] + visits[id];
    ASSERT_EQ(Count("SELECT visits FROM public.users WHERE id = " + std::to_string(id)), visits[id])
        << "an application write was lost, row " << id;
  }
  EXPECT_GT(app_writes, 100) << "the application must have written during the rotation";

  ProcessResult verify = Rekey({"job", "verify", j});
  EXPECT_THAT(verify.out, HasSubstr(std::to_string(kRows) +
                                    " under target keys, 0 under source keys, 6 failed"))
      << verify.err;

  // The keyring in the application's configuration, only with --cleartext: the encryption key is
  // key 3 (promoted at import), the keychain still holds key 1 (decrypt_only).
  ProcessResult refused =
      Rekey({"keys", "export", "--format", "cloak", "--output", dir_ + "/refused.env"});
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_THAT(refused.err, HasSubstr("pass --cleartext"));
  ProcessResult exported =
      Rekey({"keys", "export", "--format", "cloak", "--cleartext", "--output", dir_ + "/app.env"});
  ASSERT_EQ(exported.exit_code, 0) << exported.err;
  std::ifstream file(dir_ + "/app.env");
  std::string encryption, decryption;
  std::getline(file, encryption);
  std::getline(file, decryption);
  EXPECT_EQ(encryption, "PRISMA_FIELD_ENCRYPTION_KEY=" + key3);
  ASSERT_EQ(decryption.substr(0, 29), "PRISMA_FIELD_DECRYPTION_KEYS=");
  EXPECT_THAT(decryption, HasSubstr(key1_)) << "the old key stays decryptable";
  std::vector<std::string> keychain;
  std::stringstream list(decryption.substr(29));
  for (std::string key; std::getline(list, key, ',');) keychain.push_back(key);
  EXPECT_EQ(keychain.front(), key3);
  EXPECT_EQ(ReadBack(keychain, kRows), seen);

  EXPECT_THAT(Scalar("SELECT string_agg(coalesce(unknown, ''), ',') FROM rekey.key_usage(1) "
                     "WHERE target LIKE '%users%'"),
              HasSubstr("cloak strings"))
      << "SQL cannot count cloak strings by key: retiring key 1 must not pass on SQL's word";
}

// rekey's own strings read by the library, and a rollback back into the old key: after it, the
// library configured with the old key alone reads every row.
TEST_F(CloakTest, RollbackReturnsEveryStringToTheOldKeyTheLibraryReadsAlone) {
  ImportTestKeys(conn(), {2});
  const std::string key2 = crypto::CloakKeyText(TestDataKey(2));
  constexpr int kRows = 600;
  Seed(kRows, {});
  const int64_t job = CreateJobSql(conn(),
                                   "'public.users', ARRAY['email'], '{\"1\": 2}', "
                                   "p_codecs => '{cloak}', p_stages => '{50,100}', "
                                   "p_batch_size => 50");
  const std::string j = std::to_string(job);
  Work(job);
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  // Mid-rollout the application holds both keys: rekey's strings and its own both read.
  const nlohmann::json both = ReadBack({key1_, key2}, kRows);
  int moved = 0;
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = both[std::to_string(id)];
    ASSERT_EQ(v["plaintext"], PlaintextFor(id)) << id << ": " << v.dump();
    moved += v["fingerprint"] == crypto::CloakFingerprint(key2);
  }
  EXPECT_NEAR(moved, kRows / 2, kRows / 6) << "the first stage moved about half";

  ProcessResult r = Rekey({"job", "rollback", j, "--reason", "the app cannot read key 2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(job);
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "rolled_back");
  const nlohmann::json old_only = ReadBack({key1_}, kRows);
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = old_only[std::to_string(id)];
    ASSERT_EQ(v["plaintext"], PlaintextFor(id)) << id << ": " << v.dump();
    ASSERT_EQ(v["fingerprint"], "3bab9a53") << id;  // key 1's (tests/cloak/vectors.json)
  }
}

}  // namespace
}  // namespace rekey::testing
