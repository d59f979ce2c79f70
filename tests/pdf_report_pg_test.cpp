// `rekey report J --format pdf`: the PDF is read back with poppler (pdfinfo, pdftotext, pdftoppm)
// and must hold the figures of the JSON report it renders (the stored rekey.reports body), render
// on every page, and be refused -- one line, the documented exit code, no file left behind --
// for an unknown or unfinished job and an unwritable path.
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

class PdfReportTest : public PdfTest {
 protected:
  void Work(int64_t job) {
    ProcessResult r = Rekey({"work", "--job", std::to_string(job), "--concurrency", "2"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  int64_t StagedJob(int rows) {
    SeedTinkTable(conn(), "public.cards", rows, 1);
    return CreateJobSql(conn(),
                        "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => "
                        "'key_id', p_stages => '{1,50,100}', p_error_threshold => 0.01, "
                        "p_batch_size => 400, p_name => 'cards-2026'");
  }
};

TEST_F(PdfReportTest, APdfOfACompletedRotationHoldsTheFiguresOfItsJsonReportOnEveryPage) {
  const int64_t job = StagedJob(5000);
  const std::string j = std::to_string(job);
  // Two values that cannot decrypt, beyond the canary: quarantined, below the 1% threshold.
  Exec(
      "UPDATE public.cards SET token = set_byte(token, 10, get_byte(token, 10) # 255) WHERE id IN "
      "(SELECT id FROM public.cards WHERE rekey.stage_bucket(id::text) >= 5000 ORDER BY id LIMIT "
      "2)");
  // The digest before the rotation (verify exits 5 for the two broken values, and says so).
  ProcessResult before = Rekey({"job", "verify", j, "--json"});
  ASSERT_EQ(before.exit_code, 5) << before.err;
  const std::string digest_before = json::parse(before.out)["plaintext_sha256"];
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j, "--observe", "0s"}).exit_code, 0);
  Work(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "completed");

  const std::string pdf = dir_ + "/report.pdf";
  ProcessResult r = Rekey({"report", j, "--format", "pdf", "--output", pdf, "--verify",
                           "--plaintext-sha256-before", digest_before});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("report written to " + pdf));
  EXPECT_EQ(FilesIn(dir_), std::vector<std::string>{"report.pdf"}) << "no temporary file is left";
  EXPECT_EQ(ReadFile(pdf).substr(0, 5), "%PDF-");

  // The report the PDF renders is the one stored, with its digest.
  const json report =
      json::parse(Scalar("SELECT body::text FROM rekey.reports WHERE job_id = " + j +
                         " AND sha256 = encode(sha256(convert_to(body::text, 'UTF8')), 'hex')"
                         " ORDER BY report_id DESC LIMIT 1"));

  const int pages = PdfPages(pdf, "Key rotation report: job " + j);
  EXPECT_GE(pages, 2);

  ProcessResult text_run = RunProcess({"pdftotext", "-enc", "UTF-8", pdf, "-"});
  ASSERT_EQ(text_run.exit_code, 0) << text_run.err;
  const std::string text = Collapse(text_run.out);
  const std::string squeezed = Squeeze(text_run.out);
  auto expect_text = [&](const std::string& needle, const std::string& what) {
    EXPECT_THAT(text, HasSubstr(needle)) << what;
  };

  expect_text("Key rotation report", "title");
  expect_text("OUTCOME: ROTATED", "outcome");
  expect_text("Job " + j + " · cards-2026 · public.cards (token)", "identity");
  for (const auto& k : report["keys"]) {
    for (const char* side : {"before", "after"}) {
      const json& key = k[side];
      EXPECT_THAT(squeezed, HasSubstr(Squeeze(key["kms_key_ref"].get<std::string>())))
          << side << " KMS reference";
      expect_text(key["kms_provider"].get<std::string>(), "KMS provider");
      expect_text(key["status_now"].get<std::string>(), "key status");
    }
  }
  EXPECT_EQ(report["keys"][0]["before"]["key_id"], 1);
  EXPECT_EQ(report["keys"][0]["after"]["key_id"], 2);
  expect_text("before 1 default local", "key 1 row");
  expect_text("after 2 default local", "key 2 row");

  int gates = 0;
  for (const auto& s : report["stages"]) {
    expect_text(s["rows_reencrypted"].dump() + " " + s["rows_quarantined"].dump(),
                "stage " + s["stage_no"].dump() + " rows");
    if (!s["opened_at"].is_null()) expect_text(When(s["opened_at"]), "stage opened");
    for (const auto& g : s["gates"]) {
      ++gates;
      const std::string rate = ops::FormatRate(g["error_rate"].get<double>());
      expect_text("passed " + g["values_checked"].dump() + " " + g["decrypt_errors"].dump() + " " +
                      g["quarantined"].dump() + " " + rate + " " +
                      ops::FormatRate(g["threshold"].get<double>()),
                  "gate of stage " + s["stage_no"].dump() + ": sample, errors, rate, threshold");
      if (!g["approved_by"].is_null()) {
        expect_text(g["approved_by"].get<std::string>() + " " + When(g["approved_at"]),
                    "who approved the gate of stage " + s["stage_no"].dump() + " and when");
      }
    }
  }
  EXPECT_EQ(gates, 3);
  EXPECT_EQ(report["stages"][0]["gates"][0]["approved_by"], "postgres");

  EXPECT_EQ(report["rows"]["total"], 5000);
  expect_text("Rows in scope 5000", "rows in scope");
  expect_text("Re-encrypted " + report["rows"]["reencrypted"].dump(), "rows re-encrypted");
  expect_text("Quarantined (left untouched) 2", "rows quarantined");
  expect_text("Decrypt error rate " + ops::FormatRate(report["decrypt_error_rate"].get<double>()),
              "decrypt error rate");
  expect_text("auth_failed 2", "quarantine by reason");

  // Both charts, with their axes labelled.
  expect_text("Rows re-encrypted over time, by stage", "progress chart");
  expect_text("time since the job started", "progress chart x axis");
  expect_text("rows re-encrypted (cumulative)", "progress chart y axis");
  expect_text("decrypt error rate (%)", "gate chart y axis");
  expect_text("threshold " + ops::FormatRate(0.01), "gate chart threshold");

  // The audit: completeness, the chain's head and its verification.
  expect_text("complete: " + report["audit"]["batches_with_audit_row"].dump() + " of " +
                  report["audit"]["batches_done"].dump(),
              "audit completeness");
  ASSERT_TRUE(report["audit_chain"]["intact"].get<bool>());
  const std::string head = report["audit_chain"]["head"];
  EXPECT_THAT(squeezed, HasSubstr(Squeeze(head))) << "the chain's head";
  expect_text("intact: " + report["audit_chain"]["rows_checked"].dump() + " sealed rows",
              "chain verification");

  // The plaintext digest check.
  EXPECT_EQ(report["verification"]["plaintext_sha256"], digest_before);
  EXPECT_EQ(report["verification"]["failures"], 2);
  EXPECT_THAT(squeezed, HasSubstr(digest_before)) << "the plaintext digest";
  expect_text("unchanged: the digests are equal", "digest comparison");
  expect_text("key 2: 4998", "values per key");

  // The Markdown stored beside it says the same about the chain and the digest.
  const std::string markdown = Scalar("SELECT markdown FROM rekey.reports WHERE job_id = " + j +
                                      " ORDER BY report_id DESC LIMIT 1");
  EXPECT_THAT(markdown, HasSubstr("**Audit chain intact**"));
  EXPECT_THAT(markdown, HasSubstr("head `" + head + "`"));
  EXPECT_THAT(markdown, HasSubstr(digest_before + "`, equal to the digest before the rotation"));

  const std::string stored_sha256 = Scalar("SELECT sha256 FROM rekey.reports WHERE job_id = " + j +
                                           " ORDER BY report_id DESC LIMIT 1");
  EXPECT_THAT(squeezed, HasSubstr(stored_sha256)) << "the stored report's digest";

  expect_text("What this report does not prove", "limits");
  EXPECT_THAT(
      squeezed,
      HasSubstr(Squeeze("reader readiness: not proven (no reader reported for scope default)")))
      << "reader readiness";

  ExpectNoTestKeys(squeezed);
  ExpectEveryPageRenders(pdf, dir_, pages);
}

TEST_F(PdfReportTest, ARolledBackRotationsPdfSaysSoAndChartsTheRowsRestored) {
  const int64_t job = StagedJob(3000);
  const std::string j = std::to_string(job);
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 1");
  Work(job);
  ASSERT_EQ(Rekey({"job", "advance", j, "--observe", "0s"}).exit_code, 0);
  Work(job);
  ASSERT_EQ(Rekey({"job", "rollback", j, "--reason", "readers failed"}).exit_code, 0);
  Work(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "rolled_back");

  const std::string pdf = dir_ + "/rolled-back.pdf";
  ProcessResult r = Rekey({"report", j, "--format", "pdf", "--output", pdf});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report =
      json::parse(Scalar("SELECT body::text FROM rekey.reports WHERE job_id = " + j +
                         " ORDER BY report_id DESC LIMIT 1"));
  ASSERT_EQ(report["outcome"], "rolled_back");
  const json& rollback = report["stages"].back();
  ASSERT_EQ(rollback["kind"], "rollback");
  const int64_t restored = report["rows"]["restored_by_rollback"];
  EXPECT_GT(restored, 1000);

  ProcessResult text_run = RunProcess({"pdftotext", "-layout", "-enc", "UTF-8", pdf, "-"});
  ASSERT_EQ(text_run.exit_code, 0) << text_run.err;
  const std::string text = Collapse(text_run.out);
  EXPECT_THAT(text, HasSubstr("OUTCOME: ROLLED BACK"));
  EXPECT_THAT(text, HasSubstr("Restored by rollback " + std::to_string(restored)));
  EXPECT_THAT(text, HasSubstr("job.rollback_started"));
  EXPECT_THAT(text, HasSubstr("reason readers failed"));
  // The rollback stage is a series of the progress chart, its total the rows it restored.
  EXPECT_THAT(text, HasSubstr("stage " + rollback["stage_no"].dump() +
                              " rollback: " + rollback["rows_reencrypted"].dump() + " rows"));
  // Without --verify the report says the plaintext was not compared.
  EXPECT_THAT(text, HasSubstr("9. Plaintext digest check Not run with this report"));
  EXPECT_THAT(text, HasSubstr("That no plaintext changed: no plaintext digest was compared"));
}

TEST_F(PdfReportTest, UnknownAndUnfinishedJobsAndUnwritablePathsAreRefusedWithNothingWritten) {
  const int64_t job = StagedJob(2000);
  const std::string j = std::to_string(job);
  const std::string pdf = dir_ + "/report.pdf";

  ProcessResult r = Rekey({"report", "999", "--format", "pdf", "--output", pdf});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("job 999 does not exist"));
  EXPECT_EQ(Lines(r.err), 1) << r.err;

  // The canary ran; the job waits for approval: not finished.
  Work(job);
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + j), "awaiting_approval");
  {
    std::ofstream old(pdf);
    old << "an earlier report";
  }
  r = Rekey({"report", j, "--format", "pdf", "--output", pdf});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_THAT(r.err, HasSubstr("job " + j + " is awaiting_approval"));
  EXPECT_THAT(r.err, HasSubstr("stages not finished: 2 (rollout, planned), 3 (rollout, planned)"));
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_EQ(ReadFile(pdf), "an earlier report") << "a refused report leaves the old file as it was";

  ExpectUnwritableOutputRefused(dir_, [&](const std::vector<std::string>& args) {
    std::vector<std::string> full{"report", j};
    full.insert(full.end(), args.begin(), args.end());
    return Rekey(full);
  });

  EXPECT_EQ(FilesIn(dir_), (std::vector<std::string>{"not-a-directory", "report.pdf"}))
      << "no temporary file is left behind";
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.reports"), 0) << "a refused report stores nothing";
}

}  // namespace
}  // namespace rekey::testing
