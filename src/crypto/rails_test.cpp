// ActiveRecord::Encryption messages (crypto/rails.h) from vectors, and RailsRewriter's outcomes.
//
// Origins (docs/FORMAT.md, "rails", lists them too):
//  * kRailsVector is Rails' own: activerecord/test/cases/encryption/encryptable_record_test.rb,
//    "deterministic ciphertexts remain constant" (the name "Dune" of an EncryptedBook, whose name
//    is `encrypts :name, deterministic: true`), under the configuration of
//    activerecord/test/cases/helper.rb: deterministic_key "test deterministic key",
//    key_derivation_salt "testing key derivation salt", the default digest (SHA1). Rails gives no
//    vector for the other steps, so:
//  * the derived keys, references and the messages marked "Python" were produced independently
//    with hashlib.pbkdf2_hmac and python3-cryptography's AESGCM by tests/rails/rails_app.py
//    (`derive`, `encrypt`), which reproduces kRailsVector byte for byte (`selfcheck`).
#include "crypto/rails.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/error.h"
#include "crypto/codec.h"
#include "crypto/rails_rewriter.h"

namespace rekey::crypto {
namespace {

constexpr char kRailsVector[] =
    R"({"p":"DIohhw==","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28Esw=="}})";
constexpr char kSalt[] = "testing key derivation salt";

// Python: PBKDF2-HMAC-SHA1 / -SHA256, 2**16 iterations, 32 bytes.
constexpr char kDeterministicSha1Hex[] =
    "d61facbaf9e007152bc1dda663124c579f2c013964b1b151460f8fff3e989759";  // reference acf9
constexpr char kMasterSha1Hex[] =
    "54e0a33fce4e5137753bfed0fda82debfe5e3de847c876f3d0ec5b583605d465";  // reference b304
constexpr char kMasterSha256Hex[] =
    "f6672b64725f7ad4e07698070576f21eb588be205d53564f68654319a8a2c020";  // reference 7ee9

// Python, under kMasterSha256Hex: "Dune" deterministic; "envelope secret" in an envelope with
// store_key_references; 200 x "x" (deflated, "c") with store_key_references.
constexpr char kDuneUnderMaster[] =
    R"({"p":"HwCWXQ==","h":{"iv":"4DxtQOO/e8OMMyWE","at":"pRXnawWbnW/UMEll+2Cruw=="}})";
constexpr char kEnvelope[] =
    R"({"p":"ryRNjcRmqMh6697xWH/H","h":{"iv":"nBpm8mQ3XlXD8nMx","at":"VfECu84LYnjpvb98qrtBpw==",)"
    R"("k":{"p":"bnGL1i0AhEOdUOOTom4dK9g6irH6C438SdvxOH0ujD4=","h":{"iv":"+rKSROqy/oG7P2qs",)"
    R"("at":"AD6XEU4u6wQ1N1C0cEoV3A==","e":"QVNDSUktOEJJVA=="}},"i":"N2VlOQ=="}})";
constexpr char kCompressed[] =
    R"({"p":"CP8tVWp2a10ykq87","h":{"iv":"847Xj9Z9uak0yShU","at":"QMHdHO/9ZhFQSIPIQg7lEQ==",)"
    R"("i":"N2VlOQ==","c":true}})";

Secret KeyOfHex(const char* hex) {
  std::optional<Bytes> bytes = HexDecode(hex);
  EXPECT_TRUE(bytes.has_value());
  return Secret(bytes->data(), bytes->size());
}

std::string AsText(const Bytes& b) {
  return std::string(b.begin(), b.end());
}

// Keys 1 (the Rails test suite's deterministic key), 2 (its master key, SHA1) and 3 (its master
// key, SHA256), as one thread holds them.
class RailsKeys {
 public:
  RailsKeys() {
    keys_[1] = std::make_unique<RailsKey>(KeyOfHex(kDeterministicSha1Hex));
    keys_[2] = std::make_unique<RailsKey>(KeyOfHex(kMasterSha1Hex));
    keys_[3] = std::make_unique<RailsKey>(KeyOfHex(kMasterSha256Hex));
  }
  RailsKeyLookup Lookup() {
    return [this](uint32_t id) -> RailsKey* {
      auto it = keys_.find(id);
      return it == keys_.end() ? nullptr : it->second.get();
    };
  }

 private:
  std::map<uint32_t, std::unique_ptr<RailsKey>> keys_;
};

TEST(RailsTest, DerivesKeysAsActiveSupportKeyGeneratorDoes) {
  const Secret sha1 = DeriveRailsKey("test deterministic key", kSalt, RailsDigest::kSha1);
  EXPECT_EQ(HexEncode(sha1.data(), sha1.size()), kDeterministicSha1Hex);
  const Secret master1 = DeriveRailsKey("test master key", kSalt, RailsDigest::kSha1);
  EXPECT_EQ(HexEncode(master1.data(), master1.size()), kMasterSha1Hex);
  const Secret master256 = DeriveRailsKey("test master key", kSalt, RailsDigest::kSha256);
  EXPECT_EQ(HexEncode(master256.data(), master256.size()), kMasterSha256Hex);
  EXPECT_EQ(RailsKeyReference(sha1), "acf9");
  EXPECT_EQ(RailsKeyReference(master1), "b304");
  EXPECT_EQ(RailsKeyReference(master256), "7ee9");
}

TEST(RailsTest, ParsesDigestNamesAsRailsAndRubyWriteThem) {
  EXPECT_EQ(ParseRailsDigest("SHA1"), RailsDigest::kSha1);
  EXPECT_EQ(ParseRailsDigest("sha256"), RailsDigest::kSha256);
  EXPECT_EQ(ParseRailsDigest("OpenSSL::Digest::SHA256"), RailsDigest::kSha256);
  EXPECT_EQ(ParseRailsDigest("MD5"), std::nullopt);
  EXPECT_EQ(ParseRailsDigest(""), std::nullopt);
}

TEST(RailsTest, OpensTheRailsTestSuitesDeterministicVector) {
  RailsKeys keys;
  RailsMessage message;
  ASSERT_EQ(message.Parse(kRailsVector), "");
  EXPECT_FALSE(message.envelope());
  EXPECT_FALSE(message.key_reference().has_value());
  uint32_t key_id = 0;
  ASSERT_EQ(message.Open({2, 3, 1}, keys.Lookup(), &key_id), "");
  EXPECT_EQ(key_id, 1u);
  EXPECT_EQ(AsText(message.plaintext()), "Dune");
}

// Determinism survives the move: the re-sealed message is exactly what Rails writes for "Dune"
// under the new key (Python's independent encryption), and moving it back gives Rails' vector.
TEST(RailsTest, ResealingADeterministicValueIsDeterministicUnderTheNewKey) {
  RailsKeys keys;
  RailsMessage message;
  uint32_t key_id = 0;
  ASSERT_EQ(message.Parse(kRailsVector), "");
  ASSERT_EQ(message.Open({1}, keys.Lookup(), &key_id), "");
  std::string text;
  message.Reseal(*keys.Lookup()(3), &text);
  EXPECT_EQ(text, kDuneUnderMaster);

  ASSERT_EQ(message.Parse(text), "");
  ASSERT_EQ(message.Open({3}, keys.Lookup(), &key_id), "");
  message.Reseal(*keys.Lookup()(1), &text);
  EXPECT_EQ(text, kRailsVector);
}

TEST(RailsTest, ANonDeterministicValueGetsAFreshIv) {
  RailsKeys keys;
  RailsMessage message;
  uint32_t key_id = 0;
  ASSERT_EQ(message.Parse(kCompressed), "");
  ASSERT_EQ(message.Open({3}, keys.Lookup(), &key_id), "");
  const Bytes deflated = message.plaintext();
  std::string first, second;
  message.Reseal(*keys.Lookup()(2), &first);
  message.Reseal(*keys.Lookup()(2), &second);
  EXPECT_NE(first, second);
  ASSERT_EQ(message.Parse(first), "");
  ASSERT_EQ(message.Open({2}, keys.Lookup(), &key_id), "");
  EXPECT_EQ(message.plaintext(), deflated);
}

// "c" and "i" are kept, "i" now naming the new key; the payload stays deflated as Rails wrote it.
TEST(RailsTest, KeepsCompressionAndRewritesTheKeyReference) {
  RailsKeys keys;
  RailsMessage message;
  uint32_t key_id = 0;
  ASSERT_EQ(message.Parse(kCompressed), "");
  EXPECT_EQ(message.key_reference(), std::optional<std::string>("7ee9"));
  ASSERT_EQ(message.Open({2, 3}, keys.Lookup(), &key_id), "");
  EXPECT_EQ(key_id, 3u);
  EXPECT_EQ(message.plaintext()[0], 0x78);  // a zlib stream's header
  std::string text;
  message.Reseal(*keys.Lookup()(2), &text);
  EXPECT_NE(text.find(R"("i":"YjMwNA==","c":true}})"), std::string::npos) << text;  // "b304"
  ASSERT_EQ(message.Parse(text), "");
  EXPECT_EQ(message.key_reference(), std::optional<std::string>("b304"));
}

// Envelope encryption: only "k" (the data key) is re-sealed; the payload is not touched.
TEST(RailsTest, AnEnvelopeMessageKeepsItsPayloadAndResealsItsDataKey) {
  RailsKeys keys;
  RailsMessage message;
  uint32_t key_id = 0;
  ASSERT_EQ(message.Parse(kEnvelope), "");
  EXPECT_TRUE(message.envelope());
  ASSERT_EQ(message.Open({3}, keys.Lookup(), &key_id), "");
  EXPECT_EQ(AsText(message.plaintext()), "envelope secret");
  std::string text;
  message.Reseal(*keys.Lookup()(2), &text);
  const std::string kept = R"({"p":"ryRNjcRmqMh6697xWH/H","h":{"iv":"nBpm8mQ3XlXD8nMx",)"
                           R"("at":"VfECu84LYnjpvb98qrtBpw==","k":{"p":")";
  EXPECT_EQ(text.compare(0, kept.size(), kept), 0) << text;
  EXPECT_NE(text.find(R"(,"e":"QVNDSUktOEJJVA=="}},"i":"YjMwNA=="}})"), std::string::npos) << text;
  ASSERT_EQ(message.Parse(text), "");
  EXPECT_EQ(message.Open({3}, keys.Lookup(), &key_id), kRailsUnknownKeyClass);
  ASSERT_EQ(message.Open({2}, keys.Lookup(), &key_id), "");
  EXPECT_EQ(AsText(message.plaintext()), "envelope secret");
}

std::string_view Classify(std::string_view text, const std::vector<uint32_t>& ids = {1, 2, 3}) {
  static RailsKeys keys;
  static RailsMessage message;
  const std::string_view parsed = message.Parse(text);
  if (!parsed.empty()) return parsed;
  uint32_t key_id = 0;
  return message.Open(ids, keys.Lookup(), &key_id);
}

TEST(RailsTest, ClassifiesWhatItCannotOpen) {
  EXPECT_EQ(Classify(""), kRailsEmptyClass);
  EXPECT_EQ(Classify("hello"), kRailsNotJsonClass);
  EXPECT_EQ(Classify("gAAAAABk"), kRailsNotJsonClass);  // a Fernet token
  EXPECT_EQ(Classify(R"("hey there")"), kRailsNotMessageClass);
  EXPECT_EQ(Classify(R"({"some":"other data"})"), kRailsNotMessageClass);
  EXPECT_EQ(Classify(R"({"p":"DIohhw=="})"), kRailsNotMessageClass);
  EXPECT_EQ(
      Classify(
          R"({"p":"some data not encoded","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28Esw=="}})"),
      kRailsBadEncodingClass);
  // Cut short, as a too-narrow varchar keeps it.
  EXPECT_EQ(Classify(std::string_view(kRailsVector, 40)), kRailsTruncatedClass);
  // A 15-byte tag: Aes256Gcm#decrypt refuses it before any decryption.
  EXPECT_EQ(
      Classify(R"({"p":"DIohhw==","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28E"}})"),
      kRailsTruncatedClass);
  // One bit of the tag flipped; the payload changed.
  EXPECT_EQ(
      Classify(R"({"p":"DIohhw==","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28Esg=="}})"),
      kRailsAuthFailedClass);
  EXPECT_EQ(
      Classify(R"({"p":"DIohiw==","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28Esw=="}})"),
      kRailsAuthFailedClass);
  // Under a key the job does not hold.
  EXPECT_EQ(Classify(kRailsVector, {2, 3}), kRailsAuthFailedClass);
  // A reference none of the keys has ("ffff").
  EXPECT_EQ(
      Classify(
          R"({"p":"DIohhw==","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28Esw==","i":"ZmZmZg=="}})"),
      kRailsUnknownKeyClass);
  // A nested message inside the nested message: Rails refuses more than one level.
  EXPECT_EQ(Classify(R"({"p":"","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28Esw==",)"
                     R"("k":{"p":"","h":{"iv":"wEPaDcJP3VNIxaiz","at":"X7+2xvvcu1k1if6Dy28Esw==",)"
                     R"("k":{"p":"","h":{}}}}}})"),
            kRailsNotMessageClass);
}

TEST(RailsTest, IsTheCodecNamedRails) {
  EXPECT_EQ(ParseCodecKind("rails"), CodecKind::kRails);
  EXPECT_EQ(CodecKindName(CodecKind::kRails), "rails");
}

TEST(RailsTest, AKeyIs32Bytes) {
  EXPECT_THROW(RailsKey(Secret(16)), KeyError);
}

StoredValue Value(const std::string& text) {
  return StoredValue{reinterpret_cast<const uint8_t*>(text.data()), text.size(), "name", "1", {}};
}

TEST(RailsRewriterTest, MovesSourceValuesAndLeavesTargetValuesAndQuarantinesTheRest) {
  RailsKeys keys;
  const std::map<uint32_t, uint32_t> moves = {{1, 3}};
  RailsRewriter rewriter(&moves, keys.Lookup());
  EXPECT_EQ(rewriter.key_naming(), ValueRewriter::KeyNaming::kTrialDecryption);
  const std::vector<std::string> texts = {kRailsVector, kDuneUnderMaster, "not json",
                                          std::string(kRailsVector, 30), kEnvelope};
  std::vector<StoredValue> values;
  for (const auto& t : texts) values.push_back(Value(t));
  std::vector<RewrittenValue> out(values.size());
  rewriter.RewriteBatch(values.data(), values.size(), out.data());

  EXPECT_EQ(out[0].outcome, RewriteOutcome::kRewritten);
  EXPECT_EQ(AsText(out[0].value), kDuneUnderMaster);
  EXPECT_EQ(out[0].from_key, 1u);
  EXPECT_EQ(out[0].to_key, 3u);
  EXPECT_EQ(out[1].outcome, RewriteOutcome::kUnchanged);
  EXPECT_EQ(out[2].outcome, RewriteOutcome::kPoison);
  EXPECT_EQ(out[2].error_class, kRailsNotJsonClass);
  EXPECT_EQ(out[3].outcome, RewriteOutcome::kPoison);
  EXPECT_EQ(out[3].error_class, kRailsTruncatedClass);
  // Under key 3 (7ee9), a target: already moved.
  EXPECT_EQ(out[4].outcome, RewriteOutcome::kUnchanged);

  const std::map<uint32_t, uint32_t> other = {{2, 1}};
  RailsRewriter narrow(&other, keys.Lookup());
  const StoredValue envelope = Value(texts[4]);
  RewrittenValue missing;
  narrow.RewriteBatch(&envelope, 1, &missing);
  EXPECT_EQ(missing.outcome, RewriteOutcome::kKeyMissing);
  EXPECT_EQ(missing.error_class, kRailsUnknownKeyClass);
  EXPECT_NE(missing.detail.find("7ee9"), std::string::npos);
}

TEST(RailsRewriterTest, OpensRailsOwnVectorAndItsResealUnderTheirKeys) {
  RailsKeys keys;
  const std::map<uint32_t, uint32_t> moves = {{1, 3}};
  RailsRewriter rewriter(&moves, keys.Lookup());
  EXPECT_TRUE(rewriter.reads_stored_text());
  const std::string source = kRailsVector, target = kDuneUnderMaster;
  const std::vector<StoredValue> values = {Value(source), Value(target)};
  std::vector<OpenedValue> out(values.size());
  rewriter.OpenBatch(values.data(), values.size(), out.data());
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_EQ(out[i].outcome, OpenOutcome::kOpened) << i;
    EXPECT_EQ(out[i].key, i == 0 ? 1u : 3u);
    ASSERT_TRUE(out[i].has_plaintext);
    EXPECT_EQ(AsText(out[i].plaintext), "Dune");
  }
}

TEST(RailsRewriterTest, OpeningATamperedTruncatedOrUnknownKeyMessageGivesTheQuarantineClass) {
  RailsKeys keys;
  const std::map<uint32_t, uint32_t> moves = {{2, 1}};
  RailsRewriter rewriter(&moves, keys.Lookup());
  std::string tampered = kRailsVector;
  tampered.replace(tampered.find("DIohhw=="), 8, "EIohhw==");
  const std::vector<std::string> texts = {tampered, std::string(kRailsVector, 30), kEnvelope};
  std::vector<StoredValue> values;
  for (const auto& t : texts) values.push_back(Value(t));
  std::vector<OpenedValue> out(values.size());
  rewriter.OpenBatch(values.data(), values.size(), out.data());
  EXPECT_EQ(out[0].outcome, OpenOutcome::kPoison);
  EXPECT_EQ(out[0].error_class, kRailsAuthFailedClass);
  EXPECT_FALSE(out[0].has_plaintext);
  EXPECT_EQ(out[1].error_class, kRailsTruncatedClass);
  // Its "i" names key 3's reference, and the job has no key 3.
  EXPECT_EQ(out[2].outcome, OpenOutcome::kKeyMissing);
  EXPECT_EQ(out[2].error_class, kRailsUnknownKeyClass);
}

}  // namespace
}  // namespace rekey::crypto
