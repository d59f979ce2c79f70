// Compliance reports: the evidence of one rotation job, for SOC2/PCI auditors.
//
// The JSON is built by the database (rekey.job_report, migration 0005) from the job's own
// records: keys before and after (ids, scopes and KMS references, never material), the stage
// timeline with each gate's result, who approved it and when, row counts, the decrypt error
// rate, quarantined values by error class, an audit-completeness check (every completed batch
// has its rotation.batch.completed audit row) and durations. `rekey report` adds "audit_chain"
// (the chain's head and its verification) and, with --verify, "verification" (values per key and
// the plaintext digest) and "reader_readiness" (ops/readers.h: which application instances were
// checked before the job wrote, or that readiness was not proven) and "side_effects"
// (ops/report_evidence.h: the triggers' choice, what job create declared, dead tuples, HOT share
// and WAL per row, the --vacuum-after run). The Markdown and the PDF
// (pdf_report.h) are renderings of that JSON and say nothing the JSON does not.
//
// Stored reports (rekey.reports) are append-only and carry the SHA-256 of the JSON text as
// stored (body::text), so a copy handed to an auditor can be checked against the database.
// The queries are src/ops/queries/compliance_report.sql.
#pragma once

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ops/pdf_report.h"

namespace rekey::ops {

// rekey.job_report's JSON; for an aws-kms job (which has no keyring keys) its "keys" names the
// job's KMS key ARNs instead (kms_provider "aws-kms", no key id), and its "job" the codec and
// the encryption context. Throws StateError-classified errors for an unknown job (see
// db::Classified).
nlohmann::json BuildJobReport(pqxx::transaction_base& txn, int64_t job);

std::string RenderReportMarkdown(const nlohmann::json& report);

// The Markdown section of the report's "side_effects" (ops/report_evidence.h,
// SideEffectsEvidence), as RenderReportMarkdown includes it.
std::string RenderSideEffectsMarkdown(const nlohmann::json& side_effects);

struct StoredReport {
  int64_t report_id = 0;
  std::string sha256;  // hex SHA-256 of the stored body's text (body::text)
};

// Inserts the report into rekey.reports.
StoredReport StoreReport(pqxx::transaction_base& txn, int64_t job, const nlohmann::json& report,
                         const std::string& markdown);

// A PDF is evidence of a rotation that ended; an unfinished job's progress is for `rekey status`
// or the JSON report. Returns why the job of `report` is not finished (its state and the stages
// not passed or done, with what to do), or "" if it is (rekey.job_unfinished decides).
std::string UnfinishedForPdf(pqxx::transaction_base& txn, const nlohmann::json& report);

// What `rekey report` asks for beyond the database's JSON.
struct ReportRequest {
  bool pdf = false;            // the PDF's progress chart is read, and only a finished job has one
  bool store = true;           // recorded in rekey.reports
  nlohmann::json audit_chain;  // the report's "audit_chain" (ops/report_evidence.h)
  std::optional<nlohmann::json> verification;  // its "verification", if it ran
};

struct AssembledReport {
  nlohmann::json report;                // rekey.job_report's JSON with the request's evidence added
  std::string markdown;                 // RenderReportMarkdown(report)
  std::vector<StageProgress> progress;  // for the PDF only
  StoredReport stored;                  // if stored
};

// Builds the report of `job` in `txn`, adds the evidence, renders the Markdown and, if asked,
// stores it; the caller commits. Throws StateError if a PDF is asked of an unfinished job
// (UnfinishedForPdf), and the database's errors (an unknown job) as BuildJobReport does.
AssembledReport AssembleReport(pqxx::transaction_base& txn, int64_t job,
                               const ReportRequest& request);

}  // namespace rekey::ops
