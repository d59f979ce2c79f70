#include "keyring/key_policy.h"

#include "common/error.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::keyring {
namespace {

std::optional<std::string> OptText(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::string>();
}

// `row`: of keyring/key_policy.policies or .set_policy.
KeyPolicy PolicyFrom(const pqxx::row& row) {
  return {row["scope"].as<std::string>(), row["max_age_seconds"].as<int64_t>(),
          row["max_age"].as<std::string>(), row["updated_at"].as<std::string>(),
          row["updated_by"].as<std::string>()};
}

}  // namespace

std::vector<KeyAge> ListKeyAges(pqxx::transaction_base& txn) {
  std::vector<KeyAge> out;
  for (const auto& row : txn.exec(db::Query("keyring/key_policy.key_ages"))) {
    KeyAge k;
    k.key_id = row["key_id"].as<uint32_t>();
    k.scope = row["scope"].as<std::string>();
    k.status = row["status"].as<std::string>();
    k.kms_provider = row["kms_provider"].as<std::string>();
    k.kms_key_ref = row["kms_key_ref"].as<std::string>();
    k.created_at = row["created_at"].as<std::string>();
    k.age_seconds = row["age_seconds"].as<int64_t>();
    if (!row["max_age_seconds"].is_null()) {
      k.max_age_seconds = row["max_age_seconds"].as<int64_t>();
    }
    k.max_age_source = OptText(row["max_age_source"]);
    k.due_at = OptText(row["due_at"]);
    k.overdue = row["overdue"].as<bool>();
    if (!row["job_in_flight"].is_null()) k.job_in_flight = row["job_in_flight"].as<int64_t>();
    out.push_back(std::move(k));
  }
  return out;
}

std::vector<KeyPolicy> ListPolicies(pqxx::transaction_base& txn) {
  std::vector<KeyPolicy> out;
  for (const auto& row : txn.exec(db::Query("keyring/key_policy.policies"))) {
    out.push_back(PolicyFrom(row));
  }
  return out;
}

KeyPolicy SetPolicy(pqxx::transaction_base& txn, const std::string& scope,
                    const std::string& max_age) {
  if (scope.empty()) throw ConfigError("give a key scope, or '*' for the default policy");
  try {
    return PolicyFrom(txn.exec_params1(db::Query("keyring/key_policy.set_policy"), scope, max_age));
  } catch (const pqxx::sql_error& e) {
    // 22xxx: not an interval; 23514: the CHECK (max_age > 0). The transaction is lost either way.
    const std::string state = e.sqlstate();
    if (state.rfind("22", 0) == 0 || state == "23514") {
      throw ConfigError("--max-age '" + max_age +
                        "' is not a positive PostgreSQL interval; write e.g. 90d, '90 days' or "
                        "2160h");
    }
    throw;
  }
}

bool RemovePolicy(pqxx::transaction_base& txn, const std::string& scope) {
  return txn.exec_params(db::Query("keyring/key_policy.remove_policy"), scope).affected_rows() > 0;
}

}  // namespace rekey::keyring
