// Key-age policy: the maximum age of data keys per scope (rekey.key_policies, '*' = every scope
// without a row of its own; rekey.keys.max_age overrides both for one key), and each usable key's
// age, due date and whether it is overdue (the view rekey.key_age, migration 0005).
//
// Only a scope's primary key can be overdue: it is the key new values are written under.
// Thread-safety: functions use only the transaction they are given.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rekey::keyring {

struct KeyAge {
  uint32_t key_id = 0;
  std::string scope;
  std::string status;
  std::string kms_provider;
  std::string kms_key_ref;
  std::string created_at;  // ISO 8601, UTC
  int64_t age_seconds = 0;
  std::optional<int64_t> max_age_seconds;     // nullopt: no policy applies
  std::optional<std::string> max_age_source;  // "key", "scope" or "default"
  std::optional<std::string> due_at;          // ISO 8601, UTC
  bool overdue = false;
  std::optional<int64_t> job_in_flight;  // a job rotating values off this key, if any
};

// Every usable key (enabled, primary, decrypt_only), ordered by scope and key id.
std::vector<KeyAge> ListKeyAges(pqxx::transaction_base& txn);

struct KeyPolicy {
  std::string scope;  // '*' = default
  int64_t max_age_seconds = 0;
  std::string max_age;  // as PostgreSQL prints the interval, e.g. "90 days"
  std::string updated_at;
  std::string updated_by;
};

std::vector<KeyPolicy> ListPolicies(pqxx::transaction_base& txn);
// Sets the maximum age of keys in `scope` ('*' for the default). `max_age` is a PostgreSQL
// interval ("90 days", "90d", "2160h"). Throws ConfigError for a malformed or non-positive one.
KeyPolicy SetPolicy(pqxx::transaction_base& txn, const std::string& scope,
                    const std::string& max_age);
// Returns true iff a policy for `scope` existed and was removed.
bool RemovePolicy(pqxx::transaction_base& txn, const std::string& scope);

}  // namespace rekey::keyring
