#include "kms/local_kms.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "crypto/aes_gcm.h"
#include "kms/kms_factory.h"

namespace rekey::kms {
namespace {

Secret RandomKey(size_t size = 32) {
  Secret s(size);
  crypto::RandomBytes(s.mutable_data(), s.size());
  return s;
}

std::string ToB64(const Secret& s) {
  return Base64Encode(s.data(), s.size());
}

// An environment made of a map, so tests never touch the process environment.
GetenvFn FakeEnv(std::map<std::string, std::string> vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

// A temp file removed at scope exit.
class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    char path[] = "/tmp/rekey_local_kms_test_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) std::abort();
    close(fd);
    path_ = path;
    std::ofstream(path_, std::ios::binary) << contents;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ExpectedRef(const Secret& master) {
  uint8_t digest[32];
  unsigned int n = 0;
  EXPECT_EQ(EVP_Digest(master.data(), master.size(), digest, &n, EVP_sha256(), nullptr), 1);
  return "local:" + HexEncode(digest, 8);
}

TEST(LocalKmsTest, GenerateAndUnwrapRoundTrip) {
  Secret master = RandomKey();
  std::string ref = ExpectedRef(master);
  LocalKms kms(master.Clone(), "test");
  EXPECT_EQ(kms.provider(), "local");
  EXPECT_EQ(kms.default_key_ref(), ref);
  for (uint32_t id : {0u, 1u, 7u, 0x01020304u, 4294967295u}) {
    GeneratedDataKey key = kms.GenerateDataKey(id);
    EXPECT_EQ(key.plaintext.size(), 32u);
    EXPECT_EQ(key.wrapped.size(), kLocalWrappedSize);
    EXPECT_EQ(key.wrapped[0], 0x01);
    EXPECT_EQ(key.kms_key_ref, ref);
    Secret unwrapped = kms.UnwrapDataKey(id, key.kms_key_ref, key.wrapped);
    EXPECT_TRUE(unwrapped.Equals(key.plaintext)) << id;
  }
}

TEST(LocalKmsTest, WrapIsRandomizedAndFreshKeysDiffer) {
  LocalKms kms(RandomKey(), "test");
  GeneratedDataKey a = kms.GenerateDataKey(5);
  GeneratedDataKey b = kms.GenerateDataKey(5);
  EXPECT_FALSE(a.plaintext.Equals(b.plaintext));
  GeneratedDataKey c = kms.WrapDataKey(5, a.plaintext);
  EXPECT_NE(a.wrapped, c.wrapped);  // fresh IV each time
  EXPECT_TRUE(c.plaintext.Equals(a.plaintext));
}

// The wrapping format is normative (docs/FORMAT.md): check it with the primitive directly.
TEST(LocalKmsTest, WrappingFormatMatchesSpec) {
  Secret master = RandomKey();
  LocalKms kms(master.Clone(), "test");
  Secret data_key = RandomKey();
  GeneratedDataKey wrapped = kms.WrapDataKey(0x0A0B0C0D, data_key);

  Bytes ad = ToBytes("rekey-local-wrap-v1");
  for (uint8_t b : {0x0A, 0x0B, 0x0C, 0x0D}) ad.push_back(b);
  EXPECT_EQ(ad, LocalWrapAssociatedData(0x0A0B0C0D));
  crypto::AesGcmKey cipher(master.Clone());
  Bytes plain;
  ASSERT_TRUE(cipher.Open(wrapped.wrapped.data() + 1, wrapped.wrapped.size() - 1, ad.data(),
                          ad.size(), &plain));
  EXPECT_TRUE(Secret(plain.data(), plain.size()).Equals(data_key));

  // And the other direction: a wrapping built by hand unwraps.
  Bytes manual = {0x01};
  cipher.Seal(data_key.data(), data_key.size(), ad.data(), ad.size(), &manual);
  EXPECT_TRUE(kms.UnwrapDataKey(0x0A0B0C0D, kms.default_key_ref(), manual).Equals(data_key));
}

Secret HexSecret(const std::string& hex) {
  Bytes b = *HexDecode(hex);
  return Secret(b.data(), b.size());
}

// The shared vectors of docs/FORMAT.md (tests/vectors/local_wrap.json, from generate.py).
TEST(LocalKmsTest, Vectors) {
  std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/tests/vectors/local_wrap.json");
  ASSERT_TRUE(in) << "missing tests/vectors/local_wrap.json";
  nlohmann::json vectors = nlohmann::json::parse(in);
  ASSERT_FALSE(vectors["valid"].empty());
  for (const auto& v : vectors["valid"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    LocalKms kms(FakeEnv({{"REKEY_MASTER_KEY", v["master_key_base64"].get<std::string>()}}));
    EXPECT_EQ(kms.default_key_ref(), v["kms_key_ref"].get<std::string>());
    uint32_t id = v["key_id"].get<uint32_t>();
    EXPECT_EQ(HexEncode(LocalWrapAssociatedData(id)), v["ad"].get<std::string>());
    Secret key =
        kms.UnwrapDataKey(id, v["kms_key_ref"], *HexDecode(v["wrapped"].get<std::string>()));
    EXPECT_TRUE(key.Equals(HexSecret(v["data_key"])));
  }
  ASSERT_FALSE(vectors["invalid"].empty());
  for (const auto& v : vectors["invalid"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    Secret master = HexSecret(v["master_key"]);
    std::string ref = LocalKms::KeyRefFor(master);
    LocalKms kms(std::move(master), "test");
    EXPECT_THROW(kms.UnwrapDataKey(v["key_id"].get<uint32_t>(), ref,
                                   *HexDecode(v["wrapped"].get<std::string>())),
                 KeyError);
  }
}

TEST(LocalKmsTest, WrappingIsBoundToKeyId) {
  LocalKms kms(RandomKey(), "test");
  GeneratedDataKey key = kms.GenerateDataKey(3);
  for (uint32_t other : {0u, 2u, 4u, 0x80000003u, 0x03000000u, 4294967295u}) {
    try {
      kms.UnwrapDataKey(other, key.kms_key_ref, key.wrapped);
      ADD_FAILURE() << "unwrapped under key id " << other;
    } catch (const KeyError& e) {
      EXPECT_NE(std::string(e.what()).find("data key " + std::to_string(other)), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("corrupt"), std::string::npos) << e.what();
    }
  }
}

TEST(LocalKmsTest, WrongMasterKeyNamesKeyIdAndBothFingerprints) {
  Secret old_master = RandomKey();
  Secret new_master = RandomKey();
  LocalKms old_kms(old_master.Clone(), kMasterKeyFileEnv);
  LocalKms new_kms(new_master.Clone(), kMasterKeyFileEnv);
  GeneratedDataKey key = old_kms.GenerateDataKey(3);
  try {
    new_kms.UnwrapDataKey(3, key.kms_key_ref, key.wrapped);
    FAIL() << "unwrapped with the wrong master key";
  } catch (const KeyError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg, "cannot unwrap data key 3: it was wrapped under master key " +
                       ExpectedRef(old_master) + " but REKEY_MASTER_KEY_FILE holds " +
                       ExpectedRef(new_master) +
                       "; point REKEY_MASTER_KEY_FILE at the master key used when key 3 was "
                       "created");
    EXPECT_EQ(msg.find(ToB64(old_master)), std::string::npos);
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
}

TEST(LocalKmsTest, RefOfAnotherProviderIsKeyError) {
  LocalKms kms(RandomKey(), "test");
  GeneratedDataKey key = kms.GenerateDataKey(3);
  EXPECT_THROW(kms.UnwrapDataKey(3, "aws-kms:arn:aws:kms:eu-west-1:1:key/x", key.wrapped),
               KeyError);
}

TEST(LocalKmsTest, EveryFlippedByteFails) {
  LocalKms kms(RandomKey(), "test");
  GeneratedDataKey key = kms.GenerateDataKey(11);
  for (size_t i = 0; i < key.wrapped.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xFF}) {
      Bytes bad = key.wrapped;
      bad[i] ^= mask;
      EXPECT_THROW(kms.UnwrapDataKey(11, key.kms_key_ref, bad), KeyError)
          << "byte " << i << " mask " << int(mask);
    }
  }
}

TEST(LocalKmsTest, EveryTruncationAndExtensionFails) {
  LocalKms kms(RandomKey(), "test");
  GeneratedDataKey key = kms.GenerateDataKey(11);
  for (size_t len = 0; len < key.wrapped.size(); ++len) {
    Bytes bad(key.wrapped.begin(), key.wrapped.begin() + len);
    EXPECT_THROW(kms.UnwrapDataKey(11, key.kms_key_ref, bad), KeyError) << len;
  }
  Bytes longer = key.wrapped;
  longer.push_back(0);
  EXPECT_THROW(kms.UnwrapDataKey(11, key.kms_key_ref, longer), KeyError);
}

TEST(LocalKmsTest, AuthenticWrappingOfWrongLengthKeyIsKeyError) {
  Secret master = RandomKey();
  LocalKms kms(master.Clone(), "test");
  Bytes ad = LocalWrapAssociatedData(9);
  crypto::AesGcmKey cipher(master.Clone());
  for (size_t size : {0, 16, 31, 33, 64}) {
    Bytes short_key(size, 0x42);
    Bytes wrapped = {0x01};
    cipher.Seal(short_key.data(), short_key.size(), ad.data(), ad.size(), &wrapped);
    try {
      kms.UnwrapDataKey(9, kms.default_key_ref(), wrapped);
      ADD_FAILURE() << "accepted a " << size << "-byte data key";
    } catch (const KeyError& e) {
      EXPECT_NE(std::string(e.what()).find("data key 9"), std::string::npos) << e.what();
    }
  }
}

TEST(LocalKmsTest, WrapRefusesWrongLengthKeys) {
  LocalKms kms(RandomKey(), "test");
  for (size_t size : {0, 16, 31, 33}) {
    EXPECT_THROW(kms.WrapDataKey(1, Secret(size)), KeyError) << size;
  }
}

TEST(LocalKmsTest, ConcurrentUseFromManyThreads) {
  LocalKms kms(RandomKey(), "test");
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (uint32_t t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        GeneratedDataKey key = kms.GenerateDataKey(t);
        if (!kms.UnwrapDataKey(t, key.kms_key_ref, key.wrapped).Equals(key.plaintext)) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

// --- configuration from the environment ---

TEST(LocalKmsConfigTest, MasterKeyFromVariable) {
  Secret master = RandomKey();
  LocalKms kms(FakeEnv({{"REKEY_MASTER_KEY", ToB64(master)}}));
  EXPECT_EQ(kms.default_key_ref(), ExpectedRef(master));
  EXPECT_NE(kms.Describe().find(ExpectedRef(master)), std::string::npos);
  EXPECT_EQ(kms.Describe().find(ToB64(master)), std::string::npos);
}

TEST(LocalKmsConfigTest, MasterKeyFileRawOrBase64) {
  Secret master = RandomKey();
  std::string raw(reinterpret_cast<const char*>(master.data()), master.size());
  for (const std::string& contents :
       {raw, ToB64(master), ToB64(master) + "\n", "  " + ToB64(master) + "\r\n"}) {
    TempFile file(contents);
    LocalKms kms(FakeEnv({{"REKEY_MASTER_KEY_FILE", file.path()}}));
    EXPECT_EQ(kms.default_key_ref(), ExpectedRef(master)) << contents.size();
    // A key wrapped under the file's key unwraps under the same key given as a variable.
    GeneratedDataKey key = kms.GenerateDataKey(1);
    LocalKms same(FakeEnv({{"REKEY_MASTER_KEY", ToB64(master)}}));
    EXPECT_TRUE(same.UnwrapDataKey(1, key.kms_key_ref, key.wrapped).Equals(key.plaintext));
  }
}

TEST(LocalKmsConfigTest, BadConfigurationsAreConfigErrorsWithoutKeyBytes) {
  Secret master = RandomKey();
  std::string b64 = ToB64(master);
  Secret short_key = RandomKey(16);
  Secret long_key = RandomKey(33);
  std::string short_raw(reinterpret_cast<const char*>(short_key.data()), short_key.size());
  TempFile short_file(short_raw);
  TempFile long_file(std::string(reinterpret_cast<const char*>(long_key.data()), 33));
  TempFile bad_text_file("this is not a key at all!");
  TempFile b64_short_file(ToB64(short_key));
  TempFile empty_file("");

  struct Case {
    std::string name;
    std::map<std::string, std::string> env;
    std::string must_contain;
    std::vector<std::string> must_not_contain;
  };
  std::vector<Case> cases = {
      {"neither", {}, "no master key: set REKEY_MASTER_KEY_FILE", {}},
      {"both empty",
       {{"REKEY_MASTER_KEY", ""}, {"REKEY_MASTER_KEY_FILE", ""}},
       "no master key",
       {}},
      {"both set",
       {{"REKEY_MASTER_KEY", b64}, {"REKEY_MASTER_KEY_FILE", short_file.path()}},
       "both REKEY_MASTER_KEY and REKEY_MASTER_KEY_FILE",
       {b64}},
      {"bad base64", {{"REKEY_MASTER_KEY", "sekret-not-base64!!"}}, "not valid base64", {"sekret"}},
      {"short base64",
       {{"REKEY_MASTER_KEY", ToB64(short_key)}},
       "decodes to 16 bytes",
       {ToB64(short_key)}},
      {"long base64",
       {{"REKEY_MASTER_KEY", ToB64(long_key)}},
       "decodes to 33 bytes",
       {ToB64(long_key)}},
      {"raw 32 bytes in the variable",
       {{"REKEY_MASTER_KEY", "0123456789abcdef0123456789abcdef"}},
       "REKEY_MASTER_KEY",
       {"0123456789abcdef"}},
      {"missing file",
       {{"REKEY_MASTER_KEY_FILE", "/nonexistent/rekey/master.key"}},
       "cannot read REKEY_MASTER_KEY_FILE /nonexistent/rekey/master.key",
       {}},
      {"short raw file", {{"REKEY_MASTER_KEY_FILE", short_file.path()}}, short_file.path(), {}},
      {"33-byte raw file", {{"REKEY_MASTER_KEY_FILE", long_file.path()}}, long_file.path(), {}},
      {"text file",
       {{"REKEY_MASTER_KEY_FILE", bad_text_file.path()}},
       "not valid base64",
       {"this is not"}},
      {"short base64 file",
       {{"REKEY_MASTER_KEY_FILE", b64_short_file.path()}},
       "decodes to 16 bytes",
       {ToB64(short_key)}},
      {"empty file", {{"REKEY_MASTER_KEY_FILE", empty_file.path()}}, "decodes to 0 bytes", {}},
  };
  for (const Case& c : cases) {
    try {
      LocalKms kms(FakeEnv(c.env));
      ADD_FAILURE() << c.name << ": accepted";
    } catch (const ConfigError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(c.must_contain), std::string::npos) << c.name << ": " << msg;
      for (const std::string& secret : c.must_not_contain) {
        EXPECT_EQ(msg.find(secret), std::string::npos) << c.name << ": " << msg;
      }
      EXPECT_EQ(msg.find(short_raw), std::string::npos) << c.name;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << c.name << ": " << msg;
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.name << ": wrong exception type: " << e.what();
    }
  }
}

TEST(LocalKmsConfigTest, NoMasterKeyMessageIsExact) {
  try {
    LocalKms kms(FakeEnv({}));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "no master key: set REKEY_MASTER_KEY_FILE to a file holding 32 random bytes "
                 "(e.g. `head -c32 /dev/urandom > master.key`) or REKEY_MASTER_KEY to their "
                 "base64");
  }
}

TEST(KmsFactoryTest, ProvidersByName) {
  Secret master = RandomKey();
  auto env = FakeEnv({{"REKEY_MASTER_KEY", ToB64(master)}});
  std::unique_ptr<KmsClient> kms = MakeKmsClient("local", env);
  EXPECT_EQ(kms->provider(), "local");
  EXPECT_EQ(kms->default_key_ref(), ExpectedRef(master));
  // A remote provider without its configuration is a ConfigError naming what to set; building
  // one makes no network call.
  try {
    MakeKmsClient("aws-kms", env);
    ADD_FAILURE() << "aws-kms without a region";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("AWS_REGION"), std::string::npos) << e.what();
  }
  try {
    MakeKmsClient("vault-transit", env);
    ADD_FAILURE() << "vault-transit without VAULT_ADDR";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("VAULT_ADDR"), std::string::npos) << e.what();
  }
  auto vault_env = FakeEnv({{"VAULT_ADDR", "https://vault.example:8200"},
                            {"VAULT_TOKEN", "s.x"},
                            {"REKEY_VAULT_TRANSIT_KEY", "rekey"}});
  std::unique_ptr<KmsClient> vault = MakeKmsClient("vault-transit", vault_env);
  EXPECT_EQ(vault->provider(), "vault-transit");
  EXPECT_EQ(vault->default_key_ref(), "transit/keys/rekey");
  EXPECT_THROW(MakeKmsClient("gcp", env), ConfigError);
  EXPECT_THROW(MakeKmsClient("local", FakeEnv({})), ConfigError);
}

}  // namespace
}  // namespace rekey::kms
