#include "keyring/keyring.h"

#include <array>
#include <utility>

#include "common/error.h"
#include "db/connection.h"

namespace rekey::keyring {

namespace {

constexpr std::array<KeyStatus, 5> kStatuses = {KeyStatus::kEnabled, KeyStatus::kPrimary,
                                                KeyStatus::kDecryptOnly, KeyStatus::kRetired,
                                                KeyStatus::kDestroyed};

constexpr uint64_t kMaxKeyId = 4294967295ULL;
// The SQLSTATEs of the lifecycle trigger's refusals: a plain RAISE EXCEPTION (an illegal
// transition), object_not_in_prerequisite_state (values, unknowns or a job still need the key)
// and insufficient_privilege (a worker role may not retire or destroy).
constexpr const char* kRefusals[] = {"P0001", "55000", "42501"};

bool IsRefusal(const pqxx::sql_error& e) {
  // libpqxx 6 throws insufficient_privilege without its SQLSTATE.
  if (dynamic_cast<const pqxx::insufficient_privilege*>(&e) != nullptr) return true;
  for (const char* code : kRefusals) {
    if (e.sqlstate() == code) return true;
  }
  return false;
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

// ISO 8601 in UTC, independent of the session's DateStyle and TimeZone.
std::string Iso(const std::string& column) {
  return "to_char(" + column + " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
}

const std::string& SelectKeys() {
  static const std::string sql =
      "SELECT key_id, scope, kms_provider, kms_key_ref, encode(wrapped_key, 'hex'), algorithm, "
      "status, origin, extract(epoch FROM max_age)::bigint, " +
      Iso("created_at") + ", " + Iso("enabled_at") + ", " + Iso("primary_at") + ", " +
      Iso("decrypt_only_at") + ", " + Iso("retired_at") + ", " + Iso("destroyed_at") +
      ", coalesce(created_by, ''), updated_by, "
      "greatest(0, extract(epoch FROM now() - created_at))::bigint "
      "FROM rekey.keys ";
  return sql;
}

std::optional<std::string> OptionalText(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::string>();
}

KeyRecord ToRecord(const pqxx::row& row) {
  KeyRecord k;
  k.key_id = static_cast<uint32_t>(row[0].as<int64_t>());
  k.scope = row[1].as<std::string>();
  k.kms_provider = row[2].as<std::string>();
  k.kms_key_ref = row[3].as<std::string>();
  if (!row[4].is_null()) {
    std::optional<Bytes> wrapped = HexDecode(row[4].as<std::string>());
    if (!wrapped) throw PermanentError("rekey.keys: malformed hex from encode()");
    k.wrapped_key = std::move(*wrapped);
  }
  k.algorithm = row[5].as<std::string>();
  std::string status = row[6].as<std::string>();
  std::optional<KeyStatus> parsed = ParseKeyStatus(status);
  if (!parsed) {
    throw StateError("key " + std::to_string(k.key_id) + " has unknown status '" + status +
                     "'; is this rekey older than the database schema?");
  }
  k.status = *parsed;
  k.origin = row[7].as<std::string>();
  if (!row[8].is_null()) k.max_age = std::chrono::seconds(row[8].as<int64_t>());
  k.created_at = row[9].as<std::string>();
  k.enabled_at = OptionalText(row[10]);
  k.primary_at = OptionalText(row[11]);
  k.decrypt_only_at = OptionalText(row[12]);
  k.retired_at = OptionalText(row[13]);
  k.destroyed_at = OptionalText(row[14]);
  k.created_by = row[15].as<std::string>();
  k.updated_by = OptionalText(row[16]);
  k.age = std::chrono::seconds(row[17].as<int64_t>());
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
    txn.exec_params0(
        "INSERT INTO rekey.keys (key_id, scope, kms_provider, kms_key_ref, wrapped_key, status, "
        "origin, max_age) VALUES ($1, $2, $3, $4, decode($5, 'hex'), 'enabled', $6, "
        "make_interval(secs => nullif($7, '')::bigint))",
        static_cast<int64_t>(key_id), scope, kms.provider(), key.kms_key_ref,
        HexEncode(key.wrapped), origin, MaxAgeParam(max_age));
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
      txn.exec("SELECT pg_advisory_xact_lock(hashtext('rekey.keys.key_id'))");
      return txn.exec1("SELECT coalesce(max(key_id), 0) + 1 FROM rekey.keys")[0].as<int64_t>();
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
  pqxx::result r = db::Classified("listing rekey.keys",
                                  [&] { return txn.exec(SelectKeys() + "ORDER BY key_id"); });
  std::vector<KeyRecord> keys;
  keys.reserve(r.size());
  for (const pqxx::row& row : r) keys.push_back(ToRecord(row));
  return keys;
}

std::optional<KeyRecord> FindKey(pqxx::transaction_base& txn, uint32_t key_id) {
  pqxx::result r = db::Classified("reading rekey.keys", [&] {
    return txn.exec_params(SelectKeys() + "WHERE key_id = $1", static_cast<int64_t>(key_id));
  });
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
    txn.exec_params0("UPDATE rekey.keys SET status = $2 WHERE key_id = $1",
                     static_cast<int64_t>(key_id), std::string(KeyStatusName(to)));
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
        .exec_params1("SELECT rekey.key_transition_allowed($1, 'primary')",
                      std::string(KeyStatusName(key.status)))[0]
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
  pqxx::result r = db::Classified("reading rekey.keys", [&] {
    return txn.exec_params(SelectKeys() + "WHERE scope = $1 AND status = 'primary'", scope);
  });
  if (r.empty()) return std::nullopt;
  return ToRecord(r[0]);
}

}  // namespace rekey::keyring
