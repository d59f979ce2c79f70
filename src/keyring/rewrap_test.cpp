// The choices of a master-key rotation that need no database: where a rewrap goes
// (MakeRewrapDestination) and which client unwraps a key's current wrapping (SourceClients).
// RewrapKeys itself runs against PostgreSQL in tests/keys_rewrap_pg_test.cpp.
#include "keyring/rewrap.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>

#include "common/error.h"
#include "kms/local_kms.h"

namespace rekey::keyring {
namespace {

using ::testing::HasSubstr;

// Two 32-byte master keys, base64.
constexpr char kNewMaster[] = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
constexpr char kOldMaster[] = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

kms::GetenvFn Env(std::map<std::string, std::string> vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string RefOf(const char* master) {
  return kms::LocalKms(Env({{kms::kMasterKeyEnv, master}})).default_key_ref();
}

TEST(RewrapDestination, LocalMustNameTheCurrentMasterKey) {
  const kms::GetenvFn env = Env({{kms::kMasterKeyEnv, kNewMaster}});
  RewrapDestination d = MakeRewrapDestination(kms::kLocalProvider, RefOf(kNewMaster), env);
  EXPECT_EQ(d.key_ref, RefOf(kNewMaster));
  EXPECT_EQ(d.client->provider(), kms::kLocalProvider);
  try {
    MakeRewrapDestination(kms::kLocalProvider, RefOf(kOldMaster), env);
    ADD_FAILURE() << "a ref that is not the master key was accepted";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("is not the local master key"));
    EXPECT_THAT(e.what(), HasSubstr(RefOf(kNewMaster)));
  }
}

TEST(RewrapDestination, VaultNeedsATransitKeyRef) {
  for (const char* bad : {"rekey", "transit/rekey", ""}) {
    try {
      MakeRewrapDestination("vault-transit", bad, Env({}));
      ADD_FAILURE() << bad;
    } catch (const ConfigError& e) {
      EXPECT_THAT(e.what(), HasSubstr("is not a Vault Transit key ref")) << bad;
    }
  }
}

TEST(SourceClients, LocalKeysUnderTheCurrentOrTheOldMasterKey) {
  const kms::GetenvFn env = Env({{kms::kMasterKeyEnv, kNewMaster}, {kOldMasterKeyEnv, kOldMaster}});
  RewrapDestination d = MakeRewrapDestination(kms::kLocalProvider, RefOf(kNewMaster), env);
  SourceClients sources(d);
  EXPECT_EQ(&sources(kms::kLocalProvider, RefOf(kNewMaster)), d.client.get());
  kms::KmsClient& old = sources(kms::kLocalProvider, RefOf(kOldMaster));
  EXPECT_EQ(old.default_key_ref(), RefOf(kOldMaster));
  EXPECT_EQ(&sources(kms::kLocalProvider, RefOf(kOldMaster)), &old) << "made once, then reused";
  try {
    sources(kms::kLocalProvider, "local:0000000000000000");
    ADD_FAILURE() << "a key under an unknown master key found a client";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("REKEY_OLD_MASTER_KEY_FILE"));
  }
}

}  // namespace
}  // namespace rekey::keyring
