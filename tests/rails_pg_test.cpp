// The rails codec (issue #18) against the real PostgreSQL, with real `rekey work` processes.
// Ruby cannot run here, so the application is tests/rails/rails_app.py: ActiveRecord::Encryption's
// message format written in Python from docs/FORMAT.md section 12 (python3-cryptography's AESGCM,
// hashlib's PBKDF2, zlib), which reproduces the vector of Rails' own test suite before it is
// trusted (`selfcheck`; the vector itself is in src/crypto/rails_test.cpp). Its messages --
// random-IV, deterministic, with key references, envelope, compressed -- are rotated by a staged
// job while the application writes new messages under the new key; it reads every value back with
// Rails' key list; a rollback returns them to the old key (deterministic ones byte for byte); what
// is not a readable message is quarantined with its reason.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/bytes.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kSalt[] = "qJ4vX0bQ2t5YB8uJr1Pp9w3KzE6mN7cA";
constexpr char kOldPrimary[] = "EGY8WhulUOXixybod7ZWwMIL68R9o5kC";    // key 1
constexpr char kNewPrimary[] = "aPA5XyALhf75NNnMzaspW7akTfZp0lPY";    // key 2
constexpr char kOtherPrimary[] = "Zx1Zx2Zx3Zx4Zx5Zx6Zx7Zx8Zx9Zx0AB";  // a key rekey never holds
constexpr int kRows = 1200;

// The plaintext of row `id`: every fourth one long enough to be compressed ("c").
std::string RailsPlaintext(int64_t id) {
  std::string text = PlaintextFor(id);
  if (id % 4 == 3) {
    while (text.size() <= 140) text += " " + PlaintextFor(id);
  }
  return text;
}

// The form Rails writes row `id` in: deterministic, with a key reference, envelope encryption
// (with a reference), or plain with a compressed payload.
nlohmann::json Item(int64_t id, const std::string& plaintext) {
  return {{"id", id},
          {"plaintext", plaintext},
          {"deterministic", id % 4 == 0},
          {"store_key_references", id % 4 == 1 || id % 4 == 2},
          {"envelope", id % 4 == 2}};
}

class RailsTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    dir_ = MakeTempDir("rekey-rails");
    ProcessResult check = Python("selfcheck", "");
    if (check.exit_code == 77) GTEST_SKIP() << check.err;
    ASSERT_EQ(check.exit_code, 0) << "rails_app.py does not reproduce Rails' vector: " << check.err;
    ImportRailsKey(1, kOldPrimary);
    ImportRailsKey(2, kNewPrimary);
  }

  ProcessResult Python(const std::string& verb, const std::string& request) {
    const std::string app = std::string(REKEY_SOURCE_DIR) + "/tests/rails/rails_app.py";
    return RunProcess({"/usr/bin/python3", app, verb}, {}, request);
  }

  nlohmann::json PythonJson(const std::string& verb, const nlohmann::json& request) {
    ProcessResult r = Python(verb, request.dump());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out);
  }

  std::string KeyFile(const std::string& name, const std::string& primary_line) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << "active_record_encryption:\n"
                        << primary_line << "  key_derivation_salt: " << kSalt
                        << "\n  hash_digest_class: SHA256\n";
    return path;
  }

  void ImportRailsKey(uint32_t id, const std::string& primary) {
    ProcessResult r =
        Rekey({"keys", "import", "--key-id", std::to_string(id), "--format", "rails", "--file",
               KeyFile("k" + std::to_string(id) + ".yml", "  primary_key: " + primary + "\n")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  ProcessResult Rekey(const std::vector<std::string>& args) { return RekeyAt(conninfo(), args); }

  void Work(int64_t job, int processes = 2) { WorkUntilDry(conninfo(), job, processes); }

  // Messages Python writes under `primary` for `items`, by id.
  nlohmann::json Encrypt(const std::string& primary, const nlohmann::json& items) {
    return PythonJson(
        "encrypt",
        {{"primary_key", primary}, {"salt", kSalt}, {"digest", "SHA256"}, {"items", items}});
  }

  // What Rails configured with `primaries` (the last encrypting) reads from `messages`.
  nlohmann::json Read(const std::vector<std::string>& primaries, const nlohmann::json& messages) {
    return PythonJson("read", {{"primary_keys", primaries},
                               {"salt", kSalt},
                               {"digest", "SHA256"},
                               {"messages", messages}});
  }

  // Seeds public.people (id bigint pk, email text): rows 1..kRows under key 1 in Rails' forms,
  // then the bad rows 900001.. Returns the good rows' messages.
  nlohmann::json Seed() {
    nlohmann::json items = nlohmann::json::array();
    for (int id = 1; id <= kRows; ++id) items.push_back(Item(id, RailsPlaintext(id)));
    nlohmann::json messages = Encrypt(kOldPrimary, items);
    const std::string good = messages["5"].get<std::string>();  // a reference, "i"
    std::string tampered = good;
    char& tag = tampered[tampered.find("\"at\":\"") + 6];
    tag = tag == 'A' ? 'B' : 'A';  // the tag's first six bits
    const nlohmann::json foreign =
        Encrypt(kOtherPrimary, nlohmann::json::array({Item(4, "x"), Item(5, "x")}));
    bad_ = {tampered,
            good.substr(0, 40),
            "hello, not encrypted",
            R"({"some":"other data"})",
            foreign["4"].get<std::string>(),  // no reference: no key of the job opens it
            foreign["5"].get<std::string>(),  // a reference none of the job's keys has
            "gAAAAABlrY1e8Wm3e2BvJ5Qj"};
    pqxx::work txn(conn());
    SeedLibraryValues(txn, "CREATE TABLE public.people (id bigint PRIMARY KEY, email text)",
                      "INSERT INTO public.people (id, email)", messages, bad_);
    txn.exec0("INSERT INTO public.people VALUES (999999, NULL)");
    txn.commit();
    return messages;
  }

  // id -> message of the good rows.
  nlohmann::json Messages() {
    nlohmann::json out = nlohmann::json::object();
    pqxx::read_transaction txn(conn());
    for (const auto& row :
         txn.exec("SELECT id, email FROM public.people WHERE id <= " + std::to_string(kRows))) {
      out[row["id"].as<std::string>()] = row["email"].as<std::string>();
    }
    return out;
  }

  std::string Quarantined(int64_t job) {
    return Scalar(
        "SELECT string_agg(pk || ':' || error_class, ',' ORDER BY pk) FROM "
        "rekey.row_failures WHERE job_id = " +
        std::to_string(job));
  }

  std::string dir_;
  std::vector<std::string> bad_;
};

TEST_F(RailsTest, ImportRefusesInOneLineAndWritesNothing) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"  primary_key:\n    - " + std::string(kOtherPrimary) + "\n    - x\n",
       "one key per --key-id"},
      {"  primary_key: " + std::string(kOtherPrimary) + "\n  deterministic_key: y\n",
       "own --key-id"},
      {"", "neither"},
  };
  for (const auto& [line, why] : cases) {
    ProcessResult r = Rekey({"keys", "import", "--key-id", "3", "--format", "rails", "--file",
                             KeyFile("bad.yml", line)});
    EXPECT_NE(r.exit_code, 0) << line;
    EXPECT_THAT(r.err, HasSubstr(why));
    EXPECT_EQ(r.err.find(kOtherPrimary), std::string::npos) << "never echoes key material";
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  std::ofstream(dir_ + "/nodigest.yml")
      << "primary_key: " << kOtherPrimary << "\nkey_derivation_salt: " << kSalt << "\n";
  ProcessResult r = Rekey(
      {"keys", "import", "--key-id", "3", "--format", "rails", "--file", dir_ + "/nodigest.yml"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("hash_digest_class"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.keys WHERE key_id = 3"), 0) << "nothing written";
}

TEST_F(RailsTest, RotatedWhileTheApplicationWritesAndReadBackWithRailsKeyList) {
  const nlohmann::json original = Seed();
  ProcessResult created = Rekey({"job", "create", "--table", "public.people", "--column", "email",
                                 "--codec", "rails", "--map", "1:2", "--stages", "10,100",
                                 "--batch-size", "50", "--error-threshold", "0.05"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string j = Scalar("SELECT max(job_id)::text FROM rekey.jobs");

  // The application, configured with primary_key [old, new] as Rails rotates (the new key last:
  // it encrypts with it), rewrites rows with new values while rekey works: each row's last write
  // must survive, under the new key.
  nlohmann::json app_items = nlohmann::json::array();
  for (int round = 0; round < 3; ++round) {
    for (int id = 1; id <= kRows; id += 7) {
      app_items.push_back(Item(id, "written by the app " + std::to_string(round)));
      app_items.back()["id"] = std::to_string(id) + "/" + std::to_string(round);
    }
  }
  const nlohmann::json app_messages = Encrypt(kNewPrimary, app_items);
  std::map<std::string, std::string> expected;  // id -> plaintext
  for (int id = 1; id <= kRows; ++id) expected[std::to_string(id)] = RailsPlaintext(id);
  std::atomic<bool> stop{false};
  std::atomic<int> writes{0};
  std::thread app([&] {
    pqxx::connection c(conninfo());
    for (int n = 0; !stop.load(); ++n) {
      const int round = n % 3;
      for (int id = 1; id <= kRows && !stop.load(); id += 7) {
        const std::string key = std::to_string(id) + "/" + std::to_string(round);
        pqxx::nontransaction txn(c);
        txn.exec_params0("UPDATE public.people SET email = $2 WHERE id = $1", id,
                         app_messages[key].get<std::string>());
        expected[std::to_string(id)] = "written by the app " + std::to_string(round);
        ++writes;
      }
    }
  });
  Work(std::stoll(j));
  EXPECT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  ASSERT_EQ(Rekey({"job", "advance", j}).exit_code, 0);
  Work(std::stoll(j));
  stop = true;
  app.join();
  EXPECT_GT(writes.load(), 3 * kRows / 7) << "the application must have written all along";
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");
  EXPECT_EQ(Quarantined(std::stoll(j)),
            "900001:auth_failed,900002:truncated,900003:not_json,900004:not_rails_message,"
            "900005:auth_failed,900006:unknown_key,900007:not_json");
  for (size_t i = 0; i < bad_.size(); ++i) {
    EXPECT_EQ(Scalar("SELECT email FROM public.people WHERE id = " + std::to_string(900001 + i)),
              bad_[i])
        << "a quarantined value is left as it was";
  }

  // Rails with [old, new] reads every value, each opened by the new key alone.
  const nlohmann::json now = Messages();
  const nlohmann::json seen = Read({kOldPrimary, kNewPrimary}, now);
  ASSERT_EQ(seen.size(), size_t(kRows));
  for (int id = 1; id <= kRows; ++id) {
    const nlohmann::json& v = seen[std::to_string(id)];
    ASSERT_EQ(v["plaintext"], expected[std::to_string(id)]) << id;
    ASSERT_TRUE(v["last_key_only"].get<bool>()) << "under the new key, " << id;
  }
  // The message's own form is kept: a deterministic value is exactly what Rails writes under the
  // new key; references name the new key; compression and the envelope stay.
  nlohmann::json det = nlohmann::json::array();
  for (int id = 4; id <= kRows; id += 4) {
    if (expected[std::to_string(id)] == RailsPlaintext(id))
      det.push_back(Item(id, RailsPlaintext(id)));
  }
  const nlohmann::json rails_det = Encrypt(kNewPrimary, det);
  ASSERT_GT(rails_det.size(), 100u);
  for (const auto& [id, text] : rails_det.items()) ASSERT_EQ(now[id], text) << id;
  const nlohmann::json new_key =
      PythonJson("derive", {{"primary_key", kNewPrimary}, {"salt", kSalt}, {"digest", "SHA256"}});
  const std::string new_ref = new_key["reference"].get<std::string>();
  std::string ref_b64;
  {
    Bytes ref(new_ref.begin(), new_ref.end());
    ref_b64 = Base64Encode(ref);
  }
  EXPECT_THAT(now["5"].get<std::string>(), HasSubstr("\"i\":\"" + ref_b64 + "\""));
  EXPECT_THAT(now["6"].get<std::string>(), HasSubstr("\"k\":{\"p\":"));
  EXPECT_THAT(now["3"].get<std::string>(), HasSubstr("\"c\":true}}"));
  {
    const nlohmann::json before = nlohmann::json::parse(original["6"].get<std::string>());
    const nlohmann::json after = nlohmann::json::parse(now["6"].get<std::string>());
    EXPECT_EQ(after["p"], before["p"]) << "an envelope value keeps its payload";
    EXPECT_EQ(after["h"]["iv"], before["h"]["iv"]);
    EXPECT_NE(after["h"]["k"], before["h"]["k"]) << "only its data key is re-sealed";
  }

  ProcessResult verify = Rekey({"job", "verify", j});
  EXPECT_THAT(verify.out, HasSubstr(std::to_string(kRows) +
                                    " under target keys, 0 under source keys, 7 failed"))
      << verify.err;
  EXPECT_THAT(Scalar("SELECT string_agg(coalesce(unknown, ''), ',') FROM rekey.key_usage(1) "
                     "WHERE target LIKE '%people%'"),
              HasSubstr("Rails messages"))
      << "retire cannot count Rails messages by key: it must not pass";
  EXPECT_EQ(Scalar("SELECT status || ':' || coalesce(n::text, '-') FROM rekey.key_census(1) "
                   "WHERE table_name = 'people' AND column_name = 'email'"),
            "unknown:-")
      << "nor can the census that retire and destroy check";
  // The census by trial decryption (keyring/trial_census.h) opens every message under the keys
  // of the scope: nothing is left under key 1, but the values quarantined above open under no
  // key, so retiring key 1 stays refused.
  const nlohmann::json census = UsageColumn(Rekey({"keys", "usage", "1", "--json"}), "people");
  EXPECT_EQ(census["status"], "unknown") << census.dump();
  EXPECT_THAT(census["unknown"].dump(), HasSubstr("7 of its")) << census.dump();

  // The keys handed back as Rails takes them: a KeyProvider, the primary (key 2) last.
  ProcessResult refused =
      Rekey({"keys", "export", "--format", "rails", "--output", dir_ + "/refused.rb"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_THAT(refused.err, HasSubstr("pass --cleartext"));
  ProcessResult exported =
      Rekey({"keys", "export", "--format", "rails", "--cleartext", "--output", dir_ + "/keys.rb"});
  ASSERT_EQ(exported.exit_code, 0) << exported.err;
  std::string config;
  std::getline(std::ifstream(dir_ + "/keys.rb"), config);
  const std::string old_hex = PythonJson(
      "derive", {{"primary_key", kOldPrimary}, {"salt", kSalt}, {"digest", "SHA256"}})["key_hex"];
  EXPECT_THAT(config, HasSubstr("ActiveRecord::Encryption::KeyProvider.new(%w[" + old_hex + " " +
                                new_key["key_hex"].get<std::string>() + "]"));
}

TEST_F(RailsTest, RollbackReturnsEveryValueToTheOldKeyInItsForm) {
  const nlohmann::json original = Seed();
  ProcessResult created = Rekey({"job", "create", "--table", "public.people", "--column", "email",
                                 "--codec", "rails", "--map", "1:2", "--stages", "50,100",
                                 "--batch-size", "100", "--error-threshold", "0.05"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string j = Scalar("SELECT max(job_id)::text FROM rekey.jobs");
  Work(std::stoll(j));
  ASSERT_EQ(Scalar("SELECT current_stage || ':' || state FROM rekey.jobs WHERE job_id = " + j),
            "1:awaiting_approval");
  int moved = 0;
  const nlohmann::json halfway = Read({kOldPrimary, kNewPrimary}, Messages());
  for (const auto& [id, v] : halfway.items()) {
    moved += v["last_key_only"].get<bool>();
  }
  EXPECT_NEAR(moved, kRows / 2, kRows / 8) << "the first stage moved about half";

  ProcessResult r = Rekey({"job", "rollback", j, "--reason", "the app is not configured yet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Work(std::stoll(j));
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "rolled_back");
  // Rails still configured with the old key alone reads everything.
  const nlohmann::json now = Messages();
  const nlohmann::json seen = Read({kOldPrimary}, now);
  for (int id = 1; id <= kRows; ++id) {
    ASSERT_EQ(seen[std::to_string(id)]["plaintext"], RailsPlaintext(id)) << id;
    if (id % 4 == 0) {
      ASSERT_EQ(now[std::to_string(id)], original[std::to_string(id)])
          << "a deterministic value is back byte for byte, " << id;
    }
  }
}

}  // namespace
}  // namespace rekey::testing
