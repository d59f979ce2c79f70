// Lockbox master keys in the applications' form: 64 hex digits as Lockbox.generate_key writes them
// (either case, as Lockbox's Utils.decode_key reads them), and the initializer that configures
// Lockbox with the primary and its previous versions.
#include "keyring/key_formats/lockbox_keys.h"

#include <gtest/gtest.h>

#include <string>

#include "common/bytes.h"
#include "common/error.h"

namespace rekey::keyring {
namespace {

constexpr char kHex[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

TEST(LockboxKeysTest, ReadsAndWritesTheHexForm) {
  Secret key = ParseLockboxMasterKey(std::string("  ") + kHex + "\n");
  ASSERT_EQ(key.size(), 32u);
  EXPECT_EQ(key.data()[0], 0x01);
  EXPECT_EQ(key.data()[7], 0xef);
  EXPECT_EQ(LockboxMasterKeyText(key), kHex);
  std::string upper = kHex;
  for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_TRUE(ParseLockboxMasterKey(upper).Equals(key));
}

TEST(LockboxKeysTest, RefusesOtherFormsWithoutEchoingThem) {
  for (const std::string& bad : {std::string(), std::string(kHex).substr(2),
                                 std::string(kHex) + "00", std::string(kHex).replace(5, 1, "g"),
                                 std::string("LOCKBOX_MASTER_KEY=") + kHex, std::string(44, 'A')}) {
    try {
      ParseLockboxMasterKey(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const KeyError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.find('\n'), std::string::npos);
      EXPECT_EQ(what.find("0123456789abcdef"), std::string::npos);
      EXPECT_NE(what.find("64 hex digits"), std::string::npos);
    }
  }
}

TEST(LockboxKeysTest, InitializerNamesThePrimaryThenPreviousVersions) {
  Secret a = ParseLockboxMasterKey(std::string(64, 'a'));
  Secret b = ParseLockboxMasterKey(std::string(64, 'b'));
  Secret c = ParseLockboxMasterKey(std::string(64, 'c'));
  EXPECT_EQ(LockboxInitializer({&a}), "Lockbox.master_key = \"" + std::string(64, 'a') +
                                          "\"\nLockbox.default_options[:previous_versions] = []\n");
  EXPECT_EQ(LockboxInitializer({&b, &a, &c}),
            "Lockbox.master_key = \"" + std::string(64, 'b') +
                "\"\nLockbox.default_options[:previous_versions] = [{master_key: \"" +
                std::string(64, 'a') + "\"}, {master_key: \"" + std::string(64, 'c') + "\"}]\n");
  EXPECT_THROW(LockboxInitializer({}), KeyError);
}

}  // namespace
}  // namespace rekey::keyring
