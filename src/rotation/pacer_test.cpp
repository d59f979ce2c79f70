#include "rotation/pacer.h"

#include <gtest/gtest.h>

#include <deque>
#include <vector>

#include "common/error.h"

namespace rekey::rotation {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

// One history of chunk observations and the chunk size expected after each.
struct SizerCase {
  const char* name;
  int min_rows;
  int max_rows;
  double smoothing;
  int initial;
  std::vector<std::pair<int, int64_t>> chunks;  // (rows, microseconds)
  std::vector<int> expected_next;
};

TEST(ChunkSizer, TableOfHistories) {
  // Target 100 ms throughout.
  const std::vector<SizerCase> cases = {
      // 1 row/ms: the target is 100 rows. From 100 it stays; smoothing of equal samples is a no-op.
      {"steady at target", 10, 10000, 0.25, 100, {{100, 100000}, {100, 100000}}, {100, 100}},
      // 10 rows/ms wants 1000 rows, but growth is at most 2x per chunk.
      {"grows at most 2x per chunk",
       10,
       10000,
       1.0,
       100,
       {{100, 10000}, {200, 20000}, {400, 40000}, {800, 80000}, {1000, 100000}},
       {200, 400, 800, 1000, 1000}},
      // 0.1 row/ms wants 10 rows: shrinking is immediate.
      {"shrinks at once", 5, 10000, 1.0, 400, {{400, 4000000}}, {10}},
      // A fast chunk among slow ones moves the average a quarter of the way.
      {"smoothing damps an outlier",
       10,
       10000,
       0.25,
       100,
       {{100, 100000}, {100, 25000}},
       {100, 175}},
      // 1 row/ms for 10 rows... clamped to the floor and the ceiling.
      {"clamped to the minimum", 50, 10000, 1.0, 100, {{100, 10000000}}, {50}},
      {"clamped to the maximum", 10, 300, 1.0, 250, {{250, 1000}}, {300}},
      // Empty or instantaneous chunks teach nothing.
      {"ignores empty chunks", 10, 10000, 1.0, 100, {{0, 5000}, {100, 0}}, {100, 100}},
      {"initial size clamped", 10, 80, 1.0, 500, {}, {}},
  };
  for (const auto& c : cases) {
    ChunkSizer sizer(milliseconds(100), c.min_rows, c.max_rows, c.smoothing, c.initial);
    if (c.chunks.empty()) {
      EXPECT_EQ(sizer.next(), 80) << c.name;
      continue;
    }
    ASSERT_EQ(c.chunks.size(), c.expected_next.size()) << c.name;
    for (size_t i = 0; i < c.chunks.size(); ++i) {
      const int next = sizer.Observe(c.chunks[i].first, microseconds(c.chunks[i].second));
      EXPECT_EQ(next, c.expected_next[i]) << c.name << ", after chunk " << i;
      EXPECT_EQ(sizer.next(), next) << c.name;
    }
  }
}

TEST(PacingOptions, RejectsNonsense) {
  PacingOptions ok;
  EXPECT_NO_THROW(ok.Validate());
  EXPECT_FALSE(ok.chunked());
  PacingOptions rate;
  rate.max_rows_per_second = 10;
  EXPECT_TRUE(rate.chunked());
  PacingOptions bad = ok;
  bad.max_rows_per_second = -1;
  EXPECT_THROW(bad.Validate(), ConfigError);
  bad = ok;
  bad.min_chunk_rows = 0;
  EXPECT_THROW(bad.Validate(), ConfigError);
  bad = ok;
  bad.max_chunk_rows = ok.min_chunk_rows - 1;
  EXPECT_THROW(bad.Validate(), ConfigError);
  bad = ok;
  bad.target_batch = milliseconds(-5);
  EXPECT_THROW(bad.Validate(), ConfigError);
}

TEST(Pacer, ChunkSizesFollowTheOptionsAndTheJob) {
  // Without a target, a rate-limited chunk is a twentieth of a second's rows, at least
  // min_chunk_rows and at most the job's batch: (rows/s, batch size) -> chunk rows.
  const struct {
    double rate;
    int batch;
    int chunk;
  } cases[] = {{5000, 1000, 250}, {1000, 700, 50},     {100, 700, 50},
               {1e6, 1000, 1000}, {20000, 5000, 1000}, {5000, 100, 100}};
  for (const auto& c : cases) {
    PacingOptions rate_only;
    rate_only.max_rows_per_second = c.rate;
    EXPECT_EQ(Pacer(rate_only).MakeSizer(c.batch).next(), c.chunk)
        << c.rate << " rows/s, batch " << c.batch;
  }
  PacingOptions unlimited;
  EXPECT_EQ(Pacer(unlimited).MakeSizer(700).next(), 700) << "no brakes: one chunk per batch";
  PacingOptions target;
  target.target_batch = milliseconds(200);
  target.min_chunk_rows = 40;
  // With a target it starts small and grows towards the target.
  EXPECT_EQ(Pacer(target).MakeSizer(1000).next(), 80);
}

// Replication lag decisions from an injected lag source: (limit, lags seen) -> polls paused.
TEST(Pacer, PausesWhileReplicationLagExceedsTheLimit) {
  struct Case {
    const char* name;
    std::optional<int64_t> limit_ms;
    std::vector<std::optional<int64_t>> lags;  // successive readings; nullopt: no replica
    int expected_polls;
    size_t expected_reads;
  };
  const std::vector<Case> cases = {
      {"no limit: never asks", std::nullopt, {}, 0, 0},
      {"no replica", 1000, {std::nullopt}, 0, 1},
      {"within the limit", 1000, {999}, 0, 1},
      {"at the limit", 1000, {1000}, 0, 1},
      {"lagging, then caught up", 1000, {5000, 2000, 1001, 10}, 3, 4},
      {"lagging, then the replica went away", 1000, {5000, std::nullopt}, 1, 2},
  };
  for (const auto& c : cases) {
    PacingOptions options;
    if (c.limit_ms) options.max_replication_lag = milliseconds(*c.limit_ms);
    options.lag_poll = milliseconds(1234);
    Pacer pacer(options);
    std::deque<std::optional<int64_t>> lags(c.lags.begin(), c.lags.end());
    size_t reads = 0;
    LagSource source = [&]() -> std::optional<milliseconds> {
      ++reads;
      if (lags.empty()) ADD_FAILURE() << c.name << ": read more often than expected";
      auto lag = lags.empty() ? std::optional<int64_t>() : lags.front();
      if (!lags.empty()) lags.pop_front();
      if (!lag) return std::nullopt;
      return milliseconds(*lag);
    };
    std::vector<milliseconds> sleeps;
    std::atomic<bool> stop{false};
    const int polls =
        pacer.WaitForReplicas(source, stop, "w", [&](milliseconds d) { sleeps.push_back(d); });
    EXPECT_EQ(polls, c.expected_polls) << c.name;
    EXPECT_EQ(reads, c.expected_reads) << c.name;
    EXPECT_EQ(sleeps.size(), size_t(c.expected_polls)) << c.name;
    for (auto d : sleeps) EXPECT_EQ(d, milliseconds(1234)) << c.name;
  }
}

TEST(Pacer, StopEndsAReplicationPause) {
  PacingOptions options;
  options.max_replication_lag = milliseconds(10);
  Pacer pacer(options);
  std::atomic<bool> stop{false};
  int reads = 0;
  const int polls = pacer.WaitForReplicas(
      [&]() -> std::optional<milliseconds> {
        ++reads;
        return milliseconds(60000);
      },
      stop, "w", [&](milliseconds) { stop = true; });
  EXPECT_EQ(polls, 1);
  EXPECT_EQ(reads, 1);
}

// The row bucket: reservations of many tokens at once, and refunds of the unused ones.
TEST(RowTokenBucket, ReservesChunksAndRefundsTheUnusedRows) {
  using Clock = std::chrono::steady_clock;
  kms::TokenBucket bucket(1000, 1000);  // 1000 rows/s, one second of burst
  const Clock::time_point t0{};
  EXPECT_EQ(bucket.Reserve(t0, 600).count(), 0);
  EXPECT_EQ(bucket.Reserve(t0, 400).count(), 0);
  // The bucket is empty: 500 more rows are 0.5 s away.
  EXPECT_EQ(std::chrono::duration_cast<milliseconds>(bucket.Reserve(t0, 500)).count(), 500);
  // The chunk held only 100 of its 500 rows: the 400 unused come back.
  bucket.Refund(400);
  EXPECT_EQ(std::chrono::duration_cast<milliseconds>(bucket.Reserve(t0, 100)).count(), 200);
  // A refund never raises the bucket above its burst.
  kms::TokenBucket full(1000, 1000);
  full.Refund(5000);
  EXPECT_EQ(full.Reserve(t0, 1000).count(), 0);
  EXPECT_GT(full.Reserve(t0, 1).count(), 0);
}

}  // namespace
}  // namespace rekey::rotation
