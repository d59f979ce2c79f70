#include "ops/compliance_report.h"

#include <sstream>

#include "common/error.h"
#include "db/named_query.h"
#include "ops/readers.h"
#include "ops/report_evidence.h"

namespace rekey::ops {
namespace {

std::string Text(const nlohmann::json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  return v.dump();
}

std::string Percent(const nlohmann::json& rate) {
  if (!rate.is_number()) return "-";
  std::ostringstream s;
  s.precision(4);
  s << rate.get<double>() * 100 << "%";
  return s.str();
}

// Markdown table cells must not contain a pipe or a newline.
std::string Cell(const nlohmann::json& v) {
  std::string s = Text(v);
  for (char& c : s) {
    if (c == '|' || c == '\n') c = ' ';
  }
  return s;
}

}  // namespace

std::string RenderSideEffectsMarkdown(const nlohmann::json& fx) {
  std::ostringstream md;
  const auto& c = fx["counters"];
  md << "\n## Side effects of the rewrite\n\n| | |\n|---|---|\n";
  md << "| Triggers | "
     << (fx["triggers"].is_null() ? "no choice made (none fired on the rewrite, or the job "
                                    "predates the choice): they fired"
                                  : Cell(fx["triggers"]))
     << " |\n";
  const auto& declared = fx["declared"];
  if (declared.is_object()) {
    std::string names;
    auto list = [&](const char* key, const char* label) {
      std::string items;
      for (const auto& x : declared.value(key, nlohmann::json::array())) {
        items += (items.empty() ? "" : ", ") + Text(x["name"]);
      }
      if (!items.empty()) names += (names.empty() ? "" : "; ") + std::string(label) + " " + items;
    };
    list("triggers", "triggers");
    list("publications", "publications");
    list("logical_slots", "logical slots");
    list("foreign_keys", "foreign keys");
    list("generated_columns", "generated columns");
    md << "| Declared before the first batch | " << Cell(names.empty() ? "nothing" : names)
       << " |\n";
    md << "| Estimated WAL / growth | " << Cell(declared["estimate"]["wal_bytes"]) << " / "
       << Cell(declared["estimate"]["table_growth_bytes"]) << " bytes |\n";
  }
  md << "| Rows rewritten | " << Cell(c["rows_rewritten"]) << " |\n";
  md << "| Updates on the table (HOT) | " << Cell(c["updates"]) << " (" << Cell(c["hot_updates"])
     << ", share " << Percent(c["hot_share"]) << ") |\n";
  md << "| Dead tuples created | " << Cell(c["dead_tuples_created"]) << " |\n";
  md << "| WAL | " << Cell(c["wal_bytes"]) << " bytes, " << Cell(c["wal_bytes_per_row"])
     << " per row |\n";
  md << "| Table size start / end | " << Cell(c["table_bytes_start"]) << " / "
     << Cell(c["table_bytes_end"]) << " bytes |\n";
  md << "| Counters read at start / end | " << Cell(c["start_at"]) << " / " << Cell(c["end_at"])
     << " |\n";
  const auto& v = fx["vacuum"];
  md << "| Vacuum after | "
     << (v.is_object()
             ? Cell(v["state"]) + " (" + Cell(v["started_at"]) + " to " + Cell(v["finished_at"]) +
                   ")" + (v["error"].is_null() ? "" : ": " + Cell(v["error"]))
             : std::string(fx["vacuum_after"] == true ? "asked, not run yet" : "not asked"))
     << " |\n";
  md << "\nThe counters are the table's (pg_stat_user_tables) and the WAL position the server's: "
        "anything else that wrote meanwhile is included.\n";
  return md.str();
}

namespace {

// One side of an aws-kms job's key pair in the form of rekey.job_report's keyring keys: no key
// id, scope or status (rekey's keyring does not hold the key; KMS does).
nlohmann::json AwsKmsKey(const std::string& arn) {
  return {{"key_id", nullptr},  {"scope", nullptr},      {"kms_provider", "aws-kms"},
          {"kms_key_ref", arn}, {"status_now", nullptr}, {"created_at", nullptr}};
}

}  // namespace

nlohmann::json BuildJobReport(pqxx::transaction_base& txn, int64_t job) {
  nlohmann::json report = nlohmann::json::parse(
      txn.exec_params1(db::Query("ops/compliance_report.job_report"), job)["report"]
          .as<std::string>());
  // An aws-kms job's evidence names its KMS keys as a keyring job's names its keys.
  const pqxx::result aws = txn.exec_params(db::Query("ops/compliance_report.aws_kms_keys"), job);
  if (!aws.empty()) {
    const pqxx::row row = aws[0];
    report["keys"] = nlohmann::json::array(
        {{{"before", AwsKmsKey(row["aws_kms_source_key_arn"].as<std::string>())},
          {"after", AwsKmsKey(row["aws_kms_key_arn"].as<std::string>())}}});
    report["job"]["codec"] = "aws-kms";
    report["job"]["encryption_context"] =
        row["aws_kms_context"].is_null()
            ? nlohmann::json()
            : nlohmann::json::parse(row["aws_kms_context"].as<std::string>());
  }
  return report;
}

std::string RenderReportMarkdown(const nlohmann::json& r) {
  const auto& job = r["job"];
  std::ostringstream md;
  md << "# Key rotation report: job " << Text(job["job_id"]) << "\n\n";
  md << "| | |\n|---|---|\n";
  std::string columns;
  for (const auto& c : job["columns"].is_array() ? job["columns"] : nlohmann::json::array()) {
    columns += (columns.empty() ? "`" : ", `") + Text(c) + "`";
  }
  md << "| Target | `" << Cell(job["target"]) << "`, columns " << columns << " |\n";
  if (!job["scope"].is_null()) {
    md << "| Scope | " << Cell(job["scope"]["column"]) << " = " << Cell(job["scope"]["value"])
       << " |\n";
  }
  md << "| Outcome | **" << Cell(r["outcome"]) << "** (job state " << Cell(job["state"]) << ") |\n";
  md << "| Created | " << Cell(job["created_at"]) << " by " << Cell(job["created_by"]) << " |\n";
  md << "| Started / finished | " << Cell(job["started_at"]) << " / " << Cell(job["finished_at"])
     << " |\n";
  md << "| Duration | " << Cell(job["duration_seconds"]) << " s |\n";
  md << "| Stage plan | " << Cell(job["stage_plan"]) << " % |\n";
  md << "| Error threshold | " << Percent(job["error_threshold"]) << " |\n";
  md << "| Report generated | " << Cell(r["generated_at"]) << " by " << Cell(r["generated_by"])
     << " |\n\n";

  md << "## Keys\n\nKey material is never part of this report; keys are identified by id and by "
        "the KMS key that wraps them.\n\n";
  md << "| | key id | scope | KMS | wrapping key | status now |\n|---|---|---|---|---|---|\n";
  for (const auto& k : r["keys"].is_array() ? r["keys"] : nlohmann::json::array()) {
    for (const char* side : {"before", "after"}) {
      const auto& key = k[side];
      md << "| " << side << " | " << Cell(key["key_id"]) << " | " << Cell(key["scope"]) << " | "
         << Cell(key["kms_provider"]) << " | `" << Cell(key["kms_key_ref"]) << "` | "
         << Cell(key["status_now"]) << " |\n";
    }
  }
  md << "\n## Stage timeline\n\n";
  md << "| # | kind | % | state | opened | finished | rows re-encrypted | quarantined | gate | "
        "values checked | error rate | approved by |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& s : r["stages"]) {
    std::string gate = "-", checked = "-", rate = "-", approved = "-";
    if (!s["gates"].empty()) {
      const auto& g = s["gates"].back();
      gate = g["passed"].get<bool>() ? "passed" : "failed";
      checked = Cell(g["values_checked"]);
      rate = Percent(g["error_rate"]);
      if (!g["approved_by"].is_null()) {
        approved = Cell(g["approved_by"]) + " at " + Cell(g["approved_at"]);
      } else if (g["passed"].get<bool>()) {
        // A passed gate of the last rollout stage opens the sweep by itself; an earlier one
        // without an approval is the job's current wait.
        approved = job["state"] == "awaiting_approval" && s == r["stages"].back()
                       ? "awaiting approval"
                       : "not required";
      }
    }
    md << "| " << Cell(s["stage_no"]) << " | " << Cell(s["kind"]) << " | " << Cell(s["percent"])
       << " | " << Cell(s["state"]) << " | " << Cell(s["opened_at"]) << " | "
       << Cell(s["finished_at"]) << " | " << Cell(s["rows_reencrypted"]) << " | "
       << Cell(s["rows_quarantined"]) << " | " << gate << " | " << checked << " | " << rate << " | "
       << approved << " |\n";
  }

  const auto& rows = r["rows"];
  md << "\n## Rows\n\n| | |\n|---|---|\n";
  md << "| Rows in scope | " << Cell(rows["total"]) << " |\n";
  md << "| Re-encrypted | " << Cell(rows["reencrypted"]) << " |\n";
  md << "| Restored by rollback | " << Cell(rows["restored_by_rollback"]) << " |\n";
  md << "| Quarantined (left untouched) | " << Cell(rows["quarantined"]) << " |\n";
  md << "| Decrypt error rate | " << Percent(r["decrypt_error_rate"]) << " |\n";
  md << "| Highest gate error rate | " << Percent(r["max_gate_error_rate"]) << " |\n";
  if (!r["quarantine"]["by_error_class"].empty()) {
    md << "| Quarantine by error class | " << Cell(r["quarantine"]["by_error_class"]) << " |\n";
  }

  const auto& audit = r["audit"];
  md << "\n## Audit completeness\n\n";
  md << (audit["complete"].get<bool>() ? "**Complete**" : "**INCOMPLETE**") << ": "
     << Cell(audit["batches_with_audit_row"]) << " of " << Cell(audit["batches_done"])
     << " completed batches have their `rotation.batch.completed` audit row";
  if (!audit["batches_missing_audit_row"].empty()) {
    md << " (missing: " << Cell(audit["batches_missing_audit_row"]) << ")";
  }
  md << "; " << Cell(audit["events"]) << " audit events for the job from "
     << Cell(audit["first_event_at"]) << " to " << Cell(audit["last_event_at"]) << ".\n";
  if (r.contains("audit_chain")) {
    const auto& chain = r["audit_chain"];
    md << "\n**Audit chain " << (chain["intact"].get<bool>() ? "intact" : "TAMPERED")
       << "**: " << Cell(chain["rows_checked"]) << " sealed rows recomputed at "
       << Cell(chain["verified_at"]) << ", head `" << Cell(chain["head"])
       << "` (keep it; `rekey audit verify --expect-head` "
       << "proves the chain still extends it)";
    for (const auto& f : chain["findings"]) md << "; " << Cell(f);
    md << ".\n";
  }
  if (r.contains("verification")) {
    const auto& v = r["verification"];
    md << "\n## Plaintext digest\n\n"
       << Cell(v["values"]) << " values of " << Cell(v["rows"]) << " rows decrypted at "
       << Cell(v["verified_at"]) << ", " << Cell(v["failures"]) << " failed; plaintext SHA-256 `"
       << Cell(v["plaintext_sha256"]) << "`";
    if (v.contains("plaintext_sha256_before")) {
      md << (v["plaintext_unchanged"].get<bool>() ? ", equal to" : ", DIFFERENT from")
         << " the digest before the rotation";
    }
    md << ".\n";
    if (v.value("not_proven", 0) > 0) {
      md << "\n"
         << Cell(v["not_proven"])
         << " values are AWS KMS ciphertext blobs that read in their stored form: which KMS key "
            "holds each is not proven without KMS, and they add nothing to the digest.\n";
    }
  }

  if (r.contains("reader_readiness")) {
    const auto& rr = r["reader_readiness"];
    md << "\n## Reader readiness\n\n"
       << (rr["proven"].get<bool>() ? "" : "**") << Cell(rr["statement"])
       << (rr["proven"].get<bool>() ? "" : "**")
       << ". Before its first batch, a promotion and a rollback the job waited until every "
          "application instance of the keys' scopes seen within its reader window listed the key "
          "it was about to write under.\n";
    if (!rr["checks"].empty()) {
      md << "\n| checked before | at | reader window | keys | readers (key ids) |\n"
            "|---|---|---|---|---|\n";
      for (const auto& c : rr["checks"]) {
        std::string readers;
        for (const auto& x : c["readers"]) {
          readers += (readers.empty() ? "" : ", ") + Text(x["reader"]) + "@" + Text(x["scope"]) +
                     " " + Text(x["key_ids"]);
        }
        md << "| " << Cell(c["for"]) << " | " << Cell(c["at"]) << " | " << Cell(c["reader_window"])
           << " | " << Cell(c["keys"]) << " | " << Cell(readers.empty() ? "none live" : readers)
           << " |\n";
      }
    }
  }

  if (r.contains("side_effects") && r["side_effects"].is_object()) {
    md << RenderSideEffectsMarkdown(r["side_effects"]);
  }

  md << "\n## Decisions and approvals\n\nActors, verifiers and approvers are the database roles "
        "that made each change, with times from the database's clock, both recorded by the "
        "database itself whatever a client sent; a worker's own name is shown beside its role. "
        "Advances made by the workers' role are automatic, after a passed gate's observation "
        "period (--observe).\n\n"
        "| at | action | actor | worker | outcome |\n|---|---|---|---|---|\n";
  for (const auto& a : r["approvals"]) {
    md << "| " << Cell(a["at"]) << " | " << Cell(a["action"]) << " | " << Cell(a["actor"]) << " | "
       << Cell(a.value("worker", nlohmann::json())) << " | " << Cell(a["outcome"]) << " |\n";
  }
  return md.str();
}

StoredReport StoreReport(pqxx::transaction_base& txn, int64_t job, const nlohmann::json& report,
                         const std::string& markdown) {
  // The digest is of the body's text as the database stores it (see the query).
  const pqxx::row row =
      txn.exec_params1(db::Query("ops/compliance_report.store"), job, report.dump(), markdown);
  return {row["report_id"].as<int64_t>(), row["sha256"].as<std::string>()};
}

std::string UnfinishedForPdf(pqxx::transaction_base& txn, const nlohmann::json& report) {
  const std::string state = report["job"]["state"].get<std::string>();
  if (!txn.exec_params1(db::Query("ops/compliance_report.job_unfinished"), state)["unfinished"]
           .as<bool>()) {
    return "";
  }
  std::string open;
  for (const auto& s : report["stages"]) {
    const std::string st = s["state"].get<std::string>();
    if (st != "passed" && st != "done") {
      open += (open.empty() ? "" : ", ") + std::to_string(s["stage_no"].get<int>()) + " (" +
              s["kind"].get<std::string>() + ", " + st + ")";
    }
  }
  return "job " + std::to_string(report["job"]["job_id"].get<int64_t>()) + " is " + state +
         (open.empty() ? "" : ", stages not finished: " + open) +
         "; a PDF report is the evidence of a completed, rolled-back or cancelled job: finish it "
         "(rekey work, rekey job advance) or use --format json for its progress";
}

AssembledReport AssembleReport(pqxx::transaction_base& txn, int64_t job,
                               const ReportRequest& request) {
  AssembledReport out;
  out.report = BuildJobReport(txn, job);
  if (request.pdf) {
    const std::string unfinished = UnfinishedForPdf(txn, out.report);
    if (!unfinished.empty()) throw StateError(unfinished);
    out.progress = ReadStageProgress(txn, job);
  }
  out.report["reader_readiness"] = ReaderReadiness(txn, job);
  out.report["side_effects"] = SideEffectsEvidence(txn, job);
  out.report["audit_chain"] = request.audit_chain;
  if (request.verification) out.report["verification"] = *request.verification;
  out.markdown = RenderReportMarkdown(out.report);
  if (request.store) out.stored = StoreReport(txn, job, out.report, out.markdown);
  return out;
}

}  // namespace rekey::ops
