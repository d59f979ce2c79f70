// `rekey rotation report R --format pdf`: the report of one rotation across two tables, read
// back with poppler (pdfinfo, pdftotext, pdftoppm), must hold the figures of the rotation's JSON
// report -- identity, keys with KMS references, each job, each gate's sample, error rate and
// threshold and its approver, the one promotion, quarantined values by reason, reader readiness,
// the audit chain's head and verification -- and render on every page; an unknown or unfinished
// rotation and an unwritable path are refused with one line, the documented exit code, and no
// file or stored report left behind.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "ops/pdf_report.h"
#include "ops_support.h"
#include "pdf_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

class RotationReportTest : public PdfTest {
 protected:
  void SetUp() override {
    PdfTest::SetUp();
    if (!IsSkipped()) Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  }
  // Two registered tables under key 1 and a rotation of scope default to key 2 over both, with
  // a 1% threshold (the rotation of `rekey rotate`, with the threshold it does not take as a
  // flag); `observe` NULL: every gate waits for approval.
  std::string TwoTableRotation(const std::string& observe) {
    SeedTinkTable(conn(), "public.cards_a", 3000, 1);
    SeedTinkTable(conn(), "public.cards_b", 1000, 1);
    for (const char* table : {"cards_a", "cards_b"}) {
      Exec(
          "INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, "
          "key_id_column) VALUES ('public', '" +
          std::string(table) + "', 'id', 'token', 'tink', 'key_id')");
    }
    pqxx::work txn(conn());
    const std::string rotation =
        txn.exec1("SELECT rekey.create_rotation('default', 2, '{1,50,100}', " + observe +
                  ", 400, 'cards-2026', p_error_threshold => 0.01)")[0]
            .as<std::string>();
    txn.commit();
    return rotation;
  }
  std::string RotationState(const std::string& rotation) {
    return Scalar("SELECT state FROM rekey.rotations WHERE rotation_id = " + rotation);
  }
};

TEST_F(RotationReportTest, APdfOfACompletedRotationHoldsTheFiguresOfItsJsonReportOnEveryPage) {
  const std::string rotation = TwoTableRotation("'0 seconds'");
  // Two values of cards_a that cannot decrypt, beyond the canary: quarantined, below 1%.
  Exec(
      "UPDATE public.cards_a SET token = set_byte(token, 10, get_byte(token, 10) # 255) WHERE id "
      "IN (SELECT id FROM public.cards_a WHERE rekey.stage_bucket(id::text) >= 5000 ORDER BY id "
      "LIMIT 2)");
  for (int run = 0; run < 6 && RotationState(rotation) != "completed"; ++run) {
    ProcessResult w = Rekey({"work", "--all", "--concurrency", "2"});
    ASSERT_EQ(w.exit_code, 0) << w.err;
  }
  ASSERT_EQ(RotationState(rotation), "completed");

  // The JSON report (not stored) and the Markdown name the one promotion.
  ProcessResult r = Rekey({"rotation", "report", rotation, "--format", "json", "--no-store"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(r.out);
  ASSERT_EQ(report["jobs"].size(), 2u);
  ASSERT_TRUE(report["promotion"].is_object()) << report.dump(2);
  EXPECT_EQ(report["promotion"]["key_id"], 2);
  EXPECT_EQ(report["promotion"]["by"], Scalar("SELECT actor FROM rekey.audit WHERE action = "
                                              "'rotation.promoted'"));
  EXPECT_TRUE(report["audit_chain"]["intact"].get<bool>());
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.reports"), 0) << "--no-store";
  r = Rekey({"rotation", "report", rotation, "--no-store"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("# Key rotation report: rotation " + rotation));
  EXPECT_THAT(r.out, HasSubstr("Key 2 was promoted once, at " +
                               report["promotion"]["at"].get<std::string>()));

  const std::string pdf = dir_ + "/rotation.pdf";
  r = Rekey({"rotation", "report", rotation, "--format", "pdf", "--output", pdf});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("report written to " + pdf));
  EXPECT_EQ(FilesIn(dir_), std::vector<std::string>{"rotation.pdf"}) << "no temporary file left";
  EXPECT_EQ(ReadFile(pdf).substr(0, 5), "%PDF-");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.reports"), 2) << "each job's report is stored";

  const int pages = PdfPages(pdf, "Key rotation report: rotation " + rotation);
  EXPECT_GE(pages, 2);

  ProcessResult text_run = RunProcess({"pdftotext", "-enc", "UTF-8", pdf, "-"});
  ASSERT_EQ(text_run.exit_code, 0) << text_run.err;
  const std::string text = Collapse(text_run.out);
  const std::string squeezed = Squeeze(text_run.out);
  auto expect_text = [&](const std::string& needle, const std::string& what) {
    EXPECT_THAT(text, HasSubstr(needle)) << what;
  };

  const json& rot = report["rotation"];
  expect_text("OUTCOME: ROTATED", "outcome");
  expect_text("Rotation " + rotation + " · cards-2026 · scope default · keys 1 -> 2", "identity");
  expect_text("Rows " + rot["rows_done"].dump() + " of " + rot["rows_total"].dump(), "rows");
  expect_text("Targets 2 jobs (" + rot["jobs"].get<std::string>() + ")", "targets");
  expect_text("Promoted at " + When(report["promotion"]["at"]), "when the key was promoted");
  expect_text("By (database role) " + report["promotion"]["by"].get<std::string>(),
              "who promoted it");
  expect_text("before 1 default local", "key 1 row");
  expect_text("after 2 default local", "key 2 row");

  int gates = 0;
  for (const auto& j : report["jobs"]) {
    const std::string job = j["job"]["job_id"].dump();
    SCOPED_TRACE("job " + job);
    EXPECT_EQ(j["outcome"], "rotated");
    for (const auto& k : j["keys"]) {
      for (const char* side : {"before", "after"}) {
        EXPECT_THAT(squeezed, HasSubstr(Squeeze(k[side]["kms_key_ref"].get<std::string>())))
            << side << " KMS reference";
      }
    }
    EXPECT_THAT(squeezed, HasSubstr(Squeeze(j["job"]["target"].get<std::string>())));
    expect_text(j["rows"]["total"].dump() + " " + j["rows"]["reencrypted"].dump() + " " +
                    j["rows"]["quarantined"].dump() + " " +
                    ops::FormatRate(j["decrypt_error_rate"].get<double>()),
                "the job's rows, re-encrypted, quarantined and error rate");
    expect_text(
        j["audit"]["batches_with_audit_row"].dump() + " of " + j["audit"]["batches_done"].dump(),
        "batches audited");
    for (const auto& s : j["stages"]) {
      for (const auto& g : s["gates"]) {
        ++gates;
        expect_text("passed " + g["values_checked"].dump() + " " + g["decrypt_errors"].dump() +
                        " " + g["quarantined"].dump() + " " +
                        ops::FormatRate(g["error_rate"].get<double>()) + " " +
                        ops::FormatRate(g["threshold"].get<double>()),
                    "gate of stage " + s["stage_no"].dump() + ": sample, errors, rate, threshold");
        if (!g["approved_by"].is_null()) {
          expect_text(g["approved_by"].get<std::string>() + " " + When(g["approved_at"]),
                      "who approved the gate of stage " + s["stage_no"].dump() + " and when");
        }
      }
    }
    EXPECT_THAT(squeezed, HasSubstr(Squeeze(j["reader_readiness"]["statement"].get<std::string>())))
        << "reader readiness";
  }
  EXPECT_EQ(gates, 6) << "three gates for each job";
  // A table row is one line of pdftotext's layout mode.
  ProcessResult layout = RunProcess({"pdftotext", "-layout", "-enc", "UTF-8", pdf, "-"});
  ASSERT_EQ(layout.exit_code, 0) << layout.err;
  EXPECT_THAT(Collapse(layout.out), HasSubstr("auth_failed 2 does not authenticate"))
      << "quarantined values by reason, summed over the jobs";
  expect_text("NOT PROVEN", "reader readiness not proven: no reader reported");

  expect_text("Rows re-encrypted over time, by job", "progress chart");
  expect_text("time since the rotation was created", "progress chart x axis");
  expect_text("threshold " + ops::FormatRate(0.01), "gate chart threshold");

  // The audit chain: its head and verification as the stored reports hold them, and each job's
  // stored report with its digest.
  for (const auto& row : pqxx::read_transaction(conn()).exec(
           "SELECT body->'audit_chain'->>'head' AS head, body->'audit_chain'->>'rows_checked' AS "
           "n, sha256 FROM rekey.reports")) {
    EXPECT_THAT(squeezed, HasSubstr(row["head"].as<std::string>())) << "the chain's head";
    expect_text("intact: " + row["n"].as<std::string>() + " sealed rows", "chain verification");
    EXPECT_THAT(squeezed, HasSubstr(row["sha256"].as<std::string>())) << "stored report digest";
  }
  expect_text("What this report does not prove", "limits");

  ExpectNoTestKeys(squeezed);
  ExpectEveryPageRenders(pdf, dir_, pages);
}

TEST_F(RotationReportTest, UnknownAndUnfinishedRotationsAndUnwritablePathsAreRefused) {
  const std::string rotation = TwoTableRotation("NULL");
  const std::string pdf = dir_ + "/rotation.pdf";

  ProcessResult r = Rekey({"rotation", "report", "999", "--format", "pdf", "--output", pdf});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("rotation 999 does not exist"));
  EXPECT_EQ(Lines(r.err), 1) << r.err;

  // The canaries ran; the jobs wait for approval: the rotation is not finished.
  ProcessResult w = Rekey({"work", "--all", "--concurrency", "2"});
  ASSERT_EQ(w.exit_code, 0) << w.err;
  const std::string jobs = Scalar(
      "SELECT string_agg(job_id || ' (' || state || ')', ', ' ORDER BY job_id) FROM rekey.jobs");
  EXPECT_THAT(jobs, HasSubstr("awaiting_approval"));
  std::ofstream(pdf) << "an earlier report";
  r = Rekey({"rotation", "report", rotation, "--format", "pdf", "--output", pdf});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err,
              HasSubstr("rotation " + rotation + " is rotating, jobs not finished: " + jobs));
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_EQ(ReadFile(pdf), "an earlier report") << "a refused report leaves the old file as it was";
  // Its progress is still there as JSON.
  r = Rekey({"rotation", "report", rotation, "--format", "json", "--no-store"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["rotation"]["state"], "rotating");

  ExpectUnwritableOutputRefused(dir_, [&](const std::vector<std::string>& args) {
    std::vector<std::string> full{"rotation", "report", rotation};
    full.insert(full.end(), args.begin(), args.end());
    return Rekey(full);
  });

  EXPECT_EQ(FilesIn(dir_), (std::vector<std::string>{"not-a-directory", "rotation.pdf"}))
      << "no temporary file is left behind";
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.reports"), 0) << "a refused report stores nothing";
}

}  // namespace
}  // namespace rekey::testing
