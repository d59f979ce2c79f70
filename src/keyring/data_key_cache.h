// The process-wide cache of unwrapped data keys.
//
// Unwrapping costs a KMS round trip (and, for cloud KMSs, money and rate limit), so each data key
// is unwrapped at most once per process while it is cached: Get() loads the wrapped key from
// rekey.keys and unwraps it through the KMS its row names (kms_provider, resolved by the
// KmsResolver) on the first request, and serves Clones afterwards. Concurrent first requests for
// one key share a single load; loads of different keys run in parallel.
//
// A failed load (unknown or destroyed key, KMS error, database error) is not cached: every
// caller waiting on it gets the error, and the next Get() tries again.
//
// Bounds (CacheOptions): an entry older than `ttl` (counted from the start of its load) is
// dropped on its next lookup and loaded again, so a key disabled in the KMS stops working within
// one TTL; beyond `max_entries` the least recently used entry is dropped. Dropped Secrets wipe
// themselves as soon as no Get() is still copying from them.
//
// Thread-safety: all methods are thread-safe. One DataKeyCache per process.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <pqxx/pqxx>

#include "common/secret.h"
#include "kms/kms_client.h"

namespace rekey::keyring {

struct CacheOptions {
  std::optional<std::chrono::seconds> ttl;  // nullopt: entries never expire
  size_t max_entries = 0;                   // 0: unbounded
  // Injectable for tests.
  std::function<std::chrono::steady_clock::time_point()> clock = std::chrono::steady_clock::now;
};

// The cache bounds of a `rekey` process, from the environment over these defaults:
//   REKEY_KEY_CACHE_TTL_SECONDS   entry lifetime (default 3600; 0 = never expire)
//   REKEY_KEY_CACHE_MAX_ENTRIES   entries kept (default 1000; 0 = unbounded)
// Throws ConfigError naming the variable for a value that is not an integer >= 0.
CacheOptions CacheOptionsFromEnv(const kms::GetenvFn& getenv = kms::ProcessGetenv);

class DataKeyCache {
 public:
  // Opens a database connection; called when a load needs one (at most one at a time).
  using ConnectionFactory = std::function<std::unique_ptr<pqxx::connection>()>;
  // Returns the client for a rekey.keys.kms_provider value (e.g. KmsRegistry::Resolver()); throws
  // ConfigError/KeyError if that provider cannot be used. Returned clients outlive the cache.
  using KmsResolver = std::function<kms::KmsClient&(const std::string& provider)>;

  // One KMS for every key: keys of another provider are refused with a KeyError naming it.
  // `kms` must outlive the cache.
  DataKeyCache(ConnectionFactory connect, kms::KmsClient& kms);
  // Connects with db::Connect(conninfo, "rekey-keycache").
  DataKeyCache(const std::string& conninfo, kms::KmsClient& kms);
  // Each key's provider resolved through `resolve`.
  DataKeyCache(ConnectionFactory connect, KmsResolver resolve, CacheOptions options = {});
  DataKeyCache(const std::string& conninfo, KmsResolver resolve, CacheOptions options = {});
  ~DataKeyCache();

  DataKeyCache(const DataKeyCache&) = delete;
  DataKeyCache& operator=(const DataKeyCache&) = delete;

  // Returns a Clone of data key `key_id`. Throws KeyError if the key is unknown, destroyed, or
  // wrapped by a provider this process cannot use, and whatever the KMS or database throws.
  Secret Get(uint32_t key_id);

  // Forgets key `key_id` (e.g. after it was destroyed); the next Get() loads it again.
  void Evict(uint32_t key_id);

  // Get() calls answered without starting a load (including those that waited for another
  // caller's load), Get() calls that started a load, UnwrapDataKey calls made, and entries
  // dropped for age or size (not Evict()).
  uint64_t hits() const { return hits_.load(); }
  uint64_t misses() const { return misses_.load(); }
  uint64_t kms_calls() const { return kms_calls_.load(); }
  uint64_t evictions() const { return evictions_.load(); }
  // Entries cached now, loads in flight included.
  size_t size() const;

 private:
  // A key's load, finished or in flight; shared by every Get() of that key. Held by pointer so a
  // failed loader can tell its own slot from one a later load put in its place.
  using Slot = std::shared_future<std::shared_ptr<const Secret>>;
  struct Entry {
    std::shared_ptr<Slot> slot;
    std::chrono::steady_clock::time_point loaded_at;
    std::list<uint32_t>::iterator lru;  // position in lru_
  };

  std::shared_ptr<const Secret> Load(uint32_t key_id);
  void EraseLocked(std::map<uint32_t, Entry>::iterator it);

  ConnectionFactory connect_;
  KmsResolver resolve_;
  const CacheOptions options_;

  mutable std::mutex mu_;  // guards entries_, lru_
  std::map<uint32_t, Entry> entries_;
  std::list<uint32_t> lru_;  // most recently used first

  std::mutex db_mu_;  // guards conn_; held only while reading rekey.keys, never across a KMS call
  std::unique_ptr<pqxx::connection> conn_;

  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> kms_calls_{0};
  std::atomic<uint64_t> evictions_{0};
};

}  // namespace rekey::keyring
