// The key census: where values under a data key are, in the whole database (rekey.key_census in
// sql/schema/30_keyring.sql), and the knobs a retire or destroy of the key takes.
//
// The census reads every bytea and text-like column of every table, partitioned table and
// materialized view outside the system and rekey schemas (one sequential scan per table), finds
// values under the key in every format rekey knows that names its key (Tink in bytea, and as
// base64, base64url or hex text; raw values through a registered key-id column), and reports what
// it could not read as unknown, never as zero. The lifecycle trigger on rekey.keys refuses retire
// and destroy while it lists anything (docs/keyring.md).
//
// Every function runs inside the caller's transaction. Database failures are classified by
// db::Classified (TransientError when a retry may help).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <pqxx/pqxx>

namespace rekey::keyring {

struct CensusColumn {
  std::string schema;
  std::string table;
  std::string column;
  std::optional<int64_t> target_id;  // the registered target (lowest id), nullopt if unregistered
  // Where values were found ("tink", "raw", "tink-base64", "tink-hex"); for an unknown column, the
  // formats that would have been checked; for an unresolved target, its codec.
  std::vector<std::string> formats;
  std::optional<int64_t> values;       // values found under the key; nullopt iff nothing was read
  std::optional<std::string> unknown;  // why the count is incomplete and what to do; else nullopt
  // "in_use" (values > 0), "unknown" (could not read it all, found none) or "unresolved" (a
  // registered target whose table or column is gone).
  std::string status;
  // schema.table.column, each part quoted as an SQL identifier where it needs it (as format's %I).
  std::string ref;
};

// Runs the census of `key_id` and calls `on_column` for each column it lists, as the rows arrive
// (fetched in small chunks: memory does not grow with the number of columns). The census raises
// one NOTICE per table it reads; they reach the connection's notice handlers.
void KeyCensus(pqxx::transaction_base& txn, uint32_t key_id,
               const std::function<void(const CensusColumn&)>& on_column);

// Makes this transaction READ COMMITTED whatever default_transaction_isolation says. Must be the
// transaction's first statement. A retire or destroy needs it: its census must count in
// snapshots taken after the key's lifecycle lock was granted.
void UseReadCommitted(pqxx::transaction_base& txn);

// Lets a retire or destroy in this transaction go ahead although the census could not read the
// columns `refs` (schema.table.column each): the transaction-local setting rekey.accept_unknown,
// which the lifecycle trigger reads and audits (key.unknown_accepted). Columns holding values
// under the key are never accepted. Throws ConfigError for a ref that is not schema.table.column
// or holds a comma.
void AcceptUnknownColumns(pqxx::transaction_base& txn, const std::vector<std::string>& refs);

// Stops registered target `target_id` from blocking retire and destroy; only a target whose table
// or column no longer exists can be forgotten (the database refuses the others: StateError).
// Audited as target.forgotten. Returns the database's one-line confirmation.
std::string ForgetTarget(pqxx::transaction_base& txn, int64_t target_id, const std::string& reason);

}  // namespace rekey::keyring
