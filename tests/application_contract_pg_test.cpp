// The application contract (docs/applications.md) against a real PostgreSQL: the view
// rekey.application_keys lists exactly the keys an application may decrypt with, the
// rekey_application role (sql/roles.sql) reads it and reaches no other rekey table, NOTIFY
// rekey_keys announces every key change an application sees -- a rollback's included -- and the
// Python application written from the page alone (scripts/demo_app.py) decrypts every value
// rekey wrote, under either key, mid-rotation and after it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "application_support.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "keyring/keyring.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ApplicationContractTest : public ApplicationTest {
 protected:
  // Runs `sql` as the application's login; returns "" or the server's error message.
  std::string TryAsApp(const std::string& sql) {
    try {
      pqxx::connection c(AppConnInfo());
      pqxx::work txn(c);
      txn.exec(sql);
      txn.commit();
      return "";
    } catch (const std::exception& e) {
      return e.what();
    }
  }
  void RunWorkers(const std::string& job) {
    ProcessResult r = RunRekey({"--db", conninfo(), "work", "--job", job}, WorkerEnv());
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // scripts/demo_app.py --verify-all as the application's login, with `args`: what it decrypted,
  // by key, and its plaintext digest; expects the exit code `exit_code` (1: a value failed).
  json AppVerifyAll(const std::string& table, const std::vector<std::string>& args = {},
                    int exit_code = 0) {
    const std::string dir = MakeTempDir("rekey-app-");
    std::vector<std::string> all = {"--reader", "verifier", "--verify-all", "--stats-file",
                                    dir + "/stats.json"};
    all.insert(all.end(), args.begin(), args.end());
    ProcessResult r = RunProcess(DemoApp(table, all), WorkerEnv());
    std::ifstream in(dir + "/stats.json");
    json stats = in ? json::parse(in, nullptr, false) : json();
    RunProcess({"rm", "-rf", dir});
    EXPECT_EQ(r.exit_code, exit_code) << r.out << r.err;
    return stats;
  }
  std::string RekeyVerifyDigest(const std::string& job) {
    ProcessResult r = RunRekey({"--db", conninfo(), "job", "verify", job, "--json"}, WorkerEnv());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out, nullptr, false).value("plaintext_sha256", "");
  }
};

TEST_F(ApplicationContractTest, TheViewListsExactlyTheKeysAnApplicationMayDecryptWith) {
  ImportTestKeys(conn(), {1, 2, 3, 4, 5});
  {
    auto kms = TestKms();
    pqxx::work txn(conn());
    keyring::ImportKey(txn, kms, 6, "tenant-b", TestDataKey(6));
    txn.commit();
  }
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id IN (1, 6)");
  Exec("UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = 3");
  Exec("UPDATE rekey.keys SET status = 'retired' WHERE key_id IN (4, 5)");
  Exec("UPDATE rekey.keys SET status = 'destroyed' WHERE key_id = 5");

  pqxx::connection app(AppConnInfo());
  pqxx::read_transaction txn(app);
  std::vector<std::string> rows;
  for (const auto& row : txn.exec(
           "SELECT scope, key_id, status, is_primary, kms_provider FROM rekey.application_keys "
           "ORDER BY scope, key_id")) {
    rows.push_back(row["scope"].as<std::string>() + " " + row["key_id"].as<std::string>() + " " +
                   row["status"].as<std::string>() + " " + row["is_primary"].as<std::string>() +
                   " " + row["kms_provider"].as<std::string>());
  }
  // Enabled keys too: a staged job writes under its target key before promoting it.
  EXPECT_THAT(rows, ElementsAre("default 1 primary t local", "default 2 enabled f local",
                                "default 3 decrypt_only f local", "tenant-b 6 primary t local"));
  // The wrapped key and its KMS reference as rekey stores them, and nothing else of the keyring.
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.application_keys a JOIN rekey.keys k USING (key_id) "
                  "WHERE a.wrapped_key = k.wrapped_key AND a.kms_key_ref = k.kms_key_ref "
                  "AND a.created_at = k.created_at "
                  "AND a.primary_at IS NOT DISTINCT FROM k.primary_at"),
            4);
  std::vector<std::string> columns;
  for (const auto& row : txn.exec(
           "SELECT column_name FROM information_schema.columns WHERE table_schema = 'rekey' AND "
           "table_name = 'application_keys' ORDER BY ordinal_position")) {
    columns.push_back(row["column_name"].as<std::string>());
  }
  EXPECT_THAT(columns,
              ElementsAre("scope", "key_id", "status", "is_primary", "algorithm", "kms_provider",
                          "kms_key_ref", "wrapped_key", "created_at", "primary_at"));
}

TEST_F(ApplicationContractTest, TheApplicationRoleReadsTheViewAndReportsButReachesNothingElse) {
  ImportTestKeys(conn(), {1, 2});
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  EXPECT_EQ(TryAsApp("SELECT * FROM rekey.application_keys"), "");
  EXPECT_EQ(TryAsApp("SELECT rekey.reader_heartbeat('app-1', 'default', '{1,2}')"), "");
  EXPECT_EQ(Scalar("SELECT key_ids FROM rekey.readers WHERE reader = 'app-1'"), "{1,2}");

  // Every other table and view of the schema, whatever later versions add.
  int checked = 0;
  pqxx::read_transaction txn(conn());
  for (const auto& row :
       txn.exec("SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'rekey' AND c.relkind IN ('r', 'v', 'm', 'p') "
                "AND c.relname <> 'application_keys' ORDER BY 1")) {
    const std::string name = row["name"].as<std::string>();
    EXPECT_THAT(TryAsApp("SELECT 1 FROM " + name + " LIMIT 1"), HasSubstr("permission denied"))
        << name;
    ++checked;
  }
  EXPECT_GT(checked, 20);
  // Nor can it change a key through the view, nor run rekey's verbs.
  EXPECT_THAT(TryAsApp("UPDATE rekey.application_keys SET status = 'retired' WHERE key_id = 2"),
              HasSubstr("permission denied"));
  EXPECT_THAT(TryAsApp("SELECT * FROM rekey.key_census(1)"), HasSubstr("permission denied"));
  EXPECT_THAT(TryAsApp("SELECT rekey.pause_job(1)"), HasSubstr("permission denied"));
}

// Collects the payloads of NOTIFY rekey_keys, parsed.
class KeyEvents : public pqxx::notification_receiver {
 public:
  explicit KeyEvents(pqxx::connection& conn) : notification_receiver(conn, "rekey_keys") {}
  void operator()(const std::string& payload, int) override {
    events_.push_back(json::parse(payload));
  }
  // "<key_id> <event> <previous_status>-><status>" for every event heard since the last call,
  // once `expected` have arrived (or 20 s passed), and any more that follow within 300 ms;
  // asserts each names scope 'default'.
  std::vector<std::string> Take(pqxx::connection& conn, size_t expected) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    conn.get_notifs();
    while (events_.size() < expected && std::chrono::steady_clock::now() < deadline) {
      conn.await_notification(0, 100000);
    }
    while (conn.await_notification(0, 300000) > 0) {
    }
    std::vector<std::string> out;
    for (const json& e : events_) {
      EXPECT_EQ(e["scope"], "default") << e.dump();
      out.push_back(
          std::to_string(e["key_id"].get<int64_t>()) + " " + e["event"].get<std::string>() + " " +
          (e["previous_status"].is_null() ? "" : e["previous_status"].get<std::string>()) + "->" +
          e["status"].get<std::string>());
    }
    events_.clear();
    return out;
  }

 private:
  std::vector<json> events_;
};

TEST_F(ApplicationContractTest, NotifyAnnouncesEveryKeyChangeAPromotionAndARollback) {
  pqxx::connection listener(AppConnInfo());  // LISTEN needs no privilege: the application's own
  KeyEvents events(listener);

  ImportTestKeys(conn(), {1, 2});
  EXPECT_THAT(events.Take(listener, 2), ElementsAre("1 added ->enabled", "2 added ->enabled"));
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  EXPECT_THAT(events.Take(listener, 1), ElementsAre("1 promoted enabled->primary"));
  // A statement that changes nothing an application sees says nothing.
  Exec("UPDATE rekey.keys SET max_age = '90 days' WHERE key_id = 1");
  EXPECT_THAT(events.Take(listener, 0), ElementsAre());

  SeedTinkTable(conn(), "public.cards", 300, 1);
  const std::string job = std::to_string(
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
                   "p_stages => '{100}'"));
  RunWorkers(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  // The promotion, in the order it happened: the old primary steps down first.
  EXPECT_THAT(events.Take(listener, 2),
              ElementsAre("1 demoted primary->decrypt_only", "2 promoted enabled->primary"));

  // A rollback after promotion changes which key applications write with: heard as such.
  Exec("SELECT rekey.rollback_job(" + job + ")");
  EXPECT_THAT(events.Take(listener, 2), ElementsAre("2 demoted primary->decrypt_only",
                                                    "1 rolled_back decrypt_only->primary"));
  RunWorkers(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "rolled_back");
  EXPECT_THAT(events.Take(listener, 0), ElementsAre());

  // A rollback before promotion leaves the primary alone; the unused target is kept for reading.
  ImportTestKeys(conn(), {3});
  const std::string job2 = std::to_string(
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 3}', p_key_id_column => 'key_id', "
                   "p_stages => '{1,100}'"));
  RunWorkers(job2);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job2), "awaiting_approval");
  Exec("SELECT rekey.rollback_job(" + job2 + ")");
  EXPECT_THAT(events.Take(listener, 2),
              ElementsAre("3 added ->enabled", "3 decrypt_only enabled->decrypt_only"));
  RunWorkers(job2);

  // Retiring (no value left under key 2) and destroying: the key leaves the view.
  Exec("UPDATE rekey.keys SET status = 'retired' WHERE key_id = 2");
  Exec("UPDATE rekey.keys SET status = 'destroyed' WHERE key_id = 2");
  EXPECT_THAT(events.Take(listener, 2),
              ElementsAre("2 retired decrypt_only->retired", "2 destroyed retired->destroyed"));
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.application_keys WHERE key_id = 2"), 0);
}

TEST_F(ApplicationContractTest, ThePythonApplicationDecryptsEveryValueRekeyWrote) {
  SeedTinkTable(conn(), "public.cards", 2000, 1);
  ImportTestKeys(conn(), {1, 2});
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  GrantTableToApp("public.cards");

  const json before = AppVerifyAll("public.cards");
  ASSERT_EQ(before["values"], 2000) << before.dump();
  EXPECT_EQ(before["values_by_key"], json({{"1", 2000}}));
  const std::string digest = before["plaintext_sha256"];
  // It reported as a reader with the keys it loaded through the view.
  EXPECT_EQ(Scalar("SELECT key_ids FROM rekey.readers WHERE reader = 'verifier'"), "{1,2}");

  const std::string job = std::to_string(
      CreateJobSql(conn(),
                   "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
                   "p_stages => '{10,100}'"));
  RunWorkers(job);  // the canary: values under both keys
  const json mid = AppVerifyAll("public.cards");
  EXPECT_EQ(mid["plaintext_sha256"], digest);
  EXPECT_EQ(mid["failures"], json::object());
  EXPECT_GT(mid["values_by_key"].value("2", 0), 0) << mid.dump();
  EXPECT_GT(mid["values_by_key"].value("1", 0), 0) << mid.dump();

  ASSERT_EQ(RunRekey({"--db", conninfo(), "job", "advance", job, "--observe", "0s"}, WorkerEnv())
                .exit_code,
            0);
  RunWorkers(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  const json after = AppVerifyAll("public.cards");
  EXPECT_EQ(after["values_by_key"], json({{"2", 2000}}));
  EXPECT_EQ(after["plaintext_sha256"], digest);
  // The same digest rekey computes: the application's codec and rekey's agree on every value.
  EXPECT_EQ(RekeyVerifyDigest(job), digest);
}

TEST_F(ApplicationContractTest, ThePythonApplicationBindsValuesToTheirRowsAsRekeyDoes) {
  // Values bound to their row by the associated-data template (docs/FORMAT.md, section 3).
  const std::string tmpl = "{schema}.{table}.{column}:{pk}";
  Exec("CREATE TABLE public.bound (id bigint PRIMARY KEY, key_id int, token bytea)");
  {
    pqxx::work txn(conn());
    for (int id = 1; id <= 200; ++id) {
      const std::string ad = "public.bound.token:" + std::to_string(id);
      txn.exec_params("INSERT INTO public.bound VALUES ($1, 1, $2)", id,
                      pqxx::binarystring(TinkEncrypt(1, PlaintextFor(id), ad)));
    }
    txn.commit();
  }
  ImportTestKeys(conn(), {1, 2});
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  GrantTableToApp("public.bound");
  const std::string job = std::to_string(
      CreateJobSql(conn(),
                   "'public.bound', ARRAY['token'], '{\"1\": 2}', p_key_id_column => 'key_id', "
                   "p_ad_template => '" +
                       tmpl + "', p_stages => '{100}'"));
  RunWorkers(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");

  const json bound = AppVerifyAll("public.bound", {"--ad-template", tmpl});
  EXPECT_EQ(bound["values_by_key"], json({{"2", 200}}));
  EXPECT_EQ(bound["plaintext_sha256"], RekeyVerifyDigest(job));
  // Without the column's template nothing authenticates: the binding is real.
  const json unbound = AppVerifyAll("public.bound", {}, /*exit_code=*/1);
  EXPECT_EQ(unbound["failures"], json({{"auth_failed", 200}}));
}

}  // namespace
}  // namespace rekey::testing
