#include "rotation/pacer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "db/named_query.h"

namespace rekey::rotation {

void PacingOptions::Validate() const {
  if (max_rows_per_second < 0) throw ConfigError("--max-rows-per-second must not be negative");
  if (target_batch.count() < 0) throw ConfigError("--target-batch-ms must not be negative");
  if (min_chunk_rows < 1) throw ConfigError("--min-chunk-rows must be at least 1");
  if (max_chunk_rows < min_chunk_rows) {
    throw ConfigError("--max-chunk-rows must be at least --min-chunk-rows");
  }
  if (!(smoothing > 0 && smoothing <= 1)) throw ConfigError("chunk smoothing must be in (0, 1]");
  if (max_replication_lag && max_replication_lag->count() < 0) {
    throw ConfigError("--max-replication-lag must not be negative");
  }
}

ChunkSizer::ChunkSizer(std::chrono::milliseconds target, int min_rows, int max_rows,
                       double smoothing, int initial_rows)
    : target_ms_(double(target.count())),
      min_rows_(std::max(min_rows, 1)),
      max_rows_(std::max(max_rows, std::max(min_rows, 1))),
      smoothing_(smoothing),
      next_(std::clamp(initial_rows, min_rows_, max_rows_)) {}

int ChunkSizer::Observe(int rows, std::chrono::microseconds elapsed) {
  if (rows < 1 || elapsed.count() <= 0 || target_ms_ <= 0) return next_;
  const double sample = rows / (double(elapsed.count()) / 1000.0);
  rows_per_ms_ = rows_per_ms_ == 0 ? sample : smoothing_ * sample + (1 - smoothing_) * rows_per_ms_;
  // Grow at most 2x per chunk: one fast chunk (cached pages, an idle server) must not make the
  // next one many times longer than the target. Shrinking is not limited: a slow database is
  // the case the target exists for.
  const double wanted = std::min(rows_per_ms_ * target_ms_, 2.0 * next_);
  next_ = int(std::clamp<double>(std::floor(wanted), min_rows_, max_rows_));
  return next_;
}

LagSource ReplicationLagOf(pqxx::connection& conn) {
  return [&conn]() -> std::optional<std::chrono::milliseconds> {
    pqxx::read_transaction txn(conn);
    const auto row = txn.exec1(db::Query("rotation/pacer.replication_lag"));
    txn.commit();
    if (row["replicas"].as<int64_t>() == 0) return std::nullopt;
    return std::chrono::milliseconds(int64_t(row["lag_ms"].as<double>()));
  };
}

Pacer::Pacer(PacingOptions options)
    : options_(std::move(options)),
      // The burst is one chunk's worth, not a second's: a worker that starts (or resumes
      // after a pause) would otherwise rewrite a second's rows at full speed first, which the
      // application's p99 felt in the benchmark (bench/README.md, "Gentleness").
      rows_bucket_(options_.max_rows_per_second,
                   std::max(1.0, options_.max_rows_per_second / kRateChunksPerSecond)) {
  options_.Validate();
}

ChunkSizer Pacer::MakeSizer(int job_batch_size) const {
  int fixed = std::max(job_batch_size, 1);
  if (options_.max_rows_per_second > 0) {
    // Under a rate limit, a chunk is at most a twentieth of a second's rows: the process then
    // rewrites in small, evenly spaced steps instead of a whole batch at once and a long wait,
    // which is what the application's tail latency notices (bench/README.md, "Gentleness").
    fixed = std::min(fixed, std::max(options_.min_chunk_rows,
                                     int(options_.max_rows_per_second / kRateChunksPerSecond)));
  }
  const int initial = options_.target_batch.count() > 0 ? options_.min_chunk_rows * 2 : fixed;
  const int max_rows = options_.target_batch.count() > 0 ? options_.max_chunk_rows : fixed;
  const int min_rows = std::min(options_.min_chunk_rows, max_rows);
  return ChunkSizer(options_.target_batch, min_rows, max_rows, options_.smoothing, initial);
}

int Pacer::WaitForReplicas(const LagSource& lag, const std::atomic<bool>& stop,
                           const std::string& worker_id, const PacerSleeper& sleep) const {
  if (!options_.max_replication_lag) return 0;
  const auto limit = *options_.max_replication_lag;
  int polls = 0;
  while (!stop) {
    const std::optional<std::chrono::milliseconds> current = lag();
    if (!current || *current <= limit) break;
    if (polls == 0) {
      if (options_.brakes) {
        options_.brakes->Engage("replication_lag", {{"replication_lag_ms", current->count()},
                                                    {"max_replication_lag_ms", limit.count()}});
      }
      log::Warn("pausing: replication lag exceeds the limit",
                {{"worker", worker_id},
                 {"replication_lag_ms", current->count()},
                 {"max_replication_lag_ms", limit.count()},
                 {"action", "pace.replication_lag"}});
    }
    ++polls;
    sleep(options_.lag_poll);
  }
  if (polls > 0 && options_.brakes) options_.brakes->Release("replication_lag");
  if (polls > 0 && !stop) {
    log::Info("resuming: replication lag back within the limit",
              {{"worker", worker_id}, {"polls", polls}, {"action", "pace.replication_lag"}});
  }
  return polls;
}

std::chrono::milliseconds Pacer::WaitForBrakes(const std::atomic<bool>& stop,
                                               const std::string& worker_id) const {
  if (!options_.brakes || !options_.brakes->engaged()) return std::chrono::milliseconds(0);
  const auto waited = options_.brakes->Wait(stop);
  log::Info("claim loop resumed after braking",
            {{"worker", worker_id}, {"waited_ms", waited.count()}, {"action", "brake.wait"}});
  return waited;
}

BatchResult Pacer::RunBatch(BatchRotator& rotator, pqxx::connection& conn,
                            const ClaimedBatch& batch, const std::string& worker_id,
                            ChunkSizer* sizer, const std::atomic<bool>& stop) {
  // Unpaced, a chunk is a whole batch_size: a batch as planned is one chunk, and a range that
  // holds more rows than planned (a sweep's, planned without a scan, or rows inserted since) is
  // still moved in transactions of at most batch_size rows.
  const bool paced = options_.chunked();
  BatchResult total;
  for (bool first = true;; first = false) {
    if (!first && stop) {
      // Between chunks the batch can be handed back without losing anything: it resumes from
      // its checkpoint wherever it is claimed next.
      pqxx::work txn(conn);
      ReleaseBatch(txn, batch, worker_id, "worker stopped between chunks", true);
      txn.commit();
      total.outcome = BatchResult::Outcome::kLost;
      return total;
    }
    if (!first && options_.brakes && options_.brakes->engaged()) {
      // Hold the batch (its checkpoint is committed) rather than write under a brake.
      WaitForBrakes(stop, worker_id);
      if (stop) continue;  // released at the top of the loop
    }
    const int rows = paced && sizer ? sizer->next() : std::max(rotator.job().batch_size, 1);
    const auto wait = rows_bucket_.Reserve(std::chrono::steady_clock::now(), rows);
    if (wait.count() > 0) std::this_thread::sleep_for(wait);
    const auto started = std::chrono::steady_clock::now();
    ChunkResult chunk = rotator.ProcessChunk(conn, batch, worker_id, rows);
    const auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - started);
    rows_bucket_.Refund(rows - chunk.rows_locked);
    total.outcome = chunk.batch.outcome;
    total.rows_done += chunk.batch.rows_done;
    total.rows_skipped += chunk.batch.rows_skipped;
    total.rows_failed += chunk.batch.rows_failed;
    total.duration_ms += chunk.batch.duration_ms;
    if (chunk.batch.outcome != BatchResult::Outcome::kDone || chunk.batch_finished) return total;
    // Only full chunks say how long `rows` rows take; the last one of a batch is usually short.
    if (paced && sizer) sizer->Observe(chunk.rows_locked, elapsed);
  }
}

}  // namespace rekey::rotation
