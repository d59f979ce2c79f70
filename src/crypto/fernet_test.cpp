// Fernet tokens from the Fernet specification's own vectors (https://github.com/fernet/spec:
// generate.json and verify.json, the "hello" token of 1985-10-26T01:20:00-07:00; invalid.json at
// commit 8a219208ed1884505ff1f638028fd6fcc51aeb5a), and FernetRewriter's outcomes (trial
// decryption, the timestamp kept, quarantine classes). The proof against Python's own
// implementation is tests/fernet/ (formats_fernet_pg_test.cpp).
#include "crypto/fernet.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "crypto/fernet_rewriter.h"
#include "crypto/text_encoding.h"

namespace rekey::crypto {
namespace {

constexpr char kSpecSecret[] = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
constexpr char kSpecToken[] =
    "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4"
    "IwqDA==";
constexpr uint64_t kSpecNow = 499162800;  // 1985-10-26T01:20:00-07:00

Bytes TokenBytes(const std::string& text) {
  Bytes out;
  EXPECT_TRUE(DecodeText(TextEncoding::kBase64Url, text, &out)) << text;
  return out;
}

FernetKey SpecKey() {
  std::optional<Secret> key = ParseFernetKeyText(kSpecSecret);
  EXPECT_TRUE(key.has_value());
  return FernetKey(std::move(*key));
}

TEST(FernetTest, GeneratesTheSpecToken) {
  const FernetKey key = SpecKey();
  uint8_t iv[16];
  for (int i = 0; i < 16; ++i) iv[i] = uint8_t(i);
  const std::string src = "hello";
  Bytes token;
  key.SealWithIv(kSpecNow, iv, reinterpret_cast<const uint8_t*>(src.data()), src.size(), &token);
  std::string text;
  EncodeText(TextEncoding::kBase64Url, token.data(), token.size(), TextStyle{true}, &text);
  EXPECT_EQ(text, kSpecToken);
}

TEST(FernetTest, VerifiesTheSpecToken) {
  const FernetKey key = SpecKey();
  const Bytes token = TokenBytes(kSpecToken);
  Bytes plaintext;
  uint64_t timestamp = 0;
  ASSERT_EQ(key.Open(token.data(), token.size(), &plaintext, &timestamp), DecodeStatus::kOk);
  EXPECT_EQ(AsStringView(plaintext), "hello");
  EXPECT_EQ(timestamp, kSpecNow);
}

// invalid.json: each case, and the class rekey quarantines it with. The two that fail only a
// TTL or clock-skew check open: rotation keeps a token's age (MultiFernet.rotate checks no TTL
// either), it does not judge it.
TEST(FernetTest, SpecInvalidTokens) {
  struct Case {
    const char* desc;
    const char* token;
    const char* expected;  // an error class, or "ok"
  };
  const std::vector<Case> cases = {
      {"incorrect mac",
       "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykQUFBQUF"
       "BQUFBQQ==",
       "auth_failed"},
      {"too short", "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPA==", "truncated"},
      {"invalid base64",
       "%%%%%%%%%%%%%AECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykRtfsH-p"
       "1YsUD2Q==",
       "bad_encoding"},
      {"payload size not multiple of block size",
       "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPOm73QeoCk9uGib28Xe5vz6oxq5nmxbx_"
       "v7mrfyu"
       "dzUm",
       "truncated"},
      {"payload padding error",
       "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0ODz4LEpdELGQAad7aNEHbf-"
       "JkLPIpuiYRLQ3RtXatOYREu2FWke6CnJNYIbku"
       "KNqOhw==",
       "auth_failed"},
      {"far-future TS (unacceptable clock skew)",
       "gAAAAAAdwStRAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAnja1xKYyhd-Y6mSkTOyTGJmw2Xc2a6kBd-"
       "iX9b"
       "_qXQcw==",
       "ok"},
      {"expired TTL",
       "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykRtfsH-"
       "p1"
       "YsUD2Q==",
       "ok"},
      {"incorrect IV (causes padding error)",
       "gAAAAAAdwJ6xBQECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-"
       "fWPAkLhFLHpGtDBRLRTZeUfWgHSv49TF2AUEZ1TIvc"
       "ZjK1zQ==",
       "auth_failed"},
      {"trailing characters after b64 padding",
       "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_"
       "5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU"
       "4IwqDA==trailingdata",
       "bad_encoding"},
      {"invalid characters in b64",
       "*gAAAAAAdwJ6wAAECAwQFBgcI!CQoLDA0ODy021?cpGVWKZ_eEwC@GM4BLLF_"
       "5CV9dOPmrhuVUPgJobwOz7JcbmrR64j"
       "VmpU4IwqDA==",
       "bad_encoding"},
      {"invalid non-urlsafe characters in b64",
       "gAAAAAAdwJ6wAAEC/"
       "AwQFBgcICQoLDA0ODy+021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVm"
       "pU4IwqDA==",
       "bad_encoding"},
  };
  const FernetKey key = SpecKey();
  for (const Case& c : cases) {
    Bytes token;
    std::string outcome;
    if (!DecodeText(TextEncoding::kBase64Url, c.token, &token)) {
      outcome = std::string(kBadEncodingClass);
    } else {
      Bytes plaintext;
      outcome = std::string(DecodeStatusName(key.Open(token.data(), token.size(), &plaintext)));
      if (outcome == "ok") {
        EXPECT_TRUE(plaintext.empty()) << c.desc << ": the spec's token of the empty string";
      }
    }
    EXPECT_EQ(outcome, c.expected) << c.desc;
  }
}

TEST(FernetTest, EveryTruncationAndEveryBitFlipIsRefused) {
  const FernetKey key = SpecKey();
  const Bytes token = TokenBytes(kSpecToken);
  Bytes plaintext;
  for (size_t n = 0; n < token.size(); ++n) {
    EXPECT_NE(key.Open(token.data(), n, &plaintext), DecodeStatus::kOk) << n;
    EXPECT_TRUE(plaintext.empty());
  }
  for (size_t i = 0; i < token.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes forged = token;
      forged[i] ^= uint8_t(1 << bit);
      EXPECT_NE(key.Open(forged.data(), forged.size(), &plaintext), DecodeStatus::kOk)
          << "byte " << i << " bit " << bit;
    }
  }
  const Bytes wrong_version = [&] {
    Bytes b = token;
    b[0] = 0x81;
    return b;
  }();
  EXPECT_EQ(key.Open(wrong_version.data(), wrong_version.size(), &plaintext),
            DecodeStatus::kBadPrefix);
  EXPECT_EQ(key.Open(token.data(), 0, &plaintext), DecodeStatus::kEmpty);
}

TEST(FernetTest, KeyTextForm) {
  std::optional<Secret> key = ParseFernetKeyText(std::string(" ") + kSpecSecret + "\n");
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(FernetKeyText(*key), kSpecSecret);
  EXPECT_FALSE(ParseFernetKeyText("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4").has_value());
  EXPECT_FALSE(ParseFernetKeyText("cw/0x689RpI+jtRR7oE8h/eQsKImvJapLeSbXpwF4e4=").has_value());
  EXPECT_THROW(FernetKey short_key(Secret(16)), KeyError);
}

class FernetRewriterTest : public ::testing::Test {
 protected:
  FernetRewriterTest() {
    for (uint32_t id : {1u, 2u, 3u, 9u}) {
      Secret s(kFernetKeySize);
      RandomBytes(s.mutable_data(), s.size());
      keys_.emplace(id, std::make_unique<FernetKey>(std::move(s)));
    }
    moves_ = {{1, 2}, {3, 2}};
  }

  Bytes Token(uint32_t key, const std::string& plaintext, uint64_t timestamp = 1700000000) {
    Bytes out;
    keys_.at(key)->Seal(timestamp, reinterpret_cast<const uint8_t*>(plaintext.data()),
                        plaintext.size(), &out);
    return out;
  }

  RewrittenValue Rewrite(const Bytes& token) {
    FernetRewriter rewriter(&moves_, [this](uint32_t id) { return keys_.at(id).get(); });
    EXPECT_EQ(rewriter.key_naming(), ValueRewriter::KeyNaming::kTrialDecryption);
    StoredValue value{token.data(), token.size(), "token", "1", std::nullopt};
    RewrittenValue out;
    rewriter.RewriteBatch(&value, 1, &out);
    return out;
  }

  // Opens each token with the spec key as source key 3; `without` is a key the lookup lacks.
  std::vector<OpenedValue> Open(const std::vector<Bytes>& tokens, uint32_t without = 0) {
    keys_[3] = std::make_unique<FernetKey>(SpecKey());
    FernetRewriter rewriter(&moves_, [this, without](uint32_t id) -> const FernetKey* {
      return id == without ? nullptr : keys_.at(id).get();
    });
    std::vector<StoredValue> values;
    for (const Bytes& token : tokens) {
      values.push_back({token.data(), token.size(), "token", "1", std::nullopt});
    }
    std::vector<OpenedValue> out(values.size());
    rewriter.OpenBatch(values.data(), values.size(), out.data());
    return out;
  }

  std::map<uint32_t, std::unique_ptr<FernetKey>> keys_;
  std::map<uint32_t, uint32_t> moves_;
};

TEST_F(FernetRewriterTest, EachSourceKeysTokenMovesToItsTargetKeepingItsTimestamp) {
  for (uint32_t source : {1u, 3u}) {
    const RewrittenValue out = Rewrite(Token(source, "4111 1111 1111 1111", 499162800));
    ASSERT_EQ(out.outcome, RewriteOutcome::kRewritten);
    EXPECT_EQ(out.from_key, source);
    EXPECT_EQ(out.to_key, 2u);
    Bytes plaintext;
    uint64_t timestamp = 0;
    ASSERT_EQ(keys_.at(2)->Open(out.value.data(), out.value.size(), &plaintext, &timestamp),
              DecodeStatus::kOk);
    EXPECT_EQ(AsStringView(plaintext), "4111 1111 1111 1111");
    EXPECT_EQ(timestamp, 499162800u) << "MultiFernet.rotate keeps the token's timestamp";
    EXPECT_NE(keys_.at(source)->Open(out.value.data(), out.value.size(), &plaintext),
              DecodeStatus::kOk);
  }
}

TEST_F(FernetRewriterTest, ATargetKeysTokenIsLeftAlone) {
  EXPECT_EQ(Rewrite(Token(2, "done")).outcome, RewriteOutcome::kUnchanged);
}

TEST_F(FernetRewriterTest, AnotherKeysOrTamperedTokenIsQuarantined) {
  RewrittenValue out = Rewrite(Token(9, "not ours"));
  EXPECT_EQ(out.outcome, RewriteOutcome::kPoison);
  EXPECT_EQ(out.error_class, "auth_failed");
  Bytes tampered = Token(1, "secret");
  tampered[30] ^= 1;
  out = Rewrite(tampered);
  EXPECT_EQ(out.outcome, RewriteOutcome::kPoison);
  EXPECT_EQ(out.error_class, "auth_failed");
  Bytes truncated = Token(1, "secret");
  truncated.resize(60);
  EXPECT_EQ(Rewrite(truncated).error_class, "truncated");
  EXPECT_EQ(Rewrite(Bytes{0x01, 0x02}).error_class, "bad_prefix");
  EXPECT_EQ(Rewrite(Bytes{}).error_class, "empty");
}

TEST_F(FernetRewriterTest, OpensTheSpecTokenAndATargetKeysTokenNamingTheKeyAndThePlaintext) {
  const std::vector<OpenedValue> out = Open({TokenBytes(kSpecToken), Token(2, "done")});
  ASSERT_EQ(out[0].outcome, OpenOutcome::kOpened);
  EXPECT_EQ(out[0].key, 3u);
  ASSERT_TRUE(out[0].has_plaintext);
  EXPECT_EQ(AsStringView(out[0].plaintext), "hello");
  ASSERT_EQ(out[1].outcome, OpenOutcome::kOpened);
  EXPECT_EQ(out[1].key, 2u);
  EXPECT_EQ(AsStringView(out[1].plaintext), "done");
}

TEST_F(FernetRewriterTest, OpeningATamperedTruncatedOrKeylessTokenGivesTheQuarantineClass) {
  Bytes tampered = TokenBytes(kSpecToken);
  tampered[30] ^= 1;
  Bytes truncated = TokenBytes(kSpecToken);
  truncated.resize(60);
  std::vector<OpenedValue> out = Open({tampered, truncated, Bytes{}, Token(9, "not ours")});
  EXPECT_EQ(out[0].outcome, OpenOutcome::kPoison);
  EXPECT_EQ(out[0].error_class, "auth_failed");
  EXPECT_FALSE(out[0].has_plaintext);
  EXPECT_EQ(out[1].error_class, "truncated");
  EXPECT_EQ(out[2].error_class, "empty");
  EXPECT_EQ(out[3].error_class, "auth_failed") << "a token names no key: another key's fails so";
  // Its key gone from the keyring: no key opens the spec token.
  out = Open({TokenBytes(kSpecToken)}, /*without=*/3);
  EXPECT_EQ(out[0].outcome, OpenOutcome::kPoison);
  EXPECT_EQ(out[0].error_class, "auth_failed");
}

}  // namespace
}  // namespace rekey::crypto
