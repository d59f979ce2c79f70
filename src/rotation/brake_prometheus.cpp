#include "rotation/brake_prometheus.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>

#include "common/error.h"

namespace rekey::rotation {
namespace {

// RFC 3986 percent-encoding of a query parameter's value.
std::string Encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += char(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

// A sample's value: [<time>, "<value>"].
std::optional<double> SampleValue(const nlohmann::json& pair) {
  if (!pair.is_array() || pair.size() != 2 || !pair[1].is_string()) return std::nullopt;
  const double v = std::strtod(pair[1].get<std::string>().c_str(), nullptr);
  if (std::isnan(v)) return std::nullopt;
  return v;
}

}  // namespace

HttpPrometheusClient::HttpPrometheusClient(std::string url,
                                           std::unique_ptr<kms::HttpTransport> transport,
                                           std::chrono::milliseconds timeout)
    : url_(std::move(url)), transport_(std::move(transport)), timeout_(timeout) {
  while (!url_.empty() && url_.back() == '/') url_.pop_back();
}

std::optional<double> HttpPrometheusClient::Query(const std::string& expr) {
  kms::HttpRequest request;
  request.method = "GET";
  request.url = url_ + "/api/v1/query?query=" + Encode(expr);
  request.timeout = timeout_;
  const kms::HttpResponse response = transport_->Post(request);  // TransientError: no answer
  const nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
  const std::string error =
      body.is_object() ? body.value("error", std::string()) : response.body.substr(0, 200);
  if (response.status >= 500 || response.status == 0) {
    throw TransientError("Prometheus at " + url_ + " answered HTTP " +
                         std::to_string(response.status) + ": " + error);
  }
  if (response.status != 200 || !body.is_object() || body.value("status", "") != "success") {
    throw ConfigError("Prometheus at " + url_ + " refused the query (HTTP " +
                      std::to_string(response.status) + "): " + error);
  }
  const auto& data = body["data"];
  const std::string type = data.value("resultType", "");
  if (type == "scalar") return SampleValue(data["result"]);
  if (type != "vector") {
    throw ConfigError("--brake-query must give an instant vector or a scalar, not a " + type);
  }
  std::optional<double> max;
  for (const auto& series : data["result"]) {
    const auto v = SampleValue(series["value"]);
    if (v && (!max || *v > *max)) max = v;
  }
  return max;
}

void ProbePrometheus(PrometheusClient& client, const std::string& url, const std::string& expr) {
  try {
    client.Query(expr);
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw ConfigError("--brake-prometheus: cannot query " + url + " at start: " + e.what());
  }
}

}  // namespace rekey::rotation
