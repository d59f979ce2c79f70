// Key-age policies against a real PostgreSQL: which policy applies to each usable key (its own
// max_age, its scope's, or the default '*'), and which keys are overdue.
#include "keyring/key_policy.h"

#include <gtest/gtest.h>

#include <map>

#include "common/error.h"
#include "harness/pg_server.h"

namespace rekey::keyring {
namespace {

class KeyPolicyTest : public rekey::testing::PgTest {
 protected:
  // Inserts key `id` with plain SQL, then moves it to `status` (primary or retired) if given.
  void InsertKey(uint32_t id, const std::string& scope, const std::string& status,
                 const std::string& max_age = "") {
    Exec(
        "INSERT INTO rekey.keys (key_id, scope, kms_provider, kms_key_ref, wrapped_key, status,"
        " max_age) VALUES (" +
        std::to_string(id) + ", '" + scope + "', 'local', 'local:00', '\\x0102', 'enabled', " +
        (max_age.empty() ? "NULL" : "'" + max_age + "'") + ")");
    if (status != "enabled") {
      Exec("UPDATE rekey.keys SET status = '" + status + "' WHERE key_id = " + std::to_string(id));
    }
  }

  KeyPolicy Set(const std::string& scope, const std::string& max_age) {
    pqxx::work txn(conn());
    KeyPolicy policy = SetPolicy(txn, scope, max_age);
    txn.commit();
    return policy;
  }

  bool Remove(const std::string& scope) {
    pqxx::work txn(conn());
    bool removed = RemovePolicy(txn, scope);
    txn.commit();
    return removed;
  }

  std::map<uint32_t, KeyAge> Ages() {
    pqxx::read_transaction txn(conn());
    std::map<uint32_t, KeyAge> ages;
    for (KeyAge& age : ListKeyAges(txn)) ages.emplace(age.key_id, std::move(age));
    return ages;
  }
};

TEST_F(KeyPolicyTest, PoliciesAreSetListedAndRemoved) {
  KeyPolicy set = Set("tenant-b", "90d");
  EXPECT_EQ(set.scope, "tenant-b");
  EXPECT_EQ(set.max_age_seconds, 90 * 86400);
  EXPECT_EQ(set.max_age, "90 days");
  EXPECT_EQ(set.updated_at.back(), 'Z');
  EXPECT_FALSE(set.updated_by.empty());
  Set("*", "2160h");
  Set("tenant-a", "30 days");
  Set("tenant-b", "60 days");  // replaces the first

  pqxx::read_transaction txn(conn());
  std::vector<KeyPolicy> policies = ListPolicies(txn);
  txn.commit();
  ASSERT_EQ(policies.size(), 3u);
  // The default last, the others by scope.
  EXPECT_EQ(policies[0].scope, "tenant-a");
  EXPECT_EQ(policies[1].scope, "tenant-b");
  EXPECT_EQ(policies[1].max_age_seconds, 60 * 86400);
  EXPECT_EQ(policies[2].scope, "*");
  EXPECT_EQ(policies[2].max_age, "2160:00:00");

  EXPECT_TRUE(Remove("tenant-b"));
  EXPECT_FALSE(Remove("tenant-b"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.key_policies"), 2);
}

TEST_F(KeyPolicyTest, AMalformedOrNonPositiveMaxAgeIsAConfigError) {
  for (const std::string bad : {"banana", "-1 day", "0 seconds"}) {
    SCOPED_TRACE(bad);
    pqxx::work txn(conn());
    EXPECT_THROW(SetPolicy(txn, "tenant-a", bad), ConfigError);
  }
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.key_policies"), 0);
}

TEST_F(KeyPolicyTest, EachUsableKeyGetsItsOwnItsScopesOrTheDefaultMaxAge) {
  Set("*", "1 microsecond");  // every key past it at once
  Set("b", "3650 days");
  InsertKey(1, "a", "primary");
  InsertKey(2, "b", "primary");
  InsertKey(3, "c", "primary", "3650 days");
  InsertKey(4, "a", "enabled");
  InsertKey(5, "d", "retired");  // not usable: not listed

  std::map<uint32_t, KeyAge> ages = Ages();
  ASSERT_EQ(ages.size(), 4u);
  EXPECT_EQ(ages.count(5), 0u);

  EXPECT_EQ(ages[1].max_age_source, "default");
  EXPECT_TRUE(ages[1].overdue);
  ASSERT_TRUE(ages[1].due_at);
  EXPECT_EQ(ages[1].due_at->back(), 'Z');
  EXPECT_EQ(ages[2].max_age_source, "scope");
  EXPECT_EQ(ages[2].max_age_seconds, 3650 * 86400);
  EXPECT_FALSE(ages[2].overdue);
  EXPECT_EQ(ages[3].max_age_source, "key");
  EXPECT_FALSE(ages[3].overdue);
  // Past the default, but only a primary key can be overdue.
  EXPECT_EQ(ages[4].max_age_source, "default");
  EXPECT_FALSE(ages[4].overdue);
  for (const auto& [id, age] : ages) {
    SCOPED_TRACE(id);
    EXPECT_EQ(age.status, id == 4 ? "enabled" : "primary");
    EXPECT_EQ(age.kms_provider, "local");
    EXPECT_EQ(age.created_at.back(), 'Z');
    EXPECT_GE(age.age_seconds, 0);
    EXPECT_FALSE(age.job_in_flight);
  }

  // Without a scope policy, the default applies.
  EXPECT_TRUE(Remove("b"));
  ages = Ages();
  EXPECT_EQ(ages[2].max_age_source, "default");
  EXPECT_TRUE(ages[2].overdue);

  // Without any policy, no key is due.
  EXPECT_TRUE(Remove("*"));
  ages = Ages();
  EXPECT_FALSE(ages[1].max_age_source);
  EXPECT_FALSE(ages[1].max_age_seconds);
  EXPECT_FALSE(ages[1].due_at);
  EXPECT_FALSE(ages[1].overdue);
}

}  // namespace
}  // namespace rekey::keyring
