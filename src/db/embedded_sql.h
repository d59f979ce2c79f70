// The SQL files embedded into the binary at build time (cmake/embed_sql.cmake), so the binary
// carries the exact schema and queries it was tested against.
#pragma once

#include <string_view>
#include <vector>

namespace rekey::db {

struct EmbeddedFile {
  std::string_view name;     // see below
  std::string_view content;  // exact bytes of the file
};

// Each list is sorted by name; the references live for the whole program.
// migrations/*.sql, named by file ("0001_keyring.sql").
const std::vector<EmbeddedFile>& EmbeddedMigrations();
// sql/schema/*.sql, named by file: functions, views and triggers, one current definition each.
const std::vector<EmbeddedFile>& EmbeddedDefinitions();
// src/<folder>/queries/*.sql, named "<folder>/<file>" ("jobs/job.sql"); see db/named_query.h.
const std::vector<EmbeddedFile>& EmbeddedQueryFiles();

}  // namespace rekey::db
