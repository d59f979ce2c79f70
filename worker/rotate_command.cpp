// `rekey rotate --scope S (--to K | --new-key)`: one rotation across every column holding the
// scope's values; `rekey rotation status|rollback|report R` (the report as Markdown, JSON or PDF:
// ops/rotation_report.h), and the rotations section of
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
#include "ops/atomic_output.h"
#include "ops/report_evidence.h"
#include "ops/rotation_pdf_report.h"
#include "ops/rotation_report.h"
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

struct ReportFlags {
  std::string format = "markdown";
  std::string output;
  bool no_store = false;
};

// One report per rotation: the rotation's row, its promotion and the audit chain, then each
// job's compliance report (stored in rekey.reports as `rekey report J` stores it, unless
// no_store); a PDF only of a finished rotation (ops/rotation_report.h).
void Report(const GlobalOptions& global, int64_t rotation, const ReportFlags& flags) {
  if (flags.format == "pdf" && flags.output.empty()) {
    throw ConfigError("--format pdf needs --output FILE (a PDF is not written to a terminal)");
  }
  // Created first, so that an unwritable path is refused before anything is read or stored.
  std::optional<ops::AtomicOutputFile> file;
  if (!flags.output.empty()) file.emplace(flags.output);
  auto conn = OpenDatabase(global, "rekey-report");
  ops::RotationReportRequest request;
  request.pdf = flags.format == "pdf";
  request.store = !flags.no_store;
  request.audit_chain = ops::AuditChainEvidence(*conn);
  const ops::AssembledRotationReport assembled =
      db::Classified("building the report of rotation " + std::to_string(rotation), [&] {
        pqxx::work txn(*conn);
        ops::AssembledRotationReport r = ops::AssembleRotationReport(txn, rotation, request);
        txn.commit();
        return r;
      });
  std::FILE* out = file ? file->stream() : stdout;
  if (flags.format == "pdf") {
    ops::WriteRotationPdfReport(assembled.report, assembled.progress, out);
  } else {
    const std::string text =
        flags.format == "json" ? assembled.report.dump(2) + "\n" : assembled.markdown;
    std::fwrite(text.data(), 1, text.size(), out);
  }
  if (file) {
    file->Commit();
    std::fprintf(stderr, "report written to %s\n", flags.output.c_str());
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
  auto report_flags = std::make_shared<ReportFlags>();
  CLI::App* report = rotation->add_subcommand(
      "report", "The compliance report of every job of the rotation, under one heading");
  report->add_option("rotation", *id, "Rotation id")->required();
  report->add_flag("--json", *json, "JSON: {rotation, promotion, audit_chain, jobs: [...]}");
  report
      ->add_option("--format", report_flags->format,
                   "json, markdown or pdf (pdf needs --output; only of a finished rotation)")
      ->capture_default_str()
      ->check(CLI::IsMember({"json", "markdown", "pdf"}));
  report->add_option("--output", report_flags->output,
                     "Write to this file (whole or not at all) instead of stdout");
  report->add_flag("--no-store", report_flags->no_store,
                   "Do not record the reports in rekey.reports");
  report->callback([&global, id, json, report_flags] {
    ReportFlags chosen = *report_flags;
    if (*json) chosen.format = "json";
    Report(global, *id, chosen);
  });
}

}  // namespace rekey::cli
