// Key safety (issue 15), keyring slice: retire and destroy of a data key are refused while any
// value in the database is, or might be, under the key -- registered or not, renamed, in another
// format, hidden by row-level security, written by a batch in flight -- and the refusals reach
// psql users too (the check is the lifecycle trigger's). End to end through the `rekey` binary
// against a real PostgreSQL.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

constexpr char kTenant[] = "8f14e45f-ceea-467f-a0e6-0d3c5a3b1b2e";
constexpr char kTenantUpper[] = "8F14E45F-CEEA-467F-A0E6-0D3C5A3B1B2E";

class KeyRetireSafetyTest : public PgTest {
 protected:
  void TearDown() override {
    PgTest::TearDown();
    if (logins_.empty()) return;
    pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
    pqxx::nontransaction txn(admin);
    for (const std::string& login : logins_) txn.exec("DROP ROLE IF EXISTS " + login);
  }

  ProcessResult Rekey(const std::vector<std::string>& args, const std::string& conninfo = "",
                      EnvOverrides env = WorkerEnv()) {
    std::vector<std::string> full{"--db", conninfo.empty() ? this->conninfo() : conninfo};
    full.insert(full.end(), args.begin(), args.end());
    env["DATABASE_URL"] = std::nullopt;
    return RunRekey(full, env);
  }

  void SetStatus(uint32_t key, const std::string& status) {
    Exec("UPDATE rekey.keys SET status = '" + status + "' WHERE key_id = " + std::to_string(key));
  }
  std::string Status(uint32_t key) {
    return Scalar("SELECT status FROM rekey.keys WHERE key_id = " + std::to_string(key));
  }

  // Keys 1 (decrypt_only: being rotated away) and 2 (primary).
  void KeysOneAndTwo() {
    ImportTestKeys(conn(), {1, 2});
    SetStatus(1, "decrypt_only");
    SetStatus(2, "primary");
  }

  // `table` (id, tenant_id, key_id, token, note) with `rows` Tink values under `key`, and its token
  // column registered as a Tink target.
  void RegisteredTinkTable(const std::string& table, int rows, uint32_t key) {
    SeedTinkTable(conn(), table, rows, key);
    const std::string name = table.substr(table.find('.') + 1);
    Exec(
        "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec) "
        "VALUES ('public', '" +
        name + "', 'id', 'token', 'tink')");
  }

  // Moves every value of a registered Tink column from key 1 to key 2 by prefix, as a finished
  // rotation would (the ciphertext no longer authenticates; the census never decrypts).
  void RotateTokenPrefixToKeyTwo(const std::string& table) {
    Exec("UPDATE " + table +
         " SET token = '\\x0100000002'::bytea || substring(token from 6), key_id = 2");
  }

  // sql/roles.sql, and a login (named after this test's database: roles are cluster-wide) in each
  // of `groups`.
  std::string LoginIn(const std::string& suffix, const std::vector<std::string>& groups) {
    if (!roles_applied_) {
      std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
      std::stringstream sql;
      sql << in.rdbuf();
      Exec(sql.str());
      roles_applied_ = true;
    }
    const std::string login = dbname() + "_" + suffix;
    std::string in_roles;
    for (const std::string& g : groups) in_roles += (in_roles.empty() ? "" : ", ") + g;
    Exec("DROP ROLE IF EXISTS " + login + "; CREATE ROLE " + login + " LOGIN IN ROLE " + in_roles);
    logins_.push_back(login);
    return login;
  }

  std::string ConnInfoAs(const std::string& login) { return conninfo() + " user=" + login; }

 private:
  bool roles_applied_ = false;
  std::vector<std::string> logins_;
};

// Recipe 1 of issue 15: a tenant's job scoped by an upper-case uuid. The values it moved to key 2
// were invisible to key usage (uuid prints in lower case), so rotate-due promoted a new key "with
// no targets" and key 2 could be retired and destroyed over 1000 values; the other tenants' values
// under key 1 were as invisible.
TEST_F(KeyRetireSafetyTest, UpperCaseUuidScopeValuesAreCountedRotatedAndProtected) {
  ImportTestKeys(conn(), {1, 2});
  SetStatus(1, "primary");
  Exec("CREATE TABLE public.t (id bigint PRIMARY KEY, tenant uuid, token bytea)");
  {
    pqxx::work txn(conn());
    for (int64_t id = 1; id <= 1200; ++id) {
      txn.exec_params("INSERT INTO public.t VALUES ($1, $2, $3)", id,
                      id <= 1000 ? kTenant : "00000000-0000-0000-0000-000000000001",
                      pqxx::binarystring(TinkEncrypt(1, PlaintextFor(id))));
    }
    txn.commit();
  }
  ProcessResult r =
      Rekey({"job", "create", "--table", "public.t", "--column", "token", "--map", "1:2",
             "--stages", "100", "--scope", std::string("tenant=") + kTenantUpper});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Rekey({"work", "--job", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = 1"), "completed");
  ASSERT_EQ(Count("SELECT count(*) FROM public.t WHERE substring(token from 1 for 5) = "
                  "'\\x0100000002'::bytea"),
            1000);

  // Usage counts the whole column, whatever the scope's spelling.
  EXPECT_EQ(Scalar("SELECT string_agg(target || '=' || n, ',') FROM rekey.key_usage(2)"),
            "public.t.token=1000");
  EXPECT_EQ(Scalar("SELECT string_agg(target || '=' || n, ',') FROM rekey.key_usage(1)"),
            "public.t.token=200");

  // rotate-due finds key 2's values and schedules a job on the table instead of promoting a key
  // "with no targets".
  ASSERT_EQ(Rekey({"keys", "policy", "set", "--max-age", "1s"}).exit_code, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  r = Rekey({"rotate-due", "--stages", "100", "--observe", "0s", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json due = json::parse(r.out);
  ASSERT_EQ(due.size(), 1u) << r.out;
  EXPECT_EQ(due[0]["action"], "scheduled") << r.out;
  ASSERT_EQ(due[0]["jobs"].size(), 1u) << r.out;
  EXPECT_THAT(due[0]["targets"][0].get<std::string>(), HasSubstr("public.t (token; 1000 values)"));
  const std::string job = std::to_string(due[0]["jobs"][0].get<int64_t>());

  // The new job promoted key 3 at once (single stage): key 2 is decrypt_only, yet untouchable.
  EXPECT_EQ(Status(2), "decrypt_only");
  r = Rekey({"keys", "retire", "2"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("unfinished job " + job));
  EXPECT_EQ(Status(2), "decrypt_only");

  r = Rekey({"work", "--job", job});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  EXPECT_EQ(Scalar("SELECT string_agg(target || '=' || n, ',') FROM rekey.key_usage(2)"),
            "public.t.token=0");

  // Key 1 still holds the other tenant's 200 values: refused, naming the column and the count.
  r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("public.t.token: 200 values under key 1 (tink; registered target"));
  EXPECT_EQ(Status(1), "decrypt_only");

  // Key 2 holds nothing any more: retire, then an honest destroy.
  r = Rekey({"keys", "retire", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = Rekey({"keys", "destroy", "2", "--yes"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("copies survive in WAL, base backups, replicas and logical dumps"));
  EXPECT_THAT(r.out, HasSubstr("retired in the KMS"));
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

// Recipe 2 of issue 15: raw values name no key; the key-id column governs every bytea value of
// its row. cvv is not registered, pan is; rows whose pan is NULL still hold cvv under key 1.
TEST_F(KeyRetireSafetyTest, RawKeyIdColumnGovernsEveryByteaColumnOfTheRow) {
  KeysOneAndTwo();
  Exec(
      "CREATE TABLE public.cards (id int PRIMARY KEY, key_id int, pan bytea, cvv bytea);"
      "INSERT INTO public.cards SELECT g, 2, '\\xaa01'::bytea, '\\xbb01'::bytea "
      "  FROM generate_series(1, 100) g;"
      "INSERT INTO public.cards SELECT g, 1, NULL, '\\xbb02'::bytea "
      "  FROM generate_series(101, 130) g;"
      "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, "
      "  key_id_column) VALUES ('public', 'cards', 'id', 'pan', 'raw', 'key_id')");
  EXPECT_EQ(Scalar("SELECT string_agg(target || '=' || n, ',') FROM rekey.key_usage(1)"),
            "public.cards.pan=0");
  ProcessResult r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("public.cards.cvv: 30 values under key 1 (raw)"));
  EXPECT_THAT(r.err, Not(HasSubstr("public.cards.pan")));
  EXPECT_EQ(Status(1), "decrypt_only");

  // Destroy too: retired while no row named key 1, then rows under key 1 came back.
  Exec("UPDATE public.cards SET key_id = 2 WHERE key_id = 1");
  ASSERT_EQ(Rekey({"keys", "retire", "1"}).exit_code, 0);
  Exec("UPDATE public.cards SET key_id = 1 WHERE id > 120");
  r = Rekey({"keys", "destroy", "1", "--yes"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("public.cards.cvv: 10 values under key 1 (raw)"));
  EXPECT_EQ(Status(1), "retired");
}

TEST_F(KeyRetireSafetyTest, RenamedTableMovedSchemaAndRenamedColumnAreFollowed) {
  KeysOneAndTwo();
  RegisteredTinkTable("public.cards", 20, 1);
  Exec(
      "ALTER TABLE public.cards RENAME TO cards_v2;"
      "CREATE SCHEMA vault;"
      "ALTER TABLE public.cards_v2 SET SCHEMA vault;"
      "ALTER TABLE vault.cards_v2 RENAME COLUMN token TO secret");
  EXPECT_EQ(Scalar("SELECT target || '=' || n FROM rekey.key_usage(1)"),
            "vault.cards_v2.secret=20");
  EXPECT_EQ(Scalar("SELECT table_name || ':' || array_to_string(columns, ',') || ':' || "
                   "values_under_key FROM rekey.rotation_targets(1)"),
            "vault.cards_v2:secret:20");
  ProcessResult r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(
      r.err, HasSubstr("vault.cards_v2.secret: 20 values under key 1 (tink; registered target 1)"));
  EXPECT_EQ(Status(1), "decrypt_only");
}

TEST_F(KeyRetireSafetyTest, DroppedTargetColumnBlocksUntilForgotten) {
  KeysOneAndTwo();
  RegisteredTinkTable("public.cards", 20, 1);
  Exec("ALTER TABLE public.cards DROP COLUMN token");
  ProcessResult r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("public.cards.token: unresolved: registered target 1 "
                               "(public.cards.token): its column no longer exists in "
                               "public.cards; if its values are truly gone: rekey keys "
                               "forget-target 1"));
  EXPECT_EQ(Status(1), "decrypt_only");

  // Forgetting is explicit, confirmed and audited; a live target cannot be forgotten.
  RegisteredTinkTable("public.live", 3, 2);
  r = Rekey({"keys", "forget-target", "2", "--yes"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("still exists"));
  r = Rekey({"keys", "forget-target", "1"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  r = Rekey({"keys", "forget-target", "1", "--yes", "--reason", "dropped by migration 42"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "forgot target 1 (public.cards.token): its column no longer exists in public.cards\n");
  EXPECT_EQ(Scalar("SELECT details->>'reason' FROM rekey.audit WHERE action = 'target.forgotten'"),
            "dropped by migration 42");
  r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// Identity first, names second: a table dropped and created again under its registered name (or a
// database restored from a logical dump, with new oids) is counted under that name, not lost.
TEST_F(KeyRetireSafetyTest, ATableRecreatedUnderItsRegisteredNameIsCountedByName) {
  KeysOneAndTwo();
  RegisteredTinkTable("public.cards", 5, 1);
  Exec("DROP TABLE public.cards");
  SeedTinkTable(conn(), "public.cards", 7, 1);
  EXPECT_EQ(Scalar("SELECT target || '=' || n FROM rekey.key_usage(1)"), "public.cards.token=7");
  EXPECT_EQ(Scalar("SELECT count(*) FROM rekey.target_columns() WHERE unresolved IS NOT NULL"),
            "0");
  ProcessResult r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("public.cards.token: 7 values under key 1 (tink; registered target "
                               "1)"));
}

// Values the registry never heard of: a history table filled by a trigger, and a column added
// later holding the same values as base64 and hex text.
TEST_F(KeyRetireSafetyTest, UnregisteredHistoryTableAndLaterColumnsAreFoundByTheCensus) {
  KeysOneAndTwo();
  RegisteredTinkTable("public.cards", 20, 1);
  Exec(R"(CREATE TABLE public.cards_history (hid serial PRIMARY KEY, card_id bigint, token bytea);
          CREATE FUNCTION public.keep_history() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            INSERT INTO public.cards_history (card_id, token) VALUES (OLD.id, OLD.token);
            RETURN NEW;
          END $$;
          CREATE TRIGGER keep_history AFTER UPDATE OF token ON public.cards
            FOR EACH ROW EXECUTE FUNCTION public.keep_history();
          ALTER TABLE public.cards ADD COLUMN token_b64 text, ADD COLUMN token_hex varchar(400);
          UPDATE public.cards SET token_b64 = encode(token, 'base64') WHERE id <= 5;
          UPDATE public.cards SET token_hex = upper(encode(token, 'hex')) WHERE id <= 3;)");
  RotateTokenPrefixToKeyTwo("public.cards");
  EXPECT_EQ(Scalar("SELECT n FROM rekey.key_usage(1)"), "0");

  ProcessResult r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("key 1 cannot be retired: 3 column(s)"));
  EXPECT_THAT(r.err, HasSubstr("\npublic.cards.token_b64: 5 values under key 1 (tink-base64)"));
  EXPECT_THAT(r.err, HasSubstr("\npublic.cards.token_hex: 3 values under key 1 (tink-hex)"));
  EXPECT_THAT(r.err, HasSubstr("\npublic.cards_history.token: 20 values under key 1 (tink)"));
  EXPECT_THAT(r.err, Not(HasSubstr("public.cards.token:")));
  EXPECT_EQ(Status(1), "decrypt_only");

  // psql is held to the same rule: the check is the lifecycle trigger's.
  try {
    pqxx::work txn(conn());
    txn.exec0("UPDATE rekey.keys SET status = 'retired' WHERE key_id = 1");
    ADD_FAILURE() << "retired key 1 from SQL over unregistered values";
  } catch (const pqxx::sql_error& e) {
    EXPECT_EQ(e.sqlstate(), "55000");
    EXPECT_THAT(e.what(), HasSubstr("public.cards_history.token: 20 values under key 1"));
  }

  Exec(
      "UPDATE public.cards SET token_b64 = NULL, token_hex = NULL;"
      "TRUNCATE public.cards_history");
  r = Rekey({"keys", "retire", "1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(KeyRetireSafetyTest, RowSecurityAndMissingPrivilegesAreUnknownUntilAccepted) {
  KeysOneAndTwo();
  const std::string op = LoginIn("op", {"rekey_operator"});
  Exec(
      "CREATE TABLE public.accounts (id int PRIMARY KEY, owner name, secret bytea);"
      "INSERT INTO public.accounts VALUES (1, '" +
      op +
      "', NULL), (2, 'someone_else', '\\x0100000002ff'::bytea);"
      "ALTER TABLE public.accounts ENABLE ROW LEVEL SECURITY;"
      "CREATE POLICY own_rows ON public.accounts USING (owner = current_user);"
      "GRANT SELECT ON public.accounts TO " +
      op +
      ";"
      "CREATE TABLE public.vault_only (id int PRIMARY KEY, blob bytea, label text);"
      "GRANT SELECT (id, label) ON public.vault_only TO " +
      op);

  ProcessResult r = Rekey({"keys", "retire", "1"}, ConnInfoAs(op));
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  // (the table as row_security_blocker names it: unqualified when on the search path)
  EXPECT_THAT(r.err, HasSubstr("\npublic.accounts.secret: unknown: row-level security on "
                               "accounts hides rows from role " +
                               op));
  EXPECT_THAT(r.err, HasSubstr("\npublic.vault_only.blob: unknown: role " + op +
                               " may not read it; GRANT SELECT ON public.vault_only TO " + op));
  EXPECT_THAT(r.err, Not(HasSubstr("vault_only.label")));  // readable, and holds nothing
  EXPECT_EQ(Status(1), "decrypt_only");

  r = Rekey({"keys", "retire", "1", "--accept-unknown", "accounts"}, ConnInfoAs(op));
  EXPECT_EQ(r.exit_code, kExitUsage) << r.err;
  EXPECT_THAT(r.err, HasSubstr("is not schema.table.column"));

  // Accepting one of two is not enough; both are, and the acceptance is audited.
  r = Rekey({"keys", "retire", "1", "--accept-unknown", "public.accounts.secret"}, ConnInfoAs(op));
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, Not(HasSubstr("public.accounts.secret")));
  EXPECT_EQ(Status(1), "decrypt_only");
  r = Rekey({"keys", "retire", "1", "--accept-unknown", "public.accounts.secret",
             "--accept-unknown", "public.vault_only.blob"},
            ConnInfoAs(op));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Status(1), "retired");
  EXPECT_EQ(Scalar("SELECT actor || ' ' || (details->>'key_id') || ' ' || "
                   "(SELECT string_agg(c->>'column', ',' ORDER BY c->>'column') "
                   "   FROM jsonb_array_elements(details->'columns') c) "
                   "FROM rekey.audit WHERE action = 'key.unknown_accepted'"),
            op + " 1 public.accounts.secret,public.vault_only.blob");

  // An unknown is never a value: a column holding values under the key cannot be accepted.
  Exec("UPDATE public.accounts SET secret = '\\x0100000001ff'::bytea WHERE id = 1");
  r = Rekey({"keys", "destroy", "1", "--yes", "--accept-unknown", "public.accounts.secret",
             "--accept-unknown", "public.vault_only.blob"},
            ConnInfoAs(op));
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("public.accounts.secret: 1 values under key 1 (tink); and maybe "
                               "more: row-level security"));
  EXPECT_EQ(Status(1), "retired");
}

// A batch transaction writing under key 2 holds the key's write lock: a retire waits for it, then
// counts what it wrote. And once a retire committed, no batch can take the write lock.
TEST_F(KeyRetireSafetyTest, RetireWaitsForABatchInFlightAndCountsWhatItWrote) {
  ImportTestKeys(conn(), {1, 2});
  SetStatus(1, "primary");
  SetStatus(2, "decrypt_only");
  RegisteredTinkTable("public.cards", 10, 1);

  pqxx::connection writer(conninfo());
  auto batch = std::make_unique<pqxx::work>(writer);
  batch->exec("SELECT rekey.lock_keys_for_write('{2}')");
  batch->exec_params("UPDATE public.cards SET token = $1, key_id = 2 WHERE id = 7",
                     pqxx::binarystring(TinkEncrypt(2, PlaintextFor(7))));

  ChildProcess retire({REKEY_BINARY, "--db", conninfo(), "keys", "retire", "2"}, WorkerEnv());
  bool waiting = false;
  for (int i = 0; i < 600 && !waiting; ++i) {
    waiting =
        Count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") > 0;
    if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(waiting) << "the retire never waited for the batch's key lock";
  EXPECT_TRUE(retire.Running());
  batch->commit();
  batch.reset();

  ProcessResult r = retire.Wait(120);
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("public.cards.token: 1 values under key 2 (tink"));
  EXPECT_EQ(Status(2), "decrypt_only");

  // The converse: after the retire commits, a batch cannot write under the key.
  Exec("UPDATE public.cards SET token = NULL WHERE id = 7");
  r = Rekey({"keys", "retire", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  try {
    pqxx::work late(writer);
    late.exec("SELECT rekey.lock_keys_for_write('{2}')");
    ADD_FAILURE() << "a batch took the write lock of a retired key";
  } catch (const pqxx::sql_error& e) {
    EXPECT_EQ(e.sqlstate(), "55000");
    EXPECT_THAT(e.what(), HasSubstr("key 2 is retired"));
  }
}

TEST_F(KeyRetireSafetyTest, AnUnfinishedJobNamingTheKeyBlocksRetire) {
  ImportTestKeys(conn(), {1, 2});
  SetStatus(1, "primary");
  SeedTinkTable(conn(), "public.cards", 50, 1);
  const int64_t job =
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_stages => '{1,100}', "
                   "p_batch_size => 10");
  // Nothing moved yet: no value is under key 2, but the job will write some.
  ProcessResult r = Rekey({"keys", "retire", "2"});
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("key 2 cannot be retired: unfinished job " + std::to_string(job) +
                               " (active) names it as a source or target key"));
  EXPECT_EQ(Status(2), "enabled");
  Exec("SELECT rekey.cancel_job(" + std::to_string(job) + ", 'test')");
  r = Rekey({"keys", "retire", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(KeyRetireSafetyTest, TheWorkerRoleMayPromoteButNeverRetireOrDestroy) {
  ImportTestKeys(conn(), {1, 2, 3});
  const std::string worker = LoginIn("worker", {"rekey_worker"});
  const std::string op = LoginIn("op", {"rekey_operator"});
  const std::string both = LoginIn("both", {"rekey_worker", "rekey_operator"});

  // Promotion: what a worker does at the promotion stage.
  pqxx::connection as_worker(ConnInfoAs(worker));
  {
    pqxx::work txn(as_worker);
    txn.exec0("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
    txn.commit();
  }
  ProcessResult r = Rekey({"keys", "retire", "2"}, ConnInfoAs(worker));
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_THAT(r.err, HasSubstr("role " + worker +
                               " is a rekey_worker: workers may promote keys "
                               "but never retire or destroy them"));
  EXPECT_EQ(Status(2), "enabled");

  EXPECT_EQ(Rekey({"keys", "retire", "2"}, ConnInfoAs(op)).exit_code, 0);
  r = Rekey({"keys", "retire", "3"}, ConnInfoAs(both));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = Rekey({"keys", "destroy", "3", "--yes"}, ConnInfoAs(worker));
  EXPECT_EQ(r.exit_code, kExitState) << r.err;
  EXPECT_EQ(Status(3), "retired");
}

TEST_F(KeyRetireSafetyTest, OnlyReadCommittedCountsAfterTheLock) {
  ImportTestKeys(conn(), {1});
  try {
    pqxx::work txn(conn());
    txn.exec0("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ");
    txn.exec0("UPDATE rekey.keys SET status = 'retired' WHERE key_id = 1");
    ADD_FAILURE() << "retired a key in a repeatable-read transaction";
  } catch (const pqxx::sql_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("key 1 cannot be retired in a REPEATABLE READ transaction"));
  }
  EXPECT_EQ(Status(1), "enabled");
  // The CLI runs its transaction READ COMMITTED whatever the session's default is.
  EnvOverrides env = WorkerEnv();
  env["PGOPTIONS"] = "-c default_transaction_isolation=serializable";
  ProcessResult r = Rekey({"keys", "retire", "1"}, "", env);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Status(1), "retired");
}

// Partitions are counted once, through their parent; inheritance children on their own (the parent
// with FROM ONLY); domains over bytea are bytea; a foreign table is unknown, never zero; an
// unpopulated materialized view holds nothing.
TEST_F(KeyRetireSafetyTest, TheCensusCountsEachValueOnceAndNeverCallsTheUnreadableZero) {
  Exec(R"(CREATE DOMAIN public.cipher AS bytea;
          CREATE TABLE public.events (id int, v public.cipher) PARTITION BY RANGE (id);
          CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES FROM (0) TO (10);
          CREATE TABLE public.events_b PARTITION OF public.events FOR VALUES FROM (10) TO (20);
          INSERT INTO public.events SELECT g, '\x0100000007aa' FROM generate_series(1, 15) g;
          CREATE TABLE public.base (id int, v bytea);
          CREATE TABLE public.derived (extra int) INHERITS (public.base);
          INSERT INTO public.base VALUES (1, '\x0100000007aa');
          INSERT INTO public.derived VALUES (2, '\x0100000007aa', 0), (3, '\x0100000007aa', 0);
          CREATE MATERIALIZED VIEW public.empty_view AS SELECT * FROM public.base WITH NO DATA;
          CREATE EXTENSION file_fdw;
          CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
          CREATE FOREIGN TABLE public.remote (v text) SERVER files OPTIONS (filename '/dev/null');)");
  ProcessResult r = Rekey({"keys", "usage", "7", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(r.out);
  std::map<std::string, std::string> found;
  for (const json& c : j["columns"]) {
    found[c["ref"].get<std::string>()] =
        c["status"].get<std::string>() + ":" +
        (c["values"].is_null() ? "-" : std::to_string(c["values"].get<int64_t>()));
  }
  EXPECT_EQ(found, (std::map<std::string, std::string>{{"public.base.v", "in_use:1"},
                                                       {"public.derived.v", "in_use:2"},
                                                       {"public.events.v", "in_use:15"},
                                                       {"public.remote.v", "unknown:-"}}))
      << r.out;
  EXPECT_EQ(j["values"], 18);
  EXPECT_EQ(j["unknown_columns"], 1);
}

// The census's NOTICE per table is progress for a person at a terminal (script(1) gives the child
// one); piped output stays clean (UsageListsEveryColumnAsTextAndJson).
TEST_F(KeyRetireSafetyTest, TheCensusShowsItsProgressOnATerminal) {
  Exec("CREATE TABLE public.cards (id int PRIMARY KEY, token bytea)");
  ProcessResult r = RunProcess(
      {"script", "-qec", std::string(REKEY_BINARY) + " --db '" + conninfo() + "' keys usage 7",
       "/dev/null"},
      {{"DATABASE_URL", std::nullopt}});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("rekey census of key 7: table 1 of 1: public.cards"));
  EXPECT_THAT(r.out, HasSubstr("key 7: 0 values in 0 columns"));
}

TEST_F(KeyRetireSafetyTest, UsageListsEveryColumnAsTextAndJson) {
  KeysOneAndTwo();
  RegisteredTinkTable("public.cards", 12, 1);
  Exec(
      "CREATE TABLE public.notes (id int PRIMARY KEY, body text);"
      "INSERT INTO public.notes SELECT id, translate(encode(token, 'base64'), '+/', '-_') "
      "  FROM public.cards WHERE id <= 4;"
      "CREATE TABLE public.clean (id int PRIMARY KEY, v bytea)");

  ProcessResult r = Rekey({"keys", "usage", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");  // the census's progress is for terminals only
  json j = json::parse(r.out);
  EXPECT_EQ(j["key_id"], 1);
  EXPECT_EQ(j["values"], 16);
  EXPECT_EQ(j["unknown_columns"], 0);
  EXPECT_EQ(j["unresolved_targets"], 0);
  EXPECT_EQ(j["clear"], false);
  ASSERT_EQ(j["columns"].size(), 2u) << r.out;
  EXPECT_EQ(j["columns"][0], json({{"schema", "public"},
                                   {"table", "cards"},
                                   {"column", "token"},
                                   {"ref", "public.cards.token"},
                                   {"target_id", 1},
                                   {"formats", {"tink"}},
                                   {"values", 12},
                                   {"status", "in_use"},
                                   {"unknown", nullptr}}));
  EXPECT_EQ(j["columns"][1]["ref"], "public.notes.body");
  EXPECT_EQ(j["columns"][1]["formats"], json({"tink-base64"}));
  EXPECT_EQ(j["columns"][1]["values"], 4);
  EXPECT_TRUE(j["columns"][1]["target_id"].is_null());

  r = Rekey({"keys", "usage", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("key 1: 16 values in 2 columns; 0 columns unknown; 0 registered "
                               "targets unresolved\n"));
  EXPECT_THAT(r.out, HasSubstr("public.notes.body"));

  j = json::parse(Rekey({"keys", "usage", "7", "--json"}).out);
  EXPECT_EQ(j["clear"], true);
  EXPECT_EQ(j["columns"].size(), 0u);
}

}  // namespace
}  // namespace rekey::testing
