// Compliance reports: the evidence of one rotation job, for SOC2/PCI auditors.
//
// The JSON is built by the database (rekey.job_report, migration 0005) from the job's own
// records: keys before and after (ids, scopes and KMS references, never material), the stage
// timeline with each gate's result, who approved it and when, row counts, the decrypt error
// rate, quarantined values by error class, an audit-completeness check (every completed batch
// has its rotation.batch.completed audit row) and durations. `rekey report` adds "audit_chain"
// (the chain's head and its verification) and, with --verify, "verification" (values per key and
// the plaintext digest). The Markdown and the PDF (pdf_report.h) are renderings of that JSON and
// say nothing the JSON does not.
//
// Stored reports (rekey.reports) are append-only and carry the SHA-256 of the JSON text as
// stored (body::text), so a copy handed to an auditor can be checked against the database.
#pragma once

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <cstdint>
#include <string>

namespace rekey::ops {

// Throws StateError-classified errors for an unknown job (see db::Classified).
nlohmann::json BuildJobReport(pqxx::transaction_base& txn, int64_t job);

std::string RenderReportMarkdown(const nlohmann::json& report);

struct StoredReport {
  int64_t report_id = 0;
  std::string sha256;  // hex SHA-256 of the stored body's text (body::text)
};

// Inserts the report into rekey.reports.
StoredReport StoreReport(pqxx::transaction_base& txn, int64_t job, const nlohmann::json& report,
                         const std::string& markdown);

}  // namespace rekey::ops
