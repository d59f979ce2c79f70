// The one table that classifies every error rekey meets at a boundary -- a SQLSTATE, a libpqxx
// exception type, a KMS error, a rekey::Error -- by what a retry can fix: the class (which
// rekey::Error it becomes, common/error.h), hence the exit code of the CLI, and what the worker
// pool does with the batch in hand. db::Classify (db/connection.h) reads it for database errors,
// db::Connect for libpq's connection failures, ExitCodeFor (common/error.h) for rekey's own, the
// KMS providers' classifiers (kms/aws_errors.h, kms/vault_errors.h) for theirs.
// tests/error_classification_test.cpp reaches every row through its boundary;
// docs/ARCHITECTURE.md renders it for people.
//
// Data only, no dependency: the table is an array of rows, read in order, the first match wins,
// so a row with a message marker precedes the plain row of the same code.
//
// Thread-safety: immutable; every function is pure.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace rekey {

// Which rekey::Error an error becomes; the exit code follows (ExitCodeOf).
enum class ErrorClass {
  kTransient,  // TransientError, exit 3: a retry may succeed without anyone acting
  kConfig,     // ConfigError, exit 2: a person fixes a flag, an environment, a grant, a definition
  kKey,        // KeyError, exit 4: a person fixes a key or the KMS's policy
  kState,      // StateError, exit 5: refused by the state of things (a rule, a lifecycle step)
  kPermanent,  // PermanentError or unclassified, exit 1: a bug, or something rekey cannot name
};

// What the worker pool (rotation/worker_pool.h) does with the batch in hand when the error ends
// its attempt.
enum class BatchAction {
  kRetry,  // release it without using up an attempt; back off; try again
  kStop,   // release it without using up an attempt; stop the worker (nothing will change alone)
  kFail,   // release it, using up an attempt (the batch's own failure); back off; try again
  kLost,   // nothing to release: the batch belongs to another worker, or to a rollback, now
};

// Where the code of a row comes from.
enum class ErrorSource {
  kSqlState,      // a SQLSTATE: five characters, or a two-character class ("08", "23")
  kLibpqxx,       // a libpqxx exception type without a SQLSTATE of its own
  kConnect,       // libpq's message when a connection fails (db::Connect)
  kAwsKms,        // an AWS KMS exception name ("__type"), or "5xx" / "429" for the HTTP status
  kVaultTransit,  // a Vault HTTP status ("429", "5xx")
  kRekey,         // a rekey::Error type (common/error.h), thrown by rekey itself
};

struct ErrorRule {
  ErrorSource source;
  std::string_view code;
  // Non-empty: the row applies only when the error's message contains this text (the server's
  // wording distinguishes what the code alone does not).
  std::string_view message;
  ErrorClass error_class;
  BatchAction batch;
  std::string_view why;
  // Non-empty: what a worker that stops on it says to do (rotation/worker_pool.cpp).
  std::string_view summary = {};
  std::string_view remedy = {};
};

// Every row, in lookup order.
const std::vector<ErrorRule>& ErrorTable();

// The first row of `source` whose code matches `code` (for kSqlState, a two-character row
// matches every code of its class) and whose message marker, if any, is in `message`; nullptr
// if none does.
const ErrorRule* FindErrorRule(ErrorSource source, std::string_view code,
                               std::string_view message = {});

// The exit code of the CLI for an error of class `c` (README.md, "Exit codes").
ExitCode ExitCodeOf(ErrorClass c);

// "transient", "config", ...: for logs and the rendered table.
std::string_view ErrorClassName(ErrorClass c);
std::string_view BatchActionName(BatchAction a);
std::string_view ErrorSourceName(ErrorSource s);

// The table as Markdown, one line per row: what docs/ARCHITECTURE.md shows (a test keeps the
// two the same).
std::string RenderErrorTable();

// The kRekey row of a rekey::Error by its dynamic type; nullptr for any other exception.
const ErrorRule* FindRekeyErrorRule(const std::exception& e);

}  // namespace rekey
