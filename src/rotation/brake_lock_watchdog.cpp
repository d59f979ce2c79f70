#include "rotation/brake_lock_watchdog.h"

#include <algorithm>

#include "common/log.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::rotation {
namespace {

const std::string& Query(const char* name) {
  return db::Query(std::string("rotation/brake_lock_watchdog.") + name);
}

}  // namespace

LockWaitWatchdog::LockWaitWatchdog(std::string conninfo, std::string worker_name,
                                   std::chrono::milliseconds max_lock_wait, Brakes* brakes)
    : conninfo_(std::move(conninfo)),
      // The claim loops' application_name (WorkerPool::ClaimLoop): "rekey-worker <name>/<n>".
      prefix_("rekey-worker " + worker_name + "/"),
      limit_(max_lock_wait),
      poll_(std::clamp(max_lock_wait / 5, std::chrono::milliseconds(5),
                       std::chrono::milliseconds(200))),
      brakes_(brakes) {}

LockWaitWatchdog::~LockWaitWatchdog() {
  Stop();
}

void LockWaitWatchdog::Start() {
  thread_ = std::thread([this] {
    while (!stop_) {
      try {
        PollOnce();
      } catch (const std::exception& e) {
        conn_.reset();
        log::Warn("lock-wait watchdog could not poll; retrying",
                  {{"error", e.what()}, {"action", "brake.lock_wait.poll"}});
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
      std::this_thread::sleep_for(poll_);
    }
  });
}

void LockWaitWatchdog::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

int LockWaitWatchdog::PollOnce() {
  if (!conn_ || !conn_->is_open()) conn_ = db::Connect(conninfo_, "rekey-watchdog");
  pqxx::nontransaction txn(*conn_);
  const pqxx::result blocked = txn.exec_params(Query("blocked"), prefix_);
  std::set<int> cancelled_now;
  std::set<int> signalled;
  for (const auto& row : blocked) {
    const int blocker = row["blocker_pid"].as<int>();
    if (signalled.count(blocker)) continue;
    const double waited_ms = row["waited_ms"].as<double>();
    const std::string state =
        row["blocker_state"].is_null() ? "" : row["blocker_state"].as<std::string>();
    // Yield at half the limit: the other half covers the poll interval and the rollback.
    if (waited_ms * 2 < double(limit_.count())) continue;
    const bool terminate = state != "active" || cancelled_.count(blocker) > 0;
    txn.exec_params1(Query(terminate ? "terminate" : "cancel"), blocker);
    signalled.insert(blocker);
    if (!terminate) cancelled_now.insert(blocker);
    ++yields_;
    nlohmann::json detail = {{"waiter_pid", row["waiter_pid"].as<int>()},
                             {"waited_ms", int64_t(waited_ms)},
                             {"blocker_pid", blocker},
                             {"blocker_state", state},
                             {"max_lock_wait_ms", limit_.count()},
                             {"how", terminate ? "terminate" : "cancel"}};
    nlohmann::json fields = detail;
    fields["action"] = "brake.lock_wait.yield";
    log::Warn("yielding: an application session waits on a lock rekey holds", fields);
    if (brakes_) {
      const auto cool_down = std::clamp(limit_ * 10, std::chrono::milliseconds(1000),
                                        std::chrono::milliseconds(30000));
      brakes_->Hold("lock_wait", cool_down, detail);
    }
  }
  cancelled_ = std::move(cancelled_now);
  return int(signalled.size());
}

}  // namespace rekey::rotation
