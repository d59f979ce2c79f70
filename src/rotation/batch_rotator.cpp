#include "rotation/batch_rotator.h"

#include <openssl/sha.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <string_view>
#include <utility>

#include "common/error.h"
#include "db/binary_array.h"
#include "db/connection.h"
#include "db/identifiers.h"
#include "db/named_query.h"
#include "rotation/column_rewriters.h"
#include "rotation/stored_form.h"

namespace rekey::rotation {
namespace {

using crypto::CodecKind;
using crypto::RewriteOutcome;

// The fixed statements of queries/batch_rotator.sql, each prepared per connection.
constexpr const char* kFixedStatements[] = {"lock_keys",   "lock_batch", "failures",
                                            "value_audit", "checkpoint", "complete"};

std::string FixedQuery(const char* name) {
  return db::Query(std::string("rotation/batch_rotator.") + name);
}

// The result of a chunk whose transaction was rolled back because the batch was lost: nothing of
// it was written, so it reports no rows.
ChunkResult LostChunk() {
  ChunkResult lost;
  lost.batch.outcome = BatchResult::Outcome::kLost;
  return lost;
}

std::string IntArrayLiteral(const std::vector<std::string>& items) {
  std::string s = "{";
  for (size_t i = 0; i < items.size(); ++i)
    s += (i ? "," : "") + (items[i].empty() ? "NULL" : items[i]);
  return s + "}";
}

bool IsFailure(RewriteOutcome outcome) {
  return outcome == RewriteOutcome::kPoison || outcome == RewriteOutcome::kKeyMissing;
}

std::vector<db::BinaryParam> TextParams(const std::vector<std::string>& texts) {
  std::vector<db::BinaryParam> params;
  params.reserve(texts.size());
  for (const auto& text : texts) params.push_back(db::BinaryParam::Text(text));
  return params;
}

}  // namespace

std::string ReleaseBatch(pqxx::work& txn, const ClaimedBatch& batch, const std::string& worker_id,
                         const std::string& error, bool transient) {
  return txn
      .exec_params1(FixedQuery("release"), batch.job_id, batch.batch_no, worker_id, error,
                    transient)["batch_state"]
      .as<std::string>();
}

// What a chunk writes: the rewritten rows as the UPDATE's arrays (new values, and the values
// read for its compare-and-swap), the values quarantined, and the values moved (for the value
// audit and the batch's audit row), counted once the UPDATE said which rows it wrote.
struct BatchRotator::RowChanges {
  std::string row_ids = "{";             // text[] literal of the rows rewritten
  std::vector<db::BinaryArray> columns;  // per column: the new values, then the values read
  std::string key_ids = "{";             // bigint[] literal of their new key ids (key-id column)
  std::string read_key_ids = "{";        // ... and of the key ids read
  std::vector<std::string> row_pks;      // of the rows rewritten, in the arrays' order
  struct Move {
    size_t row;  // in row_pks
    size_t column;
    uint32_t from, to;
  };
  std::vector<Move> row_moves;     // each value rewritten
  std::vector<size_t> rows_read;   // of the rows rewritten, in the arrays' order: their row read
  std::vector<size_t> new_values;  // per rotated column: its array of new values in `columns`
  std::vector<std::string> fail_pk, fail_col, fail_class, fail_kid, fail_detail;
  std::vector<std::string> audit_pk, audit_col, audit_from, audit_to;
  std::map<std::pair<uint32_t, uint32_t>, int> moved;  // (from, to) -> values
  std::string last_pk;                                 // of the last row the chunk held
};

BatchRotator::BatchRotator(jobs::JobDefinition job, DataKeySource keys, TransitClientSource transit,
                           AwsKmsSource aws_kms, const std::optional<std::string>& relation)
    : job_(std::move(job)),
      key_source_(std::move(keys)),
      transit_(std::move(transit)),
      aws_kms_(std::move(aws_kms)),
      statements_(job_, relation) {
  prefix_ = "rekey_j" + std::to_string(job_.job_id) + "_";
  if (relation) {
    // One rotator per leaf partition on a connection: each prepares its own statements.
    static std::atomic<uint64_t> leaf_rotators{0};
    prefix_ += "p" + std::to_string(++leaf_rotators) + "_";
  }
  MakeSide(job_.key_map, &forward_);
  // A transit job's "source keys" are the versions below its target: the ids parameter of the
  // row-locking SELECT carries that version.
  if (job_.transit_key_ref) {
    forward_.direction.source_ids_literal = "{" + std::to_string(job_.transit_min_version) + "}";
  }
  std::map<uint32_t, uint32_t> reversed;
  for (const auto& [source, target] : job_.key_map) reversed.emplace(target, source);
  MakeSide(std::move(reversed), &backward_);
}

void BatchRotator::MakeSide(std::map<uint32_t, uint32_t> key_map, Side* side) {
  side->direction = MakeDirection(std::move(key_map));
  // Through the codec boundary's one factory, as the verifier builds them (column_rewriters.h).
  const crypto::CodecKeys keys{
      [this](uint32_t id) { return Key(id); },
      [this](uint32_t id) -> const crypto::FernetKey* { return FernetKeyFor(id); },
      [this](uint32_t id) { return RailsKeyFor(id); }, key_source_};
  ColumnRewriters made =
      MakeColumnRewriters(job_, &side->direction.key_map,
                          /*rollback=*/side == &backward_, keys, transit_, aws_kms_);
  side->rewriters = std::move(made.rewriters);
  side->rewriter_of_column = std::move(made.of_column);
}

void BatchRotator::LoadKeys() {
  if (job_.transit_key_ref && !transit_checked_) {
    if (!transit_) {
      throw ConfigError("job " + std::to_string(job_.job_id) +
                        " rewraps Vault Transit values, but this process has no Vault client");
    }
    CheckTransitKey(transit_(), job_);
    transit_checked_ = true;
  }
  if (job_.aws_kms_key_arn && !aws_kms_checked_) {
    if (!aws_kms_) {
      throw ConfigError("job " + std::to_string(job_.job_id) +
                        " re-encrypts AWS KMS blobs, but this process has no AWS KMS client");
    }
    CheckAwsKmsKeys(aws_kms_(), job_);
    aws_kms_checked_ = true;
  }
  for (const auto& [source, target] : job_.key_map) {
    Key(source);
    Key(target);
  }
}

const crypto::FernetKey* BatchRotator::FernetKeyFor(uint32_t key_id) {
  auto it = fernet_keys_.find(key_id);
  if (it != fernet_keys_.end()) return it->second.get();
  auto key = std::make_unique<crypto::FernetKey>(key_source_(key_id));
  return fernet_keys_.emplace(key_id, std::move(key)).first->second.get();
}

crypto::RailsKey* BatchRotator::RailsKeyFor(uint32_t key_id) {
  auto it = rails_keys_.find(key_id);
  if (it != rails_keys_.end()) return it->second.get();
  auto key = std::make_unique<crypto::RailsKey>(key_source_(key_id));
  return rails_keys_.emplace(key_id, std::move(key)).first->second.get();
}

crypto::AesGcmKey* BatchRotator::Key(uint32_t key_id) {
  auto it = keys_.find(key_id);
  if (it != keys_.end()) return it->second.get();
  auto key = std::make_unique<crypto::AesGcmKey>(key_source_(key_id));
  return keys_.emplace(key_id, std::move(key)).first->second.get();
}

void BatchRotator::Prepare(pqxx::connection& conn) {
  for (const char* name : kFixedStatements) conn.prepare(prefix_ + name, FixedQuery(name));
  update_prepared_ = false;
  select_names_.assign(kAllSelectVariants, std::string());
  sizes_names_.assign(kAllSelectVariants, std::string());
  {
    // The job's 'start' counters (the first worker records them) and its choice for the
    // table's triggers, refused here if this role may not skip them (jobs/side_effects.h).
    pqxx::work txn(conn);
    skip_triggers_ = jobs::StartRewrite(txn, job_.job_id).skip_triggers;
    txn.commit();
  }
  prepared_on_ = &conn;
}

ChunkResult BatchRotator::ProcessChunk(pqxx::connection& conn, const ClaimedBatch& batch,
                                       const std::string& worker_id, int max_rows) {
  max_rows = std::max(max_rows, 1);
  const auto started = std::chrono::steady_clock::now();
  // Every key through the source again, before any row is locked: the data-key cache answers
  // from memory until its TTL ends, so a key revoked in the KMS stops being used within one TTL,
  // and a KMS failure (TransientError, KeyError) surfaces here, with nothing locked or written,
  // never as a value that fails to decrypt and is quarantined.
  keys_.clear();
  fernet_keys_.clear();
  rails_keys_.clear();
  LoadKeys();
  if (prepared_on_ != &conn) Prepare(conn);
  Side& side = batch.rollback ? backward_ : forward_;
  ChunkResult chunk;
  pqxx::work txn(conn);
  LockKeys(txn, side.direction, batch);
  const std::optional<LockedBatch> locked = LockBatch(txn, batch, worker_id, &chunk.batch);
  if (!locked) return chunk;
  if (batch.relation) {
    try {
      if (EndedByGonePartition(txn, batch, worker_id)) {
        txn.commit();
        chunk.batch_finished = true;
        return chunk;
      }
    } catch (const pqxx::failure& e) {
      if (!db::IsNoLongerClaimed(e)) throw;
      return LostChunk();
    }
  }

  // Within the chunk's bytes: rows known to follow are not locked (nor read) to learn that.
  bool more_known = false;
  if (chunk_bytes_ > 0) {
    max_rows = RowsWithinBytes(txn, batch, *locked, side.direction, max_rows, &more_known);
  }
  db::BinaryResult rows =
      SelectRows(txn, batch, *locked, side.direction, max_rows, /*one_more=*/!more_known);
  // With rows known to follow, fewer than max_rows locked means the rest moved on meanwhile
  // (written by the application, no longer under a source key): the batch is done.
  const bool more = more_known ? rows.size() == size_t(max_rows) : rows.size() > size_t(max_rows);
  const size_t handled = std::min(rows.size(), size_t(max_rows));
  chunk.rows_locked = int(handled);
  RowChanges changes;
  RewriteValues(rows, handled, side);
  CollectRows(rows, handled, side, &changes, &chunk.batch);
  // What the UPDATE needs of the rows read is in `changes` now: the result goes before the new
  // values are copied into the UPDATE's arrays, and they before the UPDATE is sent, so a large
  // value is held in as few copies as can be at each step.
  rows = db::BinaryResult();
  AppendNewValues(side, &changes);
  ReleaseLargeBuffers();
  WriteRows(txn, batch, &changes, &chunk.batch);
  RecordFailures(txn, batch, worker_id, changes, &chunk.batch);
  AuditValues(txn, batch, changes);

  const BatchResult& result = chunk.batch;
  chunk.batch.duration_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  try {
    if (more) {
      txn.exec_prepared(prefix_ + "checkpoint", batch.job_id, batch.batch_no, worker_id,
                        changes.last_pk, result.rows_done, result.rows_skipped, result.rows_failed,
                        result.duration_ms);
    } else {
      Complete(txn, batch, worker_id, *locked, changes, result);
    }
  } catch (const pqxx::failure& e) {
    // The "no longer claimed" signal (a row of common/error_table.cpp; see ProcessChunk).
    if (!db::IsNoLongerClaimed(e)) throw;
    return LostChunk();
  }
  txn.commit();
  chunk.batch_finished = !more;
  return chunk;
}

void BatchRotator::LockKeys(pqxx::work& txn, const Direction& direction,
                            const ClaimedBatch& batch) {
  // Vault-transit and aws-kms jobs write under Vault's or KMS's keys, not the keyring's.
  if (job_.transit_key_ref || job_.aws_kms_key_arn) return;
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

std::optional<BatchRotator::LockedBatch> BatchRotator::LockBatch(pqxx::work& txn,
                                                                 const ClaimedBatch& batch,
                                                                 const std::string& worker_id,
                                                                 BatchResult* result) {
  // Unless told to wait (set_wait_for_flush), the batch's transaction commits without waiting
  // for its WAL flush. Its rows, checkpoint and audit row commit together or not at all, so a
  // commit lost in a server crash only puts the batch back where it was: its rows still under the
  // source key, which stays readable until the job is complete, and the batch claimable again.
  // What builds on a batch (the stage's gate, the promotion of the new key, the job's completion)
  // commits synchronously after it, which flushes the batch's commit record too, since WAL is
  // written in order: nothing durable can depend on a lost batch. See docs/operations.md.
  const pqxx::result lock =
      txn.exec_prepared(prefix_ + "lock_batch", batch.job_id, batch.batch_no,
                        wait_for_flush_ ? nullptr : "off", job_.QualifiedTable());
  if (!lock.empty() && !lock[0]["row_security_blocker"].is_null()) {
    throw ConfigError(lock[0]["row_security_blocker"].as<std::string>());
  }
  if (lock.empty() || lock[0]["batch_state"].as<std::string>() != "running" ||
      lock[0]["worker_id"].is_null() || lock[0]["worker_id"].as<std::string>() != worker_id) {
    result->outcome = BatchResult::Outcome::kLost;
    return std::nullopt;
  }
  const pqxx::row row = lock[0];
  if (row["job_state"].as<std::string>() != "active") {
    result->outcome = BatchResult::Outcome::kJobNotActive;
    return std::nullopt;
  }
  // What earlier chunks of this batch committed (all zero for a batch processed in one piece).
  LockedBatch locked;
  if (!row["resume_after"].is_null()) locked.progress.resume_after = row["resume_after"].c_str();
  if (!row["planned_keys"].is_null()) locked.progress.planned_keys = row["planned_keys"].c_str();
  locked.earlier_done = row["rows_done"].as<int>();
  locked.earlier_skipped = row["rows_skipped"].as<int>();
  locked.earlier_failed = row["rows_failed"].as<int>();
  locked.earlier_ms = row["duration_ms"].as<double>();
  return locked;
}

bool BatchRotator::EndedByGonePartition(pqxx::work& txn, const ClaimedBatch& batch,
                                        const std::string& worker_id) {
  const pqxx::row gone =
      txn.exec_params1(FixedQuery("lock_partition"), batch.job_id, batch.batch_no, worker_id);
  return !gone["partition_gone"].is_null();
}

int BatchRotator::RowsWithinBytes(pqxx::work& txn, const ClaimedBatch& batch,
                                  const LockedBatch& locked, const Direction& direction,
                                  int max_rows, bool* more) {
  // The same rows, in the same order, as the locking SELECT (up to one more), read unlocked: a
  // row changed before the SELECT locks it only makes the chunk's bytes differ by that row's.
  const SelectCall call = statements_.SelectFor(batch, locked.progress, direction, max_rows);
  std::string& name = sizes_names_.at(size_t(call.variant));
  if (name.empty()) {
    const std::string statement = prefix_ + "sizes" + std::to_string(call.variant);
    txn.conn().prepare(statement, statements_.Sizes(call.variant));
    name = statement;
  }
  const pqxx::result sizes =
      txn.exec_prepared(name, pqxx::prepare::make_dynamic_params(call.params));
  const int value_bytes = sizes.column_number("value_bytes");
  int64_t bytes = 0;
  int take = 0;
  for (const auto& row : sizes) {
    if (take == max_rows) break;
    bytes += row[value_bytes].as<int64_t>();
    if (take > 0 && bytes > chunk_bytes_) break;
    ++take;
  }
  *more = size_t(take) < sizes.size();
  return std::max(take, 1);
}

db::BinaryResult BatchRotator::SelectRows(pqxx::work& txn, const ClaimedBatch& batch,
                                          const LockedBatch& locked, const Direction& direction,
                                          int max_rows, bool one_more) {
  SelectCall call = statements_.SelectFor(batch, locked.progress, direction, max_rows);
  if (!one_more) call.params.back() = std::to_string(max_rows);  // the LIMIT
  std::string& name = select_names_.at(size_t(call.variant));
  if (name.empty()) {
    // Only the variants in use are prepared, on first use.
    const std::string statement = prefix_ + "select" + std::to_string(call.variant);
    txn.conn().prepare(statement, statements_.Select(call.variant));
    name = statement;
  }
  return db::ExecBinary(txn, name, TextParams(call.params));
}

void BatchRotator::FindFields(const db::BinaryResult& rows) {
  using Kind = db::BinaryResult::Kind;
  const size_t ncols = job_.columns.size();
  row_id_no_ = rows.Column("row_id", Kind::kBytes);
  key_id_no_ = job_.key_id_column ? rows.Column("row_key_id", Kind::kInteger) : -1;
  field_no_.resize(ncols);
  for (size_t i = 0; i < ncols; ++i) {
    field_no_[i] = rows.Column("c" + std::to_string(i), Kind::kBytes);
  }
  // A JSON column's kind of value at its path (rotation/stored_form.h), -1 for other columns.
  json_kind_no_.assign(ncols, -1);
  for (size_t i = 0; i < ncols; ++i) {
    if (!job_.columns[i].json_path.empty()) {
      json_kind_no_[i] = rows.Column("j" + std::to_string(i), Kind::kBytes);
    }
  }
}

void BatchRotator::RewriteValues(const db::BinaryResult& rows, size_t handled, Side& side) {
  const size_t ncols = job_.columns.size();
  FindFields(rows);
  values_.resize(side.rewriters.size());
  rewritten_.resize(side.rewriters.size());
  for (auto& values : values_) values.clear();
  slot_.assign(handled * ncols, -1);
  if (decoded_.size() < handled * ncols) decoded_.resize(handled * ncols);
  if (styles_.size() < handled * ncols) styles_.resize(handled * ncols);
  unreadable_.clear();
  // Row by row, so a codec that asks a remote service sends values in the rows' order.
  for (size_t r = 0; r < handled; ++r) {
    const std::string_view pk = rows.Bytes(r, row_id_no_);
    std::optional<uint32_t> row_key_id;
    if (key_id_no_ >= 0 && !rows.IsNull(r, key_id_no_)) {
      row_key_id = uint32_t(rows.Integer(r, key_id_no_));
    }
    for (size_t i = 0; i < ncols; ++i) {
      const int field = field_no_[i];
      // A JSON column holds a value wherever its document is not NULL, even with nothing at the
      // path: that row is quarantined, not passed over.
      if (json_kind_no_[i] >= 0 ? rows.IsNull(r, json_kind_no_[i]) : rows.IsNull(r, field)) {
        continue;
      }
      crypto::StoredValue value{nullptr, 0, job_.columns[i].name, pk, row_key_id};
      std::string_view json_kind;
      if (json_kind_no_[i] >= 0) json_kind = rows.Bytes(r, json_kind_no_[i]);
      const size_t g = side.rewriter_of_column[i];
      const std::string_view unreadable = ReadStoredValue(
          job_.columns[i], side.rewriters[g]->reads_stored_text(), rows.Bytes(r, field), json_kind,
          &decoded_[r * ncols + i], &styles_[r * ncols + i], &value);
      if (!unreadable.empty()) {
        // Quarantined as it is stored, before any codec sees it (slot -2 - k: unreadable_[k]).
        slot_[r * ncols + i] = -2 - int(unreadable_.size());
        crypto::RewrittenValue& failure = unreadable_.emplace_back();
        failure.outcome = RewriteOutcome::kPoison;
        failure.error_class = std::string(unreadable);
        failure.detail = "stored as " +
                         std::string(crypto::TextEncodingName(job_.columns[i].encoding)) +
                         (job_.columns[i].json_path.empty()
                              ? std::string()
                              : " at " + db::TextArrayLiteral(job_.columns[i].json_path));
        continue;
      }
      std::vector<crypto::StoredValue>& values = values_[g];
      slot_[r * ncols + i] = int(values.size());
      values.push_back(value);
    }
  }
  for (size_t g = 0; g < side.rewriters.size(); ++g) {
    if (values_[g].empty()) continue;
    if (rewritten_[g].size() < values_[g].size()) rewritten_[g].resize(values_[g].size());
    side.rewriters[g]->RewriteBatch(values_[g].data(), values_[g].size(), rewritten_[g].data());
  }
}

void BatchRotator::ReleaseLargeBuffers() {
  // Buffers are reused from chunk to chunk, but one that held a huge value would keep its memory
  // for as long as the worker runs.
  constexpr size_t kKept = size_t(1) << 20;
  auto release = [](Bytes& buffer) {
    if (buffer.capacity() > kKept) Bytes().swap(buffer);
  };
  for (auto& rewritten : rewritten_) {
    for (auto& value : rewritten) release(value.value);
  }
  for (auto& decoded : decoded_) release(decoded);
}

void BatchRotator::CollectRows(const db::BinaryResult& rows, size_t handled, const Side& side,
                               RowChanges* changes, BatchResult* result) const {
  const size_t ncols = job_.columns.size();
  for (const auto& column : job_.columns) {
    const int32_t oid =
        NewValueType(column) == "text" ? db::BinaryArray::kTextOid : db::BinaryArray::kByteaOid;
    changes->new_values.push_back(changes->columns.size());
    changes->columns.emplace_back(oid);  // the new values
    changes->columns.emplace_back(oid);  // the values read
    // ... or their digests (kCompareDigestAbove)
    if (ComparesByDigest(column)) changes->columns.emplace_back(db::BinaryArray::kByteaOid);
  }
  // Per column of the current row: what its rewriter made of it, nullptr for NULL.
  std::vector<const crypto::RewrittenValue*> row_values(ncols);
  for (size_t r = 0; r < handled; ++r) {
    const std::string pk(rows.Bytes(r, row_id_no_));
    if (r + 1 == handled) changes->last_pk = pk;
    bool failed = false;
    bool changed = false;
    std::optional<uint32_t> new_key_id;
    for (size_t i = 0; i < ncols; ++i) {
      const crypto::RewrittenValue* v = RewrittenAt(side, r, i);
      row_values[i] = v && v->outcome == RewriteOutcome::kRewritten ? v : nullptr;
      if (!v || v->outcome == RewriteOutcome::kUnchanged) continue;
      if (IsFailure(v->outcome)) {
        failed = true;
        changes->fail_pk.push_back(pk);
        changes->fail_col.push_back(job_.columns[i].name);
        changes->fail_class.push_back(v->error_class);
        changes->fail_kid.push_back(v->failed_key ? std::to_string(*v->failed_key) : "");
        changes->fail_detail.push_back(v->detail);
        continue;
      }
      changed = true;
      // Transit versions are Vault's, not key ids of the key-id column.
      if (!new_key_id && job_.columns[i].codec != CodecKind::kVaultTransit &&
          job_.columns[i].codec != CodecKind::kAwsKms) {
        new_key_id = v->to_key;
      }
    }
    if (failed) {
      ++result->rows_failed;
      continue;
    }
    if (!changed) {
      ++result->rows_skipped;
      continue;
    }
    ++result->rows_done;
    AppendRow(pk, rows, r, row_values, new_key_id, changes);
  }
}

void BatchRotator::AppendRow(const std::string& pk, const db::BinaryResult& rows, size_t r,
                             const std::vector<const crypto::RewrittenValue*>& row_values,
                             std::optional<uint32_t> new_key_id, RowChanges* changes) const {
  db::AppendTextArrayElement(pk, &changes->row_ids);
  const size_t row_no = changes->row_pks.size();
  changes->row_pks.push_back(pk);
  changes->rows_read.push_back(r);
  for (size_t i = 0; i < row_values.size(); ++i) {
    const size_t array = changes->new_values[i];
    AppendValueRead(i, rows, r, &changes->columns[array + 1],
                    ComparesByDigest(job_.columns[i]) ? &changes->columns[array + 2] : nullptr);
    const crypto::RewrittenValue* v = row_values[i];
    if (v) changes->row_moves.push_back({row_no, i, v->from_key, v->to_key});
  }
  if (job_.key_id_column) {
    if (changes->key_ids.size() > 1) changes->key_ids += ',';
    changes->key_ids += std::to_string(*new_key_id);
    if (changes->read_key_ids.size() > 1) changes->read_key_ids += ',';
    changes->read_key_ids += rows.IsNull(r, key_id_no_)
                                 ? std::string("NULL")
                                 : std::to_string(rows.Integer(r, key_id_no_));
  }
}

void BatchRotator::AppendNewValues(const Side& side, RowChanges* changes) const {
  const size_t ncols = job_.columns.size();
  std::string text;
  for (const size_t r : changes->rows_read) {
    for (size_t i = 0; i < ncols; ++i) {
      db::BinaryArray& new_values = changes->columns[changes->new_values[i]];
      const crypto::RewrittenValue* v = RewrittenAt(side, r, i);
      if (!v || v->outcome != RewriteOutcome::kRewritten) {
        new_values.AppendNull();  // the UPDATE keeps the stored value
      } else if (IsText(job_.columns[i])) {
        // In the encoding and style the value was read in (rotation/stored_form.h).
        WriteStoredValue(job_.columns[i], v->value, styles_[r * ncols + i], &text);
        new_values.Append(text);
      } else {
        new_values.Append(v->value.data(), v->value.size());
      }
    }
  }
}

const crypto::RewrittenValue* BatchRotator::RewrittenAt(const Side& side, size_t r,
                                                        size_t i) const {
  const int slot = slot_[r * job_.columns.size() + i];
  if (slot == -1) return nullptr;
  if (slot < -1) return &unreadable_[size_t(-2 - slot)];
  return &rewritten_[side.rewriter_of_column[i]][size_t(slot)];
}

void BatchRotator::AppendValueRead(size_t i, const db::BinaryResult& rows, size_t r,
                                   db::BinaryArray* read, db::BinaryArray* digest) const {
  // As the SELECT returned it: the stored bytes or text, or the string at the JSON path; NULL
  // for no value, or (a JSON column) no string at the path.
  const std::string_view value = rows.Bytes(r, field_no_[i]);
  if (digest == nullptr || rows.IsNull(r, field_no_[i]) || value.size() <= kCompareDigestAbove) {
    if (rows.IsNull(r, field_no_[i])) {
      read->AppendNull();
    } else {
      read->Append(value);
    }
    if (digest != nullptr) digest->AppendNull();
    return;
  }
  uint8_t sha256[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(value.data()), value.size(), sha256);
  read->AppendNull();
  digest->Append(sha256, sizeof sha256);
}

void BatchRotator::WriteRows(pqxx::work& txn, const ClaimedBatch& batch, RowChanges* changes,
                             BatchResult* result) {
  if (result->rows_done == 0) return;
  const std::string row_ids = changes->row_ids + "}";
  const std::string key_ids = changes->key_ids + "}";
  const std::string read_key_ids = changes->read_key_ids + "}";
  // The arrays go as they were built, not copied again: with a value of hundreds of MiB, each
  // copy is that much more memory.
  std::vector<db::BinaryParam> params{db::BinaryParam::Text(row_ids)};
  for (auto& array : changes->columns)
    params.push_back(db::BinaryParam::Binary(array.Serialized()));
  if (job_.key_id_column) {
    params.push_back(db::BinaryParam::Text(key_ids));
    params.push_back(db::BinaryParam::Text(read_key_ids));
  }
  auto execute = [&](const std::string& statement) {
    return db::ExecBinary(txn, statement, params);
  };
  // --triggers skip: replica mode for this UPDATE alone; the rest of the transaction (failures,
  // audit, checkpoint) runs in the session's role, so rekey's own triggers fire.
  std::string previous_role;
  if (skip_triggers_) previous_role = txn.exec1(FixedQuery("skip_triggers"))["previous"].c_str();
  if (!update_prepared_) {
    // Here rather than in Prepare: a leaf partition may be gone until the chunk has checked it.
    txn.conn().prepare(prefix_ + "update", statements_.update());
    txn.conn().prepare(prefix_ + "still_as_read", statements_.still_as_read());
    update_prepared_ = true;
  }
  const db::BinaryResult updated = execute(prefix_ + "update");
  if (skip_triggers_) txn.exec_params(FixedQuery("restore_role"), previous_role);
  std::vector<bool> written(changes->row_pks.size(), true);
  if (updated.size() != changes->row_pks.size()) {
    // Rows the application wrote after the SELECT read them (or deleted) are not written: the
    // application's write wins, and the row counts as skipped (a sweep sees it again if it is
    // still under a source key). A row not written that still holds the value read was skipped
    // by something else -- a trigger that skips or redirects updates -- which no retry can fix:
    // the attempt counts, nothing of the batch may commit, and the batch fails with this reason
    // once its attempts are used up.
    const db::BinaryResult still = execute(prefix_ + "still_as_read");
    if (!still.empty()) {
      throw PermanentError(
          "batch " + std::to_string(batch.job_id) + "/" + std::to_string(batch.batch_no) +
          ": the UPDATE wrote " + std::to_string(updated.size()) + " of the " +
          std::to_string(result->rows_done) + " rows it read, and " + std::to_string(still.size()) +
          " of the others still hold the value read (a trigger on the table "
          "that skips or redirects updates?); nothing of the batch was written");
    }
    std::set<std::string> wrote;
    const int row_id = updated.Column("row_id", db::BinaryResult::Kind::kBytes);
    for (size_t k = 0; k < updated.size(); ++k) wrote.emplace(updated.Bytes(k, row_id));
    for (size_t k = 0; k < written.size(); ++k) written[k] = wrote.count(changes->row_pks[k]) > 0;
    const int missed = result->rows_done - int(updated.size());
    result->rows_done -= missed;
    result->rows_skipped += missed;
  }
  for (const RowChanges::Move& move : changes->row_moves) {
    if (!written[move.row]) continue;
    ++changes->moved[{move.from, move.to}];
    if (job_.per_row_audit) {
      changes->audit_pk.push_back(changes->row_pks[move.row]);
      changes->audit_col.push_back(job_.columns[move.column].name);
      changes->audit_from.push_back(std::to_string(move.from));
      changes->audit_to.push_back(std::to_string(move.to));
    }
  }
}

void BatchRotator::RecordFailures(pqxx::work& txn, const ClaimedBatch& batch,
                                  const std::string& worker_id, const RowChanges& changes,
                                  BatchResult* result) {
  if (changes.fail_pk.empty()) return;
  const pqxx::result fresh = txn.exec_prepared(
      prefix_ + "failures", batch.job_id, batch.batch_no, job_.schema_name + "." + job_.table_name,
      worker_id, db::TextArrayLiteral(changes.fail_pk), db::TextArrayLiteral(changes.fail_col),
      db::TextArrayLiteral(changes.fail_class), IntArrayLiteral(changes.fail_kid),
      db::TextArrayLiteral(changes.fail_detail));
  // Values this job quarantined in an earlier pass are not counted again.
  std::set<std::string> fresh_rows;
  for (const auto& row : fresh) fresh_rows.insert(row["pk"].as<std::string>());
  result->rows_skipped += result->rows_failed - int(fresh_rows.size());
  result->rows_failed = int(fresh_rows.size());
}

void BatchRotator::AuditValues(pqxx::work& txn, const ClaimedBatch& batch,
                               const RowChanges& changes) {
  if (changes.audit_pk.empty()) return;
  txn.exec_prepared(prefix_ + "value_audit", batch.job_id, batch.batch_no,
                    db::TextArrayLiteral(changes.audit_pk), db::TextArrayLiteral(changes.audit_col),
                    IntArrayLiteral(changes.audit_from), IntArrayLiteral(changes.audit_to));
}

std::string BatchRotator::AwsKmsKeyArn(uint32_t key) const {
  return key == kAwsKmsSourceKey ? job_.aws_kms_source_key_arn : *job_.aws_kms_key_arn;
}

void BatchRotator::Complete(pqxx::work& txn, const ClaimedBatch& batch,
                            const std::string& worker_id, const LockedBatch& locked,
                            const RowChanges& changes, const BatchResult& result) {
  std::map<std::string, int> moved_keys;  // "1->2" -> values
  const std::string prefix = job_.transit_key_ref ? "vault:v" : "";
  for (const auto& [keys, n] : changes.moved) {
    moved_keys[job_.aws_kms_key_arn ? AwsKmsKeyArn(keys.first) + "->" + AwsKmsKeyArn(keys.second)
                                    : prefix + std::to_string(keys.first) + "->" + prefix +
                                          std::to_string(keys.second)] = n;
  }
  nlohmann::json details = {{"keys", moved_keys}, {"attempt", batch.attempt}};
  if (batch.rollback) details["rollback"] = true;
  if (job_.transit_key_ref) details["transit_key"] = *job_.transit_key_ref;
  if (job_.aws_kms_key_arn) {
    details["aws_kms_keys"] = {{std::to_string(kAwsKmsSourceKey), job_.aws_kms_source_key_arn},
                               {std::to_string(kAwsKmsDestinationKey), *job_.aws_kms_key_arn}};
  }
  if (!changes.fail_pk.empty()) details["quarantined_classes"] = changes.fail_class;
  if (locked.progress.resume_after || locked.earlier_done || locked.earlier_skipped ||
      locked.earlier_failed) {
    // The keys moved by earlier chunks are in their rows' value audit (if kept); the audit row
    // counts the whole batch.
    details["resumed_from_checkpoint"] = true;
  }
  txn.exec_prepared(prefix_ + "complete", batch.job_id, batch.batch_no, worker_id,
                    locked.earlier_done + result.rows_done,
                    locked.earlier_skipped + result.rows_skipped,
                    locked.earlier_failed + result.rows_failed,
                    locked.earlier_ms + result.duration_ms, details.dump());
}

}  // namespace rekey::rotation
