// Applies rekey's schema to a database: the versioned migrations (migrations/NNNN_name.sql), each
// exactly once, and the definition files (sql/schema/NN_name.sql: every function, view and
// trigger, one current definition each), re-applied whenever their text changes -- Flyway's
// versioned and repeatable migrations. sql/README.md says what goes where.
//
// Bookkeeping lives in rekey.schema_migrations(version, name, checksum, applied_at, applied_by),
// rekey.schema_definitions(name, checksum, applied_at, applied_by) and the history of every text
// each definition file had, rekey.schema_definition_texts(name, checksum, first_applied_at,
// first_applied_by); checksum is the SHA-256
// (lower-case hex) of the file's exact bytes. A migration edited after it was applied is detected
// ("drift") instead of silently diverging from the database; the one exception is a table in
// migrator.cpp of earlier texts of migrations rewritten without changing what they leave behind
// (their functions moved to sql/schema), accepted as equivalent. A definition file whose checksum
// differs is simply applied again: its statements are re-runnable (CREATE OR REPLACE) -- unless
// the database applied that very text before and has replaced it since, which only an older
// binary can hold (a rolling deploy's old pod): that is refused, so an older binary never puts
// back definitions without the checks a newer one added.
//
// Concurrency: Migrate takes the session advisory lock kMigrationLockKey for its whole run, so
// concurrent runs -- several workers starting at once, or `rekey migrate` racing a deploy --
// serialise, and the later ones find everything applied. The lock is per database.
#pragma once

#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "db/embedded_sql.h"

namespace rekey::db {

// pg_advisory_lock key held while migrating: the ASCII bytes "rekeymig" as a big-endian int64.
constexpr int64_t kMigrationLockKey = 8243112776544643431;

struct MigrationReport {
  std::vector<std::string> applied;              // migrations applied by this run, in order
  int already_applied = 0;                       // migrations applied before this run
  std::vector<std::string> definitions_applied;  // definition files (re)applied, in order
  int definitions_unchanged = 0;                 // definition files already applied as they are
};

// Brings the database up to date with `files` (migrations) and `definitions`; the caller keeps
// ownership of conn, which must not be inside a transaction. Creates schema rekey and the
// bookkeeping tables if missing. Each pending migration is applied in its own transaction
// together with its schema_migrations row, in version order; a failure rolls back that file only
// (earlier ones stay applied) and throws with the file name and the server message
// (TransientError if a retry may help, else StateError). Then every definition file whose
// checksum differs from the recorded one is applied, in name order, and recorded -- in the
// transaction of the last pending migration (so a migration and the functions written for it
// commit together), or in a transaction of their own when no migration was pending.
//
// A migration that needs a definition while it runs (a backfill calling a function) names its
// file on a line of its own, `-- apply-definitions: NN_name.sql`: the file's text is run at that
// point of the migration, in its transaction (and applied and recorded again at the end).
//
// Refuses before applying anything:
//   ConfigError  a migration name not matching ^[0-9]{4}_[a-z0-9_]+\.sql$, two migrations per
//                version, a definition name not matching ^[0-9]{2}_[a-z0-9_]+\.sql$, or an
//                apply-definitions line naming no file of `definitions`;
//   StateError   an applied migration whose checksum (or name) differs from `files` and is not a
//                known equivalent earlier text (drift), or an applied version `files` does not
//                contain (the binary is older than the schema), or a definition file whose text
//                was applied before and has been replaced since (the binary is older than the
//                schema's definitions; the message names the file and says to run the newest
//                binary).
// Idempotent: a second run applies nothing. The advisory lock is released on every path.
MigrationReport Migrate(pqxx::connection& conn,
                        const std::vector<EmbeddedFile>& files = EmbeddedMigrations(),
                        const std::vector<EmbeddedFile>& definitions = EmbeddedDefinitions());

struct MigrationStatus {
  int version = 0;
  std::string name;                       // file name (from the database if not in `files`)
  bool in_binary = false;                 // `files` contains this version
  bool applied = false;                   // recorded in rekey.schema_migrations
  bool checksum_matches = false;          // applied and the recorded checksum is the file's (or
                                          // a known equivalent earlier text's)
  bool earlier_text = false;              // applied as a known equivalent earlier text
  std::optional<std::string> applied_at;  // as text, iff applied
  std::optional<std::string> applied_by;  // iff applied
};

// One entry per version known to `files` or to the database, sorted by version. Reads only; a
// database without rekey.schema_migrations reports every file as pending. Throws ConfigError for
// bad file names, and pqxx errors classified as in connection.h.
std::vector<MigrationStatus> MigrationStatusList(
    pqxx::connection& conn, const std::vector<EmbeddedFile>& files = EmbeddedMigrations());

struct DefinitionStatus {
  std::string name;                       // file name, e.g. "20_audit.sql"
  bool in_binary = false;                 // `definitions` contains this file
  bool applied = false;                   // recorded in rekey.schema_definitions
  bool current = false;                   // applied with exactly the text of `definitions`
  bool replaced = false;                  // the text of `definitions` was applied before and
                                          // replaced since: Migrate refuses it
  std::optional<std::string> applied_at;  // as text, iff applied
  std::optional<std::string> applied_by;  // iff applied
};

// One entry per definition file known to `definitions` or to the database, sorted by name. Reads
// only. Throws ConfigError for bad file names, and pqxx errors classified as in connection.h.
std::vector<DefinitionStatus> DefinitionStatusList(
    pqxx::connection& conn, const std::vector<EmbeddedFile>& definitions = EmbeddedDefinitions());

// SHA-256 of `content` as 64 lower-case hex digits.
std::string Sha256Hex(std::string_view content);

}  // namespace rekey::db
