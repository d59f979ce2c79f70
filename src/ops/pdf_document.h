// The drawing shared by rekey's PDF reports (a job's: pdf_report.h; a rotation's:
// rotation_pdf_report.h): an A4 portrait document drawn with cairo's PDF surface (fonts: DejaVu
// Sans and DejaVu Sans Mono through fontconfig) that flows headings, paragraphs, tables and
// charts onto as many pages as they need, with a footer on each; and the rules by which the
// reports print the JSON report's values, so that every figure reads the same in every report and
// pdftotext finds it: counts as plain integers, rates as percent with three decimals
// (FormatRate), timestamps to the second ("times are UTC unless an offset is shown").
//
// Thread-safety: a Document is used by one thread at a time.
#pragma once

#include <cairo.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace rekey::ops {

// "0.040%": a rate (0.0004) as percent with three decimals, as the PDFs print every rate.
std::string FormatRate(double rate);

// Cumulative rows re-encrypted, at `seconds` after the chart's origin (a job's or a rotation's
// start).
struct ProgressPoint {
  double seconds = 0;
  int64_t rows = 0;
};

namespace pdf {

struct Rgb {
  double r, g, b;
};
constexpr Rgb kInk{0.10, 0.12, 0.15};
constexpr Rgb kMuted{0.40, 0.43, 0.47};
constexpr Rgb kGood{0.11, 0.48, 0.25};
constexpr Rgb kBad{0.70, 0.13, 0.13};
constexpr Rgb kWarn{0.72, 0.45, 0.05};

// How the reports print a JSON value: "-" for null or absent, yes/no, integers as integers.
std::string Str(const nlohmann::json& v);
// v[key], or null when v is not an object or has no such key (a report never throws on a field
// an older database did not write).
const nlohmann::json& At(const nlohmann::json& v, const char* key);
// v, or an empty array when v is not one.
const nlohmann::json& Array(const nlohmann::json& v);
// FormatRate of a number, "-" otherwise.
std::string Rate(const nlohmann::json& v);
// "2026-12-06T17:41:08.123456+00:00" -> "2026-12-06 17:41:08"; another offset is kept.
std::string When(const nlohmann::json& v);
// "754.2 s (12.6 min)".
std::string Duration(const nlohmann::json& seconds);
// "stage 2 rollout 50%" of a stage of rekey.job_report's "stages".
std::string StageLabel(const nlohmann::json& stage);
// What a quarantine class means and what to do (docs/operations.md, "psql").
std::string QuarantineMeaning(const std::string& error_class);

struct Column {
  std::string title;
  double width;
  bool right = false;
  bool mono = false;
};

// One line of ProgressChart.
struct ChartSeries {
  std::string label;                  // the legend's, e.g. "stage 2 rollout 50%" or "job 7"
  std::vector<ProgressPoint> points;  // in time order; rows never decrease
};

// Page width minus the margins, in points: the widths of a table's columns add up to it.
constexpr double kBodyWidth = 595.276 - 2 * 50;

class Document {
 public:
  // Draws onto `out` (written as cairo goes, finished by Finish()); the footer's left and right
  // texts are repeated on every page, with the page number.
  Document(std::FILE* out, std::string footer_left, std::string footer_right);
  ~Document();
  Document(const Document&) = delete;
  Document& operator=(const Document&) = delete;

  void SetMetadata(const std::string& title, const std::string& subject);

  // Draws the last footer and finishes the file. Throws ConfigError if cairo could not draw or
  // write it (e.g. the disk is full).
  void Finish();

  double y() const { return y_; }
  void Skip(double points) { y_ += points; }
  // Starts a new page unless `height` points still fit on this one.
  void Ensure(double height);

  void Title(const std::string& title, const std::string& subtitle);

  // `keep` points of what follows stay on the heading's page (a chart, a table's first rows).
  void Heading(const std::string& text, double keep = 60);

  void Paragraph(const std::string& text, double size = 8.8, bool bold = false, Rgb color = kInk,
                 double indent = 0);

  void Bullet(const std::string& text);

  // A bordered badge, e.g. the outcome, at the left margin.
  void Badge(const std::string& text, Rgb color);

  // Rows of cells under a shaded header row; cells wrap within their column, numbers align right,
  // and the header is repeated on each page the table spans.
  void Table(const std::vector<Column>& columns, const std::vector<std::vector<std::string>>& rows,
             double size = 7.6);

  // A two-column table of labels and values.
  void Facts(const std::vector<std::pair<std::string, std::string>>& facts);

  // Rows re-encrypted over time: one cumulative line per series, time since `origin` (e.g. "the
  // job started") on x, rows on y; `empty` is said when there is no series.
  void ProgressChart(const std::vector<ChartSeries>& series, const std::string& origin,
                     const std::string& empty);

  // Each gate's decrypt error rate as a bar, against the threshold (dashed line).
  void GateChart(const std::vector<std::pair<std::string, double>>& gates, double threshold,
                 const std::vector<bool>& passed);

 private:
  void TableNoHeader(const std::vector<Column>& columns,
                     const std::vector<std::vector<std::string>>& rows);
  void Axes(double left, double right, double top, double bottom, double x_step, double x_max,
            double y_step, double y_max, bool y_percent);
  void AxisTitles(double left, double right, double top, double bottom, const std::string& x,
                  const std::string& y);
  void DrawCell(double x, double top, const Column& column, const std::vector<std::string>& lines,
                double size, bool bold, double line_height, Rgb color);
  void NewPage();
  void Footer();
  void Font(const char* family, double size, bool bold);
  double TextWidth(const std::string& text, const char* family, double size, bool bold);
  void DrawText(double x, double baseline, const std::string& text, const char* family, double size,
                bool bold, Rgb color);
  // Breaks `text` at spaces into lines no wider than `width`; a word wider than a line (a hash,
  // a KMS key reference) is broken between characters rather than cut.
  std::vector<std::string> Wrap(const std::string& text, double width, const char* family,
                                double size, bool bold);
  void Fill(Rgb c);
  void Stroke(Rgb c, double width);

  cairo_surface_t* surface_ = nullptr;
  cairo_t* cr_ = nullptr;
  double y_ = 0;
  int page_ = 1;
  std::string footer_left_;
  std::string footer_right_;
};

}  // namespace pdf
}  // namespace rekey::ops
