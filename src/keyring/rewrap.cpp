#include "keyring/rewrap.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "common/error.h"
#include "db/connection.h"
#include "keyring/keyring.h"
#include "kms/local_kms.h"

namespace rekey::keyring {

namespace {

kms::GeneratedDataKey Rewrap(kms::KmsClient& destination, const std::string& destination_key_ref,
                             const SourceClientFn& source, const KeyRecord& key) {
  if (key.kms_provider == destination.provider() && key.kms_provider != kms::kLocalProvider) {
    return destination.RewrapDataKey(key.key_id, key.kms_key_ref, *key.wrapped_key,
                                     destination_key_ref);
  }
  kms::KmsClient& from = source(key.kms_provider, key.kms_key_ref);
  Secret plaintext = from.UnwrapDataKey(key.key_id, key.kms_key_ref, *key.wrapped_key);
  kms::GeneratedDataKey result = destination.WrapDataKey(key.key_id, plaintext);
  // The old wrapping is about to be overwritten: prove the new one gives the same key back.
  Secret check = destination.UnwrapDataKey(key.key_id, result.kms_key_ref, result.wrapped);
  if (!check.Equals(plaintext)) {
    throw KeyError("re-wrapping data key " + std::to_string(key.key_id) + " under " +
                   destination_key_ref + " did not round-trip; key left as it was");
  }
  result.plaintext = Secret();
  return result;
}

}  // namespace

std::vector<RewrapOutcome> RewrapKeys(pqxx::connection& conn, kms::KmsClient& destination,
                                      const std::string& destination_key_ref,
                                      const SourceClientFn& source,
                                      const std::vector<uint32_t>& key_ids,
                                      const std::function<void(const RewrapOutcome&)>& on_each) {
  std::vector<uint32_t> ids = key_ids;
  if (ids.empty()) {
    db::Classified("listing keys", [&] {
      pqxx::read_transaction txn(conn);
      for (const KeyRecord& k : ListKeys(txn)) ids.push_back(k.key_id);
      txn.commit();
    });
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());

  const std::string to = destination.provider() + ":" + destination_key_ref;
  std::vector<RewrapOutcome> outcomes;
  int rewrapped = 0;
  for (uint32_t id : ids) {
    RewrapOutcome outcome;
    outcome.key_id = id;
    db::Classified("re-wrapping key " + std::to_string(id), [&] {
      pqxx::work txn(conn);
      // Locked, so a concurrent rewrap or destroy of this key waits for us.
      txn.exec_params("SELECT 1 FROM rekey.keys WHERE key_id = $1 FOR UPDATE", id);
      KeyRecord key = GetKey(txn, id);
      outcome.from = key.kms_provider + ":" + key.kms_key_ref;
      outcome.to = outcome.from;
      if (!key.wrapped_key) {
        outcome.what = RewrapOutcome::What::kDestroyed;
      } else if (key.kms_provider == destination.provider() &&
                 key.kms_key_ref == destination_key_ref) {
        outcome.what = RewrapOutcome::What::kAlreadyThere;
      } else {
        kms::GeneratedDataKey fresh = Rewrap(destination, destination_key_ref, source, key);
        txn.exec_params(
            "UPDATE rekey.keys SET kms_provider = $2, kms_key_ref = $3, wrapped_key = $4 "
            "WHERE key_id = $1",
            id, destination.provider(), fresh.kms_key_ref,
            pqxx::binarystring(fresh.wrapped.data(), fresh.wrapped.size()));
        outcome.what = RewrapOutcome::What::kRewrapped;
        outcome.to = destination.provider() + ":" + fresh.kms_key_ref;
      }
      txn.commit();
    });
    if (outcome.what == RewrapOutcome::What::kRewrapped) rewrapped++;
    outcomes.push_back(outcome);
    if (on_each) on_each(outcome);
  }
  db::Classified("auditing the rewrap", [&] {
    pqxx::work txn(conn);
    nlohmann::json details = {
        {"to", to}, {"keys_considered", outcomes.size()}, {"keys_rewrapped", rewrapped}};
    txn.exec_params("SELECT rekey.audit_event('keys.rewrap', NULL, $1::jsonb)", details.dump());
    txn.commit();
  });
  return outcomes;
}

}  // namespace rekey::keyring
