// The compliance report of a finished job as a PDF, for auditors who would rather look than read:
// `rekey report J --format pdf --output F`.
//
// The PDF renders the JSON report (compliance_report.h) and says nothing the JSON does not,
// except the two charts, whose points come from the job's own records: rows re-encrypted over
// time by stage (the rotation.batch.completed audit rows) and each gate's error rate against the
// job's threshold (rekey.gates, already in the JSON). Every figure of the JSON report that the
// PDF shows is printed as text (pdftotext finds it): counts as plain integers, rates as percent
// with three decimals (FormatRate), timestamps as the JSON holds them, to the second.
//
// Drawn by pdf_document.h (cairo's PDF surface, A4 portrait, as many pages as the content needs),
// which also holds FormatRate and ProgressPoint.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ops/pdf_document.h"

namespace rekey::ops {

// Cumulative rows re-encrypted in one stage, at seconds after the job started.
struct StageProgress {
  int stage_no = 0;
  std::vector<ProgressPoint> points;  // in time order; rows never decrease
};

// Reads the progress curve of each stage of `job` from its rotation.batch.completed audit rows
// (one per completed batch run), thinned to at most about 400 points per stage, however many
// batches ran.
std::vector<StageProgress> ReadStageProgress(pqxx::transaction_base& txn, int64_t job);

// Writes the PDF of `report` (rekey.job_report's JSON plus the fields `rekey report` adds:
// "audit_chain", and "verification" when it ran) and `progress` to `out`. Throws ConfigError if
// cairo cannot draw or write it.
void WritePdfReport(const nlohmann::json& report, const std::vector<StageProgress>& progress,
                    std::FILE* out);

}  // namespace rekey::ops
