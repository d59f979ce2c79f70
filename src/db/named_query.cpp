#include "db/named_query.h"

#include <algorithm>
#include <stdexcept>

#include "db/embedded_sql.h"

namespace rekey::db {
namespace {

constexpr std::string_view kNamePrefix = "-- name:";

bool ValidName(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// True iff the block holds something other than blank and comment lines.
bool HasStatement(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = Trim(text.substr(pos, end - pos));
    if (!line.empty() && line.substr(0, 2) != "--") return true;
    pos = end + 1;
  }
  return false;
}

void Finish(std::vector<NamedQuery>& out, std::string_view qualifier) {
  if (out.empty()) return;
  std::string& text = out.back().text;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\r')) {
    text.pop_back();
  }
  if (!HasStatement(text)) {
    throw std::logic_error("query " + out.back().name + " in " + std::string(qualifier) +
                           ".sql has no statement");
  }
}

}  // namespace

std::vector<NamedQuery> ParseQueryFile(std::string_view qualifier, std::string_view content) {
  std::vector<NamedQuery> out;
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string_view::npos) end = content.size();
    std::string_view raw = content.substr(pos, end - pos);
    std::string_view line = Trim(raw);
    pos = end + 1;
    if (line.substr(0, kNamePrefix.size()) == kNamePrefix) {
      Finish(out, qualifier);
      std::string_view name = Trim(line.substr(kNamePrefix.size()));
      if (!ValidName(name)) {
        throw std::logic_error("query file " + std::string(qualifier) + ".sql: bad name '" +
                               std::string(name) + "' (use [a-z0-9_]+)");
      }
      std::string full = std::string(qualifier) + "." + std::string(name);
      for (const NamedQuery& q : out) {
        if (q.name == full) throw std::logic_error("query " + full + " is defined twice");
      }
      out.push_back({std::move(full), {}});
      continue;
    }
    if (out.empty()) {
      // A file may open with comments about all its queries; SQL must belong to a name.
      if (!line.empty() && line.substr(0, 2) != "--") {
        throw std::logic_error("query file " + std::string(qualifier) +
                               ".sql: SQL before the first '-- name:' line");
      }
      continue;
    }
    if (out.back().text.empty() && line.empty()) continue;
    out.back().text.append(raw);
    out.back().text.push_back('\n');
  }
  Finish(out, qualifier);
  return out;
}

const std::vector<NamedQuery>& AllQueries() {
  static const std::vector<NamedQuery> all = [] {
    std::vector<NamedQuery> queries;
    for (const EmbeddedFile& file : EmbeddedQueryFiles()) {
      // file.name is "<folder>/<stem>.sql".
      std::string_view qualifier = file.name.substr(0, file.name.size() - 4);
      for (NamedQuery& q : ParseQueryFile(qualifier, file.content)) {
        queries.push_back(std::move(q));
      }
    }
    std::sort(queries.begin(), queries.end(),
              [](const NamedQuery& a, const NamedQuery& b) { return a.name < b.name; });
    return queries;
  }();
  return all;
}

const std::string& Query(std::string_view name) {
  const std::vector<NamedQuery>& all = AllQueries();
  auto it = std::lower_bound(all.begin(), all.end(), name,
                             [](const NamedQuery& q, std::string_view n) { return q.name < n; });
  if (it == all.end() || it->name != name) {
    throw std::logic_error("no SQL query named " + std::string(name) +
                           " (src/<folder>/queries/<file>.sql, block '-- name: <query>')");
  }
  return it->text;
}

}  // namespace rekey::db
