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
#include "common/error_table.h"

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

// How an error met at a database boundary is classified: its row of the error table
// (common/error_table.h, rendered in docs/ARCHITECTURE.md), the one classifier of rekey.
struct Classification {
  ErrorClass error_class = ErrorClass::kPermanent;
  BatchAction batch = BatchAction::kFail;
  const ErrorRule* rule = nullptr;  // the row that decided; nullptr: unclassified (kPermanent)
  std::string sqlstate;             // "" unless a SQL error (libpqxx 6 types mapped to theirs)
};

// Classifies `e` by the error table: a rekey::Error by its type; a pqxx::sql_error by its
// SQLSTATE (libpqxx 6 throws some types -- serialization_failure, insufficient_privilege, ... --
// without one: the type's SQLSTATE is used) and its message, e.g. 40001 "no longer claimed"
// (the batch belongs elsewhere now) apart from any other serialization failure;
// pqxx::broken_connection as connection_exception (class 08); pqxx::in_doubt_error by type.
// Anything else is unclassified: kPermanent, and a batch attempt that fails.
Classification Classify(const std::exception& e);

// True iff a retry may succeed (Classify says kTransient): broken connections, serialization
// failures and deadlocks, lock and statement timeouts, admin/crash shutdown, too many
// connections, and rekey::Error with transient() true.
bool IsTransient(const std::exception& e);

// True iff `e` is the SQL's "no longer claimed" signal (SQLSTATE 40001 with that wording, from
// rekey.require_open_stage_batch): the batch belongs to another worker or a rollback now.
bool IsNoLongerClaimed(const std::exception& e);

// The server's primary error message from a pqxx exception's what(): the first line, without
// the "ERROR:  "/"FATAL:  " severity prefix.
std::string PrimaryMessage(const std::exception& e);

// Throws the rekey::Error that corresponds to `e` (see Classified), with what() =
// "<context>: <primary message>". Called from a catch block, an exception that is not from
// pqxx is rethrown unchanged.
[[noreturn]] void ThrowClassified(std::string_view context, const std::exception& e);

// Calls fn() and returns its result. pqxx::failure exceptions it throws are rethrown as the
// rekey::Error of their class in the error table (Classify): TransientError, ConfigError (a
// definition that does not fit the catalog, a missing privilege), StateError (rekey's
// constraints, triggers and functions refusing a step), else PermanentError, each with
// what() = "<context>: <primary message>". rekey::Error and other exceptions pass through
// unchanged.
template <typename Fn>
auto Classified(std::string_view context, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const pqxx::failure& e) {
    ThrowClassified(context, e);
  }
}

}  // namespace rekey::db
