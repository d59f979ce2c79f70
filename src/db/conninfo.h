// Choosing and redacting PostgreSQL connection strings.
//
// rekey accepts both libpq forms: URLs (postgresql://user:pass@host:port/db?param=value) and
// key=value strings (host=h password='p w'). Passwords must never reach logs or error messages,
// so everything that prints a connection string or a libpq message passes it through here.
// All functions are pure and thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace rekey::db {

// The connection string to use: `flag` if non-empty, else $DATABASE_URL, else "" (libpq then
// reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE...).
std::string ResolveConnInfo(const std::string& flag);

// `conninfo` (URL or key=value form) with every password replaced by "***": URL userinfo
// (postgresql://u:secret@h -> postgresql://u:***@h), `password=...` (quoted or not) and the
// `password` query parameter of URLs. Text that is neither form is returned unchanged.
std::string RedactConnInfo(std::string_view conninfo);

// `text` (e.g. an error message) with RedactConnInfo applied to any connection URL in it and
// every occurrence of a password found in `conninfo` -- in its literal, percent-decoded and
// percent-encoded spellings -- replaced by "***".
std::string RedactSecrets(std::string_view text, std::string_view conninfo);

// The passwords `conninfo` contains (decoded), for redaction; empty if none.
std::vector<std::string> PasswordsIn(std::string_view conninfo);

}  // namespace rekey::db
