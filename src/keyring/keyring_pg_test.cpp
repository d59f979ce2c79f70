// The keyring against a real PostgreSQL: the lifecycle is enforced by the database itself, so most
// of these tests use plain SQL (as psql would) and expect the server to refuse.
#include "keyring/keyring.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "common/error.h"
#include "crypto/aes_gcm.h"
#include "harness/pg_server.h"
#include "kms/local_kms.h"

namespace rekey::keyring {
namespace {

using Transition = std::pair<std::string, std::string>;

const std::vector<std::string> kStatusNames = {"enabled", "primary", "decrypt_only", "retired",
                                               "destroyed"};

// The specification's legal transitions, written out independently of the migration.
const std::set<Transition> kLegal = {
    {"enabled", "primary"},      {"enabled", "decrypt_only"}, {"enabled", "retired"},
    {"primary", "decrypt_only"}, {"decrypt_only", "primary"}, {"decrypt_only", "retired"},
    {"retired", "decrypt_only"}, {"retired", "destroyed"},
};

// How to reach each status from enabled.
const std::map<std::string, std::vector<std::string>> kPathTo = {
    {"enabled", {}},
    {"primary", {"primary"}},
    {"decrypt_only", {"decrypt_only"}},
    {"retired", {"retired"}},
    {"destroyed", {"retired", "destroyed"}},
};

std::string AllowedFrom(const std::string& from) {
  std::string out;
  for (const auto& [f, t] : kLegal) {  // std::set orders (from, to) pairs: to is alphabetical
    if (f != from) continue;
    if (!out.empty()) out += ", ";
    out += t;
  }
  return out.empty() ? "none" : out;
}

std::string TinkPrefixHex(uint32_t key_id) {
  uint8_t id[4];
  PutUint32BigEndian(key_id, id);
  return "01" + HexEncode(id, 4);
}

Secret RandomKey() {
  Secret s(32);
  crypto::RandomBytes(s.mutable_data(), s.size());
  return s;
}

class KeyringTest : public rekey::testing::PgTest {
 protected:
  KeyringTest() : kms_(RandomKey(), "test master key") {}

  // Inserts key `id` in `scope` with plain SQL and walks it to `status`.
  void InsertKeyAt(uint32_t id, const std::string& status, const std::string& scope = "default") {
    Exec(
        "INSERT INTO rekey.keys (key_id, scope, kms_provider, kms_key_ref, wrapped_key, status) "
        "VALUES (" +
        std::to_string(id) + ", '" + scope + "', 'local', 'local:00', '\\x0102', 'enabled')");
    for (const std::string& step : kPathTo.at(status)) SetStatus(id, step);
  }

  void SetStatus(uint32_t id, const std::string& status) {
    Exec("UPDATE rekey.keys SET status = '" + status + "' WHERE key_id = " + std::to_string(id));
  }

  // Runs `sql` and returns the server's primary message, or "" if it succeeded.
  std::string Refusal(const std::string& sql) {
    try {
      Exec(sql);
      return "";
    } catch (const pqxx::sql_error& e) {
      std::string msg = e.what();
      if (msg.rfind("ERROR:  ", 0) == 0) msg = msg.substr(8);
      return msg.substr(0, msg.find('\n'));
    }
  }

  pqxx::row KeyRow(uint32_t id) {
    pqxx::work txn(conn());
    return txn.exec1(
        "SELECT status, wrapped_key IS NULL AS wrapped_key_gone, "
        "enabled_at IS NOT NULL AS enabled_stamped, primary_at IS NOT NULL AS primary_stamped, "
        "decrypt_only_at IS NOT NULL AS decrypt_only_stamped, "
        "retired_at IS NOT NULL AS retired_stamped, destroyed_at IS NOT NULL AS destroyed_stamped, "
        "updated_by FROM rekey.keys WHERE key_id = " +
        std::to_string(id));
  }

  std::string Status(uint32_t id) { return KeyRow(id)["status"].as<std::string>(); }

  kms::LocalKms kms_;
};

TEST_F(KeyringTest, EveryTransitionPairIsDecidedByTheDatabase) {
  pqxx::work check(conn());
  for (const std::string& from : kStatusNames) {
    for (const std::string& to : kStatusNames) {
      bool allowed = check
                         .exec_params1("SELECT rekey.key_transition_allowed($1, $2) AS allowed",
                                       from, to)["allowed"]
                         .as<bool>();
      EXPECT_EQ(allowed, kLegal.count({from, to}) == 1) << from << " -> " << to;
    }
  }
  check.commit();

  uint32_t id = 100;
  for (const std::string& from : kStatusNames) {
    for (const std::string& to : kStatusNames) {
      ++id;
      SCOPED_TRACE(from + " -> " + to);
      InsertKeyAt(id, from, "scope" + std::to_string(id));
      std::string refusal = Refusal("UPDATE rekey.keys SET status = '" + to +
                                    "' WHERE key_id = " + std::to_string(id));
      if (from == to) {
        // Not a transition (e.g. an UPDATE of another column): allowed, nothing stamped anew.
        EXPECT_EQ(refusal, "");
        EXPECT_EQ(Status(id), from);
      } else if (kLegal.count({from, to})) {
        EXPECT_EQ(refusal, "");
        pqxx::row row = KeyRow(id);
        EXPECT_EQ(row["status"].as<std::string>(), to);
        EXPECT_TRUE(row[to + "_stamped"].as<bool>()) << "no timestamp for " << to;
        EXPECT_FALSE(row["updated_by"].is_null());
        EXPECT_EQ(row["wrapped_key_gone"].as<bool>(), to == "destroyed");
      } else {
        EXPECT_EQ(refusal, "illegal key lifecycle transition for key " + std::to_string(id) + ": " +
                               from + " -> " + to + " (allowed from " + from + ": " +
                               AllowedFrom(from) + ")");
        EXPECT_EQ(Status(id), from);
      }
    }
  }
}

TEST_F(KeyringTest, TransitionMessageExampleFromSpec) {
  InsertKeyAt(7, "primary");
  EXPECT_EQ(Refusal("UPDATE rekey.keys SET status = 'retired' WHERE key_id = 7"),
            "illegal key lifecycle transition for key 7: primary -> retired (allowed from "
            "primary: decrypt_only)");
}

TEST_F(KeyringTest, DestroyErasesWrappedKeyForGood) {
  InsertKeyAt(1, "retired");
  SetStatus(1, "destroyed");
  pqxx::row row = KeyRow(1);
  EXPECT_TRUE(row["wrapped_key_gone"].as<bool>());
  EXPECT_TRUE(row["destroyed_stamped"].as<bool>());
  EXPECT_NE(Refusal("UPDATE rekey.keys SET wrapped_key = '\\x01' WHERE key_id = 1"), "");
  EXPECT_NE(Refusal("UPDATE rekey.keys SET kms_key_ref = 'local:11' WHERE key_id = 1"), "");
  EXPECT_NE(Refusal("UPDATE rekey.keys SET kms_provider = 'aws-kms' WHERE key_id = 1"), "");
  // A destroyed key without its wrapped key is the only consistent state: the CHECK holds too.
  EXPECT_NE(Refusal("UPDATE rekey.keys SET status = 'retired', wrapped_key = '\\x01' "
                    "WHERE key_id = 1"),
            "");
}

TEST_F(KeyringTest, WrappedKeyMayBeRewrappedWhileNotDestroyed) {
  InsertKeyAt(1, "primary");
  EXPECT_EQ(Refusal("UPDATE rekey.keys SET wrapped_key = '\\x0303', kms_key_ref = 'local:22' "
                    "WHERE key_id = 1"),
            "");
  EXPECT_NE(Refusal("UPDATE rekey.keys SET wrapped_key = NULL WHERE key_id = 1"), "");
}

TEST_F(KeyringTest, IdentityColumnsAreImmutable) {
  InsertKeyAt(1, "enabled");
  EXPECT_NE(Refusal("UPDATE rekey.keys SET key_id = 2 WHERE key_id = 1"), "");
  EXPECT_NE(Refusal("UPDATE rekey.keys SET scope = 'other' WHERE key_id = 1"), "");
  EXPECT_NE(Refusal("UPDATE rekey.keys SET created_at = now() - interval '1 day' WHERE key_id = 1"),
            "");
}

TEST_F(KeyringTest, InsertMustBeEnabled) {
  for (const std::string& status : kStatusNames) {
    std::string refusal = Refusal(
        "INSERT INTO rekey.keys (key_id, kms_provider, kms_key_ref, wrapped_key, status) VALUES "
        "(5, 'local', 'local:00', '\\x01', '" +
        status + "')");
    if (status == "enabled") {
      EXPECT_EQ(refusal, "");
    } else {
      EXPECT_NE(refusal.find("must be inserted with status enabled"), std::string::npos) << refusal;
    }
  }
  EXPECT_NE(Refusal("INSERT INTO rekey.keys (key_id, kms_provider, kms_key_ref, wrapped_key, "
                    "status) VALUES (4294967296, 'local', 'r', '\\x01', 'enabled')"),
            "");
  EXPECT_NE(Refusal("INSERT INTO rekey.keys (key_id, kms_provider, kms_key_ref, wrapped_key, "
                    "status) VALUES (6, 'gcp', 'r', '\\x01', 'enabled')"),
            "");
}

TEST_F(KeyringTest, DeleteAndTruncateAreRejected) {
  InsertKeyAt(3, "retired");
  EXPECT_EQ(Refusal("DELETE FROM rekey.keys WHERE key_id = 3"),
            "key 3 cannot be deleted: key records are audit evidence; destroy the key instead "
            "(rekey keys destroy 3)");
  EXPECT_NE(Refusal("TRUNCATE rekey.keys CASCADE"), "");
  EXPECT_EQ(Status(3), "retired");
}

TEST_F(KeyringTest, OnePrimaryPerScope) {
  InsertKeyAt(1, "primary", "a");
  InsertKeyAt(2, "enabled", "a");
  InsertKeyAt(3, "primary", "b");  // another scope may have its own
  std::string refusal = Refusal("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 2");
  EXPECT_NE(refusal.find("keys_one_primary_per_scope"), std::string::npos) << refusal;
  EXPECT_EQ(Status(2), "enabled");
}

// --- retire/destroy while a registered target still holds values ---

struct UsageCase {
  std::string codec;
  uint32_t key_id;
};

class KeyUsageTest : public KeyringTest, public ::testing::WithParamInterface<UsageCase> {
 protected:
  // A table with `in_use` values under the key, others under key_id ^ 1 and NULLs.
  void MakeTarget(int in_use) {
    const UsageCase& c = GetParam();
    Exec(
        "CREATE TABLE public.payment_methods (id serial PRIMARY KEY, token bytea, token_key "
        "bigint, tenant text)");
    std::string under = c.codec == "tink" ? "'\\x" + TinkPrefixHex(c.key_id) + "aabbcc'::bytea"
                                          : "'\\xaabbcc'::bytea";
    std::string other = c.codec == "tink" ? "'\\x" + TinkPrefixHex(c.key_id ^ 1) + "aabbcc'::bytea"
                                          : "'\\xaabbcc'::bytea";
    Exec("INSERT INTO public.payment_methods (token, token_key, tenant) SELECT " + under + ", " +
         std::to_string(c.key_id) + ", 't' || (g % 2) FROM generate_series(1, " +
         std::to_string(in_use) + ") g");
    Exec("INSERT INTO public.payment_methods (token, token_key, tenant) SELECT " + other + ", " +
         std::to_string(c.key_id ^ 1) + ", 't0' FROM generate_series(1, 7)");
    // NULL values hold nothing under any key (raw: key column set, value NULL).
    Exec("INSERT INTO public.payment_methods (token, token_key, tenant) VALUES (NULL, " +
         std::to_string(c.key_id) + ", 't0')");
    if (c.codec == "tink") {
      Exec(
          "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec) "
          "VALUES ('public', 'payment_methods', 'id', 'token', 'tink')");
    } else {
      Exec(
          "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, "
          "key_id_column) VALUES ('public', 'payment_methods', 'id', 'token', 'raw', "
          "'token_key')");
    }
  }

  // Moves every value off the key, as a finished rotation job would.
  void RotateAway() {
    const UsageCase& c = GetParam();
    if (c.codec == "tink") {
      Exec("UPDATE public.payment_methods SET token = '\\x" + TinkPrefixHex(c.key_id ^ 1) +
           "dd'::bytea WHERE token IS NOT NULL");
    } else {
      Exec("UPDATE public.payment_methods SET token_key = " + std::to_string(c.key_id ^ 1));
    }
  }

  // The first line of the trigger's refusal (what psql shows first).
  std::string Refused(const std::string& verb, int columns = 1) {
    const std::string id = std::to_string(GetParam().key_id);
    return "key " + id + " cannot be " + verb + ": " + std::to_string(columns) +
           " column(s) hold values under it or could not be read; rotate the values to another "
           "key first (rekey keys usage " +
           id +
           " lists them), or accept a column that cannot be read with --accept-unknown "
           "SCHEMA.TABLE.COLUMN";
  }
  // The whole refusal: the first line, then one line per column.
  // `formats`: where the census found them (default: the target's codec).
  std::string InUseMessage(int n, const std::string& verb = "retired",
                           const std::string& formats = "") {
    return Refused(verb) + "\npublic.payment_methods.token: " + std::to_string(n) +
           " values under key " + std::to_string(GetParam().key_id) + " (" +
           (formats.empty() ? GetParam().codec : formats) + "; registered target 1)";
  }

  std::string SetStatusSql(const std::string& status) {
    return "UPDATE rekey.keys SET status = '" + status +
           "' WHERE key_id = " + std::to_string(GetParam().key_id);
  }
};

TEST_P(KeyUsageTest, RetireAndDestroyRefusedWhileValuesRemain) {
  const uint32_t id = GetParam().key_id;
  InsertKeyAt(id, "decrypt_only");
  MakeTarget(1200);

  {
    pqxx::work txn(conn());
    pqxx::result usage =
        txn.exec_params("SELECT target, n FROM rekey.key_usage($1)", static_cast<int64_t>(id));
    ASSERT_EQ(usage.size(), 1u);
    EXPECT_EQ(usage[0]["target"].as<std::string>(), "public.payment_methods.token");
    EXPECT_EQ(usage[0]["n"].as<int64_t>(), 1200);
  }
  EXPECT_EQ(Refusal(SetStatusSql("retired")), Refused("retired"));
  EXPECT_EQ(Status(id), "decrypt_only");

  // Through the C++ API: the trigger's message, as a StateError.
  {
    pqxx::work txn(conn());
    try {
      TransitionKey(txn, id, KeyStatus::kRetired);
      ADD_FAILURE() << "retired a key in use";
    } catch (const StateError& e) {
      EXPECT_EQ(std::string(e.what()), InUseMessage(1200));
    }
  }

  RotateAway();
  EXPECT_EQ(Refusal(SetStatusSql("retired")), "");

  // A value that reappears under the retired key (e.g. restored from a backup) blocks destroy.
  Exec("INSERT INTO public.payment_methods (token, token_key) VALUES ('\\x" + TinkPrefixHex(id) +
       "00'::bytea, " + std::to_string(id) + ")");
  EXPECT_EQ(Refusal(SetStatusSql("destroyed")), Refused("destroyed"));
  {
    pqxx::work txn(conn());
    try {
      TransitionKey(txn, id, KeyStatus::kDestroyed);
      ADD_FAILURE() << "destroyed a key in use";
    } catch (const StateError& e) {
      // The value has a Tink prefix and, for a raw target, its row's key-id column names the key.
      EXPECT_EQ(std::string(e.what()),
                InUseMessage(1, "destroyed", GetParam().codec == "raw" ? "tink, raw" : "tink"));
    }
  }
  Exec("DELETE FROM public.payment_methods WHERE token_key = " + std::to_string(id) +
       " OR substring(token from 1 for 5) = '\\x" + TinkPrefixHex(id) + "'::bytea");
  EXPECT_EQ(Refusal(SetStatusSql("destroyed")), "");
  EXPECT_TRUE(KeyRow(id)["wrapped_key_gone"].as<bool>());
}

// A job scope is not a filter on usage: values outside the scope are under the key all the same,
// and a scope's text form need not match the column's (a uuid given in upper case).
TEST_P(KeyUsageTest, ScopedTargetCountsTheWholeColumn) {
  const uint32_t id = GetParam().key_id;
  InsertKeyAt(id, "enabled");
  MakeTarget(10);  // 5 rows in tenant t0, 5 in t1
  Exec("UPDATE rekey.targets SET scope_column = 'tenant', scope_value = 't1'");
  pqxx::work txn(conn());
  pqxx::row usage =
      txn.exec_params1("SELECT target, n FROM rekey.key_usage($1)", static_cast<int64_t>(id));
  EXPECT_EQ(usage["target"].as<std::string>(), "public.payment_methods.token");
  EXPECT_EQ(usage["n"].as<int64_t>(), 10);
}

// A target whose table is gone is never skipped: it blocks until an operator forgets it.
TEST_P(KeyUsageTest, DroppedTargetTableBlocksUntilForgotten) {
  const uint32_t id = GetParam().key_id;
  InsertKeyAt(id, "enabled");
  MakeTarget(3);
  EXPECT_EQ(Refusal(SetStatusSql("retired")), Refused("retired"));
  Exec("DROP TABLE public.payment_methods");
  EXPECT_EQ(Refusal(SetStatusSql("retired")), Refused("retired"));
  EXPECT_EQ(Scalar("SELECT coalesce(n::text, 'unknown') || ': ' || unknown FROM "
                   "rekey.key_usage(" +
                   std::to_string(id) + ")"),
            "unknown: registered target 1 (public.payment_methods.token): its table no longer "
            "exists; if its values are truly gone: rekey keys forget-target 1");
  Exec("SELECT rekey.forget_target(1, 'dropped with its values')");
  EXPECT_EQ(Refusal(SetStatusSql("retired")), "");
}

INSTANTIATE_TEST_SUITE_P(Codecs, KeyUsageTest,
                         ::testing::Values(UsageCase{"tink", 3}, UsageCase{"tink", 0x01020304},
                                           UsageCase{"tink", 4294967295u}, UsageCase{"raw", 3},
                                           UsageCase{"raw", 4294967295u}),
                         [](const ::testing::TestParamInfo<UsageCase>& param_info) {
                           return param_info.param.codec + "_" +
                                  std::to_string(param_info.param.key_id);
                         });

// --- the C++ API ---

TEST_F(KeyringTest, StatusNamesRoundTrip) {
  ASSERT_EQ(AllKeyStatuses().size(), kStatusNames.size());
  for (size_t i = 0; i < kStatusNames.size(); ++i) {
    EXPECT_EQ(KeyStatusName(AllKeyStatuses()[i]), kStatusNames[i]);
    EXPECT_EQ(ParseKeyStatus(kStatusNames[i]), AllKeyStatuses()[i]);
  }
  EXPECT_EQ(ParseKeyStatus("Primary"), std::nullopt);
  EXPECT_EQ(ParseKeyStatus(""), std::nullopt);
}

TEST_F(KeyringTest, CreateKeyAllocatesIds) {
  pqxx::work txn(conn());
  KeyRecord first = CreateKey(txn, kms_, {});
  EXPECT_EQ(first.key_id, 1u);
  EXPECT_EQ(first.scope, "default");
  EXPECT_EQ(first.status, KeyStatus::kEnabled);
  EXPECT_EQ(first.origin, "generated");
  EXPECT_EQ(first.kms_provider, "local");
  EXPECT_EQ(first.kms_key_ref, kms_.default_key_ref());
  ASSERT_TRUE(first.wrapped_key.has_value());
  EXPECT_EQ(first.wrapped_key->size(), kms::kLocalWrappedSize);
  EXPECT_EQ(first.max_age, std::nullopt);
  EXPECT_TRUE(first.enabled_at.has_value());
  EXPECT_EQ(first.created_at.size(), 20u) << first.created_at;  // 2024-05-01T12:00:00Z

  EXPECT_EQ(CreateKey(txn, kms_, {}).key_id, 2u);
  CreateKeyOptions explicit_id;
  explicit_id.key_id = 1000;
  explicit_id.scope = "tenant-a";
  explicit_id.max_age = std::chrono::hours(24 * 90);
  KeyRecord k = CreateKey(txn, kms_, explicit_id);
  EXPECT_EQ(k.key_id, 1000u);
  EXPECT_EQ(k.scope, "tenant-a");
  EXPECT_EQ(k.max_age, std::chrono::seconds(90 * 86400));
  EXPECT_EQ(CreateKey(txn, kms_, {}).key_id, 1001u);
  EXPECT_THROW(CreateKey(txn, kms_, explicit_id), StateError);
  txn.abort();
}

TEST_F(KeyringTest, CreatedKeyUnwrapsToAFreshKey) {
  pqxx::work txn(conn());
  KeyRecord a = CreateKey(txn, kms_, {});
  KeyRecord b = CreateKey(txn, kms_, {});
  Secret ka = kms_.UnwrapDataKey(a.key_id, a.kms_key_ref, *a.wrapped_key);
  Secret kb = kms_.UnwrapDataKey(b.key_id, b.kms_key_ref, *b.wrapped_key);
  EXPECT_EQ(ka.size(), 32u);
  EXPECT_FALSE(ka.Equals(kb));
}

TEST_F(KeyringTest, ImportUnwrapRoundTrip) {
  Secret raw = RandomKey();
  {
    pqxx::work txn(conn());
    KeyRecord k = ImportKey(txn, kms_, 42, "legacy", raw);
    EXPECT_EQ(k.origin, "imported");
    EXPECT_EQ(k.status, KeyStatus::kEnabled);
    txn.commit();
  }
  pqxx::work txn(conn());
  KeyRecord k = GetKey(txn, 42);
  EXPECT_EQ(k.scope, "legacy");
  EXPECT_TRUE(kms_.UnwrapDataKey(42, k.kms_key_ref, *k.wrapped_key).Equals(raw));
  // Bound to its id: the same wrapped bytes do not unwrap as another key.
  EXPECT_THROW(kms_.UnwrapDataKey(43, k.kms_key_ref, *k.wrapped_key), KeyError);
  EXPECT_THROW(ImportKey(txn, kms_, 42, "legacy", raw), StateError);
  for (size_t size : {0, 16, 31, 33}) {
    EXPECT_THROW(ImportKey(txn, kms_, 50, "legacy", Secret(size)), KeyError) << size;
  }
}

TEST_F(KeyringTest, GetUnknownKeyIsKeyError) {
  pqxx::work txn(conn());
  try {
    GetKey(txn, 9);
    FAIL();
  } catch (const KeyError& e) {
    EXPECT_STREQ(e.what(), "unknown key id 9; `rekey keys list` shows the keyring");
  }
  EXPECT_EQ(FindKey(txn, 9), std::nullopt);
  EXPECT_THROW(TransitionKey(txn, 9, KeyStatus::kPrimary), KeyError);
}

TEST_F(KeyringTest, TransitionKeyMapsRefusalToStateError) {
  InsertKeyAt(7, "primary");
  pqxx::work txn(conn());
  try {
    TransitionKey(txn, 7, KeyStatus::kRetired);
    FAIL();
  } catch (const StateError& e) {
    EXPECT_STREQ(e.what(),
                 "illegal key lifecycle transition for key 7: primary -> retired (allowed from "
                 "primary: decrypt_only)");
  }
}

TEST_F(KeyringTest, TransitionToSameStatusIsStateError) {
  InsertKeyAt(7, "retired");
  pqxx::work txn(conn());
  EXPECT_THROW(TransitionKey(txn, 7, KeyStatus::kRetired), StateError);
}

TEST_F(KeyringTest, PromoteDemotesPreviousPrimaryOfScopeOnly) {
  pqxx::work txn(conn());
  KeyRecord a = CreateKey(txn, kms_, {});
  KeyRecord b = CreateKey(txn, kms_, {});
  CreateKeyOptions other;
  other.scope = "other";
  KeyRecord c = CreateKey(txn, kms_, other);

  PromoteResult r = PromoteKey(txn, a.key_id);
  EXPECT_EQ(r.promoted.status, KeyStatus::kPrimary);
  EXPECT_EQ(r.demoted, std::nullopt);
  PromoteKey(txn, c.key_id);
  r = PromoteKey(txn, b.key_id);
  EXPECT_EQ(r.demoted, a.key_id);
  EXPECT_EQ(GetKey(txn, a.key_id).status, KeyStatus::kDecryptOnly);
  EXPECT_EQ(PrimaryKey(txn)->key_id, b.key_id);
  EXPECT_EQ(PrimaryKey(txn, "other")->key_id, c.key_id);
  EXPECT_EQ(PrimaryKey(txn, "nobody"), std::nullopt);

  // Rollback: the old key becomes primary again.
  r = PromoteKey(txn, a.key_id);
  EXPECT_EQ(r.demoted, b.key_id);
  EXPECT_EQ(PrimaryKey(txn)->key_id, a.key_id);
  EXPECT_THROW(PromoteKey(txn, a.key_id), StateError);
  txn.commit();
}

TEST_F(KeyringTest, RefusedPromotionChangesNothing) {
  pqxx::work setup(conn());
  KeyRecord a = CreateKey(setup, kms_, {});
  KeyRecord b = CreateKey(setup, kms_, {});
  PromoteKey(setup, a.key_id);
  TransitionKey(setup, b.key_id, KeyStatus::kRetired);
  setup.commit();
  {
    pqxx::work txn(conn());
    try {
      PromoteKey(txn, b.key_id);
      FAIL();
    } catch (const StateError& e) {
      EXPECT_NE(std::string(e.what()).find("retired -> primary"), std::string::npos) << e.what();
    }
  }
  pqxx::work txn(conn());
  EXPECT_EQ(GetKey(txn, a.key_id).status, KeyStatus::kPrimary);
  EXPECT_EQ(GetKey(txn, b.key_id).status, KeyStatus::kRetired);
}

TEST_F(KeyringTest, ListKeysNeverHoldsPlaintext) {
  Secret raw = RandomKey();
  pqxx::work txn(conn());
  ImportKey(txn, kms_, 5, "default", raw);
  CreateKey(txn, kms_, {});
  std::vector<KeyRecord> keys = ListKeys(txn);
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].key_id, 5u);
  EXPECT_EQ(keys[1].key_id, 6u);
  std::string raw_str(reinterpret_cast<const char*>(raw.data()), raw.size());
  for (const KeyRecord& k : keys) {
    EXPECT_EQ(AsStringView(*k.wrapped_key).find(raw_str), std::string::npos);
  }
}

}  // namespace
}  // namespace rekey::keyring
