#include "jobs/rollout_planner.h"

#include <openssl/evp.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/bytes.h"
#include "common/error.h"
#include "db/binary_array.h"
#include "db/identifiers.h"
#include "db/named_query.h"
#include "jobs/stage_bucket.h"

namespace rekey::jobs {
namespace {

// Keys per FETCH: few round trips (50 per million rows), small results (a few hundred KB).
constexpr int kFetchRows = 20000;
// Finished batches are written once their recorded keys reach this size, and at the end.
constexpr size_t kFlushBytes = size_t(1) << 20;
constexpr const char* kCursor = "rekey_rollout_keys";
constexpr const char* kKeyColumn = "pk_text";  // the key query's one column

// A bounded queue between two threads. Push waits for room, Pop for an item; Push returns false
// once the queue is closed, Pop once it is closed and empty. Either side may close it, with an
// error for the other to rethrow (the first one is kept).
template <typename T>
class Handoff {
 public:
  explicit Handoff(size_t capacity) : capacity_(capacity) {}

  bool Push(T item) {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [this] { return items_.size() < capacity_ || closed_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    changed_.notify_all();
    return true;
  }

  bool Pop(T* item) {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [this] { return !items_.empty() || closed_; });
    if (items_.empty()) return false;
    *item = std::move(items_.front());
    items_.pop_front();
    changed_.notify_all();
    return true;
  }

  void Close(std::exception_ptr error = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    if (!error_) error_ = error;
    changed_.notify_all();
  }

  std::exception_ptr error() {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<T> items_;
  bool closed_ = false;
  std::exception_ptr error_;
};

// The cursor is declared under rollout_planner.stream_settings (why: see there), restored once it
// is declared.
void DeclareKeyCursor(pqxx::transaction_base& txn, const std::string& query) {
  const pqxx::row saved = txn.exec1(db::Query("jobs/rollout_planner.stream_settings"));
  txn.exec0(std::string("DECLARE ") + kCursor + " NO SCROLL CURSOR FOR " + query);
  txn.exec_params(db::Query("jobs/rollout_planner.restore_settings"),
                  saved["enable_sort"].as<std::string>(), saved["jit"].as<std::string>());
}

// The keys of the job's rows in key order (the key's own collation for text), as their key text.
// `table` is quoted; `key_text` and `key_order` are rekey.job_key_text_sql's and
// rekey.key_order_sql's expressions over t; `scope` is rekey.scope_condition's condition ('' for
// none).
std::string KeyQuery(const std::string& table, const std::string& key_text,
                     const std::string& key_order, const std::string& scope) {
  return "SELECT " + key_text + " AS " + kKeyColumn + " FROM " + table + " AS t WHERE true" +
         scope + " ORDER BY " + key_order;
}

// The keys of a query, in its order, a page of kFetchRows at a time: read through a cursor in
// the planning transaction, or, given a reader connection, by a thread of their own there, up to
// two pages ahead of the hashing.
class KeyPages {
 public:
  KeyPages(pqxx::transaction_base& txn, pqxx::connection* reader, const std::string& query)
      : txn_(txn) {
    if (!reader) {
      DeclareKeyCursor(txn, query);
      return;
    }
    thread_ = std::thread([this, reader, query] {
      try {
        pqxx::read_transaction rtxn(*reader);
        DeclareKeyCursor(rtxn, query);
        for (bool more = true; more;) {
          pqxx::result page = rtxn.exec(Fetch());
          more = page.size() == size_t(kFetchRows);
          if (!pages_.Push(std::move(page))) return;  // the planner stopped
        }
        pages_.Close();
      } catch (...) {
        pages_.Close(std::current_exception());
      }
    });
  }

  ~KeyPages() {
    if (!thread_.joinable()) return;
    pages_.Close();
    thread_.join();
  }

  // The next page; an empty result once every key was returned. Rethrows the reader's error.
  pqxx::result Next() {
    pqxx::result page;
    if (!thread_.joinable()) {
      if (done_) return page;
      page = txn_.exec(Fetch());
      done_ = page.size() < size_t(kFetchRows);
      if (done_) txn_.exec0(std::string("CLOSE ") + kCursor);
      return page;
    }
    if (pages_.Pop(&page)) return page;
    if (auto error = pages_.error()) std::rethrow_exception(error);
    return page;
  }

 private:
  static std::string Fetch() { return "FETCH " + std::to_string(kFetchRows) + " FROM " + kCursor; }

  pqxx::transaction_base& txn_;
  Handoff<pqxx::result> pages_{2};
  bool done_ = false;  // without a reader: every page read
  std::thread thread_;
};

// Runs statements in the order given: on a thread of its own when `background` (while this one
// hashes the next keys; at most two statements wait), else at once. Wait() returns once all ran
// and rethrows the first failure; after a failure nothing more runs.
class StatementRunner {
 public:
  explicit StatementRunner(bool background) {
    if (!background) return;
    thread_ = std::thread([this] {
      std::function<void()> statement;
      while (statements_.Pop(&statement)) {
        try {
          statement();
        } catch (...) {
          statements_.Close(std::current_exception());
          return;
        }
      }
    });
  }

  ~StatementRunner() {
    if (!thread_.joinable()) return;
    statements_.Close();
    thread_.join();
  }

  void Run(std::function<void()> statement) {
    if (!thread_.joinable()) {
      statement();
    } else if (!statements_.Push(std::move(statement))) {
      std::rethrow_exception(statements_.error());
    }
  }

  void Wait() {
    if (!thread_.joinable()) return;
    statements_.Close();
    thread_.join();
    if (auto error = statements_.error()) std::rethrow_exception(error);
  }

 private:
  Handoff<std::function<void()>> statements_{2};
  std::thread thread_;
};

struct Stage {
  int stage_no = 0;
  int bucket_lo = 0;
  int bucket_hi = 0;
  bool record_keys = false;  // the stage ends below 100%
  int64_t rows = 0;          // its rows so far
  int batches = 0;           // its batches started so far
  // The open batch (batches > 0): its lower bound (none for the first), rows and keys.
  std::optional<std::string> lo;
  int open_rows = 0;
  std::string keys;  // an array literal under construction, "{" and the keys so far
};

struct FinishedBatch {
  int provisional_no = 0;  // negative, in the order batches finish
  size_t stage = 0;        // index into the stages, in bucket order
  int n = 0;               // its number within its stage
};

// Writes finished batches with provisional (negative) numbers, since a stage's batches finish
// interleaved with the others' while the final numbering goes stage by stage; Renumber() then
// gives every batch its final number in one statement.
//
// With `background`, the INSERTs run on a thread of their own (StatementRunner): this thread
// then must not use `txn` until Renumber().
class BatchWriter {
 public:
  // The batches of leaf partition `leaf` (its schema and name; nullopt: the job's table itself).
  BatchWriter(pqxx::transaction_base& txn, int64_t job_id, bool background,
              std::optional<std::pair<std::string, std::string>> leaf)
      : txn_(txn), job_(job_id), leaf_(std::move(leaf)), runner_(background) {}

  void Add(const Stage& stage, size_t stage_index, std::optional<std::string> hi) {
    FinishedBatch b{-int(finished_.size()) - 1, stage_index, stage.batches - 1};
    finished_.push_back(b);
    numbers_ += (numbers_.size() > 1 ? "," : "") + std::to_string(b.provisional_no);
    stage_nos_ += (stage_nos_.size() > 1 ? "," : "") + std::to_string(stage.stage_no);
    rows_ += (rows_.size() > 1 ? "," : "") + std::to_string(stage.open_rows);
    if (stage.lo) {
      lo_.Append(*stage.lo);
    } else {
      lo_.AppendNull();
    }
    if (hi) {
      hi_.Append(*hi);
    } else {
      hi_.AppendNull();
    }
    if (stage.record_keys && stage.open_rows > 0) {
      keys_.Append(stage.keys + "}");
      key_bytes_ += stage.keys.size();
    } else {
      keys_.AppendNull();
    }
    if (key_bytes_ >= kFlushBytes) Flush();
  }

  void Flush() {
    if (lo_.size() == 0) return;
    runner_.Run([&txn = txn_, job = job_, numbers = numbers_ + "}", stages = stage_nos_ + "}",
                 lo = lo_.Finish(), hi = hi_.Finish(), rows = rows_ + "}", keys = keys_.Finish(),
                 leaf = leaf_] {
      txn.exec_params(db::Query("jobs/rollout_planner.insert_batches"), job, numbers, stages, lo,
                      hi, rows, keys, leaf ? leaf->first.c_str() : nullptr,
                      leaf ? leaf->second.c_str() : nullptr);
    });
    numbers_ = stage_nos_ = rows_ = "{";
    lo_ = hi_ = keys_ = db::BinaryArray(db::BinaryArray::kTextOid);
    key_bytes_ = 0;
  }

  // Final numbers: after `first_batch`, by stage number, then by position within the stage.
  void Renumber(const std::vector<Stage>& stages, int first_batch) {
    Flush();
    runner_.Wait();
    std::vector<size_t> order(stages.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return stages[a].stage_no < stages[b].stage_no; });
    std::vector<int> offset(stages.size());
    int next = first_batch;
    for (size_t i : order) {
      offset[i] = next;
      next += stages[i].batches;
    }
    std::string from = "{", to = "{";
    for (const auto& b : finished_) {
      from += (from.size() > 1 ? "," : "") + std::to_string(b.provisional_no);
      to += (to.size() > 1 ? "," : "") + std::to_string(offset[b.stage] + b.n + 1);
    }
    txn_.exec_params(db::Query("jobs/rollout_planner.renumber"), job_, from + "}", to + "}");
  }

  int64_t written() const { return int64_t(finished_.size()); }

 private:
  pqxx::transaction_base& txn_;
  int64_t job_;
  std::optional<std::pair<std::string, std::string>> leaf_;
  std::vector<FinishedBatch> finished_;
  std::string numbers_ = "{", stage_nos_ = "{", rows_ = "{";
  db::BinaryArray lo_{db::BinaryArray::kTextOid};
  db::BinaryArray hi_{db::BinaryArray::kTextOid};
  db::BinaryArray keys_{db::BinaryArray::kTextOid};  // each an array literal, or NULL
  size_t key_bytes_ = 0;
  StatementRunner runner_;
};

// Plans `stages` (fresh: no rows, no batches) over one relation of the job, `table` (quoted; the
// leaf partition `leaf`, or the job's table itself when nullopt), numbering its batches after
// `first_batch`. Returns the number written.
int64_t PlanRelation(pqxx::transaction_base& txn, pqxx::connection* reader, int64_t job_id,
                     const std::string& table,
                     const std::optional<std::pair<std::string, std::string>>& leaf,
                     const std::string& key_text, const std::string& key_order,
                     const std::string& scope, int batch_size, const std::vector<int>& stage_of,
                     StageBucketHasher* hasher, std::vector<Stage>* stages, int first_batch) {
  KeyPages pages(txn, reader, KeyQuery(table, key_text, key_order, scope));
  // With a reader, nothing else uses `txn` until Renumber(), so the writes can run meanwhile.
  BatchWriter writer(txn, job_id, /*background=*/reader != nullptr, leaf);
  for (;;) {
    const pqxx::result keys = pages.Next();
    if (keys.empty()) break;
    // By name, looked up once a page rather than once a row.
    const pqxx::row::size_type key_column = keys.column_number(kKeyColumn);
    for (const auto& row : keys) {
      const pqxx::field field = row[key_column];
      const char* key = field.c_str();
      const size_t size = field.size();
      const int at = stage_of[size_t(hasher->Bucket(std::string_view(key, size)))];
      if (at < 0) continue;
      Stage& stage = (*stages)[size_t(at)];
      if (stage.rows % batch_size == 0) {
        // This key starts the stage's next batch and ends the open one.
        if (stage.batches > 0) writer.Add(stage, size_t(at), std::string(key, size));
        stage.lo = stage.batches == 0 ? std::nullopt
                                      : std::optional<std::string>(std::in_place, key, size);
        ++stage.batches;
        stage.open_rows = 0;
        stage.keys = "{";
      }
      if (stage.record_keys) db::AppendTextArrayElement(std::string_view(key, size), &stage.keys);
      ++stage.open_rows;
      ++stage.rows;
    }
  }
  for (size_t i = 0; i < stages->size(); ++i) {
    Stage& stage = (*stages)[i];
    if (stage.batches == 0) {
      // No rows: one empty batch over everything.
      stage.batches = 1;
      stage.lo.reset();
      stage.open_rows = 0;
    }
    writer.Add(stage, i, std::nullopt);
  }
  writer.Renumber(*stages, first_batch);
  return writer.written();
}

}  // namespace

StageBucketHasher::StageBucketHasher()
    : md_(EVP_MD_fetch(nullptr, "MD5", nullptr), EVP_MD_free),
      ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {}

int StageBucketHasher::Bucket(std::string_view pk_text) {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!available() || EVP_DigestInit_ex2(ctx_.get(), md_.get(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx_.get(), pk_text.data(), pk_text.size()) != 1 ||
      EVP_DigestFinal_ex(ctx_.get(), digest, &n) != 1 || n < 4) {
    throw PermanentError("OpenSSL could not compute an MD5 digest for a stage bucket");
  }
  return int(GetUint32BigEndian(digest) % kStageBuckets);
}

bool DeferRolloutPlanning(pqxx::transaction_base& txn) {
  if (!StageBucketHasher().available()) return false;
  txn.exec0(db::Query("jobs/rollout_planner.defer_planning"));
  return true;
}

int StageBucket(std::string_view pk_text) {
  StageBucketHasher hasher;
  if (!hasher.available()) throw PermanentError("OpenSSL offers no MD5 digest in this process");
  return hasher.Bucket(pk_text);
}

int64_t PlanRolloutInClient(pqxx::transaction_base& txn, int64_t job_id, pqxx::connection* reader) {
  StageBucketHasher hasher;
  if (!hasher.available()) throw PermanentError("OpenSSL offers no MD5 digest in this process");
  const pqxx::row job = txn.exec_params1(db::Query("jobs/rollout_planner.job"), job_id);
  const std::string key_text = job["key_text"].as<std::string>();
  const std::string key_order = job["key_order"].as<std::string>();
  const int batch_size = job["batch_size"].as<int>();
  const std::string scope = job["scope_condition"].as<std::string>();
  const int first_batch = job["last_batch_no"].as<int>();

  // The stages to plan, in bucket order, as rekey.plan_rollout finds them.
  std::vector<Stage> stages;
  for (const auto& row :
       txn.exec_params(db::Query("jobs/rollout_planner.stages_to_plan"), job_id)) {
    Stage s;
    s.stage_no = row["stage_no"].as<int>();
    s.bucket_lo = row["bucket_lo"].as<int>();
    s.bucket_hi = row["bucket_hi"].as<int>();
    s.record_keys = s.bucket_hi < kStageBuckets;
    stages.push_back(std::move(s));
  }
  if (stages.empty()) return 0;
  // stage_of[bucket]: index of the stage holding that bucket, or -1.
  std::vector<int> stage_of(kStageBuckets, -1);
  for (size_t i = 0; i < stages.size(); ++i) {
    for (int b = std::max(stages[i].bucket_lo, 0); b < std::min(stages[i].bucket_hi, kStageBuckets);
         ++b) {
      stage_of[size_t(b)] = int(i);
    }
  }

  // A partitioned table leaf by leaf, in rekey.job_leaves' order, as rekey.plan_rollout does.
  const pqxx::result leaves = txn.exec_params(db::Query("jobs/rollout_planner.leaves"), job_id);
  int64_t written = 0;
  for (const auto& leaf : leaves) {
    std::optional<std::pair<std::string, std::string>> name;
    if (!leaf["leaf_name"].is_null()) {
      name.emplace(leaf["leaf_schema"].as<std::string>(), leaf["leaf_name"].as<std::string>());
    }
    for (Stage& stage : stages) {
      // Each leaf's stages start afresh: no rows, no batches.
      stage.rows = 0;
      stage.batches = 0;
    }
    const int64_t n = PlanRelation(txn, reader, job_id, leaf["relation"].as<std::string>(), name,
                                   key_text, key_order, scope, batch_size, stage_of, &hasher,
                                   &stages, first_batch + int(written));
    written += n;
  }
  return written;
}

}  // namespace rekey::jobs
