#include "keyring/keyring.h"

#include <array>
#include <utility>

#include "common/error.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::keyring {

namespace {

constexpr std::array<KeyStatus, 5> kStatuses = {KeyStatus::kEnabled, KeyStatus::kPrimary,
                                                KeyStatus::kDecryptOnly, KeyStatus::kRetired,
                                                KeyStatus::kDestroyed};

constexpr uint64_t kMaxKeyId = 4294967295ULL;
// A refusal of the lifecycle trigger (an illegal transition, values, unknowns or a job still
// needing the key, a worker role retiring or destroying): what the error table
// (common/error_table.h) classes as state. Its whole message is kept (RefusalMessage), since a
// census refusal names one column per line.
bool IsRefusal(const pqxx::sql_error& e) {
  return db::Classify(e).error_class == ErrorClass::kState;
}

// The server's whole message, every line of it (a census refusal names one column per line),
// without the severity prefix and without the CONTEXT, DETAIL and HINT fields libpq appends.
std::string RefusalMessage(const pqxx::sql_error& e) {
  std::string text = e.what();
  for (const char* field : {"\nDETAIL:  ", "\nHINT:  ", "\nCONTEXT:  ", "\nLINE "}) {
    size_t at = text.find(field);
    if (at != std::string::npos) text.resize(at);
  }
  constexpr std::string_view kSeverity = "ERROR:  ";
  if (text.compare(0, kSeverity.size(), kSeverity) == 0) text.erase(0, kSeverity.size());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// Runs keyring/keyring.select_keys: every key (`key_id` and `primary_of_scope` nullptr), key
// `key_id`, or the primary of scope `primary_of_scope`.
template <typename KeyId, typename Scope>
pqxx::result SelectKeys(pqxx::transaction_base& txn, const std::string& context,
                        const KeyId& key_id, const Scope& primary_of_scope) {
  return db::Classified(context, [&] {
    return txn.exec_params(db::Query("keyring/keyring.select_keys"), key_id, primary_of_scope);
  });
}

std::optional<std::string> OptionalText(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::string>();
}

// `row`: of keyring/keyring.select_keys.
KeyRecord ToRecord(const pqxx::row& row) {
  KeyRecord k;
  k.key_id = static_cast<uint32_t>(row["key_id"].as<int64_t>());
  k.scope = row["scope"].as<std::string>();
  k.kms_provider = row["kms_provider"].as<std::string>();
  k.kms_key_ref = row["kms_key_ref"].as<std::string>();
  if (!row["wrapped_key_hex"].is_null()) {
    std::optional<Bytes> wrapped = HexDecode(row["wrapped_key_hex"].as<std::string>());
    if (!wrapped) throw PermanentError("rekey.keys: malformed hex from encode()");
    k.wrapped_key = std::move(*wrapped);
  }
  k.algorithm = row["algorithm"].as<std::string>();
  std::string status = row["status"].as<std::string>();
  std::optional<KeyStatus> parsed = ParseKeyStatus(status);
  if (!parsed) {
    throw StateError("key " + std::to_string(k.key_id) + " has unknown status '" + status +
                     "'; is this rekey older than the database schema?");
  }
  k.status = *parsed;
  k.origin = row["origin"].as<std::string>();
  if (!row["max_age_seconds"].is_null()) {
    k.max_age = std::chrono::seconds(row["max_age_seconds"].as<int64_t>());
  }
  k.created_at = row["created_at"].as<std::string>();
  k.enabled_at = OptionalText(row["enabled_at"]);
  k.primary_at = OptionalText(row["primary_at"]);
  k.decrypt_only_at = OptionalText(row["decrypt_only_at"]);
  k.retired_at = OptionalText(row["retired_at"]);
  k.destroyed_at = OptionalText(row["destroyed_at"]);
  k.created_by = row["created_by"].as<std::string>();
  k.updated_by = OptionalText(row["updated_by"]);
  k.age = std::chrono::seconds(row["age_seconds"].as<int64_t>());
  return k;
}

std::string MaxAgeParam(const std::optional<std::chrono::seconds>& max_age) {
  return max_age ? std::to_string(max_age->count()) : std::string();
}

void CheckScope(const std::string& scope) {
  if (scope.empty()) throw ConfigError("a key scope cannot be empty; omit --scope for 'default'");
}

void RequireFreeKeyId(pqxx::transaction_base& txn, uint32_t key_id) {
  if (FindKey(txn, key_id)) {
    throw StateError("key id " + std::to_string(key_id) +
                     " already exists in the keyring; choose another --key-id (`rekey keys "
                     "list` shows the keyring)");
  }
}

KeyRecord InsertKey(pqxx::transaction_base& txn, uint32_t key_id, const std::string& scope,
                    const kms::KmsClient& kms, const kms::GeneratedDataKey& key, const char* origin,
                    const std::optional<std::chrono::seconds>& max_age) {
  db::Classified("inserting key " + std::to_string(key_id) + " into rekey.keys", [&] {
    txn.exec_params0(db::Query("keyring/keyring.insert_key"), static_cast<int64_t>(key_id), scope,
                     kms.provider(), key.kms_key_ref, HexEncode(key.wrapped), origin,
                     MaxAgeParam(max_age));
  });
  return GetKey(txn, key_id);
}

}  // namespace

const char* KeyStatusName(KeyStatus status) {
  switch (status) {
    case KeyStatus::kEnabled:
      return "enabled";
    case KeyStatus::kPrimary:
      return "primary";
    case KeyStatus::kDecryptOnly:
      return "decrypt_only";
    case KeyStatus::kRetired:
      return "retired";
    case KeyStatus::kDestroyed:
      return "destroyed";
  }
  return "unknown";
}

std::optional<KeyStatus> ParseKeyStatus(std::string_view name) {
  for (KeyStatus s : kStatuses) {
    if (name == KeyStatusName(s)) return s;
  }
  return std::nullopt;
}

const std::vector<KeyStatus>& AllKeyStatuses() {
  static const std::vector<KeyStatus> all(kStatuses.begin(), kStatuses.end());
  return all;
}

KeyRecord CreateKey(pqxx::transaction_base& txn, kms::KmsClient& kms,
                    const CreateKeyOptions& options) {
  CheckScope(options.scope);
  uint32_t key_id = 0;
  if (options.key_id) {
    key_id = *options.key_id;
    RequireFreeKeyId(txn, key_id);
  } else {
    // Serialises id allocation between concurrent creators until their transactions end.
    int64_t next = db::Classified("allocating a key id", [&] {
      txn.exec(db::Query("keyring/keyring.lock_key_ids"));
      return txn.exec1(db::Query("keyring/keyring.next_key_id"))["next_key_id"].as<int64_t>();
    });
    if (static_cast<uint64_t>(next) > kMaxKeyId) {
      throw StateError("no key id left above the largest one (4294967295); pass --key-id");
    }
    key_id = static_cast<uint32_t>(next);
  }
  kms::GeneratedDataKey key = kms.GenerateDataKey(key_id);
  return InsertKey(txn, key_id, options.scope, kms, key, "generated", options.max_age);
}

KeyRecord ImportKey(pqxx::transaction_base& txn, kms::KmsClient& kms, uint32_t key_id,
                    const std::string& scope, const Secret& raw32) {
  if (raw32.size() != kms::kDataKeySize) {
    throw KeyError("an imported data key must be exactly 32 bytes (AES-256); got " +
                   std::to_string(raw32.size()));
  }
  CheckScope(scope);
  RequireFreeKeyId(txn, key_id);
  kms::GeneratedDataKey key = kms.WrapDataKey(key_id, raw32);
  return InsertKey(txn, key_id, scope, kms, key, "imported", std::nullopt);
}

std::vector<KeyRecord> ListKeys(pqxx::transaction_base& txn) {
  pqxx::result r = SelectKeys(txn, "listing rekey.keys", nullptr, nullptr);
  std::vector<KeyRecord> keys;
  keys.reserve(r.size());
  for (const pqxx::row& row : r) keys.push_back(ToRecord(row));
  return keys;
}

std::optional<KeyRecord> FindKey(pqxx::transaction_base& txn, uint32_t key_id) {
  pqxx::result r = SelectKeys(txn, "reading rekey.keys", static_cast<int64_t>(key_id), nullptr);
  if (r.empty()) return std::nullopt;
  return ToRecord(r[0]);
}

KeyRecord GetKey(pqxx::transaction_base& txn, uint32_t key_id) {
  std::optional<KeyRecord> key = FindKey(txn, key_id);
  if (!key) {
    throw NoSuchKeyError("unknown key id " + std::to_string(key_id) +
                         "; `rekey keys list` shows the keyring");
  }
  return std::move(*key);
}

KeyRecord TransitionKey(pqxx::transaction_base& txn, uint32_t key_id, KeyStatus to) {
  KeyRecord key = GetKey(txn, key_id);
  if (key.status == to) {
    throw StateError("key " + std::to_string(key_id) + " is already " + KeyStatusName(to));
  }
  // The trigger on rekey.keys decides. Its RAISE already says which key, which step and what to
  // do, so it becomes the StateError's whole message; any other failure is classified as usual.
  try {
    txn.exec_params0(db::Query("keyring/keyring.set_status"), static_cast<int64_t>(key_id),
                     std::string(KeyStatusName(to)));
  } catch (const pqxx::sql_error& e) {
    if (IsRefusal(e)) throw StateError(RefusalMessage(e));
    db::ThrowClassified("changing the status of key " + std::to_string(key_id), e);
  } catch (const pqxx::failure& e) {
    db::ThrowClassified("changing the status of key " + std::to_string(key_id), e);
  }
  return GetKey(txn, key_id);
}

PromoteResult PromoteKey(pqxx::transaction_base& txn, uint32_t key_id) {
  KeyRecord key = GetKey(txn, key_id);
  PromoteResult result;
  if (key.status == KeyStatus::kPrimary) {
    throw StateError("key " + std::to_string(key_id) + " is already the primary of scope " +
                     key.scope);
  }
  bool allowed = db::Classified("checking the key lifecycle", [&] {
    return txn
        .exec_params1(db::Query("keyring/keyring.transition_allowed"),
                      std::string(KeyStatusName(key.status)),
                      std::string(KeyStatusName(KeyStatus::kPrimary)))["allowed"]
        .as<bool>();
  });
  // Demote only when the promotion can follow, so a refused promotion changes nothing; an illegal
  // one goes straight to the trigger for its message.
  if (allowed) {
    std::optional<KeyRecord> current = PrimaryKey(txn, key.scope);
    if (current) {
      TransitionKey(txn, current->key_id, KeyStatus::kDecryptOnly);
      result.demoted = current->key_id;
    }
  }
  result.promoted = TransitionKey(txn, key_id, KeyStatus::kPrimary);
  return result;
}

std::optional<KeyRecord> PrimaryKey(pqxx::transaction_base& txn, const std::string& scope) {
  pqxx::result r = SelectKeys(txn, "reading rekey.keys", nullptr, scope);
  if (r.empty()) return std::nullopt;
  return ToRecord(r[0]);
}

}  // namespace rekey::keyring
