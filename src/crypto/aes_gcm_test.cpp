#include "crypto/aes_gcm.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"

namespace rekey::crypto {
namespace {

Bytes Hex(std::string_view hex) {
  std::optional<Bytes> b = HexDecode(hex);
  EXPECT_TRUE(b.has_value()) << hex;
  return b.value_or(Bytes{});
}

AesGcmKey KeyFromHex(std::string_view hex) {
  Bytes k = Hex(hex);
  return AesGcmKey(Secret(k.data(), k.size()));
}

// Known answers from McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test cases
// 13-16 (the 256-bit key cases with 96-bit IVs). Cross-checked with python3-cryptography.
struct KnownAnswer {
  const char* name;
  const char* key;
  const char* iv;
  const char* plaintext;
  const char* ad;
  const char* ciphertext;
  const char* tag;
};

const KnownAnswer kKnownAnswers[] = {
    {"case13", "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
    {"case14", "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "00000000000000000000000000000000", "",
     "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
    {"case15", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
     "49a6b525b16aedf5aa0de657ba637b391aafd255",
     "",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b10"
     "56828838c5f61e6393ba7a0abcc9f662898015ad",
     "b094dac5d93471bdec1a502270e3cc6c"},
    {"case16", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
     "49a6b525b16aedf5aa0de657ba637b39",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b10"
     "56828838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"},
};

TEST(AesGcmTest, KnownAnswersSeal) {
  for (const KnownAnswer& ka : kKnownAnswers) {
    SCOPED_TRACE(ka.name);
    AesGcmKey key = KeyFromHex(ka.key);
    Bytes iv = Hex(ka.iv), pt = Hex(ka.plaintext), ad = Hex(ka.ad);
    Bytes out = {0xaa, 0xbb};  // Seal appends: the existing bytes must survive
    key.SealWithIv(iv.data(), pt.data(), pt.size(), ad.data(), ad.size(), &out);
    EXPECT_EQ(HexEncode(out), std::string("aabb") + ka.iv + ka.ciphertext + ka.tag);
  }
}

TEST(AesGcmTest, KnownAnswersOpen) {
  for (const KnownAnswer& ka : kKnownAnswers) {
    SCOPED_TRACE(ka.name);
    AesGcmKey key = KeyFromHex(ka.key);
    Bytes sealed = Hex(std::string(ka.iv) + ka.ciphertext + ka.tag);
    Bytes ad = Hex(ka.ad);
    Bytes pt = {1, 2, 3};  // Open replaces the contents
    ASSERT_TRUE(key.Open(sealed.data(), sealed.size(), ad.data(), ad.size(), &pt));
    EXPECT_EQ(HexEncode(pt), ka.plaintext);
  }
}

TEST(AesGcmTest, WrongSizeKeyThrowsKeyError) {
  for (size_t size : {0, 1, 16, 24, 31, 33, 64}) {
    SCOPED_TRACE(size);
    EXPECT_THROW(AesGcmKey(Secret(size)), KeyError);
  }
  EXPECT_NO_THROW(AesGcmKey(Secret(32)));
}

TEST(AesGcmTest, OpenNeverThrowsOnGarbageAndClearsPlaintext) {
  AesGcmKey key{Secret(32)};
  std::mt19937 rng(1234);
  for (size_t size = 0; size <= 200; ++size) {
    for (int trial = 0; trial < 5; ++trial) {
      Bytes garbage(size);
      for (uint8_t& b : garbage) b = uint8_t(rng());
      Bytes pt = {9, 9, 9};
      bool ok = true;
      EXPECT_NO_THROW(ok = key.Open(garbage.data(), garbage.size(), nullptr, 0, &pt)) << size;
      EXPECT_FALSE(ok) << size;
      EXPECT_TRUE(pt.empty()) << size;
    }
  }
}

TEST(AesGcmTest, RoundTripAndFreshIvs) {
  Secret secret(32);
  RandomBytes(secret.mutable_data(), secret.size());
  AesGcmKey key(secret.Clone());
  AesGcmKey other(secret.Clone());  // a second context over the same key material
  const Bytes ad = ToBytes("context");
  for (size_t size : {0, 1, 15, 16, 17, 255, 4096}) {
    SCOPED_TRACE(size);
    Bytes pt(size);
    for (size_t i = 0; i < size; ++i) pt[i] = uint8_t(i * 31);
    Bytes a, b;
    key.Seal(pt.data(), pt.size(), ad.data(), ad.size(), &a);
    key.Seal(pt.data(), pt.size(), ad.data(), ad.size(), &b);
    ASSERT_EQ(a.size(), size + kGcmIvSize + kGcmTagSize);
    EXPECT_NE(Bytes(a.begin(), a.begin() + kGcmIvSize), Bytes(b.begin(), b.begin() + kGcmIvSize))
        << "two seals reused an IV";
    Bytes out;
    ASSERT_TRUE(other.Open(a.data(), a.size(), ad.data(), ad.size(), &out));
    EXPECT_EQ(out, pt);
    ASSERT_TRUE(other.Open(b.data(), b.size(), ad.data(), ad.size(), &out));
    EXPECT_EQ(out, pt);
  }
}

// The contexts are reused across calls; a failed Open must not poison the next one.
TEST(AesGcmTest, ContextRecoversAfterFailure) {
  AesGcmKey key{Secret(32)};
  const Bytes pt = ToBytes("4111111111111111");
  Bytes sealed;
  key.Seal(pt.data(), pt.size(), nullptr, 0, &sealed);
  Bytes bad = sealed;
  bad.back() ^= 1;
  Bytes out;
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(key.Open(bad.data(), bad.size(), nullptr, 0, &out));
    ASSERT_TRUE(key.Open(sealed.data(), sealed.size(), nullptr, 0, &out));
    EXPECT_EQ(out, pt);
  }
}

TEST(AesGcmTest, AdIsAuthenticated) {
  AesGcmKey key{Secret(32)};
  const Bytes pt = ToBytes("secret");
  const Bytes ad = ToBytes("public.t.c:1");
  Bytes sealed;
  key.Seal(pt.data(), pt.size(), ad.data(), ad.size(), &sealed);
  Bytes out;
  EXPECT_FALSE(key.Open(sealed.data(), sealed.size(), nullptr, 0, &out));
  const Bytes other = ToBytes("public.t.c:2");
  EXPECT_FALSE(key.Open(sealed.data(), sealed.size(), other.data(), other.size(), &out));
  EXPECT_TRUE(key.Open(sealed.data(), sealed.size(), ad.data(), ad.size(), &out));
}

TEST(AesGcmTest, MovedKeyStillWorks) {
  Bytes k(32, 7);
  AesGcmKey a(Secret(k.data(), k.size()));
  const Bytes pt = ToBytes("x");
  Bytes sealed;
  a.Seal(pt.data(), pt.size(), nullptr, 0, &sealed);
  AesGcmKey b(std::move(a));
  Bytes out;
  ASSERT_TRUE(b.Open(sealed.data(), sealed.size(), nullptr, 0, &out));
  AesGcmKey c{Secret(32)};
  c = std::move(b);
  ASSERT_TRUE(c.Open(sealed.data(), sealed.size(), nullptr, 0, &out));
  EXPECT_EQ(out, pt);
}

TEST(AesGcmTest, RandomBytesFills) {
  uint8_t a[32] = {}, b[32] = {};
  RandomBytes(a, sizeof a);
  RandomBytes(b, sizeof b);
  EXPECT_NE(Bytes(a, a + 32), Bytes(b, b + 32));
  EXPECT_NO_THROW(RandomBytes(a, 0));
}

TEST(AesGcmTest, RandomIvsAreNeverRepeatedAcrossBuffersAndThreads) {
  std::set<Bytes> seen;
  std::mutex mu;
  auto draw = [&](int n) {
    std::vector<Bytes> mine;
    for (int i = 0; i < n; ++i) {
      Bytes iv(kGcmIvSize);
      RandomIv(iv.data());
      mine.push_back(iv);
    }
    std::lock_guard<std::mutex> lock(mu);
    for (auto& iv : mine) EXPECT_TRUE(seen.insert(iv).second) << "a nonce was handed out twice";
  };
  // Several refills of the per-thread buffer, in two threads at once.
  std::thread other(draw, 2000);
  draw(2000);
  other.join();
  EXPECT_EQ(seen.size(), 4000u);
}

TEST(AesGcmTest, AForkedChildNeverReusesItsParentsBufferedIvs) {
  uint8_t warm[kGcmIvSize];
  RandomIv(warm);  // the buffer now holds bytes the child would otherwise inherit
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    uint8_t iv[kGcmIvSize];
    RandomIv(iv);
    _exit(write(fds[1], iv, sizeof iv) == ssize_t(sizeof iv) ? 0 : 1);
  }
  uint8_t child_iv[kGcmIvSize] = {};
  ASSERT_EQ(read(fds[0], child_iv, sizeof child_iv), ssize_t(sizeof child_iv));
  int status = 0;
  waitpid(child, &status, 0);
  close(fds[0]);
  close(fds[1]);
  uint8_t parent_iv[kGcmIvSize];
  RandomIv(parent_iv);
  EXPECT_NE(Bytes(child_iv, child_iv + kGcmIvSize), Bytes(parent_iv, parent_iv + kGcmIvSize));
}

}  // namespace
}  // namespace rekey::crypto
