// Rails key files (keyring/key_formats/rails_keys.h): the credentials' YAML as
// `bin/rails db:encryption:init` prints it, derived as Rails derives it (the vectors are
// crypto/rails_test.cpp's, from Rails' test configuration and Python's hashlib), and the
// KeyProvider line export writes.
#include "keyring/key_formats/rails_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/bytes.h"
#include "common/error.h"

namespace rekey::keyring {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Hex(const Secret& s) {
  return HexEncode(s.data(), s.size());
}

// The message of the KeyError ParseRailsKeyFile throws for `text`.
std::string Refusal(const std::string& text) {
  try {
    ParseRailsKeyFile(text);
  } catch (const KeyError& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(RailsKeysTest, DerivesTheKeyOfTheCredentialsSection) {
  const Secret sha1 = ParseRailsKeyFile(
      "active_record_encryption:\n"
      "  deterministic_key: test deterministic key\n"
      "  key_derivation_salt: 'testing key derivation salt'\n"
      "  hash_digest_class: SHA1   # Rails 7.0\n");
  EXPECT_EQ(Hex(sha1), "d61facbaf9e007152bc1dda663124c579f2c013964b1b151460f8fff3e989759");
  const Secret sha256 = ParseRailsKeyFile(
      "primary_key: \"test master key\"\r\n"
      "key_derivation_salt: testing key derivation salt\r\n"
      "hash_digest_class: OpenSSL::Digest::SHA256\r\n");
  EXPECT_EQ(Hex(sha256), "f6672b64725f7ad4e07698070576f21eb588be205d53564f68654319a8a2c020");
}

TEST(RailsKeysTest, RefusesInOneLineWithoutEchoingTheKey) {
  const std::string salt = "key_derivation_salt: s\nhash_digest_class: SHA256\n";
  const std::vector<std::string> bad = {
      "",
      "key_derivation_salt: s\n",
      "primary_key: SECRETKEY1\n" + salt + "deterministic_key: SECRETKEY2\n",
      "primary_key:\n  - SECRETKEY1\n  - SECRETKEY2\n" + salt,
      "primary_key: [SECRETKEY1, SECRETKEY2]\n" + salt,
      "primary_key: SECRETKEY1\nhash_digest_class: SHA256\n",
      "primary_key: SECRETKEY1\nkey_derivation_salt: s\n",
      "primary_key: SECRETKEY1\nkey_derivation_salt: s\nhash_digest_class: MD5\n",
      "primary_key: SECRETKEY1\n" + salt + "primary_key: SECRETKEY1\n",
      "SECRETKEY1\n",
      "primary_key: \"SECRET\\KEY1\"\n" + salt,
  };
  for (const std::string& text : bad) {
    const std::string why = Refusal(text);
    EXPECT_NE(why, "(accepted)") << text;
    EXPECT_THAT(why, Not(HasSubstr("SECRET"))) << text;
    EXPECT_THAT(why, Not(HasSubstr("\n"))) << text;
  }
  EXPECT_THAT(Refusal(bad[2]), HasSubstr("own --key-id"));
  EXPECT_THAT(Refusal(bad[3]), HasSubstr("one key per --key-id"));
  EXPECT_THAT(Refusal(bad[5]), HasSubstr("key_derivation_salt"));
  EXPECT_THAT(Refusal(bad[6]), HasSubstr("hash_digest_class"));
}

TEST(RailsKeysTest, ExportsAKeyProviderThePrimaryLast) {
  const Secret a(std::vector<uint8_t>(32, 0x11).data(), 32);
  const Secret b(std::vector<uint8_t>(32, 0xab).data(), 32);
  EXPECT_EQ(
      RailsKeyProviderConfig({&a, &b}),
      "config.active_record.encryption.key_provider = "
      "ActiveRecord::Encryption::KeyProvider.new(%w[" +
          std::string(64, '1') + " " +
          [] {
            std::string s;
            for (int i = 0; i < 32; ++i) s += "ab";
            return s;
          }() +
          "].map { |hex| ActiveRecord::Encryption::Key.new([hex].pack(\"H*\")) })");
}

}  // namespace
}  // namespace rekey::keyring
