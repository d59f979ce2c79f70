// How a job column's values are stored (jobs::JobColumn::encoding and json_path; docs/FORMAT.md,
// "Stored forms"), for every statement and reader of the column: the batch's SELECT and UPDATE
// (rotation/batch_statements.h), the batch rotator, the verifier (and so the gates).
//
// A value in a bytea column is read as it is. A text value is decoded here, strictly
// (crypto/text_encoding.h), and its new form written in the same encoding and style. A value in a
// jsonb document is the string at the column's JSON path: the SELECT reads it with #>> and says
// what kind of JSON value the path holds (a string, something else, nothing), and the UPDATE
// writes it back with jsonb_set on the row as it is locked, so every other field of the document
// stays as the application last wrote it.
//
// The rows a value cannot be read from are expected outcomes, quarantined with a stable error
// class (rekey.row_failures.error_class; never renamed): "bad_encoding" (crypto/text_encoding.h),
// "json_path_missing" (the document has nothing at the path: it is a scalar, an array, or an
// object without the key) and "json_not_string" (the path holds a number, object, array, boolean
// or null).
#pragma once

#include <string>
#include <string_view>

#include "common/bytes.h"
#include "crypto/text_encoding.h"
#include "crypto/value_rewriter.h"
#include "jobs/job.h"

namespace rekey::rotation {

inline constexpr std::string_view kJsonPathMissingClass = "json_path_missing";
inline constexpr std::string_view kJsonNotStringClass = "json_not_string";

// SQL over the table aliased `t`, each a small named piece.
// The expression of the stored value: t."c" (bytea or text), or the text at the JSON path.
std::string StoredValueSql(const jobs::JobColumn& column);
// For a JSON column: the kind of JSON value at its path, 'missing' when there is none, NULL when
// the document itself is NULL; "" for any other column.
std::string JsonKindSql(const jobs::JobColumn& column);
// The first five bytes of the binary value, to compare with Tink prefixes; NULL where a text
// value's head is not of its encoding (rekey.encoded_head).
std::string ValueHeadSql(const jobs::JobColumn& column);
// "The row holds a value here": the column is not NULL (a JSON column: the document).
std::string HasValueSql(const jobs::JobColumn& column);
// The SET item writing `new_value` (an expression, NULL to keep the stored value) into the column.
std::string SetValueSql(const jobs::JobColumn& column, const std::string& new_value);
// The element type of the UPDATE's array of new values: "bytea" or "text".
std::string_view NewValueType(const jobs::JobColumn& column);

// Reads one non-NULL stored value of `column` as its codec's rewriter takes it, from `field`: the
// value's bytes in a binary result (db/binary_result.h: a bytea's bytes, a text's characters).
// `json_kind` is the JsonKindSql field (ignored for other columns); `stored_text` says the
// rewriter reads the column's text as stored (crypto::ValueRewriter::reads_stored_text: no
// decoding, no JSON kind check, as the batch path has always done for Transit and Rails).
//
// Returns "" and points value->data/size at the value: into `field` where the stored form is the
// value itself (bytea, cloak strings, stored text), else at *decoded, which holds the decoded
// bytes (and *style the text's style). Either stays valid while `field`'s result and *decoded do,
// and the call copies nothing it does not decode. Otherwise returns the value's error class
// (header comment) and leaves *value as it was.
std::string_view ReadStoredValue(const jobs::JobColumn& column, bool stored_text,
                                 std::string_view field, std::string_view json_kind, Bytes* decoded,
                                 crypto::TextStyle* style, crypto::StoredValue* value);

// The stored form of the binary `value`, in the column's encoding and `style`, into *out.
void WriteStoredValue(const jobs::JobColumn& column, const Bytes& value, crypto::TextStyle style,
                      std::string* out);

// Whether the column's values are text (a text encoding, in a text column or a JSON document).
inline bool IsText(const jobs::JobColumn& column) {
  return column.encoding != crypto::TextEncoding::kBytea;
}

}  // namespace rekey::rotation
