// Values of megabytes (issue 22, "batches by bytes as well as rows"): a real `rekey work` rotates
// values of 64 bytes to 600 MiB, each decrypted here afterwards, while this test samples the
// worker's peak resident memory (VmHWM in /proc/<pid>/status). The figures are printed for the
// record (docs/operations.md, "Values of megabytes"); the assertions are bounds on memory that a
// chunk taking a whole batch of such values, or a worker holding a value's copies, would break,
// not timings. Values are written and read back here in binary (db/binary_result.h): the hex
// text of a value over 512 MiB passes PostgreSQL's 1 GB limit.
//
// REKEY_HUGE_WORKER=<path> runs that `rekey` binary as the worker instead of this build's, to
// measure another build (before and after a change) on the same values.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "db/binary_result.h"
#include "harness/pg_server.h"
#include "harness/process.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

constexpr int64_t kMiB = int64_t(1) << 20;

// Under AddressSanitizer or ThreadSanitizer the rekey child's resident memory is the sanitizer
// allocator's (ASan keeps freed blocks in a 256 MiB quarantine; both keep shadow memory), not the
// worker's: a bound on it would measure the instrumentation. The sanitized suites still rotate
// and check every value; the plain `make test` holds the memory bound.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kAllocatorIsInstrumented = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kAllocatorIsInstrumented = true;
#else
constexpr bool kAllocatorIsInstrumented = false;
#endif
#else
constexpr bool kAllocatorIsInstrumented = false;
#endif

// The plaintext of row `id`, `size` bytes: its id, then a pattern that differs per row.
std::string BigPlaintext(int64_t id, int64_t size) {
  std::string text = "row " + std::to_string(id) + ":";
  text.resize(size_t(size));
  for (size_t i = 16; i < text.size(); ++i) text[i] = char('a' + (i * 7 + size_t(id)) % 26);
  return text;
}

// The peak resident set of process `pid` so far, in KiB (0 once it is gone).
int64_t PeakRssKib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  }
  return 0;
}

class HugeValuesTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }

  // Creates `table` with rows id -> plaintext size, each sealed under key 1 with associated data
  // "b:<id>".
  void Fill(const std::string& table, const std::vector<std::pair<int64_t, int64_t>>& rows) {
    Exec("CREATE TABLE " + table + " (id bigint PRIMARY KEY, token bytea)");
    const std::string insert = "huge_insert_" + std::to_string(++statements_);
    conn().prepare(insert, "INSERT INTO " + table + " (id, token) VALUES ($1::bigint, $2::bytea)");
    for (const auto& [id, size] : rows) {
      const std::string token = TinkEncrypt(1, BigPlaintext(id, size), "b:" + std::to_string(id));
      pqxx::work txn(conn());
      db::ExecBinary(txn, insert,
                     {db::BinaryParam::Text(std::to_string(id)), db::BinaryParam::Binary(token)});
      txn.commit();
    }
  }

  // Creates a one-stage job over `table` of `batch_size` rows a batch, runs one worker with
  // `work_flags` until the job is done (or `limit` passes), and returns its peak RSS in MiB.
  double RotateAndMeasure(const std::string& table, int batch_size,
                          const std::vector<std::string>& work_flags,
                          std::chrono::seconds limit = std::chrono::hours(1)) {
    const std::string job = CreateJob(table, batch_size);
    std::vector<std::string> args{"work", "--job", job};
    args.insert(args.end(), work_flags.begin(), work_flags.end());
    const double peak = RunAndMeasure(args, nullptr, limit);
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed")
        << Scalar("SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + job);
    return peak;
  }

  // Creates a one-stage job over `table` of `batch_size` rows a batch; returns its id.
  std::string CreateJob(const std::string& table, int batch_size) {
    ProcessResult created =
        RunRekey({"--db", conninfo(), "job", "create", "--table", table, "--column", "token",
                  "--map", "1:2", "--ad-template", "b:{pk}", "--batch-size",
                  std::to_string(batch_size), "--stages", "100", "--observe", "0s"},
                 WorkerEnv());
    EXPECT_EQ(created.exit_code, 0) << created.err;
    return std::to_string(Count("SELECT max(job_id) FROM rekey.jobs"));
  }

  // Runs `rekey work --job <job>` until every batch of the job is done, then stops it (SIGTERM)
  // before its stage's gate ends, and returns its peak RSS in MiB then: the batch path's alone.
  // Gives up when a batch fails, the worker exits or ten minutes pass. *all_done: whether every
  // batch was done.
  double RotateBatchesAndMeasure(const std::string& job, bool* all_done) {
    ChildProcess child(WorkerArgv({"work", "--job", job}), WorkerEnv());
    const std::string batches = "SELECT count(*) FROM rekey.batches WHERE job_id = " + job;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
    int64_t peak_kib = 0;
    int64_t left = -1;
    while (child.Running() && std::chrono::steady_clock::now() < deadline) {
      peak_kib = std::max(peak_kib, PeakRssKib(child.pid()));
      left = Count(batches + " AND state <> 'done'");
      if (left == 0 || Count(batches + " AND state = 'failed'") > 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    peak_kib = std::max(peak_kib, PeakRssKib(child.pid()));
    left = Count(batches + " AND state <> 'done'");  // the worker may have finished first
    *all_done = left == 0;
    child.Signal(SIGTERM);
    const ProcessResult stopped = child.Wait(60);
    if (!*all_done) {
      ADD_FAILURE() << "job " << job << "'s batches not all done: "
                    << Scalar(
                           "SELECT string_agg(state || ': ' || coalesce(last_error, ''), '; ') "
                           "FROM rekey.batches WHERE job_id = " +
                           job)
                    << "\nworker (exit " << stopped.exit_code
                    << "): " << stopped.err.substr(0, 2000);
    }
    return double(peak_kib) / 1024;
  }

  // argv of `rekey --db <this database> args...`: this build's, or REKEY_HUGE_WORKER's.
  std::vector<std::string> WorkerArgv(const std::vector<std::string>& args) {
    const char* worker = std::getenv("REKEY_HUGE_WORKER");
    std::vector<std::string> argv{worker != nullptr && *worker != '\0' ? worker : REKEY_BINARY,
                                  "--db", conninfo()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

  // Runs `rekey <args>` to its end, expecting exit 0, and returns its peak RSS in MiB; its
  // standard output into *out if given. Stops it (SIGTERM) if it runs longer than `limit`: a
  // worker whose gate cannot read a value retries it forever.
  double RunAndMeasure(const std::vector<std::string>& args, std::string* out = nullptr,
                       std::chrono::seconds limit = std::chrono::hours(1)) {
    ChildProcess child(WorkerArgv(args), WorkerEnv());
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int64_t peak_kib = 0;
    while (child.Running()) {
      peak_kib = std::max(peak_kib, PeakRssKib(child.pid()));
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "rekey " << args[0] << " still running after " << limit.count() << " s";
        child.Signal(SIGTERM);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ProcessResult done = child.Wait(60);
    EXPECT_EQ(done.exit_code, 0) << done.err;
    if (out != nullptr) *out = done.out;
    return double(peak_kib) / 1024;
  }

  // Every value of `table` is under key 2 and opens to its plaintext; returns how many were
  // checked.
  int ExpectAllRotated(const std::string& table,
                       const std::vector<std::pair<int64_t, int64_t>>& rows) {
    int checked = 0;
    const std::string select = "huge_select_" + std::to_string(++statements_);
    conn().prepare(select, "SELECT token FROM " + table + " WHERE id = $1::bigint");
    for (const auto& [id, size] : rows) {
      pqxx::work txn(conn());
      const db::BinaryResult row =
          db::ExecBinary(txn, select, {db::BinaryParam::Text(std::to_string(id))});
      uint32_t key = 0;
      const std::string plaintext = TinkDecrypt(
          std::string(row.Bytes(0, row.Column("token", db::BinaryResult::Kind::kBytes))), &key,
          "b:" + std::to_string(id));
      EXPECT_EQ(key, 2u) << "row " << id;
      EXPECT_TRUE(plaintext == BigPlaintext(id, size)) << "row " << id << " (" << size << " bytes)";
      ++checked;
    }
    return checked;
  }

 private:
  int statements_ = 0;  // prepared so far on conn()
};

// Twelve values of 8 MiB among small ones of 64 bytes, in batches of 100 rows (so each table is
// one planned batch), rotated twice: with --batch-bytes 16MiB the worker moves two values per
// transaction, without a bound (0) all twelve in one; the bounded worker's peak memory is well
// under half the unbounded one's. Every value decrypts to its plaintext under the new key.
TEST_F(HugeValuesTest, EightMiBValuesMoveAFewPerTransactionWithinBoundedMemory) {
  std::vector<std::pair<int64_t, int64_t>> rows;
  for (int64_t id = 1; id <= 5; ++id) rows.push_back({id, 64});
  for (int64_t id = 6; id <= 17; ++id) rows.push_back({id, 8 * kMiB});
  for (int64_t id = 18; id <= 20; ++id) rows.push_back({id, 64});
  Fill("public.bounded", rows);
  Fill("public.unbounded", rows);
  const double bounded = RotateAndMeasure("public.bounded", 100, {"--batch-bytes", "16MiB"});
  const double unbounded = RotateAndMeasure("public.unbounded", 100, {"--batch-bytes", "0"});
  std::printf(
      "[ rss      ] rekey work over 8 x 64 B and 12 x 8 MiB in one batch: peak RSS %.1f MiB "
      "with --batch-bytes 16MiB, %.1f MiB with --batch-bytes 0\n",
      bounded, unbounded);
  EXPECT_EQ(ExpectAllRotated("public.bounded", rows), 20);
  EXPECT_EQ(ExpectAllRotated("public.unbounded", rows), 20);
  EXPECT_GT(bounded, 0.0) << "the worker's memory was sampled";
  if (kAllocatorIsInstrumented) {
    std::printf("[ rss      ] not bounded here: the sanitizer's allocator holds this memory\n");
    return;
  }
  EXPECT_LT(bounded, unbounded / 2);
}

// Many values of 8 MiB (REKEY_HUGE_VALUES of them, default 40; the figure is 1,000, 8 GiB,
// which takes minutes and 20 GB of disk, so it is run by hand:
// `REKEY_HUGE_VALUES=1000 build/huge_values_pg_test --gtest_filter='*DoesNotGrow*'`), rotated
// with --batch-bytes 16MiB: the worker's peak memory has an absolute bound that does not depend on
// how many values there are (it is about 10 x the bytes of a transaction, docs/operations.md
// "Values of megabytes"), where a worker holding a batch of 100 such values would need 5 GiB;
// so has `rekey job verify` afterwards. Before gates and verify read in pages bounded by bytes,
// 40 values took the worker past the bound (a stage's gate read the batch's values at once).
TEST_F(HugeValuesTest, ManyEightMiBValuesRotateInMemoryThatDoesNotGrowWithTheirNumber) {
  const char* env = std::getenv("REKEY_HUGE_VALUES");
  const int64_t count = env != nullptr && *env != '\0' ? std::stoll(env) : 40;
  std::vector<std::pair<int64_t, int64_t>> rows;
  for (int64_t id = 1; id <= count; ++id) rows.push_back({id, 8 * kMiB});
  Fill("public.many", rows);
  const auto started = std::chrono::steady_clock::now();
  const double peak = RotateAndMeasure("public.many", 100, {"--batch-bytes", "16MiB"});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf(
      "[ rss      ] rekey work over %lld x 8 MiB (%.1f GiB) in batches of 100 rows, --batch-bytes "
      "16MiB: peak RSS %.1f MiB, %.1f s\n",
      static_cast<long long>(count), double(count) * 8 / 1024, peak, seconds);
  EXPECT_EQ(ExpectAllRotated("public.many", rows), count);
  const double verify_peak =
      RunAndMeasure({"job", "verify", Scalar("SELECT max(job_id) FROM rekey.jobs")});
  std::printf("[ rss      ] rekey job verify over the same values: peak RSS %.1f MiB\n",
              verify_peak);
  EXPECT_GT(peak, 0.0) << "the worker's memory was sampled";
  if (kAllocatorIsInstrumented) {
    std::printf("[ rss      ] not bounded here: the sanitizer's allocator holds this memory\n");
    return;
  }
  EXPECT_LT(peak, 512.0) << "MiB of peak RSS for transactions of 16 MiB";
  EXPECT_LT(verify_peak, 512.0) << "MiB of peak RSS for pages of 16 MiB";
}

// One value of 64 MiB among small ones rotates (a chunk always takes at least one row, however
// large), its stage's gate and `rekey job verify` included. The whole job's worker and the verify
// each hold a few copies of the value at most: the gate and verify read values in binary; read as
// hex text, the gate took the worker to 530 MiB.
TEST_F(HugeValuesTest, ASixtyFourMiBValueRotates) {
  const std::vector<std::pair<int64_t, int64_t>> rows = {{1, 64}, {2, 64 * kMiB}, {3, 64}};
  Fill("public.blobs", rows);
  const double peak = RotateAndMeasure("public.blobs", 100, {});
  const double verify_peak =
      RunAndMeasure({"job", "verify", Scalar("SELECT max(job_id) FROM rekey.jobs")});
  std::printf(
      "[ rss      ] rekey work over 2 x 64 B and 1 x 64 MiB: peak RSS %.1f MiB; rekey job verify: "
      "%.1f MiB\n",
      peak, verify_peak);
  EXPECT_EQ(ExpectAllRotated("public.blobs", rows), 3);
  EXPECT_GT(peak, 0.0) << "the worker's memory was sampled";
  if (kAllocatorIsInstrumented) {
    std::printf("[ rss      ] not bounded here: the sanitizer's allocator holds this memory\n");
    return;
  }
  EXPECT_LT(peak, 6 * 64.0) << "MiB of peak RSS for a whole job over one value of 64 MiB";
  EXPECT_LT(verify_peak, 4 * 64.0) << "MiB of peak RSS to verify one value of 64 MiB";
}

// One value alone in its table, of 64 B, 1 MiB and 64 MiB, each rotated by its own worker, stopped
// once the batch is done (the batch path's memory, not the gate's): the peak memory of each is
// printed (docs/operations.md, "Values of megabytes"), and a value's worker holds a few copies of
// it at most.
TEST_F(HugeValuesTest, OneValueOfEachSizeTakesAFewTimesItsSize) {
  std::string figures;
  double peak_64_mib = 0;
  for (const int64_t size : {int64_t(64), kMiB, 64 * kMiB}) {
    const std::string table = "public.single_" + std::to_string(size);
    const std::vector<std::pair<int64_t, int64_t>> rows = {{1, size}};
    Fill(table, rows);
    bool done = false;
    const double peak = RotateBatchesAndMeasure(CreateJob(table, 100), &done);
    EXPECT_TRUE(done);
    EXPECT_EQ(ExpectAllRotated(table, rows), 1);
    figures += " " + std::to_string(size) + " B: " + std::to_string(int(peak + 0.5)) + " MiB;";
    if (size == 64 * kMiB) peak_64_mib = peak;
  }
  std::printf("[ rss      ] rekey work over one value, peak RSS by its size:%s\n", figures.c_str());
  EXPECT_GT(peak_64_mib, 0.0) << "the worker's memory was sampled";
  if (kAllocatorIsInstrumented) {
    std::printf("[ rss      ] not bounded here: the sanitizer's allocator holds this memory\n");
    return;
  }
  EXPECT_LT(peak_64_mib, 5 * 64.0) << "MiB of peak RSS for one value of 64 MiB";
}

// A value larger than 512 MiB (600 MiB) rotates, its whole job to completion (the stage's gate,
// promotion, the sweep), and opens to its plaintext under the new key; `rekey job verify` then
// finds all three values under it. Its hex text would pass PostgreSQL's 1 GB allocation limit, so
// a worker or a gate reading results as text cannot read it at all (a gate so retried forever);
// and the UPDATE sends back its digest, not the value, which with the new value would pass the
// same limit in one message. The worker holds a few copies of it at most.
// Not under sanitizers: their allocators would need gigabytes more, and minutes, for one value.
TEST_F(HugeValuesTest, AValueLargerThanHalfAGibibyteRotates) {
  if (kAllocatorIsInstrumented) {
    GTEST_SKIP() << "600 MiB through a sanitizer's allocator: several GiB and minutes";
  }
  const std::vector<std::pair<int64_t, int64_t>> rows = {{1, 64}, {2, 600 * kMiB}, {3, 64}};
  Fill("public.huge", rows);
  const auto started = std::chrono::steady_clock::now();
  const double peak = RotateAndMeasure("public.huge", 100, {}, std::chrono::minutes(5));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const std::string job = Scalar("SELECT max(job_id) FROM rekey.jobs");
  ASSERT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  EXPECT_EQ(Scalar("SELECT values_checked || ' ' || decrypt_errors FROM rekey.gates WHERE "
                   "job_id = " +
                   job + " ORDER BY stage_no DESC LIMIT 1"),
            "3 0");
  std::string verified;
  const double verify_peak = RunAndMeasure({"job", "verify", job}, &verified);
  std::printf(
      "[ rss      ] rekey work over 2 x 64 B and 1 x 600 MiB, the whole job: peak RSS %.1f MiB, "
      "%.1f s; rekey job verify: %.1f MiB\n",
      peak, seconds, verify_peak);
  EXPECT_NE(verified.find("3 values: 3 under target keys, 0 under source keys, 0 failed"),
            std::string::npos)
      << verified;
  EXPECT_EQ(ExpectAllRotated("public.huge", rows), 3);
  EXPECT_LT(peak, 6 * 600.0) << "MiB of peak RSS for a whole job over one value of 600 MiB";
  EXPECT_LT(verify_peak, 4 * 600.0) << "MiB of peak RSS to verify one value of 600 MiB";
}

// A value over 1 MiB goes back to the UPDATE as its SHA-256, not whole (kCompareDigestAbove,
// docs/safety.md invariant 3), and the application's write still wins: its transaction has
// replaced the 2 MiB value of row 1 but not committed, so the batch reads the committed value
// and its UPDATE waits for the row; then the application commits, the UPDATE re-checks the row's
// newest version against the digest of the value read, and leaves it. The row counts as skipped,
// and the sweep moves the application's value to key 2 afterwards.
TEST_F(HugeValuesTest, ALargeValueTheApplicationRewritesMeanwhileKeepsTheApplicationsWrite) {
  const std::vector<std::pair<int64_t, int64_t>> rows = {{1, 2 * kMiB}, {2, 64}};
  Fill("public.raced", rows);
  const std::string job = CreateJob("public.raced", 100);
  const std::string written = "written by the application " + BigPlaintext(7, 2 * kMiB);
  pqxx::connection application(conninfo());
  auto write = std::make_unique<pqxx::work>(application);
  write->exec_params("UPDATE public.raced SET token = $1 WHERE id = 1",
                     pqxx::binarystring(TinkEncrypt(1, written, "b:1")));
  ChildProcess worker(WorkerArgv({"work", "--job", job}), WorkerEnv());
  bool blocked = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!blocked && worker.Running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    blocked = Count(
                  "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND application_name LIKE 'rekey-worker%' AND wait_event_type = 'Lock'") > 0;
  }
  ASSERT_TRUE(blocked) << worker.Wait(5).err;
  write->commit();
  const ProcessResult done = worker.Wait(120);
  ASSERT_EQ(done.exit_code, 0) << done.err;
  EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed");
  EXPECT_EQ(Scalar("SELECT rows_done || ' ' || rows_skipped FROM rekey.batches WHERE job_id = " +
                   job + " ORDER BY batch_no LIMIT 1"),
            "1 1");
  pqxx::work txn(conn());
  const pqxx::binarystring token(txn.exec1("SELECT token FROM public.raced WHERE id = 1")["token"]);
  uint32_t key = 0;
  EXPECT_TRUE(TinkDecrypt(token.str(), &key, "b:1") == written) << "the application's write";
  EXPECT_EQ(key, 2u);
}

}  // namespace
}  // namespace rekey::testing
