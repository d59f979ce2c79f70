#include "rotation/verifier.h"

#include <openssl/evp.h>

#include <memory>
#include <string_view>
#include <utility>

#include "common/bytes.h"
#include "common/error.h"
#include "crypto/codec_rewriters.h"
#include "crypto/value_rewriter.h"
#include "db/binary_result.h"
#include "db/identifiers.h"
#include "db/named_query.h"
#include "jobs/rollout_planner.h"
#include "rotation/column_rewriters.h"
#include "rotation/stored_form.h"

namespace rekey::rotation {
namespace {

struct Sha256 {
  Sha256() : ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  }
  void Update(const void* data, size_t size) { EVP_DigestUpdate(ctx.get(), data, size); }
  std::string HexFinal() {
    uint8_t out[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx.get(), out, &n);
    return HexEncode(out, n);
  }
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx;
};

// The statements that read a job's table are built from its quoted identifiers, in pieces: a
// select list, the table (maybe sampled), the conditions and the order. Each selects pk_text (the
// primary key's text), one value_<i> per job column in job order (in its stored form: the text at
// a JSON column's path, with kind_<i> the kind of JSON value there), and key_id (the raw codec's
// key-id column) iff the job has one.

std::string ValueColumn(size_t i) {
  return "value_" + std::to_string(i);
}

// A JSON column's kind of value at its path (rotation/stored_form.h).
std::string KindColumn(size_t i) {
  return "kind_" + std::to_string(i);
}

// "SELECT ... FROM <table> AS t". Columns are qualified: an unqualified ORDER BY pk would sort
// the pk_text output column.
// The stored bytes of a row's rotated columns (pg_column_size: a TOASTed value counts its stored
// size, read from its pointer without detoasting it).
std::string StoredBytesSql(const jobs::JobDefinition& job) {
  std::string sql;
  for (const auto& column : job.columns) {
    sql += (sql.empty() ? "" : " + ") + std::string("coalesce(pg_column_size(t.") +
           db::QuoteIdent(column.name) + "), 0)";
  }
  return "(" + sql + ")::bigint";
}

std::string SelectFrom(const jobs::JobDefinition& job, const std::string& extra = "") {
  std::string sql = "SELECT " + job.Key().Text("t") + " AS pk_text" + extra;
  for (size_t i = 0; i < job.columns.size(); ++i) {
    sql += ", " + StoredValueSql(job.columns[i]) + " AS " + ValueColumn(i);
    if (!job.columns[i].json_path.empty()) {
      sql += ", " + JsonKindSql(job.columns[i]) + " AS " + KindColumn(i);
    }
  }
  if (job.key_id_column) sql += ", t." + db::QuoteIdent(*job.key_id_column) + " AS key_id";
  return sql + " FROM " + job.QualifiedTable() + " AS t";
}

// A deterministic sample of about `percent` of the table's pages.
std::string SampleClause(double percent, int64_t job_id) {
  char sample[64];
  std::snprintf(sample, sizeof sample, " TABLESAMPLE SYSTEM (%.6f) REPEATABLE (%lld)", percent,
                static_cast<long long>(job_id));
  return sample;
}

// " AND ..." for the rows in the job's scope, `scope_value` standing for its value (a parameter
// or a quoted literal), and below stage bucket `bucket_below` if given.
std::string ScopeConditions(const jobs::JobDefinition& job, std::optional<int> bucket_below,
                            const std::string& scope_value) {
  std::string sql;
  if (bucket_below) {
    sql +=
        " AND rekey.stage_bucket(" + job.Key().Text("t") + ") < " + std::to_string(*bucket_below);
  }
  if (job.scope_column) {
    sql +=
        " AND t." + db::QuoteIdent(*job.scope_column) + " = " + scope_value + "::" + job.scope_type;
  }
  return sql;
}

std::string OrderByKey(const jobs::JobDefinition& job) {
  return " ORDER BY " + job.Key().OrderBy("t");
}

constexpr char kSampleCursor[] = "rekey_verify_sample";

// Every page holds at most page_size rows and, past its first row, at most page_bytes of stored
// values: the page statements below rank their rows in key order with a running sum of their
// stored bytes, and keep the prefix within the bound. Each row says how many rows the page's
// LIMIT took (rekey_taken), so a page cut by bytes is told from the table's last.
struct TableReads {
  std::string first_page;  // $1 NULL: the first page in key order; $2 scope value
  std::string next_page;   // the page after key $1, in key order; $2 scope value
  // The rows whose keys are in $1 (an array's text), in pages: $2 NULL for the first, else the
  // page after key $2; $3 scope value.
  std::string first_with_keys;
  std::string next_with_keys;
  // A cursor over the keys and stored bytes of the sampled rows, in the table's order, no
  // parameters; its next page_size rows are read by key (by_keys: $1 the keys' array text), in
  // groups within page_bytes.
  std::string declare_sample;
  std::string fetch_sample;
  std::string close_sample;
  std::string by_keys;
};

// `select` (SelectFrom with the byte columns) + `where` in key order, cut as TableReads says.
std::string BoundedPage(const jobs::JobDefinition& job, const VerifyOptions& options,
                        const std::string& select, const std::string& where) {
  return "WITH page AS MATERIALIZED (" + select + " WHERE " + where + OrderByKey(job) + " LIMIT " +
         std::to_string(options.page_size) +
         ") SELECT page.*, (SELECT count(*) FROM page) AS rekey_taken FROM page WHERE "
         "page.rekey_upto - page.rekey_bytes < " +
         std::to_string(options.page_bytes) + " ORDER BY page.rekey_n";
}

// `scope_literal`: the job's scope value quoted as a literal ("NULL" without one), for the
// cursor, which takes no parameters here. `bucket_below`: the stage test, if the database makes
// it.
TableReads BuildTableReads(const jobs::JobDefinition& job, const VerifyOptions& options,
                           std::optional<int> bucket_below, const std::string& scope_literal) {
  const jobs::KeyShape key = job.Key();
  const std::string bytes = StoredBytesSql(job);
  const std::string order = job.Key().OrderBy("t");
  const std::string select =
      SelectFrom(job, ", " + bytes + " AS rekey_bytes, sum(" + bytes + ") OVER (ORDER BY " + order +
                          " ROWS UNBOUNDED PRECEDING) AS rekey_upto, row_number() OVER (ORDER BY " +
                          order + ") AS rekey_n");
  TableReads reads;
  if (options.sample_percent < 100) {
    reads.declare_sample = std::string("DECLARE ") + kSampleCursor +
                           " NO SCROLL CURSOR FOR SELECT " + key.Text("t") + " AS pk_text, " +
                           bytes + " AS rekey_bytes FROM " + job.QualifiedTable() + " AS t" +
                           SampleClause(options.sample_percent, job.job_id) + " WHERE TRUE" +
                           ScopeConditions(job, bucket_below, scope_literal);
    reads.fetch_sample = "FETCH " + std::to_string(options.page_size) + " FROM " + kSampleCursor;
    reads.close_sample = std::string("CLOSE ") + kSampleCursor;
    // The sampled rows were chosen by the cursor, scope and stage included: read by key alone.
    reads.by_keys = SelectFrom(job) + " WHERE " + key.AnyOf("t", "$1") + OrderByKey(job);
  }
  const std::string scope = ScopeConditions(job, bucket_below, "$2");
  reads.first_page = BoundedPage(job, options, select, "($1::text IS NULL)" + scope);
  reads.next_page =
      BoundedPage(job, options, select, key.Row("t") + " > " + key.Bound("$1") + scope);
  const std::string keys_scope = ScopeConditions(job, bucket_below, "$3");
  reads.first_with_keys = BoundedPage(
      job, options, select, key.AnyOf("t", "$1") + " AND ($2::text IS NULL)" + keys_scope);
  reads.next_with_keys = BoundedPage(
      job, options, select,
      key.AnyOf("t", "$1") + " AND " + key.Row("t") + " > " + key.Bound("$2") + keys_scope);
  return reads;
}

// Where each column of a page of the statements above is: looked up by name once per page, not
// once per value.
struct PageColumns {
  PageColumns(const db::BinaryResult& page, const jobs::JobDefinition& job) {
    using Kind = db::BinaryResult::Kind;
    pk_text = page.Column("pk_text", Kind::kBytes);
    for (size_t i = 0; i < job.columns.size(); ++i) {
      values.push_back(page.Column(ValueColumn(i), Kind::kBytes));
      kinds.push_back(job.columns[i].json_path.empty() ? -1
                                                       : page.Column(KindColumn(i), Kind::kBytes));
    }
    key_id = job.key_id_column ? page.Column("key_id", Kind::kInteger) : -1;
  }
  int pk_text;
  std::vector<int> values;
  std::vector<int> kinds;  // -1: not a JSON column
  int key_id;              // -1: no key-id column
};

}  // namespace

int64_t VerifyReport::ValuesUnder(const std::vector<uint32_t>& keys) const {
  int64_t n = 0;
  for (uint32_t k : keys) {
    auto it = values_by_key.find(k);
    if (it != values_by_key.end()) n += it->second;
  }
  return n;
}

VerifyReport VerifyJob(pqxx::dbtransaction& txn, const jobs::JobDefinition& job,
                       const DataKeySource& keys, const VerifyOptions& options) {
  // Rows hidden by a policy would be missing from every count: a gate would pass, and a
  // verification report a complete rotation, while they stay under the old key.
  const pqxx::field blocker = txn.exec_params1(db::Query("rotation/verifier.row_security_blocker"),
                                               job.QualifiedTable())["blocker"];
  if (!blocker.is_null()) {
    throw ConfigError("cannot verify job " + std::to_string(job.job_id) + ": " +
                      blocker.as<std::string>());
  }
  const int page_size = options.page_size;
  // Every column's values are opened through its codec's rewriter (crypto/value_rewriter.h,
  // OpenBatch), built as the batch path builds them, in the job's direction: trial decryption
  // tries its target keys first, where a verified job's values are.
  crypto::OpeningKeys opening_keys(keys);
  const ColumnRewriters codecs =
      MakeColumnRewriters(job, &job.key_map, /*rollback=*/false, opening_keys.keys(),
                          TransitClientSource(), AwsKmsSource());

  // The stage test runs here, not in the database: its md5() costs about 1.9 us per row there,
  // and a gate's sampled pages hold several times more rows than it checks.
  jobs::StageBucketHasher hasher;
  const bool bucket_in_client = options.bucket_below && hasher.available();
  const TableReads reads =
      BuildTableReads(job, options, bucket_in_client ? std::nullopt : options.bucket_below,
                      job.scope_value ? txn.quote(*job.scope_value) : "NULL");

  VerifyReport report;
  Sha256 digest;
  std::optional<std::string> last;
  const size_t ncols = job.columns.size();
  auto record_failure = [&report](const std::string& pk_text, const std::string& column,
                                  std::string_view error_class) {
    ++report.failures;
    ++report.failures_by_class[std::string(error_class)];
    if (report.failure_samples.size() < 20) {
      report.failure_samples.push_back(pk_text + "/" + column + ": " + std::string(error_class));
    }
  };
  auto add_to_digest = [&digest](const std::string& pk_text, const std::string& column,
                                 const Bytes& value_plaintext) {
    uint8_t len[4];
    PutUint32BigEndian(uint32_t(value_plaintext.size()), len);
    digest.Update(pk_text.data(), pk_text.size());
    digest.Update("\0", 1);
    digest.Update(column.data(), column.size());
    digest.Update("\0", 1);
    digest.Update(len, 4);
    digest.Update(value_plaintext.data(), value_plaintext.size());
  };

  // A page's values are opened in chunks of about kChunkBytes, each rewriter's values of a chunk
  // in one OpenBatch, so plaintexts beyond the page's stored bytes stay bounded, and a codec that
  // derives its keys per batch (lockbox, cloak) does so once per chunk, not per value.
  constexpr size_t kChunkBytes = size_t(1) << 20;
  struct Slot {
    size_t row;                   // in chunk_pks
    size_t column;                // job column
    size_t index;                 // in its rewriter's values and results
    std::string_view unreadable;  // the stored form's error class, "" if it was read
  };
  std::vector<std::string> chunk_pks;
  std::vector<Slot> slots;
  std::vector<Bytes> decoded;  // per slot, reused across chunks
  std::vector<std::vector<crypto::StoredValue>> values(codecs.rewriters.size());
  std::vector<std::vector<crypto::OpenedValue>> opened(codecs.rewriters.size());
  size_t chunk_bytes = 0;
  auto open_chunk = [&] {
    for (const Slot& slot : slots) {
      if (slot.unreadable.empty()) {
        values[codecs.of_column[slot.column]][slot.index].pk = chunk_pks[slot.row];
      }
    }
    for (size_t g = 0; g < codecs.rewriters.size(); ++g) {
      if (values[g].empty()) continue;
      if (opened[g].size() < values[g].size()) opened[g].resize(values[g].size());
      codecs.rewriters[g]->OpenBatch(values[g].data(), values[g].size(), opened[g].data());
    }
    for (const Slot& slot : slots) {
      const std::string& pk_text = chunk_pks[slot.row];
      const std::string& column = job.columns[slot.column].name;
      if (!slot.unreadable.empty()) {
        ++report.values;
        record_failure(pk_text, column, slot.unreadable);
        continue;
      }
      crypto::OpenedValue& o = opened[codecs.of_column[slot.column]][slot.index];
      switch (o.outcome) {
        case crypto::OpenOutcome::kUnencrypted:
          break;  // under no key: not a value (Lockbox's "")
        case crypto::OpenOutcome::kOpened:
          ++report.values;
          ++report.values_by_key[o.key];
          if (o.has_plaintext) {
            add_to_digest(pk_text, column, o.plaintext);
            OPENSSL_cleanse(o.plaintext.data(), o.plaintext.size());
          }
          break;
        case crypto::OpenOutcome::kUnproven:
          ++report.values;
          ++report.not_proven;  // verifier.h: only KMS could tell its key
          break;
        case crypto::OpenOutcome::kKeyMissing:
        case crypto::OpenOutcome::kPoison:
          ++report.values;
          record_failure(pk_text, column, o.error_class);
          break;
      }
    }
    chunk_pks.clear();
    slots.clear();
    for (auto& group : values) group.clear();
    chunk_bytes = 0;
  };
  auto process = [&](const db::BinaryResult& page) {
    const PageColumns at(page, job);
    for (size_t r = 0; r < page.size(); ++r) {
      std::string pk_text(page.Bytes(r, at.pk_text));
      if (bucket_in_client && hasher.Bucket(pk_text) >= *options.bucket_below) continue;
      ++report.rows;
      std::optional<uint32_t> row_key_id;
      if (at.key_id >= 0 && !page.IsNull(r, at.key_id)) {
        row_key_id = uint32_t(page.Integer(r, at.key_id));
      }
      const size_t row_no = chunk_pks.size();
      chunk_pks.push_back(std::move(pk_text));
      for (size_t i = 0; i < ncols; ++i) {
        const int kind = at.kinds[i];
        // A document with nothing at the path holds a value that cannot be read: a failure.
        if (kind >= 0 ? page.IsNull(r, kind) : page.IsNull(r, at.values[i])) continue;
        const jobs::JobColumn& column = job.columns[i];
        const size_t g = codecs.of_column[i];
        const std::string_view field = page.Bytes(r, at.values[i]);
        crypto::StoredValue value{nullptr, 0, column.name, {}, row_key_id};
        Slot slot{row_no, i, values[g].size(), {}};
        if (decoded.size() <= slots.size()) decoded.resize(slots.size() + 1);
        crypto::TextStyle style;
        slot.unreadable = ReadStoredValue(column, codecs.rewriters[g]->reads_stored_text(), field,
                                          kind >= 0 ? page.Bytes(r, kind) : std::string_view(),
                                          &decoded[slots.size()], &style, &value);
        if (slot.unreadable.empty()) values[g].push_back(value);
        slots.push_back(slot);
        chunk_bytes += field.size();
      }
      if (chunk_bytes >= kChunkBytes) open_chunk();
    }
    open_chunk();  // before the page goes: values point into it
  };
  // A bounded page's parameters: `after` the key it starts after (NULL: the first page), then
  // the scope value if the job has one; `planned_keys` first, if the page reads them.
  auto page_params = [&](const std::string* planned_keys, const std::optional<std::string>& after) {
    std::vector<db::BinaryParam> params;
    if (planned_keys) params.push_back(db::BinaryParam::Text(*planned_keys));
    params.push_back(after ? db::BinaryParam::Text(*after) : db::BinaryParam::Null());
    if (job.scope_value) params.push_back(db::BinaryParam::Text(*job.scope_value));
    return params;
  };

  bool keyed = false;
  if (options.planned_keys_of_stage) {
    keyed = txn.exec_params1(db::Query("rotation/verifier.stage_keys_planned"), job.job_id,
                             *options.planned_keys_of_stage)["keyed"]
                .as<bool>();
  }
  // Whether the pages of a bounded read go on after `page` (TableReads).
  auto more_after = [page_size](const db::BinaryResult& page) {
    if (page.empty()) return false;
    const int64_t taken =
        page.Integer(0, page.Column("rekey_taken", db::BinaryResult::Kind::kInteger));
    return taken == page_size || int64_t(page.size()) < taken;
  };
  auto last_key = [](const db::BinaryResult& page) {
    return std::string(
        page.Bytes(page.size() - 1, page.Column("pk_text", db::BinaryResult::Kind::kBytes)));
  };
  if (keyed) {
    // One batch's keys at a time, so memory stays flat however large the stage.
    int64_t batch_no = 0;
    while (true) {
      pqxx::result next = txn.exec_params(db::Query("rotation/verifier.next_planned_batch"),
                                          job.job_id, *options.planned_keys_of_stage, batch_no);
      if (next.empty()) break;
      batch_no = next[0]["batch_no"].as<int64_t>();
      const std::string planned = next[0]["keys"].as<std::string>();
      std::optional<std::string> after;
      while (true) {
        const std::string& sql = after ? reads.next_with_keys : reads.first_with_keys;
        const db::BinaryResult page = db::ExecBinaryQuery(txn, sql, page_params(&planned, after));
        process(page);
        if (!more_after(page)) break;
        after = last_key(page);
      }
    }
  } else if (options.sample_percent < 100) {
    // A sample is chosen through a cursor in the table's order (sorting it by key, to page by
    // key, spilled to disk once the stage test no longer thinned it out in the database); the
    // cursor yields keys and sizes only, and the values are read by key in groups within
    // page_bytes.
    txn.exec0(reads.declare_sample);
    std::vector<std::string> group;
    int64_t group_bytes = 0;
    auto read_group = [&] {
      if (group.empty()) return;
      const std::string keys_text = db::TextArrayLiteral(group);
      process(db::ExecBinaryQuery(txn, reads.by_keys, {db::BinaryParam::Text(keys_text)}));
      group.clear();
      group_bytes = 0;
    };
    while (true) {
      const db::BinaryResult page = db::ExecBinaryQuery(txn, reads.fetch_sample);
      const int pk_text = page.Column("pk_text", db::BinaryResult::Kind::kBytes);
      const int stored_bytes = page.Column("rekey_bytes", db::BinaryResult::Kind::kInteger);
      for (size_t r = 0; r < page.size(); ++r) {
        const int64_t bytes = page.Integer(r, stored_bytes);
        if (!group.empty() && group_bytes + bytes > options.page_bytes) read_group();
        group.emplace_back(page.Bytes(r, pk_text));
        group_bytes += bytes;
      }
      read_group();
      if (page.size() < size_t(page_size)) break;
    }
    txn.exec0(reads.close_sample);
  } else {
    while (true) {
      const std::string& sql = last ? reads.next_page : reads.first_page;
      const db::BinaryResult page = db::ExecBinaryQuery(txn, sql, page_params(nullptr, last));
      process(page);
      if (!more_after(page)) break;
      last = last_key(page);
    }
  }
  report.plaintext_sha256 = digest.HexFinal();
  return report;
}

}  // namespace rekey::rotation
