#include "keyring/key_policy.h"

#include "common/error.h"
#include "db/connection.h"

namespace rekey::keyring {
namespace {

constexpr char kIso[] = "YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"";

std::optional<std::string> OptText(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::string>();
}

KeyPolicy PolicyFrom(const pqxx::row& row) {
  return {row[0].as<std::string>(), row[1].as<int64_t>(), row[2].as<std::string>(),
          row[3].as<std::string>(), row[4].as<std::string>()};
}

const std::string kPolicyColumns =
    "scope, extract(epoch FROM max_age)::bigint, max_age::text, "
    "to_char(updated_at AT TIME ZONE 'UTC', '" +
    std::string(kIso) + "'), updated_by";

}  // namespace

std::vector<KeyAge> ListKeyAges(pqxx::transaction_base& txn) {
  const std::string iso = kIso;
  std::vector<KeyAge> out;
  for (const auto& row :
       txn.exec("SELECT key_id, scope, status, kms_provider, kms_key_ref,"
                "       to_char(created_at AT TIME ZONE 'UTC', '" +
                iso +
                "'),"
                "       extract(epoch FROM age)::bigint, extract(epoch FROM max_age)::bigint,"
                "       max_age_source, to_char(due_at AT TIME ZONE 'UTC', '" +
                iso +
                "'), overdue,"
                "       CASE WHEN status = 'primary' THEN rekey.rotation_in_flight(key_id) END"
                "  FROM rekey.key_age ORDER BY scope, key_id")) {
    KeyAge k;
    k.key_id = row[0].as<uint32_t>();
    k.scope = row[1].as<std::string>();
    k.status = row[2].as<std::string>();
    k.kms_provider = row[3].as<std::string>();
    k.kms_key_ref = row[4].as<std::string>();
    k.created_at = row[5].as<std::string>();
    k.age_seconds = row[6].as<int64_t>();
    if (!row[7].is_null()) k.max_age_seconds = row[7].as<int64_t>();
    k.max_age_source = OptText(row[8]);
    k.due_at = OptText(row[9]);
    k.overdue = row[10].as<bool>();
    if (!row[11].is_null()) k.job_in_flight = row[11].as<int64_t>();
    out.push_back(std::move(k));
  }
  return out;
}

std::vector<KeyPolicy> ListPolicies(pqxx::transaction_base& txn) {
  std::vector<KeyPolicy> out;
  for (const auto& row : txn.exec("SELECT " + kPolicyColumns +
                                  " FROM rekey.key_policies ORDER BY scope = '*', scope")) {
    out.push_back(PolicyFrom(row));
  }
  return out;
}

KeyPolicy SetPolicy(pqxx::transaction_base& txn, const std::string& scope,
                    const std::string& max_age) {
  if (scope.empty()) throw ConfigError("give a key scope, or '*' for the default policy");
  try {
    return PolicyFrom(txn.exec_params1(
        "INSERT INTO rekey.key_policies AS p (scope, max_age) VALUES ($1, $2::interval)"
        " ON CONFLICT (scope) DO UPDATE SET max_age = EXCLUDED.max_age, updated_at = now(),"
        " updated_by = current_user RETURNING " +
            kPolicyColumns,
        scope, max_age));
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
  return txn.exec_params("DELETE FROM rekey.key_policies WHERE scope = $1", scope).affected_rows() >
         0;
}

}  // namespace rekey::keyring
