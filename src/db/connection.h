// Opening PostgreSQL connections and classifying libpqxx errors into rekey's error hierarchy
// (common/error.h) by whether a retry can help.
//
// Thread-safety: the functions are thread-safe; a pqxx::connection is not and must be used by
// one thread at a time.
#pragma once

#include <exception>
#include <memory>
#include <pqxx/pqxx>
#include <string>
#include <string_view>

#include "common/error.h"

namespace rekey::db {

// Opens a connection to `conninfo` (URL or key=value; "" means libpq's PG* environment) with
// the given application_name, which overrides any application_name in conninfo, so operators
// can tell rekey's sessions apart in pg_stat_activity. The caller owns the connection.
// Every option of conninfo is passed on, sslmode, sslrootcert and the other TLS options included
// (libpq's PGSSLMODE etc. apply to those it does not set).
// The session's default_transaction_isolation is READ COMMITTED whatever the server, database or
// role default: the audit chain seals only in READ COMMITTED transactions.
// Throws ConfigError if conninfo is malformed, the server rejects the credentials, database or
// role, pg_hba.conf refuses the session (e.g. sslmode=disable against hostssl-only rules), or
// the server's certificate fails verification (sslmode=verify-ca / verify-full);
// TransientError("cannot connect to PostgreSQL at <target>: <libpq message>; check --db /
// DATABASE_URL / PG* and that the server is up") otherwise, where <target> lists only the host,
// port, dbname and user options. No message contains the password (the libpq message is passed
// through RedactSecrets; a malformed string is never echoed).
std::unique_ptr<pqxx::connection> Connect(const std::string& conninfo,
                                          const std::string& application_name = "rekey");

// True iff a retry may succeed: pqxx::broken_connection (including too_many_connections),
// serialization_failure (40001), deadlock_detected (40P01), in_doubt_error, lock_not_available
// (55P03), query_canceled (57014) caused by a statement or lock timeout, admin/crash shutdown
// (57P01..57P03), too_many_connections (53300), and rekey::Error with transient() true.
bool IsTransient(const std::exception& e);

// The server's primary error message from a pqxx exception's what(): the first line, without
// the "ERROR:  "/"FATAL:  " severity prefix.
std::string PrimaryMessage(const std::exception& e);

// Throws the rekey::Error that corresponds to `e` (see Classified), with what() =
// "<context>: <primary message>". Called from a catch block, an exception that is not from
// pqxx is rethrown unchanged.
[[noreturn]] void ThrowClassified(std::string_view context, const std::exception& e);

// Calls fn() and returns its result. pqxx::failure exceptions it throws are rethrown as
// TransientError if IsTransient; else ConfigError for the codes rekey's control functions use to
// reject a definition that does not fit the catalog (22023 invalid_parameter_value, 22P02,
// 42P01 undefined_table, 42703 undefined_column, 42804 datatype_mismatch, 42602 invalid_name,
// 42P16, 42704, 0A000); else StateError for integrity violations (class 23), 55000
// object_not_in_prerequisite_state, 42501 insufficient_privilege, and raise_exception /
// no_data_found (P0001, P0002) -- the ways rekey's constraints and triggers refuse a step --
// else PermanentError, each with what() = "<context>: <primary message>".
// rekey::Error and other exceptions pass through unchanged.
template <typename Fn>
auto Classified(std::string_view context, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const pqxx::failure& e) {
    ThrowClassified(context, e);
  }
}

}  // namespace rekey::db
