#include "rotation/stored_form.h"

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

std::string_view ReadStoredValue(const jobs::JobColumn& column, bool stored_text,
                                 std::string_view field, std::string_view json_kind, Bytes* decoded,
                                 crypto::TextStyle* style, crypto::StoredValue* value) {
  if (!stored_text && !column.json_path.empty()) {
    if (json_kind == "missing") return kJsonPathMissingClass;
    if (json_kind != "string") return kJsonNotStringClass;
  }
  // A cloak string is its own text format (crypto/cloak.h), read by its codec as stored.
  if (stored_text || column.codec == crypto::CodecKind::kCloak || !IsText(column)) {
    value->data = reinterpret_cast<const uint8_t*>(field.data());
    value->size = field.size();
    return "";
  }
  if (!crypto::DecodeText(column.encoding, field, decoded, style)) {
    return crypto::kBadEncodingClass;
  }
  value->data = decoded->data();
  value->size = decoded->size();
  return "";
}

void WriteStoredValue(const jobs::JobColumn& column, const Bytes& value, crypto::TextStyle style,
                      std::string* out) {
  crypto::EncodeText(column.encoding, value.data(), value.size(), style, out);
}

}  // namespace rekey::rotation
