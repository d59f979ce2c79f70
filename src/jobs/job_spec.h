// What `rekey job create` asks for, and the parsers of its flags' small grammars. Pure: nothing
// here touches the database (the fuzz targets link this file alone, tests/fuzz/CMakeLists.txt);
// rekey.create_job validates the whole definition (jobs/job.h).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rekey::jobs {

// What `rekey job create` collects from its flags; validated by rekey.create_job in the database.
struct JobSpec {
  std::string table;                     // schema.table
  std::vector<std::string> columns;      // ciphertext columns
  std::vector<std::string> codecs;       // one per column, or empty for all tink
  std::map<uint32_t, uint32_t> key_map;  // source -> target
  std::optional<std::string> key_id_column;
  // The key's columns, in the order of a unique, not-null index (--key-columns); empty = the
  // primary key (rekey.job_key).
  std::vector<std::string> key_columns;
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
  // aws-kms jobs (rekey.create_aws_kms_job): the key ARNs of the KMS keys the values are under and
  // move to, resolved by the caller with DescribeKey, and the constant encryption context (a JSON
  // object of strings) the application bound, if any.
  std::optional<std::string> aws_kms_source_key_arn;
  std::optional<std::string> aws_kms_key_arn;
  std::optional<std::string> aws_kms_context;
  // The values' stored form (rekey.job_value_form, docs/FORMAT.md): unset encoding = bytea (base64
  // with a JSON path, base64url for fernet); a JSON path = the values are strings in jsonb
  // documents at this path.
  std::optional<std::string> encoding;
  std::optional<std::vector<std::string>> json_path;
  // lockbox columns whose model sets key_table / key_attribute (docs/FORMAT.md, "lockbox"):
  // recorded on their targets (rekey.set_lockbox_key_names); unset = Lockbox's defaults, or what
  // the targets already record.
  std::optional<std::string> lockbox_key_table;
  std::optional<std::string> lockbox_key_attribute;
};

// Parses a JSON path as PostgreSQL writes a text[] of keys, "{payment,token}" (the braces
// optional; no quoting, so no key holds ',', '{', '}', '"' or '\'). Throws ConfigError on an empty
// path or key.
std::vector<std::string> ParseJsonPath(const std::string& text);

// Parses "1,25,50,75,100" into a PostgreSQL numeric[] literal "{1,25,50,75,100}". Throws
// ConfigError unless every item is a decimal number; the database checks the plan's shape.
std::string StagePlanLiteral(const std::string& text);

// Parses "1:2,3:7" (source:target pairs). Throws ConfigError on anything else.
std::map<uint32_t, uint32_t> ParseKeyMap(const std::string& text);

// Parses "column=value" for a scope. Throws ConfigError unless there is a '=' after a non-empty
// column name.
std::pair<std::string, std::string> ParseScope(const std::string& text);

}  // namespace rekey::jobs
