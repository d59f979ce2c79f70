// Named SQL queries (River's `-- name:` style): fixed SQL text lives in
// `src/<folder>/queries/*.sql` files beside the code that runs it, embedded into the binary at
// build time (cmake/embed_sql.cmake), and C++ asks for it by name.
//
// A query file holds one or more blocks, each opened by a line `-- name: <query>`; the block runs
// to the next such line or the end of the file. Comment lines between the name and the statement
// are the query's contract and stay in its text (PostgreSQL ignores them). A query's full name is
// `<folder>/<file stem>.<query>`: the block `-- name: load` of src/jobs/queries/job.sql is
// "jobs/job.load", so the name alone says which file to open.
//
// Thread-safety: every function may be called from any thread; the table is built once, on first
// use, and never changes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace rekey::db {

// Returns the text of the query named `name`. Throws std::logic_error iff there is no such query:
// a programming error (a typo or a renamed block), never a fact about the database. The reference
// lives for the whole program.
const std::string& Query(std::string_view name);

struct NamedQuery {
  std::string name;  // e.g. "jobs/job.load"
  std::string text;  // the block, without its `-- name:` line, trailing blank lines removed
};

// Splits one query file. `qualifier` is "<folder>/<file stem>". Throws std::logic_error iff the
// file holds SQL before its first `-- name:` line, a block with no statement, a malformed name
// (not [a-z0-9_]+), or a name twice.
std::vector<NamedQuery> ParseQueryFile(std::string_view qualifier, std::string_view content);

// Every embedded query, sorted by name; what Query() looks up.
const std::vector<NamedQuery>& AllQueries();

}  // namespace rekey::db
