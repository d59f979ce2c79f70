// Fernet key lists as applications write them: the Fernet spec's key
// (https://github.com/fernet/spec, generate.json), lists in MultiFernet order, and refusals that
// name the item without echoing it.
#include "keyring/key_formats/fernet_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"

namespace rekey::keyring {
namespace {

constexpr char kSpecSecret[] = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
constexpr char kOther[] = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

TEST(FernetKeysTest, ListsRoundTripInOrder) {
  const std::string list = std::string(kSpecSecret) + "," + kOther;
  std::vector<Secret> keys = ParseFernetKeyList(list + "\n");
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[1].data()[0], 0x00);
  EXPECT_EQ(keys[1].data()[31], 0x1f);
  EXPECT_EQ(FernetKeyList({&keys[0], &keys[1]}), list);
  EXPECT_EQ(ParseFernetKeyList(std::string(kOther) + "\n" + kSpecSecret).size(), 2u);
}

TEST(FernetKeysTest, RefusalsNameTheItemNotItsText) {
  try {
    ParseFernetKeyList(std::string(kSpecSecret) + ",c2VjcmV0LXRoYXQtaXMtdG9vLXNob3J0");
    FAIL() << "a short key was accepted";
  } catch (const KeyError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("item 2"));
    EXPECT_THAT(e.what(), ::testing::Not(::testing::HasSubstr("c2VjcmV0")));
  }
  EXPECT_THROW(ParseFernetKeyList(" \n"), KeyError);
  EXPECT_THROW(ParseFernetKeyList("cw/0x689RpI+jtRR7oE8h/eQsKImvJapLeSbXpwF4e4="), KeyError);
}

}  // namespace
}  // namespace rekey::keyring
