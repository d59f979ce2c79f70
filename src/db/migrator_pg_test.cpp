#include "db/migrator.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "db/connection.h"
#include "harness/pg_server.h"
#include "harness/process.h"

namespace rekey::db {
namespace {

using rekey::testing::PgServer;
using rekey::testing::ProcessResult;
using rekey::testing::RunRekey;

// Each test migrates a fresh, empty database of its own.
class MigratorPgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = PgServer::Get().CreateDatabase(false);
    conn_ = std::make_unique<pqxx::connection>(ConnInfo());
  }
  void TearDown() override {
    conn_.reset();
    PgServer::Get().DropDatabase(db_);
  }
  std::string ConnInfo() const { return PgServer::Get().ConnInfo(db_); }

  std::string Query1(const std::string& sql) {
    pqxx::nontransaction tx(*conn_);
    auto row = tx.exec1(sql);
    return row[0].is_null() ? "NULL" : row[0].as<std::string>();
  }
  void Exec(const std::string& sql) {
    pqxx::nontransaction tx(*conn_);
    tx.exec(sql);
  }
  // version:name rows of rekey.schema_migrations, in order, comma separated.
  std::string Recorded() {
    return Query1(
        "SELECT coalesce(string_agg(version || ':' || name, ',' ORDER BY version), '') "
        "FROM rekey.schema_migrations");
  }

  std::string db_;
  std::unique_ptr<pqxx::connection> conn_;
};

const std::vector<EmbeddedFile> kThree = {
    {"0001_first.sql", "CREATE SCHEMA IF NOT EXISTS app; CREATE TABLE app.a (id int);"},
    {"0002_second.sql", "CREATE TABLE app.b (id int); INSERT INTO app.b VALUES (1), (2);"},
    {"0003_third.sql", "ALTER TABLE app.b ADD COLUMN note text DEFAULT 'x';"},
};

TEST_F(MigratorPgTest, AppliesInVersionOrderAndRecordsChecksums) {
  // Given out of order: the migrator sorts by version.
  std::vector<EmbeddedFile> files = {kThree[2], kThree[0], kThree[1]};
  MigrationReport report = Migrate(*conn_, files, {});
  EXPECT_EQ(report.applied,
            (std::vector<std::string>{"0001_first.sql", "0002_second.sql", "0003_third.sql"}));
  EXPECT_EQ(report.already_applied, 0);
  EXPECT_EQ(Recorded(), "1:0001_first.sql,2:0002_second.sql,3:0003_third.sql");
  EXPECT_EQ(Query1("SELECT string_agg(note, ',') FROM app.b"), "x,x");
  EXPECT_EQ(Query1("SELECT checksum FROM rekey.schema_migrations WHERE version = 2"),
            Sha256Hex(kThree[1].content));
  EXPECT_EQ(Query1("SELECT applied_by FROM rekey.schema_migrations WHERE version = 1"), "postgres");
  // The lock is released: another session can take it without waiting.
  auto other = Connect(ConnInfo());
  pqxx::nontransaction tx(*other);
  EXPECT_TRUE(tx.exec1("SELECT pg_try_advisory_lock(" + std::to_string(kMigrationLockKey) + ")")[0]
                  .as<bool>());
}

TEST_F(MigratorPgTest, Sha256HexMatchesTheServer) {
  for (const EmbeddedFile& f : kThree) {
    pqxx::nontransaction tx(*conn_);
    EXPECT_EQ(
        Sha256Hex(f.content),
        tx.exec1("SELECT encode(sha256(" + tx.quote(std::string(f.content)) + "::bytea), 'hex')")[0]
            .as<std::string>());
  }
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_F(MigratorPgTest, SecondRunAppliesNothingAndLaterFilesApplyIncrementally) {
  Migrate(*conn_, {kThree[0], kThree[1]}, {});
  MigrationReport again = Migrate(*conn_, {kThree[0], kThree[1]}, {});
  EXPECT_TRUE(again.applied.empty());
  EXPECT_EQ(again.already_applied, 2);
  MigrationReport more = Migrate(*conn_, kThree, {});
  EXPECT_EQ(more.applied, std::vector<std::string>{"0003_third.sql"});
  EXPECT_EQ(more.already_applied, 2);
  EXPECT_EQ(Query1("SELECT count(*) FROM app.b"), "2");  // 0002's INSERT ran once
}

TEST_F(MigratorPgTest, EmptyFileListCreatesBookkeepingOnly) {
  MigrationReport report = Migrate(*conn_, {}, {});
  EXPECT_TRUE(report.applied.empty());
  EXPECT_EQ(Recorded(), "");
}

TEST_F(MigratorPgTest, ConcurrentMigrateCallsApplyEachMigrationExactlyOnce) {
  // A migration that is not idempotent: a second application would fail on the duplicate.
  std::vector<EmbeddedFile> files = {
      {"0001_slow.sql",
       "CREATE TABLE counter (n int PRIMARY KEY); SELECT pg_sleep(0.2); "
       "INSERT INTO counter VALUES (1);"},
      {"0002_more.sql", "INSERT INTO counter VALUES (2);"},
  };
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::vector<std::string> errors(kThreads);
  std::vector<size_t> applied(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      try {
        auto c = Connect(ConnInfo());
        applied[i] = Migrate(*c, files, {}).applied.size();
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  size_t total = 0;
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(errors[i], "") << "thread " << i;
    total += applied[i];
  }
  EXPECT_EQ(total, 2u);
  EXPECT_EQ(Query1("SELECT string_agg(n::text, ',' ORDER BY n) FROM counter"), "1,2");
  EXPECT_EQ(Recorded(), "1:0001_slow.sql,2:0002_more.sql");
}

TEST_F(MigratorPgTest, ConcurrentRekeyMigrateProcessesAllSucceed) {
  constexpr int kProcesses = 3;
  std::vector<std::thread> threads;
  std::vector<ProcessResult> results(kProcesses);
  for (int i = 0; i < kProcesses; ++i) {
    threads.emplace_back([&, i] { results[i] = RunRekey({"--db", ConnInfo(), "migrate"}); });
  }
  for (auto& t : threads) t.join();
  size_t applied_lines = 0;
  for (const ProcessResult& r : results) {
    EXPECT_EQ(r.exit_code, 0) << r.err;
    for (size_t pos = 0; (pos = r.out.find("applied 0", pos)) != std::string::npos; ++pos) {
      ++applied_lines;
    }
  }
  const auto& embedded = EmbeddedMigrations();
  EXPECT_EQ(applied_lines, embedded.size());
  std::string want;
  for (const EmbeddedFile& f : embedded) {
    if (!want.empty()) want += ",";
    want += std::to_string(std::stoi(std::string(f.name.substr(0, 4)))) + ":" + std::string(f.name);
  }
  EXPECT_EQ(Recorded(), want);
  // --status reports every migration as applied.
  ProcessResult status = RunRekey({"migrate", "--status"}, {{"DATABASE_URL", ConnInfo()}});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_NE(status.out.find("0 pending, 0 changed"), std::string::npos) << status.out;
}

TEST_F(MigratorPgTest, RekeyMigrateAgainstUnreachableServerExitsTransient) {
  ProcessResult r =
      RunRekey({"migrate"}, {{"DATABASE_URL", "postgresql://u:pw-XYZZY@127.0.0.1:1/d"}});
  EXPECT_EQ(r.exit_code, kExitTransient) << r.err;
  EXPECT_EQ(r.err.find("pw-XYZZY"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cannot connect to PostgreSQL"), std::string::npos) << r.err;
}

TEST_F(MigratorPgTest, DriftIsRefusedBeforeApplyingAnything) {
  Migrate(*conn_, {kThree[0], kThree[1]}, {});
  std::vector<EmbeddedFile> changed = kThree;
  changed[1].content = "CREATE TABLE app.b (id bigint);";  // edited after it was applied
  try {
    Migrate(*conn_, changed, {});
    FAIL() << "drift not detected";
  } catch (const StateError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("migration 0002_second.sql was changed after it was applied"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find(Sha256Hex(kThree[1].content).substr(0, 12)), std::string::npos) << what;
    EXPECT_NE(what.find(Sha256Hex(changed[1].content).substr(0, 12)), std::string::npos) << what;
  }
  // 0003 was pending and must not have been applied.
  EXPECT_EQ(Recorded(), "1:0001_first.sql,2:0002_second.sql");
  EXPECT_EQ(Query1("SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'"),
            "0");
  // A renamed file with the same version is drift too.
  std::vector<EmbeddedFile> renamed = {kThree[0], {"0002_renamed.sql", kThree[1].content}};
  EXPECT_THROW(Migrate(*conn_, renamed, {}), StateError);

  auto status = MigrationStatusList(*conn_, changed);
  ASSERT_EQ(status.size(), 3u);
  EXPECT_TRUE(status[0].applied && status[0].checksum_matches);
  EXPECT_TRUE(status[1].applied && !status[1].checksum_matches);
  EXPECT_FALSE(status[2].applied);
  EXPECT_TRUE(status[2].in_binary);
}

TEST_F(MigratorPgTest, DatabaseNewerThanBinaryIsRefused) {
  Migrate(*conn_, kThree, {});
  try {
    Migrate(*conn_, {kThree[0], kThree[1]}, {});
    FAIL() << "older binary accepted";
  } catch (const StateError& e) {
    EXPECT_NE(std::string(e.what()).find("older than the schema"), std::string::npos) << e.what();
  }
  auto status = MigrationStatusList(*conn_, {kThree[0], kThree[1]});
  ASSERT_EQ(status.size(), 3u);
  EXPECT_FALSE(status[2].in_binary);
  EXPECT_TRUE(status[2].applied);
  // A gap (an applied migration missing from the binary) is refused as well.
  EXPECT_THROW(Migrate(*conn_, {kThree[0], kThree[2]}, {}), StateError);
}

TEST_F(MigratorPgTest, FailingMigrationRollsBackOnlyItselfAndNamesTheFile) {
  std::vector<EmbeddedFile> files = {
      kThree[0],
      {"0002_broken.sql",
       "CREATE TABLE app.partial (id int); CREATE INDEX ON app.partial (id); "
       "INSERT INTO app.nonexistent VALUES (1);"},
      kThree[2],
  };
  try {
    Migrate(*conn_, files, {});
    FAIL() << "broken migration applied";
  } catch (const StateError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("0002_broken.sql"), std::string::npos) << what;
    EXPECT_NE(what.find("relation \"app.nonexistent\" does not exist"), std::string::npos) << what;
  }
  EXPECT_EQ(Recorded(), "1:0001_first.sql");
  EXPECT_EQ(Query1("SELECT to_regclass('app.a') IS NOT NULL"), "t");
  EXPECT_EQ(Query1("SELECT to_regclass('app.partial') IS NULL"), "t");
  EXPECT_EQ(Query1("SELECT count(*) FROM pg_indexes WHERE schemaname = 'app'"), "0");
  // The lock was released despite the error.
  auto other = Connect(ConnInfo());
  pqxx::nontransaction tx(*other);
  EXPECT_TRUE(tx.exec1("SELECT pg_try_advisory_lock(" + std::to_string(kMigrationLockKey) + ")")[0]
                  .as<bool>());
}

TEST_F(MigratorPgTest, BadFileNamesAreConfigErrorsBeforeTouchingTheDatabase) {
  const char* bad[] = {
      "1_short.sql",    "0001-dash.sql", "0001_Upper.sql", "0001_x.SQL",   "0001_.sql",
      "0001_x.sql.bak", "abcd_x.sql",    "00001_x.sql",    "0001_x y.sql", ""};
  for (const char* name : bad) {
    EXPECT_THROW(Migrate(*conn_, {{name, "SELECT 1"}}, {}), ConfigError) << name;
  }
  EXPECT_THROW(Migrate(*conn_, {{"0001_a.sql", "SELECT 1"}, {"0001_b.sql", "SELECT 1"}}, {}),
               ConfigError);
  EXPECT_EQ(Query1("SELECT to_regnamespace('rekey') IS NULL"), "t");
}

TEST_F(MigratorPgTest, StatusOfAnUnmigratedDatabaseIsAllPending) {
  auto status = MigrationStatusList(*conn_, kThree);
  ASSERT_EQ(status.size(), 3u);
  for (const auto& s : status) {
    EXPECT_FALSE(s.applied) << s.name;
    EXPECT_FALSE(s.applied_at.has_value());
  }
  EXPECT_EQ(Query1("SELECT to_regnamespace('rekey') IS NULL"), "t");  // read-only
}

// Definition files: re-runnable SQL, applied after the migrations whenever their text changes.
const std::vector<EmbeddedFile> kTable = {
    {"0001_table.sql", "CREATE SCHEMA IF NOT EXISTS app; CREATE TABLE app.t (n int);"},
};
const EmbeddedFile kFunctionV1 = {
    "10_f.sql", "CREATE OR REPLACE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 1';"};
const EmbeddedFile kFunctionV2 = {
    "10_f.sql", "CREATE OR REPLACE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 2';"};
const EmbeddedFile kView = {"20_v.sql",
                            "CREATE OR REPLACE VIEW app.v AS SELECT app.f() AS f, count(*) AS n "
                            "FROM app.t;"};

TEST_F(MigratorPgTest, DefinitionsApplyAfterMigrationsAndAgainOnlyWhenChanged) {
  MigrationReport first = Migrate(*conn_, kTable, {kView, kFunctionV1});  // applied in name order
  EXPECT_EQ(first.applied, std::vector<std::string>{"0001_table.sql"});
  EXPECT_EQ(first.definitions_applied, (std::vector<std::string>{"10_f.sql", "20_v.sql"}));
  EXPECT_EQ(Query1("SELECT f FROM app.v"), "1");
  EXPECT_EQ(Query1("SELECT checksum FROM rekey.schema_definitions WHERE name = '10_f.sql'"),
            Sha256Hex(kFunctionV1.content));

  MigrationReport again = Migrate(*conn_, kTable, {kFunctionV1, kView});
  EXPECT_TRUE(again.applied.empty());
  EXPECT_TRUE(again.definitions_applied.empty());
  EXPECT_EQ(again.definitions_unchanged, 2);

  // A grant on the function survives its re-definition (CREATE OR REPLACE keeps the ACL).
  Exec("REVOKE EXECUTE ON FUNCTION app.f() FROM PUBLIC");
  auto status = DefinitionStatusList(*conn_, {kFunctionV2, kView});
  ASSERT_EQ(status.size(), 2u);
  EXPECT_TRUE(status[0].applied && !status[0].current) << status[0].name;
  EXPECT_TRUE(status[1].applied && status[1].current) << status[1].name;
  MigrationReport changed = Migrate(*conn_, kTable, {kFunctionV2, kView});
  EXPECT_EQ(changed.definitions_applied, std::vector<std::string>{"10_f.sql"});
  EXPECT_EQ(changed.definitions_unchanged, 1);
  EXPECT_EQ(Query1("SELECT f FROM app.v"), "2");
  EXPECT_EQ(Query1("SELECT has_function_privilege('public', 'app.f()', 'EXECUTE')"), "f");
  EXPECT_EQ(Query1("SELECT checksum FROM rekey.schema_definitions WHERE name = '10_f.sql'"),
            Sha256Hex(kFunctionV2.content));
}

// A migration that drops what a definition file defines (here a view over a column whose type it
// changes, which PostgreSQL requires) gets it back although the file did not change.
// A rolling deploy: the new binary (its 10_f.sql adds a check, no migration with it) migrated
// first, then an old pod runs rekey migrate. Its 10_f.sql was applied before and replaced since:
// it is refused, naming the file, and the newer function stays -- also when the old text comes
// with a migration both binaries have pending, and in a database whose texts were recorded
// before the history existed.
TEST_F(MigratorPgTest, AnOlderBinarysDefinitionTextsAreRefused) {
  const std::vector<EmbeddedFile> old_binary = {kFunctionV1, kView};
  const std::vector<EmbeddedFile> new_binary = {kFunctionV2, kView};
  Migrate(*conn_, kTable, old_binary);
  Migrate(*conn_, kTable, new_binary);
  auto expect_refused = [&](const std::vector<EmbeddedFile>& files) {
    try {
      Migrate(*conn_, files, old_binary);
      FAIL() << "the older text was applied";
    } catch (const StateError& e) {
      std::string what = e.what();
      EXPECT_NE(what.find("definition file 10_f.sql of this rekey binary is an older text"),
                std::string::npos)
          << what;
      EXPECT_NE(what.find("run rekey migrate with the newest rekey binary"), std::string::npos)
          << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
    EXPECT_EQ(Query1("SELECT app.f()"), "2");
    EXPECT_EQ(Query1("SELECT checksum FROM rekey.schema_definitions WHERE name = '10_f.sql'"),
              Sha256Hex(kFunctionV2.content));
  };
  expect_refused(kTable);
  auto status = DefinitionStatusList(*conn_, old_binary);
  ASSERT_EQ(status.size(), 2u);
  EXPECT_TRUE(status[0].replaced && !status[0].current) << status[0].name;
  EXPECT_FALSE(status[1].replaced) << status[1].name;
  EXPECT_EQ(
      Query1("SELECT string_agg(name || ':' || checksum, ',' ORDER BY first_applied_at, name) "
             "FROM rekey.schema_definition_texts WHERE name = '10_f.sql'"),
      "10_f.sql:" + Sha256Hex(kFunctionV1.content) + ",10_f.sql:" + Sha256Hex(kFunctionV2.content));
  // Nothing was applied: not even a migration the old binary has and the database lacks.
  expect_refused({kTable[0], {"0002_more.sql", "CREATE TABLE app.u (n int);"}});
  EXPECT_EQ(Recorded(), "1:0001_table.sql");

  // The new binary goes on; a text never applied here (a newer one still) goes on too.
  EXPECT_NO_THROW(Migrate(*conn_, kTable, new_binary));
  const EmbeddedFile v3 = {
      "10_f.sql", "CREATE OR REPLACE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 3';"};
  EXPECT_EQ(Migrate(*conn_, kTable, {v3, kView}).definitions_applied,
            std::vector<std::string>{"10_f.sql"});
  EXPECT_EQ(Query1("SELECT app.f()"), "3");

  // A database migrated before the history existed: its recorded texts enter the history on the
  // next run (what they replaced was never recorded, so v2 applies once more), and a text so
  // entered and then replaced is refused.
  Exec("DROP TABLE rekey.schema_definition_texts");
  Migrate(*conn_, kTable, new_binary);
  EXPECT_EQ(Query1("SELECT count(*) FROM rekey.schema_definition_texts"), "3");
  EXPECT_THROW(Migrate(*conn_, kTable, {v3, kView}), StateError);
  EXPECT_EQ(Query1("SELECT app.f()"), "2");
}

TEST_F(MigratorPgTest, EveryDefinitionIsAppliedAgainWithAPendingMigration) {
  Migrate(*conn_, kTable, {kFunctionV1, kView});
  std::vector<EmbeddedFile> files = {
      kTable[0], {"0002_widen.sql", "DROP VIEW app.v; ALTER TABLE app.t ALTER n TYPE bigint;"}};
  MigrationReport report = Migrate(*conn_, files, {kFunctionV1, kView});
  EXPECT_EQ(report.applied, std::vector<std::string>{"0002_widen.sql"});
  EXPECT_EQ(report.definitions_applied, (std::vector<std::string>{"10_f.sql", "20_v.sql"}));
  EXPECT_EQ(report.definitions_unchanged, 0);
  EXPECT_EQ(Query1("SELECT f FROM app.v"), "1");
}

TEST_F(MigratorPgTest, AFailingDefinitionRollsBackTheLastMigrationWithIt) {
  std::vector<EmbeddedFile> files = {kTable[0], {"0002_more.sql", "CREATE TABLE app.u (n int);"}};
  const EmbeddedFile broken = {"30_broken.sql",
                               "CREATE OR REPLACE VIEW app.w AS SELECT * FROM app.missing;"};
  try {
    Migrate(*conn_, files, {kFunctionV1, broken});
    FAIL() << "broken definition applied";
  } catch (const StateError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("30_broken.sql"), std::string::npos) << what;
    EXPECT_NE(what.find("0002_more.sql"), std::string::npos) << what;
    EXPECT_NE(what.find("app.missing"), std::string::npos) << what;
  }
  // 0001 committed on its own; 0002 and every definition went with the failure.
  EXPECT_EQ(Recorded(), "1:0001_table.sql");
  EXPECT_EQ(Query1("SELECT to_regclass('app.u') IS NULL"), "t");
  EXPECT_EQ(Query1("SELECT to_regprocedure('app.f()') IS NULL"), "t");
  EXPECT_EQ(Query1("SELECT count(*) FROM rekey.schema_definitions"), "0");
  // Fixed, the next run applies 0002 and the definitions together.
  MigrationReport fixed = Migrate(*conn_, files, {kFunctionV1});
  EXPECT_EQ(fixed.applied, std::vector<std::string>{"0002_more.sql"});
  EXPECT_EQ(fixed.definitions_applied, std::vector<std::string>{"10_f.sql"});
}

TEST_F(MigratorPgTest, ApplyDefinitionsLineRunsTheFileInsideTheMigration) {
  std::vector<EmbeddedFile> files = {
      kTable[0],
      {"0002_backfill.sql",
       "INSERT INTO app.t VALUES (0);\n-- apply-definitions: 10_f.sql\n"
       "UPDATE app.t SET n = app.f();"}};
  MigrationReport report = Migrate(*conn_, files, {kFunctionV2});
  EXPECT_EQ(report.applied.size(), 2u);
  EXPECT_EQ(Query1("SELECT string_agg(n::text, ',') FROM app.t"), "2");
  EXPECT_EQ(report.definitions_applied, std::vector<std::string>{"10_f.sql"});
}

TEST_F(MigratorPgTest, UnknownOrMisnamedDefinitionFilesAreConfigErrorsBeforeTouchingTheDatabase) {
  std::vector<EmbeddedFile> unknown = {
      {"0001_x.sql", "-- apply-definitions: 99_nowhere.sql\nSELECT 1;"}};
  EXPECT_THROW(Migrate(*conn_, unknown, {kFunctionV1}), ConfigError);
  EXPECT_THROW(Migrate(*conn_, kTable, {{"f.sql", "SELECT 1"}}), ConfigError);
  EXPECT_EQ(Query1("SELECT to_regnamespace('rekey') IS NULL"), "t");
}

TEST_F(MigratorPgTest, EarlierEquivalentTextsOfRewrittenMigrationsAreAccepted) {
  // 0002_jobs.sql as commit 2eeffa1 recorded it (before its functions moved to sql/schema).
  const std::string earlier = "19de69e8986d2e47c58201a782f5678b05fc7d3653cb8371ba408bdf102ae11b";
  Migrate(*conn_, {}, {});
  Exec(
      "INSERT INTO rekey.schema_migrations (version, name, checksum) VALUES "
      "(2, '0002_jobs.sql', '" +
      earlier + "')");
  std::vector<EmbeddedFile> files = {{"0002_jobs.sql", "SELECT 1;"}};
  auto status = MigrationStatusList(*conn_, files);
  ASSERT_EQ(status.size(), 1u);
  EXPECT_TRUE(status[0].checksum_matches);
  EXPECT_TRUE(status[0].earlier_text);
  EXPECT_NO_THROW(Migrate(*conn_, files, {}));
  // The same checksum under another file name is drift: the table is per file.
  Exec("UPDATE rekey.schema_migrations SET name = '0002_other.sql'");
  EXPECT_THROW(Migrate(*conn_, {{"0002_other.sql", "SELECT 1;"}}, {}), StateError);
}

TEST_F(MigratorPgTest, EmbeddedMigrationsApplyCleanlyAndIdempotently) {
  const auto& embedded = EmbeddedMigrations();
  MigrationReport first = Migrate(*conn_);
  EXPECT_EQ(first.applied.size(), embedded.size());
  MigrationReport second = Migrate(*conn_);
  EXPECT_TRUE(second.applied.empty());
  EXPECT_EQ(second.already_applied, static_cast<int>(embedded.size()));
  for (const auto& s : MigrationStatusList(*conn_)) {
    EXPECT_TRUE(s.applied && s.in_binary && s.checksum_matches && !s.earlier_text) << s.name;
  }
  EXPECT_EQ(first.definitions_applied.size(), EmbeddedDefinitions().size());
  EXPECT_TRUE(second.definitions_applied.empty());
  for (const auto& s : DefinitionStatusList(*conn_)) {
    EXPECT_TRUE(s.applied && s.in_binary && s.current) << s.name;
  }
}

}  // namespace
}  // namespace rekey::db
