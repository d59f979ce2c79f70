#include "jobs/job.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "db/identifiers.h"
#include "jobs/rollout_planner.h"

namespace rekey::jobs {
namespace {

uint32_t ParseKeyId(const std::string& text, const std::string& whole) {
  if (text.empty() || text.size() > 10 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    throw ConfigError("bad key map '" + whole + "': key ids are unsigned integers, as in 1:2,3:7");
  }
  uint64_t v = std::stoull(text);
  if (v > 0xffffffffull) throw ConfigError("bad key map '" + whole + "': key ids are 32-bit");
  return static_cast<uint32_t>(v);
}

}  // namespace

std::string JobDefinition::QualifiedTable() const {
  return db::QuoteIdent(schema_name) + "." + db::QuoteIdent(table_name);
}

std::map<uint32_t, uint32_t> ParseKeyMap(const std::string& text) {
  std::map<uint32_t, uint32_t> map;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string pair =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t colon = pair.find(':');
    if (colon == std::string::npos) {
      throw ConfigError("bad key map '" + text + "': write source:target pairs, as in 1:2,3:7");
    }
    uint32_t from = ParseKeyId(pair.substr(0, colon), text);
    uint32_t to = ParseKeyId(pair.substr(colon + 1), text);
    if (!map.emplace(from, to).second) {
      throw ConfigError("bad key map '" + text + "': source key " + std::to_string(from) +
                        " appears twice");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return map;
}

std::string StagePlanLiteral(const std::string& text) {
  std::string literal = "{";
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    std::string item =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const bool numeric =
        !item.empty() && item.find_first_not_of("0123456789.") == std::string::npos &&
        item.find('.') == item.rfind('.') && item.front() != '.' && item.back() != '.';
    if (!numeric) {
      throw ConfigError("bad stage plan '" + text +
                        "': write increasing percentages ending at 100, as in 1,25,50,75,100");
    }
    if (literal.size() > 1) literal += ',';
    literal += item;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return literal + "}";
}

std::pair<std::string, std::string> ParseScope(const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("bad scope '" + text + "': write column=value, as in tenant_id=42");
  }
  return {text.substr(0, eq), text.substr(eq + 1)};
}

JobDefinition LoadJob(pqxx::transaction_base& txn, int64_t job_id) {
  pqxx::result r;
  try {
    r = txn.exec_params(
        "SELECT job_id, coalesce(name, ''), schema_name, table_name, pk_column,"
        " rekey.checked_column_type(schema_name, table_name, pk_column, pk_type), key_id_column,"
        " ad_template, scope_column, scope_value,"
        " CASE WHEN scope_column IS NULL THEN '' ELSE"
        " rekey.checked_column_type(schema_name, table_name, scope_column, scope_type) END,"
        " batch_size, per_row_audit, state, current_stage, transit_key_ref, transit_min_version"
        " FROM rekey.jobs WHERE job_id = $1",
        job_id);
  } catch (const pqxx::sql_error& e) {
    // rekey.checked_column_type refuses a recorded type the catalog disagrees with (rekey.jobs
    // edited, or the column altered since): nothing of the job may run until a person looks, and
    // no retry helps, so it is a definition problem (exit 2), not a failure of some batch.
    if (e.sqlstate() != "55000") throw;
    // The server's first line ("ERROR:  ..."), without its CONTEXT lines. (Not
    // db::PrimaryMessage: the fuzz targets link this file without src/db/connection.cpp.)
    std::string message = e.what();
    message = message.substr(0, message.find('\n'));
    if (message.rfind("ERROR:  ", 0) == 0) message.erase(0, 8);
    throw ConfigError("cannot load job " + std::to_string(job_id) + ": " + message);
  }
  if (r.empty()) {
    throw StateError("unknown job " + std::to_string(job_id) +
                     "; SELECT * FROM rekey.progress lists the jobs");
  }
  const pqxx::row row = r[0];
  JobDefinition job;
  job.job_id = row[0].as<int64_t>();
  job.name = row[1].as<std::string>();
  job.schema_name = row[2].as<std::string>();
  job.table_name = row[3].as<std::string>();
  job.pk_column = row[4].as<std::string>();
  job.pk_type = row[5].as<std::string>();
  if (!row[6].is_null()) job.key_id_column = row[6].as<std::string>();
  if (!row[7].is_null())
    job.associated_data = crypto::AssociatedDataTemplate::Compile(row[7].as<std::string>());
  if (!row[8].is_null()) job.scope_column = row[8].as<std::string>();
  if (!row[9].is_null()) job.scope_value = row[9].as<std::string>();
  job.scope_type = row[10].as<std::string>();
  job.batch_size = row[11].as<int>();
  job.per_row_audit = row[12].as<bool>();
  job.state = row[13].as<std::string>();
  job.current_stage = row[14].as<int>();
  if (!row[15].is_null()) {
    job.transit_key_ref = row[15].as<std::string>();
    job.transit_min_version = row[16].as<int>();
  }

  for (const auto& c : txn.exec_params(
           "SELECT t.column_name, t.codec FROM rekey.job_columns c"
           " JOIN rekey.targets t USING (target_id) WHERE c.job_id = $1 ORDER BY c.ordinal",
           job_id)) {
    auto codec = crypto::ParseCodecKind(c[1].as<std::string>());
    if (!codec)
      throw StateError("job " + std::to_string(job_id) + " uses unknown codec " +
                       c[1].as<std::string>());
    job.columns.push_back({c[0].as<std::string>(), *codec});
  }
  for (const auto& k : txn.exec_params(
           "SELECT source_key_id, target_key_id FROM rekey.job_keys WHERE job_id = $1", job_id)) {
    job.key_map[k[0].as<uint32_t>()] = k[1].as<uint32_t>();
  }
  return job;
}

namespace {

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
      spec.not_governed || spec.cross_scope) {
    throw ConfigError(
        "a vault-transit job rewraps to the Transit key's latest version: --map, "
        "--key-id-column, --not-governed, --cross-scope, --promote-at-stage and --per-row-audit "
        "do not apply");
  }
  if (spec.ad_template) crypto::AssociatedDataTemplate::Compile(*spec.ad_template);
  auto opt = [](const std::optional<std::string>& v) -> const char* {
    return v ? v->c_str() : nullptr;
  };
  const std::string columns = db::TextArrayLiteral(spec.columns);
  const std::string version = std::to_string(*spec.transit_min_version);
  const std::string batch_size = std::to_string(spec.batch_size);
  const std::string attempts = std::to_string(spec.max_attempts);
  const std::string stages = StagePlanLiteral(spec.stages);
  const std::string threshold = std::to_string(spec.error_threshold);
  const std::string sample = std::to_string(spec.gate_sample_size);
  std::vector<const char*> params = {
      spec.table.c_str(),    columns.c_str(),       spec.transit_key_ref->c_str(),
      version.c_str(),       opt(spec.ad_template), opt(spec.scope_column),
      opt(spec.scope_value), batch_size.c_str(),    opt(spec.name),
      attempts.c_str(),      stages.c_str(),        threshold.c_str(),
      opt(spec.observe),     sample.c_str()};
  pqxx::result r = txn.exec_params(
      "SELECT rekey.create_transit_job($1, $2::text[], $3, $4::integer, $5, $6, $7, $8::integer,"
      " $9, $10::integer, $11::numeric[], $12::numeric, $13::interval, $14::integer)",
      pqxx::prepare::make_dynamic_params(params));
  return r[0][0].as<int64_t>();
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
                               spec.cross_scope ? "true" : "false"});
  pqxx::result r = txn.exec_params(
      "SELECT rekey.create_job($1, $2::text[], $3::jsonb, $4::text[], $5, $6, $7, $8, $9::integer,"
      " $10, $11::boolean, $12::integer, $13::numeric[], $14::integer, $15::numeric, $16::interval,"
      " $17::integer, $18::text[], $19::boolean)",
      pqxx::prepare::make_dynamic_params(params));
  return r[0][0].as<int64_t>();
}

}  // namespace

int64_t CreateJob(pqxx::transaction_base& txn, const JobSpec& spec, pqxx::connection* key_reader) {
  const bool transit = spec.transit_key_ref || std::find(spec.codecs.begin(), spec.codecs.end(),
                                                         "vault-transit") != spec.codecs.end();
  // A staged job's stages are planned here, not by the database (jobs/rollout_planner.h).
  const bool deferred = DeferRolloutPlanning(txn);
  const int64_t id = transit ? CreateTransitJob(txn, spec) : CreateDataKeyJob(txn, spec);
  if (deferred) PlanRolloutInClient(txn, id, key_reader);
  return id;
}

}  // namespace rekey::jobs
