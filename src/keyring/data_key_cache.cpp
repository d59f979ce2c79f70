#include "keyring/data_key_cache.h"

#include <utility>

#include "common/error.h"
#include "db/connection.h"
#include "keyring/keyring.h"

namespace rekey::keyring {

namespace {

// The resolver of the single-client constructors: the one client, or a KeyError naming the
// provider the key needs.
DataKeyCache::KmsResolver SingleClient(kms::KmsClient& kms) {
  return [&kms](const std::string& provider) -> kms::KmsClient& {
    if (provider != kms.provider()) {
      throw KeyError("this process uses KMS provider " + kms.provider() + " only; run with --kms " +
                     provider);
    }
    return kms;
  };
}

}  // namespace

CacheOptions CacheOptionsFromEnv(const kms::GetenvFn& getenv) {
  CacheOptions o;
  int64_t ttl = kms::GetenvInteger(getenv, "REKEY_KEY_CACHE_TTL_SECONDS", 3600, 0);
  if (ttl > 0) o.ttl = std::chrono::seconds(ttl);
  o.max_entries =
      static_cast<size_t>(kms::GetenvInteger(getenv, "REKEY_KEY_CACHE_MAX_ENTRIES", 1000, 0));
  return o;
}

DataKeyCache::DataKeyCache(ConnectionFactory connect, kms::KmsClient& kms)
    : DataKeyCache(std::move(connect), SingleClient(kms)) {}

DataKeyCache::DataKeyCache(const std::string& conninfo, kms::KmsClient& kms)
    : DataKeyCache(conninfo, SingleClient(kms)) {}

DataKeyCache::DataKeyCache(ConnectionFactory connect, KmsResolver resolve, CacheOptions options)
    : connect_(std::move(connect)), resolve_(std::move(resolve)), options_(std::move(options)) {}

DataKeyCache::DataKeyCache(const std::string& conninfo, KmsResolver resolve, CacheOptions options)
    : DataKeyCache([conninfo] { return db::Connect(conninfo, "rekey-keycache"); },
                   std::move(resolve), std::move(options)) {}

DataKeyCache::~DataKeyCache() = default;

size_t DataKeyCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

void DataKeyCache::EraseLocked(std::map<uint32_t, Entry>::iterator it) {
  lru_.erase(it->second.lru);
  entries_.erase(it);
}

Secret DataKeyCache::Get(uint32_t key_id) {
  std::shared_ptr<Slot> slot;
  std::promise<std::shared_ptr<const Secret>> promise;
  bool load = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = options_.clock();
    auto it = entries_.find(key_id);
    if (it != entries_.end() && options_.ttl && now - it->second.loaded_at >= *options_.ttl) {
      EraseLocked(it);  // stale: the KMS is asked again, so a revoked key stops working
      evictions_++;
      it = entries_.end();
    }
    if (it != entries_.end()) {
      slot = it->second.slot;
      lru_.splice(lru_.begin(), lru_, it->second.lru);
    } else {
      slot = std::make_shared<Slot>(promise.get_future().share());
      lru_.push_front(key_id);
      entries_.emplace(key_id, Entry{slot, now, lru_.begin()});
      load = true;
      while (options_.max_entries > 0 && entries_.size() > options_.max_entries) {
        EraseLocked(entries_.find(lru_.back()));
        evictions_++;
      }
    }
  }
  if (!load) {
    hits_++;
    return slot->get()->Clone();  // rethrows the loader's error, if it failed
  }

  misses_++;
  try {
    std::shared_ptr<const Secret> key = Load(key_id);
    promise.set_value(key);
    return key->Clone();
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = entries_.find(key_id);
      // Only our own slot: Evict() and a new load may have replaced it meanwhile.
      if (it != entries_.end() && it->second.slot == slot) EraseLocked(it);
    }
    promise.set_exception(std::current_exception());
    throw;
  }
}

void DataKeyCache::Evict(uint32_t key_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key_id);
  if (it != entries_.end()) EraseLocked(it);
}

std::shared_ptr<const Secret> DataKeyCache::Load(uint32_t key_id) {
  KeyRecord record;
  {
    std::lock_guard<std::mutex> lock(db_mu_);
    try {
      if (!conn_ || !conn_->is_open()) conn_ = connect_();
      pqxx::read_transaction txn(*conn_);
      record = GetKey(txn, key_id);
      txn.commit();
    } catch (const TransientError&) {
      conn_.reset();  // it may be broken; the next load reconnects
      throw;
    }
  }
  const std::string id = std::to_string(key_id);
  if (record.status == KeyStatus::kDestroyed || !record.wrapped_key) {
    throw NoSuchKeyError("key " + id +
                         " is destroyed: values encrypted under it can no longer be decrypted");
  }
  kms::KmsClient* kms = nullptr;
  try {
    kms = &resolve_(record.kms_provider);
  } catch (const KeyError& e) {
    throw KeyError("key " + id + " is wrapped by KMS provider " + record.kms_provider + ": " +
                   e.what());
  } catch (const ConfigError& e) {
    throw ConfigError("key " + id + " is wrapped by KMS provider " + record.kms_provider + ": " +
                      e.what());
  }
  kms_calls_++;
  Secret key = kms->UnwrapDataKey(key_id, record.kms_key_ref, *record.wrapped_key);
  return std::make_shared<const Secret>(std::move(key));
}

}  // namespace rekey::keyring
