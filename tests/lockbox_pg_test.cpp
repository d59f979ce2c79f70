// The lockbox codec against the real PostgreSQL, with real `rekey work` processes (issue #18;
// docs/FORMAT.md, "lockbox"). Ruby and the lockbox gem cannot run on rekey's machines: the
// application is tests/lockbox/lockbox_app.py, Lockbox's rules written from the documented format
// with Debian's python3-cryptography and checked against the vectors of Lockbox's own tests each
// time it runs (as src/crypto/lockbox_test.cpp checks rekey's side). It seals values as Lockbox
// does, reads rekey's output as Lockbox would with the new master key alone (previous_versions
// empty) and with the configuration `rekey keys export --format lockbox` writes, and reads a
// rollback with the old master key alone.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/bytes.h"
#include "crypto/text_encoding.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

const std::string& App() {
  static const std::string app = std::string(REKEY_SOURCE_DIR) + "/tests/lockbox/lockbox_app.py";
  return app;
}

std::string MasterHex(uint32_t key_id) {
  const Secret key = TestDataKey(key_id);
  return HexEncode(key.data(), key.size());
}

class LockboxTest : public PgTest {
 protected:
  void Work(int64_t job, int processes = 2) { WorkUntilDry(conninfo(), job, processes); }

  ProcessResult Rekey(const std::vector<std::string>& args) { return RekeyAt(conninfo(), args); }

  // Runs the application script; skips the test where python3-cryptography is missing.
  nlohmann::json RunApp(const std::string& verb, const nlohmann::json& request) {
    ProcessResult r = RunProcess({"/usr/bin/python3", App(), verb}, {}, request.dump());
    if (r.exit_code == 77) throw Skipped{r.err};
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out.empty() ? "null" : r.out);
  }
  struct Skipped {
    std::string why;
  };

  // {"id": "plaintext-<id>"} values sealed by the application under `master` for table.attribute.
  nlohmann::json Seal(const std::string& master, const std::string& table,
                      const std::string& attribute, int from, int to,
                      const std::string& prefix = "") {
    nlohmann::json request = {{"master_key", master},
                              {"table", table},
                              {"attribute", attribute},
                              {"items", nlohmann::json::array()}};
    for (int id = from; id <= to; ++id) {
      request["items"].push_back({{"id", id}, {"plaintext", prefix + PlaintextFor(id)}});
    }
    return RunApp("encrypt", request);
  }

  // id -> text of `column` for every row of `table`.
  std::map<int64_t, std::string> Values(const std::string& table, const std::string& column) {
    std::map<int64_t, std::string> out;
    pqxx::read_transaction txn(conn());
    for (const auto& row : txn.exec("SELECT id, coalesce(" + column + ", '<null>') AS v FROM " +
                                    table + " ORDER BY id")) {
      out[row["id"].as<int64_t>()] = row["v"].as<std::string>();
    }
    return out;
  }

  // What the application reads: `config` holds master_key and previous_versions, or initializer.
  nlohmann::json Read(nlohmann::json config, const std::string& table, const std::string& attribute,
                      const std::map<int64_t, std::string>& values) {
    config["table"] = table;
    config["attribute"] = attribute;
    config["values"] = nlohmann::json::object();
    for (const auto& [id, text] : values) config["values"][std::to_string(id)] = text;
    return RunApp("read", config);
  }

  std::string Quarantined(int64_t job) {
    return Scalar(
        "SELECT string_agg(pk || ':' || error_class, ',' ORDER BY pk) FROM rekey.row_failures "
        "WHERE job_id = " +
        std::to_string(job));
  }
};

// Values the application sealed under its old master key (key 1) are rotated by a staged job to
// a master key the application generated and rekey imported in its form, while the application
// -- configured as Lockbox's rotation guide says, the new master key with the old one as a
// previous version -- writes the same rows: new emails under the new key, and a counter. Then the
// application reads every value with the new master key alone; bad values are quarantined with
// their reason and left as they were; the exported configuration reads them too.
TEST_F(LockboxTest, ValuesRotateWhileTheApplicationWritesAndReadWithTheNewMasterKeyAlone) try {
  ImportTestKeys(conn(), {1});
  const std::string dir = MakeTempDir("rekey-lockbox");
  const std::string key3 = RunApp("generate", nullptr).get<std::string>();
  {
    // A key in another form: one line, nothing written, no key material echoed.
    std::ofstream(dir + "/bad.key") << "LOCKBOX_MASTER_KEY=" << key3 << "\n";
    ProcessResult refused = Rekey(
        {"keys", "import", "--key-id", "3", "--format", "lockbox", "--file", dir + "/bad.key"});
    EXPECT_NE(refused.exit_code, 0);
    EXPECT_THAT(refused.err, HasSubstr("64 hex digits"));
    EXPECT_EQ(refused.err.find(key3), std::string::npos) << "never echoes key material";
    EXPECT_EQ(std::count(refused.err.begin(), refused.err.end(), '\n'), 1) << refused.err;
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE key_id = 3"), 0) << "nothing written";
    std::ofstream(dir + "/new.key") << key3 << "\n";
    ProcessResult imported = Rekey(
        {"keys", "import", "--key-id", "3", "--format", "lockbox", "--file", dir + "/new.key"});
    ASSERT_EQ(imported.exit_code, 0) << imported.err;
  }

  constexpr int kRows = 2000;
  constexpr int kRewritable = 400;  // rows whose email the application rewrites meanwhile
  const nlohmann::json sealed = Seal(MasterHex(1), "users", "email_ciphertext", 1, kRows);
  const nlohmann::json fresh =
      Seal(key3, "users", "email_ciphertext", 1, kRewritable, "new-");  // the app's new writes
  const std::string good = sealed["1"].get<std::string>();
  std::string tampered = good;
  tampered[20] = tampered[20] == 'A' ? 'B' : 'A';
  const nlohmann::json other_attribute = Seal(MasterHex(1), "users", "phone_ciphertext", 1, 1);
  const std::string tink = TinkEncrypt(1, "x@y.z");  // another format, under the same key
  std::string tink_value;
  crypto::EncodeText(crypto::TextEncoding::kBase64, reinterpret_cast<const uint8_t*>(tink.data()),
                     tink.size(), {}, &tink_value);
  const std::vector<std::string> bad = {tampered, good.substr(0, 20), "%%%%",
                                        other_attribute["1"].get<std::string>(), tink_value};
  {
    pqxx::work txn(conn());
    SeedLibraryValues(txn,
                      "CREATE TABLE public.users (id bigint PRIMARY KEY, email_ciphertext text, "
                      "visits integer NOT NULL DEFAULT 0)",
                      "INSERT INTO public.users (id, email_ciphertext)", sealed, bad);
    // Lockbox stores "" as it is (no ciphertext) and nil as NULL: nothing to move, nothing wrong.
    txn.exec0(
        "INSERT INTO public.users (id, email_ciphertext) VALUES (999998, ''), (999999, NULL)");
    txn.commit();
  }

  ProcessResult created =
      Rekey({"job", "create", "--table", "public.users", "--column", "email_ciphertext", "--codec",
             "lockbox", "--map", "1:3", "--stages", "10,100", "--batch-size", "100",
             "--error-threshold", "0.05"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string j = Scalar("SELECT max(job_id) FROM rekey.jobs");
  EXPECT_EQ(Scalar("SELECT encoding FROM rekey.targets WHERE column_name = 'email_ciphertext'"),
            "base64")
      << "Lockbox's default stored form";

  std::atomic<bool> stop{false};
  std::map<int, int> visits;
  std::map<int, bool> rewritten;
  std::thread application([&] {
    pqxx::connection app(conninfo());
    std::mt19937 rng(18);
    std::uniform_int_distribution<int> pick(1, kRows);
    while (!stop.load()) {
      const int id = pick(rng);
      pqxx::nontransaction txn(app);
      if (id <= kRewritable) {
        txn.exec_params0(
            "UPDATE public.users SET email_ciphertext = $2, visits = visits + 1 WHERE id = $1", id,
            fresh[std::to_string(id)].get<std::string>());
        rewritten[id] = true;
      } else {
        txn.exec_params0("UPDATE public.users SET visits = visits + 1 WHERE id = $1", id);
      }
      ++visits[id];
    }
  });
  Work(std::stoll(j));
  EXPECT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(std::stoll(j));
  stop = true;
  application.join();
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Quarantined(std::stoll(j)),
            "900001:auth_failed,900002:truncated,900003:bad_encoding,900004:auth_failed,"
            "900005:auth_failed");

  const std::map<int64_t, std::string> values = Values("public.users", "email_ciphertext");
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(values.at(900001 + i), bad[i]) << "a quarantined value is left as it was";
  }
  EXPECT_EQ(values.at(999998), "");
  EXPECT_EQ(values.at(999999), "<null>");
  std::map<int64_t, std::string> rows;
  for (const auto& [id, text] : values) {
    if (id <= kRows) rows[id] = text;
  }
  // Lockbox configured with the new master key alone (previous_versions empty).
  const nlohmann::json seen =
      Read({{"master_key", key3}, {"previous_versions", nlohmann::json::array()}}, "users",
           "email_ciphertext", rows);
  ASSERT_EQ(seen.size(), size_t(kRows));
  int total = 0, new_writes = 0;
  {
    pqxx::read_transaction txn(conn());
    for (const auto& row :
         txn.exec("SELECT id, visits FROM public.users WHERE id <= " + std::to_string(kRows))) {
      const int id = row["id"].as<int>();
      ASSERT_EQ(row["visits"].as<int>(), visits[id]) << "an application write was lost, " << id;
      total += visits[id];
    }
  }
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = seen[std::to_string(id)];
    ASSERT_FALSE(v.contains("error")) << "the new master key alone opens row " << id;
    ASSERT_TRUE(v["master_key_only"].get<bool>()) << id;
    ASSERT_EQ(v["plaintext"], (rewritten[id] ? "new-" : "") + PlaintextFor(id))
        << "the application's last write wins, " << id;
    new_writes += rewritten[id];
  }
  EXPECT_GT(total, 50) << "the application must have written during the rotation";
  EXPECT_GT(new_writes, 0);

  // The keyring in the application's form: refused without --cleartext (nothing written), then
  // the initializer whose configuration reads every value.
  ProcessResult refused =
      Rekey({"keys", "export", "--format", "lockbox", "--output", dir + "/refused.rb"});
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_THAT(refused.err, HasSubstr("pass --cleartext"));
  EXPECT_NE(RunProcess({"test", "-e", dir + "/refused.rb"}).exit_code, 0) << "nothing written";
  ProcessResult exported = Rekey(
      {"keys", "export", "--format", "lockbox", "--cleartext", "--output", dir + "/lockbox.rb"});
  ASSERT_EQ(exported.exit_code, 0) << exported.err;
  std::stringstream initializer;
  initializer << std::ifstream(dir + "/lockbox.rb").rdbuf();
  // Key 3 is the scope's only enabled key until promotion made it primary; either way it leads.
  EXPECT_THAT(initializer.str(), HasSubstr("Lockbox.master_key = \"" + key3 + "\"\n"));
  EXPECT_THAT(initializer.str(), HasSubstr("{master_key: \"" + MasterHex(1) + "\"}"))
      << "the old master key stays a previous version while it is decryptable";
  EXPECT_EQ(Read({{"initializer", initializer.str()}}, "users", "email_ciphertext", rows), seen);

  ProcessResult verify = Rekey({"job", "verify", j});
  EXPECT_THAT(verify.out, HasSubstr(std::to_string(kRows) +
                                    " under target keys, 0 under source keys, 5 failed"))
      << verify.out << verify.err;
  EXPECT_THAT(Scalar("SELECT string_agg(coalesce(unknown, ''), ',') FROM rekey.key_usage(1) "
                     "WHERE target LIKE '%users%'"),
              HasSubstr("Lockbox values, which name no key"))
      << "retire cannot count Lockbox values by key: it must not pass";

  // The census by trial decryption (keyring/trial_census.h) opens the column under every key of
  // the scope, each attribute key derived from the column's names: nothing is left under key 1,
  // but the values quarantined above open under no key, so retiring key 1 stays refused.
  const nlohmann::json census = UsageColumn(Rekey({"keys", "usage", "1", "--json"}), "users");
  EXPECT_EQ(census["status"], "unknown") << census.dump();
  EXPECT_THAT(census["unknown"].dump(), HasSubstr("5 of its")) << census.dump();
} catch (const Skipped& s) {
  GTEST_SKIP() << s.why;
}

// A model with key_table / key_attribute (has_encrypted :secret, key_table: "people",
// key_attribute: "email"): the job records the names on its target, rotates under the attribute
// keys they derive, and a rollback returns every value to the old master key, read by the
// application with that key alone.
TEST_F(LockboxTest, KeyNamesOverridesAreRecordedAndARollbackReadsWithTheOldKeyAlone) try {
  ImportTestKeys(conn(), {1, 2});
  constexpr int kRows = 1000;
  const nlohmann::json sealed = Seal(MasterHex(1), "people", "email", 1, kRows);
  {
    std::vector<std::string> ids, values;
    for (const auto& [id, value] : sealed.items()) {
      ids.push_back(id);
      values.push_back(value.get<std::string>());
    }
    pqxx::work txn(conn());
    txn.exec0(
        "CREATE TABLE public.members (id bigint PRIMARY KEY, secret_ciphertext text, "
        "note_ciphertext text)");
    txn.exec_params(
        "INSERT INTO public.members (id, secret_ciphertext) "
        "SELECT * FROM unnest($1::bigint[], $2::text[])",
        db::TextArrayLiteral(ids), db::TextArrayLiteral(values));
    txn.commit();
  }
  const std::vector<std::string> create = {"job",
                                           "create",
                                           "--table",
                                           "public.members",
                                           "--codec",
                                           "lockbox",
                                           "--map",
                                           "1:2",
                                           "--stages",
                                           "50,100",
                                           "--batch-size",
                                           "50",
                                           "--lockbox-key-table",
                                           "people",
                                           "--lockbox-key-attribute",
                                           "email",
                                           "--column",
                                           "secret_ciphertext"};
  {
    // Lockbox refuses key_attribute for several attributes; so does rekey, writing nothing.
    std::vector<std::string> two = create;
    two.insert(two.end(), {"--column", "note_ciphertext"});
    ProcessResult refused = Rekey(two);
    EXPECT_EQ(refused.exit_code, 2) << refused.err;
    EXPECT_THAT(refused.err, HasSubstr("a key attribute names one"));
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.jobs"), 0) << "nothing written";
    EXPECT_EQ(Count("SELECT count(*) FROM rekey.targets"), 0) << "nothing written";
    // Lockbox's models bind no associated data.
    std::vector<std::string> with_ad = create;
    with_ad.insert(with_ad.end(), {"--ad-template", "{table}"});
    ProcessResult ad = Rekey(with_ad);
    EXPECT_EQ(ad.exit_code, 2) << ad.err;
    EXPECT_THAT(ad.err, HasSubstr("bind no associated data"));
  }
  ProcessResult created = Rekey(create);
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string j = Scalar("SELECT max(job_id) FROM rekey.jobs");
  EXPECT_EQ(Scalar("SELECT lockbox_key_table || '.' || lockbox_key_attribute FROM rekey.targets "
                   "WHERE column_name = 'secret_ciphertext'"),
            "people.email");

  Work(std::stoll(j));
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  EXPECT_EQ(Quarantined(std::stoll(j)), "NULL");
  const nlohmann::json halfway =
      Read({{"master_key", MasterHex(2)}, {"previous_versions", {MasterHex(1)}}}, "people", "email",
           Values("public.members", "secret_ciphertext"));
  int moved = 0;
  for (const auto& [id, v] : halfway.items()) {
    ASSERT_FALSE(v.contains("error")) << id;
    ASSERT_EQ(v["plaintext"], PlaintextFor(std::stoll(id))) << id;
    moved += v["master_key_only"].get<bool>();
  }
  EXPECT_NEAR(moved, kRows / 2, 150) << "the first stage moved about half";

  ProcessResult r = Rekey({"job", "rollback", j, "--reason", "the app still has key 1 only"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(std::stoll(j));
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "rolled_back");
  const nlohmann::json back =
      Read({{"master_key", MasterHex(1)}, {"previous_versions", nlohmann::json::array()}}, "people",
           "email", Values("public.members", "secret_ciphertext"));
  ASSERT_EQ(back.size(), size_t(kRows));
  for (const auto& [id, v] : back.items()) {
    ASSERT_FALSE(v.contains("error")) << "the old master key alone opens row " << id;
    ASSERT_TRUE(v["master_key_only"].get<bool>()) << id;
    ASSERT_EQ(v["plaintext"], PlaintextFor(std::stoll(id))) << id;
  }
} catch (const Skipped& s) {
  GTEST_SKIP() << s.why;
}

}  // namespace
}  // namespace rekey::testing
