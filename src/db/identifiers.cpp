#include "db/identifiers.h"

namespace rekey::db {

std::string QuoteIdent(std::string_view name) {
  std::string out;
  out.reserve(name.size() + 2);
  out += '"';
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

void AppendTextArrayElement(std::string_view item, std::string* literal) {
  if (literal->size() > 1) *literal += ',';
  *literal += '"';
  for (char c : item) {
    if (c == '"' || c == '\\') *literal += '\\';
    *literal += c;
  }
  *literal += '"';
}

std::string TextArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (const auto& item : items) AppendTextArrayElement(item, &out);
  out += '}';
  return out;
}

}  // namespace rekey::db
