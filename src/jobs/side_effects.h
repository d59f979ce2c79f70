// What rewriting a table sets off, declared before the first batch (issue #19, item 2;
// docs/operations.md, "Side effects of a rewrite").
//
// A rotation UPDATEs every row in its scope: the table's user triggers fire on each row, every
// publication that includes the table and every logical slot of the database carry each new row
// version to their consumers, foreign keys on a rewritten column are checked again, every index
// on it gets a new entry (no HOT update is possible), stored generated columns on it are
// recomputed, and the table writes WAL and grows by dead row versions until vacuum. `rekey job
// create` (and --dry-run) lists all of it (InspectSideEffects, SideEffects::Lines) and records it
// on the job with the operator's choice for the triggers (DeclareSideEffects).
//
// User triggers that fire on the rewrite's UPDATE need a choice (CheckTriggerChoice):
//   fire  they run on every rewritten row, as before this existed;
//   skip  the batch's UPDATE, and only it, runs with session_replication_role = replica, so
//         triggers enabled the ordinary way (ENABLE, the default) do not fire; triggers
//         ENABLE ALWAYS or ENABLE REPLICA do, and the listing says so. rekey's own triggers, and
//         every other statement of the batch's transaction, run in the session's role as before.
// A non-superuser may SET session_replication_role only with PostgreSQL 15's
// `GRANT SET ON PARAMETER session_replication_role TO <role>`; skip is refused without it, at
// create (the creating role) and again by each worker (rotation/batch_rotator.h). skip is refused
// too when a foreign key covers a column the rewrite writes: replica mode would skip its check.
//
// The queries are src/jobs/queries/side_effects.sql.
#pragma once

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rekey::jobs {

enum class TriggerChoice { kNone, kFire, kSkip };

// "fire" or "skip"; nullopt otherwise.
std::optional<TriggerChoice> ParseTriggerChoice(const std::string& text);
// "fire", "skip", or "" for kNone.
std::string TriggerChoiceName(TriggerChoice choice);

struct UserTrigger {
  std::string name;
  std::string timing;    // BEFORE, AFTER, INSTEAD OF
  std::string events;    // e.g. "INSERT OR UPDATE"
  std::string level;     // ROW or STATEMENT
  std::string enabled;   // pg_trigger.tgenabled: O (default), D (disabled), R (replica), A (always)
  std::string function;  // the trigger function, schema-qualified where needed
  std::vector<std::string> update_of;  // UPDATE OF columns; empty: any column
  bool has_when = false;               // a WHEN condition may keep it from firing
  bool on_rewrite = false;  // an UPDATE trigger whose columns include one the rewrite writes

  // Whether it runs on the rewrite's UPDATE under `choice` (kNone behaves as kFire).
  bool FiresUnder(TriggerChoice choice) const;
};

struct Publication {
  std::string name;
  bool publishes_updates = false;
  bool all_tables = false;
  std::string columns;     // the publication's column list, "" for every column
  std::string row_filter;  // "" for none
};

struct LogicalSlot {
  std::string name;
  std::string plugin;
  bool active = false;
};

struct ForeignKey {
  std::string name;
  std::string table;       // the constraint's table
  std::string definition;  // pg_get_constraintdef
};

struct TableIndex {
  std::string name;
  std::string definition;
  bool touches_written = false;  // a key column, expression or predicate reads a written column
  int64_t bytes = 0;
  double entries = 0;  // pg_class.reltuples of the index (<= 0: unknown)
};

struct GeneratedColumn {
  std::string name;
  std::string expression;
};

// What the estimate is computed from (EstimateRewrite).
struct TableShape {
  int64_t heap_bytes = 0;  // pg_relation_size of the main fork
  double rows = 0;         // pg_class.reltuples (<= 0: never analyzed; the sample count is used)
  int64_t row_bytes = 0;   // average pg_column_size of a whole row (rekey.sample_row_bytes)
  int fillfactor = 100;
  bool full_page_writes = true;
  int block_size = 8192;
};

// Estimated WAL and table growth of rewriting `rows` rows in `batches` batches
// (docs/operations.md gives the formula and its measured error).
struct RewriteEstimate {
  int64_t wal_bytes = 0;
  int64_t table_growth_bytes = 0;  // heap and indexes, before vacuum, at most
  bool hot_possible = false;       // no index reads a written column
  double hot_share = 0;            // of the updates, expected HOT (room on their page)
};

struct SideEffects {
  std::string table;                         // schema.table, quoted where needed
  std::vector<std::string> written_columns;  // the ciphertext columns and the key-id column
  std::vector<UserTrigger> triggers;
  std::vector<Publication> publications;
  std::vector<LogicalSlot> logical_slots;
  std::vector<ForeignKey> foreign_keys;  // on a written column, from or to the table
  std::vector<TableIndex> indexes;       // every index of the table
  std::vector<GeneratedColumn> generated;
  TableShape shape;
  int64_t rows = 0;  // rows planned (set once planned)
  RewriteEstimate estimate;

  // The user triggers that fire on the rewrite under kFire.
  std::vector<const UserTrigger*> FiringTriggers() const;
  // One line each, for `rekey job create`; `choice` says which triggers will run.
  std::vector<std::string> Lines(TriggerChoice choice) const;
  nlohmann::json ToJson(TriggerChoice choice) const;
};

// Reads, in `txn`, what rewriting `written_columns` of `table` (as `rekey job create --table`
// names it; rekey.resolve_table) sets off. Throws the database's errors (an unknown table).
SideEffects InspectSideEffects(pqxx::transaction_base& txn, const std::string& table,
                               std::vector<std::string> written_columns);

// The estimate (pure; its formula is in docs/operations.md).
RewriteEstimate EstimateRewrite(const TableShape& shape, const std::vector<TableIndex>& indexes,
                                int64_t rows, int64_t batches);

// The GRANT that lets the connection's role skip triggers (SET session_replication_role), or ""
// if it may already (a superuser, or granted).
std::string MissingSkipTriggersGrant(pqxx::transaction_base& txn);

// Refuses, with ConfigError and one line, a job whose triggers need a choice it does not make
// (naming them and --triggers fire|skip), skip by a role that may not
// (MissingSkipTriggersGrant), and skip with a foreign key on a written column.
void CheckTriggerChoice(pqxx::transaction_base& txn, const SideEffects& effects,
                        TriggerChoice choice);

// Records the listing and the choices on job `job_id` (rekey.declare_side_effects): the job's
// triggers (kNone: NULL) and vacuum_after columns, rekey.job_side_effects, and an audit event.
void DeclareSideEffects(pqxx::transaction_base& txn, int64_t job_id, TriggerChoice choice,
                        bool vacuum_after, const SideEffects& effects);

// What a worker needs before its first chunk of a job on a connection.
struct RewriteStart {
  bool skip_triggers = false;  // the job's choice is skip
};

// Records job `job_id`'s 'start' counters if no worker has yet (rekey.record_table_counters) and
// returns its choice. Throws ConfigError, with the GRANT to run, if the job skips triggers and
// the connection's role may not.
RewriteStart StartRewrite(pqxx::transaction_base& txn, int64_t job_id);

}  // namespace rekey::jobs
