#include "ops/ops_service.h"

#include "ops/readiness.h"

namespace rekey::ops {

OpsService::OpsService(const std::string& conninfo)
    : conninfo_(WithConnectTimeout(conninfo, 3)), collector_(conninfo) {}

OpsService::~OpsService() {
  server_.reset();  // handlers must not run while the members they use are destroyed
}

void OpsService::Listen(const ListenAddress& address) {
  std::map<std::string, HttpHandler> routes;
  routes["/metrics"] = [this](const std::string&) { return MetricsPage(); };
  routes["/healthz"] = [](const std::string&) {
    return HttpResponse{200, "application/json", "{\"status\":\"UP\"}\n"};
  };
  routes["/readyz"] = [this](const std::string&) { return ReadyPage(); };
  server_ = std::make_unique<HttpServer>(address, std::move(routes));
}

int OpsService::port() const {
  return server_ ? server_->port() : 0;
}

HttpResponse OpsService::MetricsPage() {
  collector_.Collect(metrics_);
  for (const KmsStatus& s : watch_.Snapshot()) {
    if (s.breaker) metrics_.SetBreakerState(s.provider, static_cast<int>(*s.breaker));
  }
  if (cache_totals_) {
    auto [hits, misses] = cache_totals_();
    metrics_.SetDataKeyCacheTotals(hits, misses);
  }
  return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_.Serialize()};
}

HttpResponse OpsService::ReadyPage() {
  Readiness r = CheckReadiness(conninfo_, watch_);
  return {r.up ? 200 : 503, "application/json", r.body.dump() + "\n"};
}

}  // namespace rekey::ops
