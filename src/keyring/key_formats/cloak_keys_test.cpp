// Cloak key files as prisma-field-encryption is configured: the README key of @47ng/cloak
// (fingerprint 6f28c026) and a second key (3bab9a53; tests/cloak/vectors.json), the export's
// two variables read back, bare keychains, ids from fingerprints or --key-id, refusals.
#include "keyring/key_formats/cloak_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "crypto/cloak.h"

namespace rekey::keyring {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kA[] = "k1.aesgcm256.DL2G9PQeZ9r65J59pph6dy9Sk4fBLEZ3CTQZsandgYE=";
constexpr char kB[] = "k1.aesgcm256.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

std::string Message(std::string_view file) {
  try {
    ParseCloakKeyFile(file, std::nullopt);
  } catch (const KeyError& e) {
    return e.what();
  }
  return "accepted";
}

TEST(CloakKeysTest, ExportReadsBackWithTheSameIdsAndPrimary) {
  std::vector<ExchangedKey> keys = ParseCloakKeyFile(std::string(kB) + "," + kA + "\n", {});
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].key_id, 0x3bab9a53u);  // the fingerprint, read as a number
  EXPECT_TRUE(keys[0].primary);
  EXPECT_EQ(keys[1].key_id, 0x6f28c026u);
  EXPECT_FALSE(keys[1].primary);
  const std::string file = CloakKeyFile(keys);
  EXPECT_EQ(file, std::string("PRISMA_FIELD_ENCRYPTION_KEY=") + kB +
                      "\nPRISMA_FIELD_DECRYPTION_KEYS=" + kB + "," + kA + "\n");
  std::vector<ExchangedKey> again = ParseCloakKeyFile(file, {});
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].key_id, keys[0].key_id);
  EXPECT_TRUE(again[0].primary);
  EXPECT_TRUE(again[1].key.Equals(keys[1].key));
}

TEST(CloakKeysTest, TheEncryptionKeyIsThePrimaryWhereverItIsListed) {
  const std::string file = std::string("PRISMA_FIELD_DECRYPTION_KEYS=") + kA + "," + kB +
                           "\nPRISMA_FIELD_ENCRYPTION_KEY=" + kB + "\n";
  std::vector<ExchangedKey> keys = ParseCloakKeyFile(file, 100);
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].key_id, 100u);
  EXPECT_TRUE(keys[0].primary);
  EXPECT_EQ(crypto::CloakKeyText(keys[0].key), kB);
  EXPECT_EQ(keys[1].key_id, 101u);
  EXPECT_EQ(ParseCloakKeyFile(kA, 7).at(0).key_id, 7u);
}

TEST(CloakKeysTest, RefusalsAreOneLineAndNeverEchoKeyMaterial) {
  const std::string unpadded(kA, sizeof kA - 2);
  for (const std::string& file : {std::string(kA) + "," + unpadded,
                                  std::string("PRISMA_FIELD_ENCRYPTION_KEY=") + kA + "," + kB,
                                  std::string("CLOAK_MASTER_KEY=") + kA, std::string(" \n"),
                                  std::string("PRISMA_FIELD_ENCRYPTION_KEY=") + kA + "\n" + kB}) {
    const std::string message = Message(file);
    EXPECT_NE(message, "accepted") << file;
    EXPECT_THAT(message, Not(HasSubstr("\n")));
    EXPECT_THAT(message, Not(HasSubstr("DL2G9PQ")));
    EXPECT_THAT(message, Not(HasSubstr("AAECAwQ")));
  }
  EXPECT_THAT(Message(std::string(kA) + "," + unpadded), HasSubstr("item 2"));
  EXPECT_THROW(ParseCloakKeyFile(std::string(kA) + "," + kB, 4294967295u), KeyError);
}

}  // namespace
}  // namespace rekey::keyring
