// The census by trial decryption (issue #18 item 5; keyring/trial_census.h): a registered column
// whose values SQL cannot count by key (Fernet tokens name no key; cloak strings name theirs by a
// fingerprint only the key gives) is counted by `rekey keys usage`, `retire` and `destroy` in the
// worker, through the codec boundary. Before it, such a column blocked retiring every key a job on
// it moved, whatever it held; now one whose values are all under other keys no longer blocks key
// 1, and one with a value under key 1, or a value no key of the scope opens, still does. End to end
// through the `rekey` binary against a real PostgreSQL; the last test measures the cost.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "crypto/cloak.h"
#include "crypto/fernet.h"
#include "crypto/text_encoding.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "keyring/trial_census.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class TrialCensusTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2, 3});
    Exec("UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = 1");
    Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 2");
  }

  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }

  static std::string FernetToken(uint32_t key, int64_t id) {
    const crypto::FernetKey fernet(TestDataKey(key));
    const std::string plaintext = PlaintextFor(id);
    Bytes token;
    fernet.Seal(1700000000, reinterpret_cast<const uint8_t*>(plaintext.data()), plaintext.size(),
                &token);
    std::string text;
    crypto::EncodeText(crypto::TextEncoding::kBase64Url, token.data(), token.size(),
                       crypto::TextStyle{true}, &text);
    return text;
  }

  static std::string CloakString(uint32_t key, int64_t id) {
    crypto::CloakKey cloak(TestDataKey(key));
    const std::string plaintext = PlaintextFor(id);
    Bytes value;
    cloak.Seal(reinterpret_cast<const uint8_t*>(plaintext.data()), plaintext.size(), &value);
    return std::string(value.begin(), value.end());
  }

  // public.`table` (id bigint pk, secret text) holding `values`, registered with `codec` by a
  // finished job that moved key 1 to key 2 (SQL then reports it unknown for keys 1 and 2).
  void RegisteredColumn(const std::string& table, const std::string& codec,
                        const std::vector<std::string>& values) {
    std::vector<std::string> ids;
    for (size_t i = 0; i < values.size(); ++i) ids.push_back(std::to_string(i + 1));
    {
      pqxx::work txn(conn());
      txn.exec0("CREATE TABLE public." + table + " (id bigint PRIMARY KEY, secret text)");
      txn.exec_params(
          "INSERT INTO public." + table + " SELECT * FROM unnest($1::bigint[], $2::text[])",
          db::TextArrayLiteral(ids), db::TextArrayLiteral(values));
      txn.commit();
    }
    const int64_t job = CreateJobSql(
        conn(), "'public." + table + "', ARRAY['secret'], '{\"1\": 2}', p_codecs => '{" + codec +
                    "}', p_stages => '{100}'");
    Exec("SELECT rekey.cancel_job(" + std::to_string(job) +
         ", 'the census test needs no rows moved')");
  }

  nlohmann::json UsageOf(uint32_t key, const std::string& table) {
    return UsageColumn(Rekey({"keys", "usage", std::to_string(key), "--json"}), table);
  }
};

TEST_F(TrialCensusTest, AFernetColumnAllUnderOtherKeysNoLongerBlocksRetire) {
  std::vector<std::string> values;
  for (int id = 1; id <= 300; ++id) values.push_back(FernetToken(id % 2 ? 2 : 3, id));
  RegisteredColumn("cards", "fernet", values);
  // SQL alone still cannot tell (what retire saw before this census).
  EXPECT_THAT(Scalar("SELECT unknown FROM rekey.key_usage(1) WHERE target LIKE '%cards%'"),
              HasSubstr("Fernet tokens"));
  EXPECT_TRUE(UsageOf(1, "cards").is_null()) << "counted: nothing under key 1";
  const nlohmann::json under2 = UsageOf(2, "cards");
  EXPECT_EQ(under2["status"], "in_use");
  EXPECT_EQ(under2["values"], 150);
  EXPECT_EQ(under2["formats"], nlohmann::json::array({"fernet"}));
  // A retire from psql is still refused (SQL cannot count the tokens), and says what to run.
  try {
    Exec("UPDATE rekey.keys SET status = 'retired' WHERE key_id = 1");
    ADD_FAILURE() << "SQL retired a key it cannot count Fernet tokens under";
  } catch (const pqxx::sql_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("key 1 cannot be retired from SQL: public.cards.secret "
                                    "hold(s) Fernet tokens, which SQL cannot count by key; run "
                                    "rekey keys retire 1 instead"));
  }
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 1"), "decrypt_only");
  ProcessResult retired = Rekey({"keys", "retire", "1"});
  ASSERT_EQ(retired.exit_code, 0) << retired.err;
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 1"), "retired");
  EXPECT_THAT(Scalar("SELECT string_agg(details::text, ',') FROM rekey.audit "
                     "WHERE action = 'key.unknown_accepted'"),
              HasSubstr("cards"))
      << "the column proven clear is audited";
  ProcessResult destroyed = Rekey({"keys", "destroy", "1", "--yes"});
  EXPECT_EQ(destroyed.exit_code, 0) << destroyed.err;
}

TEST_F(TrialCensusTest, OneFernetTokenUnderTheKeyStillBlocksRetire) {
  std::vector<std::string> values;
  for (int id = 1; id <= 200; ++id) values.push_back(FernetToken(2, id));
  values[137] = FernetToken(1, 138);
  RegisteredColumn("cards", "fernet", values);
  const nlohmann::json under1 = UsageOf(1, "cards");
  EXPECT_EQ(under1["status"], "in_use");
  EXPECT_EQ(under1["values"], 1);
  ProcessResult refused = Rekey({"keys", "retire", "1"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_THAT(refused.err, HasSubstr("public.cards.secret holds 1 values under it"));
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 1"), "decrypt_only");
}

TEST_F(TrialCensusTest, AValueNoKeyOpensStillBlocksRetire) {
  std::vector<std::string> values;
  for (int id = 1; id <= 200; ++id) values.push_back(FernetToken(2, id));
  values[5][30] = values[5][30] == 'A' ? 'B' : 'A';  // tampered: no key opens it
  RegisteredColumn("cards", "fernet", values);
  const nlohmann::json under1 = UsageOf(1, "cards");
  EXPECT_EQ(under1["status"], "unknown");
  EXPECT_THAT(under1["unknown"].get<std::string>(),
              HasSubstr("1 of its 200 values open under no key"));
  ProcessResult refused = Rekey({"keys", "retire", "1"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_EQ(Scalar("SELECT status FROM rekey.keys WHERE key_id = 1"), "decrypt_only");
  // The operator may still accept it, named, as for any unknown column.
  ProcessResult accepted =
      Rekey({"keys", "retire", "1", "--accept-unknown", "public.cards.secret"});
  EXPECT_EQ(accepted.exit_code, 0) << accepted.err;
}

TEST_F(TrialCensusTest, CloakColumnsAreCountedThroughTheSameBoundary) {
  std::vector<std::string> values;
  for (int id = 1; id <= 100; ++id) values.push_back(CloakString(2, id));
  RegisteredColumn("users", "cloak", values);
  EXPECT_THAT(Scalar("SELECT unknown FROM rekey.key_usage(1) WHERE target LIKE '%users%'"),
              HasSubstr("cloak strings"));
  EXPECT_EQ(UsageOf(2, "users")["values"], 100);
  Exec("UPDATE public.users SET secret = '" + CloakString(1, 7) + "' WHERE id = 7");
  EXPECT_EQ(UsageOf(1, "users")["values"], 1);
  EXPECT_NE(Rekey({"keys", "retire", "1"}).exit_code, 0);
  Exec("UPDATE public.users SET secret = '" + CloakString(3, 7) + "' WHERE id = 7");
  ProcessResult retired = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(retired.exit_code, 0) << retired.err;
}

// The cost (docs/keyring.md, "Census by trial decryption"): values per second counted, in this
// process, with the value's key first among the candidates and last of three.
TEST_F(TrialCensusTest, MeasuresTheCostPerCandidateKey) {
  constexpr int kRows = 20000;
  for (const std::string codec : {"fernet", "cloak"}) {
    std::vector<std::string> values;
    for (int id = 1; id <= kRows; ++id) {
      values.push_back(codec == "fernet" ? FernetToken(3, id) : CloakString(3, id));
    }
    RegisteredColumn("m_" + codec, codec, values);
  }
  pqxx::work txn(conn());
  const keyring::TrialKeySource keys = [](uint32_t id) { return TestDataKey(id); };
  for (const keyring::TrialColumn& column : keyring::TrialColumns(txn)) {
    for (const std::vector<uint32_t>& candidates :
         std::vector<std::vector<uint32_t>>{{3}, {1, 2, 3}}) {
      const auto start = std::chrono::steady_clock::now();
      const keyring::TrialCount count = keyring::CountByTrial(txn, column, candidates, keys);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      ASSERT_EQ(count.values, kRows);
      ASSERT_EQ(count.by_key.at(3), kRows);
      ASSERT_EQ(count.unopened, 0);
      std::printf("trial census %s, key %zu of %zu candidates: %.0f values/s\n",
                  column.codec.c_str(), candidates.size(), candidates.size(), kRows / seconds);
    }
  }
}

}  // namespace
}  // namespace rekey::testing
