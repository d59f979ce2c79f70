// The keyring: data keys in rekey.keys (wrapped by a KMS) and their lifecycle. Legal transitions:
//   enabled -> primary | decrypt_only | retired      primary -> decrypt_only
//   decrypt_only -> primary | retired                retired -> decrypt_only | destroyed
//
// The database enforces the lifecycle (sql/schema/30_keyring.sql: rekey.key_lifecycle() and the
// trigger on rekey.keys), so these functions do not re-check legality: they issue the statement
// and translate the trigger's refusal into a StateError carrying the server's message. See
// docs/keyring.md for what each status means to applications.
//
// Every function runs inside the caller's transaction, so several steps (e.g. demote the old
// primary, promote the new one) commit or roll back together. A KeyRecord never holds plaintext
// key material: only the wrapped key.
//
// Errors: KeyError for an unknown key id or unusable key material; StateError for a step the
// keyring's state refuses (illegal transition, key still in use, id already taken); database
// failures as classified by db::Classified (TransientError when a retry may help).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <pqxx/pqxx>

#include "common/bytes.h"
#include "common/secret.h"
#include "kms/kms_client.h"

namespace rekey::keyring {

enum class KeyStatus { kEnabled, kPrimary, kDecryptOnly, kRetired, kDestroyed };

// "enabled", "primary", "decrypt_only", "retired", "destroyed": the values of rekey.keys.status.
const char* KeyStatusName(KeyStatus status);
// Returns nullopt iff `name` is not one of the names above.
std::optional<KeyStatus> ParseKeyStatus(std::string_view name);
// All statuses, in lifecycle order (for tests and tables).
const std::vector<KeyStatus>& AllKeyStatuses();

constexpr char kDefaultScope[] = "default";

struct KeyRecord {
  uint32_t key_id = 0;
  std::string scope;
  std::string kms_provider;
  std::string kms_key_ref;
  std::optional<Bytes> wrapped_key;  // nullopt iff destroyed
  std::string algorithm;
  KeyStatus status = KeyStatus::kEnabled;
  std::string origin;                           // "generated" or "imported"
  std::optional<std::chrono::seconds> max_age;  // nullopt = no limit
  // Timestamps in UTC, ISO 8601 ("2024-05-01T12:00:00Z"); nullopt = state never entered.
  std::string created_at;
  std::optional<std::string> enabled_at, primary_at, decrypt_only_at, retired_at, destroyed_at;
  std::string created_by;
  std::optional<std::string> updated_by;
  std::chrono::seconds age{0};  // now() - created_at, as the database sees it
};

struct CreateKeyOptions {
  std::optional<uint32_t> key_id;  // default: one more than the largest id (1 in an empty keyring)
  std::string scope = kDefaultScope;
  std::optional<std::chrono::seconds> max_age;  // nullopt = no limit
};

// Generates a data key through `kms`, and inserts it wrapped, status enabled. Throws StateError
// if options.key_id is taken, ConfigError for an empty scope, and whatever `kms` throws.
KeyRecord CreateKey(pqxx::transaction_base& txn, kms::KmsClient& kms,
                    const CreateKeyOptions& options);

// Wraps an existing 32-byte data key `raw32` (e.g. a legacy application key) through `kms` and
// inserts it as `key_id`, status enabled, origin imported. Throws KeyError unless `raw32` is 32
// bytes, StateError if `key_id` is taken.
KeyRecord ImportKey(pqxx::transaction_base& txn, kms::KmsClient& kms, uint32_t key_id,
                    const std::string& scope, const Secret& raw32);

// Every key, ordered by key_id.
std::vector<KeyRecord> ListKeys(pqxx::transaction_base& txn);

// Throws KeyError("unknown key id 9; ...") if there is no such key.
KeyRecord GetKey(pqxx::transaction_base& txn, uint32_t key_id);

// Returns nullopt iff no such key.
std::optional<KeyRecord> FindKey(pqxx::transaction_base& txn, uint32_t key_id);

// Moves key `key_id` to `to`. Throws KeyError for an unknown key, StateError if the key already
// has status `to` or the database refuses the transition (the message is the trigger's, e.g.
// "illegal key lifecycle transition for key 7: primary -> retired (allowed from primary:
// decrypt_only)"; a retire or destroy refused by the key census names one column per line). A
// refusal leaves `txn` aborted, as any failed statement does. A retire or destroy waits for every
// transaction writing under the key (its lifecycle lock) and must run in a READ COMMITTED
// transaction (keyring/census.h: UseReadCommitted).
KeyRecord TransitionKey(pqxx::transaction_base& txn, uint32_t key_id, KeyStatus to);

struct PromoteResult {
  KeyRecord promoted;
  std::optional<uint32_t> demoted;  // the scope's previous primary, now decrypt_only
};

// Makes `key_id` the primary of its scope, first demoting the scope's current primary (if any)
// to decrypt_only, so values under it stay readable. Both steps happen in `txn`.
PromoteResult PromoteKey(pqxx::transaction_base& txn, uint32_t key_id);

// Returns the primary key of `scope`, or nullopt iff the scope has none.
std::optional<KeyRecord> PrimaryKey(pqxx::transaction_base& txn,
                                    const std::string& scope = kDefaultScope);

}  // namespace rekey::keyring
