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
#include "kms/http_transport.h"
#include "ops/ops_service.h"
#include "rotation/brake_database.h"
#include "rotation/brake_lock_watchdog.h"
#include "rotation/brake_prometheus.h"
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
  // Brakes (src/rotation/brake.h): sizes and durations as typed, parsed in Work().
  rotation::BrakeOptions brakes;
  std::string max_wal_rate;
  std::string max_slot_lag;
  int64_t max_lock_wait_ms = 0;
  std::string brake_poll = "1s";
  std::string listen;  // empty: no HTTP endpoints
  int linger_seconds = 0;
  int64_t batch_bytes = rotation::BatchRotator::kDefaultChunkBytes;
};

// The brakes' runtime: the poller, the lock-wait watchdog and the row rekey.progress reads; torn
// down (watchdog first, then the poller, then the row) on every path out of Work().
struct BrakeRuntime {
  std::shared_ptr<rotation::Brakes> brakes;
  std::unique_ptr<rotation::BrakeRecorder> recorder;
  std::unique_ptr<rotation::LockWaitWatchdog> watchdog;
  ~BrakeRuntime() {
    watchdog.reset();
    if (brakes) brakes->Stop();
    if (recorder) recorder->Forget();
  }
};

// The brake options of the flags, parsed and checked (ConfigError: one line, exit 2).
rotation::BrakeOptions BrakeOptionsOf(const WorkFlags& flags) {
  rotation::BrakeOptions b = flags.brakes;
  if (!flags.max_wal_rate.empty()) {
    b.max_wal_rate = double(rotation::ParseByteSize(flags.max_wal_rate, "--max-wal-rate"));
  }
  if (!flags.max_slot_lag.empty()) {
    b.max_slot_lag = rotation::ParseByteSize(flags.max_slot_lag, "--max-slot-lag");
  }
  if (flags.max_lock_wait_ms != 0)
    b.max_lock_wait = std::chrono::milliseconds(flags.max_lock_wait_ms);
  DurationRules poll_rules;
  poll_rules.minimum = std::chrono::milliseconds(10);
  b.poll = ParseDuration(flags.brake_poll, "--brake-poll", poll_rules);
  b.wal_window = std::max(b.wal_window, b.poll * 2);
  b.min_hold = std::max(b.min_hold, b.poll * 2);
  b.Validate();
  return b;
}

// Sets up the brakes the flags ask for (none: an empty runtime), after checking that the role can
// observe what they read and that Prometheus answers.
void StartBrakes(const GlobalOptions& global, const std::string& conninfo,
                 const rotation::BrakeOptions& b, rotation::WorkerOptions& options,
                 ops::OpsService* ops, BrakeRuntime& runtime) {
  const bool lag = options.pacing.max_replication_lag.has_value();
  if (!b.polled() && !b.max_lock_wait && !lag) return;
  {
    auto conn = OpenDatabase(global, "rekey-brakes");
    rotation::CheckBrakePrivileges(*conn, b, lag);
  }
  std::unique_ptr<rotation::PrometheusClient> prometheus;
  if (b.prometheus()) {
    prometheus = std::make_unique<rotation::HttpPrometheusClient>(
        b.prometheus_url, std::make_unique<kms::CurlTransport>());
    rotation::ProbePrometheus(*prometheus, b.prometheus_url, b.prometheus_query);
  }
  std::unique_ptr<rotation::BrakeSignalReader> reader;
  if (b.max_wal_rate || b.max_slot_lag || b.max_archive_backlog || b.pause_during_autovacuum) {
    reader = std::make_unique<rotation::PgBrakeSignals>(conninfo, b, options.job);
  }
  runtime.brakes = std::make_shared<rotation::Brakes>(b, std::move(reader), std::move(prometheus));
  runtime.recorder =
      std::make_unique<rotation::BrakeRecorder>(conninfo, options.worker_name, options.job);
  runtime.brakes->SetStateSink(
      [r = runtime.recorder.get()](const auto& engaged) { r->Record(engaged); });
  if (ops) {
    runtime.brakes->AddListener([m = &ops->metrics()](const rotation::BrakeChange& change) {
      m->SetBrakeActive(change.reason, change.active);
    });
  }
  runtime.brakes->Start();
  if (b.max_lock_wait) {
    runtime.watchdog = std::make_unique<rotation::LockWaitWatchdog>(
        conninfo, options.worker_name, *b.max_lock_wait, runtime.brakes.get());
    runtime.watchdog->Start();
  }
  options.pacing.brakes = runtime.brakes;
}

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
  // Resolved here: the lock-wait watchdog finds the claim loops by this name.
  options.worker_name =
      flags.worker_name.empty() ? rotation::DefaultWorkerName() : flags.worker_name;
  options.pacing = flags.pacing;
  options.batch_bytes = flags.batch_bytes;
  options.pacing.target_batch = std::chrono::milliseconds(flags.target_batch_ms);
  if (!flags.max_replication_lag.empty()) {
    options.pacing.max_replication_lag =
        ParseDuration(flags.max_replication_lag, "--max-replication-lag");
  }
  options.pacing.Validate();
  const rotation::BrakeOptions brakes = BrakeOptionsOf(flags);
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
  BrakeRuntime brake_runtime;
  StartBrakes(global, conninfo, brakes, options, ops.get(), brake_runtime);
  options.kms_available = keys.Availability();
  options.transit = LazyTransitClient();
  options.aws_kms = LazyAwsKmsService();
  rotation::WorkerPool pool(conninfo, options, keys.Source());
  log::Info(
      "worker started",
      {{"action", "worker.started"},
       {"job", flags.job == 0 ? nlohmann::json(nullptr) : nlohmann::json(flags.job)},
       {"concurrency", flags.concurrency},
       {"max_rows_per_second", options.pacing.max_rows_per_second},
       {"target_batch_ms", flags.target_batch_ms},
       {"brakes_engaged", brake_runtime.brakes ? nlohmann::json(brake_runtime.brakes->reasons())
                                               : nlohmann::json::array()},
       {"worker", options.worker_name}});
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
                   "Pause claiming while a replica's replay lag exceeds this (e.g. 10s)")
      ->envname("REKEY_MAX_REPLICATION_LAG");
  // Brakes on the database's own signals (src/rotation/brake.h; docs/operations.md, "Going
  // gently"): all off by default, each with an environment equivalent.
  work->add_option("--max-wal-rate", flags->max_wal_rate,
                   "Pause while the server writes more WAL per second than this (e.g. 20MB)")
      ->envname("REKEY_MAX_WAL_RATE");
  work->add_option("--max-slot-lag", flags->max_slot_lag,
                   "Pause while a replication slot retains more WAL than this (e.g. 1GB)")
      ->envname("REKEY_MAX_SLOT_LAG");
  work->add_option("--max-archive-backlog", flags->brakes.max_archive_backlog,
                   "Pause while more WAL segments than this wait for the archiver")
      ->envname("REKEY_MAX_ARCHIVE_BACKLOG")
      ->check(CLI::NonNegativeNumber);
  work->add_flag("--pause-during-autovacuum", flags->brakes.pause_during_autovacuum,
                 "Pause while autovacuum works on a job's table")
      ->envname("REKEY_PAUSE_DURING_AUTOVACUUM");
  work->add_option("--max-lock-wait", flags->max_lock_wait_ms,
                   "Yield (roll back, retry later) before an application waits this many ms on "
                   "a lock rekey holds")
      ->envname("REKEY_MAX_LOCK_WAIT")
      ->check(CLI::PositiveNumber);
  work->add_option("--brake-prometheus", flags->brakes.prometheus_url,
                   "Prometheus base URL for --brake-query (e.g. http://prometheus:9090)")
      ->envname("REKEY_BRAKE_PROMETHEUS");
  work->add_option("--brake-query", flags->brakes.prometheus_query,
                   "PromQL whose value above --brake-above pauses the work")
      ->envname("REKEY_BRAKE_QUERY");
  work->add_option("--brake-above", flags->brakes.prometheus_above, "Threshold of --brake-query")
      ->envname("REKEY_BRAKE_ABOVE");
  work->add_option("--brake-poll", flags->brake_poll, "How often the brakes' signals are read")
      ->capture_default_str();
  work->add_option("--listen", flags->listen,
                   "Serve /metrics, /healthz and /readyz on ADDR:PORT (e.g. 0.0.0.0:9090)");
  work->add_option("--linger", flags->linger_seconds,
                   "With --listen: keep serving this many seconds after the work is done")
      ->check(CLI::Range(0, 3600));
  work->callback([&global, flags] { Work(global, *flags); });
}

}  // namespace rekey::cli
