#include "crypto/associated_data.h"

#include "common/error.h"

namespace rekey::crypto {
namespace {

[[noreturn]] void Reject(std::string_view text, size_t offset, const std::string& what) {
  throw ConfigError("associated-data template \"" + std::string(text) + "\": " + what +
                    " at offset " + std::to_string(offset) +
                    "; use {schema}, {table}, {column} or {pk}, and {{ or }} for a literal brace");
}

}  // namespace

AssociatedDataTemplate AssociatedDataTemplate::Compile(std::string_view text) {
  AssociatedDataTemplate t;
  t.text_ = std::string(text);
  std::string literal;
  auto flush = [&] {
    if (!literal.empty()) t.parts_.push_back({PartKind::kLiteral, std::move(literal)});
    literal.clear();
  };
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if ((c == '{' || c == '}') && i + 1 < text.size() && text[i + 1] == c) {
      literal += c;
      i += 2;
    } else if (c == '{') {
      const size_t end = text.find('}', i + 1);
      if (end == std::string_view::npos) Reject(text, i, "unterminated placeholder");
      const std::string_view name = text.substr(i + 1, end - i - 1);
      PartKind kind;
      if (name == "schema") {
        kind = PartKind::kSchema;
      } else if (name == "table") {
        kind = PartKind::kTable;
      } else if (name == "column") {
        kind = PartKind::kColumn;
      } else if (name == "pk") {
        kind = PartKind::kPk;
        t.uses_pk_ = true;
      } else {
        Reject(text, i, "unknown placeholder {" + std::string(name) + "}");
      }
      flush();
      t.parts_.push_back({kind, {}});
      i = end + 1;
    } else if (c == '}') {
      Reject(text, i, "unmatched }");
    } else {
      literal += c;
      ++i;
    }
  }
  flush();
  return t;
}

void AssociatedDataTemplate::Render(std::string_view schema, std::string_view table,
                                    std::string_view column, std::string_view pk_text,
                                    std::string* out) const {
  out->clear();
  for (const Part& part : parts_) {
    switch (part.kind) {
      case PartKind::kLiteral:
        out->append(part.literal);
        break;
      case PartKind::kSchema:
        out->append(schema);
        break;
      case PartKind::kTable:
        out->append(table);
        break;
      case PartKind::kColumn:
        out->append(column);
        break;
      case PartKind::kPk:
        out->append(pk_text);
        break;
    }
  }
}

}  // namespace rekey::crypto
