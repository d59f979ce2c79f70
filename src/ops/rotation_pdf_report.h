// The compliance report of a finished rotation as a PDF: `rekey rotation report R --format pdf
// --output F`.
//
// The PDF renders the rotation's JSON report (rotation_report.h) and says nothing it does not,
// except the chart of rows re-encrypted over time per job (the jobs' rotation.batch.completed
// audit rows): the rotation's identity and scope, the keys before and after with their KMS
// references, its jobs (target, columns, stages, outcome), every gate with its sample size,
// error rate and threshold and who approved it when, the one promotion, the gates' error rates
// against the threshold, quarantined values by reason, each job's reader readiness (or that it
// was not proven), the audit chain's head and its verification, and what the report does not
// prove. Figures are printed as the job PDF prints them (pdf_document.h), so pdftotext finds the
// JSON's figures; the shared parts are drawn by pdf_sections.h.
#pragma once

#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "ops/pdf_document.h"

namespace rekey::ops {

// Writes the PDF of `report` (AssembleRotationReport's JSON) and `progress` (its rows over time
// per job) to `out`. Throws ConfigError if cairo cannot draw or write it.
void WriteRotationPdfReport(const nlohmann::json& report,
                            const std::vector<pdf::ChartSeries>& progress, std::FILE* out);

}  // namespace rekey::ops
