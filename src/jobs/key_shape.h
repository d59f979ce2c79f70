// The key of a job's rows as SQL: the pieces the workers' statements are built from (a row's key
// text, its key as a comparable value, the ORDER BY list, a key read back from its text). The
// key is one or more columns of the primary key or of a unique, not-null index, in the index's
// order (rekey.job_key in sql/schema/40_jobs.sql chooses it). Pure: no database is needed.
//
// The key's text is specified in docs/FORMAT.md ("The key's text"): it is the input of the
// stage bucket, the associated data's {pk}, and the form in which batch bounds, checkpoints,
// recorded keys and the rows of rekey.row_failures and rekey.value_audit name a row. The SQL
// planners build the same expressions with rekey.key_text_sql, rekey.key_row_sql,
// rekey.key_order_sql and rekey.key_bound_sql (tests/table_shapes_pg_test.cpp compares both on
// every supported type); for one column of bigint, integer, numeric, uuid or text the text is
// the column's ::text, as it was before composite keys.
#pragma once

#include <string>
#include <vector>

namespace rekey::jobs {

class KeyShape {
 public:
  // `columns` (catalog names, unquoted) and their `types` (format_type without a modifier, from
  // the catalog: pasted after "::"), one each, in key order. `canonical_text`: the key text of
  // docs/FORMAT.md; false for a job created before migration 0020 ("legacy": every column's
  // ::text, which is the same for all but date and timestamptz).
  KeyShape(std::vector<std::string> columns, std::vector<std::string> types, bool canonical_text);

  bool composite() const { return columns_.size() > 1; }
  const std::vector<std::string>& columns() const { return columns_; }

  // The key's text of row `alias`: t."id"::text; ["a","b"] as JSON for a composite key.
  std::string Text(const std::string& alias) const;
  // The key of row `alias` as a value: t."id", or ROW(t."a", t."b").
  std::string Row(const std::string& alias) const;
  // t."a", t."b": the key's columns for ORDER BY.
  std::string OrderBy(const std::string& alias) const;
  // The key whose text is the SQL expression `text` (a parameter such as $1), comparable with
  // Row(): $1::bigint, or ROW((($1)::jsonb ->> 0)::text, (($1)::jsonb ->> 1)::uuid).
  std::string Bound(const std::string& text) const;
  // For a composite key, " AND <alias>.<leading column> <op> <the leading element of text>": the
  // bound on the leading column that a row-value bound implies (ROW(a, b) >= ROW(x, y) and
  // ROW(a, b) > ROW(x, y) imply a >= x; ROW(a, b) < ROW(x, y) implies a <= x), so `op` is ">="
  // for a lower bound and "<=" for an upper one. It selects no row the row-value bound does not,
  // but lets PostgreSQL prune the partitions of a table partitioned by the key's leading column,
  // which PostgreSQL 15 does not do from a row-value comparison (measured with EXPLAIN,
  // tests/table_shapes_pg_test.cpp). "" for one column, whose own comparison prunes.
  std::string LeadingBound(const std::string& alias, const std::string& op,
                           const std::string& text) const;
  // " = ANY ..." for the rows of `alias` whose key text is among the elements of the text[]
  // parameter `array_param`: t."id" = ANY ($1::bigint[]), or for a composite key
  // ROW(t."a", t."b") IN (SELECT ... FROM unnest($1::text[]) AS k(k)).
  std::string AnyOf(const std::string& alias, const std::string& array_param) const;
  // The type of the array of keys an UPDATE's parameter carries: bigint[] (the key's own type)
  // for one column, text[] (key texts) for a composite key.
  std::string ArrayType() const;

 private:
  std::string ColumnText(size_t i, const std::string& alias) const;
  std::string Elements(const std::string& text) const;

  std::vector<std::string> columns_;
  std::vector<std::string> types_;
  bool canonical_text_;
};

}  // namespace rekey::jobs
