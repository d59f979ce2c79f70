// Quoting of SQL identifiers and literals for statements rekey builds from catalog names.
// Identifiers always come from the catalog (checked by rekey.create_job) and are still always
// quoted, so a name like `x"; DROP TABLE t; --` is just an odd name.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace rekey::db {

// "name" with embedded double quotes doubled (PostgreSQL's quote_ident, always quoting).
std::string QuoteIdent(std::string_view name);

// A PostgreSQL array literal of text elements, e.g. {"a","b\"c"}; usable as $n::text[].
std::string TextArrayLiteral(const std::vector<std::string>& items);

// Appends one quoted element to an array literal under construction ("{" so far, or "{...").
void AppendTextArrayElement(std::string_view item, std::string* literal);

}  // namespace rekey::db
