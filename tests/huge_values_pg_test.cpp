// Values of megabytes (issue 22, "batches by bytes as well as rows"): a real `rekey work` rotates
// values of 64 bytes to 64 MiB, each decrypted here afterwards, while this test samples the
// worker's peak resident memory (VmHWM in /proc/<pid>/status). The figures are printed for the
// record (docs/operations.md, "Table shapes"); the assertion is a bound on memory that a chunk
// taking a whole batch of such values would break, not a timing.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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
    for (const auto& [id, size] : rows) {
      pqxx::work txn(conn());
      txn.exec_params(
          "INSERT INTO " + table + " (id, token) VALUES ($1, $2)", id,
          pqxx::binarystring(TinkEncrypt(1, BigPlaintext(id, size), "b:" + std::to_string(id))));
      txn.commit();
    }
  }

  // Creates a one-stage job over `table` of `batch_size` rows a batch, runs one worker with
  // `work_flags` until the job is done, and returns its peak RSS in MiB.
  double RotateAndMeasure(const std::string& table, int batch_size,
                          const std::vector<std::string>& work_flags) {
    ProcessResult created =
        RunRekey({"--db", conninfo(), "job", "create", "--table", table, "--column", "token",
                  "--map", "1:2", "--ad-template", "b:{pk}", "--batch-size",
                  std::to_string(batch_size), "--stages", "100", "--observe", "0s"},
                 WorkerEnv());
    EXPECT_EQ(created.exit_code, 0) << created.err;
    const std::string job = std::to_string(Count("SELECT max(job_id) FROM rekey.jobs"));
    std::vector<std::string> args{"work", "--job", job};
    args.insert(args.end(), work_flags.begin(), work_flags.end());
    const double peak = RunAndMeasure(args);
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + job), "completed")
        << Scalar("SELECT coalesce(state_reason, '') FROM rekey.jobs WHERE job_id = " + job);
    return peak;
  }

  // Runs `rekey <args>` to its end, expecting exit 0, and returns its peak RSS in MiB.
  double RunAndMeasure(const std::vector<std::string>& args) {
    std::vector<std::string> argv{REKEY_BINARY, "--db", conninfo()};
    argv.insert(argv.end(), args.begin(), args.end());
    ChildProcess child(argv, WorkerEnv());
    int64_t peak_kib = 0;
    while (child.Running()) {
      peak_kib = std::max(peak_kib, PeakRssKib(child.pid()));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ProcessResult done = child.Wait(10);
    EXPECT_EQ(done.exit_code, 0) << done.err;
    return double(peak_kib) / 1024;
  }

  // Every value of `table` is under key 2 and opens to its plaintext; returns how many were
  // checked.
  int ExpectAllRotated(const std::string& table,
                       const std::vector<std::pair<int64_t, int64_t>>& rows) {
    int checked = 0;
    for (const auto& [id, size] : rows) {
      pqxx::read_transaction txn(conn());
      const pqxx::row row = txn.exec_params1("SELECT token FROM " + table + " WHERE id = $1", id);
      const pqxx::binarystring token(row["token"]);
      uint32_t key = 0;
      const std::string plaintext = TinkDecrypt(token.str(), &key, "b:" + std::to_string(id));
      EXPECT_EQ(key, 2u) << "row " << id;
      EXPECT_TRUE(plaintext == BigPlaintext(id, size)) << "row " << id << " (" << size << " bytes)";
      ++checked;
    }
    return checked;
  }
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
// large); the worker's peak memory is printed for the record.
TEST_F(HugeValuesTest, ASixtyFourMiBValueRotates) {
  const std::vector<std::pair<int64_t, int64_t>> rows = {{1, 64}, {2, 64 * kMiB}, {3, 64}};
  Fill("public.blobs", rows);
  const double peak = RotateAndMeasure("public.blobs", 100, {});
  std::printf("[ rss      ] rekey work over 2 x 64 B and 1 x 64 MiB: peak RSS %.1f MiB\n", peak);
  EXPECT_EQ(ExpectAllRotated("public.blobs", rows), 3);
}

}  // namespace
}  // namespace rekey::testing
