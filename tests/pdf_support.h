// Helpers for the tests that read rekey's PDF reports back with poppler
// (tests/pdf_report_pg_test.cpp, tests/rotation_report_pg_test.cpp): the files of a directory,
// pdftotext's text with its whitespace collapsed or removed, timestamps as the PDFs print them,
// the pages pdfinfo counts, that no test key is in the text, that pdftoppm renders every page,
// and their fixture.
#pragma once

#include <dirent.h>
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
#include "rotation_support.h"

namespace rekey::testing {

inline std::vector<std::string> FilesIn(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") out.push_back(name);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Whitespace collapsed to one space: table cells and wrapped lines come out of pdftotext with
// varying spacing, the words themselves do not.
inline std::string Collapse(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

// Without any whitespace: a hash or KMS reference wrapped inside a table cell is whole again.
inline std::string Squeeze(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (!std::isspace(static_cast<unsigned char>(c))) out += c;
  }
  return out;
}

// As the PDF prints a timestamp of the JSON: to the second, UTC.
inline std::string When(const nlohmann::json& v) {
  const std::string s = v.get<std::string>();
  return s.substr(0, 10) + " " + s.substr(11, 8);
}

inline int Lines(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  return t.empty() ? 0 : int(std::count(t.begin(), t.end(), '\n')) + 1;
}

// pdfinfo's account of `pdf`: its title holds `title`, its pages are A4; returns how many
// pages it has (0 if pdfinfo failed or did not say).
inline int PdfPages(const std::string& pdf, const std::string& title) {
  ProcessResult info = RunProcess({"pdfinfo", pdf});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_THAT(info.out, ::testing::HasSubstr(title));
  EXPECT_THAT(info.out, ::testing::HasSubstr("A4"));
  const size_t at = info.out.find("Pages:");
  EXPECT_NE(at, std::string::npos) << info.out;
  return at == std::string::npos ? 0 : std::stoi(info.out.substr(at + 6));
}

// Neither test key (rotation_support.h) appears in `squeezed` text, in hex or base64.
inline void ExpectNoTestKeys(const std::string& squeezed) {
  for (uint32_t id : {1u, 2u}) {
    Secret k = TestDataKey(id);
    Bytes b(k.data(), k.data() + k.size());
    EXPECT_EQ(squeezed.find(HexEncode(b)), std::string::npos) << "key " << id << " in hex";
    EXPECT_EQ(squeezed.find(Base64Encode(b)), std::string::npos) << "key " << id << " in base64";
  }
}

// pdftoppm renders each of the `pages` pages of `pdf` into `dir` (as page-N.png), none blank.
inline void ExpectEveryPageRenders(const std::string& pdf, const std::string& dir, int pages) {
  ProcessResult render = RunProcess({"pdftoppm", "-r", "40", "-png", pdf, dir + "/page"});
  ASSERT_EQ(render.exit_code, 0) << render.err;
  int rendered = 0;
  for (const std::string& f : FilesIn(dir)) {
    if (f.rfind("page", 0) != 0) continue;
    ++rendered;
    EXPECT_GT(ReadFile(dir + "/" + f).size(), 1000u) << f;
  }
  EXPECT_EQ(rendered, pages);
}

// `report(args)` runs a report command with `args` added. Asked to write a PDF or JSON where it
// cannot (a missing directory, a file taken for a directory, a directory itself: all made under
// `dir`), it exits 2 with one line naming the path; asked for a PDF without --output, it exits 2
// saying it needs one.
template <typename Report>
void ExpectUnwritableOutputRefused(const std::string& dir, Report report) {
  std::ofstream(dir + "/not-a-directory") << "x";
  for (const std::string& bad :
       {dir + "/missing/report.pdf", dir + "/not-a-directory/report.pdf", dir}) {
    for (const char* format : {"pdf", "json"}) {
      ProcessResult r = report({"--format", format, "--output", bad});
      EXPECT_EQ(r.exit_code, 2) << format << " to " << bad << ": " << r.err;
      EXPECT_THAT(r.err, ::testing::HasSubstr("cannot write the report to " + bad)) << bad;
      EXPECT_EQ(Lines(r.err), 1) << r.err;
    }
  }
  ProcessResult r = report({"--format", "pdf"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, ::testing::HasSubstr("--format pdf needs --output FILE"));
}

// A test of a PDF report: skipped (not passed) without poppler-utils; test keys 1 and 2 in the
// keyring (scope default); a directory of its own for the files, removed afterwards; and the
// rekey binary run against the test's database.
class PdfTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    if (access("/usr/bin/pdftotext", X_OK) != 0) {
      GTEST_SKIP() << "poppler-utils is not installed (make test installs it)";
    }
    ImportTestKeys(conn(), {1, 2});
    dir_ = MakeTempDir("rekey-pdf-");
  }
  void TearDown() override {
    if (!dir_.empty()) RunProcess({"rm", "-rf", dir_});
    PgTest::TearDown();
  }
  ProcessResult Rekey(const std::vector<std::string>& args) {
    std::vector<std::string> full{"--db", conninfo()};
    full.insert(full.end(), args.begin(), args.end());
    return RunRekey(full, WorkerEnv());
  }
  std::string dir_;
};

}  // namespace rekey::testing
