#include "ops/pdf_report.h"

#include <cairo-pdf.h>
#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <sstream>
#include <utility>

#include "common/error.h"
#include "db/named_query.h"

namespace rekey::ops {
namespace {

using nlohmann::json;

// A4 portrait in points; the body leaves room for the footer.
constexpr double kPageWidth = 595.276;
constexpr double kPageHeight = 841.89;
constexpr double kMargin = 50;
constexpr double kBodyWidth = kPageWidth - 2 * kMargin;
constexpr double kBodyBottom = kPageHeight - 62;

const char* const kSans = "DejaVu Sans";
const char* const kMono = "DejaVu Sans Mono";

struct Rgb {
  double r, g, b;
};
constexpr Rgb kInk{0.10, 0.12, 0.15};
constexpr Rgb kMuted{0.40, 0.43, 0.47};
constexpr Rgb kRule{0.78, 0.80, 0.83};
constexpr Rgb kHeaderFill{0.91, 0.93, 0.96};
constexpr Rgb kStripe{0.97, 0.975, 0.98};
constexpr Rgb kAccent{0.13, 0.29, 0.53};
constexpr Rgb kGood{0.11, 0.48, 0.25};
constexpr Rgb kBad{0.70, 0.13, 0.13};
constexpr Rgb kWarn{0.72, 0.45, 0.05};
// One colour per stage series, distinguishable in print and by colour-blind readers (Okabe-Ito).
const Rgb kSeries[] = {{0.00, 0.45, 0.70}, {0.90, 0.62, 0.00}, {0.00, 0.62, 0.45},
                       {0.80, 0.47, 0.65}, {0.34, 0.71, 0.91}, {0.84, 0.37, 0.00},
                       {0.94, 0.89, 0.26}, {0.00, 0.00, 0.00}};

std::string Str(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_float()) {
    std::ostringstream s;
    s << v.get<double>();
    return s.str();
  }
  return v.dump();
}

const json& At(const json& v, const char* key) {
  static const json kNull;
  if (!v.is_object()) return kNull;
  auto it = v.find(key);
  return it == v.end() ? kNull : *it;
}

const json& Array(const json& v) {
  static const json kEmpty = json::array();
  return v.is_array() ? v : kEmpty;
}

std::string Rate(const json& v) {
  return v.is_number() ? FormatRate(v.get<double>()) : "-";
}

// "2026-12-06T17:41:08.123456+00:00" -> "2026-12-06 17:41:08"; any other offset is kept, so the
// one rule "times are UTC unless an offset is shown" holds.
std::string When(const json& v) {
  if (!v.is_string()) return "-";
  const std::string s = v.get<std::string>();
  if (s.size() < 19 || s[10] != 'T') return s;
  std::string out = s.substr(0, 10) + " " + s.substr(11, 8);
  const size_t offset = s.find_first_of("+-Z", 19);
  if (offset != std::string::npos && s[offset] != 'Z') {
    const std::string zone = s.substr(offset);
    if (zone != "+00:00" && zone != "+00") out += zone;
  }
  return out;
}

std::string Duration(const json& seconds) {
  if (!seconds.is_number()) return "-";
  const double s = seconds.get<double>();
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(1);
  out << s << " s";
  if (s >= 120) {
    out.precision(1);
    out << " (" << s / 60 << " min)";
  }
  return out.str();
}

std::string StageLabel(const json& stage) {
  const std::string kind = Str(At(stage, "kind"));
  std::string label = "stage " + Str(At(stage, "stage_no")) + " " + kind;
  if (kind == "rollout") label += " " + Str(At(stage, "percent")) + "%";
  return label;
}

// What each quarantine class means and what to do (docs/operations.md, "psql").
std::string QuarantineMeaning(const std::string& error_class) {
  static const std::map<std::string, std::string> kMeaning = {
      {"auth_failed",
       "does not authenticate under the key it names (corrupted, wrong key or wrong associated "
       "data); restore it or have the application re-encrypt it"},
      {"truncated", "shorter than the format allows; restore it or re-encrypt it"},
      {"empty", "a zero-length value; decide whether the column should hold NULL"},
      {"bad_prefix", "not in the column's format; the column holds values of another format"},
      {"unknown_key", "names a key the keyring does not hold; import the key and requeue"},
  };
  auto it = kMeaning.find(error_class);
  return it == kMeaning.end() ? "see rekey.row_failures" : it->second;
}

// 1, 2 or 5 times a power of ten, so that about `steps` ticks cover `range`.
double NiceStep(double range, int steps) {
  if (range <= 0) return 1;
  const double raw = range / steps;
  const double power = std::pow(10, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * power) return m * power;
  }
  return 10 * power;
}

std::string TickLabel(double value, double step) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(step >= 1 ? 0 : std::min(6, int(std::ceil(-std::log10(step)))));
  s << value;
  return s.str();
}

struct Column {
  std::string title;
  double width;
  bool right = false;
  bool mono = false;
};

cairo_status_t WriteToFile(void* closure, const unsigned char* data, unsigned int length) {
  auto* out = static_cast<std::FILE*>(closure);
  return std::fwrite(data, 1, length, out) == length ? CAIRO_STATUS_SUCCESS
                                                     : CAIRO_STATUS_WRITE_ERROR;
}

class Document {
 public:
  Document(std::FILE* out, std::string footer_left, std::string footer_right)
      : footer_left_(std::move(footer_left)), footer_right_(std::move(footer_right)) {
    surface_ = cairo_pdf_surface_create_for_stream(WriteToFile, out, kPageWidth, kPageHeight);
    cr_ = cairo_create(surface_);
    y_ = kMargin;
  }
  ~Document() {
    cairo_destroy(cr_);
    cairo_surface_destroy(surface_);
  }
  Document(const Document&) = delete;
  Document& operator=(const Document&) = delete;

  void SetMetadata(const std::string& title, const std::string& subject) {
    cairo_pdf_surface_set_metadata(surface_, CAIRO_PDF_METADATA_TITLE, title.c_str());
    cairo_pdf_surface_set_metadata(surface_, CAIRO_PDF_METADATA_SUBJECT, subject.c_str());
    cairo_pdf_surface_set_metadata(surface_, CAIRO_PDF_METADATA_CREATOR, "rekey report");
  }

  void Finish() {
    Footer();
    cairo_show_page(cr_);
    cairo_surface_finish(surface_);
    const cairo_status_t status = cairo_surface_status(surface_);
    if (status != CAIRO_STATUS_SUCCESS) {
      throw ConfigError(std::string("cannot write the PDF report: ") +
                        cairo_status_to_string(status));
    }
  }

  double y() const { return y_; }
  void Skip(double points) { y_ += points; }
  // Starts a new page unless `height` points still fit on this one.
  void Ensure(double height) {
    if (y_ + height > kBodyBottom) NewPage();
  }

  void Title(const std::string& title, const std::string& subtitle) {
    Fill(kAccent);
    cairo_rectangle(cr_, kMargin, y_, kBodyWidth, 3);
    cairo_fill(cr_);
    y_ += 26;
    DrawText(kMargin, y_, title, kSans, 20, true, kInk);
    y_ += 18;
    DrawText(kMargin, y_, subtitle, kSans, 10, false, kMuted);
    y_ += 18;
  }

  // `keep` points of what follows stay on the heading's page (a chart, a table's first rows).
  void Heading(const std::string& text, double keep = 60) {
    Ensure(keep + 34);
    y_ += 10;
    DrawText(kMargin, y_ + 11, text, kSans, 12.5, true, kAccent);
    y_ += 16;
    Stroke(kRule, 0.6);
    cairo_move_to(cr_, kMargin, y_);
    cairo_line_to(cr_, kMargin + kBodyWidth, y_);
    cairo_stroke(cr_);
    y_ += 8;
  }

  void Paragraph(const std::string& text, double size = 8.8, bool bold = false, Rgb color = kInk,
                 double indent = 0) {
    for (const std::string& line : Wrap(text, kBodyWidth - indent, kSans, size, bold)) {
      Ensure(size * 1.45);
      DrawText(kMargin + indent, y_ + size, line, kSans, size, bold, color);
      y_ += size * 1.45;
    }
    y_ += 3;
  }

  void Bullet(const std::string& text) {
    const double size = 8.8;
    std::vector<std::string> lines = Wrap(text, kBodyWidth - 14, kSans, size, false);
    Ensure(size * 1.45 * std::min<size_t>(lines.size(), 3));
    DrawText(kMargin + 3, y_ + size, "\xe2\x80\xa2", kSans, size, false, kInk);
    for (const std::string& line : lines) {
      Ensure(size * 1.45);
      DrawText(kMargin + 14, y_ + size, line, kSans, size, false, kInk);
      y_ += size * 1.45;
    }
    y_ += 2.5;
  }

  // A bordered badge, e.g. the outcome, at the left margin.
  void Badge(const std::string& text, Rgb color) {
    const double size = 10;
    const double width = TextWidth(text, kSans, size, true) + 16;
    Fill(color);
    cairo_rectangle(cr_, kMargin, y_, width, 18);
    cairo_fill(cr_);
    DrawText(kMargin + 8, y_ + 13, text, kSans, size, true, {1, 1, 1});
    y_ += 24;
  }

  // Rows of cells under a shaded header row; cells wrap within their column, numbers align right,
  // and the header is repeated on each page the table spans.
  void Table(const std::vector<Column>& columns, const std::vector<std::vector<std::string>>& rows,
             double size = 7.6) {
    const double pad = 3.5, line = size * 1.35;
    auto draw_header = [&] {
      std::vector<std::vector<std::string>> cells;
      size_t lines = 1;
      for (const Column& c : columns) {
        cells.push_back(Wrap(c.title, c.width - 2 * pad, kSans, size, true));
        lines = std::max(lines, cells.back().size());
      }
      const double height = lines * line + 2 * pad;
      Fill(kHeaderFill);
      cairo_rectangle(cr_, kMargin, y_, kBodyWidth, height);
      cairo_fill(cr_);
      double x = kMargin;
      for (size_t i = 0; i < columns.size(); ++i) {
        DrawCell(x, y_ + pad, columns[i], cells[i], size, true, line, kInk);
        x += columns[i].width;
      }
      y_ += height;
    };
    Ensure(line * 3 + 4 * pad);
    draw_header();
    bool stripe = false;
    for (const auto& row : rows) {
      std::vector<std::vector<std::string>> cells;
      size_t lines = 1;
      for (size_t i = 0; i < columns.size(); ++i) {
        const std::string& text = i < row.size() ? row[i] : std::string();
        cells.push_back(
            Wrap(text, columns[i].width - 2 * pad, columns[i].mono ? kMono : kSans, size, false));
        lines = std::max(lines, cells.back().size());
      }
      const double height = lines * line + 2 * pad;
      if (y_ + height > kBodyBottom) {
        NewPage();
        draw_header();
      }
      if (stripe) {
        Fill(kStripe);
        cairo_rectangle(cr_, kMargin, y_, kBodyWidth, height);
        cairo_fill(cr_);
      }
      stripe = !stripe;
      double x = kMargin;
      for (size_t i = 0; i < columns.size(); ++i) {
        DrawCell(x, y_ + pad, columns[i], cells[i], size, false, line, kInk);
        x += columns[i].width;
      }
      y_ += height;
      Stroke(kRule, 0.4);
      cairo_move_to(cr_, kMargin, y_);
      cairo_line_to(cr_, kMargin + kBodyWidth, y_);
      cairo_stroke(cr_);
    }
    y_ += 8;
  }

  // A two-column table of labels and values.
  void Facts(const std::vector<std::pair<std::string, std::string>>& facts) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& [label, value] : facts) rows.push_back({label, value});
    TableNoHeader({{"", 150}, {"", kBodyWidth - 150}}, rows);
  }

  // Rows re-encrypted over time: one cumulative line per stage, time on x, rows on y.
  void ProgressChart(const std::vector<StageProgress>& progress,
                     const std::map<int, std::string>& labels) {
    const double height = 230;
    Ensure(height + 40);
    const double left = kMargin + 58, right = kMargin + kBodyWidth - 8;
    const double top = y_ + 10, bottom = y_ + height - 52;
    double max_seconds = 0;
    int64_t max_rows = 0;
    for (const auto& s : progress) {
      for (const auto& p : s.points) {
        max_seconds = std::max(max_seconds, p.seconds);
        max_rows = std::max(max_rows, p.rows);
      }
    }
    const bool minutes = max_seconds > 600;
    const double unit = minutes ? 60 : 1;
    const double x_step = NiceStep(std::max(max_seconds / unit, 1.0), 6);
    const double x_max = std::ceil(std::max(max_seconds / unit, 1.0) / x_step) * x_step;
    const double y_step = NiceStep(std::max<double>(max_rows, 1), 5);
    const double y_max = std::ceil(std::max<double>(max_rows, 1) / y_step) * y_step;
    auto px = [&](double seconds) { return left + (seconds / unit) / x_max * (right - left); };
    auto py = [&](double rows) { return bottom - rows / y_max * (bottom - top); };

    Axes(left, right, top, bottom, x_step, x_max, y_step, y_max, false);
    AxisTitles(
        left, right, top, bottom,
        minutes ? "time since the job started (minutes)" : "time since the job started (seconds)",
        "rows re-encrypted (cumulative)");

    size_t series = 0;
    double legend_x = left, legend_y = bottom + 38;
    for (const auto& s : progress) {
      const Rgb color = kSeries[series++ % (sizeof(kSeries) / sizeof(kSeries[0]))];
      if (s.points.empty()) continue;
      Stroke(color, 1.6);
      cairo_move_to(cr_, px(s.points.front().seconds), py(0));
      for (const auto& p : s.points) cairo_line_to(cr_, px(p.seconds), py(double(p.rows)));
      cairo_stroke(cr_);
      Fill(color);
      cairo_arc(cr_, px(s.points.back().seconds), py(double(s.points.back().rows)), 2.2, 0,
                2 * M_PI);
      cairo_fill(cr_);
      auto it = labels.find(s.stage_no);
      const std::string label =
          (it == labels.end() ? "stage " + std::to_string(s.stage_no) : it->second) + ": " +
          std::to_string(s.points.back().rows) + " rows";
      const double width = TextWidth(label, kSans, 7.2, false) + 26;
      if (legend_x + width > right) {
        legend_x = left;
        legend_y += 11;
      }
      Fill(color);
      cairo_rectangle(cr_, legend_x, legend_y - 5.5, 12, 5);
      cairo_fill(cr_);
      DrawText(legend_x + 15, legend_y, label, kSans, 7.2, false, kInk);
      legend_x += width;
    }
    if (progress.empty()) {
      DrawText(left + 10, top + 20, "no batch of this job completed", kSans, 8.5, false, kMuted);
    }
    y_ = legend_y + 12;
  }

  // Each gate's decrypt error rate as a bar, against the job's threshold (dashed line).
  void GateChart(const std::vector<std::pair<std::string, double>>& gates, double threshold,
                 const std::vector<bool>& passed) {
    const double height = 200;
    Ensure(height + 20);
    const double left = kMargin + 58, right = kMargin + kBodyWidth - 8;
    const double top = y_ + 10, bottom = y_ + height - 46;
    double max_rate = threshold;
    for (const auto& g : gates) max_rate = std::max(max_rate, g.second);
    const double y_step = NiceStep(max_rate * 100 * 1.25, 5);
    const double y_max = std::ceil(max_rate * 100 * 1.25 / y_step) * y_step;
    auto py = [&](double rate) { return bottom - rate * 100 / y_max * (bottom - top); };
    Axes(left, right, top, bottom, 0, 0, y_step, y_max, true);
    AxisTitles(left, right, top, bottom, "verification gate", "decrypt error rate (%)");

    const double slot = gates.empty() ? 0 : (right - left) / double(gates.size());
    const double bar = std::min(46.0, slot * 0.55);
    for (size_t i = 0; i < gates.size(); ++i) {
      const double cx = left + slot * (i + 0.5);
      const double top_of_bar = py(gates[i].second);
      const Rgb color = passed[i] ? kGood : kBad;
      Fill(color);
      cairo_rectangle(cr_, cx - bar / 2, top_of_bar, bar, bottom - top_of_bar);
      cairo_fill(cr_);
      Stroke(color, 1.2);
      cairo_move_to(cr_, cx - bar / 2, bottom);
      cairo_line_to(cr_, cx + bar / 2, bottom);
      cairo_stroke(cr_);
      const std::string value = FormatRate(gates[i].second);
      DrawText(cx - TextWidth(value, kSans, 7.2, true) / 2, top_of_bar - 3, value, kSans, 7.2, true,
               kInk);
      std::vector<std::string> label = Wrap(gates[i].first, slot - 4, kSans, 7, false);
      for (size_t l = 0; l < label.size() && l < 2; ++l) {
        DrawText(cx - TextWidth(label[l], kSans, 7, false) / 2, bottom + 10 + 8.5 * l, label[l],
                 kSans, 7, false, kInk);
      }
    }
    Stroke(kBad, 1);
    const double dash[] = {4, 3};
    cairo_set_dash(cr_, dash, 2, 0);
    cairo_move_to(cr_, left, py(threshold));
    cairo_line_to(cr_, right, py(threshold));
    cairo_stroke(cr_);
    cairo_set_dash(cr_, nullptr, 0, 0);
    const std::string label = "threshold " + FormatRate(threshold);
    DrawText(right - TextWidth(label, kSans, 7.2, true) - 2, py(threshold) - 3, label, kSans, 7.2,
             true, kBad);
    if (gates.empty()) {
      DrawText(left + 10, top + 20, "no gate ran", kSans, 8.5, false, kMuted);
    }
    y_ = bottom + 40;
  }

 private:
  void TableNoHeader(const std::vector<Column>& columns,
                     const std::vector<std::vector<std::string>>& rows) {
    const double size = 8.2, pad = 3, line = size * 1.35;
    for (const auto& row : rows) {
      std::vector<std::vector<std::string>> cells;
      size_t lines = 1;
      for (size_t i = 0; i < columns.size(); ++i) {
        cells.push_back(Wrap(row[i], columns[i].width - 2 * pad, kSans, size, i == 0));
        lines = std::max(lines, cells.back().size());
      }
      const double height = lines * line + 2 * pad;
      Ensure(height);
      double x = kMargin;
      for (size_t i = 0; i < columns.size(); ++i) {
        DrawCell(x, y_ + pad, columns[i], cells[i], size, i == 0, line, i == 0 ? kMuted : kInk);
        x += columns[i].width;
      }
      y_ += height;
      Stroke(kRule, 0.3);
      cairo_move_to(cr_, kMargin, y_);
      cairo_line_to(cr_, kMargin + kBodyWidth, y_);
      cairo_stroke(cr_);
    }
    y_ += 8;
  }

  void Axes(double left, double right, double top, double bottom, double x_step, double x_max,
            double y_step, double y_max, bool y_percent) {
    Stroke(kRule, 0.4);
    for (double v = 0; v <= y_max + y_step / 2; v += y_step) {
      const double yy = bottom - v / y_max * (bottom - top);
      cairo_move_to(cr_, left, yy);
      cairo_line_to(cr_, right, yy);
      cairo_stroke(cr_);
      std::string label = TickLabel(v, y_step) + (y_percent ? "%" : "");
      DrawText(left - 5 - TextWidth(label, kSans, 7, false), yy + 2.5, label, kSans, 7, false,
               kMuted);
    }
    if (x_step > 0) {
      for (double v = 0; v <= x_max + x_step / 2; v += x_step) {
        const double xx = left + v / x_max * (right - left);
        Stroke(kRule, 0.4);
        cairo_move_to(cr_, xx, bottom);
        cairo_line_to(cr_, xx, bottom + 3);
        cairo_stroke(cr_);
        std::string label = TickLabel(v, x_step);
        DrawText(xx - TextWidth(label, kSans, 7, false) / 2, bottom + 11, label, kSans, 7, false,
                 kMuted);
      }
    }
    Stroke(kInk, 0.8);
    cairo_move_to(cr_, left, top);
    cairo_line_to(cr_, left, bottom);
    cairo_line_to(cr_, right, bottom);
    cairo_stroke(cr_);
  }

  void AxisTitles(double left, double right, double top, double bottom, const std::string& x,
                  const std::string& y) {
    DrawText((left + right) / 2 - TextWidth(x, kSans, 7.8, true) / 2, bottom + 24, x, kSans, 7.8,
             true, kInk);
    cairo_save(cr_);
    cairo_translate(cr_, left - 42, (top + bottom) / 2 + TextWidth(y, kSans, 7.8, true) / 2);
    cairo_rotate(cr_, -M_PI / 2);
    DrawText(0, 0, y, kSans, 7.8, true, kInk);
    cairo_restore(cr_);
  }

  void DrawCell(double x, double top, const Column& column, const std::vector<std::string>& lines,
                double size, bool bold, double line_height, Rgb color) {
    const char* font = column.mono && !bold ? kMono : kSans;
    for (size_t l = 0; l < lines.size(); ++l) {
      double tx = x + 3.5;
      if (column.right) tx = x + column.width - 3.5 - TextWidth(lines[l], font, size, bold);
      DrawText(tx, top + size + l * line_height, lines[l], font, size, bold, color);
    }
  }

  void NewPage() {
    Footer();
    cairo_show_page(cr_);
    ++page_;
    y_ = kMargin;
  }

  void Footer() {
    const double yy = kPageHeight - 34;
    Stroke(kRule, 0.5);
    cairo_move_to(cr_, kMargin, yy - 10);
    cairo_line_to(cr_, kMargin + kBodyWidth, yy - 10);
    cairo_stroke(cr_);
    DrawText(kMargin, yy, footer_left_, kSans, 7, false, kMuted);
    const std::string right = footer_right_ + "   page " + std::to_string(page_);
    DrawText(kMargin + kBodyWidth - TextWidth(right, kSans, 7, false), yy, right, kSans, 7, false,
             kMuted);
  }

  void Font(const char* family, double size, bool bold) {
    cairo_select_font_face(cr_, family, CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr_, size);
  }

  double TextWidth(const std::string& text, const char* family, double size, bool bold) {
    Font(family, size, bold);
    cairo_text_extents_t extents;
    cairo_text_extents(cr_, text.c_str(), &extents);
    return extents.x_advance;
  }

  void DrawText(double x, double baseline, const std::string& text, const char* family, double size,
                bool bold, Rgb color) {
    Font(family, size, bold);
    Fill(color);
    cairo_move_to(cr_, x, baseline);
    cairo_show_text(cr_, text.c_str());
  }

  // Breaks `text` at spaces into lines no wider than `width`; a word wider than a line (a hash,
  // a KMS key reference) is broken between characters rather than cut.
  std::vector<std::string> Wrap(const std::string& text, double width, const char* family,
                                double size, bool bold) {
    std::vector<std::string> lines;
    std::string current;
    auto fits = [&](const std::string& s) { return TextWidth(s, family, size, bold) <= width; };
    std::istringstream words(text);
    std::string word;
    while (words >> word) {
      const std::string candidate = current.empty() ? word : current + " " + word;
      if (fits(candidate)) {
        current = candidate;
        continue;
      }
      if (!current.empty()) lines.push_back(current);
      current.clear();
      while (!fits(word)) {
        size_t n = 1;
        // Whole UTF-8 sequences only: continuation bytes stay with their lead byte.
        while (n < word.size() && fits(word.substr(0, n + 1))) ++n;
        while (n < word.size() && (static_cast<unsigned char>(word[n]) & 0xC0) == 0x80) ++n;
        lines.push_back(word.substr(0, n));
        word = word.substr(n);
      }
      current = word;
    }
    if (!current.empty() || lines.empty()) lines.push_back(current);
    return lines;
  }

  void Fill(Rgb c) { cairo_set_source_rgb(cr_, c.r, c.g, c.b); }
  void Stroke(Rgb c, double width) {
    cairo_set_source_rgb(cr_, c.r, c.g, c.b);
    cairo_set_line_width(cr_, width);
  }

  cairo_surface_t* surface_ = nullptr;
  cairo_t* cr_ = nullptr;
  double y_ = 0;
  int page_ = 1;
  std::string footer_left_;
  std::string footer_right_;
};

}  // namespace

std::string FormatRate(double rate) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3f%%", rate * 100);
  return buffer;
}

std::vector<StageProgress> ReadStageProgress(pqxx::transaction_base& txn, int64_t job) {
  const pqxx::result rows = txn.exec_params(db::Query("ops/pdf_report.stage_progress"), job);
  std::vector<StageProgress> out;
  for (const auto& row : rows) {
    const int stage = row["stage_no"].as<int>();
    if (out.empty() || out.back().stage_no != stage) out.push_back({stage, {}});
    const int64_t before = out.back().points.empty() ? 0 : out.back().points.back().rows;
    out.back().points.push_back(
        {std::max(0.0, row["seconds"].as<double>()), before + row["rows"].as<int64_t>()});
  }
  return out;
}

void WritePdfReport(const json& r, const std::vector<StageProgress>& progress, std::FILE* out) {
  const json& job = At(r, "job");
  const std::string job_id = Str(At(job, "job_id"));
  std::string columns;
  for (const auto& c : Array(At(job, "columns"))) columns += (columns.empty() ? "" : ", ") + Str(c);
  const std::string target = Str(At(job, "target")) + " (" + columns + ")";

  Document doc(out, "rekey compliance report \xc2\xb7 job " + job_id + " \xc2\xb7 " + target,
               "generated " + When(At(r, "generated_at")));
  doc.SetMetadata("Key rotation report: job " + job_id, "rekey compliance evidence for " + target);

  const std::string outcome = Str(At(r, "outcome"));
  std::string subtitle = "Job " + job_id;
  if (At(job, "name").is_string()) subtitle += " \xc2\xb7 " + Str(At(job, "name"));
  subtitle += " \xc2\xb7 " + target;
  doc.Title("Key rotation report", subtitle);
  if (outcome == "rotated") {
    doc.Badge("OUTCOME: ROTATED", kGood);
  } else if (outcome == "rolled_back") {
    doc.Badge("OUTCOME: ROLLED BACK", kWarn);
  } else {
    doc.Badge("OUTCOME: " + Str(At(job, "state")), kMuted);
  }
  doc.Paragraph(
      "This report is generated by rekey from the job's own records in the database "
      "(rekey.job_report) and is stored, with the SHA-256 of its JSON, in rekey.reports. "
      "Key material is never part of it: keys are named by id and by the KMS key that wraps "
      "them. Times are UTC unless an offset is shown.",
      8.3, false, kMuted);

  doc.Heading("1. Job");
  std::vector<std::pair<std::string, std::string>> facts = {
      {"Job id", job_id},
      {"Name", Str(At(job, "name"))},
      {"Target", target},
  };
  if (At(job, "scope").is_object()) {
    facts.push_back({"Scope", Str(At(At(job, "scope"), "column")) + " = " +
                                  Str(At(At(job, "scope"), "value"))});
  }
  std::string plan;
  for (const auto& p : Array(At(job, "stage_plan"))) plan += (plan.empty() ? "" : ", ") + Str(p);
  facts.insert(
      facts.end(),
      {{"Outcome", outcome + " (job state " + Str(At(job, "state")) + ")"},
       {"Stage plan (% of rows)", plan},
       {"Error threshold", Rate(At(job, "error_threshold"))},
       {"Created", When(At(job, "created_at")) + " by " + Str(At(job, "created_by"))},
       {"Started", When(At(job, "started_at"))},
       {"Finished", When(At(job, "finished_at"))},
       {"Duration", Duration(At(job, "duration_seconds"))},
       {"Report generated", When(At(r, "generated_at")) + " by " + Str(At(r, "generated_by"))}});
  if (At(r, "stored_report").is_object()) {
    const json& stored = At(r, "stored_report");
    facts.push_back({"Stored report", "rekey.reports id " + Str(At(stored, "report_id")) +
                                          ", SHA-256 of its JSON " + Str(At(stored, "sha256"))});
  }
  if (At(job, "state_reason").is_string())
    facts.push_back({"State reason", Str(At(job, "state_reason"))});
  doc.Facts(facts);

  doc.Heading("2. Keys before and after");
  std::vector<std::vector<std::string>> key_rows;
  for (const auto& k : Array(At(r, "keys"))) {
    for (const char* side : {"before", "after"}) {
      const json& key = At(k, side);
      key_rows.push_back({side, Str(At(key, "key_id")), Str(At(key, "scope")),
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
            key_rows);

  doc.Heading("3. Stages");
  std::vector<std::vector<std::string>> stage_rows;
  std::map<int, std::string> stage_labels;
  for (const auto& s : Array(At(r, "stages"))) {
    stage_labels[At(s, "stage_no").get<int>()] = StageLabel(s);
    stage_rows.push_back({Str(At(s, "stage_no")), Str(At(s, "kind")),
                          Str(At(s, "kind")) == "rollout" ? Str(At(s, "percent")) : "-",
                          Str(At(s, "state")), When(At(s, "opened_at")), When(At(s, "finished_at")),
                          Str(At(s, "batches")), Str(At(s, "rows_reencrypted")),
                          Str(At(s, "rows_quarantined"))});
  }
  doc.Table({{"#", 22, true},
             {"kind", 46},
             {"%", 26, true},
             {"state", 50},
             {"opened", 94},
             {"finished", 94},
             {"batches", 41, true},
             {"rows re-encrypted", 64, true},
             {"quaran- tined", 58, true}},
            stage_rows);

  doc.Heading("4. Verification gates and approvals", 150);
  doc.Paragraph(
      "Each stage ends with a gate that decrypts what moved: every row of the canary, a sample of "
      "the later stages. Its error rate is (values that failed to decrypt + values quarantined "
      "in the stage) / (values checked + quarantined); it passes below the threshold. A passed "
      "gate waits for a person's approval unless the job advances on its own after an "
      "observation period.",
      8.3, false, kMuted);
  std::vector<std::vector<std::string>> gate_rows;
  std::vector<std::pair<std::string, double>> gate_bars;
  std::vector<bool> gate_passed;
  double threshold =
      At(job, "error_threshold").is_number() ? At(job, "error_threshold").get<double>() : 0.001;
  for (const auto& s : Array(At(r, "stages"))) {
    const json& gates = Array(At(s, "gates"));
    for (size_t i = 0; i < gates.size(); ++i) {
      const json& g = gates[i];
      const bool passed = At(g, "passed").is_boolean() && At(g, "passed").get<bool>();
      std::string approved_by = Str(At(g, "approved_by"));
      // The last rollout gate opens the sweep by itself; a finished job has no other wait.
      if (At(g, "approved_by").is_null()) approved_by = passed ? "not required" : "-";
      gate_rows.push_back({StageLabel(s) + (gates.size() > 1 ? " #" + std::to_string(i + 1) : ""),
                           passed ? "passed" : "FAILED", Str(At(g, "values_checked")),
                           Str(At(g, "decrypt_errors")), Str(At(g, "quarantined")),
                           Rate(At(g, "error_rate")), Rate(At(g, "threshold")),
                           Str(At(g, "audit_complete")), approved_by, When(At(g, "approved_at"))});
      gate_bars.push_back(
          {StageLabel(s) + (gates.size() > 1 ? " #" + std::to_string(i + 1) : ""),
           At(g, "error_rate").is_number() ? At(g, "error_rate").get<double>() : 0});
      gate_passed.push_back(passed);
    }
  }
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
            gate_rows);

  doc.Heading("5. Rows re-encrypted over time, by stage", 270);
  doc.ProgressChart(progress, stage_labels);
  doc.Paragraph(
      "From the job's rotation.batch.completed audit rows (one per completed batch). A rollback "
      "stage counts the rows it restored to the old key.",
      7.8, false, kMuted);

  doc.Heading("6. Gate error rates against the threshold", 220);
  doc.GateChart(gate_bars, threshold, gate_passed);

  doc.Heading("7. Rows and quarantined values");
  const json& rows = At(r, "rows");
  doc.Facts({{"Rows in scope", Str(At(rows, "total"))},
             {"Re-encrypted", Str(At(rows, "reencrypted"))},
             {"Restored by rollback", Str(At(rows, "restored_by_rollback"))},
             {"Quarantined (left untouched)", Str(At(rows, "quarantined"))},
             {"Decrypt error rate", Rate(At(r, "decrypt_error_rate"))},
             {"Highest gate error rate", Rate(At(r, "max_gate_error_rate"))}});
  const json& by_class = At(At(r, "quarantine"), "by_error_class");
  if (by_class.is_object() && !by_class.empty()) {
    std::vector<std::vector<std::string>> q;
    for (auto it = by_class.begin(); it != by_class.end(); ++it) {
      q.push_back({it.key(), Str(it.value()), QuarantineMeaning(it.key())});
    }
    doc.Table({{"reason (error class)", 90}, {"values", 50, true}, {"meaning and remedy", 355}}, q);
  } else {
    doc.Paragraph("No value was quarantined: every value the job met decrypted.");
  }

  doc.Heading("8. Audit trail");
  const json& audit = At(r, "audit");
  const bool complete = At(audit, "complete").is_boolean() && At(audit, "complete").get<bool>();
  std::string missing;
  for (const auto& b : Array(At(audit, "batches_missing_audit_row"))) {
    missing += (missing.empty() ? "" : ", ") + Str(b);
  }
  std::vector<std::pair<std::string, std::string>> audit_facts = {
      {"Completeness", std::string(complete ? "complete: " : "INCOMPLETE: ") +
                           Str(At(audit, "batches_with_audit_row")) + " of " +
                           Str(At(audit, "batches_done")) +
                           " completed batches have their rotation.batch.completed audit row" +
                           (missing.empty() ? "" : " (missing: batches " + missing + ")")},
      {"Audit events of the job", Str(At(audit, "events")) + ", from " +
                                      When(At(audit, "first_event_at")) + " to " +
                                      When(At(audit, "last_event_at"))}};
  const json& chain = At(r, "audit_chain");
  if (chain.is_object()) {
    const bool intact = At(chain, "intact").is_boolean() && At(chain, "intact").get<bool>();
    audit_facts.push_back({"Hash chain head", Str(At(chain, "head"))});
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
    audit_facts.push_back({"Hash chain verification", verdict});
    audit_facts.push_back({"Verified at", When(At(chain, "verified_at"))});
  }
  doc.Facts(audit_facts);
  if (chain.is_object()) {
    doc.Paragraph(
        "To prove later that the log was not cut back or rewritten, keep this head outside the "
        "database and run: rekey audit verify --expect-head " +
            Str(At(chain, "head")),
        7.8, false, kMuted);
  }

  doc.Heading("9. Plaintext digest check");
  const json& verification = At(r, "verification");
  if (verification.is_object()) {
    std::string per_key;
    const json& by_key = At(verification, "values_by_key");
    if (by_key.is_object()) {
      for (auto it = by_key.begin(); it != by_key.end(); ++it) {
        per_key +=
            (per_key.empty() ? "" : ", ") + std::string("key ") + it.key() + ": " + Str(it.value());
      }
    }
    std::vector<std::pair<std::string, std::string>> v = {
        {"Verified at", When(At(verification, "verified_at"))},
        {"Rows / values decrypted",
         Str(At(verification, "rows")) + " rows, " + Str(At(verification, "values")) + " values"},
        {"Values per key", per_key.empty() ? "-" : per_key},
        {"Values that failed to decrypt", Str(At(verification, "failures"))},
        {"Plaintext SHA-256 now", Str(At(verification, "plaintext_sha256"))}};
    if (At(verification, "plaintext_sha256_before").is_string()) {
      const bool same = At(verification, "plaintext_unchanged").is_boolean() &&
                        At(verification, "plaintext_unchanged").get<bool>();
      v.push_back({"Plaintext SHA-256 before", Str(At(verification, "plaintext_sha256_before"))});
      v.push_back({"Result", same ? "unchanged: the digests are equal, no plaintext changed"
                                  : "CHANGED: the digests differ"});
    }
    doc.Facts(v);
  } else {
    doc.Paragraph(
        "Not run with this report. `rekey report " + job_id +
        " --verify --plaintext-sha256-before HEX` decrypts every value of the target and compares "
        "the digest of all plaintexts with one taken before the rotation (rekey job verify " +
        job_id + " --json).");
  }

  doc.Heading("10. Side effects on the database");
  const json& fx = At(r, "side_effects");
  if (fx.is_object()) {
    const json& c = At(fx, "counters");
    const json& v = At(fx, "vacuum");
    std::string declared;
    for (const char* key :
         {"triggers", "publications", "logical_slots", "foreign_keys", "generated_columns"}) {
      for (const auto& x : Array(At(At(fx, "declared"), key))) {
        declared += (declared.empty() ? "" : ", ") + std::string(key) + " " + Str(At(x, "name"));
      }
    }
    doc.Facts({{"Triggers", At(fx, "triggers").is_string() ? Str(At(fx, "triggers"))
                                                           : "no choice made: they fired"},
               {"Declared before the first batch", declared.empty() ? "nothing" : declared},
               {"Rows rewritten", Str(At(c, "rows_rewritten"))},
               {"Updates (HOT)", Str(At(c, "updates")) + " (" + Str(At(c, "hot_updates")) +
                                     ", share " + Rate(At(c, "hot_share")) + ")"},
               {"Dead tuples created", Str(At(c, "dead_tuples_created"))},
               {"WAL", Str(At(c, "wal_bytes")) + " bytes, " + Str(At(c, "wal_bytes_per_row")) +
                           " bytes per row"},
               {"Table size start / end",
                Str(At(c, "table_bytes_start")) + " / " + Str(At(c, "table_bytes_end")) + " bytes"},
               {"Vacuum after",
                v.is_object() ? Str(At(v, "state")) +
                                    (At(v, "error").is_string() ? ": " + Str(At(v, "error")) : "")
                              : std::string("not run")}});
    doc.Paragraph(
        "The counters are the table's (pg_stat_user_tables) and the WAL position the server's, "
        "read when the job's first batch started and when it finished: anything else that wrote "
        "meanwhile is included.",
        7.8, false, kMuted);
  } else {
    doc.Paragraph("Not recorded: the job predates the side-effect record.");
  }

  doc.Heading("11. Decisions and approvals");
  std::vector<std::vector<std::string>> decisions;
  for (const auto& a : Array(At(r, "approvals"))) {
    std::string details;
    const json& d = At(a, "details");
    if (d.is_object()) {
      for (auto it = d.begin(); it != d.end(); ++it) {
        details += (details.empty() ? "" : ", ") + it.key() + " " + Str(it.value());
      }
    }
    decisions.push_back({When(At(a, "at")), Str(At(a, "action")), Str(At(a, "actor")),
                         Str(At(a, "outcome")), details});
  }
  doc.Table({{"at", 94},
             {"action", 110},
             {"actor (database role)", 80},
             {"outcome", 50},
             {"details", 161}},
            decisions);

  doc.Heading("12. What this report does not prove");
  // What the job checked of the application readers (ops/readers.h): only instances that report.
  const json& readiness = At(r, "reader_readiness");
  doc.Bullet(
      "That every application reader can decrypt values under the new key: only instances "
      "that report as readers (rekey.reader_heartbeat) were checked; " +
      (readiness.is_object() ? Str(At(readiness, "statement"))
                             : std::string("reader readiness was not recorded")) +
      ". Check that each service that reads the column holds the new key before the old "
      "one is retired.");
  if (!verification.is_object()) {
    doc.Bullet(
        "That no plaintext changed: no plaintext digest was compared with this report. The gates "
        "decrypted the canary and samples of later stages, not every value.");
  } else if (!At(verification, "plaintext_sha256_before").is_string()) {
    doc.Bullet(
        "That no plaintext changed: every value decrypted, but no digest from before the rotation "
        "was given to compare with.");
  }
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

  doc.Finish();
}

}  // namespace rekey::ops
