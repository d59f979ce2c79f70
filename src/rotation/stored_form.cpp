#include "rotation/stored_form.h"

#include "db/bytea.h"
#include "db/identifiers.h"

namespace rekey::rotation {
namespace {

// A text literal, E'...' so that neither a quote nor a backslash in it can end it early.
std::string QuoteLiteral(std::string_view text) {
  std::string out = "E'";
  for (char c : text) {
    if (c == '\'' || c == '\\') out += c;
    out += c;
  }
  return out + "'";
}

std::string ColumnSql(const jobs::JobColumn& column) {
  return "t." + db::QuoteIdent(column.name);
}

std::string PathSql(const jobs::JobColumn& column) {
  return QuoteLiteral(db::TextArrayLiteral(column.json_path)) + "::text[]";
}

}  // namespace

std::string StoredValueSql(const jobs::JobColumn& column) {
  if (column.json_path.empty()) return ColumnSql(column);
  return "(" + ColumnSql(column) + " #>> " + PathSql(column) + ")";
}

std::string JsonKindSql(const jobs::JobColumn& column) {
  if (column.json_path.empty()) return "";
  const std::string c = ColumnSql(column);
  return "CASE WHEN " + c + " IS NOT NULL THEN coalesce(jsonb_typeof(" + c + " #> " +
         PathSql(column) + "), 'missing') END";
}

std::string ValueHeadSql(const jobs::JobColumn& column) {
  if (!IsText(column)) return "substring(" + ColumnSql(column) + " from 1 for 5)";
  return "rekey.encoded_head(" + StoredValueSql(column) + ", '" +
         std::string(crypto::TextEncodingName(column.encoding)) + "')";
}

std::string HasValueSql(const jobs::JobColumn& column) {
  return db::QuoteIdent(column.name) + " IS NOT NULL";
}

std::string SetValueSql(const jobs::JobColumn& column, const std::string& new_value) {
  const std::string c = db::QuoteIdent(column.name);
  if (column.json_path.empty()) return c + " = coalesce(" + new_value + ", t." + c + ")";
  // jsonb_set on the row as locked: the application's other fields are kept as they are.
  return c + " = CASE WHEN " + new_value + " IS NULL THEN t." + c + " ELSE jsonb_set(t." + c +
         ", " + PathSql(column) + ", to_jsonb(" + new_value + ")) END";
}

std::string_view NewValueType(const jobs::JobColumn& column) {
  return IsText(column) || column.codec == crypto::CodecKind::kVaultTransit ||
                 column.codec == crypto::CodecKind::kRails ||
                 column.codec == crypto::CodecKind::kCloak
             ? "text"
             : "bytea";
}

std::string_view ReadStoredValue(const jobs::JobColumn& column, const pqxx::field& field,
                                 const pqxx::field* json_kind, Bytes* out,
                                 crypto::TextStyle* style) {
  if (!column.json_path.empty() && json_kind && !json_kind->is_null()) {
    const std::string_view kind(json_kind->c_str(), json_kind->size());
    if (kind == "missing") return kJsonPathMissingClass;
    if (kind != "string") return kJsonNotStringClass;
  }
  if (column.codec == crypto::CodecKind::kCloak) {
    // A cloak string is its own text format (crypto/cloak.h): its codec reads it as stored.
    out->assign(field.c_str(), field.c_str() + field.size());
    return "";
  }
  if (!IsText(column)) {
    db::ReadBytea(field, out);
    return "";
  }
  if (!crypto::DecodeText(column.encoding, std::string_view(field.c_str(), field.size()), out,
                          style)) {
    return crypto::kBadEncodingClass;
  }
  return "";
}

void WriteStoredValue(const jobs::JobColumn& column, const Bytes& value, crypto::TextStyle style,
                      std::string* out) {
  crypto::EncodeText(column.encoding, value.data(), value.size(), style, out);
}

}  // namespace rekey::rotation
