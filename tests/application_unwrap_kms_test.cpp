// docs/FORMAT.md section 6 as an application follows it: keys that rekey wrapped through AWS KMS
// and through Vault Transit (the loopback test servers, tests/kms) are unwrapped by
// scripts/demo_app.py -- boto3's Decrypt with the key-id encryption context, Transit's decrypt
// with the key-id derivation context, nothing of rekey's code -- and every value rekey wrote
// decrypts with them.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "application_support.h"
#include "aws_kms_support.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using nlohmann::json;

class ApplicationUnwrapTest : public ApplicationTest {
 protected:
  // Imports keys 1 (primary) and 2 through `kms_env`'s provider, rotates a table from key 1 to
  // key 2 halfway, and has the application decrypt every value with keys it unwrapped itself.
  void RotateHalfAndVerifyAsTheApplication(const std::string& provider,
                                           const EnvOverrides& kms_env) {
    SeedTinkTable(conn(), "public.cards", 400, 1);
    GrantTableToApp("public.cards");
    for (uint32_t id : {1u, 2u}) {
      Secret k = TestDataKey(id);
      ProcessResult r =
          RunRekey({"--db", conninfo(), "keys", "import", "--key-id", std::to_string(id), "--kms",
                    provider, "--stdin"},
                   kms_env, std::string(reinterpret_cast<const char*>(k.data()), k.size()));
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    ASSERT_EQ(RunRekey({"--db", conninfo(), "keys", "promote", "1"}, kms_env).exit_code, 0);
    const std::string job = std::to_string(
        CreateJobSql(conn(),
                     "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
                     "p_stages => '{50,100}'"));
    ProcessResult r = RunRekey({"--db", conninfo(), "work", "--job", job}, kms_env);
    ASSERT_EQ(r.exit_code, 0) << r.err;

    const std::string dir = MakeTempDir("rekey-app-");
    r = RunProcess(DemoApp("public.cards", {"--reader", "unwrapper", "--verify-all", "--stats-file",
                                            dir + "/stats.json"}),
                   kms_env);
    std::ifstream in(dir + "/stats.json");
    const json stats = in ? json::parse(in, nullptr, false) : json();
    RunProcess({"rm", "-rf", dir});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(stats["failures"], json::object()) << stats.dump();
    EXPECT_GT(stats["values_by_key"].value("1", 0), 0) << stats.dump();
    EXPECT_GT(stats["values_by_key"].value("2", 0), 0) << stats.dump();
    EXPECT_EQ(stats["values"], 400);
    EXPECT_EQ(Scalar("SELECT key_ids FROM rekey.readers WHERE reader = 'unwrapper'"), "{1,2}");
  }
};

TEST_F(ApplicationUnwrapTest, KeysWrappedByAwsKmsUnwrapWithBoto3) {
  AwsKmsTestServer kms({"--key", "alias/rekey"});
  EnvOverrides env = kms.Env();
  env["AWS_DEFAULT_REGION"] = kAwsTestRegion;  // boto3 reads this one
  RotateHalfAndVerifyAsTheApplication("aws-kms", env);
  EXPECT_GE(kms.Calls("Decrypt"), 2);
}

TEST_F(ApplicationUnwrapTest, KeysWrappedByVaultTransitUnwrapWithItsHttpApi) {
  const std::string dir = MakeTempDir("rekey-app-vault-");
  ChildProcess vault({"/usr/bin/python3",
                      std::string(REKEY_SOURCE_DIR) + "/tests/kms/vault_server.py", "--port-file",
                      dir + "/port", "--root-token", "app-root", "--key", "rekey"});
  const int port = WaitForPortFile(dir + "/port", 30000);
  ASSERT_GT(port, 0) << "vault_server.py did not start";
  RotateHalfAndVerifyAsTheApplication("vault-transit",
                                      {{"VAULT_ADDR", "http://127.0.0.1:" + std::to_string(port)},
                                       {"VAULT_TOKEN", "app-root"},
                                       {"REKEY_VAULT_TRANSIT_KEY", "rekey"},
                                       {"VAULT_TOKEN_FILE", std::nullopt},
                                       {"VAULT_NAMESPACE", std::nullopt},
                                       {"REKEY_VAULT_K8S_ROLE", std::nullopt},
                                       {"REKEY_MASTER_KEY", std::nullopt},
                                       {"REKEY_MASTER_KEY_FILE", std::nullopt},
                                       {"DATABASE_URL", std::nullopt}});
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.application_keys "
                  "WHERE convert_from(wrapped_key, 'UTF8') LIKE 'vault:v1:%' "
                  "AND kms_key_ref = 'transit/keys/rekey'"),
            2);
  RunProcess({"rm", "-rf", dir});
}

}  // namespace
}  // namespace rekey::testing
