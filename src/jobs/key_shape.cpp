#include "jobs/key_shape.h"

#include <utility>

#include "common/error.h"
#include "db/identifiers.h"

namespace rekey::jobs {

KeyShape::KeyShape(std::vector<std::string> columns, std::vector<std::string> types,
                   bool canonical_text)
    : columns_(std::move(columns)), types_(std::move(types)), canonical_text_(canonical_text) {
  if (columns_.empty() || columns_.size() != types_.size()) {
    throw StateError("a job's key needs one type per column and at least one column");
  }
}

std::string KeyShape::ColumnText(size_t i, const std::string& alias) const {
  const std::string column = alias + "." + db::QuoteIdent(columns_[i]);
  // As rekey.key_column_text_sql: only date and timestamptz print differently under another
  // DateStyle or TimeZone.
  if (canonical_text_ && types_[i] == "date") return "rekey.date_key_text(" + column + ")";
  if (canonical_text_ && types_[i] == "timestamp with time zone") {
    return "rekey.timestamptz_key_text(" + column + ")";
  }
  return column + "::text";
}

std::string KeyShape::Text(const std::string& alias) const {
  if (!composite()) return ColumnText(0, alias);
  std::string text = "'[' || ";
  for (size_t i = 0; i < columns_.size(); ++i) {
    if (i > 0) text += " || ',' || ";
    text += "to_json(" + ColumnText(i, alias) + ")::text";
  }
  return text + " || ']'";
}

std::string KeyShape::Row(const std::string& alias) const {
  if (!composite()) return alias + "." + db::QuoteIdent(columns_[0]);
  return "ROW(" + OrderBy(alias) + ")";
}

std::string KeyShape::OrderBy(const std::string& alias) const {
  std::string list;
  for (const auto& column : columns_) {
    if (!list.empty()) list += ", ";
    list += alias + "." + db::QuoteIdent(column);
  }
  return list;
}

std::string KeyShape::Elements(const std::string& text) const {
  std::string list;
  for (size_t i = 0; i < types_.size(); ++i) {
    if (i > 0) list += ", ";
    list += "((" + text + ")::jsonb ->> " + std::to_string(i) + ")::" + types_[i];
  }
  return list;
}

std::string KeyShape::Bound(const std::string& text) const {
  if (!composite()) return text + "::" + types_[0];
  return "ROW(" + Elements(text) + ")";
}

std::string KeyShape::LeadingBound(const std::string& alias, const std::string& op,
                                   const std::string& text) const {
  if (!composite()) return "";
  return " AND " + alias + "." + db::QuoteIdent(columns_[0]) + " " + op + " ((" + text +
         ")::jsonb ->> 0)::" + types_[0];
}

std::string KeyShape::AnyOf(const std::string& alias, const std::string& array_param) const {
  if (!composite()) return Row(alias) + " = ANY (" + array_param + "::" + types_[0] + "[])";
  // A row-value IN over the unnested texts: PostgreSQL splits it into one equality per column,
  // which the key's index serves, where = ANY of an array of records could not use it.
  return Row(alias) + " IN (SELECT " + Elements("k.k") + " FROM unnest(" + array_param +
         "::text[]) AS k(k))";
}

std::string KeyShape::ArrayType() const {
  return (composite() ? std::string("text") : types_[0]) + "[]";
}

}  // namespace rekey::jobs
