// `rekey work`: run claim loops until the queue is empty (exit 0), or until SIGTERM (finish the
// batch in hand, exit 0). A Kubernetes Job with `parallelism: N` runs N of these.
#include <malloc.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <memory>
#include <thread>

#include "audit/audit_chain.h"
#include "cli_support.h"
#include "commands.h"
#include "common/error.h"
#include "common/log.h"
#include "ops/ops_service.h"
#include "rotation/worker_pool.h"

namespace rekey::cli {
namespace {

struct WorkFlags {
  int64_t job = 0;
  bool all = false;
  int concurrency = 1;
  std::string worker_name;
  std::string log_format = "json";
  rotation::PacingOptions pacing;
  int64_t target_batch_ms = 0;
  std::string max_replication_lag;
  std::string listen;  // empty: no HTTP endpoints
  int linger_seconds = 0;
  int64_t batch_bytes = rotation::BatchRotator::kDefaultChunkBytes;
};

// Seals what lost the race to seal and logs the chain head, so a copy of it lives outside the
// database (audit/audit_chain.h). Durable first: the batches committed without waiting for
// their WAL, and a head lost in a crash after being logged would look like a cut-off history to
// `rekey audit verify --expect-head`. The work is done by now: a failure here is only logged.
void LogAuditHead(const GlobalOptions& global) {
  try {
    auto conn = OpenDatabase(global, "rekey-worker");
    log::Audit("audit.sealed", "success",
               {{"audit_head", audit::FormatHead(audit::SealDurably(*conn))}});
  } catch (const std::exception& e) {
    log::Warn("could not seal the audit log at exit", {{"error", e.what()}});
  }
}

void Work(const GlobalOptions& global, const WorkFlags& flags) {
  if (flags.job == 0 && !flags.all) throw ConfigError("say which work to do: --job J or --all");
  if (flags.job != 0 && flags.all) throw ConfigError("--job and --all exclude each other");
  log::SetFormat(flags.log_format != "text");
  const std::atomic<bool>& stop = InstallStopSignals();
  // Every batch allocates and frees a few hundred KB (its query results and parameter arrays).
  // By default glibc gives that back to the kernel after each batch (madvise, with a TLB
  // shootdown across the claim threads) and faults it in again for the next: 8% of a rotation's
  // time on the 2-core benchmark machine (bench/README.md). Freed memory is kept up to 64 MB
  // instead; the peak RSS, what the batches need at once (about 16 MB), does not change.
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  mallopt(M_MMAP_THRESHOLD, 16 << 20);

  rotation::WorkerOptions options;
  if (flags.job != 0) options.job = flags.job;
  options.concurrency = flags.concurrency;
  options.worker_name = flags.worker_name;
  options.pacing = flags.pacing;
  options.batch_bytes = flags.batch_bytes;
  options.pacing.target_batch = std::chrono::milliseconds(flags.target_batch_ms);
  if (!flags.max_replication_lag.empty()) {
    options.pacing.max_replication_lag =
        ParseDuration(flags.max_replication_lag, "--max-replication-lag");
  }
  options.pacing.Validate();
  const std::string conninfo = ConnInfo(global);
  std::unique_ptr<ops::OpsService> ops;
  KeyServices::WrapClient wrap;
  if (!flags.listen.empty()) {
    ops = std::make_unique<ops::OpsService>(conninfo);
    options.observer = &ops->metrics();
    wrap =
        [o = ops.get()](std::unique_ptr<kms::KmsClient> client) -> std::unique_ptr<kms::KmsClient> {
      return std::make_unique<ops::InstrumentedKms>(std::move(client), o->metrics(),
                                                    o->kms_watch());
    };
  }
  KeyServices keys(conninfo, wrap);
  // The endpoints read `keys` (cache totals): stop them before `keys` goes, on every path out.
  struct StopServing {
    ops::OpsService* ops;
    ~StopServing() {
      if (ops) ops->Stop();
    }
  } stop_serving{ops.get()};
  if (ops) {
    ops->SetCacheTotals(
        [&keys] { return std::make_pair(keys.cache().hits(), keys.cache().misses()); });
    ops->Listen(ops::ParseListenAddress(flags.listen));
    log::Info("serving /metrics, /healthz and /readyz",
              {{"listen", flags.listen}, {"port", ops->port()}, {"action", "http.listen"}});
  }
  options.kms_available = keys.Availability();
  options.transit = LazyTransitClient();
  options.aws_kms = LazyAwsKmsService();
  rotation::WorkerPool pool(conninfo, options, keys.Source());
  log::Info("worker started",
            {{"action", "worker.started"},
             {"job", flags.job == 0 ? nlohmann::json(nullptr) : nlohmann::json(flags.job)},
             {"concurrency", flags.concurrency},
             {"max_rows_per_second", options.pacing.max_rows_per_second},
             {"target_batch_ms", flags.target_batch_ms},
             {"worker",
              options.worker_name.empty() ? rotation::DefaultWorkerName() : options.worker_name}});
  pool.Run(stop);
  const auto& stats = pool.stats();
  log::Info(stop ? "worker stopped by signal" : "no work left; worker exiting",
            {{"action", "worker.stopped"},
             {"outcome", "success"},
             {"batches", stats.batches_done.load()},
             {"rows_reencrypted", stats.rows_reencrypted.load()},
             {"rows_skipped", stats.rows_skipped.load()},
             {"rows_quarantined", stats.rows_quarantined.load()},
             {"kms_calls", keys.cache().kms_calls()},
             {"key_cache_hits", keys.cache().hits()},
             {"key_cache_misses", keys.cache().misses()},
             {"kms_pauses", stats.kms_pauses.load()}});
  LogAuditHead(global);
  // A Job's pod disappears when the process exits; lingering lets Prometheus scrape the final
  // counters first. SIGTERM ends the wait at once.
  if (ops && flags.linger_seconds > 0 && !stop) {
    log::Info("lingering so the final metrics can be scraped",
              {{"seconds", flags.linger_seconds}, {"action", "http.linger"}});
    const auto until =
        std::chrono::steady_clock::now() + std::chrono::seconds(flags.linger_seconds);
    while (!stop && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

}  // namespace

void AddWorkCommand(CLI::App& app, GlobalOptions& global) {
  auto flags = std::make_shared<WorkFlags>();
  CLI::App* work = app.add_subcommand(
      "work", "Claim and re-encrypt batches until none are left (exit 0), or until SIGTERM");
  work->add_option("--job", flags->job, "Only this job");
  work->add_flag("--all", flags->all, "Every active job");
  work->add_option("--concurrency", flags->concurrency, "Claim loops, each with its own connection")
      ->capture_default_str();
  work->add_option("--worker-name", flags->worker_name, "Worker id prefix (default host:pid)");
  work->add_option("--log-format", flags->log_format, "json (default) or text")
      ->check(CLI::IsMember({"json", "text"}));
  // Gentleness (src/rotation/pacer.h): all off by default.
  work->add_option("--max-rows-per-second", flags->pacing.max_rows_per_second,
                   "Rows rewritten per second by this process, all claim loops together");
  work->add_option("--target-batch-ms", flags->target_batch_ms,
                   "Process batches in chunks whose size adapts towards this duration");
  work->add_option("--min-chunk-rows", flags->pacing.min_chunk_rows, "Smallest adaptive chunk")
      ->capture_default_str();
  work->add_option("--max-chunk-rows", flags->pacing.max_chunk_rows, "Largest adaptive chunk")
      ->capture_default_str();
  work->add_option("--batch-bytes", flags->batch_bytes,
                   "Stored bytes of rotated values one transaction holds at most (4MiB; 0: no "
                   "bound); a batch holding more is moved in several, with checkpoints")
      ->transform(CLI::AsSizeValue(false));
  work->add_option("--max-replication-lag", flags->max_replication_lag,
                   "Pause claiming while a replica's replay lag exceeds this (e.g. 10s)");
  work->add_option("--listen", flags->listen,
                   "Serve /metrics, /healthz and /readyz on ADDR:PORT (e.g. 0.0.0.0:9090)");
  work->add_option("--linger", flags->linger_seconds,
                   "With --listen: keep serving this many seconds after the work is done")
      ->check(CLI::Range(0, 3600));
  work->callback([&global, flags] { Work(global, *flags); });
}

}  // namespace rekey::cli
