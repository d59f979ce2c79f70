#include "keyring/data_key_cache.h"

#include <utility>

#include "common/error.h"
#include "db/connection.h"
#include "keyring/keyring.h"

namespace rekey::keyring {

DataKeyCache::DataKeyCache(ConnectionFactory connect, kms::KmsClient& kms)
    : connect_(std::move(connect)), kms_(kms) {}

DataKeyCache::DataKeyCache(const std::string& conninfo, kms::KmsClient& kms)
    : DataKeyCache([conninfo] { return db::Connect(conninfo, "rekey-keycache"); }, kms) {}

DataKeyCache::~DataKeyCache() = default;

Secret DataKeyCache::Get(uint32_t key_id) {
  std::shared_ptr<Slot> slot;
  std::promise<std::shared_ptr<const Secret>> promise;
  bool load = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key_id);
    // SEAM: a TTL or size bound judges `it` here (erase it to force a reload).
    if (it != entries_.end()) {
      slot = it->second;
    } else {
      slot = std::make_shared<Slot>(promise.get_future().share());
      entries_.emplace(key_id, slot);
      load = true;
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
      if (it != entries_.end() && it->second == slot) entries_.erase(it);
    }
    promise.set_exception(std::current_exception());
    throw;
  }
}

void DataKeyCache::Evict(uint32_t key_id) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(key_id);
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
    throw KeyError("key " + id +
                   " is destroyed: values encrypted under it can no longer be decrypted");
  }
  if (record.kms_provider != kms_.provider()) {
    throw KeyError("key " + id + " is wrapped by KMS provider " + record.kms_provider +
                   " but this process uses " + kms_.provider() + "; run with --kms " +
                   record.kms_provider);
  }
  kms_calls_++;
  Secret key = kms_.UnwrapDataKey(key_id, record.kms_key_ref, *record.wrapped_key);
  return std::make_shared<const Secret>(std::move(key));
}

}  // namespace rekey::keyring
