#include "keyring/rewrap.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <set>

#include "common/error.h"
#include "db/connection.h"
#include "db/named_query.h"
#include "keyring/keyring.h"
#include "kms/aws_kms.h"
#include "kms/kms_factory.h"
#include "kms/local_kms.h"
#include "kms/vault_transit.h"

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

std::string CurrentProvider(pqxx::connection& conn, const std::vector<uint32_t>& key_ids) {
  std::set<std::string> providers;
  db::Classified("listing keys", [&] {
    pqxx::read_transaction txn(conn);
    for (const KeyRecord& k : ListKeys(txn)) {
      const bool selected =
          key_ids.empty() || std::count(key_ids.begin(), key_ids.end(), k.key_id) > 0;
      if (selected && k.wrapped_key) providers.insert(k.kms_provider);
    }
    txn.commit();
  });
  if (providers.size() > 1) {
    throw ConfigError(
        "the selected keys are wrapped by several KMS providers; say which one to "
        "re-wrap them with: --to-kms local|aws-kms|vault-transit");
  }
  return providers.empty() ? kms::kLocalProvider : *providers.begin();
}

RewrapDestination MakeRewrapDestination(const std::string& provider, const std::string& key_ref,
                                        const kms::GetenvFn& getenv) {
  std::optional<kms::TransitKeyRef> transit;
  if (provider == kms::kVaultTransitProvider) {
    transit = kms::ParseTransitKeyRef(key_ref);
    if (!transit) {
      throw ConfigError("--to-kms-key " + key_ref +
                        " is not a Vault Transit key ref; give it as <mount>/keys/<name>, e.g. "
                        "transit/keys/rekey-2026");
    }
  }
  RewrapDestination d;
  d.env = [provider, key_ref, transit, getenv](const char* name) {
    const std::string var = name;
    if (provider == kms::kAwsKmsProvider && var == kms::kAwsKmsKeyIdEnv) {
      return std::optional<std::string>(key_ref);
    }
    if (transit && var == "REKEY_VAULT_TRANSIT_KEY")
      return std::optional<std::string>(transit->name);
    if (transit && var == "REKEY_VAULT_TRANSIT_MOUNT") {
      return std::optional<std::string>(transit->mount);
    }
    return getenv(name);
  };
  d.client = kms::MakeKmsClient(provider, d.env);
  if (provider == kms::kLocalProvider && key_ref != d.client->default_key_ref()) {
    const std::string current = d.client->default_key_ref();
    throw ConfigError("--to-kms-key " + key_ref +
                      " is not the local master key in REKEY_MASTER_KEY(_FILE), which is " +
                      current +
                      "; point REKEY_MASTER_KEY_FILE at the new "
                      "master key (and REKEY_OLD_MASTER_KEY_FILE at the old one) and pass "
                      "--to-kms-key " +
                      current);
  }
  d.key_ref = d.client->CanonicalKeyRef(key_ref);
  return d;
}

kms::KmsClient& SourceClients::operator()(const std::string& provider, const std::string& key_ref) {
  kms::KmsClient& destination = *destination_.client;
  if (provider == destination.provider() && key_ref == destination.default_key_ref()) {
    return destination;
  }
  std::unique_ptr<kms::KmsClient>& client =
      clients_[provider == kms::kLocalProvider ? key_ref : provider];
  if (client) return *client;
  if (provider != kms::kLocalProvider) {
    client = kms::MakeKmsClient(provider, destination_.env);
    return *client;
  }
  // A local key: under the current master key, or the old one.
  for (bool old : {false, true}) {
    const kms::GetenvFn& base = destination_.env;
    kms::GetenvFn env = [old, &base](const char* name) -> std::optional<std::string> {
      if (!old) return base(name);
      if (std::string(name) == kms::kMasterKeyEnv) return base(kOldMasterKeyEnv);
      if (std::string(name) == kms::kMasterKeyFileEnv) return base(kOldMasterKeyFileEnv);
      return base(name);
    };
    if (old && !env(kms::kMasterKeyEnv) && !env(kms::kMasterKeyFileEnv)) break;
    auto local = std::make_unique<kms::LocalKms>(env);
    if (local->default_key_ref() == key_ref) {
      client = std::move(local);
      return *client;
    }
  }
  throw ConfigError("a key is wrapped under local master key " + key_ref +
                    ", which neither REKEY_MASTER_KEY(_FILE) nor REKEY_OLD_MASTER_KEY(_FILE) "
                    "holds; point REKEY_OLD_MASTER_KEY_FILE at it");
}

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
      txn.exec_params(db::Query("keyring/rewrap.lock_key"), id);
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
        txn.exec_params(db::Query("keyring/rewrap.store_wrapping"), id, destination.provider(),
                        fresh.kms_key_ref,
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
    txn.exec_params(db::Query("keyring/rewrap.audit_run"), details.dump());
    txn.commit();
  });
  return outcomes;
}

}  // namespace rekey::keyring
