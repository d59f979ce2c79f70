#include "rotation/verifier.h"

#include <openssl/evp.h>

#include <memory>
#include <unordered_map>

#include "common/bytes.h"
#include "common/error.h"
#include "crypto/cloak.h"
#include "crypto/codec.h"
#include "crypto/fernet.h"
#include "crypto/lockbox.h"
#include "crypto/rails.h"
#include "db/bytea.h"
#include "db/identifiers.h"
#include "db/named_query.h"
#include "jobs/rollout_planner.h"
#include "kms/vault_transit.h"
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
  PageColumns(const pqxx::result& page, const jobs::JobDefinition& job) {
    pk_text = page.column_number("pk_text");
    for (size_t i = 0; i < job.columns.size(); ++i) {
      values.push_back(page.column_number(ValueColumn(i)));
      kinds.push_back(job.columns[i].json_path.empty() ? -1
                                                       : int(page.column_number(KindColumn(i))));
    }
    key_id = job.key_id_column ? int(page.column_number("key_id")) : -1;
  }
  pqxx::row::size_type pk_text;
  std::vector<pqxx::row::size_type> values;
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

VerifyReport VerifyJob(pqxx::transaction_base& txn, const jobs::JobDefinition& job,
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
  std::unordered_map<uint32_t, std::unique_ptr<crypto::AesGcmKey>> cache;
  auto lookup = [&](uint32_t id) -> crypto::AesGcmKey* {
    auto it = cache.find(id);
    if (it != cache.end()) return it->second.get();
    std::unique_ptr<crypto::AesGcmKey> key;
    try {
      key = std::make_unique<crypto::AesGcmKey>(keys(id));
    } catch (const NoSuchKeyError&) {
      // Unknown or destroyed: its values count as unknown_key. Any other KeyError (the KMS
      // denying access, a disabled KMS key) is the environment's fault, not the data's: it
      // propagates, so a gate stops the worker with that error instead of failing the stage.
      key = nullptr;
    }
    return cache.emplace(id, std::move(key)).first->second.get();
  };

  // Fernet keys, for trial decryption: the job's target keys first (where a verified job's
  // values are), then its source keys.
  std::unordered_map<uint32_t, std::unique_ptr<crypto::FernetKey>> fernet_cache;
  const crypto::FernetKeyLookup fernet_lookup = [&](uint32_t id) -> const crypto::FernetKey* {
    auto it = fernet_cache.find(id);
    if (it == fernet_cache.end()) {
      std::unique_ptr<crypto::FernetKey> key;
      try {
        key = std::make_unique<crypto::FernetKey>(keys(id));
      } catch (const NoSuchKeyError&) {
        key = nullptr;  // as for lookup: skipped, so its values count as auth_failed
      }
      it = fernet_cache.emplace(id, std::move(key)).first;
    }
    return it->second.get();
  };
  crypto::LockboxAttributeKeys lockbox_keys([&](uint32_t id) {
    try {
      return keys(id);
    } catch (const NoSuchKeyError&) {
      return Secret();  // as for lookup: skipped, so its values count as auth_failed
    }
  });
  // Cloak keys, matched by fingerprint (crypto/cloak.h), among the same candidates.
  std::unordered_map<uint32_t, std::unique_ptr<crypto::CloakKey>> cloak_cache;
  const crypto::CloakKeyLookup cloak_lookup = [&](uint32_t id) -> crypto::CloakKey* {
    auto it = cloak_cache.find(id);
    if (it == cloak_cache.end()) {
      std::unique_ptr<crypto::CloakKey> key;
      try {
        key = std::make_unique<crypto::CloakKey>(keys(id));
      } catch (const NoSuchKeyError&) {
        key = nullptr;  // as for lookup: its values count as unknown_fingerprint
      }
      it = cloak_cache.emplace(id, std::move(key)).first;
    }
    return it->second.get();
  };
  std::vector<uint32_t> fernet_candidates;
  for (const auto& entry : job.key_map) fernet_candidates.push_back(entry.second);
  for (const auto& entry : job.key_map) fernet_candidates.push_back(entry.first);
  // Rails keys, tried in the same order (crypto/rails.h); one the keyring lacks is skipped.
  std::unordered_map<uint32_t, std::unique_ptr<crypto::RailsKey>> rails_cache;
  const crypto::RailsKeyLookup rails_lookup = [&](uint32_t id) -> crypto::RailsKey* {
    auto it = rails_cache.find(id);
    if (it == rails_cache.end()) {
      std::unique_ptr<crypto::RailsKey> key;
      try {
        key = std::make_unique<crypto::RailsKey>(keys(id));
      } catch (const NoSuchKeyError&) {
      }
      it = rails_cache.emplace(id, std::move(key)).first;
    }
    return it->second.get();
  };
  crypto::RailsMessage rails_message;

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
  std::string ad;
  Bytes plaintext;
  Bytes value;
  const size_t ncols = job.columns.size();
  const char* scope_value = job.scope_value ? job.scope_value->c_str() : nullptr;
  crypto::TextStyle style;
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
  auto process = [&](const pqxx::result& page) {
    const PageColumns at(page, job);
    const int kid_field = at.key_id;
    for (const auto& row : page) {
      const std::string pk_text = row[at.pk_text].as<std::string>();
      if (bucket_in_client && hasher.Bucket(pk_text) >= *options.bucket_below) continue;
      ++report.rows;
      for (size_t i = 0; i < ncols; ++i) {
        const pqxx::field field = row[at.values[i]];
        std::optional<pqxx::field> kind;
        if (at.kinds[i] >= 0) kind = row[at.kinds[i]];
        // A document with nothing at the path holds a value that cannot be read: a failure.
        if (kind ? kind->is_null() : field.is_null()) continue;
        // Lockbox stores an empty string as it is, unencrypted (docs/FORMAT.md, "lockbox").
        if (job.columns[i].codec == crypto::CodecKind::kLockbox && !kind &&
            (field.size() == 0 || std::string_view(field.c_str()) == "\\x")) {
          continue;
        }
        ++report.values;
        const auto& column = job.columns[i];
        if (column.codec == crypto::CodecKind::kVaultTransit) {
          // No plaintext here (rekey never holds the Transit key): the version is the check.
          std::optional<int> version = kms::TransitCiphertextVersion(field.c_str());
          const char* failure = !version                             ? "bad_prefix"
                                : *version < job.transit_min_version ? "below_target_version"
                                                                     : nullptr;
          if (failure) {
            record_failure(pk_text, column.name, failure);
          } else {
            ++report.values_by_key[uint32_t(*version)];
          }
          continue;
        }
        if (column.codec == crypto::CodecKind::kRails) {
          // The message is the column's text; its plaintext is the bytes Rails encrypted.
          uint32_t rails_key = 0;
          std::string_view failure = rails_message.Parse({field.c_str(), field.size()});
          if (failure.empty())
            failure = rails_message.Open(fernet_candidates, rails_lookup, &rails_key);
          if (!failure.empty()) {
            record_failure(pk_text, column.name, failure);
            continue;
          }
          ++report.values_by_key[rails_key];
          add_to_digest(pk_text, column.name, rails_message.plaintext());
          continue;
        }
        const std::string_view unreadable =
            ReadStoredValue(column, field, kind ? &*kind : nullptr, &value, &style);
        if (!unreadable.empty()) {
          record_failure(pk_text, column.name, unreadable);
          continue;
        }
        if (column.codec == crypto::CodecKind::kAwsKms) {
          // No KMS here: the blob's key is not proven (verifier.h).
          if (value.empty()) {
            record_failure(pk_text, column.name, "empty");
          } else {
            ++report.not_proven;
          }
          continue;
        }
        if (!job.associated_data.empty()) {
          job.associated_data.Render(job.schema_name, job.table_name, column.name, pk_text, &ad);
        } else {
          ad.clear();
        }
        const auto* ad_data = reinterpret_cast<const uint8_t*>(ad.data());
        uint32_t key_id = 0;
        crypto::DecodeStatus status;
        if (column.codec == crypto::CodecKind::kCloak) {
          const crypto::CloakStatus opened = crypto::OpenCloak(
              value.data(), value.size(), fernet_candidates, cloak_lookup, &plaintext, &key_id);
          if (opened != crypto::CloakStatus::kOk) {
            record_failure(pk_text, column.name, crypto::CloakStatusName(opened));
            continue;
          }
          status = crypto::DecodeStatus::kOk;
        } else if (column.codec == crypto::CodecKind::kTink) {
          status = crypto::OpenTink(value.data(), value.size(), lookup, ad_data, ad.size(),
                                    &plaintext, &key_id);
        } else if (column.codec == crypto::CodecKind::kFernet) {
          // Fernet names no key: each of the job's keys is tried (crypto/fernet.h).
          status = crypto::OpenFernetTrial(value.data(), value.size(), fernet_candidates,
                                           fernet_lookup, &plaintext, nullptr, &key_id);
        } else if (column.codec == crypto::CodecKind::kLockbox) {
          // Lockbox names no key either: each key's attribute key for the column is tried.
          status =
              crypto::OpenLockboxTrial(value.data(), value.size(), fernet_candidates,
                                       {column.lockbox_key_table, column.lockbox_key_attribute},
                                       lockbox_keys, &plaintext, &key_id);
        } else if (kid_field < 0 || row[kid_field].is_null()) {
          status = crypto::DecodeStatus::kUnknownKey;
        } else {
          key_id = row[kid_field].as<uint32_t>();
          status = crypto::OpenRaw(value.data(), value.size(), lookup(key_id), ad_data, ad.size(),
                                   &plaintext);
        }
        if (status != crypto::DecodeStatus::kOk) {
          record_failure(pk_text, column.name, crypto::DecodeStatusName(status));
          continue;
        }
        ++report.values_by_key[key_id];
        add_to_digest(pk_text, column.name, plaintext);
        OPENSSL_cleanse(plaintext.data(), plaintext.size());
      }
    }
  };

  bool keyed = false;
  if (options.planned_keys_of_stage) {
    keyed = txn.exec_params1(db::Query("rotation/verifier.stage_keys_planned"), job.job_id,
                             *options.planned_keys_of_stage)["keyed"]
                .as<bool>();
  }
  // Whether the pages of a bounded read go on after `page` (TableReads).
  auto more_after = [page_size](const pqxx::result& page) {
    if (page.empty()) return false;
    const int64_t taken = page[0]["rekey_taken"].as<int64_t>();
    return taken == page_size || int64_t(page.size()) < taken;
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
        const char* after_pk = after ? after->c_str() : nullptr;
        const std::string& sql = after ? reads.next_with_keys : reads.first_with_keys;
        const pqxx::result page = scope_value ? txn.exec_params(sql, planned, after_pk, scope_value)
                                              : txn.exec_params(sql, planned, after_pk);
        process(page);
        if (!more_after(page)) break;
        after = page[page.size() - 1]["pk_text"].as<std::string>();
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
      process(txn.exec_params(reads.by_keys, db::TextArrayLiteral(group)));
      group.clear();
      group_bytes = 0;
    };
    while (true) {
      const pqxx::result page = txn.exec(reads.fetch_sample);
      for (const auto& row : page) {
        const int64_t bytes = row["rekey_bytes"].as<int64_t>();
        if (!group.empty() && group_bytes + bytes > options.page_bytes) read_group();
        group.push_back(row["pk_text"].as<std::string>());
        group_bytes += bytes;
      }
      read_group();
      if (page.size() < size_t(page_size)) break;
    }
    txn.exec0(reads.close_sample);
  } else {
    while (true) {
      const char* last_pk = last ? last->c_str() : nullptr;
      const std::string& sql = last ? reads.next_page : reads.first_page;
      pqxx::result page =
          scope_value ? txn.exec_params(sql, last_pk, scope_value) : txn.exec_params(sql, last_pk);
      process(page);
      if (!more_after(page)) break;
      last = page[page.size() - 1]["pk_text"].as<std::string>();
    }
  }
  report.plaintext_sha256 = digest.HexFinal();
  return report;
}

}  // namespace rekey::rotation
