#include "cli_support.h"

#include <csignal>
#include <mutex>

#include "db/connection.h"
#include "db/conninfo.h"
#include "kms/kms_factory.h"
#include "kms/kms_registry.h"
#include "kms/vault_transit.h"

namespace rekey::cli {
namespace {
std::atomic<bool> g_stop{false};
extern "C" void OnStopSignal(int) {
  g_stop = true;
}
}  // namespace

std::string ConnInfo(const GlobalOptions& global) {
  return db::ResolveConnInfo(global.db);
}

std::unique_ptr<pqxx::connection> OpenDatabase(const GlobalOptions& global,
                                               const std::string& application_name) {
  return db::Connect(ConnInfo(global), application_name);
}

KeyServices::KeyServices(const std::string& conninfo, WrapClient wrap)
    : registry_(wrap ? std::make_unique<kms::KmsRegistry>([wrap](const std::string& provider) {
        return wrap(kms::MakeKmsClient(provider, kms::ProcessGetenv));
      })
                     : std::make_unique<kms::KmsRegistry>()),
      cache_(std::make_unique<keyring::DataKeyCache>(conninfo, registry_->Resolver(),
                                                     keyring::CacheOptionsFromEnv())) {}

std::function<bool()> KeyServices::Availability() {
  return [registry = registry_.get()] { return registry->Available(); };
}

rotation::DataKeySource KeyServices::Source() {
  return [cache = cache_.get()](uint32_t key_id) { return cache->Get(key_id); };
}

rotation::TransitClientSource LazyTransitClient() {
  struct Shared {
    std::mutex mu;
    std::unique_ptr<kms::VaultTransitClient> client;
  };
  auto shared = std::make_shared<Shared>();
  return [shared]() -> kms::VaultTransitClient& {
    std::lock_guard<std::mutex> lock(shared->mu);
    if (!shared->client) {
      shared->client = std::make_unique<kms::VaultTransitClient>(
          kms::VaultTransitConfigFromEnv(kms::ProcessGetenv, /*require_key=*/false),
          std::make_shared<kms::CurlTransport>());
    }
    return *shared->client;
  };
}

const std::atomic<bool>& InstallStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  return g_stop;
}

}  // namespace rekey::cli
