#include "common/bytes.h"

#include <gtest/gtest.h>

#include <random>

namespace rekey {
namespace {

// RFC 4648 section 10.
struct Rfc4648Vector {
  const char* plain;
  const char* base64;
  const char* base16;
};
const Rfc4648Vector kRfc4648[] = {
    {"", "", ""},
    {"f", "Zg==", "66"},
    {"fo", "Zm8=", "666F"},
    {"foo", "Zm9v", "666F6F"},
    {"foob", "Zm9vYg==", "666F6F62"},
    {"fooba", "Zm9vYmE=", "666F6F6261"},
    {"foobar", "Zm9vYmFy", "666F6F626172"},
};

std::string Lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

TEST(BytesTest, Rfc4648Base64) {
  for (const Rfc4648Vector& v : kRfc4648) {
    SCOPED_TRACE(v.plain);
    const Bytes plain = ToBytes(v.plain);
    EXPECT_EQ(Base64Encode(plain), v.base64);
    EXPECT_EQ(Base64Decode(v.base64), plain);
  }
}

TEST(BytesTest, Rfc4648Base16) {
  for (const Rfc4648Vector& v : kRfc4648) {
    SCOPED_TRACE(v.plain);
    const Bytes plain = ToBytes(v.plain);
    EXPECT_EQ(HexEncode(plain), Lower(v.base16));  // rekey writes lower case
    EXPECT_EQ(HexDecode(v.base16), plain);         // and reads both cases
    EXPECT_EQ(HexDecode(Lower(v.base16)), plain);
  }
}

TEST(BytesTest, RandomRoundTrips) {
  std::mt19937 rng(42);
  for (size_t size = 0; size <= 100; ++size) {
    for (int trial = 0; trial < 20; ++trial) {
      Bytes b(size);
      for (uint8_t& x : b) x = uint8_t(rng());
      const std::string hex = HexEncode(b);
      ASSERT_EQ(hex.size(), 2 * size);
      EXPECT_EQ(HexDecode(hex), b);
      const std::string b64 = Base64Encode(b);
      ASSERT_EQ(b64.size(), (size + 2) / 3 * 4);
      EXPECT_EQ(Base64Decode(b64), b);
      EXPECT_EQ(Base64Decode(" \t" + b64 + "\r\n"), b);  // surrounding whitespace
    }
  }
}

TEST(BytesTest, AllByteValuesRoundTrip) {
  Bytes all(256);
  for (int i = 0; i < 256; ++i) all[i] = uint8_t(i);
  EXPECT_EQ(HexDecode(HexEncode(all)), all);
  EXPECT_EQ(Base64Decode(Base64Encode(all)), all);
  EXPECT_EQ(HexEncode(Bytes{0x00, 0x0f, 0xf0, 0xff}), "000ff0ff");
}

TEST(BytesTest, InvalidHex) {
  for (const char* bad : {"0", "abc", "0g", "g0", "zz", " 00", "00 ", "0x00", "-1", "0\n"}) {
    EXPECT_FALSE(HexDecode(bad).has_value()) << bad;
  }
  EXPECT_EQ(HexDecode(""), Bytes{});
}

TEST(BytesTest, InvalidBase64) {
  for (const char* bad : {
           "Z",         // length not a multiple of 4
           "Zg",        // missing padding
           "Zg=",       // short padding
           "Zm9vY",     // stray trailing character
           "Z===",      // three padding characters
           "====",      // all padding
           "=Zm8",      // padding first
           "Zm=8",      // padding in the middle of a quantum
           "Zg==Zg==",  // padding before the last quantum
           "Zm 8",      // inner whitespace
           "Zm8*",      // not in the alphabet
           "Zm-_",      // URL-safe alphabet is not accepted
           "Zh==",      // non-canonical: trailing bits set after one byte
           "Zm9=",      // non-canonical: trailing bits set after two bytes
           "Zm8=\x01",  // control character
       }) {
    EXPECT_FALSE(Base64Decode(bad).has_value()) << bad;
  }
  EXPECT_EQ(Base64Decode(""), Bytes{});
  EXPECT_EQ(Base64Decode("  \n"), Bytes{});
}

// Exhaustively over the final quantum: a padded quantum decodes iff its unused bits are zero, and
// then re-encodes to exactly the same text (one canonical form per value).
TEST(BytesTest, Base64FinalQuantumCanonical) {
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (int a = 0; a < 64; ++a) {
    for (int b = 0; b < 64; ++b) {
      const std::string two = std::string{alphabet[a], alphabet[b]} + "==";
      std::optional<Bytes> d = Base64Decode(two);
      ASSERT_EQ(d.has_value(), (b & 0x0f) == 0) << two;
      if (d) {
        ASSERT_EQ(d->size(), 1u);
        EXPECT_EQ(Base64Encode(*d), two);
      }
      for (int c = 0; c < 64; ++c) {
        const std::string three = std::string{alphabet[a], alphabet[b], alphabet[c]} + "=";
        d = Base64Decode(three);
        ASSERT_EQ(d.has_value(), (c & 0x03) == 0) << three;
        if (d) {
          ASSERT_EQ(d->size(), 2u);
          EXPECT_EQ(Base64Encode(*d), three);
        }
      }
    }
  }
}

TEST(BytesTest, BigEndian) {
  struct Case {
    uint32_t v;
    Bytes b;
  };
  const Case cases[] = {{0, {0, 0, 0, 0}},
                        {1, {0, 0, 0, 1}},
                        {0x01020304, {1, 2, 3, 4}},
                        {0x7fffffff, {0x7f, 0xff, 0xff, 0xff}},
                        {0x80000000, {0x80, 0, 0, 0}},
                        {0xffffffff, {0xff, 0xff, 0xff, 0xff}}};
  for (const Case& c : cases) {
    uint8_t out[4];
    PutUint32BigEndian(c.v, out);
    EXPECT_EQ(Bytes(out, out + 4), c.b) << c.v;
    EXPECT_EQ(GetUint32BigEndian(c.b.data()), c.v);
  }
}

TEST(BytesTest, StringViewConversions) {
  const Bytes b = ToBytes(std::string_view("a\0b", 3));
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[1], 0);
  EXPECT_EQ(AsStringView(b), std::string_view("a\0b", 3));
}

}  // namespace
}  // namespace rekey
