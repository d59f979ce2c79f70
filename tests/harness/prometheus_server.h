// Debian's Prometheus server (/usr/bin/prometheus) as a child process for tests: on 127.0.0.1 at
// a free port, with its own config and storage in a temp dir, scraping the given targets every
// second; stopped (SIGTERM, then SIGKILL) and its directory removed when the object goes away,
// whatever the test did. Shared by tests/dashboard_prometheus_pg_test.cpp and
// tests/brakes_pg_test.cpp.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "harness/process.h"

namespace rekey::testing {

inline const char* const kPrometheusBinary = "/usr/bin/prometheus";
inline const char* const kPromtoolBinary = "/usr/bin/promtool";

// A TCP port on 127.0.0.1 that was free a moment ago (0 if none could be found).
int FreePort();
// RFC 3986 percent-encoding, for query parameters.
std::string UrlEncode(const std::string& s);

class PrometheusServer {
 public:
  // One scrape job: its name and its targets (host:port).
  using ScrapeJob = std::pair<std::string, std::vector<std::string>>;
  explicit PrometheusServer(const std::vector<ScrapeJob>& jobs);
  ~PrometheusServer();

  PrometheusServer(const PrometheusServer&) = delete;
  PrometheusServer& operator=(const PrometheusServer&) = delete;

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& dir() const { return dir_; }
  // True once /-/ready answers 200 (false if the server exits or `seconds` pass).
  bool WaitReady(int seconds);
  std::string Log();
  // GET path?query, parsed; {"status":"error",...} when the answer is not JSON.
  nlohmann::json Api(const std::string& path, const std::string& query);

 private:
  std::string dir_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> child_;
};

}  // namespace rekey::testing
