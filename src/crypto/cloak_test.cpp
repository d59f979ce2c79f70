// Cloak strings written by the real library: npm @47ng/cloak 1.2.0 (tests/cloak/package-lock.json),
// printed by tests/cloak/make_vectors.mjs into tests/cloak/vectors.json. kReadmeKey and its
// fingerprint 6f28c026 are also the library's README example ("cloak generate"). Then the
// quarantine classes and CloakRewriter's outcomes. The proof both ways against the library
// itself, running, is tests/cloak/ (tests/cloak_pg_test.cpp).
#include "crypto/cloak.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "crypto/cloak_rewriter.h"
#include "crypto/text_encoding.h"

namespace rekey::crypto {
namespace {

constexpr char kReadmeKey[] = "k1.aesgcm256.DL2G9PQeZ9r65J59pph6dy9Sk4fBLEZ3CTQZsandgYE=";
constexpr char kCountingKey[] = "k1.aesgcm256.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Vector {
  const char* key;
  std::string plaintext;
  const char* value;
};
const Vector kVectors[] = {
    {kReadmeKey, "hello, world",
     "v1.aesgcm256.6f28c026.RqyjJ5Zrq13O-f_j.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA=="},
    {kCountingKey, "", "v1.aesgcm256.3bab9a53.XJzeJRbWEZfaD1DZ.gEg6sw3miPsUo9yMMjPGrw=="},
    {kCountingKey, "unicode: \xc3\xa9 \xf0\x9f\x94\x91",
     "v1.aesgcm256.3bab9a53.teTdQR2TOIKXixBG.w5wLhpsinI_jaM7oJfAkQo22ufnWSD82j_-a0PkNdBs="},
};

Secret KeyOf(const char* text) {
  std::optional<Secret> key = ParseCloakKeyText(text);
  EXPECT_TRUE(key.has_value()) << text;
  return key ? std::move(*key) : Secret();
}

const uint8_t* Data(std::string_view s) {
  return reinterpret_cast<const uint8_t*>(s.data());
}
std::string Text(const Bytes& b) {
  return std::string(b.begin(), b.end());
}

CloakStatus Open(CloakKey& key, std::string_view value, Bytes* plaintext) {
  uint32_t id = 0;
  return OpenCloak(
      Data(value), value.size(), {7}, [&](uint32_t) { return &key; }, plaintext, &id);
}

TEST(CloakTest, KeyTextAndFingerprintAsTheLibraryComputesThem) {
  EXPECT_EQ(CloakFingerprint(kReadmeKey), "6f28c026");
  EXPECT_EQ(CloakFingerprint(kCountingKey), "3bab9a53");
  EXPECT_EQ(CloakKey(KeyOf(kReadmeKey)).fingerprint(), "6f28c026");
  EXPECT_EQ(CloakKeyText(KeyOf(kCountingKey)), kCountingKey);
  EXPECT_TRUE(ParseCloakKeyText(std::string(" ") + kReadmeKey + "\n").has_value());
  // The unpadded form hashes to another fingerprint: refused, not silently renamed.
  EXPECT_FALSE(ParseCloakKeyText(std::string(kReadmeKey, sizeof kReadmeKey - 2)).has_value());
  EXPECT_FALSE(
      ParseCloakKeyText("k2.aesgcm256.DL2G9PQeZ9r65J59pph6dy9Sk4fBLEZ3CTQZsandgYE=").has_value());
  EXPECT_FALSE(
      ParseCloakKeyText("k1.aesgcm256.DL2G9PQeZ9r65J59pph6dy9Sk4fBLEZ3CTQZsandgY==").has_value());
  EXPECT_FALSE(ParseCloakKeyText("DL2G9PQeZ9r65J59pph6dy9Sk4fBLEZ3CTQZsandgYE=").has_value());
}

TEST(CloakTest, OpensTheLibrarysStringsAndWritesThemByteForByte) {
  for (const Vector& v : kVectors) {
    CloakKey key(KeyOf(v.key));
    Bytes plaintext;
    ASSERT_EQ(Open(key, v.value, &plaintext), CloakStatus::kOk) << v.value;
    EXPECT_EQ(Text(plaintext), v.plaintext);
    // The same IV gives the library's string exactly (its IV is the fourth part).
    CloakValue parsed;
    ASSERT_EQ(ParseCloakValue(Data(v.value), std::string_view(v.value).size(), &parsed),
              CloakStatus::kOk);
    Bytes again;
    key.SealWithIv(parsed.sealed.data(), Data(v.plaintext), v.plaintext.size(), &again);
    EXPECT_EQ(Text(again), v.value);
    // A fresh IV: another string, which opens to the same plaintext.
    key.Seal(Data(v.plaintext), v.plaintext.size(), &again);
    EXPECT_NE(Text(again), v.value);
    ASSERT_EQ(Open(key, Text(again), &plaintext), CloakStatus::kOk);
    EXPECT_EQ(Text(plaintext), v.plaintext);
  }
}

TEST(CloakTest, QuarantineClasses) {
  CloakKey key(KeyOf(kReadmeKey));
  const std::string good = kVectors[0].value;
  Bytes plaintext;
  const std::map<std::string, CloakStatus> cases = {
      {"", CloakStatus::kEmpty},
      {"hello, world", CloakStatus::kNotCloak},
      {"vault:v1:abcd", CloakStatus::kNotCloak},
      {"v2.aesgcm256.6f28c026.RqyjJ5Zrq13O-f_j.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA==",
       CloakStatus::kBadPrefix},
      {"v1.chacha20.6f28c026.RqyjJ5Zrq13O-f_j.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA==",
       CloakStatus::kBadPrefix},
      {"v1.aesgcm256.", CloakStatus::kTruncated},
      {"v1.aesgcm256.6f28c0", CloakStatus::kTruncated},
      {"v1.aesgcm256.6f28c026.RqyjJ5Zrq13O-f_j", CloakStatus::kTruncated},
      {"v1.aesgcm256.6f28c026.RqyjJ5Zrq13O.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA==",
       CloakStatus::kTruncated},
      {"v1.aesgcm256.6f28c026.RqyjJ5Zrq13O-f_j.QWpEmqFWQaAcxCu", CloakStatus::kTruncated},
      {"v1.aesgcm256.6f28c026.RqyjJ5Zrq13O-f_j.QWpEmqFWQaAc", CloakStatus::kTruncated},
      {"v1.aesgcm256.6f28c0zz.RqyjJ5Zrq13O-f_j.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA==",
       CloakStatus::kNotCloak},
      {"v1.aesgcm256.6f28c026.Rqyj+5Zrq13O-f_j.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA==",
       CloakStatus::kNotCloak},
      {good + ".x", CloakStatus::kNotCloak},
      {"v1.aesgcm256.00000000.RqyjJ5Zrq13O-f_j.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA==",
       CloakStatus::kUnknownFingerprint},
      // The library matches fingerprints as written: upper case names no key it holds.
      {"v1.aesgcm256.6F28C026.RqyjJ5Zrq13O-f_j.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA==",
       CloakStatus::kUnknownFingerprint},
      {"v1.aesgcm256.6f28c026.RqyjJ5Zrq13O-f_k.QWpEmqFWQaAcxCuT2CPNQX1-IbLv8YLWAQS8KA==",
       CloakStatus::kAuthFailed},
  };
  for (const auto& [value, want] : cases) {
    EXPECT_EQ(CloakStatusName(Open(key, value, &plaintext)), CloakStatusName(want)) << value;
  }
  // Every cut and every changed character of a real string is refused, never opened.
  // (Only the '=' padding may go: "...KA" is the same bytes, and the library reads it too.)
  for (size_t n = 0; n < good.size(); ++n) {
    const CloakStatus status = Open(key, good.substr(0, n), &plaintext);
    if (n >= good.size() - 2 && status == CloakStatus::kOk) continue;
    EXPECT_NE(status, CloakStatus::kOk) << n;
  }
  for (size_t i = 0; i < good.size(); ++i) {
    std::string tampered = good;
    tampered[i] = tampered[i] == 'A' ? 'B' : 'A';
    const CloakStatus status = Open(key, tampered, &plaintext);
    // Changing the last character of a padded base64 group may leave the same bytes.
    if (status == CloakStatus::kOk) {
      EXPECT_EQ(Text(plaintext), "hello, world");
    } else {
      EXPECT_TRUE(plaintext.empty());
    }
  }
}

class CloakRewriterTest : public ::testing::Test {
 protected:
  // Key 1 = the README key, 2 = the counting key, 3 = a key of the job's no one wrote with.
  Secret Material(uint32_t id) {
    if (id == 1) return KeyOf(kReadmeKey);
    if (id == 2) return KeyOf(kCountingKey);
    Secret key(32);
    key.mutable_data()[0] = uint8_t(id);
    return key;
  }
  RewrittenValue RewriteOne(const std::map<uint32_t, uint32_t>& moves, std::string_view value) {
    CloakRewriter rewriter(&moves, [this](uint32_t id) { return Material(id); });
    EXPECT_EQ(rewriter.key_naming(), ValueRewriter::KeyNaming::kKeyInValue);
    StoredValue stored{Data(value), value.size(), "secret", "1", std::nullopt};
    RewrittenValue out;
    rewriter.RewriteBatch(&stored, 1, &out);
    return out;
  }
  // Key `unknown` is one the key source does not know.
  OpenedValue OpenOne(const std::map<uint32_t, uint32_t>& moves, std::string_view value,
                      uint32_t unknown = 0) {
    CloakRewriter rewriter(&moves, [this, unknown](uint32_t id) {
      if (id == unknown) throw NoSuchKeyError("key " + std::to_string(id) + " is destroyed");
      return Material(id);
    });
    StoredValue stored{Data(value), value.size(), "secret", "1", std::nullopt};
    OpenedValue out;
    rewriter.OpenBatch(&stored, 1, &out);
    return out;
  }
};

TEST_F(CloakRewriterTest, ASourceKeysValueMovesToItsTargetAndBack) {
  const RewrittenValue moved = RewriteOne({{1, 2}}, kVectors[0].value);
  ASSERT_EQ(moved.outcome, RewriteOutcome::kRewritten);
  EXPECT_EQ(moved.from_key, 1u);
  EXPECT_EQ(moved.to_key, 2u);
  const std::string text = Text(moved.value);
  EXPECT_EQ(text.substr(0, 22), "v1.aesgcm256.3bab9a53.");
  CloakKey target(KeyOf(kCountingKey));
  Bytes plaintext;
  ASSERT_EQ(Open(target, text, &plaintext), CloakStatus::kOk);
  EXPECT_EQ(Text(plaintext), "hello, world");
  // A rollback is the reversed map.
  const RewrittenValue back = RewriteOne({{2, 1}}, text);
  ASSERT_EQ(back.outcome, RewriteOutcome::kRewritten);
  CloakKey source(KeyOf(kReadmeKey));
  ASSERT_EQ(Open(source, Text(back.value), &plaintext), CloakStatus::kOk);
  EXPECT_EQ(Text(plaintext), "hello, world");
}

TEST_F(CloakRewriterTest, ATargetKeysValueIsLeftAlone) {
  EXPECT_EQ(RewriteOne({{1, 2}}, kVectors[1].value).outcome, RewriteOutcome::kUnchanged);
}

TEST_F(CloakRewriterTest, UnknownTamperedAndMalformedValuesAreQuarantined) {
  const RewrittenValue unknown = RewriteOne({{3, 1}}, kVectors[1].value);
  EXPECT_EQ(unknown.outcome, RewriteOutcome::kKeyMissing);
  EXPECT_EQ(unknown.error_class, "unknown_fingerprint");
  EXPECT_NE(unknown.detail.find("3bab9a53"), std::string::npos);

  std::string tampered = kVectors[0].value;
  tampered[30] = tampered[30] == 'A' ? 'B' : 'A';
  const RewrittenValue forged = RewriteOne({{1, 2}}, tampered);
  EXPECT_EQ(forged.outcome, RewriteOutcome::kPoison);
  EXPECT_EQ(forged.error_class, "auth_failed");
  EXPECT_EQ(forged.failed_key, 1u);

  EXPECT_EQ(RewriteOne({{1, 2}}, "plain text").error_class, "not_cloak");
  EXPECT_EQ(RewriteOne({{1, 2}}, "v1.aesgcm256.6f28c026").error_class, "truncated");
  EXPECT_EQ(RewriteOne({{1, 2}}, "").error_class, "empty");
}

TEST_F(CloakRewriterTest, OpensTheReadmeVectorsUnderTheKeyOfTheirFingerprint) {
  // Under the source key and under the target key alike: opening takes no shortcut.
  for (const auto& [vector, key] : {std::pair{kVectors[0], 1u}, std::pair{kVectors[1], 2u}}) {
    const OpenedValue out = OpenOne({{1, 2}}, vector.value);
    ASSERT_EQ(out.outcome, OpenOutcome::kOpened) << vector.value;
    EXPECT_EQ(out.key, key);
    ASSERT_TRUE(out.has_plaintext);
    EXPECT_EQ(Text(out.plaintext), vector.plaintext);
  }
}

TEST_F(CloakRewriterTest, OpeningAnUnknownTamperedOrTruncatedValueGivesTheQuarantineClass) {
  OpenedValue out = OpenOne({{3, 1}}, kVectors[1].value);
  EXPECT_EQ(out.outcome, OpenOutcome::kKeyMissing);
  EXPECT_EQ(out.error_class, "unknown_fingerprint");
  // The key of its fingerprint gone from the keyring: the same class, not an exception.
  out = OpenOne({{1, 2}}, kVectors[1].value, /*unknown=*/2);
  EXPECT_EQ(out.outcome, OpenOutcome::kKeyMissing);
  EXPECT_EQ(out.error_class, "unknown_fingerprint");

  std::string tampered = kVectors[0].value;
  tampered[30] = tampered[30] == 'A' ? 'B' : 'A';
  out = OpenOne({{1, 2}}, tampered);
  EXPECT_EQ(out.outcome, OpenOutcome::kPoison);
  EXPECT_EQ(out.error_class, "auth_failed");
  EXPECT_EQ(out.failed_key, 1u);
  EXPECT_FALSE(out.has_plaintext);
  EXPECT_EQ(OpenOne({{1, 2}}, "v1.aesgcm256.6f28c026").error_class, "truncated");
  EXPECT_EQ(OpenOne({{1, 2}}, "plain text").error_class, "not_cloak");
}

}  // namespace
}  // namespace rekey::crypto
