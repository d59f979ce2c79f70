// The compliance report of one rotation (jobs/rotation.h: one key rotated across every column
// holding the scope's values): `rekey rotation report R [--format json|markdown|pdf]`.
//
// The JSON is {"rotation": its rekey.rotation_progress row, "promotion": the one promotion (when,
// by which database role, the key, whether it was primary at once) or null, "audit_chain": the
// chain's head and verification (ops/report_evidence.h), "jobs": each job's compliance report
// (compliance_report.h, reader readiness included)}. The Markdown and the PDF
// (rotation_pdf_report.h) render it and say nothing it does not, except the PDF's chart of rows
// over time per job, read from the jobs' own audit rows. Each job's report is stored in
// rekey.reports, as `rekey report J` stores it, unless the request says not to.
// Queries: src/ops/queries/rotation_report.sql.
#pragma once

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <cstdint>
#include <string>
#include <vector>

#include "ops/compliance_report.h"
#include "ops/pdf_document.h"

namespace rekey::ops {

struct RotationReportRequest {
  bool pdf = false;            // the chart is read, and only a finished rotation has a PDF
  bool store = true;           // each job's report recorded in rekey.reports
  nlohmann::json audit_chain;  // the report's "audit_chain"
};

struct AssembledRotationReport {
  nlohmann::json report;                   // as above; with store, each job's "stored_report"
  std::string markdown;                    // RenderRotationMarkdown(report)
  std::vector<pdf::ChartSeries> progress;  // rows over time per job, for the PDF only
};

// Why rotation `rotation` may not have a PDF: it is unfinished (its state and its unfinished
// jobs, with what to do); "" if it is finished.
std::string UnfinishedRotationForPdf(pqxx::transaction_base& txn, int64_t rotation);

// Builds the report of `rotation` in `txn`; the caller commits. Throws ConfigError for a rotation
// that does not exist, StateError if a PDF is asked of an unfinished one
// (UnfinishedRotationForPdf), and what AssembleReport throws for a job.
AssembledRotationReport AssembleRotationReport(pqxx::transaction_base& txn, int64_t rotation,
                                               const RotationReportRequest& request);

std::string RenderRotationMarkdown(const nlohmann::json& report);

}  // namespace rekey::ops
