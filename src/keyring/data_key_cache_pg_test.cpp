#include "keyring/data_key_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "crypto/aes_gcm.h"
#include "db/connection.h"
#include "harness/pg_server.h"
#include "keyring/keyring.h"
#include "kms/local_kms.h"

namespace rekey::keyring {
namespace {

Secret RandomKey() {
  Secret s(32);
  crypto::RandomBytes(s.mutable_data(), s.size());
  return s;
}

// Counts unwraps per key on top of the real local provider; can be made slow so concurrent
// misses really overlap.
class CountingKms : public kms::KmsClient {
 public:
  explicit CountingKms(kms::KmsClient& inner) : inner_(inner) {}
  std::string provider() const override { return inner_.provider(); }
  std::string default_key_ref() const override { return inner_.default_key_ref(); }
  kms::GeneratedDataKey GenerateDataKey(uint32_t id) override { return inner_.GenerateDataKey(id); }
  kms::GeneratedDataKey WrapDataKey(uint32_t id, const Secret& p) override {
    return inner_.WrapDataKey(id, p);
  }
  Secret UnwrapDataKey(uint32_t id, const std::string& ref, const Bytes& wrapped) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_[id]++;
    }
    if (slow_) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return inner_.UnwrapDataKey(id, ref, wrapped);
  }
  std::string Describe() override { return inner_.Describe(); }

  int calls(uint32_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_[id];
  }
  void set_slow(bool slow) { slow_ = slow; }

 private:
  kms::KmsClient& inner_;
  std::mutex mu_;
  std::map<uint32_t, int> calls_;
  std::atomic<bool> slow_{false};
};

class DataKeyCacheTest : public rekey::testing::PgTest {
 protected:
  DataKeyCacheTest() : local_(RandomKey(), "test master key"), counting_(local_) {}

  // Imports known keys 1..n so results can be checked.
  std::vector<Secret> ImportKeys(uint32_t n) {
    std::vector<Secret> keys;
    pqxx::work txn(conn());
    for (uint32_t id = 1; id <= n; ++id) {
      keys.push_back(RandomKey());
      ImportKey(txn, local_, id, "default", keys.back());
    }
    txn.commit();
    return keys;
  }

  DataKeyCache::ConnectionFactory Factory() {
    return [this] { return std::make_unique<pqxx::connection>(conninfo()); };
  }

  kms::LocalKms local_;
  CountingKms counting_;
};

TEST_F(DataKeyCacheTest, ManyThreadsOneKmsCallPerKey) {
  constexpr uint32_t kKeys = 4;
  constexpr int kThreads = 8;
  constexpr int kGetsPerThread = 50;
  std::vector<Secret> keys = ImportKeys(kKeys);
  counting_.set_slow(true);  // first misses overlap for real
  DataKeyCache cache(Factory(), counting_);

  std::mutex mu;
  std::condition_variable cv;
  bool go = false;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return go; });
      }
      for (int i = 0; i < kGetsPerThread; ++i) {
        uint32_t id = 1 + static_cast<uint32_t>((t + i) % kKeys);
        Secret key = cache.Get(id);
        if (!key.Equals(keys[id - 1])) wrong++;
      }
    });
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    go = true;
  }
  cv.notify_all();
  for (auto& th : threads) th.join();

  EXPECT_EQ(wrong.load(), 0);
  for (uint32_t id = 1; id <= kKeys; ++id) EXPECT_EQ(counting_.calls(id), 1) << "key " << id;
  EXPECT_EQ(cache.kms_calls(), kKeys);
  EXPECT_EQ(cache.misses(), kKeys);
  EXPECT_EQ(cache.hits(), uint64_t{kThreads * kGetsPerThread} - kKeys);
}

TEST_F(DataKeyCacheTest, ReturnsIndependentClones) {
  std::vector<Secret> keys = ImportKeys(1);
  DataKeyCache cache(conninfo(), counting_);
  Secret a = cache.Get(1);
  a.mutable_data()[0] ^= 0xFF;  // a caller scribbling on its copy does not reach the cache
  EXPECT_TRUE(cache.Get(1).Equals(keys[0]));
  EXPECT_EQ(cache.kms_calls(), 1u);
}

TEST_F(DataKeyCacheTest, UnknownKeyIsKeyErrorAndNotCached) {
  DataKeyCache cache(Factory(), counting_);
  EXPECT_THROW(cache.Get(1), KeyError);
  EXPECT_THROW(cache.Get(1), KeyError);
  EXPECT_EQ(cache.misses(), 2u);  // the failure was not cached
  EXPECT_EQ(cache.kms_calls(), 0u);
  std::vector<Secret> keys = ImportKeys(1);
  EXPECT_TRUE(cache.Get(1).Equals(keys[0]));
}

TEST_F(DataKeyCacheTest, DestroyedKeyIsRefused) {
  ImportKeys(1);
  Exec("UPDATE rekey.keys SET status = 'retired' WHERE key_id = 1");
  Exec("UPDATE rekey.keys SET status = 'destroyed' WHERE key_id = 1");
  DataKeyCache cache(Factory(), counting_);
  try {
    cache.Get(1);
    FAIL();
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("key 1 is destroyed"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.kms_calls(), 0u);
}

TEST_F(DataKeyCacheTest, WrongMasterKeyFailsEveryWaiterAndIsRetried) {
  ImportKeys(1);
  kms::LocalKms other(RandomKey(), kms::kMasterKeyFileEnv);
  CountingKms counting_other(other);
  counting_other.set_slow(true);
  DataKeyCache cache(Factory(), counting_other);
  std::atomic<int> key_errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      try {
        cache.Get(1);
      } catch (const KeyError& e) {
        if (std::string(e.what()).find("data key 1") != std::string::npos) key_errors++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(key_errors.load(), 4);
  int calls = counting_other.calls(1);
  EXPECT_GE(calls, 1);
  EXPECT_THROW(cache.Get(1), KeyError);
  EXPECT_EQ(counting_other.calls(1), calls + 1);  // a failed load is retried, not cached
}

TEST_F(DataKeyCacheTest, EvictForcesReload) {
  std::vector<Secret> keys = ImportKeys(2);
  DataKeyCache cache(Factory(), counting_);
  cache.Get(1);
  cache.Get(2);
  cache.Evict(1);
  EXPECT_TRUE(cache.Get(1).Equals(keys[0]));
  EXPECT_TRUE(cache.Get(2).Equals(keys[1]));
  EXPECT_EQ(counting_.calls(1), 2);
  EXPECT_EQ(counting_.calls(2), 1);
}

TEST_F(DataKeyCacheTest, UnreachableDatabaseIsTransient) {
  DataKeyCache cache("postgresql://u:sekret@127.0.0.1:1/x", counting_);
  try {
    cache.Get(1);
    FAIL();
  } catch (const TransientError& e) {
    EXPECT_EQ(std::string(e.what()).find("sekret"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rekey::keyring
