// Stored forms: RFC 4648's test vectors (section 10) in each encoding, the strictness that makes
// a malformed value "bad_encoding" rather than a guess, and the padding style kept on rewrite.
#include "crypto/text_encoding.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace rekey::crypto {
namespace {

Bytes B(const std::string& s) {
  return Bytes(s.begin(), s.end());
}

std::string Encode(TextEncoding encoding, const std::string& data, bool padded = true) {
  std::string out;
  const Bytes bytes = B(data);
  EncodeText(encoding, bytes.data(), bytes.size(), TextStyle{padded}, &out);
  return out;
}

TEST(TextEncodingTest, Rfc4648Vectors) {
  // RFC 4648 section 10: BASE64("foobar") = "Zm9vYmFy", BASE16("foobar") = "666F6F626172".
  const std::vector<std::pair<std::string, std::string>> base64 = {{"", ""},
                                                                   {"f", "Zg=="},
                                                                   {"fo", "Zm8="},
                                                                   {"foo", "Zm9v"},
                                                                   {"foob", "Zm9vYg=="},
                                                                   {"fooba", "Zm9vYmE="},
                                                                   {"foobar", "Zm9vYmFy"}};
  for (const auto& [data, text] : base64) {
    EXPECT_EQ(Encode(TextEncoding::kBase64, data), text);
    EXPECT_EQ(Encode(TextEncoding::kBase64Url, data), text);
    Bytes out;
    ASSERT_TRUE(DecodeText(TextEncoding::kBase64, text, &out)) << text;
    EXPECT_EQ(out, B(data));
    ASSERT_TRUE(DecodeText(TextEncoding::kBase64Url, text, &out)) << text;
    EXPECT_EQ(out, B(data));
  }
  EXPECT_EQ(Encode(TextEncoding::kHex, "foobar"), "666f6f626172");
  Bytes out;
  ASSERT_TRUE(DecodeText(TextEncoding::kHex, "666F6F626172", &out));
  EXPECT_EQ(out, B("foobar"));
}

TEST(TextEncodingTest, AlphabetsDifferInTwoCharacters) {
  const std::string data = "\xfb\xff\xbf";  // 6-bit groups 62, 63, 62, 63
  EXPECT_EQ(Encode(TextEncoding::kBase64, data), "+/+/");
  EXPECT_EQ(Encode(TextEncoding::kBase64Url, data), "-_-_");
  Bytes out;
  EXPECT_FALSE(DecodeText(TextEncoding::kBase64, "-_-_", &out));
  EXPECT_FALSE(DecodeText(TextEncoding::kBase64Url, "+/+/", &out));
}

TEST(TextEncodingTest, Base64UrlPaddingIsKeptAsRead) {
  Bytes out;
  TextStyle style;
  ASSERT_TRUE(DecodeText(TextEncoding::kBase64Url, "Zm8", &out, &style));
  EXPECT_FALSE(style.padded);
  EXPECT_EQ(Encode(TextEncoding::kBase64Url, "fo", style.padded), "Zm8");
  ASSERT_TRUE(DecodeText(TextEncoding::kBase64Url, "Zm8=", &out, &style));
  EXPECT_TRUE(style.padded);
  EXPECT_EQ(Encode(TextEncoding::kBase64Url, "fo", style.padded), "Zm8=");
}

TEST(TextEncodingTest, MalformedTextIsRefusedNotGuessed) {
  const std::vector<std::pair<TextEncoding, std::string>> bad = {
      {TextEncoding::kBase64, "Zm8"},         // standard base64 is padded
      {TextEncoding::kBase64, "Zm9v\nYmFy"},  // whitespace inside
      {TextEncoding::kBase64, " Zm9v"},       // or around
      {TextEncoding::kBase64, "Zg=a"},        // padding not at the end
      {TextEncoding::kBase64, "Z==="},        // three padding characters
      {TextEncoding::kBase64, "Zm9vY"},       // one character of a group
      {TextEncoding::kBase64Url, "Zm9vY"},    // the same, unpadded
      {TextEncoding::kBase64Url, "Zg="},      // padded, but not to a multiple of four
      {TextEncoding::kBase64Url, "%%%%"},     // outside the alphabet
      {TextEncoding::kHex, "abc"},            // odd length
      {TextEncoding::kHex, "\\x0102"},        // PostgreSQL's bytea prefix is not hex
      {TextEncoding::kHex, "zz"},             // not a digit
      {TextEncoding::kBytea, "anything"},     // not a text form
  };
  for (const auto& [encoding, text] : bad) {
    Bytes out = B("stale");
    EXPECT_FALSE(DecodeText(encoding, text, &out)) << TextEncodingName(encoding) << " " << text;
    EXPECT_TRUE(out.empty());
  }
}

TEST(TextEncodingTest, EveryByteRoundTripsInEveryEncoding) {
  Bytes all(256);
  for (int i = 0; i < 256; ++i) all[size_t(i)] = uint8_t(i);
  for (TextEncoding encoding :
       {TextEncoding::kBase64, TextEncoding::kBase64Url, TextEncoding::kHex}) {
    for (size_t n : {0, 1, 2, 3, 4, 255, 256}) {
      for (bool padded : {true, false}) {
        std::string text;
        EncodeText(encoding, all.data(), n, TextStyle{padded}, &text);
        Bytes back;
        ASSERT_TRUE(DecodeText(encoding, text, &back)) << TextEncodingName(encoding) << " " << n;
        EXPECT_EQ(back, Bytes(all.begin(), all.begin() + long(n)));
      }
    }
  }
}

TEST(TextEncodingTest, Names) {
  for (TextEncoding encoding : {TextEncoding::kBytea, TextEncoding::kBase64,
                                TextEncoding::kBase64Url, TextEncoding::kHex}) {
    EXPECT_EQ(ParseTextEncoding(TextEncodingName(encoding)), encoding);
  }
  EXPECT_FALSE(ParseTextEncoding("Base64").has_value());
  EXPECT_FALSE(ParseTextEncoding("").has_value());
}

}  // namespace
}  // namespace rekey::crypto
