// The schema as rekey migrate leaves it, two ways:
//
// * Upgrade: a database migrated by rekey at commit 2eeffa1 -- before functions, views and
//   triggers moved from migrations/ to sql/schema/ (sql/README.md) -- is migrated by this rekey.
//   The migrator must accept the rewritten migrations' earlier texts, and the schema must then be
//   that of a freshly migrated database: same tables, columns, constraints, indexes, function
//   bodies, views, triggers and grants (pg_dump --schema-only, grants included). The keys and job
//   written before the upgrade are intact, and the job still rotates.
//   tests/vectors/migrations-2eeffa1/ holds those migrations exactly as 2eeffa1 shipped them
//   (`git show 2eeffa1:migrations/<file>`); they are applied here with 2eeffa1's bookkeeping, and
//   tests/vectors/roles-2eeffa1.sql is the sql/roles.sql deployed with them. Migrations added
//   since are pending; the upgrade must keep every grant made before it, and after it the
//   operator runs the current sql/roles.sql.
//
// * Snapshot: sql/schema.sql is the reviewed schema of a freshly migrated database; a change to
//   migrations/ or sql/schema/ that changes the schema must update it, so the change shows in
//   review. scripts/schema-snapshot.sh regenerates it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "db/migrator.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey {
namespace {

using testing::PgServer;
using testing::ProcessResult;
using testing::RunProcess;
using testing::RunRekey;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct OldMigration {
  int version;
  std::string name;
  std::string content;
};

// One line per privilege holder of the rekey schema: each table, view, sequence and function with
// its ACL, and each column with a column ACL.
std::map<std::string, std::string> RekeyAcls(pqxx::connection& conn) {
  pqxx::read_transaction tx(conn);
  std::map<std::string, std::string> out;
  for (const auto& row :
       tx.exec("SELECT p.oid::regprocedure::text AS object, p.proacl::text AS acl FROM pg_proc p "
               " WHERE p.pronamespace = 'rekey'::regnamespace "
               "UNION ALL SELECT c.oid::regclass::text, c.relacl::text FROM pg_class c "
               " WHERE c.relnamespace = 'rekey'::regnamespace AND c.relkind IN ('r', 'v', 'S') "
               "UNION ALL SELECT a.attrelid::regclass::text || '.' || a.attname, a.attacl::text "
               "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
               " WHERE c.relnamespace = 'rekey'::regnamespace AND a.attacl IS NOT NULL")) {
    out[row["object"].as<std::string>()] = row["acl"].is_null() ? "" : row["acl"].as<std::string>();
  }
  return out;
}

// True iff one of the migrations `added` since 2eeffa1 drops function `object` (as regprocedure
// prints it) by name and signature, whitespace aside.
bool DroppedByAMigrationSince2eeffa1(const std::string& object,
                                     const std::vector<std::string>& added) {
  auto squeeze = [](std::string_view text) {
    std::string out;
    for (char c : text) {
      if (!std::isspace(static_cast<unsigned char>(c))) out += c;
    }
    return out;
  };
  const std::string statement = "DROPFUNCTIONIFEXISTS" + squeeze(object);
  for (const db::EmbeddedFile& m : db::EmbeddedMigrations()) {
    if (std::find(added.begin(), added.end(), std::string(m.name)) != added.end() &&
        squeeze(m.content).find(statement) != std::string::npos) {
      return true;
    }
  }
  return false;
}

std::vector<OldMigration> MigrationsOf2eeffa1() {
  std::vector<OldMigration> out;
  std::string dir = std::string(REKEY_SOURCE_DIR) + "/tests/vectors/migrations-2eeffa1";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    out.push_back({std::stoi(name.substr(0, 4)), name, ReadFile(entry.path().string())});
  }
  std::sort(out.begin(), out.end(),
            [](const OldMigration& a, const OldMigration& b) { return a.version < b.version; });
  return out;
}

// What src/db/migrator.cpp did at 2eeffa1: its bookkeeping table, then each file in version
// order in its own transaction with its row (checksum: SHA-256 of the file's bytes).
void MigrateAs2eeffa1(pqxx::connection& conn, int up_to_version = 9999) {
  {
    pqxx::work tx(conn);
    tx.exec(
        "CREATE SCHEMA IF NOT EXISTS rekey;"
        "CREATE TABLE IF NOT EXISTS rekey.schema_migrations ("
        "  version int PRIMARY KEY,"
        "  name text NOT NULL,"
        "  checksum text NOT NULL,"
        "  applied_at timestamptz NOT NULL DEFAULT now(),"
        "  applied_by text NOT NULL DEFAULT current_user)");
    tx.commit();
  }
  for (const OldMigration& m : MigrationsOf2eeffa1()) {
    if (m.version > up_to_version) break;
    pqxx::work tx(conn);
    tx.exec(m.content);
    tx.exec_params(
        "INSERT INTO rekey.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        m.version, m.name, db::Sha256Hex(m.content));
    tx.commit();
  }
}

// pg_dump's schema-only output of the rekey schema, without what differs between two dumps of
// one schema: comment lines (they carry the server version) and psql's \restrict keys (random
// per dump since 15.14); blank-line runs collapsed.
std::string DumpSchema(const std::string& db, bool privileges) {
  std::vector<std::string> argv = {PgServer::Get().bin_dir() + "/pg_dump",
                                   "--schema-only",
                                   "-n",
                                   "rekey",
                                   "-d",
                                   PgServer::Get().ConnInfo(db)};
  if (!privileges) {
    argv.push_back("--no-owner");
    argv.push_back("--no-privileges");
  }
  ProcessResult r = RunProcess(argv);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::istringstream in(r.out);
  std::string line, out;
  bool blank = true;
  while (std::getline(in, line)) {
    if (line.rfind("--", 0) == 0 || line.rfind("\\restrict", 0) == 0 ||
        line.rfind("\\unrestrict", 0) == 0) {
      continue;
    }
    if (line.empty()) {
      if (blank) continue;
      blank = true;
    } else {
      blank = false;
    }
    out += line + "\n";
  }
  while (out.size() >= 2 && out.substr(out.size() - 2) == "\n\n") out.pop_back();
  return out;
}

std::string Scalar(pqxx::connection& conn, const std::string& sql) {
  pqxx::nontransaction tx(conn);
  pqxx::row row = tx.exec1(sql);
  return row[0].is_null() ? "NULL" : row[0].as<std::string>();
}

void Exec(pqxx::connection& conn, const std::string& sql) {
  pqxx::work tx(conn);
  tx.exec(sql);
  tx.commit();
}

class SchemaUpgradePgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    old_ = PgServer::Get().CreateDatabase(false);
    fresh_ = PgServer::Get().CreateDatabase(false);
  }
  void TearDown() override {
    PgServer::Get().DropDatabase(old_);
    PgServer::Get().DropDatabase(fresh_);
  }
  std::string old_;
  std::string fresh_;
};

// The keyring, the job and its plan, and the sealed audit chain: what an upgrade must not touch.
constexpr const char* kDataBefore =
    "SELECT (SELECT string_agg(format('%s:%s:%s:%s', key_id, status, md5(wrapped_key), scope), ','"
    "                          ORDER BY key_id) FROM rekey.keys) || ' | ' ||"
    "       (SELECT string_agg(format('%s:%s:%s:%s:%s', job_id, state, stage_plan, batch_size,"
    "                                 current_stage), ',' ORDER BY job_id) FROM rekey.jobs) || ' | "
    "' ||"
    "       (SELECT string_agg(format('%s:%s:%s:%s', batch_no, stage_no, lo, hi), ','"
    "                          ORDER BY job_id, batch_no) FROM rekey.batches) || ' | ' ||"
    "       (SELECT string_agg(format('%s:%s', seq, encode(chain_hash, 'hex')), ',' ORDER BY seq)"
    "          FROM rekey.audit_chain)";

TEST_F(SchemaUpgradePgTest, ADatabaseMigratedBy2eeffa1UpgradesToTheFreshSchema) {
  pqxx::connection conn(PgServer::Get().ConnInfo(old_));
  MigrateAs2eeffa1(conn);
  // As deployed: the operators' roles and grants (2eeffa1's sql/roles.sql), keys, and a job not
  // yet run.
  const std::string old_roles =
      ReadFile(std::string(REKEY_SOURCE_DIR) + "/tests/vectors/roles-2eeffa1.sql");
  ASSERT_FALSE(old_roles.empty());
  Exec(conn, old_roles);
  testing::ImportTestKeys(conn, {1, 2});
  testing::SeedTinkTable(conn, "public.cards", 300, 1);
  int64_t job = testing::CreateJobSql(
      conn,
      "'public.cards', ARRAY['token'], '{\"1\":2}', p_batch_size => 50, p_stages => '{10,100}', "
      "p_observe => interval '0 seconds'");
  const std::string before = Scalar(conn, kDataBefore);

  // The earlier texts are recognised, not refused as drift; the migrations added since 2eeffa1
  // are pending.
  const std::vector<OldMigration> old = MigrationsOf2eeffa1();
  std::vector<std::string> added;
  for (const db::MigrationStatus& s : db::MigrationStatusList(conn)) {
    if (std::any_of(old.begin(), old.end(),
                    [&](const OldMigration& m) { return m.name == s.name; })) {
      EXPECT_TRUE(s.applied && s.in_binary && s.checksum_matches) << s.name;
    } else {
      EXPECT_TRUE(!s.applied && s.in_binary) << s.name;
      added.push_back(s.name);
    }
  }
  const std::map<std::string, std::string> acls_before = RekeyAcls(conn);
  ASSERT_GT(acls_before.size(), 50u);
  db::MigrationReport report = db::Migrate(conn);
  EXPECT_EQ(report.applied, added);
  EXPECT_EQ(report.already_applied, static_cast<int>(old.size()));
  EXPECT_EQ(report.definitions_applied.size(), db::EmbeddedDefinitions().size());
  // A definition file that dropped and re-created a function, or a migration that re-created a
  // table, would have lost the grants made before the upgrade. Only a function whose signature a
  // later migration changed may be gone (sql/README.md: the migration drops it, the definition
  // file creates the new one, and rerunning sql/roles.sql grants it, checked below).
  const std::map<std::string, std::string> acls_after = RekeyAcls(conn);
  for (const auto& [object, acl] : acls_before) {
    auto it = acls_after.find(object);
    if (it == acls_after.end() && DroppedByAMigrationSince2eeffa1(object, added)) continue;
    ASSERT_NE(it, acls_after.end()) << object << " is gone after the upgrade";
    EXPECT_EQ(it->second, acl) << "the grants on " << object << " changed in the upgrade";
  }
  for (const db::DefinitionStatus& s : db::DefinitionStatusList(conn)) {
    EXPECT_TRUE(s.applied && s.current) << s.name;
  }
  ProcessResult status = RunRekey({"--db", PgServer::Get().ConnInfo(old_), "migrate", "--status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_NE(status.out.find("0 pending, 0 changed"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("0 definition file(s) to apply"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("an earlier, equivalent text"), std::string::npos) << status.out;

  // The same schema as a fresh database's, grants included: sql/roles.sql run after migrating,
  // on both, as an operator does after each upgrade.
  const std::string roles = ReadFile(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
  ASSERT_FALSE(roles.empty());
  Exec(conn, roles);
  {
    pqxx::connection fresh(PgServer::Get().ConnInfo(fresh_));
    db::Migrate(fresh);
    Exec(fresh, roles);
  }
  std::string upgraded_schema = DumpSchema(old_, true);
  std::string fresh_schema = DumpSchema(fresh_, true);
  EXPECT_GT(fresh_schema.size(), 10000u);
  EXPECT_EQ(upgraded_schema, fresh_schema);

  // The data is as it was, and the job runs to completion: every value under key 2.
  EXPECT_EQ(Scalar(conn, kDataBefore), before);
  ProcessResult r =
      RunRekey({"--db", PgServer::Get().ConnInfo(old_), "work", "--job", std::to_string(job)},
               testing::WorkerEnv());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Scalar(conn, "SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(job)),
            "completed");
  auto values = testing::DecryptAll(conn, "public.cards");
  ASSERT_EQ(values.size(), 300u);
  for (const auto& [id, value] : values) {
    EXPECT_EQ(value.first, 2u) << id;
    EXPECT_EQ(value.second, testing::PlaintextFor(id)) << id;
  }
  r = RunRekey({"--db", PgServer::Get().ConnInfo(old_), "audit", "verify"}, testing::WorkerEnv());
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

// A database an older rekey left part-way: the pending migrations run with their new text,
// including the two that call a function defined in sql/schema while they run (0006 seals the
// audit rows written before it, 0014 puts scope values in canonical form).
class PartialUpgradePgTest : public SchemaUpgradePgTest,
                             public ::testing::WithParamInterface<int> {};

TEST_P(PartialUpgradePgTest, ADatabaseMigratedBy2eeffa1UpToAVersionUpgradesToTheFreshSchema) {
  pqxx::connection conn(PgServer::Get().ConnInfo(old_));
  MigrateAs2eeffa1(conn, GetParam());
  testing::ImportTestKeys(conn, {1, 2});  // audit rows, unsealed before 0006
  testing::SeedTinkTable(conn, "public.cards", 40, 1, 3);
  // A scope value written as 0014 no longer accepts it: '042' is tenant 42.
  testing::CreateJobSql(conn,
                        "'public.cards', ARRAY['token'], '{\"1\":2}', p_scope_column => "
                        "'tenant_id', p_scope_value => '042', p_stages => '{100}'");
  db::MigrationReport report = db::Migrate(conn);
  EXPECT_FALSE(report.applied.empty());
  {
    pqxx::connection fresh(PgServer::Get().ConnInfo(fresh_));
    db::Migrate(fresh);
  }
  EXPECT_EQ(DumpSchema(old_, true), DumpSchema(fresh_, true));
  EXPECT_EQ(Scalar(conn, "SELECT string_agg(scope_value, ',') FROM rekey.jobs"), "42");
  EXPECT_EQ(Scalar(conn, "SELECT string_agg(scope_value, ',') FROM rekey.targets"), "42");
  EXPECT_EQ(Scalar(conn,
                   "SELECT count(*) FROM rekey.audit a WHERE NOT EXISTS "
                   "(SELECT 1 FROM rekey.audit_chain c WHERE c.audit_id = a.audit_id)"),
            "0");
  ProcessResult r =
      RunRekey({"--db", PgServer::Get().ConnInfo(old_), "audit", "verify"}, testing::WorkerEnv());
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

INSTANTIATE_TEST_SUITE_P(BeforeTheMigrationsThatCallFunctions, PartialUpgradePgTest,
                         ::testing::Values(5, 13));

TEST_F(SchemaUpgradePgTest, SnapshotMatchesAFreshlyMigratedDatabase) {
  {
    pqxx::connection conn(PgServer::Get().ConnInfo(fresh_));
    db::Migrate(conn);
  }
  const std::string path = std::string(REKEY_SOURCE_DIR) + "/sql/schema.sql";
  const std::string header =
      "-- The rekey schema of a freshly migrated database, as pg_dump --schema-only --no-owner\n"
      "-- --no-privileges -n rekey prints it (comment lines dropped). Generated: do not edit;\n"
      "-- regenerate with scripts/schema-snapshot.sh and review the difference.\n\n";
  std::string schema = header + DumpSchema(fresh_, false);
  if (std::getenv("REKEY_UPDATE_SCHEMA_SNAPSHOT") != nullptr) {
    std::ofstream(path, std::ios::binary) << schema;
    GTEST_SKIP() << "wrote " << path;
  }
  EXPECT_TRUE(ReadFile(path) == schema)
      << "the migrated schema differs from sql/schema.sql: run scripts/schema-snapshot.sh and "
         "review the change (git diff sql/schema.sql)";
}

}  // namespace
}  // namespace rekey
