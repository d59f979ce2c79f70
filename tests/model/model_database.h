// The database one thread of the model test runs its sequences in, one after another.
//
// Cloning the migrated template per sequence (CREATE DATABASE) cost 0.3 to 0.8 s on the loaded
// 2-core machine, a third of a sequence. Reset() instead returns this database to the state of
// a freshly migrated one in one transaction of 25 to 80 ms there, so a sequence still starts
// from exactly the same state whatever ran before it, and replays from its seed alone: no
// session of the previous sequence survives, rekey's tables are empty and their id sequences
// restart at 1 (key and job ids in a trace mean the same on every replay), and the application's
// tables and schemas are gone (the sequence creates them again, under their first names).
//
// Header-only (like model_crypto.h): the test executable is built from its one .cpp file.
// Thread-safety: one ModelDatabase per thread.
#pragma once

#include <pqxx/pqxx>

#include <string>

#include "harness/pg_server.h"

namespace rekey::testing::model {

class ModelDatabase {
 public:
  ModelDatabase()
      : name_(PgServer::Get().CreateDatabase()), conninfo_(PgServer::Get().ConnInfo(name_)) {}
  ~ModelDatabase() {
    try {
      PgServer::Get().DropDatabase(name_);
    } catch (const std::exception&) {
      // The server and its temp dir go at process exit either way.
    }
  }
  ModelDatabase(const ModelDatabase&) = delete;
  ModelDatabase& operator=(const ModelDatabase&) = delete;

  const std::string& conninfo() const { return conninfo_; }

  // Call with no connection or worker of the previous sequence left in this process. Throws if
  // the database cannot be reset (the sequence then reports a harness error).
  void Reset() {
    pqxx::connection conn(conninfo_);
    {
      // A SIGKILLed worker's backend may outlive its client for a moment (and hold locks).
      pqxx::nontransaction txn(conn);
      txn.exec(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
          "current_database() AND pid <> pg_backend_pid()");
    }
    pqxx::work txn(conn);
    txn.exec0("SET LOCAL lock_timeout = '10s'");
    // Triggers off for this transaction: rekey.keys, rekey.audit and rekey.audit_chain refuse
    // DELETE by design, as every application must be refused (and with them the foreign keys'
    // triggers, so the order does not matter). Every table of the rekey schema but the migrator's
    // own (the migration and definition history) is state a sequence made, whoever added the table.
    // DELETE, not TRUNCATE: a few dozen rows go faster than new files for every table and index.
    txn.exec0("SET LOCAL session_replication_role = replica");
    txn.exec0(
        txn.exec1(
               "SELECT string_agg(format('DELETE FROM %s', c.oid::regclass), '; ') AS sql "
               "FROM pg_class c WHERE c.relnamespace = 'rekey'::regnamespace AND c.relkind IN "
               "('r', 'p') AND c.relname NOT IN ('schema_migrations', 'schema_definitions')")["sql"]
            .as<std::string>());
    // Every id sequence starts again.
    txn.exec(
        "SELECT setval(format('%I.%I', schemaname, sequencename), start_value, false) FROM "
        "pg_sequences WHERE schemaname = 'rekey'");
    // The application's side: every table of public (wherever a rename left it) and the
    // schemas a sequence creates.
    const pqxx::row app = txn.exec1(
        "SELECT string_agg(c.oid::regclass::text, ', ') AS tables FROM pg_class c WHERE "
        "c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')");
    if (!app["tables"].is_null()) {
      txn.exec0("DROP TABLE " + app["tables"].as<std::string>() + " CASCADE");
    }
    txn.exec0("DROP SCHEMA IF EXISTS archive CASCADE");
    txn.commit();
  }

 private:
  const std::string name_;
  const std::string conninfo_;
};

}  // namespace rekey::testing::model
