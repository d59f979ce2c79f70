// The parts of rekey's PDF reports that a job's report (pdf_report.h) and a rotation's
// (rotation_pdf_report.h) draw alike from rekey.job_report's JSON, so that the same evidence
// reads the same in both: the keys before and after, the verification gates, the quarantined
// values by reason, the audit hash chain, the decisions, and what no report proves.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "ops/pdf_document.h"

namespace rekey::ops::pdf {

// The table of keys before and after of rekey.job_report's "keys" entries (one pair each), KMS
// references in full; a key already listed (by side and key id) is listed once.
void KeysTable(Document& doc, const std::vector<const nlohmann::json*>& keys);

// The gates of one or more jobs, gathered for GateTable and Document::GateChart.
struct Gates {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::pair<std::string, double>> bars;  // label, error rate
  std::vector<bool> passed;
};
// Adds the gates of rekey.job_report's "stages", each labelled `prefix` + its stage's label.
void AddGates(const nlohmann::json& stages, const std::string& prefix, Gates* gates);
// The gate table: result, sample (values checked), decrypt errors, quarantined, error rate,
// threshold, audit rows, and who approved it and when.
void GateTable(Document& doc, const Gates& gates);
// What a gate is, for the reader, above the gate table.
void GateExplanation(Document& doc);

// The two charts, as sections `first` and `first` + 1: rows re-encrypted over time (one line per
// series, e.g. "by stage" or "by job", since `origin`, from the audit rows of `whose`, e.g.
// "the job's"; `empty` is said if no batch completed) and each gate's error rate against
// `threshold`.
void ChartSections(Document& doc, int first, const std::string& by,
                   const std::vector<ChartSeries>& series, const std::string& origin,
                   const std::string& whose, const std::string& empty, const Gates& gates,
                   double threshold);

// Quarantined values by reason (rekey.job_report's quarantine.by_error_class, or a sum of them)
// with what each reason means, or that none was quarantined.
void QuarantineTable(Document& doc, const nlohmann::json& by_class);

// The audit hash chain's head and verification (`rekey report`'s "audit_chain") as facts, and
// how to keep the head.
std::vector<std::pair<std::string, std::string>> AuditChainFacts(const nlohmann::json& chain);
void AuditHeadAdvice(Document& doc, const nlohmann::json& chain);

// rekey.job_report's "approvals" entries as rows: at, action, actor, outcome, details; `job`
// (if not empty) is put first, and then DecisionsTable draws a job column.
void AddDecisions(const nlohmann::json& approvals, const std::string& job,
                  std::vector<std::vector<std::string>>* rows);
void DecisionsTable(Document& doc, const std::vector<std::vector<std::string>>& rows,
                    bool with_job);

// The limits of the evidence that hold for every report: the audit chain's newest rows, values
// outside the targets, the old key's material.
void CommonLimits(Document& doc);

}  // namespace rekey::ops::pdf
