// `rekey rotate --scope S (--to K | --new-key)`: one rotation across every column holding the
// scope's values; `rekey rotation status|rollback|report R`, and the rotations section of
// `rekey status`. The rules are the database's (sql/schema/55_rotations.sql, jobs/rotation.h);
// the new key and the rotation are created by rotation::StartRotation.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <optional>
#include <string>

#include "cli_support.h"
#include "commands.h"
#include "common/error.h"
#include "db/connection.h"
#include "jobs/job_spec.h"
#include "jobs/rotation.h"
#include "kms/kms_registry.h"
#include "ops/compliance_report.h"
#include "ops/report_evidence.h"
#include "rotation/rotation_scheduler.h"

namespace rekey::cli {
namespace {

struct RotateFlags {
  std::string scope;
  uint32_t to_key = 0;
  bool new_key = false;
  std::string stages = "1,25,50,75,100";
  std::string observe;
  int batch_size = 1000;
  std::string name;
  std::vector<std::string> register_columns;
  bool json = false;
};

std::string Text(const nlohmann::json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

nlohmann::json ReadProgress(pqxx::connection& conn, std::optional<int64_t> rotation) {
  return db::Classified("cannot read rekey.rotation_progress", [&] {
    pqxx::read_transaction txn(conn);
    return jobs::ReadRotationProgress(txn, rotation);
  });
}

void PrintRotation(const nlohmann::json& r) {
  std::printf("rotation %s %-12s scope %s keys %s->%s  stages %s\n", Text(r["rotation_id"]).c_str(),
              Text(r["state"]).c_str(), Text(r["scope"]).c_str(), Text(r["from_keys"]).c_str(),
              Text(r["to_key"]).c_str(), Text(r["stage_plan"]).c_str());
  std::printf("  %s targets (jobs %s): %s\n", Text(r["targets"]).c_str(), Text(r["jobs"]).c_str(),
              Text(r["tables"]).c_str());
  std::printf("  rows %s/%s (%s%%)  slowest stage %s  promoted %s", Text(r["rows_done"]).c_str(),
              Text(r["rows_total"]).c_str(), Text(r["percent"]).c_str(),
              Text(r["slowest_stage"]).c_str(), Text(r["promoted_at"]).c_str());
  if (!r["waiting"].is_null()) {
    std::printf("  jobs %s wait for the others to reach the promotion stage",
                Text(r["waiting"]).c_str());
  }
  std::printf("\n");
}

void Rotate(const GlobalOptions& global, const RotateFlags& flags) {
  if (flags.new_key == (flags.to_key != 0)) {
    throw ConfigError("give the new key: --to KEY (an enabled key of the scope) or --new-key");
  }
  rotation::RotateRequest request;
  request.new_key = flags.new_key;
  request.spec.scope = flags.scope;
  request.spec.to_key = flags.to_key;
  request.spec.stages = jobs::StagePlanLiteral(flags.stages);
  if (!flags.observe.empty()) request.spec.observe = flags.observe;
  request.spec.batch_size = flags.batch_size;
  if (!flags.name.empty()) request.spec.name = flags.name;
  request.spec.register_columns = flags.register_columns;
  kms::KmsRegistry registry;
  auto conn = OpenDatabase(global, "rekey-rotate");
  const jobs::Rotation created =
      db::Classified("cannot create the rotation of scope " + flags.scope, [&] {
        pqxx::work txn(*conn);
        jobs::Rotation r = rotation::StartRotation(txn, registry.Resolver(), request);
        txn.commit();
        return r;
      });
  const nlohmann::json progress = ReadProgress(*conn, created.rotation_id);
  if (flags.json) {
    std::printf("%s\n", progress.at(0).dump(2).c_str());
    return;
  }
  PrintRotation(progress.at(0));
  std::printf(
      "run the jobs with rekey work --all; the new key becomes primary once every job "
      "reached the promotion stage\n");
}

void Status(const GlobalOptions& global, std::optional<int64_t> rotation, bool json) {
  auto conn = OpenDatabase(global, "rekey-rotation");
  const nlohmann::json progress = ReadProgress(*conn, rotation);
  if (rotation && progress.empty()) {
    throw ConfigError("rotation " + std::to_string(*rotation) +
                      " does not exist; rekey rotation status lists them");
  }
  if (json) {
    std::printf("%s\n", progress.dump(2).c_str());
    return;
  }
  if (progress.empty()) std::printf("no rotations\n");
  for (const auto& r : progress) PrintRotation(r);
}

void Rollback(const GlobalOptions& global, int64_t rotation, const std::string& reason) {
  auto conn = OpenDatabase(global, "rekey-rotation");
  const std::string message =
      db::Classified("cannot roll back rotation " + std::to_string(rotation), [&] {
        pqxx::work txn(*conn);
        std::string m = jobs::RollbackRotation(txn, rotation, reason);
        txn.commit();
        return m;
      });
  std::printf("%s\n", message.c_str());
}

// One report per rotation: the rotation's row, then each job's compliance report (stored in
// rekey.reports as `rekey report J` stores it, unless no_store).
void Report(const GlobalOptions& global, int64_t rotation, bool json, bool no_store) {
  auto conn = OpenDatabase(global, "rekey-report");
  const nlohmann::json progress = ReadProgress(*conn, rotation);
  if (progress.empty()) {
    throw ConfigError("rotation " + std::to_string(rotation) +
                      " does not exist; rekey rotation status lists them");
  }
  ops::ReportRequest request;
  request.store = !no_store;
  request.audit_chain = ops::AuditChainEvidence(*conn);
  nlohmann::json reports = nlohmann::json::array();
  std::string markdown = "# Key rotation report: rotation " + std::to_string(rotation) + "\n\n" +
                         "| Scope | Keys | State | Targets | Rows | Promoted |\n" +
                         "| --- | --- | --- | --- | --- | --- |\n";
  const nlohmann::json& r = progress.at(0);
  markdown += "| " + Text(r["scope"]) + " | " + Text(r["from_keys"]) + " -> " + Text(r["to_key"]) +
              " | **" + Text(r["state"]) + "** | " + Text(r["tables"]) + " | " +
              Text(r["rows_done"]) + "/" + Text(r["rows_total"]) + " | " + Text(r["promoted_at"]) +
              " |\n";
  db::Classified("building the report of rotation " + std::to_string(rotation), [&] {
    pqxx::work txn(*conn);
    for (int64_t job : jobs::RotationJobs(txn, rotation)) {
      ops::AssembledReport assembled = ops::AssembleReport(txn, job, request);
      reports.push_back(assembled.report);
      markdown += "\n" + assembled.markdown;
    }
    txn.commit();
  });
  if (json) {
    std::printf("%s\n", nlohmann::json({{"rotation", r}, {"jobs", reports}}).dump(2).c_str());
  } else {
    std::fwrite(markdown.data(), 1, markdown.size(), stdout);
  }
}

}  // namespace

void PrintRotationsSection(pqxx::connection& conn) {
  const nlohmann::json progress = ReadProgress(conn, std::nullopt);
  for (const auto& r : progress) {
    if (r["state"] == "completed" || r["state"] == "rolled_back" || r["state"] == "cancelled") {
      continue;
    }
    PrintRotation(r);
  }
}

void AddRotateCommand(CLI::App& app, GlobalOptions& global) {
  auto flags = std::make_shared<RotateFlags>();
  CLI::App* rotate = app.add_subcommand(
      "rotate",
      "One rotation of a key scope across every column holding its values: a job per table and "
      "key-id column, one promotion, one rollback");
  rotate->add_option("--scope", flags->scope, "Keyring scope")->required();
  rotate->add_option("--to", flags->to_key, "The new key: an enabled key of the scope");
  rotate->add_flag("--new-key", flags->new_key,
                   "Generate the new key (through the KMS provider of the scope's primary)");
  rotate->add_option("--stages", flags->stages, "Cumulative stage percentages, ending at 100")
      ->capture_default_str();
  rotate->add_option("--observe", flags->observe,
                     "Advance on its own this long after a passed gate, e.g. 0s, 10min "
                     "(default: wait for `rekey job advance`)");
  rotate->add_option("--batch-size", flags->batch_size, "Rows per batch")->capture_default_str();
  rotate->add_option("--name", flags->name, "A label for the rotation and its jobs");
  rotate->add_option("--register", flags->register_columns,
                     "A column the key census found (schema.table.column, Tink values) to "
                     "register and rotate too; repeatable");
  rotate->add_flag("--json", flags->json, "The rotation's progress row as JSON");
  rotate->callback([&global, flags] { Rotate(global, *flags); });

  CLI::App* rotation = app.add_subcommand("rotation", "Inspect or roll back a rotation");
  rotation->require_subcommand(1);
  auto id = std::make_shared<int64_t>(0);
  auto json = std::make_shared<bool>(false);
  CLI::App* status =
      rotation->add_subcommand("status", "Progress of the rotations (rekey.rotation_progress)");
  status->add_option("rotation", *id, "Only this rotation");
  status->add_flag("--json", *json, "JSON output");
  status->callback([&global, id, json] {
    Status(global, *id > 0 ? std::optional<int64_t>(*id) : std::nullopt, *json);
  });
  auto reason = std::make_shared<std::string>();
  CLI::App* rollback = rotation->add_subcommand(
      "rollback", "Roll every job of the rotation back to the old keys, as one");
  rollback->add_option("rotation", *id, "Rotation id")->required();
  rollback->add_option("--reason", *reason, "Why (kept in the audit log)");
  rollback->callback([&global, id, reason] { Rollback(global, *id, *reason); });
  auto no_store = std::make_shared<bool>(false);
  CLI::App* report = rotation->add_subcommand(
      "report", "The compliance report of every job of the rotation, under one heading");
  report->add_option("rotation", *id, "Rotation id")->required();
  report->add_flag("--json", *json, "JSON: {rotation, jobs: [each job's report]}");
  report->add_flag("--no-store", *no_store, "Do not record the reports in rekey.reports");
  report->callback([&global, id, json, no_store] { Report(global, *id, *json, *no_store); });
}

}  // namespace rekey::cli
