#include "rotation/batch_statements.h"

#include <utility>

#include "common/bytes.h"
#include "crypto/codec.h"
#include "db/identifiers.h"
#include "jobs/stage_bucket.h"
#include "rotation/stored_form.h"

namespace rekey::rotation {
namespace {

using crypto::CodecKind;

// Appends `value` to a bytea[] literal as "\\x<hex>", in place (no temporary per value).
void AppendByteaElement(const uint8_t* data, size_t size, std::string* literal) {
  static constexpr char kDigits[] = "0123456789abcdef";
  if (literal->size() > 1) *literal += ',';
  *literal += "\"\\\\x";
  size_t at = literal->size();
  literal->resize(at + 2 * size + 1);
  char* out = literal->data() + at;
  for (size_t i = 0; i < size; ++i) {
    *out++ = kDigits[data[i] >> 4];
    *out++ = kDigits[data[i] & 0x0f];
  }
  *out = '"';
}

void AppendListItem(const std::string& item, std::string* list) {
  if (list->size() > 1) *list += ',';
  *list += item;
}

// Replaces every `placeholder` in `text` with `param`.
void Substitute(const std::string& placeholder, const std::string& param, std::string* text) {
  for (size_t at; (at = text->find(placeholder)) != std::string::npos;) {
    text->replace(at, placeholder.size(), param);
  }
}

// "Still under a source key" for one column.
std::string ColumnNeedsWork(const jobs::JobColumn& column, const std::string& key_id) {
  const std::string c = db::QuoteIdent(column.name);
  if (column.codec == CodecKind::kVaultTransit) {
    // Values that are not Transit ciphertexts are selected too, to be quarantined.
    return "coalesce(rekey.transit_version(" + c + "), 0) < ($K::bigint[])[1]";
  }
  if (column.codec == CodecKind::kAwsKms) {
    // A KMS blob names its key only to KMS (rotation/aws_kms_rewriter.h): every value goes to
    // ReEncrypt, and one already under the direction's key is left as it is.
    return "(" + HasValueSql(column) + ")";
  }
  if (column.codec == CodecKind::kFernet || column.codec == CodecKind::kRails ||
      column.codec == CodecKind::kLockbox) {
    // A Fernet token or a Lockbox value names no key, a Rails message at most a reference: every
    // value is tried (trial decryption), and one already under a target key is left as it is.
    return "(" + HasValueSql(column) + ")";
  }
  if (column.codec == CodecKind::kCloak) {
    // A cloak string names its key by fingerprint, a hash of the key's text that SQL cannot
    // compute without the key: every value is read, one under a target key left alone, one not
    // of the format quarantined (docs/FORMAT.md, "cloak").
    return "(" + HasValueSql(column) + ")";
  }
  if (column.codec == CodecKind::kTink && !IsText(column)) {
    // Values whose prefix cannot even be parsed are selected too, so corrupt values are
    // quarantined rather than ignored.
    return "substring(" + c + " from 1 for 5) = ANY($P::bytea[]) OR substring(" + c +
           " from 1 for 1) <> '\\x01'::bytea OR octet_length(" + c + ") < 5";
  }
  if (column.codec == CodecKind::kTink) {
    // As for bytea, in the stored form: a value whose head is not of the column's encoding, or
    // (in a document) no string at the path, is selected too, to be quarantined.
    const std::string head = ValueHeadSql(column);
    std::string unreadable = head + " IS NULL";
    if (!column.json_path.empty()) unreadable += " OR " + JsonKindSql(column) + " <> 'string'";
    return "(" + HasValueSql(column) + " AND (" + unreadable + " OR " + head +
           " = ANY($P::bytea[]) OR substring(" + head + " from 1 for 1) <> '\\x01'::bytea))";
  }
  return "(" + key_id + " = ANY($K::bigint[]) AND " + HasValueSql(column) + ")";
}
// "Column still holds `read`, the stored value the batch read" (NULL: it held none). A JSON
// column compares the string at its path, not the document: the application's writes to the
// document's other fields do not stop the rotation of this one, and jsonb_set keeps them.
std::string SameAsReadSql(const jobs::JobColumn& column, const std::string& read,
                          const std::string& read_digest) {
  const std::string same = StoredValueSql(column) + " IS NOT DISTINCT FROM " + read;
  if (ComparesByDigest(column)) {
    // A large value read is sent back as its SHA-256 alone (kCompareDigestAbove): the stored
    // value must have that digest, which only the value read has (docs/safety.md, invariant 3).
    return "(CASE WHEN " + read_digest + " IS NULL THEN " + same + " ELSE sha256(" +
           StoredValueSql(column) + ") = " + read_digest + " END)";
  }
  if (column.json_path.empty()) return same;
  // #>> reads a number as its text too: the value read was a string, and must still be one.
  return "(" + same + " AND (" + read + " IS NULL OR " + JsonKindSql(column) + " = 'string'))";
}

}  // namespace

bool ComparesByDigest(const jobs::JobColumn& column) {
  return NewValueType(column) == "bytea";
}

Direction MakeDirection(std::map<uint32_t, uint32_t> key_map) {
  Direction d;
  d.key_map = std::move(key_map);
  d.source_prefixes_literal = "{";
  d.source_ids_literal = "{";
  d.target_ids_literal = "{";
  for (const auto& entry : d.key_map) {
    uint8_t prefix[crypto::kTinkPrefixSize] = {crypto::kTinkVersionByte};
    PutUint32BigEndian(entry.first, prefix + 1);
    AppendByteaElement(prefix, sizeof prefix, &d.source_prefixes_literal);
    AppendListItem(std::to_string(entry.first), &d.source_ids_literal);
    AppendListItem(std::to_string(entry.second), &d.target_ids_literal);
  }
  d.source_prefixes_literal += '}';
  d.source_ids_literal += '}';
  d.target_ids_literal += '}';
  return d;
}

BatchStatements::BatchStatements(const jobs::JobDefinition& job,
                                 const std::optional<std::string>& relation)
    : job_(job),
      table_(relation ? *relation : job.QualifiedTable()),
      key_(job.Key()),
      key_id_(job.key_id_column ? db::QuoteIdent(*job.key_id_column) : "") {
  needs_work_ = NeedsWork();
  select_list_ = SelectList();
  update_ = Update();
  still_as_read_ = StillAsRead();
}

std::string BatchStatements::NeedsWork() const {
  std::string needs_work;
  for (const auto& column : job_.columns) {
    if (!needs_work.empty()) needs_work += " OR ";
    needs_work += ColumnNeedsWork(column, key_id_);
  }
  return needs_work;
}

std::string BatchStatements::SelectList() const {
  // Qualified names throughout: an unqualified ORDER BY pk would sort the pk::text output column.
  // Aliases name the fields for BatchRotator, whatever the columns are called.
  std::string list = key_.Text("t") + " AS row_id";
  for (size_t i = 0; i < job_.columns.size(); ++i) {
    list += ", " + StoredValueSql(job_.columns[i]) + " AS c" + std::to_string(i);
    if (!job_.columns[i].json_path.empty()) {
      list += ", " + JsonKindSql(job_.columns[i]) + " AS j" + std::to_string(i);
    }
  }
  if (!key_id_.empty()) list += ", t." + key_id_ + " AS row_key_id";
  return list;
}

std::string BatchStatements::RowSource() const {
  // The new values arrive as parallel arrays, one element per row, unnested side by side in the
  // select list: a ProjectSet streams the rows, where unnest(a, b, c) in FROM would first copy
  // each array into a tuplestore (1.1 ms of a 12 ms UPDATE of 1000 rows). The arrays have the
  // same length, so the set-returning functions advance in step. Beside each column's new
  // values (c<i>) come the values the batch read (o<i>), for the compare-and-swap.
  std::string values = "unnest($1::" + key_.ArrayType() + ") AS row_id";
  int n = 1;
  auto array = [&n](std::string_view type, const std::string& name) {
    return ", unnest($" + std::to_string(++n) + "::" + std::string(type) + "[]) AS " + name;
  };
  for (size_t i = 0; i < job_.columns.size(); ++i) {
    const std::string_view type = NewValueType(job_.columns[i]);
    values += array(type, "c" + std::to_string(i));
    values += array(type, "o" + std::to_string(i));
    if (ComparesByDigest(job_.columns[i])) values += array("bytea", "h" + std::to_string(i));
  }
  if (!key_id_.empty()) {
    values += array("bigint", "kid");
    values += array("bigint", "okid");
  }
  return "(SELECT " + values + ") AS v";
}

std::string BatchStatements::AsRead() const {
  // Rows are matched by primary key, one index descent each. Matching them by ctid instead saves
  // the descent but not a system call: PostgreSQL 15 rescans a TID scan per row of the join and
  // each rescan reads the table's size with lseek. Where system calls trap to the hypervisor that
  // costs more than the descent (UPDATE of 1000 rows 7.8 ms by key, 9.5 ms by ctid on the AMD
  // machine of bench/README.md); the descent costs the same everywhere.
  // A composite key's row_id is its text, read back column by column (a row-value equality that
  // PostgreSQL splits into one per column, served by the key's index).
  std::string where =
      key_.Row("t") + " = " + (key_.composite() ? key_.Bound("v.row_id") : std::string("v.row_id"));
  // The compare-and-swap: every rotated column still holds the value the batch read (a JSON
  // column: the string at its path, whatever the rest of the document), and the key-id column
  // the key id it read. Under READ COMMITTED an UPDATE that meets a row changed since its
  // snapshot re-checks this on the row's newest version, so a row the application wrote after
  // the read is not written, whenever it wrote.
  for (size_t i = 0; i < job_.columns.size(); ++i) {
    where += " AND " +
             SameAsReadSql(job_.columns[i], "v.o" + std::to_string(i), "v.h" + std::to_string(i));
  }
  if (!key_id_.empty()) where += " AND t." + key_id_ + " IS NOT DISTINCT FROM v.okid";
  return where;
}

std::string BatchStatements::Update() const {
  std::string set_list;
  for (size_t i = 0; i < job_.columns.size(); ++i) {
    if (!set_list.empty()) set_list += ", ";
    set_list += SetValueSql(job_.columns[i], "v.c" + std::to_string(i));
  }
  if (!key_id_.empty()) set_list += ", " + key_id_ + " = coalesce(v.kid, t." + key_id_ + ")";
  return "UPDATE " + table_ + " AS t SET " + set_list + " FROM " + RowSource() + " WHERE " +
         AsRead() + " RETURNING " + key_.Text("t") + " AS row_id";
}

std::string BatchStatements::StillAsRead() const {
  return "SELECT " + key_.Text("t") + " AS row_id FROM " + table_ + " AS t, " + RowSource() +
         " WHERE " + AsRead();
}

std::string BatchStatements::Bounds(int variant, int* n) const {
  auto param = [n] { return "$" + std::to_string(++*n); };
  std::string where;
  // Bounds are key texts; a composite key compares as a row value, in key order.
  const std::string row = key_.Row("t");
  // A composite key's bounds also bound its leading column (KeyShape::LeadingBound), so a table
  // partitioned by that column is pruned to the partitions the batch's range reaches.
  auto bound = [&](int bit, const char* op, const char* leading_op) {
    if (!(variant & bit)) return;
    const std::string p = param();
    where += " AND " + row + " " + op + " " + key_.Bound(p) + key_.LeadingBound("t", leading_op, p);
  };
  bound(kLo, ">=", ">=");
  bound(kAfter, ">", ">=");
  bound(kHi, "<", "<=");
  if (variant & kKeys) where += " AND " + key_.AnyOf("t", param());
  if (variant & kBuckets) {
    // One range test, so the row's bucket (an MD5) is computed once, not once per bound.
    const std::string lo = param();
    where += " AND int4range(" + lo + "::integer, " + param() +
             "::integer) @> rekey.stage_bucket(" + key_.Text("t") + ")";
  }
  if (job_.scope_column) {
    where +=
        " AND t." + db::QuoteIdent(*job_.scope_column) + " = " + param() + "::" + job_.scope_type;
  }
  return where;
}

std::string BatchStatements::Select(int variant) const {
  // No FOR UPDATE: the UPDATE compares and swaps instead (AsRead; docs/safety.md, invariant 3).
  return RowsNeedingWork(variant, select_list_, "");
}

std::string BatchStatements::Sizes(int variant) const {
  std::string sum;
  for (const auto& column : job_.columns) {
    if (!sum.empty()) sum += " + ";
    sum += "coalesce(pg_column_size(t." + db::QuoteIdent(column.name) + "), 0)";
  }
  return RowsNeedingWork(variant, "(" + sum + ")::bigint AS value_bytes", "");
}

std::string BatchStatements::RowsNeedingWork(int variant, const std::string& list,
                                             const std::string& suffix) const {
  int n = 0;
  const std::string where = Bounds(variant, &n);
  const std::string prefixes = "$" + std::to_string(++n);
  const std::string ids = "$" + std::to_string(++n);
  const std::string limit = "$" + std::to_string(++n);
  std::string condition = needs_work_;
  Substitute("$P", prefixes, &condition);
  Substitute("$K", ids, &condition);
  // Unreferenced parameters would have no type; cast them harmlessly into the WHERE clause.
  return "SELECT " + list + " FROM " + table_ + " AS t WHERE (" + condition + ")" + where +
         " AND " + prefixes + "::bytea[] IS NOT NULL AND " + ids +
         "::bigint[] IS NOT NULL ORDER BY " + key_.OrderBy("t") + " LIMIT " + limit + "::bigint" +
         suffix;
}

SelectCall BatchStatements::SelectFor(const ClaimedBatch& batch, const BatchProgress& progress,
                                      const Direction& direction, int max_rows) const {
  SelectCall call;
  if (progress.resume_after) {
    call.params.push_back(*progress.resume_after);
    call.variant |= kAfter;
  } else if (batch.lo) {
    call.params.push_back(*batch.lo);
    call.variant |= kLo;
  }
  if (batch.hi) {
    call.params.push_back(*batch.hi);
    call.variant |= kHi;
  }
  // A forward stage that reaches 100% needs no bucket test: every row below its lower bound was
  // a row of an earlier stage, so it is either done (the SELECT skips it) or still needs work --
  // written under the old key before promotion, or quarantined -- and the last stage may as well
  // take it now as leave it to the sweep. It saves an MD5 per row of the largest stage.
  const bool whole_rest =
      !batch.rollback && batch.bucket_hi && *batch.bucket_hi >= jobs::kStageBuckets;
  // A batch with planned keys reads those rows by key, and needs no bucket test either: a
  // row's bucket is a function of its key alone, and the plan chose these keys by their bucket
  // (whichever planner), so every row they name -- even one replaced since -- is the stage's.
  // The test cost an md5() per row in the server, about a fifth of such a batch.
  const bool keyed = progress.planned_keys && !batch.rollback;
  if (keyed) {
    call.params.push_back(*progress.planned_keys);
    call.variant |= kKeys;
  }
  if (batch.bucket_lo && batch.bucket_hi && !whole_rest && !keyed) {
    call.params.push_back(std::to_string(*batch.bucket_lo));
    call.params.push_back(std::to_string(*batch.bucket_hi));
    call.variant |= kBuckets;
  }
  if (job_.scope_column) call.params.push_back(*job_.scope_value);
  call.params.push_back(direction.source_prefixes_literal);
  call.params.push_back(direction.source_ids_literal);
  call.params.push_back(std::to_string(int64_t(max_rows) + 1));
  return call;
}

}  // namespace rekey::rotation
