#include "rotation/batch_rotator.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <map>
#include <set>
#include <string_view>

#include "common/bytes.h"
#include "common/error.h"
#include "crypto/codec.h"
#include "db/binary_array.h"
#include "db/bytea.h"
#include "db/connection.h"
#include "db/identifiers.h"

namespace rekey::rotation {
namespace {

using crypto::CodecKind;
using crypto::DecodeStatus;

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

// Variants of the row-locking SELECT, by which batch bounds exist (a generic plan with
// "$1 IS NULL OR pk >= $1" could not use the primary-key index), and whether the batch is
// restricted to a stage's buckets, and to the keys its plan recorded (kKeys). kAfter (a chunk
// resuming after the batch's checkpoint) replaces kLo; kLimit bounds a chunk. Only the variants in
// use are prepared, on first use.
enum Variant {
  kNoBounds = 0,
  kLo = 1,
  kHi = 2,
  kBuckets = 4,
  kAfter = 8,
  kLimit = 16,
  kKeys = 32,
  kAllVariants = 64
};

// rekey.checkpoint_batch and rekey.complete_batch refuse a batch this worker no longer holds, or
// whose stage is no longer the job's open stage, with serialization_failure and this wording: the
// chunk's transaction is rolled back and the batch belongs elsewhere, which is no error of the
// batch (a genuine serialization failure says otherwise, and is retried as transient). libpqxx 6
// throws serialization_failure, which carries no SQLSTATE, for 40001.
bool IsNoLongerClaimed(const pqxx::failure& e) {
  const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e);
  const bool serialization_failure =
      dynamic_cast<const pqxx::serialization_failure*>(&e) || (sql && sql->sqlstate() == "40001");
  return serialization_failure &&
         std::string_view(e.what()).find("no longer claimed") != std::string_view::npos;
}

// The result of a chunk whose transaction was rolled back because the batch was lost: nothing of
// it was written, so it reports no rows.
ChunkResult LostChunk() {
  ChunkResult lost;
  lost.batch.outcome = BatchResult::Outcome::kLost;
  return lost;
}

}  // namespace

void RequireTransitKeyFits(const std::string& key_ref, bool derived, bool has_context) {
  if (derived && !has_context) {
    throw KeyError("Transit key " + key_ref +
                   " is derived, so each value was encrypted with a context; give the job the "
                   "template that renders it (--ad-template, e.g. '{table}:{pk}')");
  }
  if (!derived && has_context) {
    throw KeyError("Transit key " + key_ref +
                   " is not derived, so Vault would ignore the job's derivation context "
                   "(--ad-template); drop it, or use a key created with derived=true");
  }
}

std::string TransitDerivationContext(const jobs::JobDefinition& job, const std::string& column,
                                     const std::string& pk) {
  if (job.associated_data.empty()) return "";
  std::string rendered;
  job.associated_data.Render(job.schema_name, job.table_name, column, pk, &rendered);
  return Base64Encode(reinterpret_cast<const uint8_t*>(rendered.data()), rendered.size());
}

BatchRotator::Direction BatchRotator::MakeDirection(std::map<uint32_t, uint32_t> key_map) {
  Direction d;
  d.key_map = std::move(key_map);
  d.source_prefixes_literal = "{";
  d.source_ids_literal = "{";
  d.target_ids_literal = "{";
  for (const auto& entry : d.key_map) {
    uint8_t prefix[crypto::kTinkPrefixSize] = {crypto::kTinkVersionByte};
    PutUint32BigEndian(entry.first, prefix + 1);
    AppendByteaElement(prefix, sizeof prefix, &d.source_prefixes_literal);
    if (d.source_ids_literal.size() > 1) d.source_ids_literal += ',';
    d.source_ids_literal += std::to_string(entry.first);
    if (d.target_ids_literal.size() > 1) d.target_ids_literal += ',';
    d.target_ids_literal += std::to_string(entry.second);
  }
  d.source_prefixes_literal += '}';
  d.source_ids_literal += '}';
  d.target_ids_literal += '}';
  return d;
}

BatchRotator::BatchRotator(jobs::JobDefinition job, DataKeySource keys, TransitClientSource transit)
    : job_(std::move(job)), key_source_(std::move(keys)), transit_(std::move(transit)) {
  prefix_ = "rekey_j" + std::to_string(job_.job_id) + "_";
  forward_ = MakeDirection(job_.key_map);
  // A transit job's "source keys" are the versions below its target: the ids parameter of the
  // row-locking SELECT carries that version.
  if (job_.transit_key_ref) {
    forward_.source_ids_literal = "{" + std::to_string(job_.transit_min_version) + "}";
  }
  std::map<uint32_t, uint32_t> reversed;
  for (const auto& [source, target] : job_.key_map) reversed.emplace(target, source);
  backward_ = MakeDirection(std::move(reversed));
}

void BatchRotator::LoadKeys() {
  if (job_.transit_key_ref && !transit_checked_) {
    if (!transit_) {
      throw ConfigError("job " + std::to_string(job_.job_id) +
                        " rewraps Vault Transit values, but this process has no Vault client");
    }
    const kms::VaultTransitClient::KeyInfo info = transit_().ReadTransitKey(*job_.transit_key_ref);
    RequireTransitKeyFits(*job_.transit_key_ref, info.derived, !job_.associated_data.empty());
    if (info.latest_version < job_.transit_min_version) {
      throw KeyError("Transit key " + *job_.transit_key_ref + " is at version " +
                     std::to_string(info.latest_version) + ", below the job's target version " +
                     std::to_string(job_.transit_min_version) + "; rotate the key in Vault first");
    }
    transit_checked_ = true;
  }
  for (const auto& [source, target] : job_.key_map) {
    Key(source);
    Key(target);
  }
}

crypto::AesGcmKey* BatchRotator::Key(uint32_t key_id) {
  auto it = keys_.find(key_id);
  if (it != keys_.end()) return it->second.get();
  auto key = std::make_unique<crypto::AesGcmKey>(key_source_(key_id));
  return keys_.emplace(key_id, std::move(key)).first->second.get();
}

void BatchRotator::Prepare(pqxx::connection& conn) {
  const std::string table = job_.QualifiedTable();
  const std::string pk = db::QuoteIdent(job_.pk_column);
  const std::string kid = job_.key_id_column ? db::QuoteIdent(*job_.key_id_column) : "";

  // Which rows need work: any column still under a source key. Tink values whose prefix cannot
  // even be parsed are selected too, so corrupt values are quarantined rather than ignored.
  std::string needs_work;
  for (const auto& column : job_.columns) {
    const std::string c = db::QuoteIdent(column.name);
    if (!needs_work.empty()) needs_work += " OR ";
    if (column.codec == CodecKind::kVaultTransit) {
      // Values that are not Transit ciphertexts are selected too, to be quarantined.
      needs_work += "coalesce(rekey.transit_version(" + c + "), 0) < ($K::bigint[])[1]";
    } else if (column.codec == CodecKind::kTink) {
      needs_work += "substring(" + c + " from 1 for 5) = ANY($P::bytea[]) OR substring(" + c +
                    " from 1 for 1) <> '\\x01'::bytea OR octet_length(" + c + ") < 5";
    } else {
      needs_work += "(" + kid + " = ANY($K::bigint[]) AND " + c + " IS NOT NULL)";
    }
  }
  // Qualified names throughout: an unqualified ORDER BY pk would sort the pk::text output column.
  select_list_ = "t." + pk + "::text";
  for (const auto& column : job_.columns) select_list_ += ", t." + db::QuoteIdent(column.name);
  if (!kid.empty()) select_list_ += ", t." + kid;
  needs_work_ = needs_work;
  select_names_.assign(kAllVariants, std::string());

  // The new values arrive as parallel arrays, one element per row, unnested side by side in the
  // select list: a ProjectSet streams the rows, where unnest(a, b, c) in FROM would first copy
  // each array into a tuplestore (1.1 ms of a 12 ms UPDATE of 1000 rows). The arrays have the
  // same length, so the set-returning functions advance in step.
  std::string set_list;
  std::string values = "unnest($1::" + job_.pk_type + "[]) AS row_id";
  int n = 1;
  for (size_t i = 0; i < job_.columns.size(); ++i) {
    const std::string c = db::QuoteIdent(job_.columns[i].name);
    const std::string v = "c" + std::to_string(i);
    if (!set_list.empty()) set_list += ", ";
    set_list += c + " = coalesce(v." + v + ", t." + c + ")";
    values += ", unnest($" + std::to_string(++n) +
              (job_.columns[i].codec == CodecKind::kVaultTransit ? "::text[]" : "::bytea[]") +
              ") AS " + v;
  }
  if (!kid.empty()) {
    set_list += ", " + kid + " = coalesce(v.kid, t." + kid + ")";
    values += ", unnest($" + std::to_string(++n) + "::bigint[]) AS kid";
  }
  // Rows are matched by primary key, one index descent each. Matching them by ctid instead (a
  // locked row cannot move) saves the descent but not a system call: PostgreSQL 15 rescans a TID
  // scan per row of the join and each rescan reads the table's size with lseek. Where system
  // calls trap to the hypervisor that costs more than the descent (UPDATE of 1000 rows 7.8 ms by
  // key, 9.5 ms by ctid on the AMD machine of bench/README.md); the descent costs the same
  // everywhere.
  conn.prepare(prefix_ + "update", "UPDATE " + table + " AS t SET " + set_list + " FROM (SELECT " +
                                       values + ") AS v WHERE t." + pk + " = v.row_id");
  // Unless told to wait (set_wait_for_flush), the batch's transaction commits without waiting
  // for its WAL flush ($3 'off'; set_config(..., true) is SET LOCAL, here to save a round trip;
  // NULL keeps the session's setting). Its rows, checkpoint and audit row commit together or
  // not at all, so a commit lost in a server crash only puts the batch back where it was: its
  // rows still under the source key, which stays readable until the job is complete, and the
  // batch claimable again. What builds on a batch (the stage's gate, the promotion of the new
  // key, the job's completion) commits synchronously after it, which flushes the batch's commit
  // record too, since WAL is written in order: nothing durable can depend on a lost batch. See
  // docs/operations.md.
  //
  // The row-security check rides along ($4, the table): policies can appear while a job runs, and
  // asking in every transaction costs no round trip.
  conn.prepare(prefix_ + "lock_batch",
               "SELECT b.state, b.worker_id, j.state, b.resume_after, b.rows_done, b.rows_skipped, "
               "b.rows_failed, coalesce(b.duration_ms, 0), b.keys::text, "
               "set_config('synchronous_commit', coalesce($3, "
               "current_setting('synchronous_commit')), true), "
               "rekey.row_security_blocker($4::regclass) FROM rekey.batches b JOIN rekey.jobs j "
               "USING (job_id) WHERE b.job_id = $1 AND b.batch_no = $2 FOR UPDATE OF b");
  conn.prepare(prefix_ + "lock_keys", "SELECT rekey.lock_keys_for_write($1::bigint[])");
  conn.prepare(
      prefix_ + "failures",
      "INSERT INTO rekey.row_failures (job_id, batch_no, table_name, pk, column_name, "
      "error_class, key_id, worker_id, detail) SELECT $1, $2, $3, f.pk, f.col, f.cls, f.kid, $4, "
      "nullif(f.detail, '') FROM unnest($5::text[], $6::text[], $7::text[], $8::bigint[], "
      "$9::text[]) AS f(pk, col, cls, kid, detail) "
      "ON CONFLICT (job_id, table_name, pk, column_name) DO NOTHING RETURNING pk");
  conn.prepare(
      prefix_ + "value_audit",
      "INSERT INTO rekey.value_audit (job_id, batch_no, pk, column_name, from_key_id, "
      "to_key_id) SELECT $1, $2, a.pk, a.col, a.from_key, a.to_key FROM unnest($3::text[], "
      "$4::text[], $5::bigint[], $6::bigint[]) AS a(pk, col, from_key, to_key)");
  conn.prepare(prefix_ + "complete",
               "SELECT rekey.complete_batch($1, $2, $3, $4, $5, $6, $7, $8::jsonb)");
  conn.prepare(prefix_ + "checkpoint",
               "SELECT rekey.checkpoint_batch($1, $2, $3, $4, $5, $6, $7, $8)");
  prepared_on_ = &conn;
}

const std::string& BatchRotator::SelectStatement(pqxx::connection& conn, int variant) {
  std::string& name = select_names_.at(size_t(variant));
  if (!name.empty()) return name;
  const std::string pk = db::QuoteIdent(job_.pk_column);
  int n = 0;
  std::string where;
  auto param = [&n] { return "$" + std::to_string(++n); };
  if (variant & kLo) where += " AND t." + pk + " >= " + param() + "::" + job_.pk_type;
  if (variant & kAfter) where += " AND t." + pk + " > " + param() + "::" + job_.pk_type;
  if (variant & kHi) where += " AND t." + pk + " < " + param() + "::" + job_.pk_type;
  if (variant & kKeys) {
    where += " AND t." + pk + " = ANY (" + param() + "::" + job_.pk_type + "[])";
  }
  if (variant & kBuckets) {
    // One range test, so the row's bucket (an MD5) is computed once, not once per bound.
    const std::string lo = param();
    where += " AND int4range(" + lo + "::integer, " + param() +
             "::integer) @> rekey.stage_bucket(t." + pk + "::text)";
  }
  if (job_.scope_column) {
    where +=
        " AND t." + db::QuoteIdent(*job_.scope_column) + " = " + param() + "::" + job_.scope_type;
  }
  std::string condition = needs_work_;
  std::string prefixes_param = param();
  std::string ids_param = param();
  for (size_t at; (at = condition.find("$P")) != std::string::npos;)
    condition.replace(at, 2, prefixes_param);
  for (size_t at; (at = condition.find("$K")) != std::string::npos;)
    condition.replace(at, 2, ids_param);
  std::string limit;
  if (variant & kLimit) limit = " LIMIT " + param() + "::bigint";
  // Unreferenced parameters would have no type; cast them harmlessly into the WHERE clause.
  const std::string statement = prefix_ + "select" + std::to_string(variant);
  conn.prepare(statement, "SELECT " + select_list_ + " FROM " + job_.QualifiedTable() +
                              " AS t WHERE (" + condition + ")" + where + " AND " + prefixes_param +
                              "::bytea[] IS NOT NULL AND " + ids_param +
                              "::bigint[] IS NOT NULL ORDER BY t." + pk + limit + " FOR UPDATE");
  name = statement;
  return name;
}

BatchResult BatchRotator::Process(pqxx::connection& conn, const ClaimedBatch& batch,
                                  const std::string& worker_id) {
  return Run(conn, batch, worker_id, std::nullopt).batch;
}

ChunkResult BatchRotator::ProcessChunk(pqxx::connection& conn, const ClaimedBatch& batch,
                                       const std::string& worker_id, int max_rows) {
  return Run(conn, batch, worker_id, std::max(max_rows, 1));
}

ChunkResult BatchRotator::Run(pqxx::connection& conn, const ClaimedBatch& batch,
                              const std::string& worker_id, std::optional<int> max_rows) {
  const auto started = std::chrono::steady_clock::now();
  // Every key through the source again, before any row is locked: the data-key cache answers
  // from memory until its TTL ends, so a key revoked in the KMS stops being used within one TTL,
  // and a KMS failure (TransientError, KeyError) surfaces here, with nothing locked or written,
  // never as a value that fails to decrypt and is quarantined.
  keys_.clear();
  LoadKeys();
  if (prepared_on_ != &conn) Prepare(conn);
  ChunkResult chunk;
  BatchResult& result = chunk.batch;
  const Direction& direction = batch.rollback ? backward_ : forward_;
  pqxx::work txn(conn);

  if (!job_.transit_key_ref) {
    // First, before any row is locked: a retire or destroy of a key written here waits for this
    // transaction, and this one waits for a retire or destroy in progress, then sees it.
    try {
      txn.exec_prepared(prefix_ + "lock_keys", direction.target_ids_literal);
    } catch (const pqxx::sql_error& e) {
      if (e.sqlstate() != "55000") throw;
      throw KeyNotWritableError("batch " + std::to_string(batch.job_id) + "/" +
                                std::to_string(batch.batch_no) + ": " + db::PrimaryMessage(e) +
                                "; nothing of it was written");
    }
  }
  pqxx::result lock = txn.exec_prepared(prefix_ + "lock_batch", batch.job_id, batch.batch_no,
                                        wait_for_flush_ ? nullptr : "off", job_.QualifiedTable());
  if (!lock.empty() && !lock[0][10].is_null()) throw ConfigError(lock[0][10].as<std::string>());
  if (lock.empty() || lock[0][0].as<std::string>() != "running" || lock[0][1].is_null() ||
      lock[0][1].as<std::string>() != worker_id) {
    result.outcome = BatchResult::Outcome::kLost;
    return chunk;
  }
  if (lock[0][2].as<std::string>() != "active") {
    result.outcome = BatchResult::Outcome::kJobNotActive;
    return chunk;
  }
  // What earlier chunks of this batch committed (all zero for a batch processed in one piece).
  std::optional<std::string> resume_after;
  if (!lock[0][3].is_null()) resume_after = lock[0][3].as<std::string>();
  const int earlier_done = lock[0][4].as<int>();
  const int earlier_skipped = lock[0][5].as<int>();
  const int earlier_failed = lock[0][6].as<int>();
  const double earlier_ms = lock[0][7].as<double>();
  std::optional<std::string> planned_keys;
  if (!lock[0][8].is_null()) planned_keys = lock[0][8].as<std::string>();

  const std::map<uint32_t, uint32_t>& key_map = direction.key_map;
  std::vector<std::string> params;
  int variant = kNoBounds;
  if (resume_after) {
    params.push_back(*resume_after);
    variant |= kAfter;
  } else if (batch.lo) {
    params.push_back(*batch.lo);
    variant |= kLo;
  }
  if (batch.hi) {
    params.push_back(*batch.hi);
    variant |= kHi;
  }
  // A forward stage that reaches 100% needs no bucket test: every row below its lower bound was
  // a row of an earlier stage, so it is either done (the SELECT skips it) or still needs work --
  // written under the old key before promotion, or quarantined -- and the last stage may as well
  // take it now as leave it to the sweep. It saves an MD5 per row of the largest stage.
  const bool whole_rest = !batch.rollback && batch.bucket_hi && *batch.bucket_hi >= 10000;
  // A batch with planned keys locks those rows by key, and needs no bucket test either: a
  // row's bucket is a function of its key alone, and the plan chose these keys by their bucket
  // (whichever planner), so every row they name -- even one replaced since -- is the stage's.
  // The test cost an md5() per row in the server, about a fifth of such a batch.
  const bool keyed = planned_keys && !batch.rollback;
  if (keyed) {
    params.push_back(*planned_keys);
    variant |= kKeys;
  }
  if (batch.bucket_lo && batch.bucket_hi && !whole_rest && !keyed) {
    params.push_back(std::to_string(*batch.bucket_lo));
    params.push_back(std::to_string(*batch.bucket_hi));
    variant |= kBuckets;
  }
  if (job_.scope_column) params.push_back(*job_.scope_value);
  params.push_back(direction.source_prefixes_literal);
  params.push_back(direction.source_ids_literal);
  if (max_rows) {
    // One row more than the chunk handles says whether the batch goes on after it.
    params.push_back(std::to_string(int64_t(*max_rows) + 1));
    variant |= kLimit;
  }
  pqxx::result rows =
      txn.exec_prepared(SelectStatement(conn, variant), pqxx::prepare::make_dynamic_params(params));
  const bool more = max_rows && rows.size() > size_t(*max_rows);
  const pqxx::result::size_type handled = more ? pqxx::result::size_type(*max_rows) : rows.size();
  chunk.rows_locked = int(handled);
  std::string last_pk;

  const size_t ncols = job_.columns.size();
  const int kid_field = job_.key_id_column ? int(1 + ncols) : -1;
  std::string row_id_literal = "{";
  std::vector<db::BinaryArray> column_arrays;
  for (const auto& column : job_.columns) {
    column_arrays.emplace_back(column.codec == CodecKind::kVaultTransit
                                   ? db::BinaryArray::kTextOid
                                   : db::BinaryArray::kByteaOid);
  }
  std::string kid_literal = "{";
  std::vector<std::string> fail_pk, fail_col, fail_class, fail_kid, fail_detail;
  std::vector<std::string> audit_pk, audit_col, audit_from, audit_to;
  std::map<std::pair<uint32_t, uint32_t>, int> moved;  // (from, to) -> values, for the audit row

  std::string ad;
  Bytes plaintext;
  Bytes sealed;
  Bytes stored;
  // Per column of the current row: its new value, if it has one. Buffers are reused across rows.
  std::vector<Bytes> new_values(ncols);
  std::vector<char> has_new(ncols);
  std::vector<std::pair<uint32_t, uint32_t>> value_keys(ncols);
  const crypto::KeyLookup source_lookup = [this, &key_map](uint32_t id) -> crypto::AesGcmKey* {
    return key_map.count(id) ? Key(id) : nullptr;
  };

  // Transit values go to Vault in one batch_input request per kTransitBatchSize items, while
  // their rows stay locked. transit_item[r * ncols + i]: the item of row r's column i, or
  // kNoWork (at or above the target version) or kNotTransit (to be quarantined).
  constexpr int kNoWork = -1;
  constexpr int kNotTransit = -2;
  std::vector<int> transit_item;
  std::vector<kms::TransitRewrapResult> transit_results;
  if (job_.transit_key_ref) {
    std::vector<kms::TransitRewrapItem> items;
    transit_item.assign(size_t(handled) * ncols, kNoWork);
    for (pqxx::result::size_type r = 0; r < handled; ++r) {
      for (size_t i = 0; i < ncols; ++i) {
        const auto& field = rows[r][int(1 + i)];
        if (field.is_null()) continue;
        const std::string_view value(field.c_str(), field.size());
        std::optional<int> version = kms::TransitCiphertextVersion(value);
        int& slot = transit_item[size_t(r) * ncols + i];
        if (!version) {
          slot = kNotTransit;
        } else if (*version < job_.transit_min_version) {
          slot = int(items.size());
          items.push_back(
              {std::string(value),
               TransitDerivationContext(job_, job_.columns[i].name, rows[r][0].as<std::string>())});
        }
      }
    }
    if (!items.empty()) transit_results = transit_().RewrapValues(*job_.transit_key_ref, items);
  }

  for (pqxx::result::size_type r = 0; r < handled; ++r) {
    const auto row = rows[r];
    const std::string pk = row[0].as<std::string>();
    if (r + 1 == handled) last_pk = pk;
    std::optional<uint32_t> row_kid;
    if (kid_field >= 0 && !row[kid_field].is_null()) row_kid = row[kid_field].as<uint32_t>();
    bool failed = false;
    bool changed = false;
    std::optional<uint32_t> new_kid;
    for (size_t i = 0; i < ncols; ++i) {
      has_new[i] = false;
      const auto& field = row[int(1 + i)];
      if (field.is_null()) continue;
      if (job_.columns[i].codec == CodecKind::kVaultTransit) {
        const int item = transit_item[size_t(r) * ncols + i];
        if (item == kNoWork) continue;
        const kms::TransitRewrapResult* rewrapped =
            item >= 0 ? &transit_results.at(size_t(item)) : nullptr;
        if (!rewrapped || !rewrapped->error.empty()) {
          failed = true;
          fail_pk.push_back(pk);
          fail_col.push_back(job_.columns[i].name);
          fail_kid.emplace_back();
          if (rewrapped) {
            fail_class.emplace_back("vault_rejected");
            const int from = kms::TransitCiphertextVersion(field.c_str()).value_or(0);
            fail_detail.push_back(
                ("v" + std::to_string(from) + ": " + rewrapped->error).substr(0, 500));
          } else {
            fail_class.emplace_back("bad_prefix");
            fail_detail.emplace_back("not a Vault Transit ciphertext (vault:vN:<base64>)");
          }
          continue;
        }
        const auto* text = reinterpret_cast<const uint8_t*>(rewrapped->ciphertext.data());
        new_values[i].assign(text, text + rewrapped->ciphertext.size());
        has_new[i] = true;
        value_keys[i] = {uint32_t(kms::TransitCiphertextVersion(field.c_str()).value_or(0)),
                         uint32_t(rewrapped->key_version)};
        changed = true;
        continue;
      }
      db::ReadBytea(field, &stored);
      const Bytes& value = stored;
      const auto& column = job_.columns[i];
      const bool tink = column.codec == CodecKind::kTink;
      std::optional<uint32_t> source;
      if (tink) {
        source = crypto::TinkKeyId(value.data(), value.size());
        // A well-formed value under a key this job does not rotate is not ours to touch.
        if (source && !key_map.count(*source)) continue;
      } else {
        if (!row_kid || !key_map.count(*row_kid)) continue;
        source = row_kid;
      }
      if (!job_.associated_data.empty()) {
        job_.associated_data.Render(job_.schema_name, job_.table_name, column.name, pk, &ad);
      } else {
        ad.clear();
      }
      const auto* ad_data = reinterpret_cast<const uint8_t*>(ad.data());
      DecodeStatus status;
      uint32_t parsed_kid = 0;
      if (tink) {
        status = crypto::OpenTink(value.data(), value.size(), source_lookup, ad_data, ad.size(),
                                  &plaintext, &parsed_kid);
      } else {
        status = crypto::OpenRaw(value.data(), value.size(), Key(*source), ad_data, ad.size(),
                                 &plaintext);
      }
      if (status != DecodeStatus::kOk) {
        failed = true;
        fail_pk.push_back(pk);
        fail_col.push_back(column.name);
        fail_class.emplace_back(crypto::DecodeStatusName(status));
        fail_kid.push_back(source ? std::to_string(*source) : "");
        fail_detail.emplace_back();
        continue;
      }
      const uint32_t target = key_map.at(*source);
      sealed.clear();
      if (tink) {
        crypto::SealTink(target, *Key(target), plaintext.data(), plaintext.size(), ad_data,
                         ad.size(), &sealed);
      } else {
        crypto::SealRaw(*Key(target), plaintext.data(), plaintext.size(), ad_data, ad.size(),
                        &sealed);
      }
      OPENSSL_cleanse(plaintext.data(), plaintext.size());
      new_values[i].assign(sealed.begin(), sealed.end());
      has_new[i] = true;
      value_keys[i] = {*source, target};
      if (!new_kid) new_kid = target;
      changed = true;
    }
    if (failed) {
      ++result.rows_failed;
      continue;
    }
    if (!changed) {
      ++result.rows_skipped;
      continue;
    }
    ++result.rows_done;
    db::AppendTextArrayElement(pk, &row_id_literal);
    for (size_t i = 0; i < ncols; ++i) {
      if (has_new[i]) {
        column_arrays[i].Append(new_values[i].data(), new_values[i].size());
        ++moved[value_keys[i]];
        if (job_.per_row_audit) {
          audit_pk.push_back(pk);
          audit_col.push_back(job_.columns[i].name);
          audit_from.push_back(std::to_string(value_keys[i].first));
          audit_to.push_back(std::to_string(value_keys[i].second));
        }
      } else {
        column_arrays[i].AppendNull();
      }
    }
    if (kid_field >= 0) {
      if (kid_literal.size() > 1) kid_literal += ',';
      kid_literal += std::to_string(*new_kid);
    }
  }

  if (result.rows_done > 0) {
    std::vector<pqxx::binarystring> arrays;
    for (const auto& array : column_arrays) arrays.push_back(array.Finish());
    const pqxx::result updated =
        kid_field >= 0
            ? txn.exec_prepared(prefix_ + "update", row_id_literal + "}",
                                pqxx::prepare::make_dynamic_params(arrays), kid_literal + "}")
            : txn.exec_prepared(prefix_ + "update", row_id_literal + "}",
                                pqxx::prepare::make_dynamic_params(arrays));
    // The rows are locked, so each is written exactly once, and nothing of the batch may commit
    // otherwise. No concurrent change can cause a difference, so no retry can fix it: a trigger
    // on the table that skips or redirects updates can. The attempt counts, and the batch fails
    // with this reason once its attempts are used up.
    if (updated.affected_rows() != size_t(result.rows_done)) {
      throw PermanentError("batch " + std::to_string(batch.job_id) + "/" +
                           std::to_string(batch.batch_no) + ": the UPDATE wrote " +
                           std::to_string(updated.affected_rows()) + " of the " +
                           std::to_string(result.rows_done) +
                           " rows it locked (a trigger on the table that skips or redirects "
                           "updates?); nothing of the batch was written");
    }
  }
  if (!fail_pk.empty()) {
    std::string kids = "{";
    for (size_t i = 0; i < fail_kid.size(); ++i) {
      if (i) kids += ',';
      kids += fail_kid[i].empty() ? "NULL" : fail_kid[i];
    }
    pqxx::result fresh = txn.exec_prepared(
        prefix_ + "failures", batch.job_id, batch.batch_no,
        job_.schema_name + "." + job_.table_name, worker_id, db::TextArrayLiteral(fail_pk),
        db::TextArrayLiteral(fail_col), db::TextArrayLiteral(fail_class), kids + "}",
        db::TextArrayLiteral(fail_detail));
    // Values this job quarantined in an earlier pass are not counted again.
    std::set<std::string> fresh_rows;
    for (const auto& row : fresh) fresh_rows.insert(row[0].as<std::string>());
    result.rows_skipped += result.rows_failed - int(fresh_rows.size());
    result.rows_failed = int(fresh_rows.size());
  }
  if (!audit_pk.empty()) {
    auto ints = [](const std::vector<std::string>& v) {
      std::string s = "{";
      for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + v[i];
      return s + "}";
    };
    txn.exec_prepared(prefix_ + "value_audit", batch.job_id, batch.batch_no,
                      db::TextArrayLiteral(audit_pk), db::TextArrayLiteral(audit_col),
                      ints(audit_from), ints(audit_to));
  }

  result.duration_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  if (more) {
    try {
      txn.exec_prepared(prefix_ + "checkpoint", batch.job_id, batch.batch_no, worker_id, last_pk,
                        result.rows_done, result.rows_skipped, result.rows_failed,
                        result.duration_ms);
    } catch (const pqxx::failure& e) {
      if (!IsNoLongerClaimed(e)) throw;
      return LostChunk();
    }
    txn.commit();
    return chunk;
  }
  std::map<std::string, int> moved_keys;  // "1->2" -> values
  for (const auto& [keys, n] : moved) {
    const std::string prefix = job_.transit_key_ref ? "vault:v" : "";
    moved_keys[prefix + std::to_string(keys.first) + "->" + prefix + std::to_string(keys.second)] =
        n;
  }
  nlohmann::json details = {{"keys", moved_keys}, {"attempt", batch.attempt}};
  if (batch.rollback) details["rollback"] = true;
  if (job_.transit_key_ref) details["transit_key"] = *job_.transit_key_ref;
  if (!fail_pk.empty()) details["quarantined_classes"] = fail_class;
  if (resume_after || earlier_done || earlier_skipped || earlier_failed) {
    // The keys moved by earlier chunks are in their rows' value audit (if kept); the audit row
    // counts the whole batch.
    details["resumed_from_checkpoint"] = true;
  }
  try {
    txn.exec_prepared(prefix_ + "complete", batch.job_id, batch.batch_no, worker_id,
                      earlier_done + result.rows_done, earlier_skipped + result.rows_skipped,
                      earlier_failed + result.rows_failed, earlier_ms + result.duration_ms,
                      details.dump());
  } catch (const pqxx::failure& e) {
    if (!IsNoLongerClaimed(e)) throw;
    return LostChunk();
  }
  txn.commit();
  chunk.batch_finished = true;
  return chunk;
}

}  // namespace rekey::rotation
