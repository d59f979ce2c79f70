// The Tink keyset codec against keysets and ciphertexts Google's JavaScript Tink produced
// (tests/tink/vectors.json, written by tests/tink/make_vectors.mjs with tink-crypto 0.1.1) and a
// keyset Java Tink wrote in both its JSON and binary forms.
#include "keyring/tink_keyset.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "crypto/codec.h"
#include "kms/local_kms.h"

namespace rekey::keyring::tink {
namespace {

// The vectors array (a value, not a reference into a temporary: range-for over it is safe).
nlohmann::json Vectors() {
  std::ifstream in(REKEY_SOURCE_DIR "/tests/tink/vectors.json");
  return nlohmann::json::parse(in)["vectors"];
}

nlohmann::json Vector(const std::string& name) {
  for (const nlohmann::json& v : Vectors()) {
    if (v["name"] == name) return v;
  }
  ADD_FAILURE() << "no vector " << name;
  return {};
}

std::string Unhex(const std::string& hex) {
  std::optional<Bytes> b = HexDecode(hex);
  EXPECT_TRUE(b.has_value()) << hex;
  return b ? std::string(b->begin(), b->end()) : std::string();
}

std::string Str(const Secret& s) {
  return std::string(reinterpret_cast<const char*>(s.data()), s.size());
}

Secret SecretOf(const std::string& s) {
  return Secret(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

Keyset Cleartext(const std::string& contents) {
  KeysetFile file = ReadKeysetFile(contents);
  EXPECT_TRUE(file.cleartext.has_value());
  EXPECT_FALSE(file.encrypted.has_value());
  return file.cleartext ? std::move(*file.cleartext) : Keyset{};
}

std::string KeyErrorOf(const std::string& vector) {
  Keyset keyset = Cleartext(Unhex(Vector(vector)["keyset_hex"]));
  try {
    AdoptableAesGcmKeys(keyset);
  } catch (const KeyError& e) {
    return e.what();
  }
  ADD_FAILURE() << vector << " was adopted";
  return "";
}

TEST(TinkKeysetTest, ReadsEveryKeysetTinkCryptoWroteAndWritesTheSameBytes) {
  int read = 0;
  for (const nlohmann::json& v : Vectors()) {
    SCOPED_TRACE(v["name"].get<std::string>());
    if (!v.contains("keys")) continue;
    const std::string bytes = Unhex(v["keyset_hex"]);
    Keyset keyset = Cleartext(bytes);
    EXPECT_EQ(keyset.primary_key_id, v["primary_key_id"].get<uint32_t>());
    ASSERT_EQ(keyset.keys.size(), v["keys"].size());
    for (size_t i = 0; i < keyset.keys.size(); i++) {
      const nlohmann::json& want = v["keys"][i];
      EXPECT_EQ(keyset.keys[i].key_id, want["key_id"].get<uint32_t>());
      EXPECT_EQ(keyset.keys[i].type_url, want["type_url"].get<std::string>());
      EXPECT_EQ(static_cast<uint32_t>(keyset.keys[i].status), want["status"].get<uint32_t>());
      EXPECT_EQ(static_cast<uint32_t>(keyset.keys[i].prefix),
                want["output_prefix_type"].get<uint32_t>());
      EXPECT_EQ(keyset.keys[i].material, KeyMaterial::kSymmetric);
    }
    // The writer produces Tink's own encoding, byte for byte.
    EXPECT_EQ(HexEncode(SerializeKeyset(keyset).data(), SerializeKeyset(keyset).size()),
              v["keyset_hex"].get<std::string>());
    read++;
  }
  EXPECT_EQ(read, 6);
}

TEST(TinkKeysetTest, AdoptsAes256GcmKeysWithTheirIdsAndThePrimary) {
  const nlohmann::json v = Vector("aes256_gcm_two_keys");
  std::vector<ExchangedKey> keys = AdoptableAesGcmKeys(Cleartext(Unhex(v["keyset_hex"])));
  ASSERT_EQ(keys.size(), 2u);
  for (size_t i = 0; i < 2; i++) {
    EXPECT_EQ(keys[i].key_id, v["keys"][i]["key_id"].get<uint32_t>());
    EXPECT_EQ(HexEncode(keys[i].key.data(), keys[i].key.size()),
              v["keys"][i]["key_hex"].get<std::string>());
  }
  EXPECT_FALSE(keys[0].primary);
  EXPECT_TRUE(keys[1].primary);
  EXPECT_EQ(keys[1].key_id, v["primary_key_id"].get<uint32_t>());

  // Rebuilt from the adopted keys, the keyset is the one Tink wrote.
  Keyset rebuilt = AesGcmKeyset(keys);
  Secret bytes = SerializeKeyset(rebuilt);
  EXPECT_EQ(HexEncode(bytes.data(), bytes.size()), v["keyset_hex"].get<std::string>());
}

// A Tink ciphertext is a rekey tink value: rekey's codec opens it with the adopted key under the
// same associated data, and the key id in its prefix is the Tink key id.
TEST(TinkKeysetTest, TinkCiphertextsAreRekeysWireFormat) {
  int opened = 0;
  for (const char* name : {"aes256_gcm_single", "aes256_gcm_two_keys"}) {
    const nlohmann::json v = Vector(name);
    std::vector<ExchangedKey> keys = AdoptableAesGcmKeys(Cleartext(Unhex(v["keyset_hex"])));
    std::map<uint32_t, crypto::AesGcmKey> by_id;
    for (ExchangedKey& k : keys) by_id.emplace(k.key_id, crypto::AesGcmKey(std::move(k.key)));
    crypto::KeyLookup lookup = [&](uint32_t id) -> crypto::AesGcmKey* {
      auto it = by_id.find(id);
      return it == by_id.end() ? nullptr : &it->second;
    };
    for (const nlohmann::json& c : v["ciphertexts"]) {
      const std::string value = Unhex(c["ciphertext_hex"]);
      const std::string ad = c["ad"];
      Bytes plaintext;
      uint32_t key_id = 0;
      const auto* data = reinterpret_cast<const uint8_t*>(value.data());
      EXPECT_EQ(
          crypto::OpenTink(data, value.size(), lookup, reinterpret_cast<const uint8_t*>(ad.data()),
                           ad.size(), &plaintext, &key_id),
          crypto::DecodeStatus::kOk);
      EXPECT_EQ(std::string(plaintext.begin(), plaintext.end()), c["plaintext"].get<std::string>());
      EXPECT_TRUE(by_id.count(key_id));
      // Without the associated data the application passed, it does not open.
      if (!ad.empty()) {
        EXPECT_EQ(crypto::OpenTink(data, value.size(), lookup, nullptr, 0, &plaintext, nullptr),
                  crypto::DecodeStatus::kAuthFailed);
      }
      opened++;
    }
  }
  EXPECT_EQ(opened, 4);
}

TEST(TinkKeysetTest, RefusesWhatRekeyCannotAdoptSayingWhatToDo) {
  EXPECT_NE(KeyErrorOf("aes128_gcm").find("is AES-128-GCM (a 16-byte key)"), std::string::npos);
  EXPECT_NE(KeyErrorOf("aes256_gcm_raw_prefix").find("has output prefix RAW"), std::string::npos);
  EXPECT_NE(KeyErrorOf("aes256_ctr_hmac").find("google.crypto.tink.AesCtrHmacAeadKey"),
            std::string::npos);
  EXPECT_NE(KeyErrorOf("aes256_gcm_disabled").find("is DISABLED"), std::string::npos);
  for (const char* name :
       {"aes128_gcm", "aes256_gcm_raw_prefix", "aes256_ctr_hmac", "aes256_gcm_disabled"}) {
    std::string message = KeyErrorOf(name);
    EXPECT_NE(message.find("import again"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(TinkKeysetTest, RefusesAPrimaryThatNamesNoKeyAndDuplicateIds) {
  Keyset keyset = Cleartext(Unhex(Vector("aes256_gcm_two_keys")["keyset_hex"]));
  keyset.primary_key_id ^= 1;
  EXPECT_THROW(AdoptableAesGcmKeys(keyset), KeyError);
  keyset = Cleartext(Unhex(Vector("aes256_gcm_two_keys")["keyset_hex"]));
  keyset.keys[1].key_id = keyset.keys[0].key_id;
  keyset.primary_key_id = keyset.keys[0].key_id;
  EXPECT_THROW(AdoptableAesGcmKeys(keyset), KeyError);
  // A destroyed key has no material: left out, the others adopted.
  keyset = Cleartext(Unhex(Vector("aes256_gcm_two_keys")["keyset_hex"]));
  keyset.keys[0].status = KeyStatus::kDestroyed;
  keyset.keys[0].type_url.clear();
  EXPECT_EQ(AdoptableAesGcmKeys(keyset).size(), 1u);
}

// Written by Java Tink's JsonKeysetWriter (published in RyuNen344/tink-kmm, KeysetWriterTest.kt).
constexpr char kJavaJson[] =
    R"({"primaryKeyId":1767300617,"key":[{"keyData":{"typeUrl":"type.googleapis.com/google.crypto.tink.AesGcmKey","value":"GiBu+loXsyc7a9yiDs1AFIsw6XlhZGkCgWIRaHWoLMsQiQ==","keyMaterialType":"SYMMETRIC"},"status":"ENABLED","keyId":1767300617,"outputPrefixType":"TINK"}]})";

TEST(TinkKeysetTest, ReadsJavaTinksJsonAndWritesItTheSameWay) {
  Keyset from_json = Cleartext(kJavaJson);
  Secret json_as_binary = SerializeKeyset(from_json);
  EXPECT_EQ(from_json.primary_key_id, 1767300617u);
  std::vector<ExchangedKey> keys = AdoptableAesGcmKeys(from_json);
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0].key_id, 1767300617u);
  EXPECT_TRUE(keys[0].primary);
  EXPECT_EQ(HexEncode(keys[0].key.data(), keys[0].key.size()),
            "6efa5a17b3273b6bdca20ecd40148b30e979616469028162116875a82ccb1089");

  // rekey's JSON reads back to the same keyset, and names every field as Tink does.
  Secret json = KeysetJson(from_json);
  nlohmann::json parsed = nlohmann::json::parse(Str(json));
  EXPECT_EQ(parsed, nlohmann::json::parse(kJavaJson));
  Secret again = SerializeKeyset(Cleartext(Str(json)));
  EXPECT_EQ(Str(again), Str(json_as_binary));
}

TEST(TinkKeysetTest, JsonTakesIdsAsTextAndEnumsAsNumbers) {
  Keyset keyset = Cleartext(
      R"({"primaryKeyId":"4294967295","key":[{"keyData":{"typeUrl":"type.googleapis.com/google.crypto.tink.AesGcmKey",)"
      R"("value":"GiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw==","keyMaterialType":1},)"
      R"("status":1,"keyId":4294967295,"outputPrefixType":"TINK"}]})");
  std::vector<ExchangedKey> keys = AdoptableAesGcmKeys(keyset);
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0].key_id, 4294967295u);
  EXPECT_TRUE(keys[0].primary);
  EXPECT_EQ(HexEncode(keys[0].key.data(), keys[0].key.size()),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
}

TEST(TinkKeysetTest, OpensAnEncryptedKeysetOnlyWithItsMasterKey) {
  const nlohmann::json v = Vector("encrypted_two_keys");
  KeysetFile file = ReadKeysetFile(Unhex(v["encrypted_keyset_hex"]));
  ASSERT_TRUE(file.encrypted.has_value());
  EXPECT_FALSE(file.cleartext.has_value());
  ASSERT_EQ(file.encrypted->info.keys.size(), 2u);
  EXPECT_EQ(file.encrypted->info.keys[0].type_url, kAesGcmTypeUrl);

  crypto::AesGcmKey master(SecretOf(Unhex(v["master_key_hex"])));
  Secret opened = SerializeKeyset(DecryptKeyset(*file.encrypted, master));
  EXPECT_EQ(HexEncode(opened.data(), opened.size()), v["keyset_hex"].get<std::string>());
  // rekey writes the same message Tink's proto classes wrote, but for the random IV.
  EXPECT_EQ(HexEncode(SerializeEncryptedKeyset(*file.encrypted)),
            v["encrypted_keyset_hex"].get<std::string>());

  std::string other_key(32, '\x07');
  crypto::AesGcmKey wrong(SecretOf(other_key));
  try {
    DecryptKeyset(*file.encrypted, wrong);
    ADD_FAILURE() << "opened under another master key";
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("does not open under this key-encryption key"),
              std::string::npos);
  }
}

// --kms local: the KMS key is the master key itself, so Tink's vector opens through LocalKms's
// EncryptBlob/DecryptBlob, and what LocalKms seals opens under the raw master key as Tink's AesGcm.
TEST(TinkKeysetTest, TheLocalKmsKeyIsTheMasterKeyAsARawAesGcmAead) {
  const nlohmann::json v = Vector("encrypted_two_keys");
  KeysetFile file = ReadKeysetFile(Unhex(v["encrypted_keyset_hex"]));
  ASSERT_TRUE(file.encrypted.has_value());
  auto local = [](const std::string& master_hex) {
    KeysetKek kek;
    kek.kms = std::make_unique<kms::LocalKms>(SecretOf(Unhex(master_hex)), "test");
    kek.key_ref = kek.kms->default_key_ref();
    return kek;
  };
  KeysetKek kek = local(v["master_key_hex"]);
  Secret opened = SerializeKeyset(DecryptKeyset(*file.encrypted, kek));
  EXPECT_EQ(HexEncode(opened.data(), opened.size()), v["keyset_hex"].get<std::string>());

  EncryptedKeyset sealed = EncryptKeyset(DecryptKeyset(*file.encrypted, kek), kek);
  crypto::AesGcmKey master(SecretOf(Unhex(v["master_key_hex"])));
  Secret again = SerializeKeyset(DecryptKeyset(sealed, master));
  EXPECT_EQ(HexEncode(again.data(), again.size()), v["keyset_hex"].get<std::string>());

  // Another master key, or a key ref naming another master key: refused, saying what to pass.
  KeysetKek other = local(std::string(64, '7'));
  try {
    DecryptKeyset(*file.encrypted, other);
    ADD_FAILURE() << "opened under another master key";
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("does not open under this key-encryption key"),
              std::string::npos)
        << e.what();
  }
  other.key_ref = kek.key_ref;
  EXPECT_THROW(DecryptKeyset(*file.encrypted, other), KeyError);
  EXPECT_THROW(EncryptKeyset(DecryptKeyset(*file.encrypted, kek), other), KeyError);
}

TEST(TinkKeysetTest, EncryptsAsTinkDoesAndReadsItBackInBothForms) {
  const nlohmann::json v = Vector("aes256_gcm_two_keys");
  Keyset keyset = Cleartext(Unhex(v["keyset_hex"]));
  crypto::AesGcmKey kek(SecretOf(std::string(32, '\x42')));
  EncryptedKeyset sealed = EncryptKeyset(keyset, kek);
  EXPECT_EQ(sealed.encrypted_keyset.size(),
            Unhex(v["keyset_hex"]).size() + crypto::kGcmIvSize + crypto::kGcmTagSize);
  EXPECT_EQ(sealed.info.primary_key_id, keyset.primary_key_id);

  Bytes binary = SerializeEncryptedKeyset(sealed);
  const std::string forms[] = {std::string(binary.begin(), binary.end()),
                               EncryptedKeysetJson(sealed)};
  for (const std::string& form : forms) {
    KeysetFile file = ReadKeysetFile(form);
    ASSERT_TRUE(file.encrypted.has_value());
    Secret back = SerializeKeyset(DecryptKeyset(*file.encrypted, kek));
    EXPECT_EQ(HexEncode(back.data(), back.size()), v["keyset_hex"].get<std::string>());
    EXPECT_EQ(file.encrypted->info.keys.size(), 2u);
    EXPECT_EQ(file.encrypted->info.keys[1].key_id, keyset.keys[1].key_id);
  }
  // An EncryptedKeyset without keyset_info is still recognised.
  sealed.info = Keyset{};
  Bytes bare = SerializeEncryptedKeyset(sealed);
  EXPECT_TRUE(ReadKeysetFile(std::string(bare.begin(), bare.end())).encrypted.has_value());
}

TEST(TinkKeysetTest, MalformedFilesAreKeyErrorsThatQuoteNothing) {
  const std::string good = Unhex(Vector("aes256_gcm_single")["keyset_hex"]);
  const std::string cases[] = {
      "",
      good.substr(0, good.size() - 3),  // a field runs past the end
      std::string("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12),  // varint > 10 bytes
      std::string("\x0b", 1),                                               // a group
      "{\"primaryKeyId\": 1",                                               // broken JSON
      "{\"primaryKeyId\": 1, \"key\": []}",                                 // no key
      "{\"key\": [{\"keyData\": {\"value\": \"!!\"}}]}",
      "{\"key\": [{\"keyId\": -1}]}",
      "{\"key\": [{\"status\": \"SHINY\"}]}",
  };
  for (const std::string& c : cases) {
    SCOPED_TRACE(c);
    try {
      ReadKeysetFile(c);
      ADD_FAILURE() << "read";
    } catch (const KeyError& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
      EXPECT_NE(std::string(e.what()).find("Tink"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace rekey::keyring::tink
