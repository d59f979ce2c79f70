// Gentleness for `rekey work`: how fast and in what steps a worker process may rewrite rows, so
// that the application sharing the database keeps its latency (issue 7, item 5).
//
// Three independent brakes, all off by default (then the claim loops run flat out and a batch is
// processed in chunks of the job's batch size: one transaction for a batch as planned, more for
// a range that holds more rows, such as a sweep's):
//
//  * --max-rows-per-second N: a token bucket over rows, shared by every claim loop of the
//    process. Before a chunk of at most k rows is locked, k tokens are reserved (waiting if
//    need be); the tokens of rows the chunk did not hold are refunded. So over any interval T
//    the process rewrites at most N*T + N/20 rows (the burst is one chunk's worth). Without a
//    target batch duration, a chunk is then at most N / kRateChunksPerSecond rows (at least
//    min_chunk_rows, at most the job's batch size): 250 rows at 5,000 rows/s, twenty short
//    transactions a second rather than five long ones.
//
//  * --target-batch-ms T: adaptive chunk size. Batches are planned ahead as primary-key ranges
//    (rekey.batches), so the plan is not changed; instead a claimed batch is processed in
//    chunks: each chunk locks the next k rows that still need work after the batch's checkpoint
//    (rekey.batches.resume_after), rewrites them, and commits the rows, the advanced checkpoint
//    and the batch's running counts in one transaction; the last chunk completes the batch with
//    its single completion audit row (BatchRotator::ProcessChunk). k adapts towards T like
//    pt-online-schema-change's --chunk-time: an exponentially weighted moving average of the
//    observed rows per millisecond, times T, growing at most 2x per chunk, clamped to
//    [min_chunk_rows, max_chunk_rows] (ChunkSizer). A worker killed between chunks loses
//    nothing: the rows of committed chunks are under the new key, the checkpoint says where to
//    resume, and whoever claims the batch next goes on from there.
//
//  * --max-replication-lag D: before claiming, the claim loop asks the primary for its replicas'
//    replay lag (pg_stat_replication; reading it needs pg_monitor or superuser) and sleeps,
//    polling, while the largest lag exceeds D. Pauses and resumptions are logged, and reported
//    as the replication_lag brake (brake.h) when brakes are set.
//
// And the brakes on the database's own signals (brake.h: WAL rate, slots, archiving,
// autovacuum, lock waits, Prometheus): a claim loop waits while one is engaged before claiming
// a batch (WaitForBrakes) and before each chunk after a batch's first.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <pqxx/pqxx>

#include "common/duration.h"  // ParseDuration, for the flags
#include "kms/token_bucket.h"
#include "rotation/batch_rotator.h"
#include "rotation/brake.h"

namespace rekey::rotation {

// Under --max-rows-per-second alone, chunks are sized for this many per second.
inline constexpr double kRateChunksPerSecond = 20;

struct PacingOptions {
  double max_rows_per_second = 0;             // <= 0: unlimited
  std::chrono::milliseconds target_batch{0};  // 0: batches are not split into chunks
  int min_chunk_rows = 50;
  int max_chunk_rows = 20000;
  double smoothing = 0.25;  // weight of the newest observation in the moving average
  std::optional<std::chrono::milliseconds> max_replication_lag;  // nullopt: not watched
  std::chrono::milliseconds lag_poll{1000};
  // The process's brakes, shared by every claim loop (and by the lock-wait watchdog); null: none.
  std::shared_ptr<Brakes> brakes;

  // True iff batches are processed in chunks (a rate limit or a target batch duration is set).
  bool chunked() const { return max_rows_per_second > 0 || target_batch.count() > 0; }
  // True iff any brake is set: the worker should then also spare the application its WAL
  // flushes (BatchRotator::set_wait_for_flush).
  bool gentle() const { return chunked() || max_replication_lag.has_value() || brakes != nullptr; }
  // Throws ConfigError naming the flag when a value is out of range.
  void Validate() const;
};

// The adaptive chunk-size controller. Not thread-safe: one per claim loop.
class ChunkSizer {
 public:
  // initial_rows is clamped into [min_rows, max_rows].
  ChunkSizer(std::chrono::milliseconds target, int min_rows, int max_rows, double smoothing,
             int initial_rows);

  // The row count for the next chunk.
  int next() const { return next_; }
  // Records a chunk that held `rows` rows and took `elapsed`; returns the new next(). Chunks of
  // fewer than 1 row or no measurable time teach nothing and leave next() as it is.
  int Observe(int rows, std::chrono::microseconds elapsed);
  // The smoothed rows per millisecond (0 before the first observation).
  double rows_per_ms() const { return rows_per_ms_; }

 private:
  double target_ms_;
  int min_rows_;
  int max_rows_;
  double smoothing_;
  double rows_per_ms_ = 0;
  int next_;
};

// The largest replay lag of the primary's replicas, or nullopt when there are none (or none
// reports a lag). Throws on database errors.
using LagSource = std::function<std::optional<std::chrono::milliseconds>()>;
// Reads pg_stat_replication over `conn` (outside any open transaction of the caller).
LagSource ReplicationLagOf(pqxx::connection& conn);

using PacerSleeper = std::function<void(std::chrono::milliseconds)>;

// Thread-safety: every method may be called from every claim loop at once.
class Pacer {
 public:
  explicit Pacer(PacingOptions options);

  const PacingOptions& options() const { return options_; }

  // Returns once the replicas' lag is within the limit (at once when no limit is set), or when
  // `stop` turns true. Sleeps with `sleep` between polls; logs the start and end of a pause.
  // Returns the number of polls that found the lag too high (0: no pause).
  int WaitForReplicas(const LagSource& lag, const std::atomic<bool>& stop,
                      const std::string& worker_id, const PacerSleeper& sleep) const;

  // Returns once no brake is engaged (at once without brakes) or `stop` turns true; logs a
  // pause of this claim loop that lasted. Returns how long it waited.
  std::chrono::milliseconds WaitForBrakes(const std::atomic<bool>& stop,
                                          const std::string& worker_id) const;

  // Processes `batch` in chunks (BatchRotator::ProcessChunk) sized by `sizer` (or of the job's
  // batch size when no target duration is set, or no pacing at all) under the process's row-rate
  // limit, if any. When `stop` turns true between chunks, the batch is released (it stays pending
  // with its checkpoint) and the outcome is kLost. The counts are those of this attempt.
  BatchResult RunBatch(BatchRotator& rotator, pqxx::connection& conn, const ClaimedBatch& batch,
                       const std::string& worker_id, ChunkSizer* sizer,
                       const std::atomic<bool>& stop);

  // A chunk sizer for one claim loop (nullopt-free: sized from the options and the job).
  ChunkSizer MakeSizer(int job_batch_size) const;

 private:
  PacingOptions options_;
  kms::TokenBucket rows_bucket_;
};

}  // namespace rekey::rotation
