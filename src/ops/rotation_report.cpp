#include "ops/rotation_report.h"

#include <algorithm>
#include <map>

#include "common/error.h"
#include "db/named_query.h"
#include "jobs/rotation.h"

namespace rekey::ops {
namespace {

using nlohmann::json;

std::string Text(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

json ReadPromotion(pqxx::transaction_base& txn, int64_t rotation) {
  const pqxx::result rows = txn.exec_params(db::Query("ops/rotation_report.promotion"), rotation);
  if (rows.empty()) return nullptr;
  const pqxx::row& row = rows[0];
  return {{"at", json::parse(row["at"].as<std::string>())},
          {"by", row["actor"].as<std::string>()},
          {"key_id", row["key_id"].is_null() ? json() : json(row["key_id"].as<int64_t>())},
          {"key_primary_now",
           row["key_primary_now"].is_null() ? json() : json(row["key_primary_now"].as<bool>())}};
}

// One series per job, cumulative, labelled by the job and its target.
std::vector<pdf::ChartSeries> ReadJobProgress(pqxx::transaction_base& txn, int64_t rotation,
                                              const json& jobs) {
  std::map<int64_t, std::string> labels;
  for (const auto& j : jobs) {
    labels[j["job"]["job_id"].get<int64_t>()] =
        "job " + Text(j["job"]["job_id"]) + " " + Text(j["job"]["target"]);
  }
  std::vector<pdf::ChartSeries> out;
  int64_t current = 0;
  for (const auto& row : txn.exec_params(db::Query("ops/rotation_report.job_progress"), rotation)) {
    const int64_t job = row["job_id"].as<int64_t>();
    if (out.empty() || job != current) {
      out.push_back({labels.count(job) ? labels[job] : "job " + std::to_string(job), {}});
      current = job;
    }
    const int64_t before = out.back().points.empty() ? 0 : out.back().points.back().rows;
    out.back().points.push_back(
        {std::max(0.0, row["seconds"].as<double>()), before + row["rows"].as<int64_t>()});
  }
  return out;
}

}  // namespace

std::string UnfinishedRotationForPdf(pqxx::transaction_base& txn, int64_t rotation) {
  const pqxx::result rows = txn.exec_params(db::Query("ops/rotation_report.unfinished"), rotation);
  if (rows.empty() || !rows[0]["unfinished"].as<bool>()) return "";
  const std::string jobs = rows[0]["jobs"].as<std::string>();
  return "rotation " + std::to_string(rotation) + " is " + rows[0]["state"].as<std::string>() +
         (jobs.empty() ? "" : ", jobs not finished: " + jobs) +
         "; a PDF report is the evidence of a completed, rolled-back or cancelled rotation: "
         "finish it (rekey work --all, rekey job advance) or use --format json for its progress";
}

AssembledRotationReport AssembleRotationReport(pqxx::transaction_base& txn, int64_t rotation,
                                               const RotationReportRequest& request) {
  const json progress = jobs::ReadRotationProgress(txn, rotation);
  if (progress.empty()) {
    throw ConfigError("rotation " + std::to_string(rotation) +
                      " does not exist; rekey rotation status lists them");
  }
  if (request.pdf) {
    const std::string unfinished = UnfinishedRotationForPdf(txn, rotation);
    if (!unfinished.empty()) throw StateError(unfinished);
  }
  AssembledRotationReport out;
  out.report = {{"rotation", progress.at(0)},
                {"promotion", ReadPromotion(txn, rotation)},
                {"audit_chain", request.audit_chain},
                {"jobs", json::array()}};
  ReportRequest job_request;
  job_request.store = request.store;
  job_request.audit_chain = request.audit_chain;
  for (int64_t job : jobs::RotationJobs(txn, rotation)) {
    AssembledReport assembled = AssembleReport(txn, job, job_request);
    if (request.store) {
      assembled.report["stored_report"] = {{"report_id", assembled.stored.report_id},
                                           {"sha256", assembled.stored.sha256}};
    }
    out.report["jobs"].push_back(std::move(assembled.report));
  }
  if (request.pdf) out.progress = ReadJobProgress(txn, rotation, out.report["jobs"]);
  out.markdown = RenderRotationMarkdown(out.report);
  return out;
}

std::string RenderRotationMarkdown(const json& report) {
  const json& r = report["rotation"];
  std::string markdown = "# Key rotation report: rotation " + Text(r["rotation_id"]) + "\n\n" +
                         "| Scope | Keys | State | Targets | Rows | Promoted |\n" +
                         "| --- | --- | --- | --- | --- | --- |\n";
  markdown += "| " + Text(r["scope"]) + " | " + Text(r["from_keys"]) + " -> " + Text(r["to_key"]) +
              " | **" + Text(r["state"]) + "** | " + Text(r["tables"]) + " | " +
              Text(r["rows_done"]) + "/" + Text(r["rows_total"]) + " | " + Text(r["promoted_at"]) +
              " |\n";
  const json& promotion = report["promotion"];
  if (promotion.is_object()) {
    markdown += "\nKey " + Text(promotion["key_id"]) + " was promoted once, at " +
                Text(promotion["at"]) + " by " + Text(promotion["by"]) +
                ", when the last of the rotation's jobs reached the promotion stage.\n";
  }
  for (const auto& job : report["jobs"]) {
    json shown = job;
    shown.erase("stored_report");
    markdown += "\n" + RenderReportMarkdown(shown);
  }
  return markdown;
}

}  // namespace rekey::ops
