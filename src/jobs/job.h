// Rotation jobs as the worker sees them: the catalog-checked definition stored in rekey.jobs,
// and the CLI's way of creating one through the SQL function rekey.create_job.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "crypto/associated_data.h"
#include "crypto/codec.h"

namespace rekey::jobs {

struct JobColumn {
  std::string name;
  crypto::CodecKind codec = crypto::CodecKind::kTink;
};

// A job as stored. Identifiers are the catalog's names (unquoted); quote them before use.
struct JobDefinition {
  int64_t job_id = 0;
  std::string name;
  std::string schema_name;
  std::string table_name;
  std::string pk_column;
  // format_type() of the key's and the scope's columns as the catalog has them now (not as
  // rekey.jobs records them: LoadJob refuses a job whose record disagrees), safe to paste after
  // "::", e.g. "bigint", "uuid", "text".
  std::string pk_type;
  std::optional<std::string> key_id_column;
  crypto::AssociatedDataTemplate associated_data;
  std::optional<std::string> scope_column;
  std::optional<std::string> scope_value;  // canonical: the scope type's own text form
  std::string scope_type;
  int batch_size = 0;
  bool per_row_audit = false;
  std::string state;
  int current_stage = 1;
  std::vector<JobColumn> columns;
  std::map<uint32_t, uint32_t> key_map;  // source key id -> target key id; empty for transit
  // A vault-transit job (every column's codec is kVaultTransit): the Transit key
  // "<mount>/keys/<name>" whose values it rewraps, and the version every value must reach.
  std::optional<std::string> transit_key_ref;
  int transit_min_version = 0;

  std::string QualifiedTable() const;  // "schema"."table", quoted
};

// Loads job `job_id`. Throws StateError if there is no such job; the database raises (SQLSTATE
// 55000) if the job's recorded key or scope type is not the catalog's (rekey.checked_column_type).
JobDefinition LoadJob(pqxx::transaction_base& txn, int64_t job_id);

// What `rekey job create` collects from its flags; validated by rekey.create_job in the database.
struct JobSpec {
  std::string table;                     // schema.table
  std::vector<std::string> columns;      // ciphertext columns
  std::vector<std::string> codecs;       // one per column, or empty for all tink
  std::map<uint32_t, uint32_t> key_map;  // source -> target
  std::optional<std::string> key_id_column;
  std::optional<std::string> ad_template;
  std::optional<std::string> scope_column;
  std::optional<std::string> scope_value;  // any text form of a value of the scope column's type
  // Columns of the table not encrypted under the key-id column's key; unset = those the latest
  // job on the same table and key-id column recorded. A job that rewrites a key-id column is
  // refused while another column it may govern holds values and is neither rotated nor listed.
  std::optional<std::vector<std::string>> not_governed;
  bool cross_scope = false;  // allow target keys outside their source key's keyring scope
  int batch_size = 1000;
  int max_attempts = 3;
  bool per_row_audit = false;
  std::optional<std::string> name;
  std::string stages = "1,25,50,75,100";  // cumulative percentages
  std::optional<int> promote_at_stage;    // default: the last stage
  double error_threshold = 0.001;         // a gate passes below this decrypt error rate
  std::optional<std::string> observe;     // PostgreSQL interval; unset = wait for approval
  int gate_sample_size = 10000;
  // vault-transit jobs (rekey.create_transit_job): the Transit key and the version to reach,
  // chosen by the caller after reading the key in Vault.
  std::optional<std::string> transit_key_ref;
  std::optional<int> transit_min_version;
};

// Parses "1,25,50,75,100" into a PostgreSQL numeric[] literal "{1,25,50,75,100}". Throws
// ConfigError unless every item is a decimal number; the database checks the plan's shape.
std::string StagePlanLiteral(const std::string& text);

// Parses "1:2,3:7" (source:target pairs). Throws ConfigError on anything else.
std::map<uint32_t, uint32_t> ParseKeyMap(const std::string& text);

// Parses "column=value" for a scope. Throws ConfigError unless there is a '=' after a non-empty
// column name.
std::pair<std::string, std::string> ParseScope(const std::string& text);

// Creates and plans the job in `txn` (the caller commits; a staged job is planned in this process,
// jobs/rollout_planner.h); a spec with a Transit key or the
// vault-transit codec goes to rekey.create_transit_job, and must then use only that codec. Returns
// its id. Invalid definitions (unknown table or column, hostile identifiers, bad key map, a key-id
// column governing columns left out, a target key in another scope) and definitions the state of
// things refuses (an unfinished job on one of the columns, or sharing keys mapped otherwise) raise
// in the database with its one-line reason (pqxx errors; db::Classified makes the first
// ConfigError and the second StateError); nothing is written.
// `key_reader`, if given, is a second connection to the same database, idle, which planning may
// use meanwhile to read the table's keys ahead (jobs/rollout_planner.h).
int64_t CreateJob(pqxx::transaction_base& txn, const JobSpec& spec,
                  pqxx::connection* key_reader = nullptr);

}  // namespace rekey::jobs
