// Lockbox values from Lockbox's own tests (github ankane/lockbox, test/lockbox_test.rb):
// test_attribute_key (table "users", attribute "license", master key "0" x 64 -> the key below)
// and test_decrypt_not_broken (key "0" x 64, encode: true: the base64 value below opens to
// "it works!"). Lockbox's tests give no value sealed under a derived attribute key; that vector
// (kEmailValue) was made independently with Python's cryptography (HKDF with SHA384, AESGCM) from
// docs/FORMAT.md, "lockbox", and the cited vectors check that script's derivation and layout
// (tests/lockbox/lockbox_app.py --self-test). Then LockboxRewriter's outcomes: trial decryption in
// the job's key order, per-column attribute keys, quarantine classes.
#include "crypto/lockbox.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "common/error.h"
#include "crypto/lockbox_rewriter.h"
#include "crypto/text_encoding.h"

namespace rekey::crypto {
namespace {

// test/lockbox_test.rb, test_attribute_key.
constexpr char kLicenseKey[] = "d96ffa3fe916b3a9b57d084f5781e95748333b877e32e6399e387d3d75b238a1";
// test/lockbox_test.rb, test_decrypt_not_broken.
constexpr char kNotBrokenValue[] = "4nz8vb+KROTD6l9DvxanuOqn9OJWy7LpLDTKHHoM9Ll0lx+FAg==";
// Independent (Python cryptography): master "0" x 64, users.email_ciphertext, nonce 00..0b,
// plaintext "test@example.org".
constexpr char kEmailKey[] = "2ff9b36c1d3995add4ec8462e18e0d49d22c9ba72926b42fd33304b1a9553651";
constexpr char kEmailValue[] = "AAECAwQFBgcICQoLCKROVQ9auDaIwDOOvK+8JQcmgIBVk7+h5ZPGxBFLkvE=";

Secret Master(char digit) {
  return Secret(Bytes(32, uint8_t((digit - '0') * 0x11)).data(), 32);
}

Bytes Decoded(const std::string& text) {
  Bytes out;
  EXPECT_TRUE(DecodeText(TextEncoding::kBase64, text, &out)) << text;
  return out;
}

std::string Hex(const Secret& s) {
  return HexEncode(s.data(), s.size());
}

// Master keys 1, 2, 3 are "0" x 64, "1" x 64, "2" x 64; key 9 is not available.
LockboxMasterKeySource Masters() {
  return [](uint32_t id) { return id >= 1 && id <= 3 ? Master(char('0' + id - 1)) : Secret(); };
}

TEST(LockboxTest, DerivesLockboxsOwnAttributeKeyVector) {
  EXPECT_EQ(Hex(LockboxAttributeKey(Master('0'), {"users", "license"})), kLicenseKey);
  EXPECT_EQ(Hex(LockboxAttributeKey(Master('0'), {"users", "email_ciphertext"})), kEmailKey);
  // The table is the salt and the attribute the info: neither may stand for the other.
  EXPECT_NE(Hex(LockboxAttributeKey(Master('0'), {"license", "users"})), kLicenseKey);
}

TEST(LockboxTest, RefusesWhatLockboxRefuses) {
  EXPECT_THROW(LockboxAttributeKey(Master('0'), {"", "license"}), KeyError);
  EXPECT_THROW(LockboxAttributeKey(Master('0'), {"users", ""}), KeyError);
  EXPECT_THROW(LockboxAttributeKey(Secret(Bytes(31, 0).data(), 31), {"users", "license"}),
               KeyError);
}

TEST(LockboxTest, OpensLockboxsOwnValueLayout) {
  // test_decrypt_not_broken uses the key itself (no derivation): nonce || ciphertext || tag.
  const Bytes value = Decoded(kNotBrokenValue);
  ASSERT_EQ(value.size(), 12u + 9u + 16u);
  AesGcmKey key(Master('0'));
  Bytes plaintext;
  ASSERT_TRUE(key.Open(value.data(), value.size(), nullptr, 0, &plaintext));
  EXPECT_EQ(AsStringView(plaintext), "it works!");
}

TEST(LockboxTest, TrialDecryptionFindsTheKeyInOrder) {
  const Bytes value = Decoded(kEmailValue);
  LockboxAttributeKeys keys(Masters());
  Bytes plaintext;
  uint32_t key_id = 0;
  const LockboxKeyNames email{"users", "email_ciphertext"};
  // Key 9 is unavailable and skipped; key 2 does not open it; key 1 does.
  EXPECT_EQ(
      OpenLockboxTrial(value.data(), value.size(), {9, 2, 1}, email, keys, &plaintext, &key_id),
      DecodeStatus::kOk);
  EXPECT_EQ(key_id, 1u);
  EXPECT_EQ(AsStringView(plaintext), "test@example.org");
  // Another attribute's key does not open it.
  EXPECT_EQ(OpenLockboxTrial(value.data(), value.size(), {1}, {"users", "phone_ciphertext"}, keys,
                             &plaintext, &key_id),
            DecodeStatus::kAuthFailed);
  EXPECT_TRUE(plaintext.empty());
}

TEST(LockboxTest, ClassifiesBadValues) {
  const Bytes value = Decoded(kEmailValue);
  LockboxAttributeKeys keys(Masters());
  const LockboxKeyNames email{"users", "email_ciphertext"};
  Bytes plaintext;
  uint32_t key_id = 0;
  auto open = [&](const Bytes& v) {
    return OpenLockboxTrial(v.data(), v.size(), {1, 2}, email, keys, &plaintext, &key_id);
  };
  EXPECT_EQ(open(Bytes()), DecodeStatus::kEmpty);
  EXPECT_EQ(open(Bytes(value.begin(), value.begin() + 28)), DecodeStatus::kTruncated);
  EXPECT_EQ(open(Bytes(value.begin(), value.end() - 1)), DecodeStatus::kAuthFailed);
  for (size_t i : {size_t(0), size_t(12), value.size() - 1}) {  // nonce, ciphertext, tag
    Bytes tampered = value;
    tampered[i] ^= 0x01;
    EXPECT_EQ(open(tampered), DecodeStatus::kAuthFailed) << "byte " << i;
  }
  // A Tink value (0x01 || key id || IV || ciphertext || tag) is not a Lockbox value.
  AesGcmKey tink_key(Master('0'));
  Bytes tink;
  const std::string message = "test@example.org";
  SealTink(1, tink_key, reinterpret_cast<const uint8_t*>(message.data()), message.size(), nullptr,
           0, &tink);
  EXPECT_EQ(open(tink), DecodeStatus::kAuthFailed);
}

TEST(LockboxTest, SealsWhatTheTrialOpens) {
  LockboxAttributeKeys keys(Masters());
  const LockboxKeyNames names{"people", "ssn_ciphertext"};
  Bytes value;
  SealLockbox(*keys.Get(2, names), reinterpret_cast<const uint8_t*>("x"), 1, &value);
  ASSERT_EQ(value.size(), kLockboxMinValueSize);
  Bytes again;
  SealLockbox(*keys.Get(2, names), reinterpret_cast<const uint8_t*>("x"), 1, &again);
  EXPECT_NE(value, again);  // a fresh nonce each time
  Bytes plaintext;
  uint32_t key_id = 0;
  ASSERT_EQ(OpenLockboxTrial(value.data(), value.size(), {1, 2}, names, keys, &plaintext, &key_id),
            DecodeStatus::kOk);
  EXPECT_EQ(key_id, 2u);
  EXPECT_EQ(AsStringView(plaintext), "x");
}

// One rewriter for two Lockbox columns of users, moving key 1 to key 2.
struct RewriterFixture {
  std::map<uint32_t, uint32_t> moves{{1, 2}};
  LockboxRewriter rewriter{&moves,
                           {{"email_ciphertext", {"users", "email_ciphertext"}},
                            {"phone_ciphertext", {"users", "phone_ciphertext"}}},
                           Masters()};
  LockboxAttributeKeys keys{Masters()};

  Bytes Seal(uint32_t key_id, const std::string& column, const std::string& text) {
    Bytes out;
    SealLockbox(*keys.Get(key_id, {"users", column}), reinterpret_cast<const uint8_t*>(text.data()),
                text.size(), &out);
    return out;
  }
  RewrittenValue Rewrite(const Bytes& value, const std::string& column) {
    StoredValue stored;
    stored.data = value.data();
    stored.size = value.size();
    stored.column = column;
    stored.pk = "1";
    RewrittenValue out;
    rewriter.RewriteBatch(&stored, 1, &out);
    return out;
  }
  OpenedValue Open(const Bytes& value, const std::string& column) {
    StoredValue stored{value.data(), value.size(), column, "1", std::nullopt};
    OpenedValue out;
    rewriter.OpenBatch(&stored, 1, &out);
    return out;
  }
};

TEST(LockboxRewriterTest, MovesSourceValuesAndLeavesTargetValues) {
  RewriterFixture f;
  EXPECT_EQ(f.rewriter.key_naming(), ValueRewriter::KeyNaming::kTrialDecryption);
  // Lockbox's own value: master "0" x 64 is key 1 here.
  RewrittenValue moved = f.Rewrite(Decoded(kEmailValue), "email_ciphertext");
  ASSERT_EQ(moved.outcome, RewriteOutcome::kRewritten);
  EXPECT_EQ(moved.from_key, 1u);
  EXPECT_EQ(moved.to_key, 2u);
  Bytes plaintext;
  uint32_t key_id = 0;
  ASSERT_EQ(OpenLockboxTrial(moved.value.data(), moved.value.size(), {2},
                             {"users", "email_ciphertext"}, f.keys, &plaintext, &key_id),
            DecodeStatus::kOk);
  EXPECT_EQ(AsStringView(plaintext), "test@example.org");

  EXPECT_EQ(f.Rewrite(moved.value, "email_ciphertext").outcome, RewriteOutcome::kUnchanged);
}

TEST(LockboxRewriterTest, QuarantinesWithTheirClass) {
  RewriterFixture f;
  RewrittenValue other_key = f.Rewrite(f.Seal(3, "email_ciphertext", "a@b.c"), "email_ciphertext");
  EXPECT_EQ(other_key.outcome, RewriteOutcome::kPoison);
  EXPECT_EQ(other_key.error_class, "auth_failed");
  EXPECT_NE(other_key.detail.find("users.email_ciphertext"), std::string::npos);
  // A value copied from another column is under that column's attribute key.
  RewrittenValue copied = f.Rewrite(f.Seal(1, "phone_ciphertext", "555"), "email_ciphertext");
  EXPECT_EQ(copied.error_class, "auth_failed");
  EXPECT_EQ(f.Rewrite(f.Seal(1, "phone_ciphertext", "555"), "phone_ciphertext").outcome,
            RewriteOutcome::kRewritten);
  RewrittenValue truncated = f.Rewrite(Bytes(20, 7), "email_ciphertext");
  EXPECT_EQ(truncated.error_class, "truncated");
  // Lockbox's models store "" as it is, unencrypted: nothing to move, nothing wrong.
  EXPECT_EQ(f.Rewrite(Bytes(), "email_ciphertext").outcome, RewriteOutcome::kUnchanged);
}

TEST(LockboxRewriterTest, HonoursKeyTableAndAttributeOverrides) {
  // has_encrypted :email, key_table: "people", key_attribute: "email": the column's values are
  // under the attribute key of people.email, whatever the column is called.
  std::map<uint32_t, uint32_t> moves{{1, 2}};
  LockboxRewriter rewriter(&moves, {{"email_ciphertext", {"people", "email"}}}, Masters());
  LockboxAttributeKeys keys(Masters());
  Bytes value;
  SealLockbox(*keys.Get(1, {"people", "email"}), reinterpret_cast<const uint8_t*>("a@b.c"), 5,
              &value);
  StoredValue stored;
  stored.data = value.data();
  stored.size = value.size();
  stored.column = "email_ciphertext";
  RewrittenValue out;
  rewriter.RewriteBatch(&stored, 1, &out);
  ASSERT_EQ(out.outcome, RewriteOutcome::kRewritten);
  Bytes plaintext;
  uint32_t key_id = 0;
  EXPECT_EQ(OpenLockboxTrial(out.value.data(), out.value.size(), {2}, {"people", "email"}, keys,
                             &plaintext, &key_id),
            DecodeStatus::kOk);
}

TEST(LockboxRewriterTest, OpensLockboxsOwnValueUnderItsKeyAndATargetKeysValue) {
  RewriterFixture f;
  const OpenedValue own = f.Open(Decoded(kEmailValue), "email_ciphertext");
  ASSERT_EQ(own.outcome, OpenOutcome::kOpened);
  EXPECT_EQ(own.key, 1u);
  ASSERT_TRUE(own.has_plaintext);
  EXPECT_EQ(AsStringView(own.plaintext), "test@example.org");
  const OpenedValue target = f.Open(f.Seal(2, "phone_ciphertext", "555"), "phone_ciphertext");
  ASSERT_EQ(target.outcome, OpenOutcome::kOpened);
  EXPECT_EQ(target.key, 2u);
  EXPECT_EQ(AsStringView(target.plaintext), "555");
  EXPECT_EQ(f.Open(Bytes(), "email_ciphertext").outcome, OpenOutcome::kUnencrypted);
}

TEST(LockboxRewriterTest, OpeningATamperedTruncatedOrKeylessValueGivesTheQuarantineClass) {
  RewriterFixture f;
  Bytes tampered = Decoded(kEmailValue);
  tampered[14] ^= 1;
  OpenedValue out = f.Open(tampered, "email_ciphertext");
  EXPECT_EQ(out.outcome, OpenOutcome::kPoison);
  EXPECT_EQ(out.error_class, "auth_failed");
  EXPECT_FALSE(out.has_plaintext);
  EXPECT_EQ(f.Open(Bytes(20, 7), "email_ciphertext").error_class, "truncated");
  EXPECT_EQ(f.Open(f.Seal(3, "email_ciphertext", "a@b.c"), "email_ciphertext").error_class,
            "auth_failed");

  // Its master key gone from the keyring: skipped when opening, so no key opens it; a rewrite
  // still stops on the missing key rather than quarantining the value.
  std::map<uint32_t, uint32_t> moves{{1, 2}};
  LockboxRewriter gone(&moves, {{"email_ciphertext", {"users", "email_ciphertext"}}},
                       [](uint32_t id) {
                         if (id == 1) throw NoSuchKeyError("key 1 is destroyed");
                         return Masters()(id);
                       });
  const Bytes value = Decoded(kEmailValue);
  StoredValue stored{value.data(), value.size(), "email_ciphertext", "1", std::nullopt};
  gone.OpenBatch(&stored, 1, &out);
  EXPECT_EQ(out.outcome, OpenOutcome::kPoison);
  EXPECT_EQ(out.error_class, "auth_failed");
  RewrittenValue rewritten;
  EXPECT_THROW(gone.RewriteBatch(&stored, 1, &rewritten), NoSuchKeyError);
}

}  // namespace
}  // namespace rekey::crypto
