// Associated-data templates: bind each ciphertext to where it is stored, so a value copied to
// another row, column or table fails to authenticate instead of decrypting.
//
// Grammar (docs/FORMAT.md): literal text with the placeholders {schema}, {table}, {column} and
// {pk}; "{{" and "}}" stand for literal braces. Any other text in braces, or an unmatched brace,
// is rejected when the template is compiled. Rendering substitutes the identifiers as they appear
// in the catalog (unquoted, case preserved) and the primary key's PostgreSQL text output
// (pk::text); substituted values are never re-scanned for placeholders. The rendered string's
// UTF-8 bytes are the GCM associated data. An empty template means empty associated data.
//
// Example: "{schema}.{table}.{column}:{pk}" renders as "public.payment_methods.token:42".
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace rekey::crypto {

// Immutable after Compile; concurrent Render calls from several threads are safe.
class AssociatedDataTemplate {
 public:
  AssociatedDataTemplate() = default;  // empty: no associated data

  // Throws ConfigError naming the offending placeholder or brace and its offset.
  static AssociatedDataTemplate Compile(std::string_view text);

  // True iff every rendering is the empty string (no text at all, e.g. the default template).
  bool empty() const { return parts_.empty(); }
  // True iff the template contains {pk}, i.e. the associated data differs per row.
  bool uses_pk() const { return uses_pk_; }
  // The template text as given to Compile ("" for the default template).
  const std::string& text() const { return text_; }

  // Replaces *out with the rendered bytes. Cheap: precompiled parts, no allocation when `out`
  // already has the capacity (reuse one string per thread).
  void Render(std::string_view schema, std::string_view table, std::string_view column,
              std::string_view pk_text, std::string* out) const;

 private:
  enum class PartKind { kLiteral, kSchema, kTable, kColumn, kPk };
  struct Part {
    PartKind kind;
    std::string literal;  // only for kLiteral
  };

  std::string text_;
  std::vector<Part> parts_;
  bool uses_pk_ = false;
};

}  // namespace rekey::crypto
