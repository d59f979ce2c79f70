#include "ops/pdf_sections.h"

#include <set>

namespace rekey::ops::pdf {

using nlohmann::json;

void KeysTable(Document& doc, const std::vector<const json*>& keys) {
  std::vector<std::vector<std::string>> rows;
  std::set<std::pair<std::string, std::string>> listed;
  for (const json* k : keys) {
    for (const char* side : {"before", "after"}) {
      const json& key = At(*k, side);
      if (!listed.insert({side, Str(At(key, "key_id"))}).second) continue;
      rows.push_back({side, Str(At(key, "key_id")), Str(At(key, "scope")),
                      Str(At(key, "kms_provider")), Str(At(key, "kms_key_ref")),
                      Str(At(key, "status_now"))});
    }
  }
  doc.Table({{"key", 40},
             {"key id", 40, true},
             {"scope", 62},
             {"KMS", 52},
             {"KMS key reference (wrapping key)", 231, false, true},
             {"status now", 70}},
            rows);
}

void GateExplanation(Document& doc) {
  doc.Paragraph(
      "Each stage ends with a gate that decrypts what moved: every row of the canary, a sample of "
      "the later stages. Its error rate is (values that failed to decrypt + values quarantined "
      "in the stage) / (values checked + quarantined); it passes below the threshold. A passed "
      "gate waits for a person's approval unless the job advances on its own after an "
      "observation period.",
      8.3, false, kMuted);
}

void AddGates(const json& stages, const std::string& prefix, Gates* out) {
  for (const auto& s : Array(stages)) {
    const json& gates = Array(At(s, "gates"));
    for (size_t i = 0; i < gates.size(); ++i) {
      const json& g = gates[i];
      const bool passed = At(g, "passed").is_boolean() && At(g, "passed").get<bool>();
      std::string approved_by = Str(At(g, "approved_by"));
      // The last rollout gate opens the sweep by itself; a finished job has no other wait.
      if (At(g, "approved_by").is_null()) approved_by = passed ? "not required" : "-";
      const std::string label =
          prefix + StageLabel(s) + (gates.size() > 1 ? " #" + std::to_string(i + 1) : "");
      out->rows.push_back({label, passed ? "passed" : "FAILED", Str(At(g, "values_checked")),
                           Str(At(g, "decrypt_errors")), Str(At(g, "quarantined")),
                           Rate(At(g, "error_rate")), Rate(At(g, "threshold")),
                           Str(At(g, "audit_complete")), approved_by, When(At(g, "approved_at"))});
      out->bars.push_back(
          {label, At(g, "error_rate").is_number() ? At(g, "error_rate").get<double>() : 0});
      out->passed.push_back(passed);
    }
  }
}

void GateTable(Document& doc, const Gates& gates) {
  doc.Table({{"gate", 72},
             {"result", 36},
             {"sample (values checked)", 47, true},
             {"decrypt errors", 40, true},
             {"quaran- tined", 41, true},
             {"error rate", 43, true},
             {"thresh- old", 43, true},
             {"audit rows", 30},
             {"approved by", 48},
             {"approved at", 95}},
            gates.rows);
}

void ChartSections(Document& doc, int first, const std::string& by,
                   const std::vector<ChartSeries>& series, const std::string& origin,
                   const std::string& whose, const std::string& empty, const Gates& gates,
                   double threshold) {
  doc.Heading(std::to_string(first) + ". Rows re-encrypted over time, by " + by, 270);
  doc.ProgressChart(series, origin, empty);
  doc.Paragraph("From " + whose +
                    " rotation.batch.completed audit rows (one per completed batch). A rollback "
                    "stage counts the rows it restored to the old key.",
                7.8, false, kMuted);
  doc.Heading(std::to_string(first + 1) + ". Gate error rates against the threshold", 220);
  doc.GateChart(gates.bars, threshold, gates.passed);
}

void QuarantineTable(Document& doc, const json& by_class) {
  if (by_class.is_object() && !by_class.empty()) {
    std::vector<std::vector<std::string>> q;
    for (auto it = by_class.begin(); it != by_class.end(); ++it) {
      q.push_back({it.key(), Str(it.value()), QuarantineMeaning(it.key())});
    }
    doc.Table({{"reason (error class)", 90}, {"values", 50, true}, {"meaning and remedy", 355}}, q);
  } else {
    doc.Paragraph("No value was quarantined: every value the job met decrypted.");
  }
}

std::vector<std::pair<std::string, std::string>> AuditChainFacts(const json& chain) {
  if (!chain.is_object()) return {};
  const bool intact = At(chain, "intact").is_boolean() && At(chain, "intact").get<bool>();
  std::string verdict = std::string(intact ? "intact" : "TAMPERED") + ": " +
                        Str(At(chain, "rows_checked")) +
                        " sealed rows recomputed, every digest and link matches";
  if (!intact) {
    verdict = "TAMPERED: " + Str(At(chain, "rows_checked")) + " sealed rows recomputed; " +
              std::to_string(Array(At(chain, "findings")).size()) + " finding(s):";
    for (const auto& f : Array(At(chain, "findings"))) verdict += " " + Str(f) + ";";
  }
  if (At(chain, "unsealed").is_number() && At(chain, "unsealed").get<int64_t>() > 0) {
    verdict += " (" + Str(At(chain, "unsealed")) + " rows not sealed yet)";
  }
  return {{"Hash chain head", Str(At(chain, "head"))},
          {"Hash chain verification", verdict},
          {"Verified at", When(At(chain, "verified_at"))}};
}

void AuditHeadAdvice(Document& doc, const json& chain) {
  if (!chain.is_object()) return;
  doc.Paragraph(
      "To prove later that the log was not cut back or rewritten, keep this head outside the "
      "database and run: rekey audit verify --expect-head " +
          Str(At(chain, "head")),
      7.8, false, kMuted);
}

void AddDecisions(const json& approvals, const std::string& job,
                  std::vector<std::vector<std::string>>* rows) {
  for (const auto& a : Array(approvals)) {
    std::string details;
    const json& d = At(a, "details");
    if (d.is_object()) {
      for (auto it = d.begin(); it != d.end(); ++it) {
        details += (details.empty() ? "" : ", ") + it.key() + " " + Str(it.value());
      }
    }
    std::vector<std::string> row = {When(At(a, "at")), Str(At(a, "action")), Str(At(a, "actor")),
                                    Str(At(a, "outcome")), details};
    if (!job.empty()) row.insert(row.begin(), job);
    rows->push_back(std::move(row));
  }
}

void DecisionsTable(Document& doc, const std::vector<std::vector<std::string>>& rows,
                    bool with_job) {
  if (with_job) {
    doc.Table({{"job", 30, true},
               {"at", 90},
               {"action", 105},
               {"actor (database role)", 76},
               {"outcome", 48},
               {"details", 146}},
              rows);
    return;
  }
  doc.Table({{"at", 94},
             {"action", 110},
             {"actor (database role)", 80},
             {"outcome", 50},
             {"details", 161}},
            rows);
}

void CommonLimits(Document& doc) {
  doc.Bullet(
      "That the newest audit rows were not cut off, or the whole chain rewritten, by someone "
      "with full control of the database: only a head kept outside the database (the workers' "
      "logs, this report) proves that, with rekey audit verify --expect-head.");
  doc.Bullet(
      "That values outside the job's target columns and scope, or copies of them (backups, "
      "replicas that lag, caches, exports), are under the new key.");
  doc.Bullet(
      "That the old key's material is destroyed: its status is shown above; retiring and "
      "destroying it are separate, audited steps.");
}

}  // namespace rekey::ops::pdf
