// The Prometheus brake's client (brake.h): one PromQL instant query through Prometheus's HTTP API
// (GET <url>/api/v1/query?query=...), over kms::HttpTransport (libcurl), so tests can drive every
// answer with a fake transport and the pg test against a real Prometheus server.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "kms/http_transport.h"
#include "rotation/brake.h"

namespace rekey::rotation {

class HttpPrometheusClient : public PrometheusClient {
 public:
  // url: the server's base URL (http://host:9090, a path prefix allowed, no trailing query).
  HttpPrometheusClient(std::string url, std::unique_ptr<kms::HttpTransport> transport,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));
  // See PrometheusClient. A range vector or string result is a ConfigError (the query must be an
  // instant vector or scalar); NaN samples are ignored.
  std::optional<double> Query(const std::string& expr) override;

 private:
  std::string url_;
  std::unique_ptr<kms::HttpTransport> transport_;
  std::chrono::milliseconds timeout_;
};

// The check `rekey work` runs before its first claim: evaluates `expr` once and throws
// ConfigError (one line: the URL and what went wrong) if Prometheus cannot be reached or rejects
// the query, so a typo stops the worker at start instead of braking it forever.
void ProbePrometheus(PrometheusClient& client, const std::string& url, const std::string& expr);

}  // namespace rekey::rotation
