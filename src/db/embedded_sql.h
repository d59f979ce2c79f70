// The migrations/ and sql/ files, embedded into the binary at build time (cmake/embed_sql.cmake).
#pragma once

#include <string_view>
#include <vector>

namespace rekey::db {

struct EmbeddedFile {
  std::string_view name;     // file name, e.g. "0001_keyring.sql"
  std::string_view content;  // exact bytes of the file
};

// Sorted by name. The returned references live for the whole program.
const std::vector<EmbeddedFile>& EmbeddedMigrations();
const std::vector<EmbeddedFile>& EmbeddedQueries();

}  // namespace rekey::db
