// DatabaseCollector: reads the deployment-wide gauges (key ages and policy, overdue keys, the
// last completed rotation, jobs by state, progress of unfinished jobs) from the rekey schema for
// Metrics, at scrape time.
//
// Keeps one connection of its own (application_name rekey-metrics), opened with a short connect
// timeout and reopened after a failure, so a scrape never waits long for a database that is gone.
// Thread-safety: not thread-safe; the HTTP server calls it from its single thread.
#pragma once

#include <pqxx/pqxx>

#include <memory>
#include <string>

#include "ops/metrics.h"

namespace rekey::ops {

// `conninfo` with connect_timeout=<seconds> added (URL or key=value form), unless it sets one.
std::string WithConnectTimeout(const std::string& conninfo, int seconds);

// Reads the snapshot through `txn` (every query is a plain SELECT on rekey's tables and views:
// src/ops/queries/database_collector.sql).
DatabaseSnapshot ReadDatabaseSnapshot(pqxx::transaction_base& txn);

class DatabaseCollector {
 public:
  explicit DatabaseCollector(std::string conninfo);

  // Refreshes `metrics`: rekey_database_up and, iff the database answered, the snapshot gauges
  // (otherwise they keep their last values). Never throws.
  void Collect(Metrics& metrics);

 private:
  std::string conninfo_;
  std::unique_ptr<pqxx::connection> conn_;
};

}  // namespace rekey::ops
