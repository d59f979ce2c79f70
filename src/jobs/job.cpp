#include "jobs/job.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "db/connection.h"
#include "db/identifiers.h"
#include "db/named_query.h"
#include "jobs/rollout_planner.h"

namespace rekey::jobs {

std::string JobDefinition::QualifiedTable() const {
  return db::QuoteIdent(schema_name) + "." + db::QuoteIdent(table_name);
}

KeyShape JobDefinition::Key() const {
  if (key_columns.empty()) return KeyShape({pk_column}, {pk_type}, canonical_key_text);
  return KeyShape(key_columns, key_types, canonical_key_text);
}

JobDefinition LoadJob(pqxx::transaction_base& txn, int64_t job_id) {
  pqxx::result r;
  try {
    r = txn.exec_params(db::Query("jobs/job.load"), job_id);
  } catch (const pqxx::sql_error& e) {
    // rekey.checked_column_type refuses a recorded type the catalog disagrees with (rekey.jobs
    // edited, or the column altered since): nothing of the job may run until a person looks, and
    // no retry helps, so it is a definition problem (exit 2), not a failure of some batch.
    if (e.sqlstate() != "55000") throw;
    throw ConfigError("cannot load job " + std::to_string(job_id) + ": " + db::PrimaryMessage(e));
  }
  if (r.empty()) {
    throw StateError("unknown job " + std::to_string(job_id) +
                     "; SELECT * FROM rekey.progress lists the jobs");
  }
  const pqxx::row row = r[0];
  JobDefinition job;
  job.job_id = row["job_id"].as<int64_t>();
  job.name = row["name"].as<std::string>();
  job.schema_name = row["schema_name"].as<std::string>();
  job.table_name = row["table_name"].as<std::string>();
  job.pk_column = row["pk_column"].as<std::string>();
  job.pk_type = row["pk_type"].as<std::string>();
  for (const auto& c : nlohmann::json::parse(row["key_columns"].as<std::string>())) {
    job.key_columns.push_back(c.get<std::string>());
  }
  for (const auto& t : nlohmann::json::parse(row["key_types"].as<std::string>())) {
    job.key_types.push_back(t.get<std::string>());
  }
  job.canonical_key_text = row["key_text_form"].as<std::string>() == "canonical";
  if (!row["key_id_column"].is_null()) job.key_id_column = row["key_id_column"].as<std::string>();
  if (!row["ad_template"].is_null()) {
    job.associated_data =
        crypto::AssociatedDataTemplate::Compile(row["ad_template"].as<std::string>());
  }
  if (!row["scope_column"].is_null()) job.scope_column = row["scope_column"].as<std::string>();
  if (!row["scope_value"].is_null()) job.scope_value = row["scope_value"].as<std::string>();
  job.scope_type = row["scope_type"].as<std::string>();
  job.batch_size = row["batch_size"].as<int>();
  job.per_row_audit = row["per_row_audit"].as<bool>();
  job.state = row["state"].as<std::string>();
  job.current_stage = row["current_stage"].as<int>();
  if (!row["transit_key_ref"].is_null()) {
    job.transit_key_ref = row["transit_key_ref"].as<std::string>();
    job.transit_min_version = row["transit_min_version"].as<int>();
  }
  if (!row["aws_kms_key_arn"].is_null()) {
    job.aws_kms_key_arn = row["aws_kms_key_arn"].as<std::string>();
    job.aws_kms_source_key_arn = row["aws_kms_source_key_arn"].as<std::string>();
    job.aws_kms_context =
        row["aws_kms_context"].is_null() ? "" : row["aws_kms_context"].as<std::string>();
  }

  for (const auto& c : txn.exec_params(db::Query("jobs/job.columns"), job_id)) {
    const std::string codec_name = c["codec"].as<std::string>();
    auto codec = crypto::ParseCodecKind(codec_name);
    if (!codec)
      throw StateError("job " + std::to_string(job_id) + " uses unknown codec " + codec_name);
    JobColumn column;
    column.name = c["column_name"].as<std::string>();
    column.codec = *codec;
    const auto encoding = crypto::ParseTextEncoding(c["encoding"].as<std::string>());
    if (!encoding) {
      throw StateError("job " + std::to_string(job_id) + " uses unknown encoding " +
                       c["encoding"].as<std::string>());
    }
    column.encoding = *encoding;
    if (!c["json_path"].is_null()) {
      column.json_path =
          nlohmann::json::parse(c["json_path"].as<std::string>()).get<std::vector<std::string>>();
    }
    if (column.codec == crypto::CodecKind::kLockbox) {
      const pqxx::field table = c["lockbox_key_table"], attribute = c["lockbox_key_attribute"];
      column.lockbox_key_table = table.is_null() ? job.table_name : table.as<std::string>();
      column.lockbox_key_attribute =
          attribute.is_null() ? column.name : attribute.as<std::string>();
    }
    job.columns.push_back(std::move(column));
  }
  for (const auto& k : txn.exec_params(db::Query("jobs/job.keys"), job_id)) {
    job.key_map[k["source_key_id"].as<uint32_t>()] = k["target_key_id"].as<uint32_t>();
  }
  return job;
}

bool JobExists(pqxx::transaction_base& txn, int64_t job_id) {
  return txn.exec_params1(db::Query("jobs/job.exists"), job_id)["job_exists"].as<bool>();
}

std::vector<PlannedStage> ReadStagePlan(pqxx::transaction_base& txn, int64_t job_id) {
  std::vector<PlannedStage> stages;
  for (const auto& row : txn.exec_params(db::Query("jobs/job.stage_plan"), job_id)) {
    stages.push_back({row["stage_no"].as<int>(), row["kind"].as<std::string>(),
                      row["percent"].as<std::string>(), row["rows_planned"].as<int64_t>(),
                      row["batches"].as<int64_t>(), row["promotes"].as<bool>()});
  }
  return stages;
}

namespace {

const char* OptionalText(const std::optional<std::string>& v) {
  return v ? v->c_str() : nullptr;
}

// The parameters every create function takes, as text, held while the statement runs.
struct CommonParams {
  explicit CommonParams(const JobSpec& spec)
      : columns(db::TextArrayLiteral(spec.columns)),
        batch_size(std::to_string(spec.batch_size)),
        attempts(std::to_string(spec.max_attempts)),
        stages(StagePlanLiteral(spec.stages)),
        threshold(std::to_string(spec.error_threshold)),
        sample(std::to_string(spec.gate_sample_size)) {}
  std::string columns, batch_size, attempts, stages, threshold, sample;
};

int64_t CreateTransitJob(pqxx::transaction_base& txn, const JobSpec& spec) {
  if (!spec.transit_key_ref || !spec.transit_min_version) {
    throw ConfigError(
        "a vault-transit job needs its Transit key: --transit-key <mount>/keys/<name>");
  }
  for (const std::string& codec : spec.codecs) {
    if (codec != "vault-transit") {
      throw ConfigError(
          "a job rotates either Transit ciphertexts or rekey's own codecs, not both: give "
          "vault-transit for every column");
    }
  }
  if (!spec.key_map.empty() || spec.key_id_column || spec.promote_at_stage || spec.per_row_audit ||
      spec.not_governed || spec.cross_scope || spec.encoding || spec.json_path) {
    throw ConfigError(
        "a vault-transit job rewraps to the Transit key's latest version: --map, "
        "--key-id-column, --not-governed, --cross-scope, --promote-at-stage, --per-row-audit, "
        "--encoding and --json-path do not apply");
  }
  if (spec.ad_template) crypto::AssociatedDataTemplate::Compile(*spec.ad_template);
  const auto opt = OptionalText;
  const CommonParams p(spec);
  const std::string version = std::to_string(*spec.transit_min_version);
  std::vector<const char*> params = {
      spec.table.c_str(),    p.columns.c_str(),     spec.transit_key_ref->c_str(),
      version.c_str(),       opt(spec.ad_template), opt(spec.scope_column),
      opt(spec.scope_value), p.batch_size.c_str(),  opt(spec.name),
      p.attempts.c_str(),    p.stages.c_str(),      p.threshold.c_str(),
      opt(spec.observe),     p.sample.c_str()};
  return txn
      .exec_params1(db::Query("jobs/job.create_transit_job"),
                    pqxx::prepare::make_dynamic_params(params))["job_id"]
      .as<int64_t>();
}

int64_t CreateAwsKmsJob(pqxx::transaction_base& txn, const JobSpec& spec) {
  if (!spec.aws_kms_key_arn || !spec.aws_kms_source_key_arn) {
    throw ConfigError(
        "an aws-kms job needs its KMS keys: --source-kms-key (the key the values are under) and "
        "--kms-key (the key they move to)");
  }
  for (const std::string& codec : spec.codecs) {
    if (codec != "aws-kms") {
      throw ConfigError(
          "a job rotates either AWS KMS ciphertext blobs or other codecs, not both: give aws-kms "
          "for every column");
    }
  }
  if (spec.ad_template) {
    throw ConfigError(
        "an aws-kms job takes one constant encryption context (--encryption-context "
        "'{\"k\":\"v\"}'); per-row contexts (--ad-template) are not supported");
  }
  if (!spec.key_map.empty() || spec.key_id_column || spec.promote_at_stage || spec.not_governed ||
      spec.cross_scope || spec.json_path || spec.transit_key_ref) {
    throw ConfigError(
        "an aws-kms job re-encrypts inside KMS to --kms-key: --map, --key-id-column, "
        "--not-governed, --cross-scope, --promote-at-stage, --json-path and --transit-key do not "
        "apply");
  }
  const auto opt = OptionalText;
  const CommonParams p(spec);
  const std::vector<const char*> params = {spec.table.c_str(),
                                           p.columns.c_str(),
                                           spec.aws_kms_source_key_arn->c_str(),
                                           spec.aws_kms_key_arn->c_str(),
                                           opt(spec.aws_kms_context),
                                           opt(spec.encoding),
                                           opt(spec.scope_column),
                                           opt(spec.scope_value),
                                           p.batch_size.c_str(),
                                           opt(spec.name),
                                           spec.per_row_audit ? "true" : "false",
                                           p.attempts.c_str(),
                                           p.stages.c_str(),
                                           p.threshold.c_str(),
                                           opt(spec.observe),
                                           p.sample.c_str()};
  return txn
      .exec_params1(db::Query("jobs/job.create_aws_kms_job"),
                    pqxx::prepare::make_dynamic_params(params))["job_id"]
      .as<int64_t>();
}

int64_t CreateDataKeyJob(pqxx::transaction_base& txn, const JobSpec& spec) {
  nlohmann::json key_map = nlohmann::json::object();
  for (const auto& [from, to] : spec.key_map) key_map[std::to_string(from)] = to;
  if (spec.ad_template)
    crypto::AssociatedDataTemplate::Compile(*spec.ad_template);  // early, precise error
  auto opt = [](const std::optional<std::string>& v) -> const char* {
    return v ? v->c_str() : nullptr;
  };
  std::string codecs = db::TextArrayLiteral(spec.codecs);
  const std::string not_governed =
      spec.not_governed ? db::TextArrayLiteral(*spec.not_governed) : std::string();
  const std::string json_path = spec.json_path ? db::TextArrayLiteral(*spec.json_path) : "";
  std::string promote = spec.promote_at_stage ? std::to_string(*spec.promote_at_stage) : "";
  std::vector<const char*> params = {spec.table.c_str(),
                                     nullptr,
                                     nullptr,
                                     spec.codecs.empty() ? nullptr : codecs.c_str(),
                                     opt(spec.key_id_column),
                                     opt(spec.ad_template),
                                     opt(spec.scope_column),
                                     opt(spec.scope_value)};
  const std::string columns = db::TextArrayLiteral(spec.columns);
  const std::string map_text = key_map.dump();
  const std::string batch_size = std::to_string(spec.batch_size);
  const std::string audit = spec.per_row_audit ? "true" : "false";
  const std::string attempts = std::to_string(spec.max_attempts);
  const std::string stages = StagePlanLiteral(spec.stages);
  const std::string threshold = std::to_string(spec.error_threshold);
  const std::string sample = std::to_string(spec.gate_sample_size);
  params[1] = columns.c_str();
  params[2] = map_text.c_str();
  params.insert(params.end(), {batch_size.c_str(), opt(spec.name), audit.c_str(), attempts.c_str(),
                               stages.c_str(), spec.promote_at_stage ? promote.c_str() : nullptr,
                               threshold.c_str(), opt(spec.observe), sample.c_str(),
                               spec.not_governed ? not_governed.c_str() : nullptr,
                               spec.cross_scope ? "true" : "false", opt(spec.encoding),
                               spec.json_path ? json_path.c_str() : nullptr});
  return txn
      .exec_params1(db::Query("jobs/job.create_job"),
                    pqxx::prepare::make_dynamic_params(params))["job_id"]
      .as<int64_t>();
}

}  // namespace

int64_t CreateJob(pqxx::transaction_base& txn, const JobSpec& spec, pqxx::connection* key_reader) {
  const bool transit = spec.transit_key_ref || std::find(spec.codecs.begin(), spec.codecs.end(),
                                                         "vault-transit") != spec.codecs.end();
  // A staged job's stages are planned here, not by the database (jobs/rollout_planner.h).
  const bool deferred = DeferRolloutPlanning(txn);
  // Every create in this transaction reads the key columns from this setting (rekey.job_key).
  txn.exec_params1(
      db::Query("jobs/job.request_key_columns"),
      spec.key_columns.empty() ? std::string() : db::TextArrayLiteral(spec.key_columns));
  const bool aws_kms = spec.aws_kms_key_arn || std::find(spec.codecs.begin(), spec.codecs.end(),
                                                         "aws-kms") != spec.codecs.end();
  const int64_t id = aws_kms   ? CreateAwsKmsJob(txn, spec)
                     : transit ? CreateTransitJob(txn, spec)
                               : CreateDataKeyJob(txn, spec);
  if (spec.lockbox_key_table || spec.lockbox_key_attribute) {
    txn.exec_params(db::Query("jobs/job.set_lockbox_key_names"), id, spec.lockbox_key_table,
                    spec.lockbox_key_attribute);
  }
  if (deferred) PlanRolloutInClient(txn, id, key_reader);
  return id;
}

}  // namespace rekey::jobs
