#include "crypto/codec.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "crypto/associated_data.h"

namespace rekey::crypto {
namespace {

using nlohmann::json;

json LoadVectors(const std::string& name) {
  std::ifstream in(std::string(REKEY_SOURCE_DIR "/tests/vectors/") + name);
  EXPECT_TRUE(in.good()) << "cannot read tests/vectors/" << name
                         << "; run /usr/bin/python3 tests/vectors/generate.py";
  return json::parse(in);
}

Bytes Hex(const json& field) {
  std::optional<Bytes> b = HexDecode(field.get<std::string>());
  EXPECT_TRUE(b.has_value()) << field;
  return b.value_or(Bytes{});
}

AesGcmKey MakeKey(const Bytes& material) {
  return AesGcmKey(Secret(material.data(), material.size()));
}

AesGcmKey RandomKey() {
  Secret s(kAesKeySize);
  RandomBytes(s.mutable_data(), s.size());
  return AesGcmKey(std::move(s));
}

// A keyring of AesGcmKeys by id, as the worker keeps per thread.
class Keyring {
 public:
  Keyring() = default;
  explicit Keyring(const json& entries) {
    for (const json& e : entries) Add(e.at("key_id").get<uint32_t>(), MakeKey(Hex(e.at("key"))));
  }
  void Add(uint32_t id, AesGcmKey key) { keys_[id] = std::make_unique<AesGcmKey>(std::move(key)); }
  AesGcmKey* Find(uint32_t id) const {
    auto it = keys_.find(id);
    return it == keys_.end() ? nullptr : it->second.get();
  }
  KeyLookup Lookup() const {
    return [this](uint32_t id) { return Find(id); };
  }

 private:
  std::map<uint32_t, std::unique_ptr<AesGcmKey>> keys_;
};

Bytes Pattern(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes b(size);
  for (uint8_t& x : b) x = uint8_t(rng());
  return b;
}

// --- names --------------------------------------------------------------------------------------

TEST(CodecTest, CodecKindNames) {
  EXPECT_EQ(ParseCodecKind("tink"), CodecKind::kTink);
  EXPECT_EQ(ParseCodecKind("raw"), CodecKind::kRaw);
  EXPECT_EQ(ParseCodecKind("vault-transit"), CodecKind::kVaultTransit);
  for (const char* bad : {"", "Tink", "RAW", "tink ", "aes", "tinkraw", "vault", "vault_transit"}) {
    EXPECT_FALSE(ParseCodecKind(bad).has_value()) << bad;
  }
  for (CodecKind k : {CodecKind::kTink, CodecKind::kRaw, CodecKind::kVaultTransit}) {
    EXPECT_EQ(ParseCodecKind(CodecKindName(k)), k);
  }
}

// These strings are stored in rekey.row_failures.error_class: they must never change.
TEST(CodecTest, DecodeStatusNamesAreStable) {
  EXPECT_EQ(DecodeStatusName(DecodeStatus::kOk), "ok");
  EXPECT_EQ(DecodeStatusName(DecodeStatus::kEmpty), "empty");
  EXPECT_EQ(DecodeStatusName(DecodeStatus::kTruncated), "truncated");
  EXPECT_EQ(DecodeStatusName(DecodeStatus::kBadPrefix), "bad_prefix");
  EXPECT_EQ(DecodeStatusName(DecodeStatus::kUnknownKey), "unknown_key");
  EXPECT_EQ(DecodeStatusName(DecodeStatus::kAuthFailed), "auth_failed");
}

TEST(CodecTest, TinkKeyId) {
  const uint8_t v[] = {0x01, 0xde, 0xad, 0xbe, 0xef, 0x00};
  EXPECT_EQ(TinkKeyId(v, 5), 0xdeadbeefu);
  EXPECT_EQ(TinkKeyId(v, 6), 0xdeadbeefu);
  for (size_t n = 0; n < 5; ++n) EXPECT_FALSE(TinkKeyId(v, n).has_value()) << n;
  for (int first = 0; first < 256; ++first) {
    if (first == 1) continue;
    const uint8_t w[] = {uint8_t(first), 0, 0, 0, 1};
    EXPECT_FALSE(TinkKeyId(w, 5).has_value()) << first;
  }
  const uint8_t max[] = {0x01, 0xff, 0xff, 0xff, 0xff};
  EXPECT_EQ(TinkKeyId(max, 5), 0xffffffffu);
}

// --- vectors from the independent Python implementation ----------------------------------------

Bytes Status(DecodeStatus s) {
  return ToBytes(DecodeStatusName(s));
}

TEST(CodecVectorsTest, TinkValid) {
  const json doc = LoadVectors("tink_aes256gcm.json");
  Keyring keyring(doc.at("keyring"));
  ASSERT_GE(doc.at("valid").size(), 32u);
  for (const json& v : doc.at("valid")) {
    SCOPED_TRACE(v.at("name").get<std::string>());
    const Bytes value = Hex(v.at("value")), ad = Hex(v.at("ad")), pt = Hex(v.at("plaintext"));
    const Bytes iv = Hex(v.at("iv"));
    const uint32_t id = v.at("key_id").get<uint32_t>();
    EXPECT_EQ(TinkKeyId(value.data(), value.size()), id);
    Bytes out;
    uint32_t got_id = 12345;
    ASSERT_EQ(Status(OpenTink(value.data(), value.size(), keyring.Lookup(), ad.data(), ad.size(),
                              &out, &got_id)),
              ToBytes("ok"));
    EXPECT_EQ(out, pt);
    EXPECT_EQ(got_id, id);
    // The other direction: sealing with the vector's IV reproduces it byte for byte.
    AesGcmKey key = MakeKey(Hex(v.at("key")));
    Bytes sealed = {0x55};
    SealTinkWithIv(id, key, iv.data(), pt.data(), pt.size(), ad.data(), ad.size(), &sealed);
    EXPECT_EQ(HexEncode(sealed), "55" + v.at("value").get<std::string>());
  }
}

TEST(CodecVectorsTest, TinkInvalid) {
  const json doc = LoadVectors("tink_aes256gcm.json");
  Keyring keyring(doc.at("keyring"));
  ASSERT_GE(doc.at("invalid").size(), 20u);
  for (const json& v : doc.at("invalid")) {
    SCOPED_TRACE(v.at("name").get<std::string>() + ": " + v.at("note").get<std::string>());
    const Bytes value = Hex(v.at("value")), ad = Hex(v.at("ad"));
    Bytes out = {1, 2, 3};
    uint32_t id = 0;
    DecodeStatus s =
        OpenTink(value.data(), value.size(), keyring.Lookup(), ad.data(), ad.size(), &out, &id);
    EXPECT_EQ(DecodeStatusName(s), v.at("status").get<std::string>());
    EXPECT_TRUE(out.empty());
  }
}

TEST(CodecVectorsTest, RawValid) {
  const json doc = LoadVectors("raw_aes256gcm.json");
  Keyring keyring(doc.at("keyring"));
  ASSERT_GE(doc.at("valid").size(), 32u);
  for (const json& v : doc.at("valid")) {
    SCOPED_TRACE(v.at("name").get<std::string>());
    const Bytes value = Hex(v.at("value")), ad = Hex(v.at("ad")), pt = Hex(v.at("plaintext"));
    const Bytes iv = Hex(v.at("iv"));
    AesGcmKey* key = keyring.Find(v.at("key_id").get<uint32_t>());
    ASSERT_NE(key, nullptr);
    Bytes out;
    ASSERT_EQ(OpenRaw(value.data(), value.size(), key, ad.data(), ad.size(), &out),
              DecodeStatus::kOk);
    EXPECT_EQ(out, pt);
    AesGcmKey fresh = MakeKey(Hex(v.at("key")));
    Bytes sealed;
    fresh.SealWithIv(iv.data(), pt.data(), pt.size(), ad.data(), ad.size(), &sealed);
    EXPECT_EQ(HexEncode(sealed), v.at("value").get<std::string>());
  }
}

TEST(CodecVectorsTest, RawInvalid) {
  const json doc = LoadVectors("raw_aes256gcm.json");
  Keyring keyring(doc.at("keyring"));
  ASSERT_GE(doc.at("invalid").size(), 15u);
  for (const json& v : doc.at("invalid")) {
    SCOPED_TRACE(v.at("name").get<std::string>() + ": " + v.at("note").get<std::string>());
    const Bytes value = Hex(v.at("value")), ad = Hex(v.at("ad"));
    Bytes out = {1, 2, 3};
    DecodeStatus s =
        OpenRaw(value.data(), value.size(), keyring.Find(v.at("key_id").get<uint32_t>()), ad.data(),
                ad.size(), &out);
    EXPECT_EQ(DecodeStatusName(s), v.at("status").get<std::string>());
    EXPECT_TRUE(out.empty());
  }
}

// The local KMS wrapping is implemented in src/kms; its format is plain AES-256-GCM, so the
// vectors are checked here at the primitive level to keep docs/FORMAT.md honest.
TEST(CodecVectorsTest, LocalWrapFormat) {
  const json doc = LoadVectors("local_wrap.json");
  ASSERT_GE(doc.at("valid").size(), 8u);
  for (const json& v : doc.at("valid")) {
    SCOPED_TRACE(v.at("name").get<std::string>());
    const Bytes wrapped = Hex(v.at("wrapped")), ad = Hex(v.at("ad"));
    const Bytes master = Hex(v.at("master_key"));
    ASSERT_EQ(wrapped.size(), 61u);
    EXPECT_EQ(wrapped[0], 0x01);
    Bytes expected_ad = ToBytes("rekey-local-wrap-v1");
    expected_ad.resize(expected_ad.size() + 4);
    PutUint32BigEndian(v.at("key_id").get<uint32_t>(), expected_ad.data() + 19);
    EXPECT_EQ(ad, expected_ad);
    EXPECT_EQ(Base64Decode(v.at("master_key_base64").get<std::string>()), master);
    AesGcmKey key = MakeKey(master);
    Bytes data_key;
    ASSERT_TRUE(key.Open(wrapped.data() + 1, wrapped.size() - 1, ad.data(), ad.size(), &data_key));
    EXPECT_EQ(data_key, Hex(v.at("data_key")));
  }
}

// --- round trips --------------------------------------------------------------------------------

TEST(CodecTest, RoundTripAllSmallSizesAndOneMebibyte) {
  Keyring keyring;
  keyring.Add(7, RandomKey());
  AesGcmKey* key = keyring.Find(7);
  const Bytes ad = ToBytes("public.payment_methods.token:42");
  std::vector<size_t> sizes;
  for (size_t n = 0; n <= 300; ++n) sizes.push_back(n);
  sizes.push_back(size_t{1} << 20);
  for (size_t n : sizes) {
    SCOPED_TRACE(n);
    const Bytes pt = Pattern(n, uint32_t(n));
    for (const Bytes& a : {Bytes{}, ad}) {
      Bytes tink, raw, out;
      SealTink(7, *key, pt.data(), pt.size(), a.data(), a.size(), &tink);
      SealRaw(*key, pt.data(), pt.size(), a.data(), a.size(), &raw);
      ASSERT_EQ(tink.size(), n + kTinkOverhead);
      ASSERT_EQ(raw.size(), n + kRawOverhead);
      EXPECT_EQ(TinkKeyId(tink.data(), tink.size()), 7u);
      uint32_t id = 0;
      ASSERT_EQ(OpenTink(tink.data(), tink.size(), keyring.Lookup(), a.data(), a.size(), &out, &id),
                DecodeStatus::kOk);
      EXPECT_EQ(out, pt);
      EXPECT_EQ(id, 7u);
      ASSERT_EQ(OpenRaw(raw.data(), raw.size(), key, a.data(), a.size(), &out), DecodeStatus::kOk);
      EXPECT_EQ(out, pt);
    }
  }
}

TEST(CodecTest, SealAppendsAndUsesFreshIvs) {
  AesGcmKey key = RandomKey();
  const Bytes pt = ToBytes("4111111111111111");
  Bytes a = {0xee}, b = {0xee};
  SealTink(1, key, pt.data(), pt.size(), nullptr, 0, &a);
  SealTink(1, key, pt.data(), pt.size(), nullptr, 0, &b);
  ASSERT_EQ(a.size(), 1 + pt.size() + kTinkOverhead);
  EXPECT_EQ(a[0], 0xee);
  EXPECT_EQ(a[1], kTinkVersionByte);
  EXPECT_NE(a, b);
  Bytes r1 = {0xee}, r2;
  SealRaw(key, pt.data(), pt.size(), nullptr, 0, &r1);
  SealRaw(key, pt.data(), pt.size(), nullptr, 0, &r2);
  ASSERT_EQ(r1.size(), 1 + pt.size() + kRawOverhead);
  EXPECT_EQ(r1[0], 0xee);
  EXPECT_NE(Bytes(r1.begin() + 1, r1.end()), r2);
}

// --- tampering ----------------------------------------------------------------------------------

// Every bit of every byte, and every byte complemented: the prefix decides between bad_prefix,
// unknown_key and (a flip that lands on another known key id) auth_failed; anything after it is
// auth_failed.
TEST(CodecTest, TinkEveryFlipFails) {
  const uint32_t id = 0x01020304;
  Keyring keyring;
  keyring.Add(id, RandomKey());
  keyring.Add(id ^ 0x01, RandomKey());        // reachable by flipping the low bit of byte 4
  keyring.Add(id ^ 0xff000000, RandomKey());  // reachable by complementing byte 1
  const Bytes ad = ToBytes("s.t.c:1");
  const Bytes pt = Pattern(40, 99);
  Bytes value;
  SealTink(id, *keyring.Find(id), pt.data(), pt.size(), ad.data(), ad.size(), &value);
  std::vector<uint8_t> masks = {0xff};
  for (int bit = 0; bit < 8; ++bit) masks.push_back(uint8_t(1 << bit));
  for (size_t i = 0; i < value.size(); ++i) {
    for (uint8_t mask : masks) {
      SCOPED_TRACE("byte " + std::to_string(i) + " mask " + std::to_string(mask));
      Bytes bad = value;
      bad[i] ^= mask;
      DecodeStatus expected = DecodeStatus::kAuthFailed;
      if (i == 0) {
        expected = DecodeStatus::kBadPrefix;
      } else if (i < kTinkPrefixSize) {
        const uint32_t flipped_id = GetUint32BigEndian(bad.data() + 1);
        expected = keyring.Find(flipped_id) ? DecodeStatus::kAuthFailed : DecodeStatus::kUnknownKey;
      }
      Bytes out;
      EXPECT_EQ(DecodeStatusName(OpenTink(bad.data(), bad.size(), keyring.Lookup(), ad.data(),
                                          ad.size(), &out, nullptr)),
                DecodeStatusName(expected));
      EXPECT_TRUE(out.empty());
    }
  }
}

TEST(CodecTest, RawEveryFlipFails) {
  AesGcmKey key = RandomKey();
  const Bytes ad = ToBytes("s.t.c:1");
  const Bytes pt = Pattern(40, 98);
  Bytes value;
  SealRaw(key, pt.data(), pt.size(), ad.data(), ad.size(), &value);
  for (size_t i = 0; i < value.size(); ++i) {
    for (int m = 0; m <= 8; ++m) {
      const uint8_t mask = m == 8 ? 0xff : uint8_t(1 << m);
      Bytes bad = value;
      bad[i] ^= mask;
      Bytes out;
      EXPECT_EQ(OpenRaw(bad.data(), bad.size(), &key, ad.data(), ad.size(), &out),
                DecodeStatus::kAuthFailed)
          << "byte " << i << " mask " << int(mask);
    }
  }
}

TEST(CodecTest, TinkEveryTruncationFails) {
  Keyring keyring;
  keyring.Add(5, RandomKey());
  const Bytes ad = ToBytes("s.t.c:1");
  for (size_t pt_size : {0, 1, 20}) {
    const Bytes pt = Pattern(pt_size, 3);
    Bytes value;
    SealTink(5, *keyring.Find(5), pt.data(), pt.size(), ad.data(), ad.size(), &value);
    Bytes unknown = value;
    PutUint32BigEndian(6, unknown.data() + 1);
    for (size_t n = 0; n < value.size(); ++n) {
      SCOPED_TRACE("pt " + std::to_string(pt_size) + " truncated to " + std::to_string(n));
      DecodeStatus expected = n == 0                ? DecodeStatus::kEmpty
                              : n < kTinkPrefixSize ? DecodeStatus::kTruncated
                              : n < kTinkOverhead   ? DecodeStatus::kTruncated
                                                    : DecodeStatus::kAuthFailed;
      Bytes out;
      uint32_t id = 0;
      EXPECT_EQ(DecodeStatusName(
                    OpenTink(value.data(), n, keyring.Lookup(), ad.data(), ad.size(), &out, &id)),
                DecodeStatusName(expected));
      EXPECT_EQ(id, n >= kTinkPrefixSize ? 5u : 0u);
      // The same value under a key id this process does not hold.
      expected = n == 0                ? DecodeStatus::kEmpty
                 : n < kTinkPrefixSize ? DecodeStatus::kTruncated
                                       : DecodeStatus::kUnknownKey;
      EXPECT_EQ(DecodeStatusName(OpenTink(unknown.data(), n, keyring.Lookup(), ad.data(), ad.size(),
                                          &out, nullptr)),
                DecodeStatusName(expected));
    }
  }
}

TEST(CodecTest, RawEveryTruncationFails) {
  AesGcmKey key = RandomKey();
  const Bytes ad = ToBytes("s.t.c:1");
  for (size_t pt_size : {0, 1, 20}) {
    const Bytes pt = Pattern(pt_size, 4);
    Bytes value;
    SealRaw(key, pt.data(), pt.size(), ad.data(), ad.size(), &value);
    for (size_t n = 0; n < value.size(); ++n) {
      SCOPED_TRACE("pt " + std::to_string(pt_size) + " truncated to " + std::to_string(n));
      DecodeStatus expected = n == 0             ? DecodeStatus::kEmpty
                              : n < kRawOverhead ? DecodeStatus::kTruncated
                                                 : DecodeStatus::kAuthFailed;
      Bytes out;
      EXPECT_EQ(DecodeStatusName(OpenRaw(value.data(), n, &key, ad.data(), ad.size(), &out)),
                DecodeStatusName(expected));
      EXPECT_EQ(DecodeStatusName(OpenRaw(value.data(), n, nullptr, ad.data(), ad.size(), &out)),
                n == 0 ? "empty" : "unknown_key");
    }
  }
}

// Associated data binds a value to its row: a value copied to another row, column or table, or
// opened without the template, must fail.
TEST(CodecTest, WrongAssociatedDataFails) {
  Keyring keyring;
  keyring.Add(1, RandomKey());
  AesGcmKey* key = keyring.Find(1);
  const AssociatedDataTemplate tmpl =
      AssociatedDataTemplate::Compile("{schema}.{table}.{column}:{pk}");
  std::string ad;
  tmpl.Render("public", "payment_methods", "token", "42", &ad);
  const Bytes pt = ToBytes("4111111111111111");
  Bytes tink, raw;
  SealTink(1, *key, pt.data(), pt.size(), reinterpret_cast<const uint8_t*>(ad.data()), ad.size(),
           &tink);
  SealRaw(*key, pt.data(), pt.size(), reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), &raw);

  std::vector<std::string> wrong = {"", ad + "0", ad.substr(0, ad.size() - 1)};
  for (const char* pk : {"43", "4", "420", " 42"}) {
    std::string s;
    tmpl.Render("public", "payment_methods", "token", pk, &s);
    wrong.push_back(s);
  }
  for (size_t i = 0; i < ad.size(); ++i) {
    std::string s = ad;
    s[i] ^= 0x20;
    wrong.push_back(s);
  }
  std::string other;
  tmpl.Render("public", "payment_methods", "cvv", "42", &other);
  wrong.push_back(other);
  tmpl.Render("archive", "payment_methods", "token", "42", &other);
  wrong.push_back(other);
  for (const std::string& w : wrong) {
    SCOPED_TRACE(w);
    const auto* w_data = reinterpret_cast<const uint8_t*>(w.data());
    Bytes out;
    EXPECT_EQ(OpenTink(tink.data(), tink.size(), keyring.Lookup(), w_data, w.size(), &out, nullptr),
              DecodeStatus::kAuthFailed);
    EXPECT_EQ(OpenRaw(raw.data(), raw.size(), key, w_data, w.size(), &out),
              DecodeStatus::kAuthFailed);
  }
  Bytes out;
  EXPECT_EQ(OpenTink(tink.data(), tink.size(), keyring.Lookup(),
                     reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), &out, nullptr),
            DecodeStatus::kOk);
}

TEST(CodecTest, WrongKeyFails) {
  Keyring right, wrong;
  right.Add(3, RandomKey());
  wrong.Add(3, RandomKey());  // same id, different material (e.g. a wrong master key)
  const Bytes pt = ToBytes("hello");
  Bytes tink, raw;
  SealTink(3, *right.Find(3), pt.data(), pt.size(), nullptr, 0, &tink);
  SealRaw(*right.Find(3), pt.data(), pt.size(), nullptr, 0, &raw);
  Bytes out;
  uint32_t id = 0;
  EXPECT_EQ(OpenTink(tink.data(), tink.size(), wrong.Lookup(), nullptr, 0, &out, &id),
            DecodeStatus::kAuthFailed);
  EXPECT_EQ(id, 3u);
  EXPECT_EQ(OpenRaw(raw.data(), raw.size(), wrong.Find(3), nullptr, 0, &out),
            DecodeStatus::kAuthFailed);
  EXPECT_EQ(OpenTink(tink.data(), tink.size(), right.Lookup(), nullptr, 0, &out, &id),
            DecodeStatus::kOk);
}

TEST(CodecTest, UnknownKeyIdReportsTheId) {
  Keyring keyring;
  keyring.Add(1, RandomKey());
  AesGcmKey other = RandomKey();
  for (uint32_t id : {0u, 2u, 0x7fffffffu, 0x80000000u, 0xffffffffu}) {
    const Bytes pt = ToBytes("x");
    Bytes value;
    SealTink(id, other, pt.data(), pt.size(), nullptr, 0, &value);
    Bytes out;
    uint32_t got = 1;
    EXPECT_EQ(OpenTink(value.data(), value.size(), keyring.Lookup(), nullptr, 0, &out, &got),
              DecodeStatus::kUnknownKey);
    EXPECT_EQ(got, id);
  }
}

TEST(CodecTest, BadPrefixLeavesKeyIdUntouchedAndNeverLooksUp) {
  int lookups = 0;
  KeyLookup counting = [&](uint32_t) {
    ++lookups;
    return nullptr;
  };
  Bytes value(50, 0x00);
  uint32_t id = 99;
  Bytes out;
  EXPECT_EQ(OpenTink(value.data(), value.size(), counting, nullptr, 0, &out, &id),
            DecodeStatus::kBadPrefix);
  EXPECT_EQ(id, 99u);
  EXPECT_EQ(lookups, 0);
}

}  // namespace
}  // namespace rekey::crypto
