// OpsService: the operations side of a `rekey work` process, started by --listen ADDR:PORT:
//   GET /metrics  Prometheus text format (metrics.h), database gauges read at scrape time
//   GET /healthz  liveness: 200 {"status":"UP"} while the process serves requests
//   GET /readyz   readiness (readiness.h): 200 when UP, 503 with the failing check when DOWN
//
// Metrics and KmsWatch exist from construction, so the worker pool and the KMS clients can be
// wired to them before the server starts. Thread-safety: metrics() and kms_watch() may be used
// from any thread; construct, Listen and destroy from one.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "ops/database_collector.h"
#include "ops/http_server.h"
#include "ops/instrumented_kms.h"
#include "ops/metrics.h"

namespace rekey::ops {

class OpsService {
 public:
  // (hits, misses) of the data-key cache, read at each scrape.
  using CacheTotals = std::function<std::pair<uint64_t, uint64_t>()>;

  explicit OpsService(const std::string& conninfo);
  ~OpsService();

  Metrics& metrics() { return metrics_; }
  KmsWatch& kms_watch() { return watch_; }
  void SetCacheTotals(CacheTotals totals) { cache_totals_ = std::move(totals); }

  // Starts serving. Throws ConfigError if the address cannot be bound.
  void Listen(const ListenAddress& address);
  int port() const;  // the bound port (useful with port 0); 0 before Listen
  // Stops serving and waits for a request in progress to finish; idempotent. Call it before
  // destroying anything the handlers read (e.g. what SetCacheTotals' function uses).
  void Stop() { server_.reset(); }

 private:
  HttpResponse MetricsPage();
  HttpResponse ReadyPage();

  const std::string conninfo_;
  Metrics metrics_;
  KmsWatch watch_;
  DatabaseCollector collector_;
  CacheTotals cache_totals_;
  std::unique_ptr<HttpServer> server_;  // last: stopped before the state its handlers use
};

}  // namespace rekey::ops
