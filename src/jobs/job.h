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
  std::string pk_type;  // format_type() from the catalog (never rekey.jobs.pk_type), e.g. uuid
  std::optional<std::string> key_id_column;
  crypto::AssociatedDataTemplate associated_data;
  std::optional<std::string> scope_column;
  std::optional<std::string> scope_value;
  std::string scope_type;  // likewise from the catalog; "" without a scope
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

// Loads job `job_id`. Throws StateError if there is no such job, ConfigError if its table, primary
// key or scope column no longer exists.
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
  std::optional<std::string> scope_value;
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
// its id. Invalid definitions (unknown table or column, hostile identifiers, bad key map) raise in
// the database and come back as StateError with the database's one-line reason; nothing is written.
// `key_reader`, if given, is a second connection to the same database, idle, which planning may
// use meanwhile to read the table's keys ahead (jobs/rollout_planner.h).
int64_t CreateJob(pqxx::transaction_base& txn, const JobSpec& spec,
                  pqxx::connection* key_reader = nullptr);

}  // namespace rekey::jobs
