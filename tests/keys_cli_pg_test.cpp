// `rekey keys ...` end to end: the real binary against a real PostgreSQL.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "crypto/aes_gcm.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "kms/local_kms.h"

namespace rekey {
namespace {

using testing::ProcessResult;
using testing::RunRekey;

Secret RandomKey() {
  Secret s(32);
  crypto::RandomBytes(s.mutable_data(), s.size());
  return s;
}

std::string B64(const Secret& s) {
  return Base64Encode(s.data(), s.size());
}

int Lines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

class KeysCliTest : public testing::PgTest {
 protected:
  KeysCliTest() : master_(RandomKey()) {}

  // Runs `rekey --db <this test's db> keys args...` with `master` as REKEY_MASTER_KEY and nothing
  // else from the caller's environment that could change the outcome.
  ProcessResult Keys(std::vector<std::string> args, const std::string& stdin_data = "",
                     std::optional<std::string> master = std::nullopt) {
    args.insert(args.begin(), {"--db", conninfo(), "keys"});
    return RunRekey(args,
                    {{"REKEY_MASTER_KEY", master ? master : B64(master_)},
                     {"REKEY_MASTER_KEY_FILE", std::nullopt},
                     {"DATABASE_URL", std::nullopt}},
                    stdin_data);
  }

  std::string Status(uint32_t id) {
    pqxx::work txn(conn());
    return txn.exec1("SELECT status FROM rekey.keys WHERE key_id = " + std::to_string(id))[0]
        .as<std::string>();
  }

  nlohmann::json ListJson() {
    ProcessResult r = Keys({"list", "--json"});
    EXPECT_EQ(r.exit_code, kExitOk) << r.err;
    return nlohmann::json::parse(r.out);
  }

  Secret master_;
};

#define EXPECT_OK(r) \
  EXPECT_EQ((r).exit_code, kExitOk) << "stdout: " << (r).out << "\nstderr: " << (r).err

TEST_F(KeysCliTest, FullLifecycle) {
  ProcessResult r = Keys({"list"});
  EXPECT_OK(r);
  EXPECT_NE(r.out.find("the keyring is empty"), std::string::npos) << r.out;

  r = Keys({"create"});
  EXPECT_OK(r);
  EXPECT_EQ(Lines(r.out), 1) << r.out;
  EXPECT_EQ(r.out.rfind("created key 1 in scope default", 0), 0u) << r.out;
  kms::LocalKms local(master_.Clone(), "test");
  EXPECT_NE(r.out.find(local.default_key_ref()), std::string::npos) << r.out;
  EXPECT_OK(Keys({"create"}));

  r = Keys({"promote", "1"});
  EXPECT_OK(r);
  EXPECT_EQ(r.out, "promoted key 1 to primary of scope default\n");
  r = Keys({"promote", "2"});
  EXPECT_OK(r);
  EXPECT_EQ(r.out, "promoted key 2 to primary of scope default; key 1 is now decrypt_only\n");
  EXPECT_EQ(Status(1), "decrypt_only");
  EXPECT_EQ(Status(2), "primary");

  r = Keys({"retire", "1"});
  EXPECT_OK(r);
  EXPECT_EQ(r.out, "retired key 1\n");

  r = Keys({"destroy", "1"});
  EXPECT_EQ(r.exit_code, kExitUsage);
  EXPECT_NE(r.err.find("--yes"), std::string::npos) << r.err;
  EXPECT_EQ(Status(1), "retired");

  r = Keys({"destroy", "1", "--yes"});
  EXPECT_OK(r);
  EXPECT_EQ(Lines(r.out), 1);
  EXPECT_EQ(r.out.rfind("destroyed key 1", 0), 0u) << r.out;
  {
    pqxx::work txn(conn());
    EXPECT_TRUE(
        txn.exec1("SELECT wrapped_key IS NULL FROM rekey.keys WHERE key_id = 1")[0].as<bool>());
  }

  nlohmann::json keys = ListJson();
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0]["key_id"], 1);
  EXPECT_EQ(keys[0]["status"], "destroyed");
  EXPECT_FALSE(keys[0]["destroyed_at"].is_null());
  EXPECT_EQ(keys[1]["status"], "primary");
  EXPECT_EQ(keys[1]["kms_provider"], "local");
  EXPECT_EQ(keys[1]["kms_key_ref"], local.default_key_ref());
  EXPECT_EQ(keys[1]["origin"], "generated");

  r = Keys({"list"});
  EXPECT_OK(r);
  EXPECT_EQ(Lines(r.out), 3) << r.out;  // header + 2 keys
  EXPECT_NE(r.out.find("destroyed"), std::string::npos);
  EXPECT_EQ(r.out.find(B64(master_)), std::string::npos);
}

TEST_F(KeysCliTest, CreateWithOptions) {
  ProcessResult r = Keys({"create", "--scope", "acme", "--key-id", "500", "--max-age", "90d"});
  EXPECT_OK(r);
  nlohmann::json keys = ListJson();
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0]["key_id"], 500);
  EXPECT_EQ(keys[0]["scope"], "acme");
  EXPECT_EQ(keys[0]["max_age_seconds"], 90 * 86400);
  EXPECT_EQ(keys[0]["max_age_exceeded"], false);

  r = Keys({"create", "--key-id", "500"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  for (const char* bad : {"90", "d", "-5d", "0d", "90y", "1.5d"}) {
    r = Keys({"create", "--max-age", bad});
    EXPECT_EQ(r.exit_code, kExitUsage) << bad << ": " << r.err;
  }
  for (const char* bad : {"4294967296", "-1", "x"}) {
    r = Keys({"create", "--key-id", bad});
    EXPECT_EQ(r.exit_code, kExitUsage) << bad << ": " << r.err;
  }
  // aws-kms without its environment: a usage error naming the variable, and no key row.
  r = Keys({"create", "--kms", "aws-kms"});
  EXPECT_EQ(r.exit_code, kExitUsage);
  EXPECT_NE(r.err.find("AWS_REGION"), std::string::npos) << r.err;
  EXPECT_EQ(ListJson().size(), 1u);
}

TEST_F(KeysCliTest, ImportFromStdinRawAndBase64AndFromFile) {
  Secret raw = RandomKey();
  Secret text = RandomKey();
  Secret from_file = RandomKey();
  std::string raw_bytes(reinterpret_cast<const char*>(raw.data()), raw.size());

  ProcessResult r = Keys({"import", "--key-id", "10", "--stdin"}, raw_bytes);
  EXPECT_OK(r);
  EXPECT_EQ(r.out.rfind("imported key 10 in scope default", 0), 0u) << r.out;
  EXPECT_OK(Keys({"import", "--key-id", "11", "--scope", "legacy", "--stdin"}, B64(text) + "\n"));

  std::string dir = testing::MakeTempDir("rekey_keys_cli_");
  std::string path = dir + "/key.b64";
  std::ofstream(path) << B64(from_file);
  EXPECT_OK(Keys({"import", "--key-id", "12", "--file", path}));
  std::remove(path.c_str());
  std::remove(dir.c_str());

  kms::LocalKms local(master_.Clone(), "test");
  pqxx::work txn(conn());
  std::vector<std::pair<uint32_t, const Secret*>> expected = {
      {10, &raw}, {11, &text}, {12, &from_file}};
  for (const auto& [id, secret] : expected) {
    pqxx::row row = txn.exec1(
        "SELECT kms_key_ref, encode(wrapped_key, 'hex'), origin FROM rekey.keys WHERE key_id = " +
        std::to_string(id));
    EXPECT_EQ(row[2].as<std::string>(), "imported");
    Bytes wrapped = *HexDecode(row[1].as<std::string>());
    EXPECT_TRUE(local.UnwrapDataKey(id, row[0].as<std::string>(), wrapped).Equals(*secret)) << id;
  }
}

TEST_F(KeysCliTest, ImportRefusals) {
  ProcessResult r = Keys({"import", "--key-id", "10"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  r = Keys({"import", "--stdin"}, std::string(32, 'k'));
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;  // --key-id is required
  r = Keys({"import", "--key-id", "10", "--stdin"}, std::string(31, 'k'));
  EXPECT_EQ(r.exit_code, kExitKey) << r.err;
  EXPECT_EQ(r.err.find("kkkk"), std::string::npos) << r.err;
  Secret key16(16);
  r = Keys({"import", "--key-id", "10", "--stdin"}, B64(key16));
  EXPECT_EQ(r.exit_code, kExitKey) << r.err;

  EXPECT_OK(Keys({"import", "--key-id", "10", "--stdin"}, std::string(32, 'k')));
  r = Keys({"import", "--key-id", "10", "--stdin"}, std::string(32, 'j'));
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
}

TEST_F(KeysCliTest, WrongMasterKeyIsKeyErrorNamingTheKey) {
  EXPECT_OK(Keys({"create", "--key-id", "3"}));
  Secret other = RandomKey();
  ProcessResult r = Keys({"promote", "3"}, "", B64(other));
  EXPECT_EQ(r.exit_code, kExitKey) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_EQ(r.err.rfind("rekey: error: cannot unwrap data key 3", 0), 0u) << r.err;
  kms::LocalKms old_kms(master_.Clone(), "x");
  kms::LocalKms new_kms(other.Clone(), "x");
  EXPECT_NE(r.err.find(old_kms.default_key_ref()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(new_kms.default_key_ref()), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find(B64(other)), std::string::npos);
  EXPECT_EQ(Status(3), "enabled");
}

TEST_F(KeysCliTest, MissingMasterKeyIsUsageError) {
  ProcessResult r =
      RunRekey({"--db", conninfo(), "keys", "create"}, {{"REKEY_MASTER_KEY", std::nullopt},
                                                        {"REKEY_MASTER_KEY_FILE", std::nullopt},
                                                        {"DATABASE_URL", std::nullopt}});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_NE(r.err.find("no master key"), std::string::npos) << r.err;
  r = Keys({"create"}, "", "bm90IGEga2V5");  // base64 of 9 bytes
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_EQ(r.err.find("bm90IGEga2V5"), std::string::npos) << r.err;
  EXPECT_EQ(ListJson().size(), 0u);
}

TEST_F(KeysCliTest, IllegalTransitionIsStateErrorAndChangesNothing) {
  EXPECT_OK(Keys({"create"}));
  EXPECT_OK(Keys({"promote", "1"}));
  nlohmann::json before = ListJson();
  ProcessResult r = Keys({"retire", "1"});
  EXPECT_EQ(r.exit_code, kExitState);
  EXPECT_EQ(r.err,
            "rekey: error: illegal key lifecycle transition for key 1: primary -> retired "
            "(allowed from primary: decrypt_only)\n");
  r = Keys({"destroy", "1", "--yes"});
  EXPECT_EQ(r.exit_code, kExitState);
  r = Keys({"promote", "1"});
  EXPECT_EQ(r.exit_code, kExitState);
  nlohmann::json after = ListJson();
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0]["status"], "primary");
  EXPECT_EQ(after[0]["primary_at"], before[0]["primary_at"]);
}

TEST_F(KeysCliTest, RetireRefusedWhileTargetHoldsValues) {
  EXPECT_OK(Keys({"create", "--key-id", "3"}));
  Exec(
      "CREATE TABLE public.payment_methods (id int PRIMARY KEY, token bytea);"
      "INSERT INTO public.payment_methods SELECT g, '\\x0100000003ff'::bytea "
      "FROM generate_series(1, 1200) g;"
      "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec) "
      "VALUES ('public', 'payment_methods', 'id', 'token', 'tink')");
  ProcessResult r = Keys({"retire", "3"});
  EXPECT_EQ(r.exit_code, kExitState);
  EXPECT_EQ(r.err,
            "rekey: error: key 3 cannot be retired: 1 column(s) hold values under it or could not "
            "be read; rotate the values to another key first (rekey keys usage 3 lists them), or "
            "accept a column that cannot be read with --accept-unknown SCHEMA.TABLE.COLUMN\n"
            "public.payment_methods.token: 1200 values under key 3 (tink; registered target 1)\n");
  Exec("UPDATE public.payment_methods SET token = NULL");
  EXPECT_OK(Keys({"retire", "3"}));
}

TEST_F(KeysCliTest, UnknownKeyIsKeyError) {
  for (const char* cmd : {"promote", "retire"}) {
    ProcessResult r = Keys({cmd, "9"});
    EXPECT_EQ(r.exit_code, kExitKey) << cmd;
    EXPECT_EQ(r.err, "rekey: error: unknown key id 9; `rekey keys list` shows the keyring\n");
  }
}

TEST_F(KeysCliTest, UnreachableDatabaseIsTransientWithoutPassword) {
  for (const char* cmd : {"list", "create", "retire"}) {
    std::vector<std::string> args = {"--db", "postgresql://u:sekret@127.0.0.1:1/x", "keys", cmd};
    if (std::string(cmd) == "retire") args.push_back("1");
    ProcessResult r = RunRekey(args, {{"REKEY_MASTER_KEY", B64(master_)},
                                      {"REKEY_MASTER_KEY_FILE", std::nullopt},
                                      {"DATABASE_URL", std::nullopt}});
    EXPECT_EQ(r.exit_code, kExitTransient) << cmd << ": " << r.err;
    EXPECT_EQ(r.err.find("sekret"), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find("sekret"), std::string::npos) << r.out;
  }
}

TEST_F(KeysCliTest, SecretsAreNeverFlags) {
  ProcessResult r = Keys({"import", "--key-id", "1", "--key", std::string(44, 'A')});
  EXPECT_EQ(r.exit_code, kExitUsage);
  EXPECT_EQ(ListJson().size(), 0u);
}

}  // namespace
}  // namespace rekey
