#include "ops/pdf_document.h"

#include <cairo-pdf.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "common/error.h"

namespace rekey::ops {

std::string FormatRate(double rate) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3f%%", rate * 100);
  return buffer;
}

namespace pdf {
namespace {

using nlohmann::json;

// A4 portrait in points; the body leaves room for the footer.
constexpr double kPageWidth = 595.276;
constexpr double kPageHeight = 841.89;
constexpr double kMargin = 50;
constexpr double kBodyBottom = kPageHeight - 62;

const char* const kSans = "DejaVu Sans";
const char* const kMono = "DejaVu Sans Mono";

constexpr Rgb kRule{0.78, 0.80, 0.83};
constexpr Rgb kHeaderFill{0.91, 0.93, 0.96};
constexpr Rgb kStripe{0.97, 0.975, 0.98};
constexpr Rgb kAccent{0.13, 0.29, 0.53};
// One colour per stage series, distinguishable in print and by colour-blind readers (Okabe-Ito).
const Rgb kSeries[] = {{0.00, 0.45, 0.70}, {0.90, 0.62, 0.00}, {0.00, 0.62, 0.45},
                       {0.80, 0.47, 0.65}, {0.34, 0.71, 0.91}, {0.84, 0.37, 0.00},
                       {0.94, 0.89, 0.26}, {0.00, 0.00, 0.00}};

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

cairo_status_t WriteToFile(void* closure, const unsigned char* data, unsigned int length) {
  auto* out = static_cast<std::FILE*>(closure);
  return std::fwrite(data, 1, length, out) == length ? CAIRO_STATUS_SUCCESS
                                                     : CAIRO_STATUS_WRITE_ERROR;
}

}  // namespace

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

// Any offset but UTC's is kept, so the one rule "times are UTC unless an offset is shown" holds.
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

Document::Document(std::FILE* out, std::string footer_left, std::string footer_right)
    : footer_left_(std::move(footer_left)), footer_right_(std::move(footer_right)) {
  surface_ = cairo_pdf_surface_create_for_stream(WriteToFile, out, kPageWidth, kPageHeight);
  cr_ = cairo_create(surface_);
  y_ = kMargin;
}

Document::~Document() {
  cairo_destroy(cr_);
  cairo_surface_destroy(surface_);
}

void Document::SetMetadata(const std::string& title, const std::string& subject) {
  cairo_pdf_surface_set_metadata(surface_, CAIRO_PDF_METADATA_TITLE, title.c_str());
  cairo_pdf_surface_set_metadata(surface_, CAIRO_PDF_METADATA_SUBJECT, subject.c_str());
  cairo_pdf_surface_set_metadata(surface_, CAIRO_PDF_METADATA_CREATOR, "rekey report");
}

void Document::Finish() {
  Footer();
  cairo_show_page(cr_);
  cairo_surface_finish(surface_);
  const cairo_status_t status = cairo_surface_status(surface_);
  if (status != CAIRO_STATUS_SUCCESS) {
    throw ConfigError(std::string("cannot write the PDF report: ") +
                      cairo_status_to_string(status));
  }
}

void Document::Ensure(double height) {
  if (y_ + height > kBodyBottom) NewPage();
}

void Document::Title(const std::string& title, const std::string& subtitle) {
  Fill(kAccent);
  cairo_rectangle(cr_, kMargin, y_, kBodyWidth, 3);
  cairo_fill(cr_);
  y_ += 26;
  DrawText(kMargin, y_, title, kSans, 20, true, kInk);
  y_ += 18;
  DrawText(kMargin, y_, subtitle, kSans, 10, false, kMuted);
  y_ += 18;
}

void Document::Heading(const std::string& text, double keep) {
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

void Document::Paragraph(const std::string& text, double size, bool bold, Rgb color,
                         double indent) {
  for (const std::string& line : Wrap(text, kBodyWidth - indent, kSans, size, bold)) {
    Ensure(size * 1.45);
    DrawText(kMargin + indent, y_ + size, line, kSans, size, bold, color);
    y_ += size * 1.45;
  }
  y_ += 3;
}

void Document::Bullet(const std::string& text) {
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

void Document::Badge(const std::string& text, Rgb color) {
  const double size = 10;
  const double width = TextWidth(text, kSans, size, true) + 16;
  Fill(color);
  cairo_rectangle(cr_, kMargin, y_, width, 18);
  cairo_fill(cr_);
  DrawText(kMargin + 8, y_ + 13, text, kSans, size, true, {1, 1, 1});
  y_ += 24;
}

void Document::Table(const std::vector<Column>& columns,
                     const std::vector<std::vector<std::string>>& rows, double size) {
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

void Document::Facts(const std::vector<std::pair<std::string, std::string>>& facts) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& [label, value] : facts) rows.push_back({label, value});
  TableNoHeader({{"", 150}, {"", kBodyWidth - 150}}, rows);
}

void Document::ProgressChart(const std::vector<ChartSeries>& progress, const std::string& origin,
                             const std::string& empty) {
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
  AxisTitles(left, right, top, bottom,
             "time since " + origin + (minutes ? " (minutes)" : " (seconds)"),
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
    cairo_arc(cr_, px(s.points.back().seconds), py(double(s.points.back().rows)), 2.2, 0, 2 * M_PI);
    cairo_fill(cr_);
    const std::string label = s.label + ": " + std::to_string(s.points.back().rows) + " rows";
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
    DrawText(left + 10, top + 20, empty, kSans, 8.5, false, kMuted);
  }
  y_ = legend_y + 12;
}

void Document::GateChart(const std::vector<std::pair<std::string, double>>& gates, double threshold,
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

void Document::TableNoHeader(const std::vector<Column>& columns,
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

void Document::Axes(double left, double right, double top, double bottom, double x_step,
                    double x_max, double y_step, double y_max, bool y_percent) {
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

void Document::AxisTitles(double left, double right, double top, double bottom,
                          const std::string& x, const std::string& y) {
  DrawText((left + right) / 2 - TextWidth(x, kSans, 7.8, true) / 2, bottom + 24, x, kSans, 7.8,
           true, kInk);
  cairo_save(cr_);
  cairo_translate(cr_, left - 42, (top + bottom) / 2 + TextWidth(y, kSans, 7.8, true) / 2);
  cairo_rotate(cr_, -M_PI / 2);
  DrawText(0, 0, y, kSans, 7.8, true, kInk);
  cairo_restore(cr_);
}

void Document::DrawCell(double x, double top, const Column& column,
                        const std::vector<std::string>& lines, double size, bool bold,
                        double line_height, Rgb color) {
  const char* font = column.mono && !bold ? kMono : kSans;
  for (size_t l = 0; l < lines.size(); ++l) {
    double tx = x + 3.5;
    if (column.right) tx = x + column.width - 3.5 - TextWidth(lines[l], font, size, bold);
    DrawText(tx, top + size + l * line_height, lines[l], font, size, bold, color);
  }
}

void Document::NewPage() {
  Footer();
  cairo_show_page(cr_);
  ++page_;
  y_ = kMargin;
}

void Document::Footer() {
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

void Document::Font(const char* family, double size, bool bold) {
  cairo_select_font_face(cr_, family, CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr_, size);
}

double Document::TextWidth(const std::string& text, const char* family, double size, bool bold) {
  Font(family, size, bold);
  cairo_text_extents_t extents;
  cairo_text_extents(cr_, text.c_str(), &extents);
  return extents.x_advance;
}

void Document::DrawText(double x, double baseline, const std::string& text, const char* family,
                        double size, bool bold, Rgb color) {
  Font(family, size, bold);
  Fill(color);
  cairo_move_to(cr_, x, baseline);
  cairo_show_text(cr_, text.c_str());
}

std::vector<std::string> Document::Wrap(const std::string& text, double width, const char* family,
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

void Document::Stroke(Rgb c, double width) {
  cairo_set_source_rgb(cr_, c.r, c.g, c.b);
  cairo_set_line_width(cr_, width);
}

void Document::Fill(Rgb c) {
  cairo_set_source_rgb(cr_, c.r, c.g, c.b);
}

}  // namespace pdf
}  // namespace rekey::ops
