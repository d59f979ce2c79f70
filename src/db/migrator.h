// Applies rekey's schema migrations (migrations/NNNN_name.sql, embedded into the binary) to a
// database, exactly once each, and reports which are applied.
//
// Bookkeeping lives in rekey.schema_migrations(version, name, checksum, applied_at, applied_by);
// checksum is the SHA-256 (lower-case hex) of the file's exact bytes, so a file edited after it
// was applied is detected ("drift") instead of silently diverging from the database.
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
  std::vector<std::string> applied;  // file names applied by this run, in order
  int already_applied = 0;           // files that were applied before this run
};

// Brings the database up to date with `files`; the caller keeps ownership of conn, which must
// not be inside a transaction. Creates schema rekey and rekey.schema_migrations if missing. Each
// pending file is applied in its own transaction together with its schema_migrations row, in
// version order; a failure rolls back that file only (earlier ones stay applied) and throws with
// the file name and the server message (TransientError if a retry may help, else StateError).
// Refuses before applying anything:
//   ConfigError  a file name not matching ^[0-9]{4}_[a-z0-9_]+\.sql$, or two files per version;
//   StateError   an applied file whose checksum (or name) differs from `files` (drift), or an
//                applied version `files` does not contain (the binary is older than the schema).
// Idempotent: a second run applies nothing. The advisory lock is released on every path.
MigrationReport Migrate(pqxx::connection& conn,
                        const std::vector<EmbeddedFile>& files = EmbeddedMigrations());

struct MigrationStatus {
  int version = 0;
  std::string name;                       // file name (from the database if not in `files`)
  bool in_binary = false;                 // `files` contains this version
  bool applied = false;                   // recorded in rekey.schema_migrations
  bool checksum_matches = false;          // applied and the recorded checksum equals the file's
  std::optional<std::string> applied_at;  // as text, iff applied
  std::optional<std::string> applied_by;  // iff applied
};

// One entry per version known to `files` or to the database, sorted by version. Reads only; a
// database without rekey.schema_migrations reports every file as pending. Throws ConfigError for
// bad file names, and pqxx errors classified as in connection.h.
std::vector<MigrationStatus> MigrationStatusList(
    pqxx::connection& conn, const std::vector<EmbeddedFile>& files = EmbeddedMigrations());

// SHA-256 of `content` as 64 lower-case hex digits.
std::string Sha256Hex(std::string_view content);

}  // namespace rekey::db
