// Brakes: `rekey work` pauses while the database (or the team's own Prometheus) says the server
// is under strain, and says so while it does (issue 19, item 1).
//
// A brake is a reason, a signal and a limit. Each reason's signal is read by a narrow interface
// (BrakeSignalReader for the database's own views, PrometheusClient for PromQL), so the logic
// here -- which brakes are engaged, with hysteresis -- is tested with fakes, and the readers
// against the real servers (tests/brakes_pg_test.cpp):
//
//   reason            signal                                           engages above
//   replication_lag   largest replay lag of pg_stat_replication        --max-replication-lag
//   wal_rate          bytes/s of pg_current_wal_lsn() over a window    --max-wal-rate
//   slot_lag          WAL retained by the most demanding slot          --max-slot-lag
//   archive_backlog   archive_status/*.ready segments                  --max-archive-backlog
//   autovacuum        autovacuum running on a job's table              --pause-during-autovacuum
//   lock_wait         an application waited on a lock rekey holds      --max-lock-wait
//   prometheus        the value of --brake-query (or unreachable)      --brake-above
//
// The WAL rate is the server's, all writers together (so every worker of the job, and every
// worker process, reads the same figure and holds back together; the application's own WAL
// counts against the budget too, which errs on the gentle side). It is the slope of the WAL
// position over the last `wal_window` of samples, so one burst does not stop and start the
// workers at every poll.
//
// Hysteresis: a brake engages when its signal exceeds the limit and releases only once the
// signal is at or below `release_fraction` of it (80 % by default), and not before it has been
// engaged for `min_hold`. The replication-lag brake keeps its earlier behaviour (release at the
// limit; rotation/pacer.h). A Prometheus that cannot be reached mid-run engages its brake (fail
// safe) with that said in the detail; lock_wait engages for a cool-down after each yield so the
// application gets through before the rows are tried again (brake_lock_watchdog.h).
//
// Thread-safety: BrakeGovernor is not thread-safe (one poller owns it); Brakes is.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace rekey::rotation {

// The bounded label values of rekey_brake_active{reason=...}.
inline constexpr const char* kBrakeReasons[] = {"replication_lag", "wal_rate",   "slot_lag",
                                                "archive_backlog", "autovacuum", "lock_wait",
                                                "prometheus"};

// Parses a byte size: a number and a unit, PostgreSQL's (B, kB, MB, GB, TB: powers of 1024, as
// in postgresql.conf and pg_size_bytes) or IEC's (KiB, MiB, GiB, TiB). A bare number is refused
// (bytes? megabytes?), as are negatives, blanks and unknown units. Throws ConfigError naming
// `flag`.
int64_t ParseByteSize(const std::string& text, const std::string& flag);

struct BrakeOptions {
  std::optional<double> max_wal_rate;          // bytes per second
  std::optional<int64_t> max_slot_lag;         // bytes
  std::optional<int64_t> max_archive_backlog;  // segments
  bool pause_during_autovacuum = false;
  std::optional<std::chrono::milliseconds> max_lock_wait;
  std::string prometheus_url;  // with query and above: the Prometheus brake
  std::string prometheus_query;
  std::optional<double> prometheus_above;

  std::chrono::milliseconds poll{1000};
  std::chrono::milliseconds wal_window{10000};
  double release_fraction = 0.8;
  std::chrono::milliseconds min_hold{2000};

  bool prometheus() const { return !prometheus_url.empty(); }
  // True iff a brake that the poller reads is set (lock_wait has its own watchdog).
  bool polled() const {
    return max_wal_rate || max_slot_lag || max_archive_backlog || pause_during_autovacuum ||
           prometheus();
  }
  // Throws ConfigError naming the flag: a negative or zero limit, a Prometheus brake given only
  // in part, a URL that is not http(s).
  void Validate() const;
};

// One reading of the database's signals. A field is nullopt when its brake is off (not read).
struct DatabaseSignals {
  std::chrono::steady_clock::time_point at;
  std::optional<int64_t> wal_lsn;  // pg_current_wal_lsn() in bytes
  std::optional<int64_t> slot_retained_bytes;
  std::string slot_name;  // the slot retaining the most
  std::optional<int64_t> archive_ready;
  std::optional<bool> autovacuum;
  std::string autovacuum_table;  // the table autovacuum works on, when it does
};

// Reads the database's signals for the brakes `options` sets. Implementations: PgBrakeSignals
// (brake_signals.h); fakes in tests. Throws on database errors.
class BrakeSignalReader {
 public:
  virtual ~BrakeSignalReader() = default;
  virtual DatabaseSignals Read() = 0;
};

// Evaluates one PromQL expression. Returns the largest value of the result (a scalar or an
// instant vector), or nullopt for an empty vector (nothing to brake on). Throws TransientError
// when Prometheus cannot be reached or answers 5xx, ConfigError when it rejects the query.
class PrometheusClient {
 public:
  virtual ~PrometheusClient() = default;
  virtual std::optional<double> Query(const std::string& expr) = 0;
};

// What changed in one evaluation: a brake engaged or released, with its figures.
struct BrakeChange {
  std::string reason;
  bool active = false;
  nlohmann::json detail;  // the signal and the limit, e.g. {"wal_rate_bytes_per_second": ..}
};

// The brake logic: signals in, engaged reasons out, with hysteresis (see the file comment).
class BrakeGovernor {
 public:
  explicit BrakeGovernor(BrakeOptions options);

  // Feeds one reading of the database (nullopt: none this round) and of Prometheus (the value,
  // or the error text when it could not be reached); returns the brakes that engaged or
  // released. `now` orders the readings and drives min_hold.
  std::vector<BrakeChange> Evaluate(std::chrono::steady_clock::time_point now,
                                    const std::optional<DatabaseSignals>& db,
                                    const std::optional<std::optional<double>>& prometheus_value,
                                    const std::string& prometheus_error = "");
  // Engages (or extends) a brake from outside the signals, until `until` (lock_wait's cool-down).
  std::vector<BrakeChange> Hold(const std::string& reason,
                                std::chrono::steady_clock::time_point now,
                                std::chrono::steady_clock::time_point until, nlohmann::json detail);
  // Releases what an external hold set once its time is up.
  std::vector<BrakeChange> ExpireHolds(std::chrono::steady_clock::time_point now);
  // Engages or releases a brake decided outside (the pacer's replication-lag wait).
  std::vector<BrakeChange> Set(const std::string& reason, bool active,
                               std::chrono::steady_clock::time_point now, nlohmann::json detail);

  const std::set<std::string>& engaged() const { return engaged_; }
  // The WAL rate over the window, bytes per second (nullopt until two samples span time).
  std::optional<double> wal_rate() const;

 private:
  // Applies one reason's verdict: over (engage), under the release threshold (release), or in
  // between (keep as is).
  void Decide(const std::string& reason, bool over, bool released,
              std::chrono::steady_clock::time_point now, nlohmann::json detail,
              std::vector<BrakeChange>* changes);
  double ReleaseBelow(double limit) const;

  BrakeOptions options_;
  std::set<std::string> engaged_;
  std::map<std::string, std::chrono::steady_clock::time_point> since_;
  std::map<std::string, std::chrono::steady_clock::time_point> holds_;
  std::vector<std::pair<std::chrono::steady_clock::time_point, int64_t>> wal_samples_;
};

// Told of every change, from the poller's thread: metrics (the gauge), the database
// (rekey.progress), logs. Must not throw; should be quick.
using BrakeListener = std::function<void(const BrakeChange& change)>;
// Told the whole engaged set (reason -> figures) after each change, and every few seconds while
// a brake stays engaged (so a reader can tell a live brake from a dead worker's).
using BrakeStateSink = std::function<void(const std::map<std::string, nlohmann::json>& engaged)>;

// The brakes of one `rekey work` process: a poller thread reads the signals every options.poll,
// feeds a BrakeGovernor and tells the listeners; the claim loops ask Wait() before claiming a
// batch and between chunks. Created stopped; Start() runs the poller, the destructor stops it.
class Brakes {
 public:
  // reader and prometheus may be null when no brake of theirs is set.
  Brakes(BrakeOptions options, std::unique_ptr<BrakeSignalReader> reader,
         std::unique_ptr<PrometheusClient> prometheus);
  ~Brakes();

  void AddListener(BrakeListener listener);
  void SetStateSink(BrakeStateSink sink);
  // Runs one evaluation now (the first, synchronously, so a braked server is not written to at
  // all; two, a poll apart, with a WAL-rate brake, whose signal is a slope), then the poller.
  void Start();
  void Stop();

  // Engages `reason` for `duration` from now (lock_wait after a yield).
  void Hold(const std::string& reason, std::chrono::milliseconds duration, nlohmann::json detail);
  // Counted engagement from outside: the brake is engaged while more Engage() than Release()
  // calls were made (each paused claim loop engages replication_lag once).
  void Engage(const std::string& reason, nlohmann::json detail);
  void Release(const std::string& reason);

  // True iff some brake is engaged.
  bool engaged() const { return engaged_count_.load() > 0; }
  std::set<std::string> reasons() const;
  // Returns once no brake is engaged or `stop` turns true, sleeping in short steps; returns how
  // long it waited.
  std::chrono::milliseconds Wait(const std::atomic<bool>& stop);

  // One evaluation (the poller's step; public for tests).
  void PollOnce();

 private:
  void Apply(const std::vector<BrakeChange>& changes);

  BrakeOptions options_;
  std::unique_ptr<BrakeSignalReader> reader_;
  std::unique_ptr<PrometheusClient> prometheus_;
  mutable std::mutex mu_;  // guards governor_ and listeners_
  BrakeGovernor governor_;
  std::vector<BrakeListener> listeners_;
  BrakeStateSink sink_;
  std::map<std::string, nlohmann::json> details_;  // of the engaged brakes
  std::map<std::string, int> engaged_by_;          // Engage() counts
  std::chrono::steady_clock::time_point published_{};
  std::atomic<int> engaged_count_{0};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread poller_;
};

}  // namespace rekey::rotation
