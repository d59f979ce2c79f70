// Rotation jobs as the worker sees them: the catalog-checked definition stored in rekey.jobs,
// and the CLI's way of creating one through the SQL function rekey.create_job. The queries are
// src/jobs/queries/job.sql; the flags' parsers are jobs/job_spec.h.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "crypto/associated_data.h"
#include "crypto/codec.h"
#include "crypto/text_encoding.h"
#include "jobs/job_spec.h"
#include "jobs/key_shape.h"

namespace rekey::jobs {

struct JobColumn {
  std::string name;
  crypto::CodecKind codec = crypto::CodecKind::kTink;
  // The stored form (crypto/text_encoding.h; rekey.targets.encoding, json_path): kBytea, or the
  // text encoding of the value, held by the column itself (json_path empty) or by the string at
  // json_path of its jsonb document.
  crypto::TextEncoding encoding = crypto::TextEncoding::kBytea;
  std::vector<std::string> json_path = {};
  // A lockbox column: the names its attribute keys derive from (docs/FORMAT.md, "lockbox";
  // rekey.targets.lockbox_key_table/_attribute), Lockbox's defaults filled in (the job's table,
  // the column's name); empty for other codecs.
  std::string lockbox_key_table = {};
  std::string lockbox_key_attribute = {};
};

// A job as stored. Identifiers are the catalog's names (unquoted); quote them before use.
struct JobDefinition {
  int64_t job_id = 0;
  std::string name;
  std::string schema_name;
  std::string table_name;
  std::string pk_column;  // the key's first column
  // format_type() of the key's and the scope's columns as the catalog has them now (not as
  // rekey.jobs records them: LoadJob refuses a job whose record disagrees), safe to paste after
  // "::", e.g. "bigint", "uuid", "text".
  std::string pk_type;  // the key's first column's
  // The whole key, in key order (rekey.jobs.key_columns), and its columns' types as pk_type.
  // Empty: the key is pk_column alone.
  std::vector<std::string> key_columns;
  std::vector<std::string> key_types;
  // The key's text is docs/FORMAT.md's canonical form; false for a job created before migration
  // 0020, whose key text stays the column's ::text (jobs/key_shape.h).
  bool canonical_key_text = true;
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
  // An aws-kms job (every column's codec is kAwsKms; migrations/0023_aws_kms_codec.sql): the key
  // ARNs of the KMS key its blobs are under and of the one they move to, and the constant
  // encryption context the application bound ("" for none; a JSON object of strings).
  std::optional<std::string> aws_kms_key_arn;
  std::string aws_kms_source_key_arn;
  std::string aws_kms_context;

  std::string QualifiedTable() const;  // "schema"."table", quoted
  KeyShape Key() const;                // the key as SQL pieces (jobs/key_shape.h)
};

// Loads job `job_id`. Throws StateError if there is no such job; the database raises (SQLSTATE
// 55000) if the job's recorded key or scope type is not the catalog's (rekey.checked_column_type).
JobDefinition LoadJob(pqxx::transaction_base& txn, int64_t job_id);

// True iff job `job_id` exists.
bool JobExists(pqxx::transaction_base& txn, int64_t job_id);

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

// One stage of a job as planned (rekey.stage_status).
struct PlannedStage {
  int stage_no = 0;
  std::string kind;     // rollout, sweep or rollback
  std::string percent;  // the cumulative percentage, as the database writes it ("25", "12.5")
  int64_t rows = 0;     // rows planned
  int64_t batches = 0;
  bool promotes = false;  // opening it makes the job's target keys primary
};

// The stages of job `job_id` in order, as planned so far; empty if there is no such job.
std::vector<PlannedStage> ReadStagePlan(pqxx::transaction_base& txn, int64_t job_id);

}  // namespace rekey::jobs
