#include "rotation/brake.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "common/error.h"
#include "common/log.h"

namespace rekey::rotation {

using Clock = std::chrono::steady_clock;

// How often the engaged set is told to the state sink while it does not change: well inside the
// freshness rekey.progress asks of a brake row (30 seconds).
constexpr std::chrono::seconds kRepublish{5};

int64_t ParseByteSize(const std::string& text, const std::string& flag) {
  size_t digits = 0;
  while (digits < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.')) {
    ++digits;
  }
  const std::string number = text.substr(0, digits), unit = text.substr(digits);
  const bool well_formed = !number.empty() && number.front() != '.' && number.back() != '.' &&
                           std::count(number.begin(), number.end(), '.') <= 1;
  if (!well_formed) {
    throw ConfigError(flag + " '" + text + "': expected a size such as 512kB, 20MB or 1GB");
  }
  static const std::map<std::string, double> kUnits = {{"B", 1},
                                                       {"kB", 1024.0},
                                                       {"KB", 1024.0},
                                                       {"KiB", 1024.0},
                                                       {"MB", 1048576.0},
                                                       {"MiB", 1048576.0},
                                                       {"GB", 1073741824.0},
                                                       {"GiB", 1073741824.0},
                                                       {"TB", 1099511627776.0},
                                                       {"TiB", 1099511627776.0}};
  if (unit.empty()) {
    throw ConfigError(flag + " '" + text + "' needs a unit (B, kB, MB, GB, TB; 1kB = 1024 B)");
  }
  const auto u = kUnits.find(unit);
  if (u == kUnits.end()) {
    throw ConfigError(flag + " '" + text + "': unknown unit '" + unit +
                      "' (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB; 1kB = 1024 B)");
  }
  const double bytes = std::strtod(number.c_str(), nullptr) * u->second;
  if (!(bytes >= 1) || bytes > 1e18) {
    throw ConfigError(flag + " '" + text + "' must be at least 1 byte and at most 1e18");
  }
  return int64_t(std::llround(bytes));
}

void BrakeOptions::Validate() const {
  if (max_wal_rate && !(*max_wal_rate > 0)) throw ConfigError("--max-wal-rate must be positive");
  if (max_slot_lag && *max_slot_lag <= 0) throw ConfigError("--max-slot-lag must be positive");
  if (max_archive_backlog && *max_archive_backlog < 0) {
    throw ConfigError("--max-archive-backlog must not be negative");
  }
  if (max_lock_wait && max_lock_wait->count() < 1) {
    throw ConfigError("--max-lock-wait must be at least 1 ms");
  }
  const int prometheus_parts = int(!prometheus_url.empty()) + int(!prometheus_query.empty()) +
                               int(prometheus_above.has_value());
  if (prometheus_parts != 0 && prometheus_parts != 3) {
    throw ConfigError("--brake-prometheus, --brake-query and --brake-above go together");
  }
  if (!prometheus_url.empty() && prometheus_url.rfind("http://", 0) != 0 &&
      prometheus_url.rfind("https://", 0) != 0) {
    throw ConfigError("--brake-prometheus '" + prometheus_url + "' is not an http(s) URL");
  }
  if (prometheus_above && !std::isfinite(*prometheus_above)) {
    throw ConfigError("--brake-above must be a finite number");
  }
  if (poll.count() < 1 || wal_window < poll) {
    throw ConfigError("brake poll must be positive and the WAL window at least one poll");
  }
  if (!(release_fraction > 0 && release_fraction <= 1)) {
    throw ConfigError("brake release fraction must be in (0, 1]");
  }
}

BrakeGovernor::BrakeGovernor(BrakeOptions options) : options_(std::move(options)) {}

double BrakeGovernor::ReleaseBelow(double limit) const {
  return limit - std::abs(limit) * (1 - options_.release_fraction);
}

std::optional<double> BrakeGovernor::wal_rate() const {
  if (wal_samples_.size() < 2) return std::nullopt;
  const auto& [t0, lsn0] = wal_samples_.front();
  const auto& [t1, lsn1] = wal_samples_.back();
  const double seconds = std::chrono::duration<double>(t1 - t0).count();
  if (seconds <= 0) return std::nullopt;
  return double(lsn1 - lsn0) / seconds;
}

void BrakeGovernor::Decide(const std::string& reason, bool over, bool released,
                           Clock::time_point now, nlohmann::json detail,
                           std::vector<BrakeChange>* changes) {
  const bool active = engaged_.count(reason) > 0;
  if (!active && over) {
    engaged_.insert(reason);
    since_[reason] = now;
    changes->push_back({reason, true, std::move(detail)});
  } else if (active && released && now - since_[reason] >= options_.min_hold) {
    engaged_.erase(reason);
    changes->push_back({reason, false, std::move(detail)});
  }
}

std::vector<BrakeChange> BrakeGovernor::Evaluate(
    Clock::time_point now, const std::optional<DatabaseSignals>& db,
    const std::optional<std::optional<double>>& prometheus_value,
    const std::string& prometheus_error) {
  std::vector<BrakeChange> changes;
  if (db && options_.max_wal_rate && db->wal_lsn) {
    wal_samples_.emplace_back(db->at, *db->wal_lsn);
    // Keep the samples of the last window, and at least two.
    while (wal_samples_.size() > 2 && db->at - wal_samples_[1].first >= options_.wal_window) {
      wal_samples_.erase(wal_samples_.begin());
    }
    if (const auto rate = wal_rate()) {
      const double limit = *options_.max_wal_rate;
      Decide("wal_rate", *rate > limit, *rate <= ReleaseBelow(limit), now,
             {{"wal_rate_bytes_per_second", int64_t(*rate)},
              {"max_wal_rate_bytes_per_second", int64_t(limit)}},
             &changes);
    }
  }
  if (db && options_.max_slot_lag && db->slot_retained_bytes) {
    const double value = double(*db->slot_retained_bytes), limit = double(*options_.max_slot_lag);
    Decide("slot_lag", value > limit, value <= ReleaseBelow(limit), now,
           {{"slot", db->slot_name},
            {"slot_retained_bytes", *db->slot_retained_bytes},
            {"max_slot_lag_bytes", *options_.max_slot_lag}},
           &changes);
  }
  if (db && options_.max_archive_backlog && db->archive_ready) {
    const double value = double(*db->archive_ready), limit = double(*options_.max_archive_backlog);
    Decide("archive_backlog", value > limit, value <= std::floor(ReleaseBelow(limit)), now,
           {{"archive_ready_segments", *db->archive_ready},
            {"max_archive_backlog", *options_.max_archive_backlog}},
           &changes);
  }
  if (db && options_.pause_during_autovacuum && db->autovacuum) {
    Decide("autovacuum", *db->autovacuum, !*db->autovacuum, now,
           {{"autovacuum_table", db->autovacuum_table}}, &changes);
  }
  if (prometheus_value && options_.prometheus_above) {
    const double limit = *options_.prometheus_above;
    const std::optional<double>& value = *prometheus_value;
    Decide("prometheus", value && *value > limit, !value || *value <= ReleaseBelow(limit), now,
           {{"query", options_.prometheus_query},
            {"value", value ? nlohmann::json(*value) : nlohmann::json(nullptr)},
            {"brake_above", limit}},
           &changes);
  } else if (!prometheus_error.empty() && options_.prometheus_above) {
    // Unreachable mid-run: brake, as the team's signal cannot say the application is fine.
    Decide("prometheus", true, false, now,
           {{"query", options_.prometheus_query}, {"error", prometheus_error}}, &changes);
  }
  return changes;
}

std::vector<BrakeChange> BrakeGovernor::Hold(const std::string& reason, Clock::time_point now,
                                             Clock::time_point until, nlohmann::json detail) {
  std::vector<BrakeChange> changes;
  holds_[reason] = std::max(holds_[reason], until);
  if (!engaged_.count(reason)) {
    engaged_.insert(reason);
    since_[reason] = now;
    changes.push_back({reason, true, std::move(detail)});
  }
  return changes;
}

std::vector<BrakeChange> BrakeGovernor::ExpireHolds(Clock::time_point now) {
  std::vector<BrakeChange> changes;
  for (auto it = holds_.begin(); it != holds_.end();) {
    if (now < it->second) {
      ++it;
      continue;
    }
    if (engaged_.erase(it->first)) changes.push_back({it->first, false, nlohmann::json::object()});
    it = holds_.erase(it);
  }
  return changes;
}

std::vector<BrakeChange> BrakeGovernor::Set(const std::string& reason, bool active,
                                            Clock::time_point now, nlohmann::json detail) {
  std::vector<BrakeChange> changes;
  if (active && engaged_.insert(reason).second) {
    since_[reason] = now;
    changes.push_back({reason, true, std::move(detail)});
  } else if (!active && engaged_.erase(reason)) {
    changes.push_back({reason, false, std::move(detail)});
  }
  return changes;
}

Brakes::Brakes(BrakeOptions options, std::unique_ptr<BrakeSignalReader> reader,
               std::unique_ptr<PrometheusClient> prometheus)
    : options_(std::move(options)),
      reader_(std::move(reader)),
      prometheus_(std::move(prometheus)),
      governor_(options_) {
  options_.Validate();
}

Brakes::~Brakes() {
  Stop();
}

void Brakes::AddListener(BrakeListener listener) {
  std::lock_guard<std::mutex> lock(mu_);
  listeners_.push_back(std::move(listener));
}

void Brakes::SetStateSink(BrakeStateSink sink) {
  std::lock_guard<std::mutex> lock(mu_);
  sink_ = std::move(sink);
}

void Brakes::Engage(const std::string& reason, nlohmann::json detail) {
  std::lock_guard<std::mutex> lock(mu_);
  if (engaged_by_[reason]++ == 0) {
    Apply(governor_.Set(reason, true, Clock::now(), std::move(detail)));
  }
}

void Brakes::Release(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (engaged_by_[reason] > 0 && --engaged_by_[reason] == 0) {
    Apply(governor_.Set(reason, false, Clock::now(), nlohmann::json::object()));
  }
}

void Brakes::Start() {
  if (!options_.polled()) return;
  PollOnce();
  if (options_.max_wal_rate) {
    // A rate is a slope: a second reading, one poll later, so it too is known before the first
    // claim.
    std::this_thread::sleep_for(options_.poll);
    PollOnce();
  }
  poller_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(stop_mu_);
    while (!stopping_) {
      if (stop_cv_.wait_for(lock, options_.poll, [this] { return stopping_; })) break;
      lock.unlock();
      PollOnce();
      lock.lock();
    }
  });
}

void Brakes::Stop() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
}

void Brakes::PollOnce() {
  std::optional<DatabaseSignals> db;
  if (reader_) {
    try {
      db = reader_->Read();
    } catch (const std::exception& e) {
      // The poller's connection broke (a restart, a failover): the brakes keep their state
      // until the next reading, and the claim loops meet the same outage on their own.
      log::Warn("could not read the database's brake signals",
                {{"error", e.what()}, {"action", "brake.read"}});
    }
  }
  std::optional<std::optional<double>> value;
  std::string error;
  if (prometheus_) {
    try {
      value = prometheus_->Query(options_.prometheus_query);
    } catch (const std::exception& e) {
      error = e.what();
      if (error.empty()) error = "unreachable";
    }
  }
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  auto changes = governor_.ExpireHolds(now);
  auto more = governor_.Evaluate(now, db, value, error);
  changes.insert(changes.end(), more.begin(), more.end());
  Apply(changes);
}

void Brakes::Hold(const std::string& reason, std::chrono::milliseconds duration,
                  nlohmann::json detail) {
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  Apply(governor_.Hold(reason, now, now + duration, std::move(detail)));
}

void Brakes::Apply(const std::vector<BrakeChange>& changes) {
  engaged_count_ = int(governor_.engaged().size());
  for (const BrakeChange& change : changes) {
    if (change.active) {
      details_[change.reason] = change.detail;
    } else {
      details_.erase(change.reason);
    }
    nlohmann::json fields = change.detail.is_object() ? change.detail : nlohmann::json::object();
    fields["reason"] = change.reason;
    fields["action"] = change.active ? "brake.engaged" : "brake.released";
    if (change.active) {
      log::Warn("braking: " + change.reason, fields);
    } else {
      log::Info("brake released: " + change.reason, fields);
    }
    for (const auto& listener : listeners_) listener(change);
  }
  // Republished while engaged, so rekey.progress can drop the brakes of a worker that died.
  const auto now = Clock::now();
  if (sink_ && (!changes.empty() || (!details_.empty() && now - published_ >= kRepublish))) {
    published_ = now;
    sink_(details_);
  }
}

std::set<std::string> Brakes::reasons() const {
  std::lock_guard<std::mutex> lock(mu_);
  return governor_.engaged();
}

std::chrono::milliseconds Brakes::Wait(const std::atomic<bool>& stop) {
  const auto started = Clock::now();
  while (engaged() && !stop) {
    // Held brakes (lock_wait) expire at the next poll or here, whichever comes first.
    {
      std::lock_guard<std::mutex> lock(mu_);
      Apply(governor_.ExpireHolds(Clock::now()));
    }
    if (!engaged()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
}

}  // namespace rekey::rotation
