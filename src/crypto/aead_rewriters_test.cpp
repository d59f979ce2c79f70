// AeadRewriter: each outcome of crypto/value_rewriter.h for Tink and raw values, checked by
// opening what it wrote with the codec itself.
#include "crypto/aead_rewriters.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace rekey::crypto {
namespace {

class AeadRewritersTest : public ::testing::Test {
 protected:
  AeadRewritersTest() {
    for (uint32_t id : {1u, 2u, 9u}) {
      Secret s(kAesKeySize);
      RandomBytes(s.mutable_data(), s.size());
      keys_.emplace(id, std::make_unique<AesGcmKey>(std::move(s)));
    }
    ad_ = AssociatedDataTemplate::Compile("{table}.{column}:{pk}");
  }

  std::unique_ptr<AeadRewriter> Rewriter(CodecKind kind) {
    return std::make_unique<AeadRewriter>(kind, TableBinding{&ad_, "public", "cards"},
                                          KeyMoves{&moves_, [this](uint32_t id) -> AesGcmKey* {
                                                     const auto it = keys_.find(id);
                                                     return it == keys_.end() ? nullptr
                                                                              : it->second.get();
                                                   }});
  }

  Bytes Seal(CodecKind kind, uint32_t key_id, const std::string& plaintext, const std::string& pk) {
    const std::string ad = "cards.token:" + pk;
    Bytes out;
    const auto* p = reinterpret_cast<const uint8_t*>(plaintext.data());
    const auto* a = reinterpret_cast<const uint8_t*>(ad.data());
    if (kind == CodecKind::kTink) {
      SealTink(key_id, *keys_.at(key_id), p, plaintext.size(), a, ad.size(), &out);
    } else {
      SealRaw(*keys_.at(key_id), p, plaintext.size(), a, ad.size(), &out);
    }
    return out;
  }

  std::string OpenTinkValue(const Bytes& value, const std::string& pk) {
    const std::string ad = "cards.token:" + pk;
    Bytes plaintext;
    const KeyLookup lookup = [this](uint32_t id) { return keys_.at(id).get(); };
    EXPECT_EQ(OpenTink(value.data(), value.size(), lookup,
                       reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), &plaintext, nullptr),
              DecodeStatus::kOk);
    return std::string(plaintext.begin(), plaintext.end());
  }

  static StoredValue Stored(const Bytes& value, const char* pk,
                            std::optional<uint32_t> row_key_id = std::nullopt) {
    return StoredValue{value.data(), value.size(), "token", pk, row_key_id};
  }

  std::map<uint32_t, std::unique_ptr<AesGcmKey>> keys_;
  std::map<uint32_t, uint32_t> moves_ = {{1, 2}};
  AssociatedDataTemplate ad_;
};

TEST_F(AeadRewritersTest, TinkValuesMoveToTheirTargetKeyAndKeepTheirBinding) {
  const Bytes under_source = Seal(CodecKind::kTink, 1, "4111-1111", "7");
  const Bytes under_target = Seal(CodecKind::kTink, 2, "done", "8");
  const Bytes under_other = Seal(CodecKind::kTink, 9, "not ours", "9");
  Bytes forged = Seal(CodecKind::kTink, 1, "x", "10");
  forged.back() ^= 1;
  const Bytes moved_row = Seal(CodecKind::kTink, 1, "copied", "11");
  const Bytes empty;
  const Bytes not_tink = {0x02, 0, 0, 0, 1, 5, 6};
  const std::vector<StoredValue> values = {Stored(under_source, "7"), Stored(under_target, "8"),
                                           Stored(under_other, "9"),  Stored(forged, "10"),
                                           Stored(moved_row, "12"),   Stored(empty, "13"),
                                           Stored(not_tink, "14")};
  std::vector<RewrittenValue> out(values.size());
  auto rewriter = Rewriter(CodecKind::kTink);
  EXPECT_EQ(rewriter->key_naming(), ValueRewriter::KeyNaming::kKeyInValue);
  rewriter->RewriteBatch(values.data(), values.size(), out.data());

  ASSERT_EQ(out[0].outcome, RewriteOutcome::kRewritten);
  EXPECT_EQ(out[0].from_key, 1u);
  EXPECT_EQ(out[0].to_key, 2u);
  EXPECT_EQ(TinkKeyId(out[0].value.data(), out[0].value.size()), 2u);
  EXPECT_EQ(OpenTinkValue(out[0].value, "7"), "4111-1111");
  EXPECT_EQ(out[1].outcome, RewriteOutcome::kUnchanged);
  EXPECT_EQ(out[2].outcome, RewriteOutcome::kUnchanged);
  const struct {
    size_t index;
    const char* error_class;
    std::optional<uint32_t> key;
  } poison[] = {{3, "auth_failed", 1},
                {4, "auth_failed", 1},
                {5, "empty", std::nullopt},
                {6, "bad_prefix", std::nullopt}};
  for (const auto& p : poison) {
    SCOPED_TRACE(p.index);
    EXPECT_EQ(out[p.index].outcome, RewriteOutcome::kPoison);
    EXPECT_EQ(out[p.index].error_class, p.error_class);
    EXPECT_EQ(out[p.index].failed_key, p.key);
  }
}

TEST_F(AeadRewritersTest, RawValuesFollowTheRowsKeyIdColumn) {
  const Bytes under_source = Seal(CodecKind::kRaw, 1, "secret", "7");
  const Bytes truncated(10, 0xab);
  const std::vector<StoredValue> values = {
      Stored(under_source, "7", 1u), Stored(under_source, "7", 2u),
      Stored(under_source, "7", std::nullopt), Stored(truncated, "8", 1u)};
  std::vector<RewrittenValue> out(values.size());
  auto rewriter = Rewriter(CodecKind::kRaw);
  EXPECT_EQ(rewriter->key_naming(), ValueRewriter::KeyNaming::kKeyInRow);
  rewriter->RewriteBatch(values.data(), values.size(), out.data());

  ASSERT_EQ(out[0].outcome, RewriteOutcome::kRewritten);
  EXPECT_EQ(out[0].to_key, 2u);
  Bytes plaintext;
  const std::string ad = "cards.token:7";
  ASSERT_EQ(OpenRaw(out[0].value.data(), out[0].value.size(), keys_.at(2).get(),
                    reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), &plaintext),
            DecodeStatus::kOk);
  EXPECT_EQ(std::string(plaintext.begin(), plaintext.end()), "secret");
  EXPECT_EQ(out[1].outcome, RewriteOutcome::kUnchanged);  // the row is under a target key
  EXPECT_EQ(out[2].outcome, RewriteOutcome::kUnchanged);  // the row names no key
  EXPECT_EQ(out[3].outcome, RewriteOutcome::kPoison);
  EXPECT_EQ(out[3].error_class, "truncated");
  EXPECT_EQ(out[3].failed_key, 1u);
}

TEST_F(AeadRewritersTest, OpeningATinkValueNamesItsKeyWhetherOrNotTheJobRotatesIt) {
  const Bytes under_source = Seal(CodecKind::kTink, 1, "4111-1111", "7");
  const Bytes under_other = Seal(CodecKind::kTink, 9, "not ours", "9");
  Bytes forged = Seal(CodecKind::kTink, 1, "x", "10");
  forged.back() ^= 1;
  const Bytes moved_row = Seal(CodecKind::kTink, 2, "copied", "11");
  Bytes unknown = Seal(CodecKind::kTink, 2, "lost", "13");
  unknown[4] = 5;  // key 5: none the keyring has
  const Bytes truncated(under_source.begin(), under_source.begin() + 20);
  const std::vector<StoredValue> values = {Stored(under_source, "7"), Stored(under_other, "9"),
                                           Stored(forged, "10"),      Stored(moved_row, "12"),
                                           Stored(unknown, "13"),     Stored(truncated, "13")};
  std::vector<OpenedValue> out(values.size());
  Rewriter(CodecKind::kTink)->OpenBatch(values.data(), values.size(), out.data());

  for (size_t i : {0, 1}) {
    ASSERT_EQ(out[i].outcome, OpenOutcome::kOpened) << i;
    ASSERT_TRUE(out[i].has_plaintext);
  }
  EXPECT_EQ(out[0].key, 1u);
  EXPECT_EQ(AsStringView(out[0].plaintext), "4111-1111");
  EXPECT_EQ(out[1].key, 9u);
  EXPECT_EQ(AsStringView(out[1].plaintext), "not ours");
  const struct {
    size_t index;
    OpenOutcome outcome;
    const char* error_class;
    uint32_t key;
  } failures[] = {{2, OpenOutcome::kPoison, "auth_failed", 1},
                  {3, OpenOutcome::kPoison, "auth_failed", 2},  // bound to another row
                  {4, OpenOutcome::kKeyMissing, "unknown_key", 5},
                  {5, OpenOutcome::kPoison, "truncated", 1}};
  for (const auto& f : failures) {
    SCOPED_TRACE(f.index);
    EXPECT_EQ(out[f.index].outcome, f.outcome);
    EXPECT_EQ(out[f.index].error_class, f.error_class);
    EXPECT_EQ(out[f.index].failed_key, f.key);
    EXPECT_FALSE(out[f.index].has_plaintext);
  }
}

TEST_F(AeadRewritersTest, OpeningARawValueUsesTheRowsKeyIdColumn) {
  const Bytes value = Seal(CodecKind::kRaw, 2, "secret", "7");
  const std::vector<StoredValue> values = {Stored(value, "7", 2u), Stored(value, "7", 1u),
                                           Stored(value, "7", 5u),
                                           Stored(value, "7", std::nullopt)};
  std::vector<OpenedValue> out(values.size());
  Rewriter(CodecKind::kRaw)->OpenBatch(values.data(), values.size(), out.data());
  ASSERT_EQ(out[0].outcome, OpenOutcome::kOpened);
  EXPECT_EQ(out[0].key, 2u);
  EXPECT_EQ(AsStringView(out[0].plaintext), "secret");
  EXPECT_EQ(out[1].error_class, "auth_failed");
  EXPECT_EQ(out[2].outcome, OpenOutcome::kKeyMissing);
  EXPECT_EQ(out[2].error_class, "unknown_key");
  EXPECT_EQ(out[3].error_class, "unknown_key");  // the row names no key
  EXPECT_EQ(out[3].failed_key, std::nullopt);
}

}  // namespace
}  // namespace rekey::crypto
