// The process-wide cache of unwrapped data keys.
//
// Unwrapping costs a KMS round trip (and, for cloud KMSs, money and rate limit), so each data key
// is unwrapped at most once per process: Get() loads the wrapped key from rekey.keys and unwraps
// it through the KMS on the first request, and serves Clones afterwards. Concurrent first
// requests for one key share a single load; loads of different keys run in parallel.
//
// A failed load (unknown or destroyed key, KMS error, database error) is not cached: every
// caller waiting on it gets the error, and the next Get() tries again.
//
// Entries live until Evict() or destruction; the Secrets wipe themselves. A TTL and a size bound
// arrive later; their seam is the lookup in Get() (marked "SEAM" in data_key_cache.cpp), the one
// place an entry is found, where it can be judged stale and dropped.
//
// Thread-safety: all methods are thread-safe. One DataKeyCache per process.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <pqxx/pqxx>

#include "common/secret.h"
#include "kms/kms_client.h"

namespace rekey::keyring {

class DataKeyCache {
 public:
  // Opens a database connection; called when a load needs one (at most one at a time).
  using ConnectionFactory = std::function<std::unique_ptr<pqxx::connection>()>;

  // `kms` must outlive the cache.
  DataKeyCache(ConnectionFactory connect, kms::KmsClient& kms);
  // Connects with db::Connect(conninfo, "rekey-keycache").
  DataKeyCache(const std::string& conninfo, kms::KmsClient& kms);
  ~DataKeyCache();

  DataKeyCache(const DataKeyCache&) = delete;
  DataKeyCache& operator=(const DataKeyCache&) = delete;

  // Returns a Clone of data key `key_id`. Throws KeyError if the key is unknown, destroyed, or
  // wrapped by a different KMS provider than `kms`, and whatever the KMS or database throws.
  Secret Get(uint32_t key_id);

  // Forgets key `key_id` (e.g. after it was destroyed); the next Get() loads it again.
  void Evict(uint32_t key_id);

  // Get() calls answered without starting a load (including those that waited for another
  // caller's load), Get() calls that started a load, and UnwrapDataKey calls made.
  uint64_t hits() const { return hits_.load(); }
  uint64_t misses() const { return misses_.load(); }
  uint64_t kms_calls() const { return kms_calls_.load(); }

 private:
  std::shared_ptr<const Secret> Load(uint32_t key_id);

  ConnectionFactory connect_;
  kms::KmsClient& kms_;

  // A key's load, finished or in flight; shared by every Get() of that key. Held by pointer so a
  // failed loader can tell its own slot from one a later load put in its place.
  using Slot = std::shared_future<std::shared_ptr<const Secret>>;

  std::mutex mu_;  // guards entries_
  std::map<uint32_t, std::shared_ptr<Slot>> entries_;

  std::mutex db_mu_;  // guards conn_; held only while reading rekey.keys, never across a KMS call
  std::unique_ptr<pqxx::connection> conn_;

  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> kms_calls_{0};
};

}  // namespace rekey::keyring
