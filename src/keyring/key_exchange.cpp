#include "keyring/key_exchange.h"

#include <utility>

#include "common/error.h"
#include "kms/kms_factory.h"

namespace rekey::keyring {

namespace {

std::string Id(uint32_t key_id) {
  return std::to_string(key_id);
}

// Refuses (StateError) a key id the keyring holds with other material or in another scope;
// returns true iff it holds this very key.
bool AlreadyThere(const KeyRecord& existing, const ExchangedKey& key, const std::string& scope,
                  const KmsForProvider& kms_for) {
  if (!existing.wrapped_key) {
    throw StateError("key " + Id(key.key_id) +
                     " was destroyed in the keyring; a destroyed key id is never reused: nothing "
                     "was imported (remove the key from the file, or rotate it away in the "
                     "application first)");
  }
  if (existing.scope != scope) {
    throw StateError("key " + Id(key.key_id) + " already exists in scope " + existing.scope +
                     ", not " + scope + ": nothing was imported; import into --scope " +
                     existing.scope + " or remove the key from the file");
  }
  Secret material =
      kms_for(existing.kms_provider)
          .UnwrapDataKey(existing.key_id, existing.kms_key_ref, *existing.wrapped_key);
  if (!material.Equals(key.key)) {
    throw StateError("key id " + Id(key.key_id) +
                     " already exists in the keyring with different key material: nothing was "
                     "imported; the two keys cannot share an id (their ciphertexts carry it), so "
                     "rotate one of them to a new key first");
  }
  return true;
}

}  // namespace

kms::KmsClient& EnvironmentKmsClients::operator()(const std::string& provider) {
  for (auto& [name, client] : clients_) {
    if (name == provider) return *client;
  }
  clients_.emplace_back(provider, kms::MakeKmsClient(provider));
  return *clients_.back().second;
}

AdoptResult AdoptKeys(pqxx::transaction_base& txn, kms::KmsClient& wrap,
                      const KmsForProvider& kms_for, const std::vector<ExchangedKey>& keys,
                      const AdoptOptions& options) {
  AdoptResult result;
  // Every refusal comes before the first write, so a refused file leaves the transaction clean.
  std::vector<bool> present;
  for (const ExchangedKey& key : keys) {
    std::optional<KeyRecord> existing = FindKey(txn, key.key_id);
    present.push_back(existing && AlreadyThere(*existing, key, options.scope, kms_for));
  }
  for (size_t i = 0; i < keys.size(); i++) {
    const ExchangedKey& key = keys[i];
    if (present[i]) {
      result.keys.push_back({key.key_id, true, GetKey(txn, key.key_id).status});
      continue;
    }
    ImportKey(txn, wrap, key.key_id, options.scope, key.key);
    KeyStatus status = KeyStatus::kEnabled;
    if (!key.primary) {
      status = TransitionKey(txn, key.key_id, KeyStatus::kDecryptOnly).status;
    } else if (options.promote_primary || !PrimaryKey(txn, options.scope)) {
      PromoteResult promoted = PromoteKey(txn, key.key_id);
      result.demoted = promoted.demoted;
      status = promoted.promoted.status;
    } else {
      result.unpromoted = key.key_id;
    }
    result.keys.push_back({key.key_id, false, status});
  }
  return result;
}

std::vector<ExchangedKey> DecryptableKeys(pqxx::transaction_base& txn, const std::string& scope,
                                          const KmsForProvider& kms_for) {
  std::vector<ExchangedKey> out;
  bool has_primary = false;
  for (const KeyRecord& k : ListKeys(txn)) {
    if (k.scope != scope || !k.wrapped_key) continue;
    if (k.status != KeyStatus::kPrimary && k.status != KeyStatus::kDecryptOnly &&
        k.status != KeyStatus::kEnabled) {
      continue;
    }
    ExchangedKey key;
    key.key_id = k.key_id;
    key.key = kms_for(k.kms_provider).UnwrapDataKey(k.key_id, k.kms_key_ref, *k.wrapped_key);
    key.primary = k.status == KeyStatus::kPrimary;
    has_primary = has_primary || key.primary;
    out.push_back(std::move(key));
  }
  if (!has_primary) {
    throw StateError("scope " + scope +
                     " has no primary key, so an export could not say which key encrypts; "
                     "promote one first (`rekey keys promote ID`), or name another --scope");
  }
  return out;
}

}  // namespace rekey::keyring
